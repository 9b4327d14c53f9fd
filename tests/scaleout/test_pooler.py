"""``pooler="transaction"``: the package through PgBouncer in transaction mode."""
from __future__ import annotations

import datetime as dt

import psycopg2
import pytest

import marketstore
from marketstore import DatabaseConnection, QueryError, DatabaseConnectionError

UTC = dt.timezone.utc


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
            cur.execute("SHOW statement_timeout")
            assert cur.fetchone()[0] == "0"


def test_statement_timeout_is_a_query_error(pooled):
    with pytest.raises(QueryError, match="statement timeout"):
        with pooled.session() as db:
            db.execute_sql("SELECT pg_sleep(2)")
    assert pooled.health_check() is True
