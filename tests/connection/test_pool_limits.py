"""The pool's limits seen from the server: recycle age, how long an exhausted pool waits,
and which server errors mean the connection is gone. Public API only: pools are built
with ``DatabaseConnection(...).initialize(url, ...)`` and observed from the server
(``pg_backend_pid()``), never through pool internals.
"""
from __future__ import annotations

import threading
import time
import uuid
from contextlib import contextmanager
from urllib.parse import quote, urlsplit, urlunsplit

import psycopg2
import pytest

from marketstore import (
    DatabaseConnection,
    DatabaseConnectionError,
    PoolExhaustedError,
)
from marketstore.errors import driver_error
from helpers import eventually


def backend_pid(conn: DatabaseConnection) -> int:
    with conn.session() as db:
        return db.execute_sql("SELECT pg_backend_pid()").fetchone()[0]


# -- the pool: recycle age and checkout timeout ------------------------------------

def test_recycle_age_counts_from_creation_not_last_use(pool):
    # Checked out every 0.1 s, the connection is never idle for long: an
    # implementation that measured age from the last use would keep it forever.
    recycle = 1.0
    conn = pool(pool_size=1, max_overflow=0, pool_recycle=recycle)
    seen: list[tuple[float, int]] = []
    started = time.monotonic()
    while time.monotonic() - started < recycle * 2.5:
        seen.append((time.monotonic() - started, backend_pid(conn)))
        time.sleep(0.1)

    first = seen[0][1]
    assert len({pid for _, pid in seen}) >= 2, seen
    # Not replaced before its time (a pool that recycled on every checkout) ...
    assert all(pid == first for at, pid in seen if at < recycle * 0.8), seen
    # ... and gone soon after it (pool_recycle past the connection's creation).
    assert all(pid != first for at, pid in seen if at > recycle + 0.5), seen


@contextmanager
def one_session_held(conn):
    """Another thread holds a session (and its connection) of ``conn`` while the block runs."""
    holding, release = threading.Event(), threading.Event()

    def hold():
        with conn.session() as db:
            db.execute_sql("SELECT 1")
            holding.set()
            release.wait(30)

    holder = threading.Thread(target=hold, daemon=True)
    holder.start()
    try:
        assert holding.wait(10)
        yield
    finally:
        release.set()
        holder.join(30)


def test_exhausted_pool_raises_within_a_tight_bound_of_pool_timeout(pool):
    timeout = 0.5
    conn = pool(pool_size=1, max_overflow=0, pool_timeout=timeout)
    with one_session_held(conn):
        assert conn.pool_status()["in_use"] == 1
        started = time.monotonic()
        with pytest.raises(PoolExhaustedError):
            with conn.session() as db:
                db.execute_sql("SELECT 1")
        elapsed = time.monotonic() - started
    assert timeout <= elapsed <= timeout + 0.25, elapsed
    assert backend_pid(conn)  # the slot came back


# -- SQLSTATEs that mean "the connection is gone" ----------------------------------

def terminate_when_busy(url: str, pid: int) -> threading.Thread:
    """In a thread: wait until backend ``pid`` runs a statement, then terminate it."""

    def run():
        admin = psycopg2.connect(url)
        admin.autocommit = True
        try:
            with admin.cursor() as cur:
                def state():
                    cur.execute("SELECT state FROM pg_stat_activity WHERE pid = %s", (pid,))
                    return cur.fetchone()[0]
                eventually(state, "active")
                cur.execute("SELECT pg_terminate_backend(%s)", (pid,))
        finally:
            admin.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_a_terminated_backend_is_a_connection_error(pool, database_url):
    # The real 57P01 (admin_shutdown): pg_terminate_backend of the session's own
    # backend while it runs a statement. The server sends the FATAL 57P01, but
    # psycopg2 2.9 (libpq 17) reports only "server closed the connection
    # unexpectedly", without a SQLSTATE: this pins the no-code rule and the
    # recovery; the code itself is pinned by the next test.
    conn = pool(pool_size=1, max_overflow=0)
    with pytest.raises(DatabaseConnectionError) as info:
        with conn.session() as db:
            pid = db.execute_sql("SELECT pg_backend_pid()").fetchone()[0]
            killer = terminate_when_busy(database_url, pid)
            db.execute_sql("SELECT pg_sleep(30)")
    killer.join(30)
    assert isinstance(driver_error(info.value), psycopg2.OperationalError)
    assert driver_error(info.value).pgcode in (None, "57P01")
    assert conn.pool_status()["in_use"] == 0
    assert backend_pid(conn) != pid  # the broken connection was not pooled


@pytest.mark.parametrize("code", ["57P01", "57P02", "57P03", "53300"])
def test_connection_sqlstates_map_to_database_connection_error(pool, code):
    # Each code carried by a real server error, raised by the server itself (the
    # driver builds the matching psycopg2.errors class): the situations behind
    # them give psycopg2 errors without a code (57P01 above; 53300 and 57P03 come
    # at connect time, which psycopg2 reports without one), and a crash (57P02)
    # cannot be staged on a shared server. Each fails if its code leaves the map.
    conn = pool()
    with pytest.raises(DatabaseConnectionError) as info:
        with conn.session() as db:
            db.execute_sql(f"DO $$ BEGIN RAISE EXCEPTION 'staged' USING ERRCODE = '{code}'; END $$")
    assert driver_error(info.value).pgcode == code
    assert type(driver_error(info.value)) is psycopg2.errors.lookup(code)
    assert conn.pool_status()["in_use"] == 0


def sessions_of(raw, role: str) -> int:
    with raw.cursor() as cur:
        cur.execute("SELECT count(*) FROM pg_stat_activity WHERE usename = %s", (role,))
        return cur.fetchone()[0]


def test_a_role_at_its_connection_limit_is_a_connection_error(database_url, raw):
    # The real 53300: too many connections for a role (superusers are exempt, so
    # a plain role). psycopg2 reports connect-time errors without a SQLSTATE.
    role, password = f"mst_limit_{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    with raw.cursor() as cur:
        cur.execute(f"CREATE ROLE {role} LOGIN CONNECTION LIMIT 1 PASSWORD %s", (password,))
    try:
        parts = urlsplit(database_url)
        host = parts.netloc.rpartition("@")[2]
        url = urlunsplit(parts._replace(netloc=f"{role}:{quote(password, safe='')}@{host}"))
        conn = DatabaseConnection().initialize(url, pool_timeout=1)
        try:
            with one_session_held(conn):
                with pytest.raises(DatabaseConnectionError, match="too many connections"):
                    with conn.session() as db:
                        db.execute_sql("SELECT 1")
        finally:
            conn.close()
    finally:
        assert eventually(lambda: sessions_of(raw, role), 0) == 0
        with raw.cursor() as cur:
            cur.execute(f"DROP ROLE {role}")

