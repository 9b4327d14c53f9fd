"""SQL injection: every string parameter of the specialised queries is data.

Each payload is stored where the schema allows it (article symbols and url,
event type, order id, metric name) and must then be found by the query that
takes it; everywhere else it must match nothing. Afterwards every table is
still there with the same rows.
"""
from __future__ import annotations

import datetime as dt
import time

import pytest

from marketstore import (
    ArticleRepository,
    BacktestResultRepository,
    DataValidationError,
    EventRepository,
    OrderRepository,
    PriceRepository,
    SentimentScoreRepository,
    TradingSignalRepository,
)
from marketstore.models import MODELS, config_hash
from helpers import T0, UTC

DAY = (T0, T0 + dt.timedelta(days=1))

PAYLOADS = [
    "x'; DROP TABLE prices; --",
    "x' OR '1'='1",
    'x"; DROP TABLE articles; --',
    "'); DELETE FROM orders; --",
    "$$; TRUNCATE backtest_results; $$",
    "x%s %(name)s {0} ?",
    "x\\'; SELECT pg_sleep(3); --",
    "-- comment",
    "a' || (SELECT current_user) || '",
    "AAPL'::text[]) OR true OR (ARRAY['",
]


def table_counts(raw) -> dict[str, int]:
    counts = {}
    with raw.cursor() as cur:
        for model in MODELS:
            cur.execute(f"SELECT count(*) FROM {model._meta.table_name}")
            counts[model._meta.table_name] = cur.fetchone()[0]
    return counts


@pytest.mark.parametrize("payload", PAYLOADS)
def test_string_parameters_are_data(db, raw, payload):
    prices, articles, sentiment = PriceRepository(), ArticleRepository(), SentimentScoreRepository()
    events, signals, orders = EventRepository(), TradingSignalRepository(), OrderRepository()
    backtests = BacktestResultRepository()

    prices.upsert_many([{"symbol": "AAPL", "timestamp": T0, "open": 1, "high": 2, "low": 1, "close": 2,
                         "volume": 5}])
    article = articles.create(title=f"Title {payload}", content=payload, url=f"https://x.example/{payload}",
                              symbols=["AAPL", payload], ingested_at=T0)
    other = articles.create(title="Plain", symbols=["AAPL"], ingested_at=T0)
    sentiment.create(article=article.id, score=0.5, confidence=1, model="m", timestamp=T0)
    event = events.create(article=article.id, symbols=[payload], event_type=payload[:64], severity=2, timestamp=T0)
    signals.create(symbol="AAPL", signal_type="buy", cms_score=0.1, timestamp=T0)
    order = orders.create(order_id=payload[:64], symbol="AAPL", order_type="market", side="buy", quantity=1)
    config = {"payload": payload}
    best = backtests.create(name="with payload metric", config=config, config_hash=config_hash(config),
                            metrics={payload: 42, "sharpe": 1})
    backtests.create(name="plain", config={}, config_hash=config_hash({}), metrics={"sharpe": 99})
    before = table_counts(raw)
    started = time.monotonic()

    # Stored as data, found as data.
    assert [a.id for a in articles.for_symbol(payload)] == [article.id]
    again, created = articles.create_if_new(url=f"https://x.example/{payload}", title="again")
    assert (again.id, again.title, created) == (article.id, article.title, False)
    assert [e.id for e in events.by_type(payload[:64])] == [event.id]
    assert [e.id for e in events.for_symbol(payload)] == [event.id]
    assert sentiment.average_for_symbol(payload, *DAY) == 0.5
    assert [(b.average, b.count) for b in sentiment.timeseries(payload, *DAY)] == [(0.5, 1)]
    assert orders.get_by_order_id(payload[:64]).id == order.id
    assert orders.transition(payload[:64], "submitted").status == "submitted"
    assert [e.to_status for e in orders.history(payload[:64])] == ["submitted"]
    assert [b.id for b in backtests.best_by_metric(payload, limit=1)] == [best.id]
    assert all(a.id in (article.id, other.id) for a in articles.search(payload))

    # Matches nothing where it cannot be stored.
    assert prices.get_range(payload[:32], *DAY) == []
    assert prices.latest(payload[:32]) is None
    assert prices.latest_for_symbols([payload[:32], "AAPL"]).keys() == {"AAPL"}
    assert prices.resample(payload[:32], *DAY) == []
    assert signals.latest(payload[:32]) is None
    assert signals.in_range(payload[:32], *DAY) == []
    assert orders.open_orders(payload[:32]) == []

    # Refused where the value is checked against a rule.
    for call in (lambda: prices.get_range("AAPL", *DAY, interval=payload),
                 lambda: signals.by_type(payload),
                 lambda: orders.by_status(payload),
                 lambda: prices.resample("AAPL", *DAY, bucket=payload)):
        with pytest.raises(DataValidationError):
            call()

    assert time.monotonic() - started < 3  # no pg_sleep ran
    after = table_counts(raw)
    assert after == {**before, "order_events": before["order_events"] + 1}
