"""A primary restart under load: the service answers 503 while PostgreSQL is down, then recovers.

A private cluster (the session's ``primary`` is shared, and restarting it would
disturb the other tests), the service on it with one worker and a low
``pool_timeout``, a few keep-alive clients reading and writing. PostgreSQL is
stopped (``-m fast``), held down for a moment so that requests surely land in
the gap, and started again, while the clients go on. A prober connects to the
server directly every few milliseconds: the moment it answers again is "up".

What a client may see: 2xx, or 503 with ``Retry-After`` while the server is
down, within ``pool_timeout`` plus a margin (never a 500, never a hang); after
the server is up, 2xx again within ``RECOVERY`` seconds, from the same service
process (its pool's pre-ping replaces the dead connections).
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import threading
import time
import uuid

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

import psycopg2  # noqa: E402

from pgbouncer import PgBouncer  # noqa: E402
from pgcluster import Cluster, ClusterUnavailable  # noqa: E402
from scaleout_helpers import DBNAME  # noqa: E402
from service_process import Service  # noqa: E402

POOL_TIMEOUT = 2.0  # seconds: a request waits at most this long for a pooled connection
CONNECT_TIMEOUT = 2  # seconds per connection attempt (loopback refuses at once anyway)
LATENCY_MARGIN = 1.5  # seconds above pool_timeout that a request may take (scheduling, the query)
RECOVERY = 2.0  # seconds after the server is up by which requests succeed again
CLIENTS = 4
BEFORE, DOWN, AFTER = 1.5, 1.5, 4.0  # seconds of load before the stop, with the server down, after the start
SERVER_LOGIN_RETRY = 0.2  # seconds: PgBouncer's pause between failed server logins (15 by default)
T0 = dt.datetime(2026, 3, 2, 14, 30, tzinfo=dt.timezone.utc)


@dataclasses.dataclass
class Outcome:
    """One request as the client saw it; ``status`` None: no HTTP response (the ``error``)."""

    started: float
    ended: float
    method: str
    status: int | None
    retry_after: str | None = None
    body: str = ""
    error: str | None = None


@pytest.fixture(scope="module")
def cluster():
    try:
        server = Cluster.create(max_connections=50)
    except ClusterUnavailable as exc:
        pytest.skip(str(exc))
    try:
        server.create_database(DBNAME)
        conn = psycopg2.connect(server.url(DBNAME))
        with conn, conn.cursor() as cur:
            cur.executemany("INSERT INTO prices (symbol, timestamp, open, high, low, close, volume, interval) "
                            "VALUES (%s, %s, 10, 11, 9, 10.5, 100, '1m')",
                            [(s, T0 + dt.timedelta(minutes=m)) for s in ("AAA", "BBB") for m in range(5)])
        conn.close()
        yield server
    finally:
        server.destroy()


def drive(url: str, stop: threading.Event, outcomes: list, client_no: int) -> None:
    """Alternate a read and a write on one keep-alive connection until ``stop``."""
    # The client's own timeout is well above the allowed latency, so that a hang
    # shows up as a measured latency and not as a client-side exception.
    with httpx.Client(base_url=url, timeout=POOL_TIMEOUT + 10) as client:
        n = 0
        while not stop.is_set():
            n += 1
            if n % 2:
                method, call = "GET", lambda: client.get("/prices/latest", params={"symbols": "AAA,BBB"})
            else:
                order = {"order_id": f"rs-{client_no}-{n}-{uuid.uuid4().hex[:6]}", "symbol": "AAA",
                         "order_type": "market", "side": "buy", "quantity": "1"}
                method, call = "POST", lambda: client.post("/orders", json=order)
            started = time.monotonic()
            try:
                response = call()
            except httpx.HTTPError as exc:
                outcomes.append(Outcome(started, time.monotonic(), method, None, error=repr(exc)))
                continue
            outcomes.append(Outcome(started, time.monotonic(), method, response.status_code,
                                    response.headers.get("retry-after"),
                                    response.text[:300] if response.status_code >= 300 else ""))
            time.sleep(0.01)  # a steady, bounded load: not a flood


def server_answers(server: Cluster) -> bool:
    try:
        psycopg2.connect(server.url(DBNAME), connect_timeout=1).close()
        return True
    except psycopg2.OperationalError:
        return False


def restart_under_load(server: Cluster, service: Service) -> tuple[list[Outcome], float, float]:
    """Load, stop the server, hold it down ``DOWN`` s, start it, load ``AFTER`` s more.
    Returns the outcomes, when the server was stopped and when it answered again."""
    outcomes: list[Outcome] = []
    stop = threading.Event()
    clients = [threading.Thread(target=drive, args=(service.url, stop, outcomes, i), daemon=True)
               for i in range(CLIENTS)]
    for thread in clients:
        thread.start()
    try:
        time.sleep(BEFORE)
        down_at = time.monotonic()
        server.stop("fast")
        time.sleep(DOWN)
        starter = threading.Thread(target=server.start, daemon=True)
        starter.start()
        # pg_isready's moment, measured from outside: pg_ctl -w polls only every 100 ms or so.
        while not server_answers(server):
            time.sleep(0.005)
        up_at = time.monotonic()
        starter.join(60)
        time.sleep(AFTER)
    finally:
        stop.set()
        for thread in clients:
            thread.join(POOL_TIMEOUT + 15)
    return sorted(outcomes, key=lambda o: o.started), down_at, up_at


def check(outcomes: list[Outcome], down_at: float, up_at: float, service: Service, pid: int, label: str,
          grace: float = 0.0) -> None:
    """The assertions of the module docstring; ``grace``: seconds after the server is up that a
    proxy in between may take to reconnect, before which a request may still fail."""
    ok = [o for o in outcomes if o.status is not None and 200 <= o.status < 300]
    failed = [o for o in outcomes if o not in ok]
    first_ok_after = min((o.ended for o in ok if o.started >= up_at), default=None)
    last_failure = max((o.ended for o in failed), default=None)
    worst = max(o.ended - o.started for o in outcomes)
    print(f"\n[{label}] {len(outcomes)} requests, {len(failed)} not 2xx "
          f"({sorted({(o.method, o.status) for o in failed}, key=str)}); server down {up_at - down_at:.2f} s; "
          f"first 2xx {first_ok_after - up_at if first_ok_after else float('nan'):+.3f} s "
          f"and last non-2xx {last_failure - up_at if last_failure else float('nan'):+.3f} s "
          f"after the server answered; "
          f"slowest request {worst:.2f} s")

    def show(items):
        return "\n".join(f"{o.method} {o.status} at {o.started - up_at:+.2f}s: {o.error or o.body}" for o in items[:10])

    # Every request was answered, with 2xx or 503 + Retry-After: never a 500, never a dropped connection.
    bad = [o for o in failed if o.status != 503 or o.retry_after is None]
    assert not bad, show(bad)
    # Never a hang: a request waits for a connection at most pool_timeout.
    slow = [o for o in outcomes if o.ended - o.started > POOL_TIMEOUT + LATENCY_MARGIN]
    assert not slow, show(slow)
    # The restart was really seen: some requests landed while the server was down.
    assert any(down_at <= o.started <= up_at for o in failed), "no request failed while the server was down"
    # Recovery: the first request sent after the server answers (plus the proxy's grace) succeeds...
    after = [o for o in outcomes if o.started >= up_at + grace]
    assert after and after[0] in ok, show(after[:3])
    # ...and nothing fails once the recovery window has passed.
    late = [o for o in failed if o.ended > up_at + RECOVERY]
    assert not late, show(late)
    assert len([o for o in ok if o.started > up_at + RECOVERY]) >= CLIENTS, "too little load after the restart"
    # The same process served throughout: the pool recovered, nothing restarted.
    assert service.process.poll() is None and service.process.pid == pid
    assert "Traceback" not in service.log_text(), service.log_text()[-3000:]


def orders_stored(server: Cluster, outcomes: list[Outcome]) -> None:
    """Every 201 is a row, read from a fresh connection after the restart."""
    placed = sum(1 for o in outcomes if o.method == "POST" and o.status == 201)
    conn = psycopg2.connect(server.url(DBNAME))
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM orders WHERE order_id LIKE 'rs-%%'")
            stored = cur.fetchone()[0]
            cur.execute("DELETE FROM orders WHERE order_id LIKE 'rs-%%'")
        conn.commit()
    finally:
        conn.close()
    # A 503 on a commit whose COMMIT reached the server could leave a row too: never fewer.
    assert stored >= placed


def service_env(url: str, **more: str) -> dict[str, str]:
    return {"MARKETSTORE_DATABASE_URL": url, "MARKETSTORE_POOL_TIMEOUT": str(POOL_TIMEOUT),
            "MARKETSTORE_CONNECT_TIMEOUT": str(CONNECT_TIMEOUT), "MARKETSTORE_POOL_SIZE": "4",
            "MARKETSTORE_MAX_OVERFLOW": "2", **more}


@pytest.mark.slow
def test_primary_restart_under_load(cluster):
    service = Service.start(service_env(cluster.url(DBNAME)), workers=1)
    try:
        pid = service.process.pid
        outcomes, down_at, up_at = restart_under_load(cluster, service)
        check(outcomes, down_at, up_at, service, pid, "direct")
    finally:
        log = service.stop()
    orders_stored(cluster, outcomes)
    assert "Traceback" not in log, log[-3000:]


@pytest.mark.slow
def test_primary_restart_under_load_through_pgbouncer(cluster, pgbouncer_binary):
    # server_login_retry: PgBouncer waits this long after a failed server login
    # before it tries again (15 s by default), and that wait is the floor of the
    # recovery window: until its next login the clients it accepts are closed
    # ("server closed the connection unexpectedly", a 503 here), whatever the
    # app's pool does. query_wait_timeout: a client queued for a server
    # connection that never comes gets an error instead of waiting 120 s.
    bouncer = PgBouncer.start(cluster.port, binary=pgbouncer_binary, default_pool_size=10,
                              server_login_retry=SERVER_LOGIN_RETRY, query_wait_timeout=POOL_TIMEOUT)
    try:
        service = Service.start(service_env(bouncer.url(DBNAME), MARKETSTORE_POOLER="transaction"), workers=1)
        try:
            pid = service.process.pid
            outcomes, down_at, up_at = restart_under_load(cluster, service)
            check(outcomes, down_at, up_at, service, pid, "pgbouncer", grace=SERVER_LOGIN_RETRY + 0.3)
        finally:
            log = service.stop()
    finally:
        bouncer.stop()
    orders_stored(cluster, outcomes)
    assert "Traceback" not in log, log[-3000:]
