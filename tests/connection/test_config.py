"""Settings: parsed from a mapping (never the real environment) and validated once."""
from __future__ import annotations

import re
import traceback
from urllib.parse import quote, urlsplit, urlunsplit

import pytest

import marketstore
from marketstore import ConfigurationError, Settings, load_settings
from marketstore.config import SETTINGS

from helpers import ROOT

URL = "postgresql://alice:s3cr3t-pw@db.example:6543/market"
BASE = {"MARKETSTORE_DATABASE_URL": URL}


def with_query(url: str, query: str) -> str:
    """``url`` with ``query`` (already encoded) appended to any query it has."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(query="&".join(filter(None, [parts.query, query]))))


def host_in_query(url: str) -> str:
    """``url`` with its host and port moved into the query, the embedded server's shape."""
    parts = urlsplit(url)
    if not parts.hostname:
        return url  # already so (a unix socket directory in ?host=)
    userinfo = parts.netloc.rpartition("@")[0]
    moved = f"host={quote(parts.hostname, safe='')}" + (f"&port={parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=userinfo + "@", query="&".join(filter(None, [moved, parts.query]))))


@pytest.mark.parametrize("url, query, expected", [
    ("postgresql://u@h/d", "sslmode=disable", "postgresql://u@h/d?sslmode=disable"),
    ("postgresql://u@/d?host=%2Ftmp%2Fpg&port=5432", "sslmode=disable",
     "postgresql://u@/d?host=%2Ftmp%2Fpg&port=5432&sslmode=disable"),
])
def test_with_query_keeps_the_query_a_url_has(url, query, expected):
    assert with_query(url, query) == expected


def test_host_in_query_moves_host_and_port():
    assert host_in_query("postgresql://u:p@127.0.0.1:5432/d?a=1") == "postgresql://u:p@/d?host=127.0.0.1&port=5432&a=1"
    assert host_in_query("postgresql://u@/d?host=%2Ftmp") == "postgresql://u@/d?host=%2Ftmp"


def test_defaults_follow_the_original_pool_design():
    settings = load_settings(environ=BASE)
    assert (settings.pool_size, settings.max_overflow, settings.pool_timeout, settings.pool_recycle,
            settings.pool_pre_ping, settings.statement_timeout, settings.application_name) == (
        10, 20, 30.0, 3600.0, True, None, "marketstore")
    assert settings.max_connections == 30
    assert dict(settings.connect_params) == {
        "user": "alice", "password": "s3cr3t-pw", "host": "db.example", "port": "6543", "dbname": "market"}


@pytest.mark.parametrize("variable, value", [
    ("MARKETSTORE_POOL_SIZE", "abc"),
    ("MARKETSTORE_POOL_SIZE", "0"),
    ("MARKETSTORE_POOL_SIZE", "-1"),
    ("MARKETSTORE_POOL_SIZE", "2.5"),
    ("MARKETSTORE_MAX_OVERFLOW", "-1"),
    ("MARKETSTORE_POOL_TIMEOUT", "nan"),
    ("MARKETSTORE_POOL_TIMEOUT", "inf"),
    ("MARKETSTORE_POOL_TIMEOUT", "-0.5"),
    ("MARKETSTORE_POOL_RECYCLE", "soon"),
    ("MARKETSTORE_POOL_PRE_PING", "maybe"),
    ("MARKETSTORE_STATEMENT_TIMEOUT", "1.5"),
    ("MARKETSTORE_APPLICATION_NAME", "   "),
])
def test_bad_environment_value_names_the_variable(variable, value):
    with pytest.raises(ConfigurationError) as info:
        load_settings(environ={**BASE, variable: value})
    assert variable in str(info.value)
    assert repr(value) in str(info.value)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("option, value", [
    ("pool_size", 0), ("pool_size", True), ("pool_size", "x"), ("max_overflow", -3),
    ("pool_timeout", float("nan")), ("pool_recycle", float("inf")), ("pool_pre_ping", "maybe"),
    ("statement_timeout", -1), ("application_name", ""),
])
def test_bad_option_names_the_option(option, value):
    with pytest.raises(ConfigurationError, match=option):
        load_settings(environ=BASE, **{option: value})


def test_unknown_option_is_refused():
    with pytest.raises(ConfigurationError, match="pool_sise"):
        load_settings(environ=BASE, pool_sise=5)


@pytest.mark.parametrize("variable, value, attribute, expected", [
    ("MARKETSTORE_POOL_SIZE", " 5 ", "pool_size", 5),
    ("MARKETSTORE_MAX_OVERFLOW", "0", "max_overflow", 0),
    ("MARKETSTORE_POOL_TIMEOUT", "0.5", "pool_timeout", 0.5),
    ("MARKETSTORE_POOL_RECYCLE", "60", "pool_recycle", 60.0),
    ("MARKETSTORE_POOL_PRE_PING", "off", "pool_pre_ping", False),
    ("MARKETSTORE_POOL_PRE_PING", "FALSE", "pool_pre_ping", False),
    ("MARKETSTORE_POOL_PRE_PING", "0", "pool_pre_ping", False),
    ("MARKETSTORE_POOL_PRE_PING", "Yes", "pool_pre_ping", True),
    ("MARKETSTORE_STATEMENT_TIMEOUT", "2500", "statement_timeout", 2500),
    ("MARKETSTORE_APPLICATION_NAME", "svc-a", "application_name", "svc-a"),
    ("MARKETSTORE_POOL_SIZE", "", "pool_size", 10),  # empty means unset
])
def test_environment_values_are_parsed(variable, value, attribute, expected):
    settings = load_settings(environ={**BASE, variable: value})
    assert getattr(settings, attribute) == expected
    assert type(getattr(settings, attribute)) is type(expected)


def test_options_override_the_environment():
    settings = load_settings(environ={**BASE, "MARKETSTORE_POOL_SIZE": "3"}, pool_size=7, pool_timeout=1)
    assert (settings.pool_size, settings.pool_timeout) == (7, 1.0)


def test_url_argument_overrides_the_environment_url():
    settings = load_settings("postgresql://bob@other:5432/elsewhere", environ=BASE)
    assert settings.connect_params["host"] == "other"
    assert settings.connect_params["dbname"] == "elsewhere"


def test_url_query_parameters_pass_through_to_libpq():
    settings = load_settings(environ={
        "MARKETSTORE_DATABASE_URL": URL + "?sslmode=require&connect_timeout=7&target_session_attrs=read-write"})
    params = settings.connect_params
    assert (params["sslmode"], params["connect_timeout"], params["target_session_attrs"]) == (
        "require", "7", "read-write")


@pytest.mark.parametrize("shape", [lambda url: url, host_in_query], ids=["as-given", "host-in-query"])
def test_url_options_reach_the_server_alongside_ours(database_url, shape):
    # libpq's own `options` parameter must be merged with the UTC setting, not lost.
    # The test server's URL may already carry a query (the embedded one: ?host=SOCKET_DIR):
    # both shapes run whichever server the tests use.
    url = with_query(shape(database_url), "sslmode=disable&connect_timeout=5&options=-c%20work_mem%3D1234kB")
    conn = marketstore.DatabaseConnection().initialize(url, application_name="mst_cfg")
    try:
        with conn.session() as db:
            assert db.execute_sql("SHOW work_mem").fetchone() == ("1234kB",)
            assert db.execute_sql("SHOW timezone").fetchone() == ("UTC",)
            assert db.execute_sql(
                "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone() == (False,)
    finally:
        conn.close()


@pytest.mark.parametrize("environ, expected", [
    ({"PGHOST": "pg.local", "PGPORT": "5433", "PGUSER": "carol", "PGPASSWORD": "pw", "PGDATABASE": "d",
      "PGSSLMODE": "verify-full", "PGCONNECT_TIMEOUT": "4"},
     {"host": "pg.local", "port": "5433", "user": "carol", "password": "pw", "dbname": "d",
      "sslmode": "verify-full", "connect_timeout": "4"}),
    ({"PGDATABASE": "only_db"}, {"dbname": "only_db"}),
    ({"PGSERVICE": "svc"}, {"service": "svc"}),
])
def test_libpq_variables_are_the_fallback(environ, expected):
    assert dict(load_settings(environ=environ).connect_params) == expected


def test_url_wins_over_libpq_variables():
    settings = load_settings(environ={**BASE, "PGHOST": "ignored", "PGDATABASE": "ignored"})
    assert settings.connect_params["host"] == "db.example"
    assert settings.connect_params["dbname"] == "market"


def test_libpq_variables_connect_to_a_real_server(database_url, monkeypatch):
    params = marketstore.config.parse_url(database_url)
    monkeypatch.delenv("MARKETSTORE_DATABASE_URL", raising=False)
    for var, key in (("PGHOST", "host"), ("PGPORT", "port"), ("PGUSER", "user"), ("PGDATABASE", "dbname")):
        if key in params:
            monkeypatch.setenv(var, params[key])
    conn = marketstore.DatabaseConnection().initialize()
    try:
        with conn.session() as db:
            assert db.execute_sql("SELECT current_database()").fetchone() == (params["dbname"],)
    finally:
        conn.close()


@pytest.mark.parametrize("environ", [{}, {"PGUSER": "u", "PGPASSWORD": "p"}, {"MARKETSTORE_DATABASE_URL": ""}])
def test_nothing_configured_is_a_configuration_error(environ):
    with pytest.raises(ConfigurationError, match="MARKETSTORE_DATABASE_URL"):
        load_settings(environ=environ)


@pytest.mark.parametrize("url", [
    "mysql://u:s3cr3t-pw@h/d",
    "postgresql://u:s3cr3t-pw@h:abc/d",
    "postgresql://u:s3cr3t-pw@h:0/d",
    "postgresql://u:s3cr3t-pw@h/d?no_such_param=1",
])
def test_bad_url_is_refused_without_echoing_the_password(url):
    with pytest.raises(ConfigurationError) as info:
        load_settings(environ={"MARKETSTORE_DATABASE_URL": url})
    assert "MARKETSTORE_DATABASE_URL" in str(info.value)
    assert "s3cr3t-pw" not in str(info.value)
    # Not in a chained driver error either (parse_dsn's message can quote the URL).
    error = info.value
    assert "s3cr3t-pw" not in "".join(traceback.format_exception(type(error), error, error.__traceback__))


def test_bad_pgport_names_the_variable():
    with pytest.raises(ConfigurationError, match="PGPORT"):
        load_settings(environ={"PGHOST": "h", "PGPORT": "x"})


@pytest.mark.parametrize("render", [repr, str], ids=["repr", "str"])
def test_settings_never_show_the_password(render):
    text = render(load_settings(environ=BASE))
    assert "s3cr3t-pw" not in text
    assert "alice:***@db.example:6543/market" in text


def test_password_given_as_a_query_parameter_is_masked_too():
    settings = load_settings(environ={"MARKETSTORE_DATABASE_URL": "postgresql://bob@h/d?password=s3cr3t-pw"})
    assert settings.connect_params["password"] == "s3cr3t-pw"
    assert "s3cr3t-pw" not in repr(settings) and "bob:***@h" in repr(settings)


def test_safe_url_without_password_or_port():
    settings = Settings(connect_params={"user": "u", "host": "h", "dbname": "d"})
    assert settings.safe_url() == "postgresql://u@h/d"
    assert "***" not in settings.safe_url()


def test_settings_are_immutable():
    settings = load_settings(environ=BASE)
    with pytest.raises(AttributeError):
        settings.pool_size = 99  # type: ignore[misc]


# -- the settings table and the README ------------------------------------------

README = ROOT / "README.md"
# Rows of the README's table that are not fields of Settings.
NOT_SETTINGS = {"MARKETSTORE_DATABASE_URL", "MARKETSTORE_EMBEDDED_DIR"}


def readme_configuration_rows() -> dict[str, str]:
    """``{variable: default as written}`` from the table under README's "## Configuration"."""
    section = README.read_text().split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        match = re.match(r"\| `(MARKETSTORE_[A-Z_]+)` \| ([^|]+) \|", line)
        if match:
            rows[match.group(1)] = match.group(2).strip()
    return rows


def shown(default) -> set[str]:
    """How the README may write ``default``."""
    if default is None or default == ():
        return {"unset", "off"}
    if isinstance(default, bool):
        return {"on" if default else "off"}
    if isinstance(default, float):
        return {f"{default:g}"}
    return {str(default)}


def test_readme_configuration_table_matches_the_settings():
    rows = readme_configuration_rows()
    assert set(rows) - NOT_SETTINGS == {f.metadata["variable"] for f in SETTINGS}
    for setting in SETTINGS:
        assert rows[setting.metadata["variable"]] in shown(setting.default), setting.name


def test_every_setting_is_read_from_its_variable_and_its_option():
    for setting in SETTINGS:
        raw = {int: "7", float: "7", bool: "off", str: "svc"}.get(type(setting.default))
        if raw is None:
            continue
        from_env = load_settings(environ={**BASE, setting.metadata["variable"]: raw})
        from_option = load_settings(environ=BASE, **{setting.name: raw})
        assert getattr(from_env, setting.name) == getattr(from_option, setting.name) != setting.default


@pytest.mark.parametrize("environ, options, expected", [
    ({}, {}, 10),
    ({"PGCONNECT_TIMEOUT": "4"}, {}, 4),
    ({"PGCONNECT_TIMEOUT": "4", "MARKETSTORE_CONNECT_TIMEOUT": "6"}, {}, 6),
    ({"MARKETSTORE_CONNECT_TIMEOUT": "6"}, {"connect_timeout": 3}, 3),
])
def test_connect_timeout_is_a_setting(environ, options, expected):
    assert load_settings(environ={**BASE, **environ}, **options).connect_timeout == expected


def test_connect_timeout_option_reaches_libpq(database_url):
    connection = marketstore.DatabaseConnection().initialize(database_url, connect_timeout=4)
    try:
        with connection.session() as db:
            assert db.connection().get_dsn_parameters()["connect_timeout"] == "4"
    finally:
        connection.close()
