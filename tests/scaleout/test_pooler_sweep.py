"""Every public repository method through PgBouncer in transaction mode (``pooler="transaction"``).

The primary runs in Asia/Kolkata (+05:30): a session that did not get its
``SET LOCAL timezone = 'UTC'`` would return timestamps with that offset.
"""
from __future__ import annotations

import datetime as dt
import inspect
import uuid

import pytest

from marketstore import (
    ArticleRepository,
    BacktestResultRepository,
    DatabaseConnection,
    EventRepository,
    OrderRepository,
    PriceRepository,
    SentimentScoreRepository,
    TradingSignalRepository,
)
from helpers import UTC

T0 = dt.datetime(2024, 3, 4, 9, 30, tzinfo=UTC)
DAY = dt.timedelta(days=1)
REPOSITORIES = [PriceRepository, ArticleRepository, SentimentScoreRepository, EventRepository,
                TradingSignalRepository, OrderRepository, BacktestResultRepository]


class World:
    """Repositories on the pooled connection, and a few rows made through them."""

    def __init__(self, connection):
        self.price, self.article, self.sentiment, self.event, self.signal, self.order, self.backtest = (
            cls(connection) for cls in REPOSITORIES)
        tag = uuid.uuid4().hex[:6].upper()
        self.symbol = f"S{tag}"
        self.bars = [self.price.create(symbol=self.symbol, timestamp=T0 + dt.timedelta(minutes=m), open=10,
                                       high=20, low=9, close=10 + m, volume=5) for m in range(3)]
        self.art = self.article.create(title=f"Quarterly results beat {tag}", content="strong growth",
                                       url=f"https://example.com/{tag}", published_at=T0, symbols=[self.symbol])
        self.score = self.sentiment.create(article=self.art.id, score=0.5, confidence=0.9,
                                           model="m1", timestamp=T0)
        self.ev = self.event.create(article=self.art.id, symbols=[self.symbol], event_type="earnings", severity=3)
        self.sig = self.signal.create(symbol=self.symbol, signal_type="buy", cms_score=0.4)
        self.ord = self.order.create(order_id=f"o-{tag}", symbol=self.symbol, order_type="market", side="buy",
                                     quantity=10, signal=self.sig.id)
        self.config = {"window": 5, "tag": tag}
        self.bt = self.backtest.create(name=f"bt {tag}", config=self.config, metrics={"sharpe": 1.5})
        self.tag = tag


def utc(value) -> bool:
    return value.tzinfo is not None and value.utcoffset() == dt.timedelta(0)


def new_bar(w: World, minute: int) -> dict:
    return {"symbol": w.symbol, "timestamp": T0 + dt.timedelta(hours=1, minutes=minute), "open": 1, "high": 2,
            "low": 1, "close": 2, "volume": 3}


def frame_of(rows: list[dict]):
    return pytest.importorskip("pandas").DataFrame(rows)


# (call, check): check(result, world) must be true; timestamps must come back in UTC.
SWEEP = {
    "PriceRepository.create": (lambda w: w.price.create(**new_bar(w, 0)), lambda r, w: utc(r.timestamp)),
    "PriceRepository.get_by_id": (lambda w: w.price.get_by_id(w.bars[0].id), lambda r, w: r == w.bars[0] and utc(r.timestamp)),
    "PriceRepository.get": (lambda w: w.price.get(w.bars[1].id), lambda r, w: r == w.bars[1]),
    "PriceRepository.list": (lambda w: w.price.list(symbol=w.symbol), lambda r, w: r[:3] == w.bars),
    "PriceRepository.count": (lambda w: w.price.count(symbol=w.symbol), lambda r, w: r >= 3),
    "PriceRepository.exists": (lambda w: w.price.exists(symbol=w.symbol), lambda r, w: r is True),
    "PriceRepository.update": (lambda w: w.price.update(w.bars[2].id, volume=7), lambda r, w: r.volume == 7),
    "PriceRepository.delete": (lambda w: w.price.delete(w.price.create(**new_bar(w, 1)).id), lambda r, w: r is True),
    "PriceRepository.bulk_create": (lambda w: w.price.bulk_create([new_bar(w, 2), new_bar(w, 3)]), lambda r, w: r == 2),
    "PriceRepository.copy_from": (lambda w: w.price.copy_from([new_bar(w, 4)]), lambda r, w: r == 1),
    "PriceRepository.upsert_many": (lambda w: w.price.upsert_many([{**new_bar(w, 4), "close": 1.5}, new_bar(w, 5)]),
                                    lambda r, w: r == 2),
    "PriceRepository.delete_before": (lambda w: w.price.delete_before(dt.datetime(2000, 1, 1, tzinfo=UTC)),
                                      lambda r, w: r == 0),
    "PriceRepository.get_range": (lambda w: w.price.get_range(w.symbol, T0, T0 + dt.timedelta(minutes=3)),
                                  lambda r, w: [p.id for p in r] == [b.id for b in w.bars] and all(utc(p.timestamp) for p in r)),
    "PriceRepository.latest": (lambda w: w.price.latest(w.symbol), lambda r, w: utc(r.timestamp)),
    "PriceRepository.latest_for_symbols": (lambda w: w.price.latest_for_symbols([w.symbol, "NOPE"]),
                                           lambda r, w: list(r) == [w.symbol]),
    "PriceRepository.resample": (lambda w: w.price.resample(w.symbol, T0, T0 + dt.timedelta(minutes=3), "1 hour"),
                                 lambda r, w: len(r) == 1 and r[0].count == 3 and r[0].bucket == T0.replace(minute=0)
                                 and utc(r[0].bucket)),
    "PriceRepository.symbols": (lambda w: w.price.symbols(), lambda r, w: w.symbol in r),
    "PriceRepository.series": (lambda w: w.price.series([w.symbol]),
                               lambda r, w: [(s.symbol, s.interval) for s in r] == [(w.symbol, "1m")]),
    "ArticleRepository.create": (lambda w: w.article.create(title="t", url=f"https://x/{uuid.uuid4().hex}"),
                                 lambda r, w: r.id > 0),
    "ArticleRepository.get_by_id": (lambda w: w.article.get_by_id(w.art.id), lambda r, w: r == w.art and utc(r.published_at)),
    "ArticleRepository.get": (lambda w: w.article.get(w.art.id), lambda r, w: r == w.art),
    "ArticleRepository.list": (lambda w: w.article.list(url=w.art.url), lambda r, w: r == [w.art]),
    "ArticleRepository.count": (lambda w: w.article.count(url=w.art.url), lambda r, w: r == 1),
    "ArticleRepository.exists": (lambda w: w.article.exists(url=w.art.url), lambda r, w: r is True),
    "ArticleRepository.update": (lambda w: w.article.update(w.art.id, source="wire"), lambda r, w: r.source == "wire"),
    "ArticleRepository.delete": (lambda w: w.article.delete(w.article.create(title="t").id), lambda r, w: r is True),
    "ArticleRepository.bulk_create": (lambda w: w.article.bulk_create([{"title": "a"}, {"title": "b"}]), lambda r, w: r == 2),
    "ArticleRepository.create_if_new": (lambda w: w.article.create_if_new(w.art.url, title="again"),
                                        lambda r, w: r == (w.art, False) or (r[0].id == w.art.id and r[1] is False)),
    "ArticleRepository.copy_from": (lambda w: w.article.copy_from([{"title": "a", "url": w.art.url}, {"title": "b"}]),
                                    lambda r, w: r == (1, 1)),
    "ArticleRepository.for_symbol": (lambda w: w.article.for_symbol(w.symbol), lambda r, w: [a.id for a in r] == [w.art.id]),
    "ArticleRepository.recent": (lambda w: w.article.recent(), lambda r, w: len(r) >= 1),
    "ArticleRepository.search": (lambda w: w.article.search(f"quarterly {w.tag}"), lambda r, w: [a.id for a in r] == [w.art.id]),
    "SentimentScoreRepository.create": (lambda w: w.sentiment.create(article=w.art.id, score=-0.5,
                                                                     confidence=0.5, model="m2", timestamp=T0 + DAY),
                                        lambda r, w: utc(r.timestamp)),
    "SentimentScoreRepository.get_by_id": (lambda w: w.sentiment.get_by_id(w.score.id), lambda r, w: r == w.score),
    "SentimentScoreRepository.get": (lambda w: w.sentiment.get(w.score.id), lambda r, w: r == w.score),
    "SentimentScoreRepository.list": (lambda w: w.sentiment.list(article=w.art.id), lambda r, w: w.score in r),
    "SentimentScoreRepository.count": (lambda w: w.sentiment.count(article=w.art.id), lambda r, w: r >= 1),
    "SentimentScoreRepository.exists": (lambda w: w.sentiment.exists(article=w.art.id), lambda r, w: r is True),
    "SentimentScoreRepository.update": (lambda w: w.sentiment.update(w.score.id, confidence=0.8),
                                        lambda r, w: r.confidence == 0.8),
    "SentimentScoreRepository.delete": (lambda w: w.sentiment.delete(w.sentiment.create(
        article=w.art.id, score=0, confidence=0, model="x").id), lambda r, w: r is True),
    "SentimentScoreRepository.bulk_create": (lambda w: w.sentiment.bulk_create(
        [{"article": w.art.id, "score": 0.1, "confidence": 0.1, "model": "b",
          "timestamp": T0 - DAY}]), lambda r, w: r == 1),
    "SentimentScoreRepository.for_article": (lambda w: w.sentiment.for_article(w.art.id), lambda r, w: w.score in r),
    "SentimentScoreRepository.average_for_symbol": (lambda w: w.sentiment.average_for_symbol(w.symbol, T0, T0 + dt.timedelta(hours=1)),
                                                    lambda r, w: r == pytest.approx(0.5)),
    "SentimentScoreRepository.timeseries": (lambda w: w.sentiment.timeseries(w.symbol, T0, T0 + dt.timedelta(hours=1)),
                                            lambda r, w: len(r) == 1 and utc(r[0].bucket)),
    "EventRepository.create": (lambda w: w.event.create(event_type="merger", severity=2, symbols=[w.symbol]),
                               lambda r, w: utc(r.timestamp)),
    "EventRepository.get_by_id": (lambda w: w.event.get_by_id(w.ev.id), lambda r, w: r == w.ev),
    "EventRepository.get": (lambda w: w.event.get(w.ev.id), lambda r, w: r == w.ev),
    "EventRepository.list": (lambda w: w.event.list(article=w.art.id), lambda r, w: w.ev in r),
    "EventRepository.count": (lambda w: w.event.count(article=w.art.id), lambda r, w: r >= 1),
    "EventRepository.exists": (lambda w: w.event.exists(article=w.art.id), lambda r, w: r is True),
    "EventRepository.update": (lambda w: w.event.update(w.ev.id, severity=4), lambda r, w: r.severity == 4),
    "EventRepository.delete": (lambda w: w.event.delete(w.event.create(event_type="x", severity=1).id), lambda r, w: r is True),
    "EventRepository.bulk_create": (lambda w: w.event.bulk_create([{"event_type": "y", "severity": 1}]), lambda r, w: r == 1),
    "EventRepository.recent": (lambda w: w.event.recent(), lambda r, w: len(r) >= 1),
    "EventRepository.by_type": (lambda w: w.event.by_type("earnings"), lambda r, w: w.ev.id in [e.id for e in r]),
    "EventRepository.for_symbol": (lambda w: w.event.for_symbol(w.symbol), lambda r, w: w.ev.id in [e.id for e in r]),
    "TradingSignalRepository.create": (lambda w: w.signal.create(symbol=w.symbol, signal_type="hold", cms_score=0),
                                       lambda r, w: utc(r.timestamp)),
    "TradingSignalRepository.get_by_id": (lambda w: w.signal.get_by_id(w.sig.id), lambda r, w: r == w.sig),
    "TradingSignalRepository.get": (lambda w: w.signal.get(w.sig.id), lambda r, w: r == w.sig),
    "TradingSignalRepository.list": (lambda w: w.signal.list(symbol=w.symbol), lambda r, w: w.sig in r),
    "TradingSignalRepository.count": (lambda w: w.signal.count(symbol=w.symbol), lambda r, w: r >= 1),
    "TradingSignalRepository.exists": (lambda w: w.signal.exists(symbol=w.symbol), lambda r, w: r is True),
    "TradingSignalRepository.update": (lambda w: w.signal.update(w.sig.id, cms_score=0.3), lambda r, w: r.cms_score == 0.3),
    "TradingSignalRepository.delete": (lambda w: w.signal.delete(w.signal.create(symbol=w.symbol, signal_type="sell",
                                                                                  cms_score=0).id), lambda r, w: r is True),
    "TradingSignalRepository.bulk_create": (lambda w: w.signal.bulk_create([{"symbol": w.symbol, "signal_type": "hold",
                                                                            "cms_score": 0.1}]), lambda r, w: r == 1),
    "TradingSignalRepository.latest": (lambda w: w.signal.latest(w.symbol), lambda r, w: utc(r.timestamp)),
    "TradingSignalRepository.recent": (lambda w: w.signal.recent(symbol=w.symbol), lambda r, w: w.sig.id in [s.id for s in r]),
    "TradingSignalRepository.by_type": (lambda w: w.signal.by_type("buy", symbol=w.symbol), lambda r, w: [s.id for s in r] == [w.sig.id]),
    "TradingSignalRepository.in_range": (lambda w: w.signal.in_range(w.symbol, w.sig.timestamp, w.sig.timestamp + DAY),
                                         lambda r, w: w.sig.id in [s.id for s in r]),
    "OrderRepository.create": (lambda w: w.order.create(order_id=f"c-{uuid.uuid4().hex}", symbol=w.symbol,
                                                        order_type="limit", side="sell", quantity=1, price=5),
                               lambda r, w: r.status == "pending" and utc(r.timestamp)),
    "OrderRepository.get_by_id": (lambda w: w.order.get_by_id(w.ord.id), lambda r, w: r.order_id == w.ord.order_id),
    "OrderRepository.get": (lambda w: w.order.get(w.ord.id), lambda r, w: r.order_id == w.ord.order_id),
    "OrderRepository.list": (lambda w: w.order.list(symbol=w.symbol), lambda r, w: w.ord.id in [o.id for o in r]),
    "OrderRepository.count": (lambda w: w.order.count(symbol=w.symbol), lambda r, w: r >= 1),
    "OrderRepository.exists": (lambda w: w.order.exists(symbol=w.symbol), lambda r, w: r is True),
    "OrderRepository.update": (lambda w: w.order.update(w.order.create(order_id=f"u-{uuid.uuid4().hex}", symbol=w.symbol,
                                                                       order_type="market", side="buy", quantity=2).id,
                                                        quantity=3), lambda r, w: r.quantity == 3),
    "OrderRepository.delete": (lambda w: w.order.delete(w.order.create(order_id=f"d-{uuid.uuid4().hex}", symbol=w.symbol,
                                                                       order_type="market", side="buy", quantity=2).id),
                               lambda r, w: r is True),
    "OrderRepository.bulk_create": (lambda w: w.order.bulk_create([{"order_id": f"b-{uuid.uuid4().hex}", "symbol": w.symbol,
                                                                    "order_type": "market", "side": "sell", "quantity": 1}]),
                                    lambda r, w: r == 1),
    "OrderRepository.get_by_order_id": (lambda w: w.order.get_by_order_id(w.ord.order_id), lambda r, w: r.id == w.ord.id),
    "OrderRepository.by_status": (lambda w: w.order.by_status("pending", symbol=w.symbol), lambda r, w: len(r) >= 1),
    "OrderRepository.open_orders": (lambda w: w.order.open_orders(w.symbol), lambda r, w: len(r) >= 1),
    "OrderRepository.for_signal": (lambda w: w.order.for_signal(w.sig.id), lambda r, w: [o.id for o in r] == [w.ord.id]),
    "OrderRepository.transition": (lambda w: w.order.transition(w.order.create(
        order_id=f"t-{uuid.uuid4().hex}", symbol=w.symbol, order_type="market", side="buy", quantity=2).order_id,
        "submitted"), lambda r, w: r.status == "submitted" and utc(r.updated_at)),
    "OrderRepository.history": (lambda w: w.order.history(w.order.transition(w.order.create(
        order_id=f"h-{uuid.uuid4().hex}", symbol=w.symbol, order_type="market", side="buy", quantity=2).order_id,
        "cancelled").order_id), lambda r, w: [e.to_status for e in r] == ["cancelled"] and utc(r[0].timestamp)),
    # Frames (the dev extra installs pandas): timestamps must come back in UTC there too.
    "PriceRepository.frame": (lambda w: w.price.frame(w.symbol, T0, T0 + dt.timedelta(minutes=3)),
                              lambda r, w: len(r) == 3 and str(r.index.tz) == "UTC" and r.index[0] == T0),
    "PriceRepository.copy_from[frame]": (lambda w: w.price.copy_from(frame_of([new_bar(w, 6), new_bar(w, 7)])),
                                         lambda r, w: r == 2),
    "SentimentScoreRepository.frame": (lambda w: w.sentiment.frame(w.symbol, T0 - DAY, T0 + DAY),
                                       lambda r, w: int(r["count"].sum()) >= 1 and str(r.index.tz) == "UTC"),
    "BacktestResultRepository.create": (lambda w: w.backtest.create(name="n", config={"a": 1}), lambda r, w: utc(r.created_at)),
    "BacktestResultRepository.get_by_id": (lambda w: w.backtest.get_by_id(w.bt.id), lambda r, w: r == w.bt),
    "BacktestResultRepository.get": (lambda w: w.backtest.get(w.bt.id), lambda r, w: r == w.bt),
    "BacktestResultRepository.list": (lambda w: w.backtest.list(name=w.bt.name), lambda r, w: r == [w.bt]),
    "BacktestResultRepository.count": (lambda w: w.backtest.count(name=w.bt.name), lambda r, w: r == 1),
    "BacktestResultRepository.exists": (lambda w: w.backtest.exists(name=w.bt.name), lambda r, w: r is True),
    "BacktestResultRepository.update": (lambda w: w.backtest.update(w.bt.id, metrics={"sharpe": 1.5, "dd": 0.1}),
                                        lambda r, w: r.metrics["dd"] == 0.1),
    "BacktestResultRepository.delete": (lambda w: w.backtest.delete(w.backtest.create(name="x", config={}).id),
                                        lambda r, w: r is True),
    "BacktestResultRepository.bulk_create": (lambda w: w.backtest.bulk_create([{"name": "b", "config": {"b": 1}}]),
                                             lambda r, w: r == 1),
    "BacktestResultRepository.best_by_metric": (lambda w: w.backtest.best_by_metric("sharpe"), lambda r, w: len(r) >= 1),
    "BacktestResultRepository.recent": (lambda w: w.backtest.recent(), lambda r, w: len(r) >= 1),
    "BacktestResultRepository.find_by_config": (lambda w: w.backtest.find_by_config(w.config), lambda r, w: [b.id for b in r] == [w.bt.id]),
}


def public_methods(cls) -> set[str]:
    return {name for name, member in inspect.getmembers(cls, inspect.isfunction)
            if not name.startswith("_") and name != "session"
            and not getattr(member, "_marketstore_twin", False)}  # an a-twin runs its sync method


def test_the_sweep_covers_every_public_repository_method():
    expected = {f"{cls.__name__}.{name}" for cls in REPOSITORIES for name in public_methods(cls)}
    assert sorted(expected - set(SWEEP)) == [], "add these methods to SWEEP"


@pytest.fixture(scope="module")
def world(pgbouncer_url):
    connection = DatabaseConnection().initialize(pgbouncer_url, pooler="transaction", statement_timeout=5000,
                                                 pool_timeout=5)
    yield World(connection)
    connection.close()


@pytest.mark.parametrize("name", sorted(SWEEP))
def test_method_through_pgbouncer_transaction_mode(world, name):
    call, check = SWEEP[name]
    result = call(world)
    assert check(result, world), f"{name} returned {result!r}"
