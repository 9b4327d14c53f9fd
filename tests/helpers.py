"""Constants, row builders and helpers shared by the test modules, importable as ``helpers`` from
any test folder (here, not in conftest.py: ``from conftest import`` is ambiguous once
several folders have a conftest.py)."""
from __future__ import annotations

import datetime as dt
import logging
import random
import time
import uuid
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path

import psycopg2

import marketstore
from marketstore import (
    ArticleRepository,
    BacktestResult,
    BacktestResultRepository,
    BaseRepository,
    Event,
    EventRepository,
    Order,
    OrderEvent,
    OrderRepository,
    Price,
    PriceRepository,
    SentimentScore,
    SentimentScoreRepository,
    TradingSignal,
    TradingSignalRepository,
)
from marketstore.models import MODELS, Article

ROOT = Path(__file__).resolve().parent.parent  # the repository: README.md, setup.cfg
UTC = dt.timezone.utc
T0 = dt.datetime(2024, 1, 2, tzinfo=UTC)  # the first bar, where a test has no reason for another instant
MINUTE = dt.timedelta(minutes=1)
HEADER = "symbol,timestamp,open,high,low,close,volume"  # a price file's header (no interval column)

SERVER_TIMEOUT = 10.0  # upper bound for the server to notice a closed socket


def app_name() -> str:
    """A unique application_name, so server-side counts see only one test's pool."""
    return f"mst_{uuid.uuid4().hex[:10]}"


def backend_pid(db) -> int:
    """The server process behind ``db`` (a session or a peewee database)."""
    return db.execute_sql("SELECT pg_backend_pid()").fetchone()[0]


def count_rows(conn, table: str, where: str = "TRUE") -> int:
    """Rows of ``table`` (those matching ``where``), read through ``conn`` (a raw psycopg2 connection)."""
    with conn.cursor() as cur:
        cur.execute(f"SELECT count(*) FROM {table} WHERE {where}")
        return cur.fetchone()[0]


def eventually(read, expected, timeout: float = SERVER_TIMEOUT):
    """Poll ``read()`` until it returns ``expected``; returns the last value read.

    A backend leaves pg_stat_activity a moment after its client closes the socket.
    """
    deadline = time.monotonic() + timeout
    value = read()
    while value != expected and time.monotonic() < deadline:
        time.sleep(0.05)
        value = read()
    return value


class OrderEventRepository(BaseRepository[OrderEvent]):
    """The audit table has no public repository; the generic one is enough for tests."""

    model = OrderEvent


REPOSITORIES = {
    Price: PriceRepository, Article: ArticleRepository, SentimentScore: SentimentScoreRepository,
    Event: EventRepository, TradingSignal: TradingSignalRepository, Order: OrderRepository,
    OrderEvent: OrderEventRepository, BacktestResult: BacktestResultRepository,
}
"""The repository of each model."""


@contextmanager
def sent_statements():
    """Collect the (sql, params) of every statement peewee executes in the block."""
    found: list[tuple[str, object]] = []

    class Capture(logging.Handler):
        def emit(self, record):
            if isinstance(record.msg, tuple) and len(record.msg) == 2:
                found.append(record.msg)

    logger, handler = logging.getLogger("peewee"), Capture(logging.DEBUG)
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield found
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


@contextmanager
def autocommit_connection(url: str, **params):
    """A raw autocommit psycopg2 connection to ``url``, independent of the pool under test; closed after."""
    conn = psycopg2.connect(url, **params)
    conn.autocommit = True
    try:
        yield conn
    finally:
        conn.close()


@contextmanager
def initialized(url: str, **options):
    """``marketstore.db_connection`` initialized on ``url``'s emptied tables; closed afterwards."""
    truncate_all(url)
    connection = marketstore.initialize_database(url, pool_timeout=5, **options)
    try:
        yield connection
    finally:
        marketstore.close_database()


def execute(url: str, sql: str) -> None:
    """Run ``sql`` on a fresh autocommit connection to ``url`` (DDL, CREATE/DROP DATABASE)."""
    with autocommit_connection(url) as conn, conn.cursor() as cur:
        cur.execute(sql)


def truncate_all(url: str) -> None:
    """Empty every table of the models (ids restarted), from a fresh connection."""
    execute(url, f"TRUNCATE {', '.join(m._meta.table_name for m in MODELS)} RESTART IDENTITY CASCADE")


# -- price bars -----------------------------------------------------------------------

def bar(symbol: str, minute: int, low_cents: int = 10_000, span: int = 200, o: int = 50, c: int = 150,
        volume: int = 1_000, interval: str = "1m") -> dict:
    """A valid bar ``minute`` minutes after :data:`T0`, its prices given in cents within ``span``."""
    low = Decimal(low_cents) / 100
    return {"symbol": symbol, "timestamp": T0 + minute * MINUTE, "interval": interval,
            "low": low, "high": low + Decimal(span) / 100,
            "open": low + Decimal(min(o, span)) / 100, "close": low + Decimal(min(c, span)) / 100,
            "volume": Decimal(volume)}


def random_bars(rng: random.Random, symbol: str, count: int, interval: str = "1m", horizon: int = 5_000):
    minutes = rng.sample(range(horizon), count)
    rows = []
    for m in minutes:
        span = rng.randint(0, 500)
        rows.append(bar(symbol, m, rng.randint(100, 100_000), span, rng.randint(0, span), rng.randint(0, span),
                        rng.randint(0, 10**6), interval))
    return rows


def bar_at(timestamp, symbol="AAPL") -> dict:
    """A valid bar at ``timestamp``, its values given as text."""
    return dict(symbol=symbol, timestamp=timestamp, open="10", high="11", low="9", close="10.5", volume="100")


def price_row(n: int = 0, symbol: str = "AAPL", **overrides) -> dict:
    """A valid bar ``n`` minutes after 2024-01-01 00:00 UTC."""
    row = dict(symbol=symbol, timestamp=dt.datetime(2024, 1, 1, tzinfo=UTC) + dt.timedelta(minutes=n),
               open=10, high=12, low=9, close=11, volume=100)
    row.update(overrides)
    return row


def stored_prices(raw, symbol=None) -> list[tuple]:
    """(symbol, interval, timestamp, open, high, low, close, volume) read back raw, ordered."""
    with raw.cursor() as cur:
        cur.execute('SELECT symbol, "interval", "timestamp", open, high, low, close, volume FROM prices '
                    "WHERE %s IS NULL OR symbol = %s ORDER BY 1, 2, 3", (symbol, symbol))
        return cur.fetchall()


def as_tuple(row: dict) -> tuple:
    """A bar as :func:`stored_prices` reads it back."""
    return (row["symbol"], row["interval"], row["timestamp"], row["open"], row["high"], row["low"],
            row["close"], row["volume"])


def wait_for_copy_progress(url: str, timeout: float = 3.0) -> int | None:
    """Rows the server's running COPY into prices has processed, once it is > 0; None on timeout."""
    conn = psycopg2.connect(url)
    conn.autocommit = True
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with conn.cursor() as cur:
                cur.execute("SELECT tuples_processed FROM pg_stat_progress_copy "
                            "WHERE datname = current_database() AND relid = 'prices'::regclass")
                found = cur.fetchone()
            if found and found[0] > 0:
                return found[0]
            time.sleep(0.02)
        return None
    finally:
        conn.close()


def server_of(url: str) -> tuple[str, int, str]:
    """``(host, port, database)`` libpq reads from ``url``: a socket directory for the embedded server."""
    from psycopg2.extensions import parse_dsn

    params = parse_dsn(url)
    host = (params.get("host") or params.get("hostaddr") or "localhost").split(",")[0]
    return host, int((params.get("port") or "5432").split(",")[0]), params.get("dbname", "")
