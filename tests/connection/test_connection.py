"""The connection layer on a real server: pool limits, self-healing, sessions, secrecy.

Every test that counts server connections uses its own ``application_name`` so
that other tests (and other engineers on the same server) cannot skew the count.
"""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
import traceback
from contextlib import contextmanager

import peewee
import psycopg2
import psycopg2.errors
import pytest

import marketstore
from marketstore import (
    DatabaseConnection,
    DatabaseConnectionError,
    IntegrityViolation,
    PoolExhaustedError,
    Price,
    PriceRepository,
    QueryError,
    SerializationFailure,
    get_db_session,
    initialize_database,
)
from marketstore import pool as pool_module
from helpers import app_name, backend_pid, count_rows, eventually, price_row


def server_connections(raw, application_name: str) -> int:
    with raw.cursor() as cur:
        cur.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s AND datname = current_database()",
            (application_name,),
        )
        return cur.fetchone()[0]


def backend_alive(raw, pid: int) -> bool:
    with raw.cursor() as cur:
        cur.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (pid,))
        return cur.fetchone()[0] > 0


def kill_backend(raw, pid: int) -> None:
    with raw.cursor() as cur:
        cur.execute("SELECT pg_terminate_backend(%s)", (pid,))
        assert cur.fetchone()[0] is True
    assert eventually(lambda: backend_alive(raw, pid), False) is False


@contextmanager
def held_sessions(n: int, connection=None):
    """Run ``n`` threads that each sit inside a session until the block ends.

    Yields the backend pids once all ``n`` are inside; threads are always
    released and joined, and any error they hit is re-raised here.
    """
    connection = connection or marketstore.db_connection
    inside = threading.Barrier(n + 1, timeout=30)
    release = threading.Event()
    pids: list[int] = []
    errors: list[BaseException] = []

    def hold():
        try:
            with connection.session("hold") as db:
                pids.append(backend_pid(db))
                inside.wait()
                release.wait(30)
        except BaseException as exc:  # reported to the test below
            errors.append(exc)
            inside.abort()

    threads = [threading.Thread(target=hold, daemon=True) for _ in range(n)]
    for thread in threads:
        thread.start()
    try:
        try:
            inside.wait()
        except threading.BrokenBarrierError:
            pass
        if errors:
            raise errors[0]
        yield pids
    finally:
        release.set()
        for thread in threads:
            thread.join(30)
        assert not any(t.is_alive() for t in threads), "a session thread did not finish"
    if errors:
        raise errors[0]


# -- pool limits ---------------------------------------------------------------

def test_31st_session_waits_pool_timeout_then_raises_pool_exhausted(db, raw, database_url):
    name = app_name()
    timeout = 0.7
    conn = initialize_database(database_url, pool_timeout=timeout, application_name=name)

    with held_sessions(30) as pids:
        assert len(set(pids)) == 30
        assert conn.pool_status() == {"max_connections": 30, "pool_size": 10, "in_use": 30, "idle": 0, "replicas": []}
        assert server_connections(raw, name) == 30
        started = time.monotonic()
        with pytest.raises(PoolExhaustedError) as info:
            with get_db_session():
                pytest.fail("the 31st session must not get a connection")
        elapsed = time.monotonic() - started
        assert timeout <= elapsed < timeout + 0.5
        assert isinstance(info.value, DatabaseConnectionError)
        # The failed checkout took no slot.
        assert conn.pool_status()["in_use"] == 30

    assert conn.pool_status()["in_use"] == 0
    with get_db_session() as session:
        assert session.execute_sql("SELECT 1").fetchone() == (1,)


def test_waiting_session_gets_a_connection_freed_during_the_wait(db, database_url):
    conn = initialize_database(database_url, pool_size=1, max_overflow=0, pool_timeout=5,
                               application_name=app_name())
    release = threading.Event()
    inside = threading.Event()

    def hold():
        with get_db_session():
            inside.set()
            release.wait(0.3)  # then returns its connection

    thread = threading.Thread(target=hold, daemon=True)
    thread.start()
    try:
        assert inside.wait(10)
        started = time.monotonic()
        with get_db_session() as session:
            assert session.execute_sql("SELECT 1").fetchone() == (1,)
        # Woken by the check-in, well before pool_timeout.
        assert 0.2 <= time.monotonic() - started < 2.0
    finally:
        release.set()
        thread.join(10)
    assert not thread.is_alive()
    assert conn.pool_status()["in_use"] == 0


def test_zero_pool_timeout_fails_fast_instead_of_waiting_forever(db, database_url):
    # peewee's own pool reads timeout=0 as "wait forever"; SPEC's pool_timeout=0 means no wait.
    initialize_database(database_url, pool_size=1, max_overflow=0, pool_timeout=0, application_name=app_name())
    with held_sessions(1):
        started = time.monotonic()
        with pytest.raises(PoolExhaustedError):
            with get_db_session():
                pass
        assert time.monotonic() - started < 0.5


def test_at_most_pool_size_connections_are_kept_idle(db, raw, database_url):
    # Without an idle grace the surplus closes at check-in (the grace: test_idle_grace.py).
    name = app_name()
    conn = initialize_database(database_url, application_name=name, pool_idle_grace=0)

    with held_sessions(30):
        assert server_connections(raw, name) == 30

    assert conn.pool_status() == {"max_connections": 30, "pool_size": 10, "in_use": 0, "idle": 10, "replicas": []}
    assert eventually(lambda: server_connections(raw, name), 10) == 10


def test_idle_connections_are_reused(db, raw, database_url):
    name = app_name()
    initialize_database(database_url, application_name=name)
    with get_db_session() as session:
        first = backend_pid(session)
    with get_db_session() as session:
        second = backend_pid(session)
    assert first == second
    assert server_connections(raw, name) == 1


def test_pool_options_from_the_environment_take_effect(db, database_url, monkeypatch):
    monkeypatch.setenv("MARKETSTORE_POOL_SIZE", "2")
    monkeypatch.setenv("MARKETSTORE_MAX_OVERFLOW", "1")
    monkeypatch.setenv("MARKETSTORE_POOL_TIMEOUT", "0.3")
    monkeypatch.setenv("MARKETSTORE_POOL_IDLE_GRACE", "0")  # the surplus closes at check-in
    conn = initialize_database(database_url, application_name=app_name())
    with held_sessions(3):
        with pytest.raises(PoolExhaustedError):
            with get_db_session():
                pass
    assert conn.pool_status() == {"max_connections": 3, "pool_size": 2, "in_use": 0, "idle": 2, "replicas": []}


# -- pre-ping and broken connections ------------------------------------------

@pytest.mark.parametrize("full_ping_after", [10.0, 0.0], ids=["socket-poll", "round-trip"])
def test_pre_ping_replaces_an_idle_connection_the_server_dropped(db, raw, database_url, monkeypatch,
                                                                 full_ping_after, caplog):
    # Both pre-ping paths: the cheap socket poll, and the SELECT 1 for long-idle ones.
    monkeypatch.setattr(pool_module, "FULL_PING_AFTER_IDLE", full_ping_after)
    name = app_name()
    conn = initialize_database(database_url, application_name=name)
    with get_db_session() as session:
        dead = backend_pid(session)
    assert conn.pool_status()["idle"] == 1

    kill_backend(raw, dead)
    caplog.set_level(logging.ERROR, logger="marketstore")
    with get_db_session() as session:
        replacement = backend_pid(session)
        assert session.execute_sql("SELECT 1").fetchone() == (1,)

    assert replacement != dead
    assert conn.pool_status() == {"max_connections": 30, "pool_size": 10, "in_use": 0, "idle": 1, "replicas": []}
    assert server_connections(raw, name) == 1
    assert not caplog.records, "a replaced idle connection is not an error"


def test_without_pre_ping_a_dropped_connection_reaches_the_caller(db, raw, database_url):
    # The contrast that shows pre-ping is doing the work above.
    conn = initialize_database(database_url, pool_pre_ping=False, application_name=app_name())
    with get_db_session() as session:
        dead = backend_pid(session)
    kill_backend(raw, dead)

    with pytest.raises(DatabaseConnectionError):
        with get_db_session() as session:
            session.execute_sql("SELECT 1")
    assert conn.pool_status()["in_use"] == 0
    with get_db_session() as session:
        assert backend_pid(session) != dead


def test_backend_killed_while_in_use_raises_connection_error_and_frees_the_slot(db, raw, database_url):
    name = app_name()
    conn = initialize_database(database_url, application_name=name)

    with pytest.raises(DatabaseConnectionError) as info:
        with get_db_session() as session:
            pid = backend_pid(session)
            kill_backend(raw, pid)
            session.execute_sql("SELECT 1")
    assert not isinstance(info.value, PoolExhaustedError)
    assert isinstance(info.value.__cause__, (psycopg2.Error, peewee.PeeweeException))
    assert conn.pool_status()["in_use"] == 0
    assert conn.pool_status()["idle"] == 0

    with get_db_session() as session:
        assert backend_pid(session) != pid
    assert conn.pool_status() == {"max_connections": 30, "pool_size": 10, "in_use": 0, "idle": 1, "replicas": []}


def test_many_killed_sessions_do_not_leak_slots(db, raw, database_url):
    # With max 2 connections, a leaked slot per broken session would exhaust the
    # pool on the third round.
    conn = initialize_database(database_url, pool_size=1, max_overflow=1, pool_timeout=0.5,
                               application_name=app_name())
    for _ in range(4):
        with pytest.raises(DatabaseConnectionError):
            with get_db_session() as session:
                kill_backend(raw, backend_pid(session))
                session.execute_sql("SELECT 1")
    assert conn.pool_status()["in_use"] == 0
    with get_db_session() as session:
        assert session.execute_sql("SELECT 1").fetchone() == (1,)


# -- recycle -------------------------------------------------------------------

def test_connection_older_than_pool_recycle_is_replaced_at_checkout(db, raw, database_url):
    name = app_name()
    initialize_database(database_url, pool_recycle=0.2, application_name=name)
    with get_db_session() as session:
        old = backend_pid(session)
    time.sleep(0.3)
    with get_db_session() as session:
        new = backend_pid(session)
    assert new != old
    assert eventually(lambda: backend_alive(raw, old), False) is False
    assert eventually(lambda: server_connections(raw, name), 1) == 1


def test_pool_recycle_counts_from_creation_not_from_last_use(db, database_url):
    # A connection in constant use must still be replaced once it is old enough.
    initialize_database(database_url, pool_recycle=0.4, application_name=app_name())
    pids = []
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        with get_db_session() as session:
            pids.append(backend_pid(session))
        time.sleep(0.05)
    assert len(set(pids)) >= 2, "the connection was never recycled"
    assert pids[0] != pids[-1]


def test_connection_past_pool_recycle_is_closed_at_check_in(db, raw, database_url):
    name = app_name()
    conn = initialize_database(database_url, pool_recycle=0.2, application_name=name)
    with get_db_session():
        time.sleep(0.3)
    assert conn.pool_status()["idle"] == 0
    assert eventually(lambda: server_connections(raw, name), 0) == 0


def test_connection_within_pool_recycle_is_kept(db, database_url):
    initialize_database(database_url, pool_recycle=60, application_name=app_name())
    with get_db_session() as session:
        first = backend_pid(session)
    time.sleep(0.3)
    with get_db_session() as session:
        assert backend_pid(session) == first


# -- sessions: commit, rollback, savepoints ------------------------------------

def test_session_commits_on_success(db, raw):
    with get_db_session():
        PriceRepository().create(**price_row(1))
        PriceRepository().create(**price_row(2))
    assert count_rows(raw, "prices") == 2


def test_session_rolls_back_everything_on_error(db, raw):
    failure = RuntimeError("boom")
    with pytest.raises(RuntimeError) as info:
        with get_db_session():
            PriceRepository().create(**price_row(1))
            Price.insert(**price_row(2)).execute()
            raise failure
    assert info.value is failure
    assert count_rows(raw, "prices") == 0
    assert db.pool_status()["in_use"] == 0


def test_failed_nested_session_rolls_back_only_its_savepoint(db, raw):
    with get_db_session():
        PriceRepository().create(**price_row(1, "OUTER"))
        with pytest.raises(ValueError):
            with get_db_session():
                PriceRepository().create(**price_row(2, "INNER"))
                raise ValueError("inner fails")
        PriceRepository().create(**price_row(3, "OUTER"))
    with raw.cursor() as cur:
        cur.execute("SELECT symbol, count(*) FROM prices GROUP BY symbol")
        assert dict(cur.fetchall()) == {"OUTER": 2}


def test_constraint_failure_in_nested_session_leaves_outer_transaction_usable(db, raw):
    # Without a savepoint PostgreSQL would abort the whole outer transaction.
    repo = PriceRepository()
    with get_db_session():
        repo.create(**price_row(1))
        with pytest.raises(IntegrityViolation):
            repo.create(**price_row(1))
        repo.create(**price_row(2))
    assert count_rows(raw, "prices") == 2


def test_nested_session_shares_the_outer_connection(db):
    with get_db_session() as outer:
        pid = backend_pid(outer)
        with get_db_session() as inner:
            assert backend_pid(inner) == pid
            assert db.pool_status()["in_use"] == 1
    assert db.pool_status()["in_use"] == 0


@pytest.fixture
def peewee_error(error):
    return peewee.IntegrityError if error is IntegrityViolation else peewee.DatabaseError


@pytest.mark.parametrize("sql, error, pgerror", [
    ("INSERT INTO prices (symbol, timestamp, open, high, low, close, volume) "
     "VALUES ('DUP', '2024-01-01', 1, 1, 1, 1, 1)", IntegrityViolation, psycopg2.errors.UniqueViolation),
    ("INSERT INTO prices (symbol, timestamp, open, high, low, close, volume) "
     "VALUES ('BAD', '2024-01-01', 1, 1, 2, 1, 1)", IntegrityViolation, psycopg2.errors.CheckViolation),
    ("INSERT INTO sentiment_scores (article_id, score, confidence, model) VALUES (999999, 0, 0, 'm')",
     IntegrityViolation, psycopg2.errors.ForeignKeyViolation),
    ("INSERT INTO prices (symbol) VALUES ('X')", IntegrityViolation, psycopg2.errors.NotNullViolation),
    ("SELEC 1", QueryError, psycopg2.errors.SyntaxError),
    ("SELECT * FROM no_such_table", QueryError, psycopg2.errors.UndefinedTable),
    ("SELECT 1 / 0", QueryError, psycopg2.errors.DivisionByZero),
], ids=["unique", "check", "foreign-key", "not-null", "syntax", "undefined-table", "division-by-zero"])
def test_driver_errors_in_a_session_are_translated_and_chained(db, raw, sql, error, pgerror, peewee_error):
    with raw.cursor() as cur:
        cur.execute("INSERT INTO prices (symbol, timestamp, open, high, low, close, volume) "
                    "VALUES ('DUP', '2024-01-01', 1, 1, 1, 1, 1)")
    with pytest.raises(error) as info:
        with get_db_session() as session:
            session.execute_sql(sql)
    cause = info.value.__cause__
    assert isinstance(cause, (psycopg2.Error, peewee.PeeweeException))
    chain = [cause, cause.__cause__, cause.__context__] + list(getattr(cause, "args", ()))
    assert any(isinstance(link, pgerror) for link in chain), chain
    assert not isinstance(info.value, psycopg2.Error) and info.value is not cause
    # Plain Peewee habits keep working: the translated error is also Peewee's own.
    assert isinstance(info.value, peewee_error)
    # The connection survived the failed statement and went back to the pool.
    assert db.pool_status() == {"max_connections": 30, "pool_size": 10, "in_use": 0, "idle": 1, "replicas": []}
    with get_db_session() as session:
        assert session.execute_sql("SELECT 1").fetchone() == (1,)
    assert count_rows(raw, "prices") == 1


@pytest.mark.parametrize("exc", [KeyError("k"), ValueError("v"), marketstore.NotFoundError("nf")],
                         ids=["KeyError", "ValueError", "NotFoundError"])
def test_non_driver_exceptions_pass_through_unchanged(db, raw, exc):
    with pytest.raises(type(exc)) as info:
        with get_db_session():
            PriceRepository().create(**price_row())
            raise exc
    assert info.value is exc
    assert count_rows(raw, "prices") == 0


def test_statement_timeout_becomes_a_query_error(db, database_url):
    initialize_database(database_url, statement_timeout=100, application_name=app_name())
    started = time.monotonic()
    with pytest.raises(QueryError) as info:
        with get_db_session() as session:
            session.execute_sql("SELECT pg_sleep(5)")
    assert time.monotonic() - started < 3
    assert isinstance(info.value.__cause__, (psycopg2.Error, peewee.PeeweeException))
    with get_db_session() as session:
        assert session.execute_sql("SHOW statement_timeout").fetchone() == ("100ms",)


def test_deadlock_becomes_serialization_failure(db, raw, database_url):
    with raw.cursor() as cur:
        cur.execute("INSERT INTO prices (id, symbol, timestamp, open, high, low, close, volume) VALUES "
                    "(1, 'A', '2024-01-01', 1, 1, 1, 1, 1), (2, 'B', '2024-01-01', 1, 1, 1, 1, 1)")
    both_locked = threading.Barrier(2, timeout=10)
    results: dict[int, BaseException | None] = {}

    def lock_in_order(first: int, second: int):
        try:
            with get_db_session() as session:
                session.execute_sql("UPDATE prices SET volume = 2 WHERE id = %s", (first,))
                both_locked.wait()
                session.execute_sql("UPDATE prices SET volume = 3 WHERE id = %s", (second,))
            results[first] = None
        except BaseException as exc:  # inspected below
            results[first] = exc

    threads = [threading.Thread(target=lock_in_order, args=ab, daemon=True) for ab in ((1, 2), (2, 1))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not any(t.is_alive() for t in threads)
    failures = [exc for exc in results.values() if exc is not None]
    assert len(failures) == 1, results
    assert isinstance(failures[0], SerializationFailure)
    assert isinstance(failures[0].__cause__, (psycopg2.Error, peewee.PeeweeException))
    assert db.pool_status()["in_use"] == 0


def test_concurrent_sessions_from_many_threads_all_commit(db, raw):
    repo = PriceRepository()
    errors: list[BaseException] = []

    def write(worker: int):
        try:
            for n in range(25):
                repo.create(**price_row(n, f"T{worker}"))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(w,), daemon=True) for w in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not any(t.is_alive() for t in threads)
    assert errors == []
    assert count_rows(raw, "prices") == 200
    assert db.pool_status()["in_use"] == 0


# -- health, status, initialization --------------------------------------------

def test_health_check_and_status_on_a_live_server(db):
    assert db.health_check() is True
    assert db.pool_status() == {"max_connections": 30, "pool_size": 10, "in_use": 0, "idle": 1, "replicas": []}


def test_uninitialized_connection_reports_instead_of_connecting():
    conn = DatabaseConnection()
    assert conn.pool_status() == {"max_connections": 0, "pool_size": 0, "in_use": 0, "idle": 0, "replicas": []}
    assert conn.health_check() is False
    with pytest.raises(DatabaseConnectionError, match="initialize"):
        with conn.session():
            pass


def test_private_connection_does_not_rebind_the_models(db, create_database):
    other = DatabaseConnection().initialize(create_database())
    try:
        assert marketstore.database_proxy.obj is db.database
        with other.session() as session:
            assert session.execute_sql("SELECT 1").fetchone() == (1,)
    finally:
        other.close()
    assert other.pool_status()["in_use"] == 0


def test_reinitialize_closes_the_old_pool(db, raw, database_url):
    first_name, second_name = app_name(), app_name()
    initialize_database(database_url, application_name=first_name)
    with get_db_session():
        pass
    assert server_connections(raw, first_name) == 1
    initialize_database(database_url, application_name=second_name)
    assert eventually(lambda: server_connections(raw, first_name), 0) == 0
    with get_db_session():
        pass
    assert server_connections(raw, second_name) == 1


def test_every_connection_sets_utc_and_application_name(db, database_url):
    name = app_name()
    initialize_database(database_url, application_name=name)
    with get_db_session() as session:
        assert session.execute_sql("SHOW timezone").fetchone() == ("UTC",)
        assert session.execute_sql("SHOW application_name").fetchone() == (name,)


def test_pooled_connections_bound_connect_time_and_probe_idle_tcp(db, database_url, monkeypatch):
    import socket
    monkeypatch.delenv("PGCONNECT_TIMEOUT", raising=False)
    initialize_database(database_url)
    with get_db_session() as session:
        conn = session.connection()
        assert conn.get_dsn_parameters()["connect_timeout"] == "10"
        if not conn.info.host.startswith("/"):  # keepalives exist for TCP only
            sock = socket.socket(fileno=os.dup(conn.fileno()))
            try:
                assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
                assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 60
                assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL) == 10
                assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT) == 5
            finally:
                sock.close()
    # The caller's choice wins: the URL's, else the environment's.
    sep = "&" if "?" in database_url else "?"
    initialize_database(f"{database_url}{sep}connect_timeout=3&keepalives_idle=20")
    with get_db_session() as session:
        params = session.connection().get_dsn_parameters()
        assert (params["connect_timeout"], params["keepalives_idle"]) == ("3", "20")
    monkeypatch.setenv("PGCONNECT_TIMEOUT", "7")
    initialize_database(database_url)
    with get_db_session() as session:
        assert session.connection().get_dsn_parameters()["connect_timeout"] == "7"


def test_default_application_name_is_marketstore(db):
    with get_db_session() as session:
        assert session.execute_sql("SHOW application_name").fetchone() == ("marketstore",)


# -- the password is never shown -----------------------------------------------

PASSWORD = "s3cr3t-pw"
UNREACHABLE = f"postgresql://postgres:{PASSWORD}@127.0.0.1:1/test?connect_timeout=2"


def test_password_never_appears_in_logs_errors_or_reprs(db, caplog):
    caplog.set_level(logging.DEBUG)
    conn = initialize_database(UNREACHABLE, application_name=app_name())

    assert conn.health_check() is False
    with pytest.raises(DatabaseConnectionError) as info:
        with get_db_session():
            pass
    assert not isinstance(info.value, PoolExhaustedError)
    error = info.value

    shown = [
        str(error), repr(error),
        "".join(traceback.format_exception(type(error), error, error.__traceback__)),
        repr(conn.settings), str(conn.settings), repr(marketstore.db_connection.settings),
        json.dumps(conn.pool_status()),
        caplog.text,
        *(record.getMessage() for record in caplog.records),
    ]
    assert caplog.records, "a failed session must be logged"
    for text in shown:
        assert PASSWORD not in text
    assert "***" in repr(conn.settings)
    # Failed connects must not hold on to slots.
    assert conn.pool_status()["in_use"] == 0


def test_failed_session_is_logged_once_with_context(db, caplog):
    caplog.set_level(logging.DEBUG, logger="marketstore")
    initialize_database(UNREACHABLE, application_name=app_name())
    with pytest.raises(DatabaseConnectionError):
        with get_db_session("load", "Price"):
            pass
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1
    message = errors[0].getMessage()
    assert "load Price" in message and " ms" in message
    assert PASSWORD not in message


def test_error_in_a_nested_session_is_logged_once(db, caplog):
    caplog.set_level(logging.DEBUG, logger="marketstore")
    repo = PriceRepository()
    repo.create(**price_row(1))
    with pytest.raises(IntegrityViolation):
        with get_db_session("outer"):
            repo.create(**price_row(1))
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, [r.getMessage() for r in errors]
    assert "create Price" in errors[0].getMessage()


def test_plain_peewee_outside_a_session_borrows_from_the_pool_and_gives_back(db, raw, database_url):
    # Peewee's autoconnect: a query outside session() checks a connection out of
    # the same bounded pool; db.close() returns it, as Peewee documents.
    name = app_name()
    conn = initialize_database(database_url, application_name=name)
    assert Price.select().count() == 0
    assert conn.pool_status()["in_use"] == 1 and server_connections(raw, name) == 1
    conn.database.close()
    assert conn.pool_status() == {"max_connections": 30, "pool_size": 10, "in_use": 0, "idle": 1, "replicas": []}


def test_importing_marketstore_does_not_connect():
    script = (
        "import time, psycopg2\n"
        "calls = []\n"
        "real = psycopg2.connect\n"
        "psycopg2.connect = lambda *a, **k: calls.append(1) or real(*a, **k)\n"
        "started = time.monotonic()\n"
        "import marketstore\n"
        "print(len(calls), marketstore.db_connection.is_initialized, round(time.monotonic() - started, 2))\n"
    )
    env = {**os.environ, "MARKETSTORE_DATABASE_URL": UNREACHABLE.replace("connect_timeout=2", "connect_timeout=10")}
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    calls, initialized, _ = result.stdout.split()
    assert (calls, initialized) == ("0", "False")
    assert time.monotonic() - started < 8
