"""The telemetry case: the sessions case's short transactions with the OpenTelemetry SDK configured.

Two connections on the bench database, the same settings but
``MARKETSTORE_TELEMETRY``: ``off`` (the reference), and ``on`` recording to a
real SDK (a ``TracerProvider`` whose ``BatchSpanProcessor`` hands batches to
an exporter that drops them, a ``MeterProvider`` whose reader collects every
minute), to the same SDK sampling 1% of traces, or to no SDK (what the extra
alone costs: the API's no-op providers). The providers are switched before each sample (untimed),
the samples interleaved as in every case.
"""
from __future__ import annotations

from typing import Iterator

import marketstore
from marketstore import telemetry

from .cases import SESSION_SQL, SESSION_THREADS, case, run_threads, session_workload
from .checks import expect
from .context import Context
from .harness import Comparison, Contender, Target

OFF = "telemetry off"
SDK = "telemetry on, SDK configured"
SAMPLED = "telemetry on, SDK, 1% of traces sampled"
API = "telemetry on, API only (no SDK)"


def sdk_providers(sampler=None):
    """A tracer and a meter provider as a service configures them, exporting nowhere."""
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import MetricExporter, MetricExportResult, PeriodicExportingMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

    class DropSpans(SpanExporter):
        def export(self, spans):
            return SpanExportResult.SUCCESS

    class DropMetrics(MetricExporter):
        def export(self, metrics_data, timeout_millis=10_000, **kwargs):
            return MetricExportResult.SUCCESS

        def force_flush(self, timeout_millis=10_000):
            return True

        def shutdown(self, timeout_millis=30_000, **kwargs):
            return None

    tracer_provider = TracerProvider(sampler=sampler)
    tracer_provider.add_span_processor(BatchSpanProcessor(DropSpans()))
    meter_provider = MeterProvider(metric_readers=[PeriodicExportingMetricReader(DropMetrics(), 60_000)])
    return tracer_provider, meter_provider


@case("telemetry")
def telemetry_case(ctx: Context) -> Iterator[Comparison]:
    ids, expected = session_workload(ctx)
    per_thread = len(ids[0])
    tracer_provider, meter_provider = sdk_providers()
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    sampled = sdk_providers(ParentBased(TraceIdRatioBased(0.01)))
    off = marketstore.DatabaseConnection().initialize(ctx.url, telemetry="off")
    on = marketstore.DatabaseConnection().initialize(ctx.url, telemetry="on")
    ctx.closers += [off.close, on.close, telemetry.use]
    ctx.closers += [provider.shutdown for provider in (tracer_provider, meter_provider, *sampled)]

    def transactions(connection):
        def transaction(sql, params):
            with connection.session() as db:
                return db.execute_sql(sql, params).fetchone()[0]
        return lambda: run_threads(transaction, ids, SESSION_SQL)

    contenders = [
        Contender(OFF, transactions(off), "reference", note="MARKETSTORE_TELEMETRY=off"),
        Contender(SDK, transactions(on), setup=lambda: telemetry.use(tracer_provider, meter_provider),
                  note="BatchSpanProcessor to an exporter that drops; metrics read every 60 s"),
        Contender(SAMPLED, transactions(on), setup=lambda: telemetry.use(*sampled),
                  note="ParentBased(TraceIdRatioBased(0.01)): the metrics all recorded, few spans"),
        Contender(API, transactions(on), setup=telemetry.use, note="the API's no-op providers"),
    ]
    for c in contenders:
        c.check = lambda result: expect(result, expected, "values read by every transaction")
    yield Comparison(
        "telemetry", f"{SESSION_THREADS} threads x {per_thread:,} short transactions, with and without telemetry",
        SESSION_THREADS * per_thread, "transactions", OFF, contenders,
        [Target(SDK, OFF, "speed>=", 0.95, "SDK configured / off"),
         Target(API, OFF, "speed>=", 0.95, "API only / off")],
        min_repeat=7,
    )
