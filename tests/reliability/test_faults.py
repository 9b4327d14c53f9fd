"""Real faults against a real server: restarts, killed backends, exhaustion, timeouts.

Every fault is the real thing (pg_ctl restart, pg_terminate_backend, 60
threads on 30 connections, a statement that outlives statement_timeout); the
pool is never mocked. Writes are checked from a separate raw connection.
"""
from __future__ import annotations

import os
import signal
import threading
import time
from contextlib import ExitStack, contextmanager

import psycopg2
import pytest

import marketstore
from marketstore import (
    DatabaseConnectionError,
    MarketstoreError,
    OrderRepository,
    PoolExhaustedError,
    PriceRepository,
    QueryError,
    get_db_session,
    initialize_database,
)
from marketstore import pool as pool_module

from reliability_helpers import (
    DRIVER_ERRORS,
    Threads,
    app_name,
    backend_pid,
    backends,
    chain,
    count_rows,
    eventually,
    held_sessions,
    kill_backend,
    order_row,
    pgcodes,
    price_row,
    query,
)

HANG = 20.0  # a session still running this long after a fault has hung


def assert_translated(exc: BaseException) -> None:
    """A marketstore error, with the driver error it came from chained (never raw)."""
    assert isinstance(exc, MarketstoreError), f"raw {type(exc).__module__}.{type(exc).__name__}: {exc}"
    # Ours are Peewee exceptions too (so `except peewee.OperationalError` works); the
    # raw one is the driver's or Peewee's own, chained behind it.
    assert not isinstance(exc, psycopg2.Error)
    assert any(isinstance(link, DRIVER_ERRORS) and not isinstance(link, MarketstoreError)
               for link in chain(exc)[1:]), "the driver error must be chained"


# -- server restart ------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_after_a_server_restart_every_pooled_connection_is_replaced_unseen(cluster, store, mode):
    name = store.settings.application_name
    with held_sessions(30) as before:  # fill the pool: 30 open, 10 kept idle afterwards
        assert len(set(before)) == 30
    # The overflow closes after the idle grace (pool_idle_grace, 1 s by default).
    expected = {"max_connections": 30, "pool_size": 10, "in_use": 0, "idle": 10, "replicas": []}
    assert eventually(store.pool_status, expected, 3) == expected

    cluster.restart(mode)  # immediate: a crash, with WAL recovery at start

    # The next session succeeds, and so does every later one: all 10 dead idle
    # connections are found at checkout and replaced, one after the other...
    for _ in range(12):
        with get_db_session() as db:
            assert db.execute_sql("SELECT 1").fetchone() == (1,)
            assert backend_pid(db) not in before
    # ...and when 30 sessions check out at once (every idle one dead at the same time).
    with held_sessions(30) as after:
        assert not set(after) & set(before)
    assert store.pool_status()["in_use"] == 0
    fresh = psycopg2.connect(cluster.url("marketstore"))
    fresh.autocommit = True
    try:  # autocommit: pg_stat_activity is a snapshot per transaction
        assert eventually(lambda: len(backends(fresh, name)), 10) == 10
    finally:
        fresh.close()


@pytest.mark.parametrize("where", ["idle-in-transaction", "mid-statement"])
def test_a_transaction_in_flight_during_a_restart_fails_cleanly_and_writes_nothing(cluster, store, where):
    inserted = threading.Event()
    restarted = threading.Event()
    outcome: dict[str, object] = {}

    def in_flight():
        started = time.monotonic()
        try:
            with get_db_session("in_flight", "Price") as db:
                PriceRepository().create(**price_row(1))
                PriceRepository().create(**price_row(2))
                inserted.set()
                if where == "mid-statement":
                    db.execute_sql("SELECT pg_sleep(30)")  # the restart lands during this
                else:
                    assert restarted.wait(HANG)
                PriceRepository().create(**price_row(3))
            outcome["result"] = "committed"
        except BaseException as exc:  # inspected by the test
            outcome["result"] = exc
        outcome["seconds"] = time.monotonic() - started

    threads = Threads()
    threads.start(in_flight)
    try:
        assert inserted.wait(HANG)
        if where == "mid-statement":
            time.sleep(0.2)  # let pg_sleep start
        cluster.restart("fast")
        restarted.set()
    finally:
        restarted.set()
        threads.join(HANG + 10)

    error = outcome["result"]
    assert isinstance(error, DatabaseConnectionError), error
    assert not isinstance(error, PoolExhaustedError)
    assert_translated(error)
    assert outcome["seconds"] < HANG, "the failed transaction must not hang"
    assert store.pool_status()["in_use"] == 0
    with psycopg2.connect(cluster.url("marketstore")) as fresh:
        assert count_rows(fresh, "prices") == 0
    fresh.close()
    # And the pool is healthy again for the next caller.
    PriceRepository().create(**price_row(9))


def test_while_the_server_is_down_sessions_fail_fast_and_recover_when_it_returns(cluster, store):
    with get_db_session():
        pass
    cluster.stop("fast")
    try:
        for _ in range(3):
            started = time.monotonic()
            with pytest.raises(DatabaseConnectionError) as info:
                with get_db_session() as db:
                    db.execute_sql("SELECT 1")
            assert not isinstance(info.value, PoolExhaustedError)
            assert_translated(info.value)
            assert time.monotonic() - started < 5
        assert store.health_check() is False
        assert store.pool_status()["in_use"] == 0
    finally:
        cluster.start()
    assert store.health_check() is True
    PriceRepository().create(**price_row(1))


# -- killed backend --------------------------------------------------------------------

@pytest.mark.parametrize("when", ["before-next-statement", "before-commit", "during-statement"])
def test_killed_backend_mid_transaction_raises_connection_error_and_writes_nothing(store, admin, when):
    name = store.settings.application_name
    with pytest.raises(DatabaseConnectionError) as info:
        with get_db_session("orders", "Order") as db:
            pid = backend_pid(db)
            OrderRepository().create(**order_row("K-1"))
            PriceRepository().bulk_create([price_row(n) for n in range(50)])
            if when == "during-statement":
                killer = threading.Timer(0.3, kill_backend, (admin, pid))
                killer.start()
                try:
                    db.execute_sql("SELECT pg_sleep(10)")
                finally:
                    killer.join()
            else:
                kill_backend(admin, pid)
                if when == "before-next-statement":
                    OrderRepository().create(**order_row("K-2"))
            # before-commit: the block ends normally; COMMIT meets the dead connection
    assert not isinstance(info.value, PoolExhaustedError)
    assert_translated(info.value)
    assert pgcodes(info.value) <= {"57P01"}  # admin_shutdown, when the server said anything

    assert store.pool_status()["in_use"] == 0
    assert store.pool_status()["idle"] == 0, "the broken connection must be discarded, not pooled"
    assert count_rows(admin, "orders") == 0
    assert count_rows(admin, "prices") == 0
    assert eventually(lambda: backends(admin, name), []) == []
    # The next caller gets a fresh connection.
    with get_db_session() as db:
        assert backend_pid(db) != pid


def test_killed_idle_connections_are_replaced_at_checkout(store, admin):
    name = store.settings.application_name
    with held_sessions(10) as pids:
        pass
    assert store.pool_status()["idle"] == 10
    for pid in pids:
        kill_backend(admin, pid)
    for _ in range(10):  # each checkout meets a dead one first
        OrderRepository().count()
    assert store.pool_status() == {"max_connections": 30, "pool_size": 10, "in_use": 0, "idle": 1, "replicas": []}
    assert not set(backends(admin, name)) & set(pids)


# -- pool exhaustion under load --------------------------------------------------------

def test_sixty_threads_on_thirty_connections_succeed_or_get_pool_exhausted_and_leak_nothing(
        cluster_url, store, admin):
    name = app_name()
    conn = initialize_database(cluster_url, pool_size=10, max_overflow=20, pool_timeout=0.3,
                               application_name=name)
    outcomes: list[object] = []
    lock = threading.Lock()
    start = threading.Barrier(60, timeout=30)
    observed: list[int] = []
    stop = threading.Event()

    def worker(w: int):
        start.wait()
        for n in range(4):
            try:
                with get_db_session("load", "Price") as db:
                    db.execute_sql("SELECT pg_sleep(0.4)")  # longer than pool_timeout
                    PriceRepository().create(**price_row(n, f"W{w}"))
                result: object = "ok"
            except PoolExhaustedError as exc:
                result = exc
            except BaseException as exc:  # anything else is a failure of the test
                result = exc
            with lock:
                outcomes.append(result)

    def watch():
        while not stop.is_set():
            observed.append(len(backends(admin, name)))
            time.sleep(0.02)

    threads, watcher = Threads(), Threads()
    watcher.start(watch)
    try:
        for w in range(60):
            threads.start(worker, w)
        threads.join(120)
    finally:
        stop.set()
        watcher.join(10)
    assert not threads.errors and not watcher.errors, threads.errors + watcher.errors

    ok = sum(1 for o in outcomes if o == "ok")
    exhausted = [o for o in outcomes if isinstance(o, PoolExhaustedError)]
    other = [o for o in outcomes if o != "ok" and not isinstance(o, PoolExhaustedError)]
    assert len(outcomes) == 240
    assert other == [], other[:3]
    assert ok > 0 and exhausted, (ok, len(exhausted))  # the load really contended
    assert all(isinstance(e, DatabaseConnectionError) for e in exhausted)

    # Exactly the successful calls wrote; a timed-out checkout wrote nothing.
    assert count_rows(admin, "prices") == ok
    # Never more than 30 server connections; nothing leaked afterwards.
    assert max(observed) <= 30, max(observed)
    status = conn.pool_status()
    assert status["in_use"] == 0
    # At most pool_size kept once the idle grace (1 s by default) has passed.
    assert eventually(lambda: conn.pool_status()["idle"] <= 10, True, 3)
    assert eventually(lambda: len(backends(admin, name)) <= 10, True)
    assert len(backends(admin, name, "idle")) <= 10
    with get_db_session() as db:
        assert db.execute_sql("SELECT 1").fetchone() == (1,)


# -- statement timeout -----------------------------------------------------------------

@pytest.mark.parametrize("source", ["environment", "option"])
def test_statement_timeout_raises_query_error_and_the_connection_stays_usable(
        cluster_url, store, monkeypatch, source):
    if source == "environment":
        monkeypatch.setenv("MARKETSTORE_STATEMENT_TIMEOUT", "200")
        conn = initialize_database(cluster_url, application_name=app_name())
    else:
        conn = initialize_database(cluster_url, statement_timeout=200, application_name=app_name())
    with get_db_session() as db:
        pid = backend_pid(db)
        assert db.execute_sql("SHOW statement_timeout").fetchone() == ("200ms",)

    started = time.monotonic()
    with pytest.raises(QueryError) as info:
        with get_db_session("slow report") as db:
            PriceRepository().create(**price_row(1))
            db.execute_sql("SELECT pg_sleep(5)")
    assert time.monotonic() - started < 2.5
    assert not isinstance(info.value, DatabaseConnectionError)
    assert_translated(info.value)
    assert "57014" in pgcodes(info.value)  # query_canceled
    assert "slow report" in str(info.value)

    # The same connection went back to the pool and works.
    assert conn.pool_status()["idle"] == 1
    with get_db_session() as db:
        assert backend_pid(db) == pid
        assert db.execute_sql("SELECT 1").fetchone() == (1,)
    PriceRepository().create(**price_row(2))
    assert PriceRepository().count() == 1  # the timed-out transaction wrote nothing


def test_statement_timeout_bounds_a_repository_call_blocked_on_a_row_lock(cluster_url, store, admin):
    initialize_database(cluster_url, statement_timeout=300, application_name=app_name())
    order = OrderRepository().create(**order_row("LOCKED"))
    locker = psycopg2.connect(cluster_url)
    try:
        query(locker, "SELECT 1 FROM orders WHERE id = %s FOR UPDATE", (order.id,))  # held: no commit
        started = time.monotonic()
        with pytest.raises(QueryError):
            OrderRepository().update(order.id, price=101)
        assert time.monotonic() - started < 3
    finally:
        locker.rollback()
        locker.close()
    assert OrderRepository().update(order.id, price=101).price == 101


# -- a hung server: one stuck caller must not stall the pool ---------------------------

@contextmanager
def frozen(pid: int):
    """SIGSTOP a server process (a hung server, or one behind a silent network drop); always SIGCONT."""
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def finishes(fn, timeout: float) -> bool:
    """Whether ``fn()`` returns within ``timeout`` seconds (it runs in a thread that is joined later)."""
    done = threading.Event()
    thread = threading.Thread(target=lambda: (fn(), done.set()), daemon=True)
    thread.start()
    finishes.threads.append(thread)
    return done.wait(timeout)


finishes.threads = []


def one_session() -> None:
    with get_db_session() as db:
        db.execute_sql("SELECT 1")


@pytest.fixture
def stuck_threads():
    """Threads left blocked by a frozen server; joined once the server runs again."""
    finishes.threads = []
    yield
    for thread in finishes.threads:
        thread.join(30)
    assert not any(t.is_alive() for t in finishes.threads), "a thread stayed blocked after the server resumed"


def test_a_hanging_connect_does_not_block_other_sessions(cluster, store, stuck_threads):
    inside, release = threading.Event(), threading.Event()

    def busy_session():
        with get_db_session() as db:
            db.execute_sql("SELECT 1")
            inside.set()
            release.wait(30)

    holder = threading.Thread(target=busy_session, daemon=True)
    holder.start()
    finishes.threads.append(holder)
    assert inside.wait(10)
    with frozen(cluster.postmaster_pid()):  # new connections hang in the startup handshake
        assert not finishes(one_session, 1.0), "the connect should hang"
        release.set()  # the holder's session ends: its check-in needs no server at all
        holder.join(3)
        blocked = holder.is_alive()
    assert not blocked, "a check-in waited for another thread's hanging connect"


def test_a_hanging_pre_ping_does_not_block_the_pool(cluster, store, monkeypatch, stuck_threads):
    monkeypatch.setattr(pool_module, "FULL_PING_AFTER_IDLE", 0.0)  # every reuse gets the round trip
    with held_sessions(2) as pids:
        pass
    assert store.pool_status()["idle"] == 2
    with ExitStack() as stack:
        for pid in pids:  # both idle backends stop answering
            stack.enter_context(frozen(pid))
        assert not finishes(one_session, 1.0), "the pre-ping should hang"
        status_answers = finishes(store.pool_status, 1.0)
    assert status_answers, "pool_status() waited for another thread's pre-ping"
