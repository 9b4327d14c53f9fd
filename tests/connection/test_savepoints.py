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
    # Sent with the INSERT; the session's COMMIT releases it.
    assert [sql.split()[0] for sql in savepoint_statements(statements)] == ["SAVEPOINT"]


def test_reads_between_writes_keep_a_caught_write_failure_recoverable(prices, raw):
    with get_db_session():
        prices.create(**price_row(0))
        prices.get_range("AAPL", START, END)
        with pytest.raises(IntegrityViolation):
            prices.create(**price_row(0))  # rolled back to its savepoint
        assert len(prices.get_range("AAPL", START, END)) == 1
        prices.create(**price_row(1))
    assert count_rows(raw, "prices") == 2



def messages(statements) -> list[str]:
    """Each statement sent, as its commands' first words: ``SAVEPOINT+INSERT`` for one message of two."""
    return ["+".join(part.split()[0].upper() for part in sql.split("; ") if part.strip()) for sql, _ in statements]


def test_a_write_sends_its_savepoint_with_its_first_statement(db):
    from marketstore import OrderRepository
    orders = OrderRepository()
    with sent_statements() as statements:
        with get_db_session():
            orders.create(order_id="sp-1", symbol="AAPL", order_type="market", side="buy", quantity=1)
            orders.transition("sp-1", "submitted")
    # create: its RETURNING rows are the last result, so COMMIT releases its savepoint;
    # transition's audit row returns nothing the caller needs: RELEASE rides with it.
    assert messages(statements) == ["SAVEPOINT+INSERT", "SAVEPOINT+SELECT", "UPDATE", "INSERT+RELEASE"]


def test_a_transaction_leaves_at_most_sixteen_savepoints_to_its_commit(db):
    from marketstore import OrderRepository
    from marketstore.repository import UNRELEASED_SAVEPOINTS
    orders = OrderRepository()
    with sent_statements() as statements:
        for session in range(2):  # the count starts again with each transaction
            with get_db_session():
                for n in range(UNRELEASED_SAVEPOINTS + 4):
                    orders.create(order_id=f"many-{session}-{n}", symbol="AAPL", order_type="market", side="buy",
                                  quantity=1)
    assert messages(statements).count("RELEASE") == 2 * 4


def test_writes_left_unreleased_keep_the_callers_savepoints_meaning(db, raw):
    from marketstore import OrderRepository
    orders = OrderRepository()

    def order(name):
        return orders.create(order_id=name, symbol="AAPL", order_type="market", side="buy", quantity=1)

    with get_db_session() as session:
        order("kept-1")  # its savepoint left open
        with session.atomic():  # the caller's savepoint, nested in it: released
            order("kept-2")
        with pytest.raises(RuntimeError):
            with session.atomic():  # rolled back to, with the write's savepoint made inside it
                order("undone")
                raise RuntimeError("undo")
        order("kept-3")
    with raw.cursor() as cur:
        cur.execute("SELECT order_id FROM orders ORDER BY id")
        assert [name for name, in cur.fetchall()] == ["kept-1", "kept-2", "kept-3"]


def test_a_write_outside_a_session_takes_no_savepoint(db):
    from marketstore import OrderRepository
    with sent_statements() as statements:
        OrderRepository().create(order_id="sp-2", symbol="AAPL", order_type="market", side="buy", quantity=1)
    assert messages(statements) == ["INSERT"]


def test_a_refused_move_inside_a_session_rolls_back_to_its_savepoint(db, raw):
    from marketstore import DataValidationError, OrderRepository
    orders = OrderRepository()
    with get_db_session():
        orders.create(order_id="sp-3", symbol="AAPL", order_type="market", side="buy", quantity=1)
        with pytest.raises(DataValidationError):
            orders.transition("sp-3", "filled", average_fill_price=10)  # pending -> filled is illegal
        with pytest.raises(IntegrityViolation):
            orders.create(order_id="sp-3", symbol="AAPL", order_type="market", side="buy", quantity=1)
        assert orders.transition("sp-3", "submitted").status == "submitted"  # the session goes on
    assert count_rows(raw, "orders") == 1 and count_rows(raw, "order_events") == 1
