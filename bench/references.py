"""The physical references: what raw psycopg2 (and pandas) do with the same data.

Each is written the way a careful engineer would by hand, so a ratio against it
is the overhead marketstore adds on top of what the driver and server allow.
Every function works inside one transaction and commits, as a session does.
"""
from __future__ import annotations

import psycopg2
import psycopg2.extras
import psycopg2.pool

from .data import COLUMNS

INSERT_COLUMNS = ", ".join(f'"{c}"' for c in COLUMNS)
SELECT_COLUMNS = 'id, symbol, "timestamp", open, high, low, close, volume, "interval", adj_close'  # every column, as the models carry
CONFLICT_UPDATE = ", ".join(
    f'"{c}" = EXCLUDED."{c}"' for c in ("open", "high", "low", "close", "volume")
)


def connect(url: str):
    """A psycopg2 connection in UTC, like marketstore's (same typecasting work)."""
    return psycopg2.connect(url, options="-c timezone=UTC", application_name="marketstore-bench")


class RowsFile:
    """A read()-able stream of COPY text built from row dicts as the server asks for it.

    Streaming lets the server parse and insert one chunk while Python formats the
    next: the fastest raw way, and constant memory.
    """

    def __init__(self, rows, chunk: int = 2000):
        self._rows = iter(rows)
        self._chunk = chunk

    def read(self, size: int = -1) -> str:
        lines = []
        for row in self._rows:
            lines.append(
                f"{row['symbol']}\t{row['timestamp']}\t{row['open']}\t{row['high']}\t{row['low']}"
                f"\t{row['close']}\t{row['volume']}\t{row['interval']}\n"
            )
            if len(lines) >= self._chunk:
                break
        return "".join(lines)


def copy_rows(conn, rows) -> int:
    """``COPY prices FROM STDIN`` (text format) of row dicts; returns rows loaded."""
    with conn.cursor() as cur:
        cur.copy_expert(f"COPY prices ({INSERT_COLUMNS}) FROM STDIN", RowsFile(rows), size=65536)
        count = cur.rowcount
    conn.commit()
    return count


def copy_csv(conn, path) -> int:
    """``COPY prices FROM STDIN (FORMAT csv, HEADER)`` streaming the file as is."""
    with conn.cursor() as cur, open(path) as handle:
        cur.copy_expert(f"COPY prices ({INSERT_COLUMNS}) FROM STDIN WITH (FORMAT csv, HEADER true)",
                        handle, size=65536)
        count = cur.rowcount
    conn.commit()
    return count


def upsert_execute_values(conn, rows, page_size: int = 1000) -> int:
    """``execute_values … ON CONFLICT (symbol, interval, timestamp) DO UPDATE``."""
    sql = (f"INSERT INTO prices ({INSERT_COLUMNS}) VALUES %s "
           f'ON CONFLICT (symbol, "interval", "timestamp") DO UPDATE SET {CONFLICT_UPDATE}')
    values = ((r["symbol"], r["timestamp"], r["open"], r["high"], r["low"], r["close"], r["volume"],
               r["interval"]) for r in rows)
    count = 0
    with conn.cursor() as cur:
        # execute_values takes a sequence per page; feed it page by page so the
        # argument list is never materialised twice.
        page: list[tuple] = []
        for value in values:
            page.append(value)
            if len(page) == page_size:
                psycopg2.extras.execute_values(cur, sql, page, page_size=page_size)
                count += len(page)
                page = []
        if page:
            psycopg2.extras.execute_values(cur, sql, page, page_size=page_size)
            count += len(page)
    conn.commit()
    return count


def range_sql(columns: str = SELECT_COLUMNS) -> str:
    """get_range's query: ``start <= timestamp < end``, ascending."""
    return (f'SELECT {columns} FROM prices WHERE symbol = %s AND "interval" = %s '
            'AND "timestamp" >= %s AND "timestamp" < %s ORDER BY "timestamp"')


def fetch_range(conn, symbol, start, end, interval="1m", columns=SELECT_COLUMNS) -> list[tuple]:
    """Raw cursor ``fetchall`` of ``columns`` over a range of one symbol, ascending."""
    with conn.cursor() as cur:
        cur.execute(range_sql(columns), (symbol, interval, start, end))
        rows = cur.fetchall()
    conn.commit()
    return rows


LATEST_LATERAL_SQL = (
    f"SELECT p.* FROM unnest(%s::text[]) AS s(symbol) CROSS JOIN LATERAL ("
    f"SELECT {SELECT_COLUMNS} FROM prices WHERE prices.symbol = s.symbol AND \"interval\" = %s "
    'ORDER BY "timestamp" DESC LIMIT 1) AS p'
)
LATEST_DISTINCT_SQL = (
    f"SELECT DISTINCT ON (symbol) {SELECT_COLUMNS} FROM prices "
    'WHERE symbol = ANY(%s) AND "interval" = %s ORDER BY symbol, "timestamp" DESC'
)


def _latest(conn, sql, symbols, interval) -> dict[str, tuple]:
    with conn.cursor() as cur:
        cur.execute(sql, (list(symbols), interval))
        found = {row[1]: row for row in cur.fetchall()}
    conn.commit()
    return found


def latest_lateral(conn, symbols, interval="1m") -> dict[str, tuple]:
    """symbol -> row: ``unnest(symbols) CROSS JOIN LATERAL (… LIMIT 1)``, one index probe each."""
    return _latest(conn, LATEST_LATERAL_SQL, symbols, interval)


def latest_distinct_on(conn, symbols, interval="1m") -> dict[str, tuple]:
    """symbol -> row: ``DISTINCT ON (symbol)``, the plan that sorts every matching row."""
    return _latest(conn, LATEST_DISTINCT_SQL, symbols, interval)


# First open / last close per bucket by ordered aggregates; date_bin on a fixed origin
# gives any bucket width ('1 hour', '15 minutes', '1 day').
RESAMPLE_SQL = (
    "SELECT date_bin(%(bucket)s::interval, \"timestamp\", TIMESTAMPTZ '2000-01-01 00:00:00+00') AS bucket, "
    "(array_agg(open ORDER BY \"timestamp\"))[1], max(high), min(low), "
    "(array_agg(close ORDER BY \"timestamp\" DESC))[1], sum(volume) "
    "FROM prices WHERE symbol = %(symbol)s AND \"interval\" = %(interval)s "
    "AND \"timestamp\" >= %(start)s AND \"timestamp\" < %(end)s GROUP BY 1 ORDER BY 1"
)


def resample_sql(conn, symbol, start, end, bucket="1 hour", interval="1m") -> list[tuple]:
    """OHLCV bars computed in SQL by hand: (bucket, open, high, low, close, volume)."""
    with conn.cursor() as cur:
        cur.execute(RESAMPLE_SQL, {"bucket": bucket, "symbol": symbol, "interval": interval,
                                   "start": start, "end": end})
        bars = cur.fetchall()
    conn.commit()
    return bars


def resample_pandas(conn, symbol, start, end, rule="1h", interval="1m"):
    """Raw fetch of the minute bars, then ``DataFrame.resample(rule).agg(...)``."""
    import pandas as pd

    with conn.cursor() as cur:
        cur.execute('SELECT "timestamp", open, high, low, close, volume FROM prices '
                    'WHERE symbol = %s AND "interval" = %s AND "timestamp" >= %s AND "timestamp" < %s '
                    'ORDER BY "timestamp"', (symbol, interval, start, end))
        rows = cur.fetchall()
    conn.commit()
    frame = pd.DataFrame.from_records(rows, columns=["timestamp", "open", "high", "low", "close", "volume"],
                                      index="timestamp").astype("float64")
    bars = frame.resample(rule).agg(
        {"open": "first", "high": "max", "low": "min", "close": "last", "volume": "sum"})
    return bars.dropna(subset=["open"])  # buckets with no rows are omitted, as in SQL


class RawPool:
    """``psycopg2.pool.ThreadedConnectionPool``: getconn, one statement, commit, putconn."""

    def __init__(self, url: str, maxconn: int = 30, *, options: str | None = "-c timezone=UTC"):
        # options=None: nothing PgBouncer (transaction mode) refuses at connect
        extra = {} if options is None else {"options": options}
        self.pool = psycopg2.pool.ThreadedConnectionPool(1, maxconn, url, application_name="marketstore-bench",
                                                         **extra)

    def transaction(self, sql: str, params):
        conn = self.pool.getconn()
        try:
            with conn.cursor() as cur:
                cur.execute(sql, params)
                value = cur.fetchone()[0]
            conn.commit()
        except BaseException:
            conn.rollback()
            raise
        finally:
            self.pool.putconn(conn)
        return value

    def close(self) -> None:
        self.pool.closeall()
