"""``pooler="transaction"``: the package through PgBouncer in transaction mode."""
from __future__ import annotations

import datetime as dt

import psycopg2
import pytest

import marketstore
from marketstore import DatabaseConnection, QueryError, DatabaseConnectionError
from helpers import UTC



@pytest.fixture
def pooled(pgbouncer_url):
    """A connection through PgBouncer with pooler mode and a 300 ms statement timeout."""
    connection = DatabaseConnection().initialize(pgbouncer_url, pooler="transaction", statement_timeout=300,
                                                 pool_timeout=5)
    yield connection
    connection.close()


def test_without_pooler_mode_pgbouncer_refuses_the_connection(pgbouncer_url):
    connection = DatabaseConnection().initialize(pgbouncer_url, pool_timeout=5)
    try:
        with pytest.raises(DatabaseConnectionError, match="unsupported startup parameter: options"):
            with connection.session():
                pass
        assert connection.health_check() is False
    finally:
        connection.close()


def test_sessions_run_in_utc_with_the_statement_timeout(pooled, pgbouncer):
    for _ in range(2):  # a new connection, then a pooled one
        with pooled.session() as db:
            # One BEGIN, the package's: a driver BEGIN before it would draw
            # "there is already a transaction in progress".
            assert db.connection().notices == []
            assert db.execute_sql("SELECT now() = statement_timestamp()").fetchone()[0] is False
    with pooled.session() as db:
        assert db.execute_sql("SHOW timezone").fetchone()[0] == "UTC"
        assert db.execute_sql("SHOW statement_timeout").fetchone()[0] == "300ms"
        now = db.execute_sql("SELECT now()").fetchone()[0]
        assert now.utcoffset() == dt.timedelta(0)
    # The settings were SET LOCAL: a plain client of the same PgBouncer pool
    # (sharing its server connections) sees the server's defaults.
    raw = psycopg2.connect(pgbouncer.url("marketstore"))
    raw.autocommit = True
    with raw.cursor() as cur:
        for _ in range(5):
            cur.execute("SELECT current_setting('statement_timeout'), current_setting('TimeZone')")
            assert cur.fetchone() == ("0", "Asia/Kolkata")
    raw.close()


def test_statement_timeout_is_a_query_error(pooled):
    with pytest.raises(QueryError, match="statement timeout"):
        with pooled.session() as db:
            db.execute_sql("SELECT pg_sleep(2)")
    assert pooled.health_check() is True


def test_commit_inside_a_session_goes_on_with_the_settings(pooled, pgbouncer_url):
    with pooled.session() as db:
        db.execute_sql("CREATE TEMP TABLE scratch (x int) ON COMMIT DROP")
        db.commit()  # ends that transaction; the next one is UTC with the timeout again
        assert db.execute_sql("SELECT current_setting('TimeZone'), current_setting('statement_timeout')"
                              ).fetchone() == ("UTC", "300ms")
        assert db.execute_sql("SELECT to_regclass('pg_temp.scratch')").fetchone()[0] is None
        db.rollback()
        assert db.execute_sql("SHOW timezone").fetchone()[0] == "UTC"
        with db.atomic():  # a savepoint inside the SQL-begun transaction
            db.execute_sql("SELECT 1")
    assert pooled.pool_status()["in_use"] == 0


def test_a_failed_session_leaves_no_transaction_open_on_the_shared_server(pooled, pgbouncer):
    with pytest.raises(QueryError):
        with pooled.session() as db:
            db.execute_sql("SELECT 1/0")
    admin = psycopg2.connect(pgbouncer.admin_url())
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute("SHOW POOLS")
        names = [d[0] for d in cur.description]
        pools = [dict(zip(names, row)) for row in cur.fetchall() if row[0] == "marketstore"]
    admin.close()
    # Transaction mode: a server connection held only while a transaction is open.
    assert all(pool["sv_active"] == 0 for pool in pools), pools
    assert pooled.health_check() is True


@pytest.fixture(scope="module")
def utc_database(primary):
    """A database whose sessions start in UTC, behind its own PgBouncer with one server connection."""
    admin = psycopg2.connect(primary.url())
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute("CREATE DATABASE utc_default")
        cur.execute("ALTER DATABASE utc_default SET timezone = 'UTC'")
    admin.close()
    from pgbouncer import PgBouncer

    bouncer = PgBouncer.start(primary.port, default_pool_size=1)
    try:
        yield bouncer.url("utc_default")
    finally:
        bouncer.stop()


def test_a_connection_already_in_utc_skips_the_set_and_stays_in_utc(utc_database):
    connection = DatabaseConnection().initialize(utc_database, pooler="transaction", pool_timeout=5)
    other = psycopg2.connect(utc_database)
    other.autocommit = True
    try:
        with connection.session() as db:
            assert db.connection().get_parameter_status("TimeZone") == "UTC"
        # Another client of the one shared server connection changes its time zone for good...
        with other.cursor() as cur:
            cur.execute("SET timezone = 'America/New_York'")
            cur.execute("SHOW timezone")
            assert cur.fetchone()[0] == "America/New_York"
        # ...and PgBouncer, which tracks TimeZone per client, restores ours when it lends it to us.
        for _ in range(3):
            with connection.session() as db:
                assert db.execute_sql("SHOW timezone").fetchone()[0] == "UTC"
                assert db.execute_sql("SELECT now()").fetchone()[0].utcoffset() == dt.timedelta(0)
            with other.cursor() as cur:
                cur.execute("SHOW timezone")
                assert cur.fetchone()[0] == "America/New_York"
    finally:
        other.close()
        connection.close()
