"""The async API: a twin for every public repository method, and async sessions holding one transaction.

Every async test runs its coroutine with ``asyncio.run`` (no plugin needed);
what was committed is checked from a raw connection, never through the code
under test.
"""
from __future__ import annotations

import asyncio
import inspect

import pytest

import marketstore
from marketstore import (
    BaseRepository,
    DataValidationError,
    DuplicateKeyError,
    OrderRepository,
    PriceRepository,
    ReadOnlyError,
)
from marketstore.aio import get_async_db_session
from marketstore.repositories import (
    ArticleRepository, BacktestResultRepository, EventRepository, SentimentScoreRepository, TradingSignalRepository,
)
from helpers import count_rows, price_row

REPOSITORIES = [BaseRepository, PriceRepository, OrderRepository, ArticleRepository, SentimentScoreRepository,
                EventRepository, TradingSignalRepository, BacktestResultRepository]


def order(n: int = 0, **overrides) -> dict:
    data = dict(order_id=f"o-{n}", symbol="AAPL", order_type="market", side="buy", quantity=10)
    data.update(overrides)
    return data


@pytest.mark.parametrize("repository", REPOSITORIES, ids=lambda r: r.__name__)
def test_every_public_method_has_an_awaitable_twin(repository):
    public = {name for name, value in inspect.getmembers(repository)
              if inspect.isfunction(value) and not name.startswith("_")
              and not getattr(value, "_marketstore_twin", False) and name != "session"}
    assert public
    for name in public:
        twin = getattr(repository, "a" + name)
        assert inspect.iscoroutinefunction(twin), name
        assert "a" + name in dir(repository)
        # It points at the sync method and shows its signature.
        assert f".{name}`" in twin.__doc__
        assert inspect.signature(twin) == inspect.signature(getattr(repository, name))


def test_a_subclass_method_added_later_gets_its_twin_and_an_override_is_called(db):
    class Mine(PriceRepository):
        def touched(self, symbol: str) -> str:
            """Says hello."""
            return "mine " + symbol

        def count(self, **filters) -> int:
            return -1

    assert inspect.iscoroutinefunction(Mine.atouched)
    assert asyncio.run(Mine().acount()) == -1  # the override runs
    assert asyncio.run(Mine().atouched("X")) == "mine X"


def test_twins_outside_a_session_read_and_write(db, raw):
    prices = PriceRepository()

    async def main():
        bar = await prices.acreate(**price_row(0))
        await prices.abulk_create([price_row(n) for n in range(1, 5)])
        got = await prices.aget_range("AAPL")
        latest = await prices.alatest_for_symbols(["AAPL", "MSFT"])
        return bar, got, latest

    bar, got, latest = asyncio.run(main())
    assert bar.id and [b.timestamp for b in got] == sorted(b.timestamp for b in got) and len(got) == 5
    assert list(latest) == ["AAPL"]
    assert count_rows(raw, "prices") == 5
    assert db.pool_status()["in_use"] == 0


def test_an_error_of_the_sync_method_is_raised_by_its_twin(db):
    with pytest.raises(DataValidationError):
        asyncio.run(PriceRepository().acreate(**price_row(0, high=1)))


def test_one_transaction_across_awaited_calls_commits(db, raw):
    orders = OrderRepository()

    async def main():
        async with get_async_db_session() as session:
            await orders.acreate(**order(1))
            await orders.atransition("o-1", "submitted")
            # Not committed yet: invisible from another connection.
            assert count_rows(raw, "orders") == 0
            assert (await session.execute_sql("SELECT count(*) FROM orders")) == [(1,)]

    asyncio.run(main())
    assert count_rows(raw, "orders", "status = 'submitted'") == 1
    assert count_rows(raw, "order_events") >= 1


def test_an_exception_rolls_the_whole_session_back(db, raw):
    orders = OrderRepository()

    async def main():
        async with get_async_db_session():
            await orders.acreate(**order(1))
            await orders.acreate(**order(1))  # duplicate

    with pytest.raises(DuplicateKeyError):
        asyncio.run(main())
    assert count_rows(raw, "orders") == 0
    assert db.pool_status()["in_use"] == 0


def test_nested_async_sessions_are_savepoints(db, raw):
    orders = OrderRepository()

    async def main():
        async with get_async_db_session():
            await orders.acreate(**order(1))
            with pytest.raises(DuplicateKeyError):
                async with get_async_db_session():
                    await orders.acreate(**order(2))
                    await orders.acreate(**order(1))
            await orders.acreate(**order(3))

    asyncio.run(main())
    assert count_rows(raw, "orders") == 2  # o-2 rolled back to the savepoint; o-1, o-3 kept


def test_calls_of_a_session_run_on_its_one_thread(db):
    prices = PriceRepository()

    async def main():
        async with get_async_db_session() as session:
            backends = {row[0][0] for row in [await session.execute_sql("SELECT pg_backend_pid()")
                                              for _ in range(5)]}
            threads = {await session.run(lambda: __import__("threading").get_ident()) for _ in range(5)}
            await prices.aget_range("AAPL")
            return backends, threads

    backends, threads = asyncio.run(main())
    assert len(backends) == 1 and len(threads) == 1


def test_concurrent_sessions_are_isolated(db, raw):
    orders = OrderRepository()

    async def one(n):
        async with get_async_db_session():
            await orders.acreate(**order(n))
            if n % 2:
                raise KeyError(n)

    async def main():
        return await asyncio.gather(*(one(n) for n in range(40)), return_exceptions=True)

    results = asyncio.run(main())
    assert sum(isinstance(r, KeyError) for r in results) == 20
    assert count_rows(raw, "orders") == 20
    assert count_rows(raw, "orders", "right(order_id, 1)::int % 2 = 1") == 0


def test_a_read_only_async_session_on_the_primary_without_replicas(db, raw):
    orders = OrderRepository()

    async def main():
        async with get_async_db_session(read_only=True) as session:
            assert (await session.execute_sql("SHOW transaction_read_only")) == [("on",)]
            assert await orders.acount() == 0
            await orders.acreate(**order(1))

    with pytest.raises(ReadOnlyError):
        asyncio.run(main())
    assert count_rows(raw, "orders") == 0


def test_a_repository_on_another_connection_joins_the_async_session_thread(db, database_url, raw):
    other = marketstore.DatabaseConnection().initialize(database_url)
    try:
        orders = OrderRepository(other)

        async def main():
            async with marketstore.aio.async_session(other) as session:
                await orders.acreate(**order(1))
                raise KeyError("roll back")

        with pytest.raises(KeyError):
            asyncio.run(main())
        assert count_rows(raw, "orders") == 0
        assert other.pool_status()["in_use"] == 0
    finally:
        other.close()
