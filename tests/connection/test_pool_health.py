"""The pool and the session's transaction as a user meets them: recycling, pings, failed connects and BEGINs."""
from __future__ import annotations

import time

import psycopg2
import psycopg2.extensions
import pytest

from marketstore import DatabaseConnection, DatabaseConnectionError
from marketstore.database import PooledPostgresqlExtDatabase
from marketstore.pool import ConnectionPool


def test_a_connection_in_constant_use_is_replaced_once_older_than_recycle(database_url):
    pool = ConnectionPool(lambda: psycopg2.connect(database_url), max_connections=2, recycle=1.0)
    try:
        first = pool.checkout()
        time.sleep(0.8)  # in use for most of its life, never idle long
        pool.checkin(first)
        time.sleep(0.3)  # now older than recycle, though idle for less than it
        second = pool.checkout()
        assert second is not first
        assert first.closed
        pool.checkin(second)
    finally:
        pool.close_all()


def test_a_pinged_checkout_leaves_the_connection_idle(database_url):
    params = psycopg2.extensions.parse_dsn(database_url)
    db = PooledPostgresqlExtDatabase(params.pop("dbname"), max_connections=2, ping_after_idle=0, **params)
    try:
        db.open_transaction()  # the session's fast path leaves the connection in the driver's mode
        db.close_transaction(commit=True)
        # The checkout pings (a SELECT 1): then plain Peewee use and read-only sessions must work.
        db.connect()
        assert db.connection().get_transaction_status() == psycopg2.extensions.TRANSACTION_STATUS_IDLE
        assert db.execute_sql("SELECT 1").fetchone() == (1,)
        db.close()
        db.open_transaction(read_only=True)
        assert db.execute_sql("SHOW transaction_read_only").fetchone() == ("on",)
        db.close_transaction(commit=True)
    finally:
        db.close_all()


def test_a_failed_connect_frees_its_pool_slot():
    pool = ConnectionPool(lambda: psycopg2.connect("postgresql://postgres@127.0.0.1:1/none?connect_timeout=2"),
                          max_connections=1)
    for _ in range(2):  # the second would be PoolExhaustedError if the first kept its slot
        with pytest.raises(psycopg2.OperationalError):
            pool.checkout()
    assert pool.status()["in_use"] == 0


def test_a_failed_begin_leaves_the_thread_ready_for_its_next_session(database_url, raw):
    # Behind a pooler the session's BEGIN (with SET LOCALs) is a statement of its own,
    # sent at open: a connection the server dropped fails there, after the checkout.
    connection = DatabaseConnection().initialize(database_url, pooler="transaction", statement_timeout=5000,
                                                 pool_pre_ping=False, pool_timeout=2)
    try:
        with connection.session() as db:
            pid = db.execute_sql("SELECT pg_backend_pid()").fetchone()[0]
        with raw.cursor() as cursor:
            cursor.execute("SELECT pg_terminate_backend(%s)", (pid,))
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            with raw.cursor() as cursor:
                cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (pid,))
                if cursor.fetchone()[0] == 0:
                    break
            time.sleep(0.02)
        with pytest.raises(DatabaseConnectionError):
            with connection.session():
                pass
        with connection.session() as db:
            assert db.execute_sql("SELECT 1").fetchone() == (1,)
        assert not connection.in_transaction()
    finally:
        connection.close()
