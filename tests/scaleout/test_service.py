"""examples/service over HTTP: uvicorn with worker processes on the test database.

Every endpoint, its JSON, and the mapping of marketstore's errors to HTTP
statuses. Rows are written and checked through a raw connection, never
through the service under test.
"""
from __future__ import annotations

import concurrent.futures
import datetime as dt
import decimal
import time
import uuid

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

import psycopg2  # noqa: E402

import marketstore  # noqa: E402
from pgcluster import free_port  # noqa: E402
from service_process import APP_DIR, Service  # noqa: E402
from helpers import UTC

T0 = dt.datetime(2026, 3, 2, 14, 30, tzinfo=UTC)
WORKERS = 2


@pytest.fixture(scope="module")
def service(database_url):
    service = Service.start({"MARKETSTORE_DATABASE_URL": database_url, "MARKETSTORE_POOL_TIMEOUT": "5",
                             "MARKETSTORE_APPLICATION_NAME": "mst_service"}, workers=WORKERS)
    try:
        yield service
    finally:
        log = service.stop()
        # Each worker ran its lifespan shutdown (close_database()) on SIGTERM.
        assert log.count("Application shutdown complete.") == WORKERS, log[-3000:]


@pytest.fixture
def http(service, db):
    """An HTTP client of the service; the tables are empty (``db`` truncates them)."""
    with httpx.Client(base_url=service.url, timeout=30) as client:
        yield client


def add_bars(raw, rows):
    with raw.cursor() as cur:
        cur.executemany("INSERT INTO prices (symbol, timestamp, open, high, low, close, volume, interval) "
                        "VALUES (%s, %s, %s, %s, %s, %s, %s, '1m')", rows)


def bar(symbol, minute, close="100.12345678"):
    close = decimal.Decimal(close)
    return (symbol, T0 + dt.timedelta(minutes=minute), close, close + 1, close - decimal.Decimal("0.5"), close, "1500.5")


def test_price_range(http, raw):
    add_bars(raw, [bar("AAA", 0, "100.00000001"), bar("AAA", 1, "100.5"), bar("AAA", 2), bar("BBB", 1)])
    response = http.get("/prices/AAA", params={"start": T0.isoformat(), "end": "2026-03-02T14:32:00"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert [b["timestamp"] for b in body] == ["2026-03-02T14:30:00+00:00", "2026-03-02T14:31:00+00:00"]
    # Exact decimals, as strings: a JSON float would have rounded 100.00000001.
    assert [decimal.Decimal(b["close"]) for b in body] == [decimal.Decimal("100.00000001"), decimal.Decimal("100.5")]
    assert body[0] == {"symbol": "AAA", "timestamp": "2026-03-02T14:30:00+00:00", "interval": "1m", "open": "100.00000001",
                       "high": "101.00000001", "low": "99.50000001", "close": "100.00000001", "volume": "1500.50000000"}
    assert http.get("/prices/ZZZ", params={"start": T0.isoformat(), "end": "2026-03-03"}).json() == []


def test_latest_prices(http, raw):
    add_bars(raw, [bar("AAA", 0), bar("AAA", 5, "102"), bar("BBB", 3, "7.25")])
    response = http.get("/prices/latest", params={"symbols": "AAA, BBB,ZZZ"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert sorted(body) == ["AAA", "BBB"]
    assert (body["AAA"]["timestamp"], body["AAA"]["close"]) == ("2026-03-02T14:35:00+00:00", "102.00000000")
    assert (body["BBB"]["timestamp"], body["BBB"]["close"]) == ("2026-03-02T14:33:00+00:00", "7.25000000")


def test_article_search(http, raw):
    with raw.cursor() as cur:
        cur.executemany("INSERT INTO articles (title, content, url, symbols, published_at) VALUES (%s, %s, %s, %s, %s)", [
            ("Quarterly earnings beat", "Revenue rose", "https://n/1", ["AAA"], T0),
            ("Market wrap", "Earnings season goes on", "https://n/2", ["BBB"], T0),
            ("Weather", "Rain", "https://n/3", [], T0),
        ])
    response = http.get("/articles/search", params={"q": "earnings"})
    assert response.status_code == 200, response.text
    found = response.json()
    # The title match ranks above the content match; the third article does not match.
    assert [a["url"] for a in found] == ["https://n/1", "https://n/2"]
    assert found[0]["rank"] > found[1]["rank"] > 0 and found[0]["symbols"] == ["AAA"]
    assert http.get("/articles/search", params={"q": "earnings", "limit": 1}).json()[0]["url"] == "https://n/1"


def test_place_and_transition_an_order(http, raw):
    order = {"order_id": "ord-1", "symbol": "AAA", "order_type": "limit", "side": "buy",
             "quantity": "10", "price": 101.25}
    response = http.post("/orders", json=order)
    assert response.status_code == 201, response.text
    placed = response.json()
    assert (placed["status"], placed["quantity"], placed["price"]) == ("pending", "10.00000000", "101.25000000")
    with raw.cursor() as cur:
        cur.execute("SELECT symbol, status, price FROM orders WHERE order_id = 'ord-1'")
        assert cur.fetchone() == ("AAA", "pending", decimal.Decimal("101.25"))

    assert http.post("/orders/ord-1/transition", json={"status": "submitted"}).json()["status"] == "submitted"
    response = http.post("/orders/ord-1/transition",
                         json={"status": "partially_filled", "filled_quantity": "4", "average_fill_price": "101",
                               "note": "first fill"})
    assert response.status_code == 200, response.text
    assert (response.json()["status"], response.json()["filled_quantity"]) == ("partially_filled", "4.00000000")
    with raw.cursor() as cur:
        cur.execute("SELECT e.from_status, e.to_status, e.note FROM order_events e JOIN orders o ON o.id = e.order_id "
                    "WHERE o.order_id = 'ord-1' ORDER BY e.id")
        assert cur.fetchall() == [("pending", "submitted", None), ("submitted", "partially_filled", "first fill")]


@pytest.mark.parametrize("method, path, body, status, error, field, value", [
    ("GET", "/prices/AAA?start=yesterday&end=2026-03-03", None, 422, "DataValidationError", "start", "yesterday"),
    ("GET", "/prices/AAA?start=2026-03-03&end=2026-03-02", None, 422, "DataValidationError", "end",
     "2026-03-02 00:00:00+00:00"),
    ("GET", "/prices/AAA?start=2026-03-02&end=2026-03-03&interval=7x", None, 422, "DataValidationError",
     "interval", "7x"),
    ("GET", "/prices/AAA?end=2026-03-03", None, 422, "RequestValidationError", "start", None),
    ("GET", "/prices/latest?symbols=AAA," + "X" * 40, None, 422, "DataValidationError", "symbols[1]", "X" * 40),
    ("GET", "/articles/search?q=", None, 422, "DataValidationError", "text", ""),
    ("GET", "/articles/search?q=x&limit=0", None, 422, "DataValidationError", "limit", 0),
    ("POST", "/orders", {"order_id": "o", "symbol": "AAA", "order_type": "iceberg", "side": "buy", "quantity": 1},
     422, "DataValidationError", "order_type", "iceberg"),
    ("POST", "/orders", {"order_id": "o", "symbol": "AAA", "order_type": "market", "side": "buy", "quantity": -1},
     422, "DataValidationError", "quantity", "-1"),
    ("POST", "/orders", {"order_id": "o", "symbol": "AAA", "order_type": "market", "side": "buy", "quantity": 1,
                         "colour": "red"}, 422, "RequestValidationError", "colour", "red"),
    ("POST", "/orders/nope/transition", {"status": "submitted"}, 404, "NotFoundError", "order_id", "nope"),
    ("POST", "/orders/ord-x/transition", {"status": "filled", "average_fill_price": 1}, 422,
     "DataValidationError", "new_status", "filled"),
    ("POST", "/orders/ord-x/transition", {"status": "paused"}, 422, "DataValidationError", "new_status", "paused"),
])
def test_errors_name_the_field_and_value(http, raw, method, path, body, status, error, field, value):
    with raw.cursor() as cur:
        cur.execute("INSERT INTO orders (order_id, symbol, order_type, side, quantity) "
                    "VALUES ('ord-x', 'AAA', 'market', 'buy', 5)")
    response = http.request(method, path, json=body)
    assert response.status_code == status, response.text
    got = response.json()
    assert (got["error"], got["field"], got["value"]) == (error, field, value), got
    assert got["message"]


def test_duplicate_order_is_a_conflict(http, raw):
    order = {"order_id": "dup-1", "symbol": "AAA", "order_type": "market", "side": "sell", "quantity": 3}
    assert http.post("/orders", json=order).status_code == 201
    response = http.post("/orders", json=order)
    assert response.status_code == 409, response.text
    got = response.json()
    assert (got["error"], got["constraint"], got["key"]) == ("DuplicateKeyError", "orders_order_id",
                                                            {"order_id": "dup-1"})
    assert "(order_id)=(dup-1) is already stored" in got["message"]
    with raw.cursor() as cur:
        cur.execute("SELECT count(*) FROM orders WHERE order_id = 'dup-1'")
        assert cur.fetchone() == (1,)


def test_health_reports_the_pool(http):
    response = http.get("/health")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["healthy"] is True
    assert {"max_connections": 30, "pool_size": 10}.items() <= body["pool"].items()
    assert body["pool"]["in_use"] == 0  # health_check()'s session has ended


def test_concurrent_requests_on_every_worker(http, raw, service):
    """A burst larger than one worker's pool: every request answered, by both workers' pools."""
    add_bars(raw, [bar(s, m) for s in ("AAA", "BBB") for m in range(30)])
    urls = ["/prices/latest?symbols=AAA,BBB", f"/prices/AAA?start={T0.date()}&end=2026-03-03"] * 100

    def get(path):
        with httpx.Client(base_url=service.url, timeout=60) as client:  # a connection each: spread over workers
            response = client.get(path)
            return response.status_code, len(response.json())

    with concurrent.futures.ThreadPoolExecutor(40) as pool:
        results = list(pool.map(get, urls))
    assert results == [(200, 2), (200, 30)] * 100
    def kept() -> int:
        with raw.cursor() as cur:
            cur.execute("SELECT count(*) FROM pg_stat_activity "
                        "WHERE application_name = 'mst_service' AND datname = current_database()")
            return cur.fetchone()[0]

    # At most pool_size kept per worker: the overflow closes once its idle grace (1 s) has passed.
    deadline = time.monotonic() + 5
    while kept() > WORKERS * 10 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert 1 <= kept() <= WORKERS * 10


def test_database_down_is_503(database_url):
    """A service whose server does not answer: 503 with Retry-After, and /health says so."""
    dead = f"postgresql://postgres@127.0.0.1:{free_port()}/nowhere"
    service = Service.start({"MARKETSTORE_DATABASE_URL": dead, "MARKETSTORE_POOL_TIMEOUT": "2"}, workers=1)
    try:
        with httpx.Client(base_url=service.url, timeout=30) as client:
            health = client.get("/health")
            assert health.status_code == 503 and health.json()["healthy"] is False
            response = client.get("/prices/latest", params={"symbols": "AAA"})
            assert response.status_code == 503, response.text
            assert response.json()["error"] == "DatabaseConnectionError"
            assert response.headers["retry-after"] == "1"
            assert "Connection refused" in response.json()["message"]
    finally:
        service.stop()


@pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")
def test_one_session_per_request_in_the_endpoints_thread(db):
    """The session of ``in_session`` is this thread's transaction while the endpoint runs,
    under concurrency (a ``Depends`` with ``yield`` would open it in another thread)."""
    import sys
    from fastapi.testclient import TestClient

    sys.path.insert(0, str(APP_DIR))
    try:
        import app as service_app
    finally:
        sys.path.remove(str(APP_DIR))
    seen = []

    @service_app.app.get("/_probe")
    @service_app.in_session(read_only=True)
    def probe():
        with marketstore.get_db_session() as inner:  # joins the request's transaction
            pid = inner.execute_sql("SELECT pg_backend_pid()").fetchone()[0]
        seen.append(marketstore.db_connection.in_transaction())
        return {"pid": pid}

    try:
        # No lifespan (not entered with ``with``): the app uses the ``db`` fixture's connection.
        client = TestClient(service_app.app)
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            statuses = list(pool.map(lambda _: client.get("/_probe").status_code, range(40)))
        assert statuses == [200] * 40
        assert seen == [True] * 40
    finally:
        service_app.app.router.routes[:] = [r for r in service_app.app.router.routes
                                            if getattr(r, "path", "") != "/_probe"]


# -- with a streaming standby (the scale-out fixtures) ----------------------------------------
def standby_connections(standby, application_name: str) -> int:
    conn = psycopg2.connect(standby.url())
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", (application_name,))
            return cur.fetchone()[0]
    finally:
        conn.close()


def test_reads_are_served_by_the_replica(primary_url, standby):
    """MARKETSTORE_REPLICA_URLS: the read endpoints reach the standby, the writes the primary."""
    env = {"MARKETSTORE_DATABASE_URL": primary_url, "MARKETSTORE_REPLICA_URLS": standby.url(),
           "MARKETSTORE_MAX_REPLICA_LAG": "5", "MARKETSTORE_APPLICATION_NAME": "mst_service_replica"}
    symbol = f"R{uuid.uuid4().hex[:6].upper()}"
    conn = psycopg2.connect(primary_url)
    with conn, conn.cursor() as cur:
        cur.execute("INSERT INTO prices (symbol, timestamp, open, high, low, close, volume) "
                    "VALUES (%s, %s, 10, 11, 9, 10.5, 1)", (symbol, T0))
    conn.close()
    standby.caught_up()
    service = Service.start(env, workers=1)
    try:
        with httpx.Client(base_url=service.url, timeout=30) as client:
            # The replica's WAL position is sampled (from the first read on), not asked
            # per read: until a sample shows it within the bound, the primary serves.
            deadline = time.monotonic() + 10
            while standby_connections(standby, "mst_service_replica") == 0 and time.monotonic() < deadline:
                latest = client.get("/prices/latest", params={"symbols": symbol})
                assert latest.json()[symbol]["close"] == "10.50000000"
                time.sleep(0.2)
            assert standby_connections(standby, "mst_service_replica") >= 1
            health = client.get("/health").json()
            (replica,) = health["pool"]["replicas"]
            assert replica["healthy"] is True and replica["lag_seconds"] is not None, health
            assert str(standby.port) in replica["url"]
            order_id = f"replica-{uuid.uuid4().hex[:8]}"
            placed = client.post("/orders", json={"order_id": order_id, "symbol": symbol, "order_type": "market",
                                                  "side": "buy", "quantity": 1})
            assert placed.status_code == 201, placed.text  # the write went to the primary
    finally:
        service.stop()


def test_a_write_that_reaches_a_standby_is_503(standby):
    """A primary URL that points at a standby (a failover in progress): reads work, writes get 503."""
    env = {"MARKETSTORE_DATABASE_URL": standby.url(), "MARKETSTORE_POOL_TIMEOUT": "5"}
    service = Service.start(env, workers=1)
    try:
        with httpx.Client(base_url=service.url, timeout=30) as client:
            assert client.get("/prices/latest", params={"symbols": "AAA"}).status_code == 200
            response = client.post("/orders", json={"order_id": "on-standby", "symbol": "AAA",
                                                    "order_type": "market", "side": "buy", "quantity": 1})
            assert response.status_code == 503, response.text
            assert response.json()["error"] == "ReadOnlyError"
            assert response.headers["retry-after"] == "1"
            assert "read-only transaction" in response.json()["message"]
    finally:
        service.stop()
