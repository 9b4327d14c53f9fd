"""Query plans: on ~50,000 rows per table, each specialised query uses its index.

The statements are the ones the repository really sends (captured from
peewee's query log), EXPLAINed on a separate connection after ANALYZE, in a
database of this module's own so the other tests' per-test TRUNCATE cannot
empty it.
"""
from __future__ import annotations

import datetime as dt

import psycopg2
import pytest

import marketstore
from helpers import MINUTE, UTC, sent_statements
from marketstore import (
    ArticleRepository,
    BacktestResultRepository,
    EventRepository,
    OrderRepository,
    PriceRepository,
    TradingSignalRepository,
)

T0 = dt.datetime(2024, 1, 1, tzinfo=UTC)
ROWS = 50_000

SEED = f"""
INSERT INTO prices (symbol, "timestamp", open, high, low, close, volume, "interval")
SELECT 'S' || (i % 50), timestamptz '2024-01-01 00:00+00' + (i / 50) * interval '1 minute',
       10, 11, 9, 10, 100, '1m'
FROM generate_series(0, {ROWS - 1}) i;

INSERT INTO articles (title, content, url, published_at, symbols)
SELECT 'headline ' || i, 'body text ' || md5(i::text), 'https://news.example/' || i,
       timestamptz '2024-01-01 00:00+00' + i * interval '1 minute',
       ARRAY['S' || (i % 500), 'T' || ((i * 7) % 500)]
FROM generate_series(0, {ROWS - 1}) i;

INSERT INTO events (symbols, event_type, severity, "timestamp")
SELECT ARRAY['S' || (i % 500)], 'type' || (i % 40), 1 + i % 5,
       timestamptz '2024-01-01 00:00+00' + i * interval '1 minute'
FROM generate_series(0, {ROWS - 1}) i;

INSERT INTO trading_signals (symbol, signal_type, cms_score, "timestamp")
SELECT 'S' || (i % 50), (ARRAY['buy', 'sell', 'hold'])[1 + i % 3], 0,
       timestamptz '2024-01-01 00:00+00' + i * interval '1 minute'
FROM generate_series(0, {ROWS - 1}) i;

INSERT INTO trading_signals (symbol, signal_type, cms_score, "timestamp")
SELECT 'RARE', 'buy', 0, timestamptz '2024-01-01 00:00+00' + i * interval '1 day'
FROM generate_series(0, 9) i;

INSERT INTO orders (order_id, symbol, order_type, side, quantity, price, status, "timestamp")
SELECT 'o' || i, 'S' || (i % 50), 'limit', 'buy', 10, 100,
       CASE i % 100 WHEN 0 THEN 'pending' WHEN 1 THEN 'submitted' WHEN 2 THEN 'cancelled' ELSE 'filled' END,
       timestamptz '2024-01-01 00:00+00' + i * interval '1 minute'
FROM generate_series(0, {ROWS - 1}) i;

INSERT INTO backtest_results (name, config, config_hash, metrics, created_at)
SELECT 'bt' || i, jsonb_build_object('i', i), encode(sha256(convert_to(i::text, 'UTF8')), 'hex'),
       CASE WHEN i % 100 = 0 THEN jsonb_build_object('sharpe', i % 37, 'sortino', (i % 13) / 4.0)
            ELSE jsonb_build_object('sharpe', i % 37) END,
       timestamptz '2024-01-01 00:00+00' + i * interval '1 minute'
FROM generate_series(0, {ROWS - 1}) i;

ANALYZE prices, articles, events, trading_signals, orders, backtest_results;
"""


@pytest.fixture(scope="module")
def big_url(create_database):
    url = create_database()
    marketstore.run_migrations(url)
    conn = psycopg2.connect(url)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(SEED)
    conn.close()
    return url


@pytest.fixture
def big(big_url):
    marketstore.initialize_database(big_url, pool_timeout=5)
    conn = psycopg2.connect(big_url)
    yield conn
    conn.close()
    marketstore.close_database()


def plans_of(conn, call) -> list[str]:
    with sent_statements() as found:
        result = call()
    assert result not in (None, [], {}), "the query found nothing: the plan would not be representative"
    queries = [(sql, params) for sql, params in found if sql.lstrip().upper().startswith(("SELECT", "WITH"))]
    assert queries, "no query captured"
    plans = []
    with conn.cursor() as cur:
        for sql, params in queries:
            cur.execute("EXPLAIN " + sql, params)
            plans.append("\n".join(line for (line,) in cur.fetchall()))
    return plans


CASES = {
    "PriceRepository.get_range": (
        lambda: PriceRepository().get_range("S7", T0 + 100 * MINUTE, T0 + 300 * MINUTE),
        "prices", ["prices_symbol_interval_timestamp"]),
    "PriceRepository.latest": (lambda: PriceRepository().latest("S7"), "prices", ["prices_symbol_interval_timestamp"]),
    "PriceRepository.latest_for_symbols": (
        lambda: PriceRepository().latest_for_symbols(["S1", "S2", "S3", "S49"]),
        "prices", ["Index Scan Backward using prices_symbol_interval_timestamp"]),
    "PriceRepository.resample": (
        lambda: PriceRepository().resample("S7", T0, T0 + dt.timedelta(hours=5)),
        "prices", ["prices_symbol_interval_timestamp"]),
    "PriceRepository.symbols": (lambda: PriceRepository().symbols(), "prices", ["prices_symbol_interval_timestamp"]),
    "ArticleRepository.for_symbol": (lambda: ArticleRepository().for_symbol("S42"), "articles", ["articles_symbols"]),
    "ArticleRepository.recent": (lambda: ArticleRepository().recent(10), "articles", ["articles_published_at"]),
    "ArticleRepository.search": (lambda: ArticleRepository().search("headline 4242"), "articles",
                                 ["articles_search_vector"]),
    "EventRepository.for_symbol(since)": (
        lambda: EventRepository().for_symbol("S42", since=T0 + (ROWS - 2_000) * MINUTE),
        "events", ["events_timestamp"]),
    # With its LIMIT, walking the timestamp index newest first until enough rows match is as good.
    "EventRepository.by_type": (lambda: EventRepository().by_type("type7"), "events",
                                ["events_event_type|events_timestamp"]),
    # A symbol's signals are spread through time like every other symbol's, so walking the
    # timestamp index backwards and filtering finds the latest one as fast: either index is
    # right. A rare symbol must use (symbol, timestamp).
    "TradingSignalRepository.latest": (lambda: TradingSignalRepository().latest("S7"), "trading_signals",
                                       ["trading_signals_symbol_timestamp|trading_signals_timestamp"]),
    "TradingSignalRepository.latest(rare)": (lambda: TradingSignalRepository().latest("RARE"), "trading_signals",
                                             ["trading_signals_symbol_timestamp"]),
    "TradingSignalRepository.in_range": (
        lambda: TradingSignalRepository().in_range("S7", T0, T0 + dt.timedelta(hours=10)),
        "trading_signals", ["trading_signals_symbol_timestamp|trading_signals_timestamp"]),
    "TradingSignalRepository.in_range(rare)": (
        lambda: TradingSignalRepository().in_range("RARE", T0, T0 + dt.timedelta(days=30)),
        "trading_signals", ["trading_signals_symbol_timestamp"]),
    # Paged (LIMIT) in timestamp order: the planner may walk the timestamp index instead, stopping early.
    "OrderRepository.by_status": (lambda: OrderRepository().by_status("pending"), "orders",
                                  ["orders_status|orders_timestamp"]),
    "OrderRepository.open_orders": (lambda: OrderRepository().open_orders(), "orders",
                                    ["orders_status|orders_timestamp"]),
    "OrderRepository.get_by_order_id": (lambda: OrderRepository().get_by_order_id("o42"), "orders",
                                        ["orders_order_id"]),
    "BacktestResultRepository.best_by_metric": (
        lambda: BacktestResultRepository().best_by_metric("sortino"), "backtest_results",
        ["backtest_results_metrics"]),
    "BacktestResultRepository.best_by_metric(rare metric)": (
        lambda: BacktestResultRepository().best_by_metric("calmar", limit=5), "backtest_results",
        ["backtest_results_metrics", "backtest_results_created_at"]),
    "BacktestResultRepository.recent": (lambda: BacktestResultRepository().recent(), "backtest_results",
                                        ["backtest_results_created_at"]),
}


@pytest.mark.parametrize("name", list(CASES))
def test_query_uses_its_index(big, name):
    call, table, indexes = CASES[name]
    plans = plans_of(big, call)
    text = "\n\n".join(plans)
    assert f"Seq Scan on {table}" not in text, text
    for choices in indexes:
        assert any(index in text for index in choices.split("|")), text


def test_find_by_config_uses_the_hash_index(big):
    with big.cursor() as cur:  # a stored config and its hash, as the models compute it
        cur.execute("UPDATE backtest_results SET config = '{\"b\": 1, \"a\": [1, 2]}', "
                    "config_hash = %s WHERE id = 77", (marketstore.models.config_hash({"a": [1, 2], "b": 1}),))
    big.commit()
    plans = plans_of(big, lambda: BacktestResultRepository().find_by_config({"a": [1, 2], "b": 1}))
    assert "backtest_results_config_hash" in plans[0] and "Seq Scan" not in plans[0]
