"""Every list method takes ``limit`` (and ``after_id`` where it pages); the filters the command
line needs are repository parameters, done in SQL. Checked against plain-Python oracles."""
from __future__ import annotations

import datetime as dt
import random

import pytest

from helpers import MINUTE, UTC, sent_statements
from marketstore import (
    ArticleRepository,
    BacktestResultRepository,
    DataValidationError,
    EventRepository,
    OrderRepository,
    SentimentScoreRepository,
    TradingSignalRepository,
)

T0 = dt.datetime(2024, 5, 6, tzinfo=UTC)
SYMBOLS = ("AAPL", "MSFT", "NVDA")


def pages(fetch, size: int) -> list[list]:
    """Every page of ``fetch(limit=size, after_id=...)`` until a short one."""
    found, after = [], None
    while True:
        page = fetch(limit=size, after_id=after)
        found.append(page)
        if len(page) < size:
            return found
        after = page[-1].id


@pytest.fixture
def made_signals(db):
    rng = random.Random(31)
    repo = TradingSignalRepository()
    # Timestamps repeat (two signals a minute at most), so the id breaks ties.
    made = [repo.create(symbol=rng.choice(SYMBOLS), signal_type=rng.choice(["buy", "sell", "hold"]),
                        cms_score=0.5, timestamp=T0 + rng.randint(0, 60) * MINUTE) for _ in range(120)]
    return sorted(made, key=lambda s: (s.timestamp, s.id))


@pytest.mark.parametrize("symbol, signal_type, since", [
    (None, None, None), ("AAPL", None, None), (None, "buy", None), ("MSFT", "sell", T0 + 20 * MINUTE),
    ("TSLA", None, None),
])
def test_signals_recent_filters_in_sql_and_pages_newest_first(made_signals, symbol, signal_type, since):
    repo = TradingSignalRepository()
    expected = [s.id for s in reversed(made_signals) if (symbol is None or s.symbol == symbol)
                and (signal_type is None or s.signal_type == signal_type) and (since is None or s.timestamp >= since)]
    with sent_statements() as sent:
        first = repo.recent(7, symbol=symbol, signal_type=signal_type, since=since)
    assert [s.id for s in first] == expected[:7]
    assert len(sent) == 1 and "LIMIT" in sent[0][0]  # one statement: nothing filtered or cut in Python
    walked = pages(lambda **page: repo.recent(symbol=symbol, signal_type=signal_type, since=since, **page), 9)
    assert [s.id for page in walked for s in page] == expected
    if signal_type is not None:
        assert [s.id for s in repo.by_type(signal_type, since, symbol=symbol, limit=7)] == expected[:7]


def test_signals_in_range_pages_oldest_first(made_signals):
    repo = TradingSignalRepository()
    start, end = T0 + 10 * MINUTE, T0 + 50 * MINUTE
    expected = [s.id for s in made_signals if s.symbol == "AAPL" and start <= s.timestamp < end]
    assert len(expected) > 10
    walked = pages(lambda **page: repo.in_range("AAPL", start, end, **page), 4)
    assert [s.id for page in walked for s in page] == expected


@pytest.fixture
def made_orders(db):
    rng = random.Random(32)
    repo = OrderRepository()
    signal = TradingSignalRepository().create(symbol="AAPL", signal_type="buy", cms_score=0.5)
    made = [repo.create(order_id=f"o-{i}", symbol=rng.choice(SYMBOLS), order_type="market", side="buy",
                        quantity=1, timestamp=T0 + rng.randint(0, 30) * MINUTE,
                        signal=signal.id if i % 3 == 0 else None) for i in range(60)]
    for order in made[::4]:
        repo.transition(order.order_id, "submitted")
    for order in made[::8]:
        repo.transition(order.order_id, "cancelled")
    return sorted((repo.get(o.id) for o in made), key=lambda o: (o.timestamp, o.id)), signal


@pytest.mark.parametrize("status, symbol", [("pending", None), ("pending", "AAPL"), ("submitted", "MSFT"),
                                            ("cancelled", None), ("filled", None)])
def test_orders_by_status_filters_by_symbol_in_sql_and_pages(made_orders, status, symbol):
    made, _ = made_orders
    repo = OrderRepository()
    expected = [o.id for o in made if o.status == status and (symbol is None or o.symbol == symbol)]
    with sent_statements() as sent:
        first = repo.by_status(status, symbol=symbol, limit=3)
    assert [o.id for o in first] == expected[:3]
    assert len(sent) == 1 and "LIMIT" in sent[0][0]
    walked = pages(lambda **page: repo.by_status(status, symbol=symbol, **page), 3)
    assert [o.id for page in walked for o in page] == expected


def test_open_orders_and_for_signal_page(made_orders):
    made, signal = made_orders
    repo = OrderRepository()
    still_open = [o.id for o in made if o.status in ("pending", "submitted", "partially_filled")]
    assert [o.id for page in pages(repo.open_orders, 5) for o in page] == still_open
    assert [o.id for o in repo.open_orders("NVDA", limit=2)] == [
        o.id for o in made if o.id in still_open and o.symbol == "NVDA"][:2]
    for_signal = [o.id for o in made if o.signal_id == signal.id]
    assert [o.id for page in pages(lambda **p: repo.for_signal(signal.id, **p), 4) for o in page] == for_signal
    assert [e.to_status for e in repo.history(made[0].order_id, limit=1)] == [
        e.to_status for e in repo.history(made[0].order_id)][:1]


def test_news_and_backtest_lists_take_a_limit(db):
    article = ArticleRepository().create(title="t", symbols=["AAPL"])
    scores = SentimentScoreRepository()
    made = [scores.create(article=article.id, score=0.1, confidence=0.5, model="m", timestamp=T0 + i * MINUTE)
            for i in range(5)]
    assert [s.id for s in scores.for_article(article.id, limit=2)] == [s.id for s in made[:2]]
    events = EventRepository()
    created = [events.create(event_type="earnings", severity=3, symbols=["AAPL"], timestamp=T0 + i * MINUTE)
               for i in range(5)]
    newest = [e.id for e in reversed(created)]
    assert [e.id for e in events.by_type("earnings", limit=2)] == newest[:2]
    assert [e.id for e in events.for_symbol("AAPL", T0 + MINUTE, limit=3)] == newest[:3]
    assert [e.id for e in events.recent(3, None, 2)] == newest[:2]
    backtests = BacktestResultRepository()
    runs = [backtests.create(name=f"r{i}", config={"a": 1}) for i in range(3)]
    assert [b.id for b in backtests.find_by_config({"a": 1}, limit=2)] == [b.id for b in reversed(runs)][:2]


@pytest.mark.parametrize("call, field", [
    (lambda: TradingSignalRepository().recent(0), "limit"),
    (lambda: TradingSignalRepository().recent(symbol=""), "symbol"),
    (lambda: TradingSignalRepository().recent(signal_type="short"), "signal_type"),
    (lambda: TradingSignalRepository().in_range("AAPL", T0, T0, after_id=0), "after_id"),
    (lambda: OrderRepository().by_status("open"), "status"),
    (lambda: OrderRepository().by_status("pending", limit=10_001), "limit"),
    (lambda: OrderRepository().open_orders(after_id="7"), "after_id"),
    (lambda: EventRepository().for_symbol("AAPL", limit=True), "limit"),
    (lambda: SentimentScoreRepository().for_article(1, limit=-1), "limit"),
    (lambda: BacktestResultRepository().find_by_config({}, limit=None), "limit"),
])
def test_bad_list_parameters_are_refused_naming_them(db, call, field):
    with pytest.raises(DataValidationError) as info:
        call()
    assert info.value.field == field


def test_symbols_page_in_order(db):
    from marketstore import PriceRepository

    prices = PriceRepository()
    names = [f"S{i:02d}" for i in range(23)]
    prices.copy_from([{"symbol": s, "timestamp": T0 + i * MINUTE, "open": 1, "high": 2, "low": 1, "close": 2,
                       "volume": 3} for s in names for i in range(3)])
    walked, after = [], None
    while page := prices.symbols(limit=5, after=after):
        walked.append(page)
        after = page[-1]
    assert [s for page in walked for s in page] == names and [len(p) for p in walked] == [5, 5, 5, 5, 3]
    assert prices.symbols() == names
    assert prices.symbols(after="S21") == ["S22"] and prices.symbols(after="T") == []
