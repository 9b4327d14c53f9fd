"""Fan-in: 100 client processes, each with a pool of 30, against a server with max_connections 50.

Through a PgBouncer in transaction mode (``default_pool_size`` 20) every
session is served and the server never sees more than PgBouncer's 20
connections; the same load straight to the server fails with "too many clients
already" (``DatabaseConnectionError``): the failure PgBouncer prevents.

Each client is a forked process with its own ``DatabaseConnection``
(``pooler="transaction"``, 10 kept + 20 overflow) running ``THREADS``
concurrent threads of ``SESSIONS`` sessions each: read sessions
(``latest_for_symbols`` + ``get_range``, ``read_only=True``) and, every fourth,
a write session (an order created and moved to ``submitted``). A thread of the
test samples the server's client backends throughout, on a connection of its
own. Then examples/service as the load: uvicorn workers with the same pools
under a bounded concurrent HTTP load, through the same PgBouncer. Loopback
only; the cluster and PgBouncer are the module's own and always removed. Each
run prints its numbers (``-s``).
"""
from __future__ import annotations

import atexit
import collections
import datetime as dt
import multiprocessing
import os
import threading
import time
import uuid

import psycopg2
import pytest

import marketstore
from marketstore import DatabaseConnection, MarketstoreError, OrderRepository, PriceRepository

from pgbouncer import PgBouncer
from pgcluster import Cluster, ClusterUnavailable

CLIENTS = 100  # processes
THREADS = 4  # concurrent sessions per process
SESSIONS = 10  # per thread
SERVER_MAX_CONNECTIONS = 50
BOUNCER_POOL = 20  # PgBouncer's default_pool_size
CLIENT_POOL = {"pool_size": 10, "max_overflow": 20}  # 30 per process: 3,000 in all against 50
SYMBOLS = ["AAA", "BBB", "CCC", "DDD", "EEE"]
T0 = dt.datetime(2026, 3, 2, tzinfo=dt.timezone.utc)
DBNAME = "fanin"
RUN_TIMEOUT = 120  # seconds for one load run, whatever happens

if not hasattr(os, "fork"):
    pytest.skip("the client processes are forked", allow_module_level=True)


@pytest.fixture(scope="module")
def small_server():
    """A throwaway server with max_connections 50, database ``fanin`` migrated and seeded."""
    try:
        server = Cluster.create(max_connections=SERVER_MAX_CONNECTIONS)
    except ClusterUnavailable as exc:
        pytest.skip(str(exc))
    atexit.register(server.destroy)
    try:
        server.create_database(DBNAME)
        conn = psycopg2.connect(server.url(DBNAME))
        with conn, conn.cursor() as cur:
            cur.execute("INSERT INTO prices (symbol, timestamp, open, high, low, close, volume) "
                        "SELECT s, %s + m * interval '1 minute', 100, 101, 99, 100, 10 "
                        "FROM unnest(%s::text[]) s, generate_series(0, 99) m", (T0, SYMBOLS))
        conn.close()
        yield server
    finally:
        server.destroy()


@pytest.fixture(scope="module")
def bouncer(small_server, pgbouncer_binary):
    """The scale-out PgBouncer (transaction mode), in front of the small server."""
    bouncer = PgBouncer.start(small_server.port, binary=pgbouncer_binary, default_pool_size=BOUNCER_POOL)
    atexit.register(bouncer.stop)
    try:
        yield bouncer
    finally:
        bouncer.stop()


def client(url: str, run: str, index: int, go, results) -> None:
    """One client process: its own pool, THREADS threads of SESSIONS sessions; reports counts."""
    served, errors, samples = collections.Counter(), collections.Counter(), {}
    lock = threading.Lock()
    try:
        connection = DatabaseConnection().initialize(url, pooler="transaction", pool_timeout=30,
                                                     application_name=f"fanin-{index}", **CLIENT_POOL)
        prices, orders = PriceRepository(connection), OrderRepository(connection)

        def work(thread: int) -> None:
            for n in range(SESSIONS):
                kind = "write" if n % 4 == 3 else "read"  # three reads to one write
                try:
                    if kind == "read":
                        with connection.session("fanin read", read_only=True):
                            assert len(prices.latest_for_symbols(SYMBOLS)) == len(SYMBOLS)
                            start = T0 + dt.timedelta(minutes=n)
                            assert len(prices.get_range(SYMBOLS[n % 5], start, start + dt.timedelta(minutes=10),
                                                        as_tuples=True)) == 10
                    else:
                        order_id = f"{run}-{index}-{thread}-{n}"
                        with connection.session("fanin write"):
                            orders.create(order_id=order_id, symbol=SYMBOLS[n % 5], order_type="market",
                                          side="buy", quantity=1)
                            orders.transition(order_id, "submitted")
                    with lock:
                        served[kind] += 1
                except MarketstoreError as exc:  # what the test counts; anything else is a bug
                    with lock:
                        errors[type(exc).__name__] += 1
                        samples.setdefault(type(exc).__name__, str(exc))

        go.wait(RUN_TIMEOUT)
        threads = [threading.Thread(target=work, args=(t,)) for t in range(THREADS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        connection.close()
        results.put((index, dict(served), dict(errors), samples))
    except BaseException as exc:  # noqa: BLE001 - reported to the test, which fails on it
        results.put((index, dict(served), {"crashed": 1}, {"crashed": repr(exc)}))


class Sampler(threading.Thread):
    """Counts the server's client backends (all but its own) every few milliseconds and,
    given PgBouncer's admin console, the clients PgBouncer holds and queues."""

    def __init__(self, url: str, bouncer_admin_url: str | None = None):
        super().__init__(daemon=True)
        self.conn = psycopg2.connect(url, application_name="fanin-sampler")
        self.conn.autocommit = True
        self.admin = None
        if bouncer_admin_url:
            self.admin = psycopg2.connect(bouncer_admin_url)
            self.admin.autocommit = True
        self.server: list[int] = []
        self.clients: list[tuple[int, int]] = [(0, 0)]  # (clients connected, clients waiting for a server)
        self.done = threading.Event()

    def run(self) -> None:
        with self.conn.cursor() as cur:
            while not self.done.is_set():
                cur.execute("SELECT count(*) FROM pg_stat_activity "
                            "WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()")
                self.server.append(cur.fetchone()[0])
                if self.admin is not None:
                    with self.admin.cursor() as admin:
                        admin.execute("SHOW POOLS")
                        names = [c.name for c in admin.description]
                        pools = [dict(zip(names, row)) for row in admin.fetchall() if row[0] == DBNAME]
                        self.clients.append((sum(p["cl_active"] + p["cl_waiting"] for p in pools),
                                             sum(p["cl_waiting"] for p in pools)))
                time.sleep(0.005)

    def stop(self) -> dict:
        self.done.set()
        self.join(10)
        self.conn.close()
        if self.admin is not None:
            self.admin.close()
        return {"max_server_connections": max(self.server), "server_samples": len(self.server),
                "max_bouncer_clients": max(c for c, _ in self.clients),
                "max_bouncer_waiting": max(w for _, w in self.clients)}


def load(url: str, server_url: str, bouncer_admin_url: str | None = None) -> dict:
    """Run the load against ``url``; the counts, the duration and the server's peak connections."""
    run = uuid.uuid4().hex[:8]
    context = multiprocessing.get_context("fork")
    go, results = context.Event(), context.Queue()
    # Forked before the sampler's thread starts: a child holds only its own threads.
    processes = [context.Process(target=client, args=(url, run, i, go, results), daemon=True)
                 for i in range(CLIENTS)]
    for process in processes:
        process.start()
    sampler = Sampler(server_url, bouncer_admin_url)
    sampler.start()
    started = time.monotonic()
    go.set()
    reports = []
    try:
        for _ in processes:
            reports.append(results.get(timeout=max(1, RUN_TIMEOUT - (time.monotonic() - started))))
        duration = time.monotonic() - started
    finally:
        peaks = sampler.stop()
        for process in processes:
            process.join(10)
            if process.is_alive():
                process.kill()
    served, errors, samples = collections.Counter(), collections.Counter(), {}
    for _, done, failed, messages in reports:
        served.update(done)
        errors.update(failed)
        samples.update(messages)
    conn = psycopg2.connect(server_url)
    with conn.cursor() as cur:
        cur.execute("SELECT count(*) FILTER (WHERE status = 'submitted'), count(*) FROM orders "
                    "WHERE order_id LIKE %s", (f"{run}-%",))
        submitted, stored = cur.fetchone()
    conn.close()
    outcome = {"requests": CLIENTS * THREADS * SESSIONS, "served": sum(served.values()), "writes": served["write"],
               "stored_orders": stored, "submitted_orders": submitted, "errors": dict(errors), "samples": samples,
               "duration_s": round(duration, 1), **peaks}
    print(f"\nfan-in {url.split('@')[1]}: {outcome}")
    return outcome


@pytest.mark.slow
def test_fanin_through_pgbouncer_serves_every_request(small_server, bouncer):
    outcome = load(bouncer.url(DBNAME), small_server.url(DBNAME), bouncer.admin_url())
    assert outcome["errors"] == {}, outcome
    assert outcome["served"] == outcome["requests"] == CLIENTS * THREADS * SESSIONS
    # Every write is in the database, moved to submitted: served means committed.
    writes = CLIENTS * THREADS * sum(1 for n in range(SESSIONS) if n % 4 == 3)
    assert outcome["stored_orders"] == outcome["submitted_orders"] == outcome["writes"] == writes
    assert outcome["max_server_connections"] <= BOUNCER_POOL, outcome
    # The load did reach PgBouncer's limit: it was the bound, not the load's size.
    assert outcome["max_server_connections"] >= BOUNCER_POOL // 2, outcome


@pytest.mark.slow
def test_fanin_straight_to_the_server_runs_out_of_connections(small_server):
    outcome = load(small_server.url(DBNAME), small_server.url(DBNAME))
    # Every slot taken: the sampler's, and all the others by the clients.
    assert outcome["max_server_connections"] == SERVER_MAX_CONNECTIONS - 1, outcome
    assert set(outcome["errors"]) == {"DatabaseConnectionError"}, outcome
    assert "too many clients already" in outcome["samples"]["DatabaseConnectionError"]
    assert outcome["errors"]["DatabaseConnectionError"] > 0
    assert outcome["served"] + outcome["errors"]["DatabaseConnectionError"] == outcome["requests"]
    assert outcome["stored_orders"] == outcome["writes"]  # a refused session wrote nothing


# -- the service as the load: uvicorn workers, a bounded concurrent HTTP load ------------------
SERVICE_WORKERS = 4  # processes, each with a pool of 30: 120 against 50
HTTP_CLIENTS = 100  # concurrent HTTP clients
HTTP_ROUNDS = 8  # per client: three reads to one order placed (201) and moved (200)


async def http_load(base_url: str, run: str) -> collections.Counter:
    """``HTTP_CLIENTS`` concurrent clients of the service: ``{status, or error class: count}``."""
    import asyncio

    import httpx

    outcomes: collections.Counter = collections.Counter()
    limits = httpx.Limits(max_connections=HTTP_CLIENTS, max_keepalive_connections=HTTP_CLIENTS)
    async with httpx.AsyncClient(base_url=base_url, timeout=RUN_TIMEOUT, limits=limits) as http:
        async def request(method: str, path: str, **kwargs) -> bool:
            try:
                response = await http.request(method, path, **kwargs)
            except httpx.HTTPError as exc:
                outcomes[type(exc).__name__] += 1
                return False
            outcomes[response.status_code] += 1
            if response.status_code >= 300:
                outcomes[response.json().get("error", "?")] += 1
            return response.status_code < 300

        async def one(client: int) -> None:
            for n in range(HTTP_ROUNDS):
                symbol, start = SYMBOLS[n % 5], T0 + dt.timedelta(minutes=n)
                if n % 4 == 3:
                    order_id = f"{run}-{client}-{n}"
                    if await request("POST", "/orders", json={"order_id": order_id, "symbol": symbol,
                                                              "order_type": "market", "side": "sell", "quantity": "2"}):
                        await request("POST", f"/orders/{order_id}/transition", json={"status": "submitted"})
                elif n % 2:
                    await request("GET", "/prices/latest", params={"symbols": ",".join(SYMBOLS)})
                else:
                    await request("GET", f"/prices/{symbol}", params={
                        "start": start.isoformat(), "end": (start + dt.timedelta(minutes=10)).isoformat()})

        await asyncio.gather(*(one(c) for c in range(HTTP_CLIENTS)))
    return outcomes


@pytest.mark.slow
def test_service_workers_through_pgbouncer_serve_every_request(small_server, bouncer):
    """examples/service as the load: uvicorn workers with pooler=transaction, through PgBouncer."""
    pytest.importorskip("fastapi")
    pytest.importorskip("uvicorn")
    pytest.importorskip("httpx")
    import asyncio

    from service_process import Service

    env = {"MARKETSTORE_DATABASE_URL": bouncer.url(DBNAME), "MARKETSTORE_POOLER": "transaction",
           "MARKETSTORE_APPLICATION_NAME": "fanin-service"}
    service = Service.start(env, workers=SERVICE_WORKERS)
    run = uuid.uuid4().hex[:8]
    try:
        sampler = Sampler(small_server.url(DBNAME), bouncer.admin_url())
        sampler.start()
        started = time.monotonic()
        try:
            outcomes = asyncio.run(asyncio.wait_for(http_load(service.url, run), RUN_TIMEOUT))
        finally:
            duration = time.monotonic() - started
            peaks = sampler.stop()
    finally:
        service.stop()
    conn = psycopg2.connect(small_server.url(DBNAME))
    with conn.cursor() as cur:
        cur.execute("SELECT count(*) FILTER (WHERE status = 'submitted'), count(*) FROM orders "
                    "WHERE order_id LIKE %s", (f"{run}-%",))
        submitted, stored = cur.fetchone()
    conn.close()
    print(f"\nservice fan-in: {dict(outcomes)} in {duration:.1f} s, {peaks}")
    writes = HTTP_CLIENTS * (HTTP_ROUNDS // 4)
    reads = HTTP_CLIENTS * HTTP_ROUNDS - writes
    # Every read answered, every order placed (201) and moved (200): nothing else.
    assert dict(outcomes) == {200: reads + writes, 201: writes}, (outcomes, peaks)
    assert submitted == stored == writes
    assert peaks["max_server_connections"] <= BOUNCER_POOL, peaks
