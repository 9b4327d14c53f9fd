"""Helpers shared by the test modules (here, not in conftest.py: ``from conftest
import`` is ambiguous once tests/reliability has a conftest.py of its own)."""
from __future__ import annotations

import datetime as dt
import logging
import time
from contextlib import contextmanager
from pathlib import Path

import psycopg2

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

SERVER_TIMEOUT = 10.0  # upper bound for the server to notice a closed socket


def count_rows(conn, table: str) -> int:
    """Rows of ``table``, read through ``conn`` (a raw psycopg2 connection)."""
    with conn.cursor() as cur:
        cur.execute(f"SELECT count(*) FROM {table}")
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


def execute(url: str, sql: str) -> None:
    """Run ``sql`` on a fresh autocommit connection to ``url`` (DDL, CREATE/DROP DATABASE)."""
    conn = psycopg2.connect(url)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
    finally:
        conn.close()


def truncate_all(url: str) -> None:
    """Empty every table of the models (ids restarted), from a fresh connection."""
    execute(url, f"TRUNCATE {', '.join(m._meta.table_name for m in MODELS)} RESTART IDENTITY CASCADE")
