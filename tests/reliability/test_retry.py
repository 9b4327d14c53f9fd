"""Deadlocks and serialization failures, and ``marketstore.retry_transaction``.

The conflicts are real: two sessions locking two orders in opposite order (the
server's deadlock detector picks a victim), and REPEATABLE READ transactions
whose row a concurrent writer changed (SQLSTATE 40001), produced on demand
from a raw connection so that the number of failures is exact.

``retry_transaction(fn, retries=3, backoff=0.05, max_backoff=2.0)`` calls
``fn()`` - one whole transaction - and re-runs it on ``SerializationFailure``
only, at most ``retries`` times after the first attempt, sleeping
``backoff * 2**n`` (capped at ``max_backoff``; jittered down to no less than
half) before re-run ``n + 1``; then the last failure is re-raised. Called
inside an open session it never retries: the outer transaction is what must be
re-run. ``@retry_transaction(retries=...)`` and ``@retry_transaction()`` wrap a
function instead.
"""
from __future__ import annotations

import threading
import time

import pytest

import marketstore
from marketstore import (
    DatabaseConnectionError,
    IntegrityViolation,
    OrderRepository,
    SerializationFailure,
    get_db_session,
)

from reliability_helpers import Threads, backend_pid, chain, kill_backend, order_row, pgcodes, query


@pytest.fixture
def two_orders(store):
    repo = OrderRepository()
    return repo.create(**order_row("DL-1", quantity=100)).id, repo.create(**order_row("DL-2", quantity=100)).id


def filled(admin, *ids: int) -> tuple:
    rows = dict(query(admin, "SELECT id, filled_quantity FROM orders WHERE id = ANY(%s)", (list(ids),)))
    return tuple(int(rows[i]) for i in ids)


def lock_both(first: int, second: int, amount: int, both_locked: threading.Barrier | None) -> None:
    """One transaction: add ``amount`` to ``first`` then to ``second`` (row locks in that order)."""
    with get_db_session("fill", "Order") as db:
        db.execute_sql("UPDATE orders SET filled_quantity = filled_quantity + %s WHERE id = %s", (amount, first))
        if both_locked is not None:
            both_locked.wait()
        db.execute_sql("UPDATE orders SET filled_quantity = filled_quantity + %s WHERE id = %s", (amount, second))


def run_opposed(first_call, second_call) -> dict[str, object]:
    results: dict[str, object] = {}

    def run(label, call):
        try:
            results[label] = call()
        except BaseException as exc:  # inspected by the test
            results[label] = exc

    threads = Threads()
    threads.start(run, "a", first_call)
    threads.start(run, "b", second_call)
    threads.join(30)
    return results


def test_opposite_lock_order_deadlock_gives_exactly_one_serialization_failure(two_orders, store, admin):
    one, two = two_orders
    barrier = threading.Barrier(2, timeout=10)
    results = run_opposed(lambda: lock_both(one, two, 1, barrier), lambda: lock_both(two, one, 2, barrier))

    failures = {k: v for k, v in results.items() if isinstance(v, BaseException)}
    assert len(failures) == 1, results
    (loser, error), = failures.items()
    assert isinstance(error, SerializationFailure), error
    assert "40P01" in pgcodes(error)  # deadlock_detected, chained
    assert any(isinstance(link, marketstore.TransactionError) for link in chain(error))
    # The winner's transaction committed whole; the victim's left no trace.
    winner_amount = 2 if loser == "a" else 1
    assert filled(admin, one, two) == (winner_amount, winner_amount)
    assert store.pool_status()["in_use"] == 0


def test_retry_transaction_completes_both_deadlocked_transactions(two_orders, store, admin):
    retry_transaction = marketstore.retry_transaction
    one, two = two_orders
    barrier = threading.Barrier(2, timeout=10)
    attempts = {"a": 0, "b": 0}

    def transaction(label, first, second, amount):
        attempts[label] += 1
        # Only the first attempts meet at the barrier; a re-run must not wait for the other.
        lock_both(first, second, amount, barrier if attempts[label] == 1 else None)
        return label

    results = run_opposed(
        lambda: retry_transaction(lambda: transaction("a", one, two, 1), retries=3),
        lambda: retry_transaction(lambda: transaction("b", two, one, 2), retries=3),
    )
    assert results == {"a": "a", "b": "b"}
    assert sorted(attempts.values()) == [1, 2]  # the deadlock victim ran once more
    assert filled(admin, one, two) == (3, 3)  # both transactions, each exactly once
    assert store.pool_status()["in_use"] == 0


def conflicting_fill(admin, order_id: int, conflict: bool, isolate: bool = True) -> None:
    """A REPEATABLE READ transaction that fails with 40001 when ``conflict``: a
    concurrent writer changes the row between its snapshot and its update.
    (``isolate=False`` inside an outer REPEATABLE READ session.)"""
    with get_db_session("fill", "Order") as db:
        if isolate:
            db.execute_sql("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        db.execute_sql("SELECT filled_quantity FROM orders WHERE id = %s", (order_id,))  # takes the snapshot
        if conflict:
            query(admin, "UPDATE orders SET filled_quantity = filled_quantity + 10 WHERE id = %s", (order_id,))
        db.execute_sql("UPDATE orders SET filled_quantity = filled_quantity + 1 WHERE id = %s", (order_id,))


def test_a_concurrent_update_under_repeatable_read_is_a_serialization_failure(two_orders, admin):
    one, _ = two_orders
    with pytest.raises(SerializationFailure) as info:
        conflicting_fill(admin, one, conflict=True)
    assert "40001" in pgcodes(info.value)
    assert filled(admin, one) == (10,)


@pytest.mark.parametrize("conflicts, retries", [(0, 3), (1, 3), (3, 3), (2, 5)])
def test_retry_transaction_reruns_until_success_and_returns_the_result(two_orders, admin, conflicts, retries):
    one, _ = two_orders
    calls = []

    def transaction():
        calls.append(time.monotonic())
        conflicting_fill(admin, one, conflict=len(calls) <= conflicts)
        return "done"

    assert marketstore.retry_transaction(transaction, retries=retries, backoff=0.01) == "done"
    assert len(calls) == conflicts + 1
    assert filled(admin, one) == (10 * conflicts + 1,)  # exactly one of our attempts committed


@pytest.mark.parametrize("retries", [0, 1, 3])
def test_retry_transaction_gives_up_after_retries_and_reraises_the_last_failure(two_orders, admin, retries):
    one, _ = two_orders
    calls = []
    errors = []

    def transaction():
        calls.append(1)
        try:
            conflicting_fill(admin, one, conflict=True)
        except SerializationFailure as exc:
            errors.append(exc)
            raise

    with pytest.raises(SerializationFailure) as info:
        marketstore.retry_transaction(transaction, retries=retries, backoff=0.01)
    assert len(calls) == retries + 1
    assert info.value is errors[-1]
    assert filled(admin, one) == (10 * (retries + 1),)  # none of our attempts committed


def test_retry_transaction_backs_off_exponentially_up_to_the_cap(two_orders, admin):
    one, _ = two_orders
    calls: list[float] = []

    def transaction():
        calls.append(time.monotonic())
        conflicting_fill(admin, one, conflict=len(calls) <= 4)

    marketstore.retry_transaction(transaction, retries=4, backoff=0.08, max_backoff=0.32)
    gaps = [b - a for a, b in zip(calls, calls[1:])]
    # Sleep before re-run n+1 is in [d/2, d] with d = min(0.32, 0.08 * 2**n); plus the attempt itself.
    for n, gap in enumerate(gaps):
        d = min(0.32, 0.08 * 2 ** n)
        assert d / 2 <= gap < d + 0.5, (n, gaps)
    assert sum(gaps) >= (0.08 + 0.16 + 0.32 + 0.32) / 2


@pytest.mark.parametrize("failure", ["integrity", "value-error", "connection-lost"])
def test_retry_transaction_does_not_retry_other_errors(two_orders, store, admin, failure):
    calls = []

    def transaction():
        calls.append(1)
        if failure == "integrity":
            OrderRepository().create(**order_row("DL-1"))  # duplicate order_id
        elif failure == "value-error":
            raise ValueError("not a database error")
        else:  # COMMIT's outcome would be unknown: never safe to re-run blindly
            with get_db_session() as db:
                kill_backend(admin, backend_pid(db))
                db.execute_sql("SELECT 1")

    expected = {"integrity": IntegrityViolation, "value-error": ValueError,
                "connection-lost": DatabaseConnectionError}[failure]
    with pytest.raises(expected):
        marketstore.retry_transaction(transaction, retries=3, backoff=0.01)
    assert calls == [1]


def test_retry_transaction_inside_an_open_session_does_not_retry(two_orders, admin):
    one, two = two_orders
    calls = []

    def inner():
        calls.append(1)
        conflicting_fill(admin, one, conflict=True, isolate=False)

    with pytest.raises(SerializationFailure):
        with get_db_session() as db:
            db.execute_sql("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            db.execute_sql("UPDATE orders SET filled_quantity = 5 WHERE id = %s", (two,))
            marketstore.retry_transaction(inner, retries=3, backoff=0.01)
    assert calls == [1]  # re-running only the inner part cannot help: the outer must re-run
    assert filled(admin, one, two) == (10, 0)


def test_retry_transaction_as_a_decorator_retries_every_call_and_passes_arguments(two_orders, admin):
    one, two = two_orders
    calls = []

    @marketstore.retry_transaction(retries=2, backoff=0.01)
    def fill(order_id, *, conflicts):
        """Fill one order."""
        calls.append(order_id)
        conflicting_fill(admin, order_id, conflict=calls.count(order_id) <= conflicts)
        return order_id

    assert fill(one, conflicts=1) == one
    assert fill(two, conflicts=2) == two
    assert calls == [one, one, two, two, two]
    assert filled(admin, one, two) == (11, 21)
    assert fill.__name__ == "fill" and fill.__doc__ == "Fill one order."

    @marketstore.retry_transaction()
    def fill_default(order_id):
        calls.append(order_id)
        conflicting_fill(admin, order_id, conflict=True)

    with pytest.raises(SerializationFailure):  # default retries=3: four attempts, all conflicting
        fill_default(one)
    assert calls.count(one) == 2 + 4


@pytest.mark.parametrize("bad", [dict(retries=-1), dict(retries=1.5), dict(retries=True),
                                 dict(backoff=-0.1), dict(backoff=float("nan")), dict(max_backoff=float("inf"))])
def test_retry_transaction_refuses_bad_arguments(store, bad):
    calls = []
    with pytest.raises(marketstore.DataValidationError) as info:
        marketstore.retry_transaction(lambda: calls.append(1), **bad)
    assert next(iter(bad)) in str(info.value)
    assert calls == []
