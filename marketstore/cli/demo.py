"""``marketstore demo``: the synthetic market week loaded through the repositories.

:func:`load` writes :func:`.synthetic.generate`'s data in one
transaction, :func:`report` reads it back with the repositories' queries.

Demo rows are recognisable, so ``--reset`` removes only them: articles under
:data:`URL_PREFIX`, orders named ``demo-*``, signals, events and backtests whose
JSON carries ``"demo": true``, and the demo symbols' 1-minute bars of the week.
"""
from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass
from typing import Callable

from ..connection import get_db_session
from ..errors import DemoError, IntegrityViolation
from ..models import Article, BacktestResult, Event, Order, OrderEvent, Price, TradingSignal
from ..repositories import (
    OPEN_STATUSES,
    ArticleRepository,
    BacktestResultRepository,
    EventRepository,
    OrderRepository,
    PriceRepository,
    SentimentScoreRepository,
    TradingSignalRepository,
)
from .output import table
from .synthetic import INTERVAL, ORDER_PREFIX, SEED, SYMBOLS, URL_PREFIX, UTC, Market, generate, trading_minutes

__all__ = ["DemoError", "LoadResult", "SEED", "URL_PREFIX", "delete_demo_rows", "generate", "load", "loaded_seed",
           "report"]

LOCK_KEY = 0x64656D6F  # "demo": two demos at once load one after the other


# -- loading ------------------------------------------------------------------

@dataclass
class LoadResult:
    """What :func:`load` did."""

    loaded: bool          # False: the data was already there
    seconds: float


def loaded_seed() -> int | None:
    """The seed of the demo data in the database, or ``None`` when there is none."""
    marker = (BacktestResult.select(BacktestResult.config)
              .where(BacktestResult.config.contains({"demo": True})).first())
    return None if marker is None else marker.config.get("seed")


def load(seed: int = SEED, reset: bool = False, step: Callable[[str], None] = lambda _: None) -> LoadResult:
    """Load the demo for ``seed`` unless it is already there; all in one transaction.

    ``reset`` first deletes every demo row (never other data). Raises
    :class:`DemoError` when demo data of another seed is present (without
    ``reset``), and :mod:`marketstore.errors` types for database failures.
    """
    started = time.perf_counter()
    with get_db_session("demo") as db:
        db.execute_sql("SELECT pg_advisory_xact_lock(%s)", (LOCK_KEY,))
        if reset:
            step(f"removed {delete_demo_rows():,} demo rows")
        present = loaded_seed()
        if present is not None:
            if present != seed:
                raise DemoError(f"the demo data of seed {present} is loaded: "
                                f"add --reset to replace it with seed {seed}")
            return LoadResult(False, time.perf_counter() - started)
        market = generate(seed)
        step(f"generated seed {seed} in {time.perf_counter() - started:.1f} s")
        _store(market, step)
    return LoadResult(True, time.perf_counter() - started)


def _timed(step, label: str, started: float, count: int) -> None:
    step(f"{label:<18}{count:>8,}  {time.perf_counter() - started:5.1f} s")


def _store(market: Market, step: Callable[[str], None]) -> None:
    counts = {}
    started = time.perf_counter()
    try:
        counts["prices"] = PriceRepository().copy_from(market.bars)
    except IntegrityViolation as exc:
        raise DemoError(f"the database already has 1m bars of the demo's symbols in its week "
                        f"({market.start:%Y-%m-%d} to {market.end:%Y-%m-%d}): run the demo on "
                        "another database") from exc
    _timed(step, "prices (COPY)", started, counts["prices"])

    started = time.perf_counter()
    ArticleRepository().copy_from(market.articles)
    # Scores and events point at articles by position; an article already stored keeps its id.
    urls = [row["url"] for row in market.articles]
    stored = dict(Article.select(Article.url, Article.id).where(Article.url.in_(urls)).tuples())
    ids = [stored[url] for url in urls]
    counts["articles"] = len(ids)
    counts["sentiment_scores"] = SentimentScoreRepository().bulk_create(
        [{**row, "article": ids[row["article"]]} for row in market.scores])
    counts["events"] = EventRepository().bulk_create(
        [{**row, "article": None if row["article"] is None else ids[row["article"]]} for row in market.events])
    _timed(step, "news and events", started, counts["articles"] + counts["sentiment_scores"] + counts["events"])

    started = time.perf_counter()
    signals = TradingSignalRepository()
    orders = OrderRepository()
    signal_ids: dict[int, int] = {}
    wanted = {signal_index for _, signal_index, _ in market.orders}
    plain_rows = [row for i, row in enumerate(market.signals) if i not in wanted]
    counts["trading_signals"] = signals.bulk_create(plain_rows)
    for i in sorted(wanted):  # the ones orders point at: their ids are needed
        signal_ids[i] = signals.create(**market.signals[i]).id
    counts["trading_signals"] += len(wanted)
    moves = 0
    for row, signal_index, path in market.orders:
        orders.create(**row, signal=signal_ids[signal_index])
        for status, fills in path:
            orders.transition(row["order_id"], status, **fills)
            moves += 1
    counts["orders"] = len(market.orders)
    counts["order_events"] = moves
    _timed(step, "signals and orders", started, counts["trading_signals"] + counts["orders"] + moves)

    started = time.perf_counter()
    backtests = BacktestResultRepository()
    for row in market.backtests:
        backtests.create(**row)  # config_hash is derived from config
    counts["backtest_results"] = len(market.backtests)
    _timed(step, "backtests", started, counts["backtest_results"])


def delete_demo_rows() -> int:
    """Delete every demo row (and nothing else); returns how many. Call inside a session.

    Bars carry no tag, so the demo symbols' 1-minute bars of the demo week are
    deleted only when the demo's marker says the demo loaded them: a COPY
    that met existing bars there would have failed.
    """
    demo_orders = Order.select(Order.id).where(Order.order_id.startswith(ORDER_PREFIX))
    statements = [
        Event.delete().where(Event.details.contains({"demo": True})),
        OrderEvent.delete().where(OrderEvent.order.in_(demo_orders)),
        Order.delete().where(Order.order_id.startswith(ORDER_PREFIX)),
        TradingSignal.delete().where(TradingSignal.explanation.contains({"demo": True})),
        Article.delete().where(Article.url.startswith(URL_PREFIX)),  # cascades to sentiment scores
    ]
    if loaded_seed() is not None:
        week = trading_minutes()
        statements.append(Price.delete().where(
            Price.symbol.in_(list(SYMBOLS)) & (Price.interval == INTERVAL)
            & (Price.timestamp >= week[0]) & (Price.timestamp <= week[-1])))
    statements.append(BacktestResult.delete().where(BacktestResult.config.contains({"demo": True})))
    return sum(statement.execute() for statement in statements)


# -- report -------------------------------------------------------------------

REPOSITORIES = {
    "prices": PriceRepository, "articles": ArticleRepository, "sentiment_scores": SentimentScoreRepository,
    "events": EventRepository, "trading_signals": TradingSignalRepository, "orders": OrderRepository,
    "backtest_results": BacktestResultRepository,
}


def report(symbol: str = "AAPL") -> str:
    """A short plain-text tour of what is in the database, through the repositories."""
    out: list[str] = []
    section = out.append
    prices = PriceRepository()

    counts = [{"table": name, "rows": f"{repo().count():,}"} for name, repo in REPOSITORIES.items()]
    section("Rows\n" + table(counts, ["table", "rows"], indent="  ", right=["rows"]))

    symbols = prices.symbols()
    latest = prices.latest_for_symbols(symbols, interval=INTERVAL)
    if latest:
        when = max(bar.timestamp for bar in latest.values())
        cells = [f"{s:<6}{latest[s].close:>9.2f}" for s in symbols if s in latest]
        lines = ["  " + "   ".join(cells[i:i + 4]) for i in range(0, min(len(cells), 24), 4)]
        if len(cells) > 24:
            lines.append(f"  ... and {len(cells) - 24} more")
        section(f"Latest price per symbol (close of the last 1m bar, {when:%Y-%m-%d %H:%M} UTC)\n"
                + "\n".join(lines))

    last = prices.latest(symbol, interval=INTERVAL)
    if last is not None:
        day = dt.datetime.combine(last.timestamp.date(), dt.time(), UTC)
        bars = [{**bar._asdict(), "hour": f"{bar.bucket:%H:%M}"}
                for bar in prices.resample(symbol, day, day + dt.timedelta(days=1), bucket="1 hour",
                                               interval=INTERVAL)]
        section(f"Hourly bars, {symbol} {day:%Y-%m-%d} (UTC)\n"
                + table(bars, ["hour", "open", "high", "low", "close", "volume"], indent="  "))
        series = SentimentScoreRepository().timeseries(symbol, day - dt.timedelta(days=6),
                                                       day + dt.timedelta(days=1), bucket="1 day")
        rows = [{"day": b.bucket.date(), "average score": round(b.average, 3), "articles": b.count} for b in series]
        section(f"Daily news sentiment, {symbol}\n"
                + table(rows, ["day", "average score", "articles"], indent="  "))

    repo = OrderRepository()
    orders = repo.open_orders(limit=10)
    total = sum(repo.count(status=status) for status in OPEN_STATUSES)
    shown = [{"order_id": o.order_id, "symbol": o.symbol, "side": o.side, "type": o.order_type,
              "quantity": o.quantity, "filled": o.filled_quantity, "price": o.price, "status": o.status}
             for o in orders]
    more = f"\n  ... and {total - len(orders)} more" if total > len(orders) else ""
    section(f"Open orders ({total})\n"
            + (table(shown, list(shown[0]), indent="  ") + more if shown else "  (none)"))

    best = BacktestResultRepository().best_by_metric("sharpe", limit=3)
    rows = [{"id": b.id, "name": b.name, "sharpe": b.metrics.get("sharpe"),
             "return": f"{100 * b.metrics.get('total_return', 0):+.2f}%",
             "max_drawdown": f"{100 * b.metrics.get('max_drawdown', 0):.2f}%",
             "trades": b.metrics.get("num_trades")} for b in best]
    section("Best backtests by Sharpe\n"
            + (table(rows, list(rows[0]), indent="  ", right=["return", "max_drawdown"]) if rows else "  (none)"))
    return "\n\n".join(out)
