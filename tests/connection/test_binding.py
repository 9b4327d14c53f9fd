"""A repository given a connection runs every query on it.

Two ``DatabaseConnection`` objects to two databases, used at once from eight
threads with every repository: each database ends up with exactly its own
rows, and the default connection's database with none.
"""
from __future__ import annotations

import datetime as dt
import threading

import psycopg2
import pytest

import marketstore
from marketstore import (
    ArticleRepository,
    BacktestResultRepository,
    DatabaseConnection,
    EventRepository,
    OrderRepository,
    Price,
    PriceRepository,
    SentimentScoreRepository,
    SerializationFailure,
    TradingSignalRepository,
    database_proxy,
    retry_transaction,
)
from marketstore.models import MODELS
from helpers import UTC

T0 = dt.datetime(2024, 3, 4, 14, 30, tzinfo=UTC)
THREADS = 8
ROUNDS = 3


@pytest.fixture(scope="module")
def two_urls(create_database):
    urls = [create_database(), create_database()]
    for url in urls:
        marketstore.run_migrations(url)
    return urls


@pytest.fixture
def two_connections(two_urls, db):
    for url in two_urls:
        _truncate(url)
    connections = [DatabaseConnection().initialize(url, pool_timeout=10) for url in two_urls]
    yield connections
    for connection in connections:
        connection.close()


def _truncate(url):
    conn = psycopg2.connect(url)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f"TRUNCATE {', '.join(m._meta.table_name for m in MODELS)} RESTART IDENTITY CASCADE")
    conn.close()


def _rows(url, sql):
    conn = psycopg2.connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
            return cur.fetchall()
    finally:
        conn.close()


def _bar(symbol, minute, **extra):
    return {"symbol": symbol, "timestamp": T0 + dt.timedelta(minutes=minute), "open": 10, "high": 12,
            "low": 9, "close": 11, "volume": 100, **extra}


def _work(connection, tag: str, round_: int) -> None:
    """One thread's round: every repository, writes and reads, on ``connection``."""
    prices = PriceRepository(connection)
    articles, sentiment = ArticleRepository(connection), SentimentScoreRepository(connection)
    events, signals = EventRepository(connection), TradingSignalRepository(connection)
    orders, backtests = OrderRepository(connection), BacktestResultRepository(connection)
    base = round_ * 10

    # Prices: ORM create, COPY, staging-table upsert, raw-SQL reads and ORM reads.
    prices.create(**_bar(tag, base))
    assert prices.copy_from([_bar(tag, base + 1), _bar(tag, base + 2)]) == 2
    assert prices.upsert_many([_bar(tag, base + 2, close=12), _bar(tag, base + 3)]) == 2
    assert prices.latest(tag).timestamp == T0 + dt.timedelta(minutes=base + 3)
    stored = 4 * (round_ + 1)
    assert len(prices.get_range(tag, T0, T0 + dt.timedelta(hours=1))) == stored
    assert set(prices.latest_for_symbols([tag])) == {tag}
    assert prices.resample(tag, T0, T0 + dt.timedelta(hours=1), "1 hour")[0].count == stored
    assert tag in prices.symbols()
    assert prices.count(symbol=tag) == stored
    assert prices.exists(symbol=tag)
    assert prices.get(prices.list(limit=1, symbol=tag)[0].id).symbol == tag

    # News: articles (create, create_if_new, for_symbol, search, recent), sentiment, events.
    article = articles.create(title=f"{tag} beats estimates round {round_}", symbols=[tag])
    again, created = articles.create_if_new(url=f"https://news.example/{tag}/{round_}", title=f"{tag} again",
                                            symbols=[tag])
    assert created and articles.create_if_new(url=again.url, title="dup")[1] is False
    assert {a.id for a in articles.for_symbol(tag)} >= {article.id, again.id}
    assert any(a.id == article.id for a in articles.search(f"{tag} estimates"))
    assert articles.recent(1000)
    sentiment.create(article=article, score=0.5, confidence=0.9, model=tag)
    assert [s.model for s in sentiment.for_article(article.id)] == [tag]
    assert sentiment.average_for_symbol(tag, T0 - dt.timedelta(days=3650), T0 + dt.timedelta(days=3650)) == 0.5
    events.create(article=article, symbols=[tag], event_type=f"e_{tag}", severity=3)
    assert len(events.for_symbol(tag)) == round_ + 1
    assert len(events.by_type(f"e_{tag}")) == round_ + 1

    # Trading: signals, orders with the state machine and audit trail (row locks).
    signal = signals.create(symbol=tag, signal_type="buy", cms_score=0.4)
    assert signals.latest(tag).id == signal.id
    order_id = f"{tag}-{round_}"
    orders.create(order_id=order_id, symbol=tag, order_type="market", side="buy", quantity=5, signal=signal)
    orders.transition(order_id, "submitted")
    orders.transition(order_id, "filled", 5, 11)
    assert [e.to_status for e in orders.history(order_id)] == ["submitted", "filled"]
    assert [o.order_id for o in orders.for_signal(signal.id)] == [order_id]

    # Backtests, and a retried transaction bound to this connection.
    config = {"tag": tag, "round": round_}
    backtests.create(name=tag, config=config, metrics={"sharpe": round_})
    assert [b.name for b in backtests.find_by_config(config)] == [tag]

    def update_in_one_transaction():
        with connection.session("update"):
            bar = prices.latest(tag)
            return prices.update(bar.id, volume=bar.volume + 1)

    assert retry_transaction(update_in_one_transaction, connection=connection).volume == 101


def test_two_connections_side_by_side_from_eight_threads(two_connections, two_urls, db, database_url):
    errors: list[BaseException] = []
    start = threading.Barrier(THREADS)

    def run(index):
        try:
            start.wait()
            for round_ in range(ROUNDS):
                _work(two_connections[index % 2], f"T{index}", round_)
        except BaseException as exc:  # noqa: BLE001 - reported below with its thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors, errors

    per_table = {  # table, the column holding the thread's tag: rows per tag
        ("prices", "symbol"): 4 * ROUNDS,
        ("articles", "symbols[1]"): 2 * ROUNDS,
        ("sentiment_scores", "model"): ROUNDS,
        ("events", "symbols[1]"): ROUNDS,
        ("trading_signals", "symbol"): ROUNDS,
        ("orders", "symbol"): ROUNDS,
        ("backtest_results", "name"): ROUNDS,
    }
    for which, url in enumerate(two_urls):
        own = {f"T{i}" for i in range(THREADS) if i % 2 == which}
        for (table, column), per_tag in per_table.items():
            found = dict(_rows(url, f"SELECT {column}, count(*) FROM {table} GROUP BY 1"))
            assert found == {tag: per_tag for tag in own}, (table, url)
        assert _rows(url, "SELECT count(*) FROM order_events") == [(2 * ROUNDS * len(own),)]
    # The default connection's database saw nothing.
    for model in MODELS:
        assert _rows(database_url, f"SELECT count(*) FROM {model._meta.table_name}") == [(0,)]


def test_a_session_routes_the_models_to_its_connection(two_connections, two_urls, db, database_url):
    first, second = two_connections
    with first.session() as database:
        assert database_proxy.obj is database is first.database
        Price.insert(_bar("ROUTED", 0)).execute()  # plain Peewee, inside the session
        with second.session() as inner:  # another connection's session inside: its own database
            assert database_proxy.obj is inner is second.database
            assert Price.select().count() == 0
        assert database_proxy.obj is database
    assert database_proxy.obj is db.database  # outside any session: the default
    assert _rows(two_urls[0], "SELECT symbol FROM prices") == [("ROUTED",)]
    assert _rows(two_urls[1], "SELECT count(*) FROM prices") == [(0,)]
    assert _rows(database_url, "SELECT count(*) FROM prices") == [(0,)]


def test_repositories_without_a_connection_use_the_default(two_connections, db, database_url):
    PriceRepository().create(**_bar("DEFAULT", 0))
    assert PriceRepository().connection is marketstore.db_connection
    assert _rows(database_url, "SELECT symbol FROM prices") == [("DEFAULT",)]


def test_retry_checks_the_transaction_of_the_connection_it_is_given(two_connections):
    first, second = two_connections
    calls = []

    def conflict():
        calls.append(1)
        if len(calls) == 1:
            raise SerializationFailure("conflict")
        return "done"

    # Inside a session of `first`, a transaction on `second` is still whole: it may be re-run.
    with first.session():
        assert retry_transaction(conflict, connection=second, backoff=0) == "done"
        assert len(calls) == 2
        calls.clear()
        # ... but one on `first` (or, by default, on whatever the open session is) may not.
        with pytest.raises(SerializationFailure):
            retry_transaction(conflict, connection=first, backoff=0)
        calls.clear()
        with pytest.raises(SerializationFailure):
            retry_transaction(conflict, backoff=0)
    assert not first.in_transaction() and not second.in_transaction()
