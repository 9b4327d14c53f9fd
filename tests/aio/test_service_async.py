"""examples/service's ``async def`` endpoints, in-process (httpx's ASGI transport): the same
JSON as their sync twins, one async session per request held by a FastAPI dependency."""
from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

from helpers import ROOT, count_rows, eventually, price_row  # noqa: E402

sys.path.insert(0, str(Path(ROOT, "examples", "service")))
import app as service  # noqa: E402


def requests(*calls):
    """Send ``(method, path, json)`` calls in order; returns the responses."""
    async def main():
        transport = httpx.ASGITransport(app=service.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://service") as client:
            return [await client.request(method, path, json=body) for method, path, body in calls]
    return asyncio.run(main())


def test_async_reads_answer_what_the_sync_ones_do(db):
    from marketstore import PriceRepository
    PriceRepository().bulk_create([price_row(n) for n in range(60)] + [price_row(0, symbol="MSFT")])
    paths = ["/prices/AAPL?start=2024-01-01&end=2024-01-02", "/prices/latest?symbols=AAPL,MSFT,ZZZ",
             "/articles/search?q=earnings", "/prices/AAPL?start=nope&end=2024-01-02"]
    got = requests(*[("GET", path, None) for path in paths], *[("GET", "/async" + path, None) for path in paths])
    sync, asynchronous = got[:len(paths)], got[len(paths):]
    for path, one, two in zip(paths, sync, asynchronous):
        assert (one.status_code, one.json()) == (two.status_code, two.json()), path
    assert len(sync[0].json()) == 60 and sorted(sync[1].json()) == ["AAPL", "MSFT"]
    # A read-only session ends on its thread just after the response (not waited for).
    assert eventually(lambda: db.pool_status()["in_use"], 0) == 0


def test_async_orders_commit_and_a_failure_rolls_back(db, raw):
    order = {"order_id": "a-1", "symbol": "AAA", "order_type": "limit", "side": "buy", "quantity": "10",
             "price": 101.25}
    placed, duplicate, moved, unknown, illegal = requests(
        ("POST", "/async/orders", order), ("POST", "/async/orders", order),
        ("POST", "/async/orders/a-1/transition", {"status": "submitted"}),
        ("POST", "/async/orders/nope/transition", {"status": "submitted"}),
        ("POST", "/async/orders/a-1/transition", {"status": "pending"}))
    assert placed.status_code == 201 and placed.json()["price"] == "101.25000000"
    assert duplicate.status_code == 409 and duplicate.json()["field"] == "order_id"
    assert moved.json()["status"] == "submitted"
    assert (unknown.status_code, unknown.json()["value"]) == (404, "nope")
    assert illegal.status_code == 422
    assert count_rows(raw, "orders") == 1 and count_rows(raw, "order_events") == 1
    assert db.pool_status()["in_use"] == 0
