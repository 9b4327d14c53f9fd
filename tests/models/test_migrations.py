"""Migrations on fresh databases: round trip, CLI parity, drift detection, locking.

Schema changes cannot be isolated by a rolled-back transaction around the test:
each test gets an empty database from ``create_database()``, or a freshly
recreated schema (``migrated``).
"""
from __future__ import annotations

import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg2
import pytest

import marketstore
from marketstore import DatabaseConnection, DatabaseMigration, run_migrations
from marketstore.migrations import migrations_dir
from marketstore.models import MODELS

from helpers import ROOT, execute

TABLES = {model._meta.table_name for model in MODELS}
# Every migration file, in order, so that a new migration needs no change here.
MIGRATIONS = sorted(path.stem for path in migrations_dir().glob("[0-9][0-9][0-9]_*.py"))


@pytest.fixture
def connect():
    """Factory: a private DatabaseConnection to ``url`` (closed after the test)."""
    opened = []

    def connect(url: str) -> DatabaseConnection:
        conn = DatabaseConnection().initialize(url, application_name="mst_migrations")
        opened.append(conn)
        return conn

    yield connect
    for conn in opened:
        conn.close()


@pytest.fixture(scope="module")
def scratch_url(create_database) -> str:
    return create_database()


@pytest.fixture
def migrated(scratch_url, connect):
    """A freshly migrated schema, and a DatabaseMigration on it.

    The drift tests break the schema on purpose; recreating ``public`` is much
    cheaper than a database per test (each DROP DATABASE forces a checkpoint).
    """
    execute(scratch_url, "DROP SCHEMA public CASCADE; CREATE SCHEMA public")
    assert run_migrations(scratch_url) == MIGRATIONS
    return scratch_url, DatabaseMigration(connect(scratch_url))


def query(url: str, sql: str, params=None) -> list[tuple]:
    conn = psycopg2.connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute(sql, params)
            return cur.fetchall()
    finally:
        conn.close()



def tables(url: str) -> set[str]:
    return {name for (name,) in query(
        url, "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'")}


def schema(url: str) -> dict[str, list[tuple]]:
    """What pg_catalog says about the public schema, in a comparable form."""
    return {
        "columns": query(url, """
            SELECT c.relname, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,
                   pg_get_expr(d.adbin, d.adrelid)
            FROM pg_attribute a
            JOIN pg_class c ON c.oid = a.attrelid
            LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
            WHERE c.relnamespace = 'public'::regnamespace AND c.relkind = 'r'
              AND a.attnum > 0 AND NOT a.attisdropped
            ORDER BY 1, 2"""),
        "indexes": query(url, "SELECT tablename, indexname, indexdef FROM pg_indexes "
                              "WHERE schemaname = 'public' ORDER BY 1, 2"),
        "constraints": query(url, "SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid) "
                                  "FROM pg_constraint WHERE connamespace = 'public'::regnamespace ORDER BY 1, 2"),
        "sequences": query(url, "SELECT sequencename, data_type::text FROM pg_sequences "
                                "WHERE schemaname = 'public' ORDER BY 1"),
    }


def test_migrate_rollback_migrate_round_trip(create_database, connect):
    url = create_database()
    migration = DatabaseMigration(connect(url))
    assert "001_initial" in MIGRATIONS
    assert migration.pending() == MIGRATIONS

    assert run_migrations(url) == MIGRATIONS
    assert migration.verify_schema() == []
    assert migration.applied() == MIGRATIONS and migration.pending() == []
    assert len(TABLES) == 8
    assert tables(url) == TABLES | {"migratehistory"}
    first = schema(url)

    assert migration.rollback(len(MIGRATIONS)) == MIGRATIONS[::-1]
    assert tables(url) & TABLES == set()
    assert query(url, "SELECT count(*) FROM pg_sequences WHERE schemaname = 'public' "
                      "AND sequencename <> 'migratehistory_id_seq'") == [(0,)]
    assert migration.applied() == [] and migration.pending() == MIGRATIONS
    assert sorted(migration.verify_schema()) == sorted(f"{t}: table missing" for t in TABLES)
    assert migration.rollback() == []  # nothing left to undo

    assert migration.migrate() == MIGRATIONS
    assert migration.verify_schema() == []
    assert schema(url) == first


def test_run_migrations_is_idempotent(migrated):
    url, migration = migrated
    assert run_migrations(url) == []
    assert query(url, "SELECT name FROM migratehistory ORDER BY id") == [(m,) for m in MIGRATIONS]
    assert migration.verify_schema() == []


def test_run_migrations_without_url_uses_the_configured_connection(db, raw):
    # The session database is already migrated: nothing pending, and no new pool.
    assert run_migrations() == []
    assert db.pool_status()["in_use"] == 0


def test_run_migrations_closes_its_private_pool(create_database):
    url = create_database()
    run_migrations(url)
    # Client backends only: an autovacuum worker visiting the freshly created tables also has
    # this datname, and on a loaded machine it can stay longer than the wait below.
    sql = ("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
           "AND pid <> pg_backend_pid() AND backend_type = 'client backend'")
    # A closed backend leaves pg_stat_activity a moment after its socket closes.
    deadline = time.monotonic() + 10
    while query(url, sql) != [(0,)] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert query(url, sql) == [(0,)]


def test_pw_migrate_cli_builds_the_same_schema_as_run_migrations(migrated, create_database, connect):
    url, _ = migrated
    cli_url = create_database()
    pw_migrate = Path(sys.executable).parent / "pw_migrate"
    command = [str(pw_migrate), "migrate", "--database", cli_url, "--directory", "migrations"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr

    assert query(cli_url, "SELECT name FROM migratehistory ORDER BY id") == [(m,) for m in MIGRATIONS]
    ours, theirs = schema(url), schema(cli_url)
    for part in ours:
        assert theirs[part] == ours[part], part
    assert DatabaseMigration(connect(cli_url)).verify_schema() == []
    # And each recognises the other's work as done.
    assert run_migrations(cli_url) == []


def test_pw_migrate_create_auto_on_unchanged_models_writes_nothing(migrated, tmp_path):
    # peewee-migrate's own workflow: `create --auto` replays the applied migrations
    # in memory (migrator.orm) and diffs that state against the models. On a
    # schema at head it must find nothing: no column the state missed (a column
    # added by raw SQL alone), no table for the abstract BaseModel.
    url, _ = migrated
    directory = tmp_path / "migrations"
    shutil.copytree(ROOT / "migrations", directory, ignore=shutil.ignore_patterns("__pycache__"))
    files = sorted(path.name for path in directory.iterdir())
    pw_migrate = Path(sys.executable).parent / "pw_migrate"
    command = [str(pw_migrate), "create", "--auto", "--auto-source", "marketstore.models",
               "--database", url, "--directory", str(directory), "drift"]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    written = sorted(set(path.name for path in directory.iterdir()) - set(files))
    assert written == [], [(directory / name).read_text().partition("def migrate")[2] for name in written]
    # Also what an import failure of --auto-source would leave: no file, but no diff either.
    assert "No changes found" in output, output

    # The same router the CLI builds: its replayed state has the column, and the
    # models it diffs are exactly our tables.
    from peewee_migrate.cli import get_router
    from peewee_migrate.router import compile_migrations, load_models

    router = get_router(directory, url)
    try:
        assert "search_vector" in router.migrator.orm["articles"]._meta.fields
        models = [m for m in load_models("marketstore.models") if m._meta.name not in (router.ignore or ())]
        assert sorted(m._meta.table_name for m in models) == sorted(TABLES)
        assert compile_migrations(router.migrator, models) == ""
        assert compile_migrations(router.migrator, models, reverse=True) == ""
    finally:
        router.database.close()


def test_array_and_jsonb_columns_have_gin_indexes_only_where_spec_lists_them(migrated):
    # peewee gives every ArrayField/BinaryJSONField a GIN index unless told not
    # to; each one slows bulk ingest.
    url, _ = migrated
    gin = query(url, """
        SELECT t.relname, a.attname
        FROM pg_index ix
        JOIN pg_class i ON i.oid = ix.indexrelid
        JOIN pg_class t ON t.oid = ix.indrelid
        JOIN pg_am am ON am.oid = i.relam
        JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = ANY (ix.indkey)
        WHERE t.relnamespace = 'public'::regnamespace AND am.amname = 'gin'
          AND (a.atttypid = 'jsonb'::regtype OR a.atttypid = 'text[]'::regtype)
        ORDER BY 1, 2""")
    assert gin == [("articles", "symbols"), ("backtest_results", "metrics")]


DRIFT = [
    ("DROP INDEX events_severity", "events: index events_severity missing"),
    ("DROP INDEX prices_symbol_interval_timestamp", "prices: index prices_symbol_interval_timestamp missing"),
    ("DROP INDEX prices_symbol_interval_timestamp; "
     "CREATE INDEX prices_symbol_interval_timestamp ON prices (symbol, interval, timestamp)",
     "prices: index prices_symbol_interval_timestamp is"),  # no longer unique
    ("CREATE INDEX events_symbols_gin ON events USING gin (symbols)", "events: unexpected index events_symbols_gin"),
    ("ALTER TABLE events DROP COLUMN keywords", "events.keywords: column missing"),
    ("ALTER TABLE prices ADD COLUMN vwap numeric", "prices.vwap: unexpected column"),
    ("ALTER TABLE prices ALTER COLUMN volume TYPE numeric(20,8)", "prices.volume: type is numeric(20,8)"),
    ("ALTER TABLE trading_signals ALTER COLUMN cms_score TYPE real", "trading_signals.cms_score: type is real"),
    ("ALTER TABLE orders ALTER COLUMN symbol TYPE varchar(16)", "orders.symbol: type is character varying(16)"),
    ("ALTER TABLE articles ALTER COLUMN title DROP NOT NULL", "articles.title: nullable"),
    ("ALTER TABLE events DROP CONSTRAINT events_severity_check", "events: check constraint events_severity_check missing"),
    ("ALTER TABLE orders DROP CONSTRAINT orders_fill_check", "orders: check constraint orders_fill_check missing"),
    ("ALTER TABLE sentiment_scores DROP CONSTRAINT sentiment_scores_article_id_fkey",
     "sentiment_scores: foreign key sentiment_scores_article_id_fkey missing"),
    ("ALTER TABLE sentiment_scores DROP CONSTRAINT sentiment_scores_article_id_fkey, "
     "ADD CONSTRAINT sentiment_scores_article_id_fkey FOREIGN KEY (article_id) REFERENCES articles (id)",
     "sentiment_scores: foreign key sentiment_scores_article_id_fkey is"),  # lost ON DELETE CASCADE
    ("DROP TABLE backtest_results", "backtest_results: table missing"),
    # Same names, different meaning: compared as PostgreSQL prints or evaluates them.
    ("ALTER TABLE events DROP CONSTRAINT events_severity_check, "
     "ADD CONSTRAINT events_severity_check CHECK (severity BETWEEN 1 AND 9)",
     "events: check constraint events_severity_check is"),
    ("ALTER TABLE articles ALTER COLUMN ingested_at DROP DEFAULT", "articles.ingested_at: default is none, expected now()"),
    ("ALTER TABLE prices ALTER COLUMN interval SET DEFAULT '1d'", "prices.interval: default is '1d'"),
    ("ALTER TABLE orders ALTER COLUMN price SET DEFAULT 1", "orders.price: default is 1, expected none"),
]


@pytest.mark.parametrize("ddl, problem", DRIFT, ids=[d[1].split(":")[0] + ":" + d[0].split()[0] + "-" + str(i)
                                                     for i, d in enumerate(DRIFT)])
def test_verify_schema_reports_drift(migrated, ddl, problem):
    url, migration = migrated
    execute(url, ddl)
    problems = migration.verify_schema()
    assert any(p.startswith(problem) for p in problems), problems
    assert len(problems) == 1, problems


def test_concurrent_run_migrations_apply_the_schema_once(create_database, connect):
    url = create_database()
    start = threading.Barrier(2, timeout=10)
    results: list = []

    def deploy():
        try:
            start.wait()
            results.append(run_migrations(url))
        except BaseException as exc:  # reported below
            results.append(exc)

    threads = [threading.Thread(target=deploy, daemon=True) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not any(t.is_alive() for t in threads)
    assert sorted(results, key=len) == [[], MIGRATIONS]
    assert query(url, "SELECT name FROM migratehistory ORDER BY id") == [(m,) for m in MIGRATIONS]
    assert DatabaseMigration(connect(url)).verify_schema() == []


def test_migration_files_are_found(tmp_path, monkeypatch):
    # run_migrations() must not depend on the working directory (pw_migrate does).
    monkeypatch.chdir(tmp_path)
    folder = marketstore.migrations.migrations_dir()
    assert (folder / "001_initial.py").is_file()
    assert (folder / "001_initial.py").read_bytes() == (ROOT / "migrations" / "001_initial.py").read_bytes()


def test_run_migrations_from_another_working_directory(create_database, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    url = create_database()
    assert run_migrations(url) == MIGRATIONS
    assert tables(url) == TABLES | {"migratehistory"}
