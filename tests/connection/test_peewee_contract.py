"""Plain Peewee against our database object works as Peewee documents it.

Users write Peewee code beside the repositories: queries outside a session
(autoconnect), ``atomic()``, ``connection_context()``, ``with db:``, the pool
API (``manual_close``, ``close_stale``, ``init``) and ``dispose()`` after
``fork()``. A pool that bypassed Peewee's hooks would fail each of these.
"""
from __future__ import annotations

import datetime as dt
import os
import threading
import time

import peewee
import pytest

from marketstore import (
    IntegrityViolation,
    NotFoundError,
    PoolExhaustedError,
    Price,
    PriceRepository,
    get_db_session,
    initialize_database,
)
from marketstore.database import PooledPostgresqlExtDatabase
from playhouse.pool import MaxConnectionsExceeded
from helpers import UTC, app_name

T0 = dt.datetime(2024, 1, 2, 15, 0, tzinfo=UTC)


def bar(symbol="PW", minute=0):
    return {"symbol": symbol, "timestamp": T0 + dt.timedelta(minutes=minute), "open": 1, "high": 2, "low": 1,
            "close": 2, "volume": 3}


def backends(raw, name) -> list[int]:
    with raw.cursor() as cur:
        cur.execute("SELECT pid FROM pg_stat_activity WHERE application_name = %s ORDER BY pid", (name,))
        return [pid for (pid,) in cur.fetchall()]


@pytest.fixture
def pooled(db, database_url):
    """The default connection with a unique application_name, for server-side counts."""
    name = app_name()
    connection = initialize_database(database_url, application_name=name, pool_timeout=2)
    connection.name = name
    return connection


def test_queries_outside_a_session_autoconnect_through_the_pool(pooled, raw):
    database = pooled.database
    Price.insert(bar()).execute()  # autocommit: visible to others at once
    with raw.cursor() as cur:
        cur.execute("SELECT count(*) FROM prices")
        assert cur.fetchone() == (1,)
    assert Price.select().count() == 1
    assert database.execute_sql("SELECT 1").fetchone() == (1,)
    with database.atomic():
        Price.insert(bar(minute=1)).execute()
    assert pooled.pool_status()["in_use"] == 1  # this thread's, until it closes it
    seen = []
    worker = threading.Thread(target=lambda: (seen.extend(p.symbol for p in Price.select().iterator()),
                                              database.close()))
    worker.start()
    worker.join(10)
    assert seen == ["PW", "PW"]
    database.close()
    # This thread's connection and the worker's, both back in the pool.
    assert pooled.pool_status() == {"max_connections": 30, "pool_size": 10, "in_use": 0, "idle": 2, "replicas": []}
    assert len(backends(raw, pooled.name)) == 2


@pytest.mark.parametrize("enter", ["connection_context", "with_db"])
def test_a_connection_block_inside_a_session_leaves_the_session_alone(pooled, raw, enter):
    database = pooled.database
    with get_db_session() as session:
        Price.insert(bar(minute=0)).execute()
        block = session.connection_context() if enter == "connection_context" else session
        with block:
            Price.insert(bar(minute=1)).execute()
        assert session.in_transaction() and not session.is_closed()
        Price.insert(bar(minute=2)).execute()
    with raw.cursor() as cur:
        cur.execute("SELECT count(*) FROM prices")
        assert cur.fetchone() == (3,)
    assert database.is_closed() and pooled.pool_status()["in_use"] == 0


def test_connection_context_outside_a_session_returns_its_connection(pooled):
    database = pooled.database
    with database.connection_context():
        with database.connection_context():  # nested: the outer one closes
            assert Price.select().count() == 0
        assert not database.is_closed()
    assert database.is_closed() and pooled.pool_status() == {
        "max_connections": 30, "pool_size": 10, "in_use": 0, "idle": 1, "replicas": []}


def test_manual_close_closes_instead_of_pooling(pooled, raw):
    database = pooled.database
    database.connect()
    pid = database.execute_sql("SELECT pg_backend_pid()").fetchone()[0]
    assert database.manual_close() is True
    assert database.is_closed()
    assert pooled.pool_status()["idle"] == 0 and pooled.pool_status()["in_use"] == 0
    deadline = time.monotonic() + 5
    while pid in backends(raw, pooled.name) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert pid not in backends(raw, pooled.name)
    assert database.manual_close() is False  # nothing open


def test_close_stale_closes_connections_checked_out_too_long(pooled):
    database = pooled.database
    held, release = threading.Event(), threading.Event()

    def hold():
        database.connect()
        held.set()
        release.wait(10)
        try:
            database.close()  # its connection was closed under it: the check-in is ignored
        except peewee.PeeweeException:
            pass

    worker = threading.Thread(target=hold)
    worker.start()
    held.wait(10)
    assert database.close_stale(age=60) == 0  # checked out just now
    time.sleep(0.2)
    assert database.close_stale(age=0.1) == 1
    assert pooled.pool_status()["in_use"] == 0
    release.set()
    worker.join(10)
    assert pooled.pool_status() == {"max_connections": 30, "pool_size": 10, "in_use": 0, "idle": 0, "replicas": []}


def test_init_changes_the_pool_limits(pooled):
    database = pooled.database
    database.init(database.database, max_connections=1, timeout=0.2)
    taken = threading.Event()
    release = threading.Event()

    def hold():
        with get_db_session():
            taken.set()
            release.wait(10)

    worker = threading.Thread(target=hold)
    worker.start()
    taken.wait(10)
    started = time.monotonic()
    with pytest.raises(PoolExhaustedError) as info:
        with get_db_session():
            pass
    assert 0.2 <= time.monotonic() - started < 0.5
    assert isinstance(info.value, MaxConnectionsExceeded)  # Peewee's own type, too
    release.set()
    worker.join(10)


def test_peewee_style_construction_keeps_peewee_s_pool_meaning(database_url):
    params = peewee_params(database_url)
    database = PooledPostgresqlExtDatabase(params.pop("database"), max_connections=1, timeout=None, **params)
    try:
        database.connect()
        other = []
        worker = threading.Thread(target=lambda: other.append(_try_connect(database)))
        worker.start()
        worker.join(10)
        assert isinstance(other[0], MaxConnectionsExceeded)  # timeout=None: no wait, as in Peewee
        database.close()
    finally:
        database.close_all()


def _try_connect(database):
    try:
        database.connect()
    except MaxConnectionsExceeded as exc:
        return exc
    database.close()
    return None


def peewee_params(url):
    from playhouse.db_url import parse

    return parse(url)


def test_translated_errors_are_peewee_s_too(pooled):
    repo = PriceRepository()
    repo.create(**bar())
    with pytest.raises(peewee.IntegrityError) as info:
        repo.create(**bar())
    assert isinstance(info.value, IntegrityViolation)
    with pytest.raises(peewee.DoesNotExist) as missing:
        repo.get(10**9)
    assert isinstance(missing.value, NotFoundError)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork() only")
@pytest.mark.parametrize("explicit_dispose", [False, True])
def test_a_forked_child_never_uses_the_parent_s_connections(pooled, raw, explicit_dispose):
    database = pooled.database
    with get_db_session() as session:
        parent_pid = session.execute_sql("SELECT pg_backend_pid()").fetchone()[0]
    database.connect()  # one open in this thread, one idle would be the same backend: take it
    assert database.execute_sql("SELECT pg_backend_pid()").fetchone()[0] == parent_pid
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child
        code = 1
        try:
            os.close(read)
            if explicit_dispose:
                database.dispose()
            with get_db_session() as session:
                pid = session.execute_sql("SELECT pg_backend_pid()").fetchone()[0]
            os.write(write, str(pid).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write)
    _, status = os.waitpid(child, 0)
    child_backend = int(os.read(read, 64) or 0)
    os.close(read)
    assert os.waitstatus_to_exitcode(status) == 0
    assert child_backend not in (0, parent_pid)
    # The parent's connection is intact and still its own.
    assert database.execute_sql("SELECT pg_backend_pid()").fetchone()[0] == parent_pid
    database.close()


def test_close_all_refuses_while_this_thread_s_transaction_is_open(pooled, raw):
    database = pooled.database
    with database.atomic():
        Price.insert(bar()).execute()
        with pytest.raises(peewee.OperationalError):
            database.close_all()
    database.close()
    with raw.cursor() as cur:
        cur.execute("SELECT count(*) FROM prices")
        assert cur.fetchone() == (1,)  # the work was not lost


def test_a_peewee_style_pool_pings_every_checkout(database_url, raw):
    # As Peewee 4's own pool: a SELECT 1 at each checkout, so a backend terminated
    # a moment ago is replaced, not handed out.
    params = peewee_params(database_url)
    name = app_name()
    database = PooledPostgresqlExtDatabase(params.pop("database"), max_connections=2, application_name=name,
                                           **params)
    try:
        for _ in range(5):
            database.connect()
            pid = database.execute_sql("SELECT pg_backend_pid()").fetchone()[0]
            database.close()
            with raw.cursor() as cur:
                cur.execute("SELECT pg_terminate_backend(%s)", (pid,))
            database.connect()
            assert database.execute_sql("SELECT pg_backend_pid()").fetchone()[0] != pid
            database.close()
    finally:
        database.close_all()


@pytest.mark.parametrize("call", ["close", "initialize"])
def test_closing_the_connection_inside_its_own_session_is_refused_and_changes_nothing(pooled, raw, database_url,
                                                                                      call):
    from marketstore import TransactionError

    with get_db_session() as session:
        Price.insert(bar()).execute()
        with pytest.raises(TransactionError):
            pooled.close() if call == "close" else pooled.initialize(database_url)
        assert pooled.database is session  # still configured, same database
        Price.insert(bar(minute=1)).execute()
    with raw.cursor() as cur:
        cur.execute("SELECT count(*) FROM prices")
        assert cur.fetchone() == (2,)  # the session's work was kept
