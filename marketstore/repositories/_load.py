"""Bulk writes of prices: a :class:`._copy.CopySource` into the table, straight or through a staging table.

``copy_from`` streams new bars straight into ``prices`` when every row has an
interval. Rows and CSV files that give none go through a temporary staging
table, where PostgreSQL measures each symbol's spacing (a window over the
staged rows) and :func:`~marketstore.intervals.inferred` names the interval;
``upsert_many`` always stages, then merges with one ``INSERT ... ON CONFLICT``
that rewrites only the bars that changed. An interval given by the caller is
checked against the bars' spacing on every path.
"""
from __future__ import annotations

import datetime as dt

import peewee
import psycopg2

from ..errors import DataValidationError, DuplicateKeyError, driver_error
from ..intervals import contradiction, inferred
from ..models import Price
from ._copy import COPY_COLUMNS, CopySource, duplicate
from ._unchanged import without_unchanged

# The staging table: the rules of prices (LIKE ... INCLUDING CONSTRAINTS, so a refused row
# names its line as copy_from's would) but no index and no WAL; an interval may be missing
# (NULL, to be inferred). Dropped at the end of the call (ON COMMIT DROP too, in case the
# caller's transaction outlives an error).
STAGE = "marketstore_price_stage"
_STAGE_CREATE = (
    f"CREATE TEMPORARY TABLE {STAGE} (LIKE prices INCLUDING CONSTRAINTS) ON COMMIT DROP; "
    # id numbers the staged rows in input order (and takes nothing from prices' sequence)
    f"ALTER TABLE {STAGE} ALTER COLUMN id ADD GENERATED ALWAYS AS IDENTITY, "
    'ALTER COLUMN "interval" DROP NOT NULL; '
    "SELECT current_setting('work_mem'), set_config('work_mem', '256MB', true)"
)
_KEY = 'symbol, "interval", "timestamp"'
_VALUES = ("open", "high", "low", "close", "volume", "adj_close")
# The smallest gap between two bars of each symbol (and interval) among the rows selected.
_SPACING = ('SELECT symbol, min(gap) FILTER (WHERE gap > interval \'0\') FROM ('
            '  SELECT symbol, "timestamp" - lag("timestamp") OVER (PARTITION BY symbol, "interval" '
            '  ORDER BY "timestamp") AS gap FROM {table} WHERE {where}) AS g GROUP BY symbol')
_FILL = (f'UPDATE {STAGE} AS s SET "interval" = v.interval FROM unnest(%s::text[], %s::text[]) AS v(symbol, interval) '
         'WHERE s.symbol = v.symbol AND s."interval" IS NULL')
# ON CONFLICT may touch a row once per statement: DISTINCT ON keeps the last staged row
# (highest id) of each key, as applying the rows in order would. A bar equal to the stored
# one is not written again (no dead tuple, no WAL, nothing for replicas).
_MERGE = (
    f"WITH latest AS (SELECT DISTINCT ON ({_KEY}) {COPY_COLUMNS} FROM {STAGE} ORDER BY {_KEY}, id DESC), "
    # Only new or changed bars reach the INSERT: ON CONFLICT ... WHERE false would still lock (and so
    # write) every stored row it skips; a join reads them and writes nothing.
    "changed AS (SELECT l.* FROM latest AS l LEFT JOIN prices AS p ON p.symbol = l.symbol "
    'AND p."interval" = l."interval" AND p."timestamp" = l."timestamp" '
    f"WHERE p.id IS NULL OR ({', '.join(f'p.{c}' for c in _VALUES)}) IS DISTINCT FROM "
    f"({', '.join(f'l.{c}' for c in _VALUES)})), "
    f"merged AS (INSERT INTO prices ({COPY_COLUMNS}) SELECT {COPY_COLUMNS} FROM changed "
    f"ON CONFLICT ({_KEY}) DO UPDATE SET " + ", ".join(f"{c} = EXCLUDED.{c}" for c in _VALUES)
    + " RETURNING xmax = 0 AS inserted) "
    "SELECT count(*) FILTER (WHERE inserted), count(*) FILTER (WHERE NOT inserted), "
    "(SELECT count(*) FROM latest) FROM merged"
)
_STORED = 'SELECT 1 FROM prices WHERE symbol = %s AND "interval" = %s AND "timestamp" = %s'
_INSERT = f"INSERT INTO prices ({COPY_COLUMNS}) SELECT {COPY_COLUMNS} FROM {STAGE} ORDER BY id"
_FIRST_DUPLICATE = (
    f"SELECT min(s.id) FROM {STAGE} AS s WHERE EXISTS (SELECT 1 FROM prices AS p "
    f"WHERE (p.symbol, p.\"interval\", p.\"timestamp\") = (s.symbol, s.\"interval\", s.\"timestamp\")) "
    f"OR EXISTS (SELECT 1 FROM {STAGE} AS t WHERE (t.symbol, t.\"interval\", t.\"timestamp\") "
    f"= (s.symbol, s.\"interval\", s.\"timestamp\") AND t.id < s.id)"
)


class UpsertCount(int):
    """The rows ``upsert_many`` wrote (inserted + updated), an ``int``, with the detail as attributes.

    ``inserted`` (new bars), ``updated`` (stored bars whose values changed) and
    ``unchanged`` (bars given exactly as stored, not written again).
    """

    inserted: int
    updated: int
    unchanged: int

    def __new__(cls, inserted: int, updated: int, unchanged: int) -> "UpsertCount":
        count = super().__new__(cls, inserted + updated)
        count.inserted, count.updated, count.unchanged = inserted, updated, unchanged
        return count

    def __repr__(self) -> str:
        return f"UpsertCount(inserted={self.inserted}, updated={self.updated}, unchanged={self.unchanged})"


def copy_new(db, source: CopySource, interval: str | None) -> int:
    """``copy_from``: every row of ``source`` as new bars, all or nothing; returns how many."""
    if source.complete:
        start = db.execute_sql("SELECT coalesce(max(id), 0) FROM prices").fetchone()[0] if interval else 0
        count = source.copy_into(db, "prices")
        if interval:
            _check(db, "prices", 'id > %s AND "interval" = %s', [start, interval], interval, source)
        return count
    work_mem = _stage(db, source, interval)
    db.execute_sql("SAVEPOINT marketstore_insert")
    try:
        count = db.execute_sql(_INSERT).rowcount
    except (peewee.IntegrityError, psycopg2.IntegrityError) as exc:  # before translation: the key names the row
        driver = driver_error(exc)
        if driver is None or driver.pgcode != "23505":
            raise
        db.execute_sql("ROLLBACK TO SAVEPOINT marketstore_insert")
        first = db.execute_sql(_FIRST_DUPLICATE).fetchone()[0]
        raise duplicate(driver, **source.located(first)) from exc
    db.execute_sql(f"RELEASE SAVEPOINT marketstore_insert; DROP TABLE {STAGE}; "
                   "SELECT set_config('work_mem', %s, true)", (work_mem,))
    return count


def upsert(db, source: CopySource, interval: str | None) -> UpsertCount:
    """``upsert_many``: insert new bars, update changed ones, leave equal ones alone."""
    first = source.first_key() if source.complete and source.rereadable else None
    stored = first is not None and db.execute_sql(_STORED, first).fetchone() is not None
    if source.complete and source.rereadable and not stored:  # a first bar stored: a re-upsert, merged
        # INSERT ... ON CONFLICT costs twice a plain insert and COPY batches its writes, so input of
        # new bars loads at copy_from's speed; the first bar already stored (or repeated) undoes the
        # attempt (a savepoint) and the input is read again through the staging table.
        db.execute_sql("SAVEPOINT marketstore_upsert_new")
        try:
            count = copy_new(db, source, interval)
        except DuplicateKeyError:  # any other error ends the whole call: the session rolls back
            db.execute_sql("ROLLBACK TO SAVEPOINT marketstore_upsert_new; "
                           "RELEASE SAVEPOINT marketstore_upsert_new")
            source = source.rewound()
        else:
            db.execute_sql("RELEASE SAVEPOINT marketstore_upsert_new")
            return UpsertCount(count, 0, 0)
    skipped = 0
    if stored and hasattr(source, "checked"):  # a frame: leave out what is stored as given (._unchanged)
        found = without_unchanged(db, source)
        if found is not None:
            source, skipped = found
            if not source.wanted():
                return UpsertCount(0, 0, skipped)
    work_mem = _stage(db, source, interval)
    inserted, updated, keys = db.execute_sql(_MERGE).fetchone()
    db.execute_sql(f"DROP TABLE {STAGE}; SELECT set_config('work_mem', %s, true)", (work_mem,))
    return UpsertCount(inserted, updated, keys - inserted - updated + skipped)


def _stage(db, source: CopySource, interval: str | None) -> str:
    """COPY ``source`` into the staging table, give every row its interval; returns work_mem to restore."""
    work_mem = db.execute_sql(_STAGE_CREATE).fetchone()[0]  # work_mem: the sorts stay in memory
    source.copy_into(db, STAGE)
    if interval:
        _check(db, STAGE, '"interval" = %s', [interval], interval, source)
    if not source.complete:
        spacing = db.execute_sql(_SPACING.format(table=STAGE, where='"interval" IS NULL')).fetchall()
        found = {symbol: spacing_of(gap) for symbol, gap in spacing}
        db.execute_sql(_FILL, (list(found), list(found.values())))
    return work_mem


def _check(db, table: str, where: str, params: list, interval: str, source: CopySource) -> None:
    """Refuse ``interval`` when the bars given it are closer together than one bar of it."""
    for symbol, gap in db.execute_sql(_SPACING.format(table=table, where=where), params).fetchall():
        why = None if gap is None else contradiction(interval, gap)
        if why is not None:
            raise DataValidationError("interval", interval, f"{why}, for {symbol}", **source.located(None))


def spacing_of(gap: dt.timedelta | None) -> str:
    """The interval bars ``gap`` apart have; a lone bar keeps the default."""
    return Price.interval.default if gap is None else inferred(gap)
