"""How to run the sync core from async code, measured in-process (the numbers in README's "Async").

    python examples/service/measure_async.py postgresql://postgres@127.0.0.1/db   # a migrated database

Each case serves the same requests from asyncio tasks, ``CONCURRENCY`` in flight:
* ``pinned``: ``async with get_async_db_session(): await prices.aget_range(...)``
  (what marketstore ships: the session pinned to one worker thread);
* ``twin``: ``await prices.aget_range(...)`` outside a session (a worker thread per call);
* ``hop``: ``await asyncio.to_thread(sync_request)``: the whole request, with its
  sync session, hopped to the default executor (the hand-rolled way; it cannot
  hold a transaction across awaits, so it is the floor, not an alternative);
* ``hop/call``: one ``asyncio.to_thread`` per repository call, each its own
  transaction (what a thread hop per call gives: no shared transaction).
Reports requests/s and client CPU per request (the process's CPU time).
"""
from __future__ import annotations

import asyncio
import datetime as dt
import statistics
import sys
import time

import marketstore
from marketstore import OrderRepository, PriceRepository
from marketstore.aio import get_async_db_session

REQUESTS, CONCURRENCY, ROUNDS = 3000, 32, 3
T0 = dt.datetime(2024, 1, 2, tzinfo=dt.timezone.utc)
prices, orders = PriceRepository(), OrderRepository()
START, END = T0, T0 + dt.timedelta(minutes=60)
counter = iter(range(10**9))


def seed() -> None:
    with marketstore.get_db_session() as db:
        db.execute_sql("TRUNCATE prices, orders, order_events RESTART IDENTITY CASCADE")
    prices.bulk_create([{"symbol": "AAPL", "timestamp": T0 + dt.timedelta(minutes=m), "open": 10, "high": 11,
                         "low": 9, "close": 10, "volume": 100} for m in range(120)])


def new_order() -> dict:
    return dict(order_id=f"m-{next(counter)}", symbol="AAPL", order_type="market", side="buy", quantity=1)


# -- range: one read ------------------------------------------------------------------
async def range_pinned():
    async with get_async_db_session(read_only=True):
        return await prices.aget_range("AAPL", START, END)


async def range_twin():
    return await prices.aget_range("AAPL", START, END)


def range_sync():
    with marketstore.get_db_session(read_only=True):
        return prices.get_range("AAPL", START, END)


async def range_hop():
    return await asyncio.to_thread(range_sync)


# -- order: create + transition, one transaction -----------------------------------------
async def order_pinned():
    async with get_async_db_session():
        order = await orders.acreate(**new_order())
        return await orders.atransition(order.order_id, "submitted")


def order_sync():
    with marketstore.get_db_session():
        order = orders.create(**new_order())
        return orders.transition(order.order_id, "submitted")


async def order_hop():
    return await asyncio.to_thread(order_sync)


async def order_hop_per_call():  # two transactions: not the same contract
    order = await asyncio.to_thread(orders.create, **new_order())
    return await asyncio.to_thread(orders.transition, order.order_id, "submitted")


async def serve(request) -> tuple[float, float]:
    gate = asyncio.Semaphore(CONCURRENCY)

    async def one():
        async with gate:
            await request()

    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(one() for _ in range(REQUESTS)))
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return REQUESTS / wall, cpu / REQUESTS * 1e6


async def main() -> None:
    # The default executor sized like the pool, as the example service sizes FastAPI's.
    loop = asyncio.get_running_loop()
    from concurrent.futures import ThreadPoolExecutor
    loop.set_default_executor(ThreadPoolExecutor(marketstore.db_connection.settings.max_connections))
    cases = {"range pinned": range_pinned, "range twin": range_twin, "range hop": range_hop,
             "order pinned": order_pinned, "order hop": order_hop, "order hop/call": order_hop_per_call}
    results = {name: [] for name in cases}
    for _ in range(ROUNDS):  # interleaved
        for name, request in cases.items():
            results[name].append(await serve(request))
    print(f"| case ({REQUESTS} requests, {CONCURRENCY} in flight, median of {ROUNDS}) | requests/s | CPU µs/request |")
    print("|---|---|---|")
    for name, runs in results.items():
        print(f"| {name} | {statistics.median(r[0] for r in runs):,.0f} | "
              f"{statistics.median(r[1] for r in runs):,.0f} |")


if __name__ == "__main__":
    marketstore.initialize_database(sys.argv[1] if len(sys.argv) > 1 else None)
    seed()
    asyncio.run(main())
    marketstore.close_database()
