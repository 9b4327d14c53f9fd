"""Cancelled tasks and bounded resources: a task cancelled mid-query rolls back and returns its
connection; the worker threads are bounded like the pool, and a session waits for one within
``pool_timeout``. Counted from the server (``pg_stat_activity``) and ``pool_status()``.
"""
from __future__ import annotations

import asyncio
import random
import threading
import time

import pytest

import marketstore
from marketstore import OrderRepository, PoolExhaustedError, PriceRepository
from marketstore.aio import async_session, threads_of
from helpers import app_name, autocommit_connection, count_rows, eventually, price_row, truncate_all


@pytest.fixture
def connection(database_url):
    """Factory: a private connection on emptied tables, its application_name unique; closed afterwards."""
    truncate_all(database_url)
    opened = []

    def make(**options):
        opened.append(marketstore.DatabaseConnection().initialize(database_url, application_name=app_name(),
                                                                  **options))
        return opened[-1]

    yield make
    for conn in opened:
        conn.close()


def server_sessions(url: str, name: str) -> dict:
    """``{state: count}`` of the backends of application ``name``."""
    with autocommit_connection(url) as conn, conn.cursor() as cur:
        cur.execute("SELECT state, count(*) FROM pg_stat_activity WHERE application_name = %s GROUP BY state",
                    (name,))
        return dict(cur.fetchall())


def aio_threads() -> int:
    return sum(t.name == "marketstore-aio" for t in threading.enumerate())


def test_cancelling_a_long_statement_frees_the_thread_at_once_and_rolls_back(connection, database_url, raw):
    conn = connection(pool_size=2, max_overflow=0)
    orders = OrderRepository(conn)

    async def request():
        async with async_session(conn) as session:
            await orders.acreate(order_id="slow", symbol="AAPL", order_type="market", side="buy", quantity=1)
            await session.execute_sql("SELECT pg_sleep(30)")

    async def main():
        task = asyncio.create_task(request())
        await asyncio.sleep(0.3)
        started = time.monotonic()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return time.monotonic() - started

    took = asyncio.run(main())
    assert took < 2  # the statement was cancelled, not waited out
    assert conn.pool_status()["in_use"] == 0
    assert count_rows(raw, "orders") == 0
    assert server_sessions(database_url, conn.settings.application_name).get("idle in transaction", 0) == 0
    assert server_sessions(database_url, conn.settings.application_name).get("active", 0) == 0


@pytest.mark.slow
def test_ten_thousand_requests_with_random_cancellations_leak_nothing(connection, database_url, raw):
    conn = connection(pool_size=10, max_overflow=20, pool_timeout=10)
    prices, orders = PriceRepository(conn), OrderRepository(conn)
    prices.bulk_create([price_row(n) for n in range(60)])
    rng = random.Random(18)
    phase: dict[int, str] = {}
    outcome = {"done": 0, "cancelled": 0}

    async def request(n: int, kind: int):
        async with async_session(conn, read_only=kind == 0) as session:
            if kind == 0:
                await prices.aget_range("AAPL")
            elif kind == 1:
                await orders.acreate(order_id=f"o-{n}", symbol="AAPL", order_type="market", side="buy", quantity=1)
                await orders.atransition(f"o-{n}", "submitted")
            else:  # a statement long enough to be cancelled mid-way
                await orders.acreate(order_id=f"o-{n}", symbol="AAPL", order_type="market", side="buy", quantity=1)
                await session.execute_sql("SELECT pg_sleep(0.002)")
            phase[n] = "leaving"  # from here a cancellation may come after COMMIT

    async def one(n: int, gate: asyncio.Semaphore):
        async with gate:
            task = asyncio.create_task(request(n, rng.randrange(3)))
            if rng.random() < 0.4:
                await asyncio.sleep(rng.random() * 0.006)
                task.cancel()
            try:
                await task
                outcome["done"] += 1
            except asyncio.CancelledError:
                outcome["cancelled"] += 1

    async def main():
        gate = asyncio.Semaphore(60)  # more requests in flight than threads: some wait for one
        await asyncio.gather(*(one(n, gate) for n in range(10_000)))

    asyncio.run(main())
    assert outcome["done"] + outcome["cancelled"] == 10_000 and outcome["cancelled"] > 1_000
    # A task cancelled while its session was leaving returned at once; the rollback and the
    # thread's release finish on the thread right after.
    assert eventually(lambda: conn.pool_status()["in_use"], 0) == 0
    threads = threads_of(conn)
    assert eventually(lambda: threads.status()["idle"], threads.status()["threads"]) == threads.status()["threads"]
    states = server_sessions(database_url, conn.settings.application_name)
    assert states.get("idle in transaction", 0) == 0 and states.get("active", 0) == 0, states
    assert sum(states.values()) <= 30
    # A session cancelled before its body ended committed nothing.
    with raw.cursor() as cur:
        cur.execute("SELECT substr(order_id, 3)::int FROM orders")
        committed = {row[0] for row in cur.fetchall()}
    assert committed and all(phase.get(n) == "leaving" for n in committed)
    threads = threads_of(conn).status()
    assert threads["threads"] <= 30 and threads["idle"] == threads["threads"] and threads["waiting"] == 0
    assert aio_threads() <= 30 + 10  # this connection's, and at most the other tests' idle ones


def test_an_exhausted_pool_raises_after_pool_timeout(connection, raw):
    conn = connection(pool_size=1, max_overflow=1, pool_timeout=0.5)
    orders = OrderRepository(conn)

    async def hold(release: asyncio.Event):
        async with async_session(conn) as session:
            await session.execute_sql("SELECT 1")
            await release.wait()

    async def main():
        release = asyncio.Event()
        holders = [asyncio.create_task(hold(release)) for _ in range(2)]
        await asyncio.sleep(0.2)
        started = time.monotonic()
        with pytest.raises(PoolExhaustedError):
            async with async_session(conn):
                pass
        waited = time.monotonic() - started
        with pytest.raises(PoolExhaustedError):
            await orders.acount()
        release.set()
        await asyncio.gather(*holders)
        assert await orders.acount() == 0  # free again
        return waited

    waited = asyncio.run(main())
    assert 0.4 <= waited < 2
    assert conn.pool_status()["in_use"] == 0


def test_a_waiting_session_gets_the_thread_a_finished_one_returns(connection):
    conn = connection(pool_size=1, max_overflow=0, pool_timeout=5)
    prices = PriceRepository(conn)

    async def one():
        async with async_session(conn, read_only=True):
            return await prices.acount()

    async def main():
        return await asyncio.gather(*(one() for _ in range(50)))

    assert asyncio.run(main()) == [0] * 50
    assert threads_of(conn).status()["threads"] == 1


def test_cancelled_while_waiting_for_a_thread_takes_none(connection):
    conn = connection(pool_size=1, max_overflow=0, pool_timeout=5)

    async def main():
        release = asyncio.Event()

        async def hold():
            async with async_session(conn):
                await release.wait()

        holder = asyncio.create_task(hold())
        await asyncio.sleep(0.1)
        waiter = asyncio.create_task(async_session(conn).__aenter__())
        await asyncio.sleep(0.1)
        waiter.cancel()
        release.set()
        await holder
        async with async_session(conn) as session:  # the thread was not handed to the cancelled waiter
            return await session.execute_sql("SELECT 1")

    assert asyncio.run(main()) == [(1,)]
    assert threads_of(conn).status()["waiting"] == 0
    assert eventually(lambda: conn.pool_status()["in_use"], 0) == 0
