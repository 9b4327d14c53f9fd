"""Signals, the order state machine and its audit trail, and backtest lookups,
on a real PostgreSQL. Writes are checked through the raw connection."""
from __future__ import annotations

import datetime as dt
import json
import random
import threading
from decimal import Decimal

import pytest

import marketstore
from marketstore import (
    BacktestResultRepository,
    DataValidationError,
    NotFoundError,
    OrderRepository,
    QueryError,
    TradingSignalRepository,
)
from marketstore.models import config_hash
from marketstore.repositories import FILL_STATUSES, ORDER_MOVES
from helpers import UTC, count_rows

T0 = dt.datetime(2024, 5, 6, tzinfo=UTC)
HOUR = dt.timedelta(hours=1)
FINAL = {"filled", "cancelled", "rejected"}




@pytest.fixture
def signals(db):
    return TradingSignalRepository()


@pytest.fixture
def orders(db):
    return OrderRepository()


@pytest.fixture
def backtests(db):
    return BacktestResultRepository()


def new_order(orders, order_id="o-1", quantity=100, **changes):
    return orders.create(**{"order_id": order_id, "symbol": "AAPL", "order_type": "limit", "side": "buy",
                            "quantity": Decimal(quantity), "price": Decimal("190.5"), **changes})


def order_row(raw, order_id: str) -> tuple:
    with raw.cursor() as cur:
        cur.execute("SELECT status, filled_quantity, average_fill_price, updated_at FROM orders "
                    "WHERE order_id = %s", (order_id,))
        return cur.fetchone()


def trail(raw, order_id: str) -> list[tuple]:
    with raw.cursor() as cur:
        cur.execute("SELECT e.from_status, e.to_status, e.filled_quantity, e.fill_price FROM order_events e "
                    "JOIN orders o ON o.id = e.order_id WHERE o.order_id = %s ORDER BY e.id", (order_id,))
        return cur.fetchall()


# -- signals ----------------------------------------------------------------------

def test_signal_queries_match_oracle(signals):
    rng = random.Random(20)
    made = [signals.create(symbol=rng.choice(["AAPL", "MSFT", "NVDA"]), signal_type=rng.choice(["buy", "sell", "hold"]),
                           cms_score=rng.uniform(-1, 1), timestamp=T0 + rng.randint(0, 5_000) * dt.timedelta(minutes=1))
            for _ in range(150)]
    newest = sorted(made, key=lambda s: (s.timestamp, s.id), reverse=True)
    for symbol in ("AAPL", "MSFT", "NVDA", "TSLA"):
        expected = next((s for s in newest if s.symbol == symbol), None)
        latest = signals.latest(symbol)
        assert (latest and latest.id) == (expected and expected.id)
    for _ in range(15):
        kind = rng.choice(["buy", "sell", "hold"])
        since = rng.choice([None, T0 + rng.randint(0, 80) * HOUR])
        assert ([s.id for s in signals.by_type(kind, since=since)]
                == [s.id for s in newest if s.signal_type == kind and (since is None or s.timestamp >= since)])
        symbol = rng.choice(["AAPL", "MSFT"])
        a, b = sorted(rng.sample(range(0, 90), 2))
        start, end = T0 + a * HOUR, T0 + b * HOUR
        assert ([s.id for s in signals.in_range(symbol, start, end)]
                == [s.id for s in reversed(newest) if s.symbol == symbol and start <= s.timestamp < end])


# -- order queries ------------------------------------------------------------------

def test_order_queries(orders, signals):
    signal = signals.create(symbol="AAPL", signal_type="buy", cms_score=0.5)
    other = signals.create(symbol="AAPL", signal_type="sell", cms_score=-0.5)
    made = {}
    for i, (status, symbol, sig) in enumerate([("pending", "AAPL", signal), ("submitted", "MSFT", signal),
                                               ("filled", "AAPL", None), ("partially_filled", "AAPL", other),
                                               ("cancelled", "MSFT", None), ("pending", "MSFT", signal)]):
        made[i] = new_order(orders, f"o-{i}", symbol=symbol, status=status, signal=sig and sig.id,
                            timestamp=T0 + (10 - i) * HOUR)  # later rows are older

    def ids(rows):
        return [o.order_id for o in rows]

    assert orders.get_by_order_id("o-3").id == made[3].id
    assert orders.get_by_order_id("nope") is None
    assert ids(orders.by_status("pending")) == ["o-5", "o-0"]  # oldest first
    assert ids(orders.by_status("rejected")) == []
    assert ids(orders.open_orders()) == ["o-5", "o-3", "o-1", "o-0"]
    assert ids(orders.open_orders("AAPL")) == ["o-3", "o-0"]
    assert ids(orders.for_signal(signal.id)) == ["o-5", "o-1", "o-0"]
    assert ids(orders.for_signal(10**6)) == []


# -- transition ----------------------------------------------------------------------

@pytest.mark.parametrize("path", [
    [("submitted", {}), ("filled", {"average_fill_price": "190.10"})],
    [("submitted", {}), ("partially_filled", {"filled_quantity": 40, "average_fill_price": "190"}),
     ("partially_filled", {"filled_quantity": 70, "average_fill_price": "190.2"}),
     ("filled", {"filled_quantity": 100, "average_fill_price": "190.3"})],
    [("submitted", {}), ("partially_filled", {"filled_quantity": 1, "average_fill_price": "1"}), ("cancelled", {})],
    [("cancelled", {})],
    [("rejected", {})],
    [("submitted", {}), ("rejected", {})],
])
def test_legal_paths_update_order_and_append_trail(orders, raw, path):
    new_order(orders)
    before = order_row(raw, "o-1")[3]
    status, filled, price, expected_trail = "pending", Decimal(0), None, []
    for to, fill in path:
        moved = orders.transition("o-1", to, **fill)
        if to in FILL_STATUSES:
            filled = Decimal(fill.get("filled_quantity", 100))
            price = Decimal(fill["average_fill_price"])
        expected_trail.append((status, to, filled, price))
        status = to
        assert (moved.status, moved.filled_quantity, moved.average_fill_price) == (to, filled, price)
        row = order_row(raw, "o-1")
        assert row[:3] == (to, filled, price)
        assert row[3] > before  # updated_at moves forward on every move
        before = row[3]
    assert trail(raw, "o-1") == expected_trail
    history = orders.history("o-1")
    assert [(e.from_status, e.to_status, e.filled_quantity, e.fill_price) for e in history] == expected_trail
    assert [e.timestamp for e in history] == sorted(e.timestamp for e in history)
    assert history[-1].timestamp == moved.updated_at


REACH = {"pending": [], "submitted": [("submitted", {})],
         "partially_filled": [("submitted", {}),
                              ("partially_filled", {"filled_quantity": 10, "average_fill_price": 2})],
         "filled": [("submitted", {}), ("filled", {"average_fill_price": 2})],
         "cancelled": [("cancelled", {})], "rejected": [("rejected", {})]}


@pytest.mark.parametrize("current", list(ORDER_MOVES))
def test_illegal_moves_are_refused_and_change_nothing(orders, raw, current):
    """From each status, every move the state machine does not list is refused, naming both states."""
    illegal = [target for target in ORDER_MOVES if target not in ORDER_MOVES[current]]
    assert illegal
    for number, target in enumerate(illegal):
        order_id = f"o-{number}"
        new_order(orders, order_id)
        for to, fill in REACH[current]:
            orders.transition(order_id, to, **fill)
        before_row, before_trail = order_row(raw, order_id), trail(raw, order_id)
        fill = {"filled_quantity": 100, "average_fill_price": 3} if target in FILL_STATUSES else {}
        with pytest.raises(DataValidationError) as info:
            orders.transition(order_id, target, **fill)
        assert f"{current} -> {target}" in str(info.value), target
        assert order_row(raw, order_id) == before_row, target
        assert trail(raw, order_id) == before_trail, target


def test_state_machine_matches_spec():
    assert ORDER_MOVES["pending"] == ("submitted", "cancelled", "rejected")
    assert all(not ORDER_MOVES[s] for s in FINAL)
    for s in ("pending", "submitted", "partially_filled"):
        assert {"cancelled", "rejected"} <= set(ORDER_MOVES[s])
    assert "partially_filled" in ORDER_MOVES["submitted"] and "filled" in ORDER_MOVES["partially_filled"]


@pytest.mark.parametrize("setup, target, fill, field", [
    ([], "submitted", {"filled_quantity": 5}, "filled_quantity"),
    ([], "cancelled", {"average_fill_price": 5}, "average_fill_price"),
    (["submitted"], "partially_filled", {"average_fill_price": 5}, "filled_quantity"),
    (["submitted"], "partially_filled", {"filled_quantity": 5}, "average_fill_price"),
    (["submitted"], "partially_filled", {"filled_quantity": 100, "average_fill_price": 5}, "filled_quantity"),
    (["submitted"], "partially_filled", {"filled_quantity": 101, "average_fill_price": 5}, "filled_quantity"),
    (["submitted"], "partially_filled", {"filled_quantity": 0, "average_fill_price": 5}, "filled_quantity"),
    (["submitted"], "partially_filled", {"filled_quantity": -1, "average_fill_price": 5}, "filled_quantity"),
    (["submitted"], "partially_filled", {"filled_quantity": 5, "average_fill_price": 0}, "average_fill_price"),
    (["submitted"], "filled", {"filled_quantity": 99, "average_fill_price": 5}, "filled_quantity"),
    (["submitted"], "filled", {"filled_quantity": 100.5, "average_fill_price": 5}, "filled_quantity"),
    (["submitted"], "filled", {}, "average_fill_price"),
    (["submitted", "partial 50"], "partially_filled", {"filled_quantity": 50, "average_fill_price": 5},
     "filled_quantity"),  # a fill never goes backwards or stands still
    (["submitted", "partial 50"], "partially_filled", {"filled_quantity": 30, "average_fill_price": 5},
     "filled_quantity"),
    ([], "bogus", {}, "new_status"),
])
def test_bad_fills_are_refused_and_change_nothing(orders, raw, setup, target, fill, field):
    new_order(orders)
    for step in setup:
        if step.startswith("partial"):
            orders.transition("o-1", "partially_filled", int(step.split()[1]), 5)
        else:
            orders.transition("o-1", step)
    before_row, before_trail = order_row(raw, "o-1"), trail(raw, "o-1")
    with pytest.raises(DataValidationError) as info:
        orders.transition("o-1", target, **fill)
    assert info.value.field == field
    assert order_row(raw, "o-1") == before_row and trail(raw, "o-1") == before_trail


def test_transition_of_unknown_order(orders):
    with pytest.raises(NotFoundError):
        orders.transition("missing", "submitted")
    assert orders.history("missing") == []


def test_failed_audit_write_rolls_the_move_back(orders, raw):
    """The order update and its audit row commit together or not at all."""
    new_order(orders)
    with raw.cursor() as cur:
        cur.execute("CREATE FUNCTION test_refuse_event() RETURNS trigger LANGUAGE plpgsql AS "
                    "$$ BEGIN RAISE EXCEPTION 'audit refused'; END $$")
        cur.execute("CREATE TRIGGER test_refuse_event BEFORE INSERT ON order_events FOR EACH ROW "
                    "WHEN (NEW.note = 'refuse') EXECUTE FUNCTION test_refuse_event()")
    try:
        with pytest.raises(QueryError):
            orders.transition("o-1", "submitted", note="refuse")
        assert order_row(raw, "o-1")[0] == "pending" and trail(raw, "o-1") == []
        orders.transition("o-1", "submitted", note="fine")
        assert order_row(raw, "o-1")[0] == "submitted"
    finally:
        with raw.cursor() as cur:
            cur.execute("DROP TRIGGER test_refuse_event ON order_events")
            cur.execute("DROP FUNCTION test_refuse_event()")


def test_moves_compose_with_the_callers_transaction(orders, raw):
    new_order(orders)
    with pytest.raises(RuntimeError):
        with marketstore.get_db_session():
            orders.transition("o-1", "submitted")
            orders.transition("o-1", "partially_filled", 10, 5)
            raise RuntimeError("the caller's own work failed")
    assert order_row(raw, "o-1")[0] == "pending" and trail(raw, "o-1") == []


def assert_consistent(raw, orders, order_id, quantity):
    """The order's trail is a legal chain from pending, fills rising, and matches the order row."""
    history = orders.history(order_id)
    status, filled = "pending", Decimal(0)
    for event in history:
        assert event.from_status == status and event.to_status in ORDER_MOVES[status]
        if event.to_status in FILL_STATUSES:
            assert filled < event.filled_quantity <= quantity
        else:
            assert event.filled_quantity == filled
        status, filled = event.to_status, event.filled_quantity
    row = order_row(raw, order_id)
    assert (row[0], row[1]) == (status, filled)
    if status == "filled":
        assert filled == quantity
    return history


@pytest.mark.parametrize("seed", [1, 2])
def test_concurrent_transitions_never_lose_an_update(orders, raw, seed):
    """8 threads race fills and a cancel or final fill on one order: every move that
    succeeded is in the trail, in a legal chain, and the order row agrees with the last one."""
    rng = random.Random(seed)
    for round_ in range(4):
        order_id = f"race-{round_}"
        new_order(orders, order_id, quantity=80)
        orders.transition(order_id, "submitted")
        plans = [("partially_filled", {"filled_quantity": 10 * (i + 1), "average_fill_price": 100 + i})
                 for i in range(7)]
        plans.append(rng.choice([("filled", {"average_fill_price": 101}), ("cancelled", {})]))
        rng.shuffle(plans)
        barrier = threading.Barrier(len(plans))
        succeeded, refused, errors = [], [], []

        def worker(plan):
            try:
                barrier.wait(5)
                succeeded.append(orders.transition(order_id, plan[0], **plan[1]))
            except DataValidationError:
                refused.append(plan)
            except Exception as exc:  # anything else is a failure of the test
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(plan,)) for plan in plans]
        for t in threads:
            t.start()
        for t in threads:
            t.join(20)
        assert errors == [] and len(succeeded) + len(refused) == 8
        history = assert_consistent(raw, orders, order_id, Decimal(80))
        assert len(history) == 1 + len(succeeded)  # + the move to submitted
        assert sorted(e.id for e in history[1:]) == [e.id for e in history[1:]]
        assert ({(o.status, o.filled_quantity) for o in succeeded}
                == {(e.to_status, e.filled_quantity) for e in history[1:]})


def test_deleting_a_signal_unlinks_its_orders(orders, signals, raw):
    signal = signals.create(symbol="AAPL", signal_type="buy", cms_score=0.5)
    new_order(orders, "o-1", signal=signal.id)
    new_order(orders, "o-2")
    assert signals.delete(signal.id) is True
    with raw.cursor() as cur:
        cur.execute("SELECT order_id, signal_id FROM orders ORDER BY order_id")
        assert cur.fetchall() == [("o-1", None), ("o-2", None)]
    assert count_rows(raw, "trading_signals") == 0


# -- backtests ---------------------------------------------------------------------

def new_backtest(backtests, name, metrics, config=None, created_at=None):
    config = {"name": name} if config is None else config
    # config_hash passed although derivable: BaseModel.validate requires it before check_row derives it.
    return backtests.create(name=name, config=config, config_hash=config_hash(config), metrics=metrics,
                            **({"created_at": created_at} if created_at else {}))


def test_best_by_metric_orders_numerically(backtests):
    for name, sharpe in (("nine", 9), ("ten", 10), ("one and a half", 1.5), ("minus", -2)):
        new_backtest(backtests, name, {"sharpe": sharpe})
    new_backtest(backtests, "missing", {"sortino": 50})
    new_backtest(backtests, "text", {"sharpe": "10"})  # not a number: ranks with the missing ones
    assert [b.name for b in backtests.best_by_metric("sharpe")] == [
        "ten", "nine", "one and a half", "minus", "text", "missing"]
    assert [b.name for b in backtests.best_by_metric("sharpe", descending=False)] == [
        "minus", "one and a half", "nine", "ten", "text", "missing"]
    assert [b.name for b in backtests.best_by_metric("sharpe", limit=2)] == ["ten", "nine"]


def test_best_by_metric_matches_oracle(backtests):
    rng = random.Random(21)
    made = []
    for i in range(120):
        metrics = {}
        if rng.random() < 0.8:
            metrics["sharpe"] = rng.choice([rng.randint(-5, 15), round(rng.uniform(-3, 3), rng.randint(0, 6)),
                                            rng.choice([1e-7, 12345678901234567890, -0.5])])
        if rng.random() < 0.1:
            metrics["sharpe"] = rng.choice([None, "high", [1], {"v": 2}])
        created_at = T0 + i * dt.timedelta(seconds=rng.randint(0, 3))  # some ties
        made.append(new_backtest(backtests, f"b{i}", metrics, created_at=created_at))
    numeric = [b for b in made if isinstance(b.metrics.get("sharpe"), (int, float))]
    rest = [b for b in made if b not in numeric]
    recency = lambda b: (b.created_at, b.id)  # noqa: E731
    for descending in (True, False):
        ranked = sorted(numeric, key=recency, reverse=True)
        ranked.sort(key=lambda b: Decimal(json.dumps(b.metrics["sharpe"])), reverse=descending)
        expected = ranked + sorted(rest, key=recency, reverse=True)
        for limit in (5, len(numeric), 120):
            got = backtests.best_by_metric("sharpe", limit=limit, descending=descending)
            assert [b.id for b in got] == [b.id for b in expected[:limit]]


def test_recent_and_find_by_config(backtests):
    config = {"strategy": "cms", "thresholds": {"buy": 0.25, "sell": -0.25}, "symbols": ["AAPL", "MSFT"]}
    first = new_backtest(backtests, "first", {}, config=config, created_at=T0)
    other = new_backtest(backtests, "other", {}, config={**config, "symbols": ["MSFT", "AAPL"]}, created_at=T0 + HOUR)
    second = new_backtest(backtests, "second", {}, config=json.loads(json.dumps(config, indent=4)),
                          created_at=T0 + 2 * HOUR)
    reordered = {"thresholds": {"sell": -0.25, "buy": 0.25}, "symbols": ["AAPL", "MSFT"], "strategy": "cms"}
    assert [b.id for b in backtests.find_by_config(reordered)] == [second.id, first.id]
    assert [b.id for b in backtests.find_by_config({**config, "symbols": ["MSFT", "AAPL"]})] == [other.id]
    assert backtests.find_by_config({"strategy": "cms"}) == []
    assert [b.id for b in backtests.recent(2)] == [second.id, other.id]
    assert [b.id for b in backtests.recent()] == [second.id, other.id, first.id]


# -- parameter validation (refused before any database access: none is configured) ---

@pytest.mark.parametrize("repo, method, args, kwargs, field", [
    (TradingSignalRepository, "latest", ("",), {}, "symbol"),
    (TradingSignalRepository, "by_type", ("strong_buy",), {}, "signal_type"),
    (TradingSignalRepository, "in_range", ("AAPL", T0 + HOUR, T0), {}, "end"),
    (OrderRepository, "get_by_order_id", (7,), {}, "order_id"),
    (OrderRepository, "by_status", ("open",), {}, "status"),
    (OrderRepository, "open_orders", ("",), {}, "symbol"),
    (OrderRepository, "for_signal", ("1",), {}, "signal_id"),
    (OrderRepository, "transition", ("o-1", "filled"), {"average_fill_price": "cheap"}, "average_fill_price"),
    (OrderRepository, "transition", ("o-1", "submitted"), {"note": "x" * 10_001}, "note"),
    (OrderRepository, "history", ("",), {}, "order_id"),
    (BacktestResultRepository, "best_by_metric", ("",), {}, "metric"),
    (BacktestResultRepository, "best_by_metric", ("sharpe",), {"limit": -1}, "limit"),
    (BacktestResultRepository, "best_by_metric", ("sharpe",), {"descending": "yes"}, "descending"),
    (BacktestResultRepository, "recent", (0,), {}, "limit"),
    (BacktestResultRepository, "find_by_config", ({"when": dt.datetime.now()},), {}, "config"),
])
def test_bad_parameters_are_refused(repo, method, args, kwargs, field):
    marketstore.close_database()
    with pytest.raises(DataValidationError) as info:
        getattr(repo(), method)(*args, **kwargs)
    assert info.value.field == field
