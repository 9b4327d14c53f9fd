"""Spans by the database-client conventions: a CLIENT span per repository call, the parent of a
CLIENT span per statement; failures with the SQLSTATE and the error class; never a parameter value."""
from __future__ import annotations

import asyncio
import threading

import pytest

import marketstore
from marketstore import ArticleRepository, DuplicateKeyError, OrderRepository, PriceRepository

from helpers import bar, server_of

SECRET = "s3cr3t-Tok3n-4f9a"  # a value no attribute, event or status may carry


def client(span) -> bool:
    from opentelemetry.trace import SpanKind

    return span.kind is SpanKind.CLIENT


def server_attributes(url: str) -> dict:
    host, port, database = server_of(url)
    return {"db.system.name": "postgresql", "db.namespace": database, "server.address": host, "server.port": port}


def everything_recorded(otel) -> str:
    """Every attribute value, event and status description of every span and metric point, as text."""
    texts = []
    for span in otel.spans():
        texts += [span.name, str(span.status.description)] + [str(v) for v in span.attributes.values()]
        texts += [f"{e.name} {dict(e.attributes)}" for e in span.events]
    for metric in otel.metrics().values():
        texts += [str(dict(p.attributes)) for p in metric.data.data_points]
    return "\n".join(texts)


def test_a_write_is_a_client_span_whose_children_are_its_statements(traced, otel, database_url):
    PriceRepository().create(**bar("AAPL", 0))
    call = otel.span("create prices")
    assert client(call) and call.parent is None
    assert dict(call.attributes) == {**server_attributes(database_url), "db.operation.name": "create",
                                     "db.collection.name": "prices"}
    (insert,) = otel.children(call)
    assert insert.name == "INSERT prices" and client(insert)
    assert dict(insert.attributes) == {**server_attributes(database_url), "db.operation.name": "INSERT",
                                       "db.collection.name": "prices", "db.query.summary": "INSERT prices"}
    assert insert.status.is_ok and call.status.is_ok


def test_a_read_is_one_span_around_its_statements(traced, otel):
    prices = PriceRepository()
    prices.bulk_create([bar("AAPL", m) for m in range(3)])
    otel.clear()
    assert len(prices.get_range("AAPL", "2024-01-01", "2024-01-03", "1m")) == 3
    call = otel.span("get_range prices")
    assert call.attributes["db.operation.name"] == "get_range"
    statements = otel.children(call)
    assert statements and all(s.attributes["db.query.summary"].startswith("SELECT") for s in statements)
    assert {s.name for s in otel.spans()} == {"get_range prices"} | {s.name for s in statements}


def test_calls_inside_a_session_are_spans_of_their_own_and_the_session_is_none(traced, otel):
    with marketstore.get_db_session("transfer"):
        PriceRepository().create(**bar("AAPL", 0))
        PriceRepository().count(symbol="AAPL")
    calls = [s for s in otel.spans() if s.parent is None]
    assert [s.name for s in calls] == ["create prices", "count prices"]
    assert all(otel.children(call) for call in calls)


def test_a_span_open_in_the_caller_is_the_parent_of_the_call(traced, otel):
    with otel.tracer.start_as_current_span("handle request") as request:
        PriceRepository().count()
    call = otel.span("count prices")
    assert call.parent.span_id == request.get_span_context().span_id
    assert call.context.trace_id == request.get_span_context().trace_id


def test_a_worker_thread_runs_a_call_in_the_context_captured_from_its_caller(traced, otel):
    from marketstore import telemetry

    with otel.tracer.start_as_current_span("handle request") as request:
        context = telemetry.captured()
    worker = threading.Thread(target=telemetry.within, args=(context, PriceRepository().count))
    worker.start()
    worker.join()
    assert otel.span("count prices").parent.span_id == request.get_span_context().span_id


@pytest.mark.parametrize("in_session", [False, True], ids=["own session", "async session"])
def test_a_span_open_in_an_async_caller_is_the_parent_of_the_call(traced, otel, in_session):
    async def handle():
        with otel.tracer.start_as_current_span("handle request") as request:
            if in_session:
                async with marketstore.get_async_db_session():
                    await PriceRepository().acount()
            else:
                await PriceRepository().acount()
        return request

    request = asyncio.run(handle())
    assert otel.span("count prices").parent.span_id == request.get_span_context().span_id


def test_an_async_call_nests_its_statements(traced, otel):
    asyncio.run(PriceRepository().acount())
    call = otel.span("count prices")
    assert [s.name for s in otel.children(call)] == ["SELECT prices"]


def test_a_unique_violation_is_an_error_span_with_its_sqlstate_and_class(traced, otel):
    order = dict(order_id=SECRET, symbol="AAPL", order_type="limit", side="buy", quantity=10, price=100)
    OrderRepository().create(**order)
    otel.clear()
    with pytest.raises(DuplicateKeyError):
        OrderRepository().create(**order)
    call = otel.span("create orders")
    (insert,) = otel.children(call)
    for span in (call, insert):
        assert not span.status.is_ok and span.status.description is None
        assert span.attributes["error.type"] == "DuplicateKeyError"
        assert span.attributes["db.response.status_code"] == "23505"
    failed = otel.points("db.client.operation.duration", db__operation__name="create", error__type="DuplicateKeyError")
    assert len(failed) == 1 and failed[0].count == 1
    # The key is in the error's message, and in no span or metric.
    assert SECRET not in everything_recorded(otel)


def test_parameter_values_are_never_recorded(traced, otel):
    articles = ArticleRepository()
    articles.create(title=f"Quarterly results {SECRET}", url=f"https://example.com/{SECRET}", symbols=["AAPL"])
    assert articles.search(SECRET)
    assert articles.count(source=SECRET) == 0
    assert len(otel.spans()) >= 6
    assert SECRET not in everything_recorded(otel)


def test_a_copy_load_reports_its_batch_size(traced, otel):
    PriceRepository().copy_from([bar("AAPL", m) for m in range(7)])
    call = otel.span("copy_from prices")
    (copy,) = [s for s in otel.children(call) if s.attributes["db.operation.name"] == "COPY"]
    assert copy.attributes["db.operation.batch.size"] == 7
    assert copy.name == copy.attributes["db.query.summary"] == f"COPY {copy.attributes['db.collection.name']}"


def test_a_refused_copy_row_is_an_error_span(traced, otel):
    rows = [bar("AAPL", 0), bar("AAPL", 0)]  # the same key twice
    with pytest.raises(DuplicateKeyError):
        PriceRepository().copy_from(rows)
    call = otel.span("copy_from prices")
    assert call.attributes["error.type"] == "DuplicateKeyError"
    assert not call.status.is_ok


def test_a_read_of_a_plain_function_is_named_by_it(traced, otel):
    def closes():
        with traced.session("closes") as db:
            return db.execute_sql("SELECT count(*) FROM prices").fetchone()[0]

    assert traced.read(closes) == 0
    call = otel.span("closes")
    assert call.attributes["db.operation.name"] == "closes" and "db.collection.name" not in call.attributes
    assert [s.name for s in otel.children(call)] == ["SELECT prices"]
