"""Soak: 30 threads of mixed work on a 30-connection pool, with faults injected at random.

Each worker owns its keys (its symbol, its urls, its order ids), so the outcome
of every transaction is known to the test: it keeps a ledger of the writes of
every transaction that reported success, and of nothing else. Meanwhile
exceptions are raised inside sessions (at the end of a transaction, in its
middle, and inside a nested session that the worker then survives), and a
separate raw connection terminates random backends of the pool, mostly ones in
the middle of a transaction. At the end, read on a fresh connection, the
database must hold exactly the ledger: every successful transaction whole,
nothing of a failed one.

A transaction whose COMMIT was sent but whose connection died before the reply
is *in doubt*: no client can know whether it committed. The worker records both
possible states of its keys and never touches them again; the final check
accepts either state, but still requires it to be all or nothing. Every error a
worker sees must be a marketstore error (or the injected one), never a raw
driver error.
"""
from __future__ import annotations

import datetime as dt
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal

import psycopg2
import pytest

import marketstore
from marketstore import (
    ArticleRepository,
    DatabaseConnectionError,
    OrderEvent,
    OrderRepository,
    PoolExhaustedError,
    PriceRepository,
    SentimentScoreRepository,
    get_db_session,
    initialize_database,
)

from reliability_helpers import Threads, app_name, backends, eventually, query
from helpers import UTC

T0 = dt.datetime(2024, 1, 1, tzinfo=UTC)
WORKERS = 30
NEXT_STATUS = {"pending": "submitted", "submitted": "partially_filled", "partially_filled": "filled"}
HAS_UPSERT = hasattr(PriceRepository, "upsert_many")
HAS_TRANSITION = hasattr(OrderRepository, "transition")
HAS_CREATE_IF_NEW = hasattr(ArticleRepository, "create_if_new")


class InjectedFault(Exception):
    """Raised on purpose inside a session."""


class CommitInDoubt(Exception):
    """The connection died after the transaction's last statement: COMMIT's outcome is unknown."""


@dataclass
class Ledger:
    """What one worker knows it wrote. ``doubt`` maps a key to its possible states."""

    prices: dict = field(default_factory=dict)  # minute -> close
    articles: dict = field(default_factory=dict)  # url -> number of sentiment scores
    orders: dict = field(default_factory=dict)  # order_id -> (status, audit rows)
    doubt_prices: dict = field(default_factory=dict)  # minute -> {close or None}
    doubt_articles: dict = field(default_factory=dict)  # url -> number of scores if it committed
    doubt_orders: dict = field(default_factory=dict)  # order_id -> {(status, audit rows) or None}


@dataclass
class Stats:
    ok: Counter = field(default_factory=Counter)
    failed: Counter = field(default_factory=Counter)
    causes: Counter = field(default_factory=Counter)
    in_doubt: int = 0
    reads_ok: int = 0
    reads_failed: int = 0
    injected: int = 0
    nested_injected: int = 0
    unexpected: list = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


class Worker:
    def __init__(self, number: int, stats: Stats, seed: int):
        self.w = number
        self.symbol = f"SOAK{number}"
        self.rng = random.Random(seed)
        self.ledger = Ledger()
        self.stats = stats
        self.n = 0

    # -- helpers ---------------------------------------------------------------------
    def pause(self):
        time.sleep(self.rng.uniform(0, 0.003))  # widen the window for the killer

    def maybe_fail(self, where: str, chance: float):
        if self.rng.random() < chance:
            with self.stats.lock:
                self.stats.injected += 1
            raise InjectedFault(where)

    def bar(self, minute: int, close: Decimal) -> dict:
        return dict(symbol=self.symbol, timestamp=T0 + dt.timedelta(minutes=minute), open=close, high=Decimal(1000),
                    low=Decimal(1), close=close, volume=Decimal(self.rng.randint(0, 10 ** 6)), interval="1m")

    def transaction(self, body):
        """Run ``body`` in one session; returns its result, raises CommitInDoubt or the error."""
        done = False
        try:
            with get_db_session("soak") as db:
                result = body(db)
                done = True
            return result
        except DatabaseConnectionError as exc:
            if done and not isinstance(exc, PoolExhaustedError):
                raise CommitInDoubt() from exc
            raise

    # -- operations: each returns (apply on success, apply when in doubt) -----------------
    def op_prices(self):
        free = [m for m in range(60) if m not in self.ledger.doubt_prices]
        minutes = self.rng.sample(free, self.rng.randint(1, 3))
        new = {m: Decimal(self.rng.randint(100, 99999)) / 100 for m in minutes}

        def body(db):
            rows = [self.bar(m, close) for m, close in new.items()]
            if HAS_UPSERT:
                PriceRepository().upsert_many(rows[:1])
                self.pause()
                self.maybe_fail("prices: middle", 0.03)
                PriceRepository().upsert_many(rows[1:])
            else:
                for row in rows:
                    existing = PriceRepository().list(symbol=row["symbol"], timestamp=row["timestamp"])
                    if existing:
                        PriceRepository().update(existing[0].id, close=row["close"], open=row["open"],
                                                 volume=row["volume"])
                    else:
                        PriceRepository().create(**row)
                    self.pause()
            self.maybe_fail("prices: end", 0.06)

        def ok():
            self.ledger.prices.update(new)

        def doubt():
            for m, close in new.items():
                self.ledger.doubt_prices[m] = {self.ledger.prices.pop(m, None), close}

        return "prices", body, ok, doubt

    def op_price_create(self):
        self.n += 1
        minute = 10_000 + self.n
        close = Decimal(self.rng.randint(100, 99999)) / 100

        def body(db):
            PriceRepository().create(**self.bar(minute, close))
            self.maybe_fail("price create: end", 0.06)

        def ok():
            self.ledger.prices[minute] = close

        def doubt():
            self.ledger.doubt_prices[minute] = {None, close}

        return "price_create", body, ok, doubt

    def op_article(self):
        self.n += 1
        url = f"https://soak/{self.w}/{self.n}"
        scores = self.rng.randint(1, 2)

        def body(db):
            data = dict(title=f"{self.symbol} news {self.n}", content="soak " * 20, symbols=[self.symbol],
                        metadata={"worker": self.w, "n": self.n})
            if HAS_CREATE_IF_NEW:
                article, created = ArticleRepository().create_if_new(url=url, **data)
                assert created, url
            else:
                article = ArticleRepository().create(url=url, **data)
            for i in range(scores):
                self.pause()
                SentimentScoreRepository().create(article=article.id, score=self.rng.uniform(-1, 1),
                                                  confidence=self.rng.random(), model=f"m{i}")
                if i == 0:
                    self.maybe_fail("article: middle", 0.03)
            if self.rng.random() < 0.1:  # a nested session fails; the worker carries on
                try:
                    with get_db_session("nested"):
                        SentimentScoreRepository().create(article=article.id, score=0, confidence=0,
                                                          model="discarded")
                        with self.stats.lock:
                            self.stats.nested_injected += 1
                        raise InjectedFault("nested")
                except InjectedFault:
                    pass
            self.maybe_fail("article: end", 0.06)

        def ok():
            self.ledger.articles[url] = scores

        def doubt():
            self.ledger.doubt_articles[url] = scores

        return "article", body, ok, doubt

    def op_order_create(self):
        self.n += 1
        order_id = f"soak-{self.w}-{self.n}"

        def body(db):
            OrderRepository().create(order_id=order_id, symbol=self.symbol, order_type="limit", side="buy",
                                     quantity=Decimal(10), price=Decimal(100))
            self.maybe_fail("order create: end", 0.06)

        def ok():
            self.ledger.orders[order_id] = ("pending", 0)

        def doubt():
            self.ledger.doubt_orders[order_id] = {None, ("pending", 0)}

        return "order_create", body, ok, doubt

    def op_order_move(self):
        movable = [o for o, (status, _) in self.ledger.orders.items() if status in NEXT_STATUS]
        if not movable:
            return self.op_order_create()
        order_id = self.rng.choice(movable)
        status, events = self.ledger.orders[order_id]
        new_status = "cancelled" if self.rng.random() < 0.1 else NEXT_STATUS[status]
        fill = {"partially_filled": dict(filled_quantity=Decimal(5), average_fill_price=Decimal(100)),
                "filled": dict(average_fill_price=Decimal(100))}.get(new_status, {})

        def body(db):
            if HAS_TRANSITION:
                OrderRepository().transition(order_id, new_status, **fill)
            else:
                order = OrderRepository().list(order_id=order_id)[0]
                OrderRepository().update(order.id, status=new_status)
                OrderEvent.insert(order=order.id, from_status=status, to_status=new_status).execute()
            self.pause()
            self.maybe_fail("order move: end", 0.06)

        def ok():
            self.ledger.orders[order_id] = (new_status, events + 1)

        def doubt():
            self.ledger.doubt_orders[order_id] = {self.ledger.orders.pop(order_id), (new_status, events + 1)}

        return "order_move", body, ok, doubt

    def read(self):
        """Read own data back; it must equal the ledger (this worker is its only writer)."""
        choice = self.rng.random()
        try:
            if choice < 0.5:
                bars = PriceRepository().list(symbol=self.symbol, limit=10_000)
                seen = {int((b.timestamp - T0).total_seconds() // 60): b.close for b in bars}
                for key in set(self.ledger.doubt_prices):
                    seen.pop(key, None)
                assert seen == self.ledger.prices, (self.symbol, seen, self.ledger.prices)
            elif self.ledger.orders:
                order_id = self.rng.choice(list(self.ledger.orders))
                found = OrderRepository().list(order_id=order_id)
                assert [o.status for o in found] == [self.ledger.orders[order_id][0]]
            else:
                ArticleRepository().count(source=None)
            with self.stats.lock:
                self.stats.reads_ok += 1
        except DatabaseConnectionError as exc:  # a killed backend: the read fails, cleanly
            with self.stats.lock:
                self.stats.reads_failed += 1
                self.stats.causes[f"read: {type(exc).__name__}"] += 1

    # -- the loop ----------------------------------------------------------------------
    def run(self, deadline: float):
        ops = [self.op_prices, self.op_prices, self.op_price_create, self.op_article, self.op_article,
               self.op_order_create, self.op_order_move, self.op_order_move, self.read, self.read]
        while time.monotonic() < deadline:
            op = self.rng.choice(ops)
            if op == self.read:
                self.read()
                continue
            name, body, ok, doubt = op()
            try:
                self.transaction(body)
            except CommitInDoubt:
                doubt()
                with self.stats.lock:
                    self.stats.in_doubt += 1
                    self.stats.failed[name] += 1
                    self.stats.causes["commit in doubt"] += 1
            except (InjectedFault, DatabaseConnectionError) as exc:  # PoolExhaustedError included
                with self.stats.lock:
                    self.stats.failed[name] += 1
                    self.stats.causes[type(exc).__name__] += 1
            except Exception as exc:  # noqa: BLE001 - any other error is a finding
                with self.stats.lock:
                    self.stats.unexpected.append(exc)
                    self.stats.failed[name] += 1
                if len(self.stats.unexpected) > 20:
                    return
            else:
                ok()
                with self.stats.lock:
                    self.stats.ok[name] += 1


def killer(url: str, name: str, stop: threading.Event, rng: random.Random, kills: Counter):
    """Terminate random pool backends, mostly ones inside a transaction, until ``stop``."""
    conn = psycopg2.connect(url, application_name="soak-killer")
    conn.autocommit = True
    try:
        while not stop.wait(rng.uniform(0.02, 0.12)):
            busy = backends(conn, name, "idle in transaction") + backends(conn, name, "active")
            pids = busy if busy and rng.random() < 0.85 else backends(conn, name)
            if pids:
                pid = rng.choice(pids)
                if query(conn, "SELECT pg_terminate_backend(%s)", (pid,))[0][0]:
                    kills["in transaction" if pid in busy else "idle"] += 1
    finally:
        conn.close()


def verify(admin, workers: list[Worker]) -> tuple[int, Counter]:
    """The database holds exactly the ledgers; returns the rows compared and how doubts resolved."""
    resolved: Counter = Counter()
    prices = {(s, int((t - T0).total_seconds() // 60)): c for s, t, c in
              query(admin, "SELECT symbol, timestamp, close FROM prices WHERE symbol LIKE 'SOAK%'")}
    articles = dict(query(admin, "SELECT a.url, count(s.id) FROM articles a LEFT JOIN sentiment_scores s "
                                 "ON s.article_id = a.id GROUP BY a.url"))
    orders = {o: (status, events) for o, status, events in query(
        admin, "SELECT o.order_id, o.status, count(e.id) FROM orders o LEFT JOIN order_events e "
               "ON e.order_id = o.id GROUP BY o.order_id, o.status")}
    assert query(admin, "SELECT count(*) FROM sentiment_scores WHERE model = 'discarded'") == [(0,)], \
        "a failed nested session left its row"

    claimed = {"prices": 0, "articles": 0, "orders": 0}
    for w in workers:
        ledger = w.ledger
        mine = {m: c for (s, m), c in prices.items() if s == w.symbol}
        claimed["prices"] += len(mine)
        for minute, candidates in ledger.doubt_prices.items():
            assert mine.pop(minute, None) in candidates, (w.symbol, minute, candidates)
            resolved["price keys"] += 1
        assert mine == ledger.prices, f"{w.symbol}: prices differ from the ledger"

        urls = {u: n for u, n in articles.items() if u.startswith(f"https://soak/{w.w}/")}
        claimed["articles"] += len(urls)
        for url, scores in ledger.doubt_articles.items():
            found = urls.pop(url, None)
            assert found in (None, scores), f"{url}: in doubt, but only partly written"
            resolved["article committed" if found else "article rolled back"] += 1
        assert urls == ledger.articles, f"worker {w.w}: articles differ from the ledger"

        mine_orders = {o: v for o, v in orders.items() if o.startswith(f"soak-{w.w}-")}
        claimed["orders"] += len(mine_orders)
        for order_id, candidates in ledger.doubt_orders.items():
            found = mine_orders.pop(order_id, None)
            assert found in candidates, (order_id, candidates)
            new_state = max((c for c in candidates if c is not None), key=lambda c: c[1])
            resolved["order committed" if found == new_state else "order rolled back"] += 1
        assert mine_orders == ledger.orders, f"worker {w.w}: orders differ from the ledger"

    # No row that no worker wrote.
    totals = dict(zip(claimed, query(admin, "SELECT (SELECT count(*) FROM prices), (SELECT count(*) FROM articles), "
                                            "(SELECT count(*) FROM orders)")[0]))
    assert totals == claimed, (totals, claimed)
    rows = query(admin, "SELECT (SELECT count(*) FROM prices) + (SELECT count(*) FROM articles) + "
                        "(SELECT count(*) FROM sentiment_scores) + (SELECT count(*) FROM orders) + "
                        "(SELECT count(*) FROM order_events)")[0][0]
    return rows, resolved


def run_soak(cluster_url: str, admin, seconds: float) -> dict:
    name = app_name()
    conn = initialize_database(cluster_url, pool_size=10, max_overflow=20, pool_timeout=10, application_name=name)
    seed = random.randrange(2 ** 32)
    stats, kills, stop = Stats(), Counter(), threading.Event()
    workers = [Worker(w, stats, seed + w) for w in range(WORKERS)]
    started = time.monotonic()
    deadline = started + seconds
    threads, fault_thread = Threads(), Threads()
    fault_thread.start(killer, cluster_url, name, stop, random.Random(seed), kills)
    try:
        for worker in workers:
            threads.start(worker.run, deadline)
        threads.join(seconds + 90)
    finally:
        stop.set()
        fault_thread.join(30)
    elapsed = time.monotonic() - started
    assert not threads.errors and not fault_thread.errors, threads.errors + fault_thread.errors
    assert not stats.unexpected, f"{len(stats.unexpected)} unexpected error(s), e.g. {stats.unexpected[:3]!r}"

    rows, resolved = verify(admin, workers)
    # Nothing leaked: every slot back, at most pool_size kept, the server agrees.
    status = conn.pool_status()
    assert status["in_use"] == 0, status
    # At most pool_size kept once the idle grace (1 s by default) has passed.
    assert eventually(lambda: conn.pool_status()["idle"] <= 10, True, 3)
    assert eventually(lambda: len(backends(admin, name)) <= 10, True)
    with get_db_session() as db:
        assert db.execute_sql("SELECT 1").fetchone() == (1,)

    summary = dict(seconds=round(elapsed, 1), seed=seed, ok=sum(stats.ok.values()),
                   failed=sum(stats.failed.values()), in_doubt=stats.in_doubt, by_op_ok=dict(stats.ok),
                   by_op_failed=dict(stats.failed), causes=dict(stats.causes), injected=stats.injected,
                   nested_injected=stats.nested_injected, kills=dict(kills), reads_ok=stats.reads_ok,
                   reads_failed=stats.reads_failed, rows_checked=rows,
                   doubts_resolved=dict(resolved))
    print(f"\nsoak summary: {summary}")
    # The faults really happened, and work still got done.
    assert summary["ok"] > 100 and stats.injected > 10 and sum(kills.values()) > 10, summary
    assert stats.causes["DatabaseConnectionError"] > 0, "killed backends must have failed some transactions"
    return summary


def test_soak_10_seconds(cluster_url, store, admin):
    run_soak(cluster_url, admin, 10)


@pytest.mark.slow
def test_soak_60_seconds(cluster_url, store, admin):
    run_soak(cluster_url, admin, 60)
