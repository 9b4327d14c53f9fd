"""The original design: SQLAlchemy 2 (ORM and Core) on a QueuePool, same tables, same rows.

Written as SQLAlchemy's documentation recommends for each job (ORM bulk INSERT
with a list of dicts, Core executemany, ``select()`` of mapped objects), so a
ratio against it is marketstore against the design it replaces.
"""
from __future__ import annotations

import datetime as dt
from decimal import Decimal

from sqlalchemy import BigInteger, DateTime, Numeric, String, create_engine, func, insert, select, true
from sqlalchemy.dialects.postgresql import array
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, aliased, mapped_column

from . import references


class Base(DeclarativeBase):
    pass


class PriceRow(Base):
    """``prices`` as the original SQLAlchemy model declared it."""

    __tablename__ = "prices"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    symbol: Mapped[str] = mapped_column(String(32))
    timestamp: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    open: Mapped[Decimal] = mapped_column(Numeric(24, 8))
    high: Mapped[Decimal] = mapped_column(Numeric(24, 8))
    low: Mapped[Decimal] = mapped_column(Numeric(24, 8))
    close: Mapped[Decimal] = mapped_column(Numeric(24, 8))
    volume: Mapped[Decimal] = mapped_column(Numeric(28, 8))
    interval: Mapped[str] = mapped_column(String(8), default="1m")


def engine(url: str, **pool):
    """``create_engine`` with the original pool: QueuePool(10, 20), pre-ping on, in UTC."""
    options = {"pool_size": 10, "max_overflow": 20, "pool_pre_ping": True, **pool}
    return create_engine("postgresql+psycopg2://", creator=lambda: references.connect(url), **options)


def orm_bulk_insert(eng, rows) -> int:
    """ORM bulk INSERT: ``session.execute(insert(PriceRow), list_of_dicts)``."""
    rows = rows if isinstance(rows, list) else list(rows)
    with Session(eng) as session:
        session.execute(insert(PriceRow), rows)
        session.commit()
    return len(rows)


def core_executemany(eng, rows) -> int:
    """Core ``connection.execute(table.insert(), list_of_dicts)`` (executemany)."""
    rows = rows if isinstance(rows, list) else list(rows)
    with eng.begin() as conn:
        conn.execute(PriceRow.__table__.insert(), rows)
    return len(rows)


def orm_upsert(eng, rows) -> int:
    """ORM bulk ``INSERT … ON CONFLICT (symbol, interval, timestamp) DO UPDATE``."""
    rows = rows if isinstance(rows, list) else list(rows)
    stmt = pg_insert(PriceRow)
    stmt = stmt.on_conflict_do_update(
        index_elements=[PriceRow.symbol, PriceRow.interval, PriceRow.timestamp],
        set_={c: stmt.excluded[c] for c in ("open", "high", "low", "close", "volume")},
    )
    with Session(eng) as session:
        session.execute(stmt, rows)
        session.commit()
    return len(rows)


def orm_range(eng, symbol, start, end, interval="1m") -> list[PriceRow]:
    """ORM ``select(PriceRow)`` of one symbol's range, ascending: mapped objects."""
    stmt = (select(PriceRow)
            .where(PriceRow.symbol == symbol, PriceRow.interval == interval,
                   PriceRow.timestamp >= start, PriceRow.timestamp < end)
            .order_by(PriceRow.timestamp))
    with Session(eng) as session:
        return session.scalars(stmt).all()


def orm_latest(eng, symbols, interval="1m") -> dict[str, PriceRow]:
    """symbol -> PriceRow, the ORM spelling of ``unnest … CROSS JOIN LATERAL (… LIMIT 1)``."""
    wanted = func.unnest(array(list(symbols))).table_valued("symbol").render_derived(name="s")
    newest = (select(PriceRow)
              .where(PriceRow.symbol == wanted.c.symbol, PriceRow.interval == interval)
              .order_by(PriceRow.timestamp.desc()).limit(1).lateral("p"))
    stmt = select(aliased(PriceRow, newest)).select_from(wanted).join(newest, true())
    with Session(eng) as session:
        return {row.symbol: row for row in session.scalars(stmt)}


def resample(eng, symbol, start, end, bucket="1 hour", interval="1m") -> list[tuple]:
    """The hand-written resample SQL through a Core connection."""
    params = {"bucket": bucket, "symbol": symbol, "interval": interval, "start": start, "end": end}
    with eng.connect() as conn:
        return [tuple(r) for r in conn.exec_driver_sql(references.RESAMPLE_SQL, params)]


def transaction(eng, sql, params):
    """One short transaction: checkout (pre-ping), one statement, commit, check-in."""
    with eng.begin() as conn:
        return conn.exec_driver_sql(sql, params).scalar()
