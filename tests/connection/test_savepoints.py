"""Which repository calls inside a session take a savepoint: writes do (a caller may
catch a failed write and go on), reads (``@reads``) join the transaction without one.
Statements counted through the ``peewee`` logger, on the real database."""
from __future__ import annotations

import datetime as dt

import pytest

from marketstore import IntegrityViolation, get_db_session
from helpers import UTC, count_rows, price_row, sent_statements

START, END = dt.datetime(2024, 1, 1, tzinfo=UTC), dt.datetime(2024, 1, 2, tzinfo=UTC)

READS = {
    "get_range": lambda prices: prices.get_range("AAPL", START, END),
    "latest_for_symbols": lambda prices: prices.latest_for_symbols(["AAPL", "MSFT"]),
    "latest": lambda prices: prices.latest("AAPL"),
    "count": lambda prices: prices.count(symbol="AAPL"),
    "get_by_id": lambda prices: prices.get_by_id(1),
}


def savepoint_statements(statements) -> list[str]:
    marks = ("SAVEPOINT", "RELEASE", "ROLLBACK TO")
    return [sql for sql, _ in statements if sql.lstrip().upper().startswith(marks)]


@pytest.mark.parametrize("name", READS)
def test_a_read_inside_a_session_joins_its_transaction_without_a_savepoint(prices, name):
    prices.create(**price_row(0))
    with sent_statements() as statements:
        with get_db_session():
            READS[name](prices)
            READS[name](prices)
    assert statements, "the reads were not logged: the test would prove nothing"
    assert savepoint_statements(statements) == []


def test_a_write_inside_a_session_still_takes_a_savepoint(prices):
    with sent_statements() as statements:
        with get_db_session():
            prices.create(**price_row(0))
    assert [sql.split()[0] for sql in savepoint_statements(statements)] == ["SAVEPOINT", "RELEASE"]


def test_reads_between_writes_keep_a_caught_write_failure_recoverable(prices, raw):
    with get_db_session():
        prices.create(**price_row(0))
        prices.get_range("AAPL", START, END)
        with pytest.raises(IntegrityViolation):
            prices.create(**price_row(0))  # rolled back to its savepoint
        assert len(prices.get_range("AAPL", START, END)) == 1
        prices.create(**price_row(1))
    assert count_rows(raw, "prices") == 2

