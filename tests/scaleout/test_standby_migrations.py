"""Migrations and schema checks against a real streaming standby.

The migration history is read without creating its table, ``verify_schema``
says which comparison a standby cannot make instead of skipping it, and
``run_migrations`` refuses a standby before sending it anything that writes.
Each test works in a database of its own on the primary (replicated to the
standby), so breaking its schema leaves the shared ``marketstore`` database alone.
"""
from __future__ import annotations

import re
import uuid

import psycopg2
import pytest

from marketstore import DatabaseConnection, DatabaseMigration, run_migrations
from marketstore.errors import QueryError, ReadOnlyError
from marketstore.migrations import migrations_dir
from marketstore.models import MODELS

from cli_helpers import fails, run
from helpers import execute

MIGRATIONS = sorted(path.stem for path in migrations_dir().glob("[0-9][0-9][0-9]_*.py"))
# The tables whose models declare CHECK constraints: the comparisons a standby cannot make.
CHECKED_TABLES = sorted(m._meta.table_name for m in MODELS
                        if any(" CHECK (" in getattr(c, "sql", "") for c in m._meta.constraints or ()))



@pytest.fixture
def connect():
    """Factory: a private DatabaseConnection to ``url``, closed after the test."""
    opened = []

    def connect(url: str, **options) -> DatabaseConnection:
        connection = DatabaseConnection().initialize(url, application_name="mst_standby_migrations",
                                                     pool_timeout=5, **options)
        opened.append(connection)
        return connection

    yield connect
    for connection in opened:
        connection.close()


@pytest.fixture
def scratch(primary, standby):
    """A new empty database on the primary, replayed on the standby: its name."""
    name = f"mst_standby_{uuid.uuid4().hex[:10]}"
    execute(primary.url(), f'CREATE DATABASE "{name}"')
    standby.caught_up()
    yield name
    execute(primary.url(), f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def read_only_errors(standby) -> list[str]:
    """The standby's log lines of refused writes (SQLSTATE 25006)."""
    return re.findall(r".*cannot execute .* (?:in a read-only transaction|during recovery).*",
                      standby.cluster.log_text())


def test_history_on_a_standby_is_read_without_creating_it(primary, standby, scratch, connect):
    on_primary = DatabaseMigration(connect(primary.url(scratch)))
    on_standby = DatabaseMigration(connect(standby.url(scratch)))
    refused_before = len(read_only_errors(standby))

    # No history table yet: nothing applied, and reading did not create it.
    assert on_standby.applied() == [] and on_standby.pending() == MIGRATIONS
    assert on_primary.applied() == [] and on_primary.pending() == MIGRATIONS
    with psycopg2.connect(primary.url(scratch)) as conn, conn.cursor() as cur:
        cur.execute("SELECT to_regclass('migratehistory')")
        assert cur.fetchone() == (None,)
    conn.close()

    assert run_migrations(primary.url(scratch)) == MIGRATIONS
    standby.caught_up()
    assert on_standby.applied() == MIGRATIONS and on_standby.pending() == []

    # The newest migration undone on the primary: the standby sees it pending.
    assert on_primary.rollback() == MIGRATIONS[-1:]
    standby.caught_up()
    assert on_standby.applied() == MIGRATIONS[:-1] and on_standby.pending() == MIGRATIONS[-1:]
    assert len(read_only_errors(standby)) == refused_before  # no write was attempted there


def test_verify_schema_on_a_standby_names_what_it_cannot_compare(primary, standby, primary_url, connect):
    assert DatabaseMigration(connect(primary_url)).verify_schema() == []
    problems = DatabaseMigration(connect(standby.url())).verify_schema()
    assert CHECKED_TABLES, "the models declare CHECK constraints"
    # One entry per table with CHECK constraints, each saying why, and nothing else:
    # every other comparison (columns, defaults, indexes, names) was made and passed.
    assert sorted(p.split(":")[0] for p in problems) == CHECKED_TABLES
    for problem in problems:
        assert "not compared" in problem and "standby (in recovery)" in problem, problem
    assert "prices: check constraint definitions (prices_ohlc_check, prices_volume_check" in "\n".join(problems)


def test_verify_schema_on_a_standby_still_finds_drift(primary, standby, scratch, connect):
    run_migrations(primary.url(scratch))
    execute(primary.url(scratch), "DROP INDEX orders_status; "
                                  "ALTER TABLE prices ALTER COLUMN volume DROP NOT NULL; "
                                  "ALTER TABLE orders ALTER COLUMN status SET DEFAULT 'submitted'")
    standby.caught_up()
    problems = DatabaseMigration(connect(standby.url(scratch))).verify_schema()
    drift = [p for p in problems if "not compared" not in p]
    assert sorted(drift) == sorted([
        "orders: index orders_status missing",
        "prices.volume: nullable, expected NOT NULL",
        "orders.status: default is 'submitted'::character varying, expected 'pending'",
    ])
    assert len(problems) - len(drift) == len(CHECKED_TABLES)


def test_run_migrations_on_a_standby_raises_before_touching_anything(primary, standby, scratch, connect):
    refused_before = len(read_only_errors(standby))
    url = standby.url(scratch)
    with pytest.raises(ReadOnlyError, match=r"is a standby \(in recovery\)") as raised:
        run_migrations(url)
    assert isinstance(raised.value, QueryError)
    assert f":{standby.port}/{scratch}" in str(raised.value)
    migration = DatabaseMigration(connect(url))
    with pytest.raises(ReadOnlyError, match="migrate: .* is a standby"):
        migration.migrate()
    with pytest.raises(ReadOnlyError, match="rollback: .* is a standby"):
        migration.rollback()
    # Refused by our check, not by the server: no write reached it.
    assert read_only_errors(standby)[refused_before:] == []
    assert migration.pending() == MIGRATIONS


def test_verify_schema_without_the_temp_privilege_says_so(primary, scratch, connect):
    """Not a standby, but the same rule: a comparison not made is an entry, never ``[]``."""
    role = f"mst_notemp_{uuid.uuid4().hex[:6]}"
    run_migrations(primary.url(scratch))
    execute(primary.url(scratch), f"CREATE ROLE {role} LOGIN PASSWORD 'secret-{role}'; "
                                  f'REVOKE TEMP ON DATABASE "{scratch}" FROM PUBLIC')
    try:
        problems = DatabaseMigration(connect(primary.url(scratch, user=role, password=f"secret-{role}"))
                                     ).verify_schema()
        assert sorted(p.split(":")[0] for p in problems) == CHECKED_TABLES
        for problem in problems:
            assert "not compared: permission denied to create temporary tables" in problem, problem
    finally:
        execute(primary.url(scratch), f'DROP ROLE IF EXISTS {role}')


def test_cli_on_a_standby(standby):
    """``marketstore migrate`` refuses in one line; ``verify`` lists what it could not compare."""
    line = fails("migrate", "--database", standby.url())
    assert "is a standby (in recovery): run migrations on the primary" in line
    result = run("verify", "--database", standby.url())
    assert result.exit_code == 1
    shown = [line for line in result.output.splitlines() if "not compared" in line]
    assert sorted(line.split(":")[0] for line in shown) == CHECKED_TABLES
    # Comparisons not made are not called drift.
    assert result.output.splitlines()[-1] == f"Error: {len(CHECKED_TABLES)} comparison(s) not made"
