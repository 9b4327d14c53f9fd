"""Fixtures: marketstore recording to an in-memory OpenTelemetry SDK.

The SDK is imported inside the fixtures, so that the one test of this folder
that needs no SDK (``test_switch.py``) also runs where the extra is not installed.
"""
from __future__ import annotations

import pytest

from marketstore import telemetry

from helpers import initialized


class Recorded:
    """What the in-memory exporter and reader hold: finished spans, collected metrics."""

    def __init__(self, exporter, reader, tracer_provider):
        self.exporter, self.reader, self.tracer_provider = exporter, reader, tracer_provider
        self.tracer = tracer_provider.get_tracer("tests")

    def spans(self, name: str | None = None) -> list:
        return [s for s in self.exporter.get_finished_spans() if name is None or s.name == name]

    def span(self, name: str):
        found = self.spans(name)
        assert len(found) == 1, f"{name!r}: {[s.name for s in self.spans()]}"
        return found[0]

    def children(self, parent) -> list:
        return [s for s in self.spans() if s.parent is not None and s.parent.span_id == parent.context.span_id]

    def clear(self) -> None:
        self.exporter.clear()

    def metrics(self) -> dict:
        """``{name: metric}`` collected now."""
        data = self.reader.get_metrics_data()
        return {m.name: m for rm in (data.resource_metrics if data else ()) for sm in rm.scope_metrics
                for m in sm.metrics if sm.scope.name == "marketstore"}

    def points(self, name: str, **attributes) -> list:
        """The data points of metric ``name`` whose attributes include ``attributes`` (dots as ``__``)."""
        wanted = {k.replace("__", "."): v for k, v in attributes.items()}
        metric = self.metrics().get(name)
        return [p for p in (metric.data.data_points if metric else ())
                if wanted.items() <= dict(p.attributes).items()]


@pytest.fixture
def otel():
    """marketstore's spans and metrics, recorded in memory for the test (the global providers untouched)."""
    pytest.importorskip("opentelemetry.sdk")
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter, reader = InMemorySpanExporter(), InMemoryMetricReader()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    meter_provider = MeterProvider(metric_readers=[reader])
    telemetry.use(tracer_provider, meter_provider)
    try:
        yield Recorded(exporter, reader, tracer_provider)
    finally:
        telemetry.use()
        tracer_provider.shutdown()
        meter_provider.shutdown()


@pytest.fixture
def traced(otel, database_url):
    """``marketstore.db_connection`` with telemetry on, on empty tables; nothing recorded yet."""
    with initialized(database_url, telemetry="on") as connection:
        otel.clear()
        yield connection
