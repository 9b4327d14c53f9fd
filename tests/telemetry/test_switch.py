"""How telemetry is switched: off (or without the extra) nothing of OpenTelemetry is imported and
nothing is wrapped; ``on`` without the extra is refused. No SDK needed here."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap

import pytest

import marketstore
from marketstore import ConfigurationError, MissingExtraError, load_settings

from helpers import ROOT

# Run in a fresh interpreter: this one has imported OpenTelemetry already (other tests, plugins).
USE = """
import sys
{block}
import marketstore
connection = marketstore.initialize_database({url!r}{options})
with marketstore.get_db_session() as db:
    assert db.execute_sql("SELECT 1").fetchone() == (1,)
marketstore.PriceRepository().count()
marketstore.PriceRepository().copy_from([dict(symbol="OTEL", timestamp="2024-01-02T00:00:00Z", open=1, high=1,
                                              low=1, close=1, volume=1)])
database = connection.database
print(sorted(m for m in sys.modules if m.split(".")[0] == "opentelemetry"))
print(database.telemetry is None, sorted(vars(database).keys() & {{"execute_sql"}}),
      sorted(vars(database.pool).keys() & {{"checkout", "checkin"}}),
      sorted(vars(connection).keys() & {{"session", "read"}}))
"""
# An interpreter where opentelemetry is not installed, as far as imports can tell.
NOT_INSTALLED = """
import importlib.abc
class NotInstalled(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "opentelemetry":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, NotInstalled())
"""


def run(url: str, *, environ: dict | None = None, options: str = "", block: str = "") -> list[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MARKETSTORE_", "OTEL_"))}
    env.update(environ or {})
    code = USE.format(block=textwrap.dedent(block), url=url, options=options)
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip().splitlines()


def test_off_imports_nothing_of_opentelemetry_and_wraps_nothing(db, database_url):
    assert run(database_url, environ={"MARKETSTORE_TELEMETRY": "off"}) == ["[]", "True [] [] []"]


def test_without_the_extra_it_is_off(db, database_url):
    assert run(database_url, block=NOT_INSTALLED) == ["[]", "True [] [] []"]


def test_unset_it_is_on_exactly_when_the_extra_is_installed(db, database_url):
    modules, wrapped = run(database_url)
    if importlib.util.find_spec("opentelemetry") is None:  # tox's py311-notelemetry
        assert (modules, wrapped) == ("[]", "True [] [] []")
    else:
        assert "opentelemetry.trace" in modules
        assert wrapped == "False ['execute_sql'] ['checkin', 'checkout'] ['read', 'session']"


def test_on_without_the_extra_is_refused(db, database_url):
    code = NOT_INSTALLED.replace("sys.meta_path", "__import__('sys').meta_path") + textwrap.dedent(f"""
        import marketstore
        try:
            marketstore.initialize_database({database_url!r}, telemetry="on")
        except marketstore.MissingExtraError as exc:
            print(exc.extra)
    """)
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "telemetry", done.stderr[-3000:]
    assert issubclass(MissingExtraError, marketstore.MarketstoreError)


def test_switching_off_again_gives_the_methods_back(database_url):
    pytest.importorskip("opentelemetry.trace")
    connection = marketstore.DatabaseConnection()
    try:
        connection.initialize(database_url, telemetry="on")
        assert "session" in vars(connection) and connection.database.telemetry is not None
        connection.initialize(database_url, telemetry="off")
        assert "session" not in vars(connection) and "read" not in vars(connection)
        assert connection.database.telemetry is None and "execute_sql" not in vars(connection.database)
    finally:
        connection.close()


@pytest.mark.parametrize("raw, expected", [("on", "on"), ("OFF", "off"), ("", None), ("none", None)])
def test_the_setting(raw, expected):
    environ = {"MARKETSTORE_DATABASE_URL": "postgresql://u@h/d", "MARKETSTORE_TELEMETRY": raw}
    assert load_settings(environ=environ).telemetry == expected


def test_a_bad_setting_names_the_variable():
    environ = {"MARKETSTORE_DATABASE_URL": "postgresql://u@h/d", "MARKETSTORE_TELEMETRY": "maybe"}
    with pytest.raises(ConfigurationError, match="MARKETSTORE_TELEMETRY='maybe': expected one of on, off"):
        load_settings(environ=environ)


def test_an_sdk_configured_after_initializing_receives_the_spans_and_metrics(db, database_url):
    pytest.importorskip("opentelemetry.sdk")
    code = textwrap.dedent(f"""
        import marketstore
        marketstore.initialize_database({database_url!r})  # the global providers are still the API's proxies
        from opentelemetry import metrics, trace
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
        exporter, reader = InMemorySpanExporter(), InMemoryMetricReader()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        trace.set_tracer_provider(provider)
        metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
        marketstore.PriceRepository().count()
        print(sorted(s.name for s in exporter.get_finished_spans()))
        data = reader.get_metrics_data()
        print(sorted({{m.name for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics}}))
    """)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MARKETSTORE_", "OTEL_"))}
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    spans, names = done.stdout.strip().splitlines()
    assert spans == "['SELECT prices', 'count prices']"
    for name in ("db.client.operation.duration", "db.client.connection.count", "db.client.connection.wait_time"):
        assert f"'{name}'" in names


@pytest.mark.parametrize("mode, expected", [("None", "off"), ("'on'", "MissingExtraError telemetry")])
def test_an_api_older_than_1_30_is_not_used(mode, expected):
    pytest.importorskip("opentelemetry.trace")
    code = textwrap.dedent(f"""
        import sys, types
        old = sys.modules["opentelemetry.version"] = types.ModuleType("opentelemetry.version")
        old.__version__ = "1.28.0"  # its histograms take no buckets
        from marketstore import MissingExtraError, telemetry
        try:
            print("on" if telemetry.enabled({mode}) else "off")
        except MissingExtraError as exc:
            print(type(exc).__name__, exc.extra)
    """)
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == expected, done.stderr[-3000:]
