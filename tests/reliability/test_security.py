"""Security: the password is never shown, libpq parameters pass through, least privilege.

The throwaway cluster checks passwords for every role but the superuser
(scram-sha-256), so the secret here is real: connections succeed with it and
fail without it. The password contains URL-special characters, so both its
plain and its percent-encoded forms are searched for.
"""
from __future__ import annotations

import datetime as dt
import json
import logging
import os
import subprocess
import sys
import traceback
import uuid
from decimal import Decimal
from pathlib import Path
from urllib.parse import quote

import peewee
import psycopg2
import pytest

import marketstore
from marketstore import (
    ArticleRepository,
    BacktestResultRepository,
    ConfigurationError,
    DatabaseConnection,
    DatabaseConnectionError,
    EventRepository,
    MarketstoreError,
    OrderRepository,
    PoolExhaustedError,
    PriceRepository,
    QueryError,
    SentimentScoreRepository,
    TradingSignalRepository,
    get_db_session,
    initialize_database,
)
from marketstore.migrations import grant_application_role
from marketstore.models import config_hash

from reliability_helpers import (
    DBNAME,
    app_name,
    backend_pid,
    eventually,
    held_sessions,
    kill_backend,
    pgcodes,
    price_row,
    query,
    truncate_all,
)
from helpers import UTC



def new_password() -> str:
    return f"Pw:{uuid.uuid4().hex[:12]}@/%?#&= x"


def forms(password: str) -> list[str]:
    """Every way the password could be written out."""
    return [password, quote(password, safe=""), quote(password), password.replace(" ", "+"), repr(password)[1:-1]]


def assert_secret(password: str, *texts: str) -> None:
    for text in texts:
        for form in forms(password):
            assert form not in text, f"the password ({form!r}) was shown in: {text[:500]!r}"


@pytest.fixture
def app_role(cluster_url, store):
    """A login role with a real password and the application grants; yields (name, password)."""
    name, password = f"rel_app_{uuid.uuid4().hex[:8]}", new_password()
    grant_application_role(name, create=True)  # run as the owner (the superuser here)
    admin = psycopg2.connect(cluster_url)
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f'ALTER ROLE "{name}" PASSWORD %s', (password,))
    admin.close()
    return name, password


def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    script = Path(sys.executable).with_name("marketstore")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "marketstore.cli"]
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("MARKETSTORE_", "PG"))}
    environment.update(env or {})
    return subprocess.run(command + list(args), capture_output=True, text=True, timeout=120, env=environment)


# -- the password is never shown -------------------------------------------------------

def test_password_never_appears_in_logs_errors_reprs_or_status(cluster, app_role, caplog):
    role, password = app_role
    caplog.set_level(logging.DEBUG)  # every logger, the peewee query log included
    caplog.set_level(logging.DEBUG, logger="peewee")
    shown: list[str] = []

    def record_error(exc: BaseException) -> None:
        # Everything a person or a log handler is shown: the message, the repr and
        # the traceback with its chain (which honours ``raise ... from None``).
        shown.extend([str(exc), repr(exc), "".join(traceback.format_exception(exc))])
        if exc.__cause__ is not None:
            shown.extend([str(exc.__cause__), repr(exc.__cause__)])

    # A working connection with the password: sessions, repository calls, failures.
    good = cluster.url(DBNAME, user=role, password=password)
    conn = initialize_database(good, application_name=app_name())
    assert conn.health_check() is True
    PriceRepository().create(**price_row(1))
    for failing in (lambda: PriceRepository().create(**price_row(1)),  # IntegrityViolation
                    lambda: PriceRepository().create(**price_row(2, open="lots"))):  # DataValidationError
        with pytest.raises(MarketstoreError) as info:
            failing()
        record_error(info.value)
    with pytest.raises(QueryError) as info:
        with get_db_session("bad sql") as db:
            db.execute_sql("SELECT * FROM no_such_table")
    record_error(info.value)
    with pytest.raises(DatabaseConnectionError) as info:  # killed mid-session
        with get_db_session() as db:
            admin = psycopg2.connect(cluster.url(DBNAME))
            admin.autocommit = True
            kill_backend(admin, backend_pid(db))
            admin.close()
            db.execute_sql("SELECT 1")
    record_error(info.value)
    shown += [repr(conn.settings), str(conn.settings), conn.settings.safe_url(), repr(conn),
              repr(conn.database), json.dumps(conn.pool_status()), str(conn.pool_status())]

    # Failing connections, each with the password in its URL.
    failing_urls = [
        cluster.url(DBNAME, user=role, password=password + "-wrong"),  # authentication failure
        cluster.url(DBNAME, user=role, password=password, sslmode="require"),  # no SSL on this server
        f"postgresql://{role}:{quote(password, safe='')}@127.0.0.1:1/{DBNAME}?connect_timeout=3",  # nothing there
    ]
    for url in failing_urls:
        other = DatabaseConnection().initialize(url, application_name=app_name())
        try:
            assert other.health_check() is False
            with pytest.raises(DatabaseConnectionError) as info:
                with other.session("connect"):
                    pass
            assert not isinstance(info.value, PoolExhaustedError)
            record_error(info.value)
            shown += [repr(other.settings), json.dumps(other.pool_status())]
            assert other.pool_status()["in_use"] == 0
        finally:
            other.close()

    # URLs the configuration refuses.
    for url in [u.format(password=quote(password, safe="")) for u in BAD_URLS.values()] + [
            f"mysql://{role}:{quote(password, safe='')}@127.0.0.1/{DBNAME}"]:
        try:
            DatabaseConnection().initialize(url).close()
        except ConfigurationError as exc:
            record_error(exc)

    logged = [caplog.text] + [record.getMessage() for record in caplog.records]
    logged += [str(record.exc_info[1]) for record in caplog.records if record.exc_info]
    assert any(r.levelno >= logging.ERROR for r in caplog.records), "failures must be logged"
    assert any(r.name == "peewee" for r in caplog.records), "the peewee query log must be captured too"
    assert_secret(password, *shown, *logged)


@pytest.mark.parametrize("verbosity", [[], ["-vv"]], ids=["quiet", "debug"])
def test_cli_never_prints_the_password(cluster, app_role, verbosity):
    role, password = app_role
    good = cluster.url(DBNAME, user=role, password=password)
    result = cli(*verbosity, "health", "--database", good)
    assert result.returncode == 0, result.stderr
    assert "OK" in result.stdout and ":***@" in result.stdout
    outputs = [result.stdout, result.stderr]

    # From the environment, and with a wrong password: one clear line, exit 1.
    result = cli(*verbosity, "health", env={"MARKETSTORE_DATABASE_URL": good})
    assert result.returncode == 0, result.stderr
    outputs += [result.stdout, result.stderr]
    bad = cluster.url(DBNAME, user=role, password=password + "-wrong")
    result = cli(*verbosity, "health", "--database", bad)
    assert result.returncode == 1
    assert "password authentication failed" in result.stderr
    assert "Traceback" not in result.stderr
    outputs += [result.stdout, result.stderr]
    if verbosity == ["-vv"]:
        assert "DEBUG" in "".join(outputs), "debug logging must really have been on"
    assert_secret(password, *outputs)


BAD_URLS = {
    "bad-percent-encoding": "postgresql://app:{password}%zz@127.0.0.1/db",
    "bad-query-parameter": "postgresql://app:{password}@127.0.0.1/db?sslmode=bogus&nosuchparam=1",
    "bad-port": "postgresql://app:{password}@127.0.0.1:notaport/db",
}


@pytest.mark.parametrize("url", list(BAD_URLS.values()), ids=list(BAD_URLS))
def test_a_refused_url_keeps_no_copy_of_the_password_on_the_exception(url):
    password = new_password()
    with pytest.raises(ConfigurationError) as info:
        DatabaseConnection().initialize(url.format(password=quote(password, safe="")))
    chain, link = [], info.value
    while link is not None and len(chain) < 10:  # what error reporters that walk the chain would find
        chain += [str(link), repr(link)]
        link = link.__cause__ or link.__context__
    assert_secret(password, *chain)


# -- libpq parameters pass through -------------------------------------------------------

def test_sslmode_require_against_a_server_without_ssl_is_a_clear_connection_error(cluster, store):
    conn = DatabaseConnection().initialize(cluster.url(DBNAME, sslmode="require"),
                                                            application_name=app_name())
    try:
        with pytest.raises(DatabaseConnectionError) as info:
            with conn.session("connect"):
                pass
        assert not isinstance(info.value, PoolExhaustedError)
        assert "SSL" in str(info.value)  # libpq: "server does not support SSL, but SSL was required"
        assert isinstance(info.value.__cause__, (psycopg2.Error, peewee.PeeweeException))
        assert conn.pool_status()["in_use"] == 0
        assert conn.health_check() is False
    finally:
        conn.close()


def test_sslmode_from_the_libpq_environment_is_passed_through(cluster, store, monkeypatch):
    for var, value in {"PGHOST": "127.0.0.1", "PGPORT": str(cluster.port), "PGUSER": "postgres",
                       "PGDATABASE": DBNAME, "PGSSLMODE": "require"}.items():
        monkeypatch.setenv(var, value)
    monkeypatch.delenv("MARKETSTORE_DATABASE_URL", raising=False)
    conn = DatabaseConnection().initialize(application_name=app_name())
    try:
        with pytest.raises(DatabaseConnectionError, match="SSL"):
            with conn.session():
                pass
    finally:
        conn.close()
    monkeypatch.setenv("PGSSLMODE", "disable")
    conn = DatabaseConnection().initialize(application_name=app_name())
    try:
        assert conn.health_check() is True
    finally:
        conn.close()


def test_libpq_url_parameters_reach_the_server(cluster, store):
    url = cluster.url(DBNAME, sslmode="disable", connect_timeout=5, options="-c work_mem=7MB -c search_path=public")
    conn = initialize_database(url, statement_timeout=1234, application_name=app_name())
    with get_db_session() as db:
        assert db.execute_sql("SHOW work_mem").fetchone() == ("7MB",)
        assert db.execute_sql("SHOW search_path").fetchone() == ("public",)
        # Our own session settings are added to, not replaced by, the URL's options.
        assert db.execute_sql("SHOW timezone").fetchone() == ("UTC",)
        assert db.execute_sql("SHOW statement_timeout").fetchone() == ("1234ms",)
        assert db.execute_sql("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone() == (False,)
    assert conn.settings.connect_params["sslmode"] == "disable"


# -- application_name on every connection --------------------------------------------------

def test_every_pooled_connection_carries_the_application_name(cluster_url, store, admin):
    name = app_name()
    initialize_database(cluster_url, application_name=name)
    with held_sessions(25) as pids:  # idle-kept and overflow connections alike
        names = dict(query(admin, "SELECT pid, application_name FROM pg_stat_activity WHERE pid = ANY(%s)",
                           (pids,)))
    assert len(names) == 25 and set(names.values()) == {name}
    # Replacements after a kill carry it too.
    kill_backend(admin, pids[0])
    with held_sessions(12) as again:
        names = dict(query(admin, "SELECT pid, application_name FROM pg_stat_activity WHERE pid = ANY(%s)",
                           (again,)))
    assert set(names.values()) == {name}
    # Operators can find (and terminate, or limit) exactly our connections by name.
    # (The overflow closes after the idle grace, 1 s by default.)
    assert eventually(lambda: store.pool_status()["idle"], 10, 3) == 10
    ours = eventually(lambda: query(admin, "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
                                    (name,))[0][0], store.pool_status()["idle"])
    assert ours == store.pool_status()["idle"] == 10


def test_application_name_from_the_environment_and_the_default(cluster_url, store, monkeypatch):
    name = app_name()
    monkeypatch.setenv("MARKETSTORE_APPLICATION_NAME", name)
    initialize_database(cluster_url)
    with get_db_session() as db:
        assert db.execute_sql("SHOW application_name").fetchone() == (name,)
    monkeypatch.delenv("MARKETSTORE_APPLICATION_NAME")
    initialize_database(cluster_url)
    with get_db_session() as db:
        assert db.execute_sql("SHOW application_name").fetchone() == ("marketstore",)


# -- least privilege ---------------------------------------------------------------------

def exercise_every_repository() -> None:
    """Reads and writes through every repository, as the application would."""
    prices = PriceRepository()
    bar = prices.create(**price_row(1))
    prices.update(bar.id, close=Decimal("11.5"))
    assert prices.bulk_create([price_row(n) for n in range(2, 5)]) == 3
    if hasattr(prices, "upsert_many"):
        prices.upsert_many([price_row(2, close=Decimal("12")), price_row(9)])
    if hasattr(prices, "copy_from"):
        prices.copy_from([price_row(n) for n in range(20, 23)])
    assert prices.get(bar.id).close == Decimal("11.5")
    assert prices.delete(bar.id) is True

    articles = ArticleRepository()
    article = articles.create(title="Apple beats estimates", content="strong quarter", url="https://a/1",
                              symbols=["AAPL"], metadata={"lang": "en"})
    if hasattr(articles, "create_if_new"):
        assert articles.create_if_new(url="https://a/1", title="dup")[1] is False
    if hasattr(articles, "search"):
        assert [a.id for a in articles.search("apple")] == [article.id]
    score = SentimentScoreRepository().create(article=article.id, score=0.7, confidence=0.9, model="finbert")
    event = EventRepository().create(article=article.id, symbols=["AAPL"], event_type="earnings", severity=3)
    signal = TradingSignalRepository().create(symbol="AAPL", signal_type="buy", cms_score=0.5)
    orders = OrderRepository()
    order = orders.create(order_id="lp-1", symbol="AAPL", order_type="limit", side="buy", quantity=10, price=100,
                          signal=signal.id)
    if hasattr(orders, "transition"):
        orders.transition("lp-1", "submitted")
        assert [e.to_status for e in orders.history("lp-1")] == ["submitted"]
    backtests = BacktestResultRepository()
    result = backtests.create(name="bt", config={"w": 5}, config_hash=config_hash({"w": 5}), metrics={"sharpe": 1.5})
    if hasattr(backtests, "best_by_metric"):
        assert [r.id for r in backtests.best_by_metric("sharpe")] == [result.id]
    assert EventRepository().delete(event.id) and SentimentScoreRepository().delete(score.id)
    assert backtests.update(result.id, name="renamed").name == "renamed"
    assert order.id and OrderRepository().count() == 1


@pytest.mark.parametrize("via", ["cli", "function"])
def test_the_application_role_can_use_the_repositories_and_nothing_more(cluster, cluster_url, store, via):
    role, password = f"rel_app_{uuid.uuid4().hex[:8]}", new_password()
    if via == "cli":
        result = cli("grant", role, "--create", "--database", cluster_url)
        assert result.returncode == 0, result.stderr
        assert role in result.stdout
        assert cli("grant", role, "--database", cluster_url).returncode == 0  # idempotent
    else:
        grant_application_role(role, create=True)
        grant_application_role(role)
    admin = psycopg2.connect(cluster_url)
    admin.autocommit = True
    query(admin, f'ALTER ROLE "{role}" PASSWORD %s', (password,))
    admin.close()

    truncate_all(cluster_url)
    initialize_database(cluster.url(DBNAME, user=role, password=password), application_name=app_name())
    with get_db_session() as db:
        assert db.execute_sql("SELECT current_user").fetchone() == (role,)
    exercise_every_repository()

    refused = [
        "DROP TABLE prices", "TRUNCATE prices", "TRUNCATE order_events", "CREATE TABLE intruder (id int)",
        "CREATE TABLE public.intruder (id int)", "ALTER TABLE orders ADD COLUMN intruder int",
        "CREATE INDEX intruder ON prices (volume)", "CREATE SCHEMA intruder", "DROP TABLE order_events",
        "UPDATE order_events SET note = 'rewritten'", "DELETE FROM order_events",
        "ALTER TABLE prices OWNER TO CURRENT_USER", "ALTER ROLE CURRENT_USER SUPERUSER",
        "DROP TABLE migratehistory", "CREATE ROLE intruder",
    ]
    for sql in refused:
        with pytest.raises(QueryError) as info:
            with get_db_session("intrude") as db:
                db.execute_sql(sql)
        assert pgcodes(info.value) & {"42501"}, (sql, str(info.value))  # insufficient_privilege
    # Refusals broke nothing: the tables and the session still work.
    with get_db_session() as db:
        assert db.execute_sql("SELECT count(*) FROM prices").fetchone()[0] > 0
