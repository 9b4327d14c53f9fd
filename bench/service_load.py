"""What the ``service`` case drives: the seeded data, wrk's Lua scripts and its results, the in-process calls.

Every answer is checked: a GET's JSON against the bars read back by plain SQL
(not the SQL under test), every write counted in the database afterwards.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from decimal import Decimal

import psycopg2

import marketstore

UTC = dt.timezone.utc
T0 = dt.datetime(2024, 1, 2, tzinfo=UTC)
SYMBOLS = [f"S{n:03d}" for n in range(50)]
BARS = 2000  # minute bars per symbol
LATEST = SYMBOLS[:10]
RANGE_SYMBOL, RANGE_START, RANGE_END = SYMBOLS[1], T0 + dt.timedelta(hours=10), T0 + dt.timedelta(hours=11)
WRK_THREADS = 2
TRANSITION_RATE = 4000  # requests/s a sample may reach: orders created for it before each sample
TITLES = {
    "latest": "GET /prices/latest (10 symbols)",
    "range": "GET /prices/{symbol} (60 bars)",
    "orders": "POST /orders",
    "transition": "POST /orders/{id}/transition",
    "search": "GET /articles/search",
}
PATHS = {
    "latest": "/prices/latest?symbols=" + ",".join(LATEST),
    "range": f"/prices/{RANGE_SYMBOL}?start={RANGE_START:%Y-%m-%dT%H:%M:%S}&end={RANGE_END:%Y-%m-%dT%H:%M:%S}",
}
SEARCH = f"{SYMBOLS[1]} earnings"  # 40 articles match: ranked, the best 20 returned
ORDER = '{"order_id":"%s","symbol":"S001","order_type":"limit","side":"buy","quantity":"10","price":"101.5"}'


def seed(connection) -> None:
    """50 symbols of minute bars and 2,000 articles, through marketstore's own bulk paths."""
    marketstore.PriceRepository(connection).copy_from(
        {"symbol": s, "timestamp": T0 + dt.timedelta(minutes=m), "open": 100 + m % 5, "high": 106, "low": 99,
         "close": Decimal(100) + Decimal(m % 7) / 8, "volume": 1000 + m, "interval": "1m"}
        for s in SYMBOLS for m in range(BARS))
    marketstore.ArticleRepository(connection).copy_from(
        {"title": f"Earnings beat for {SYMBOLS[n % 50]} as revenue grows", "symbols": [SYMBOLS[n % 50]],
         "content": "quarterly earnings revenue guidance " * 20, "url": f"https://news.example/{n}"}
        for n in range(2000))


def _bar(symbol, timestamp, interval, o, h, low, c, v) -> dict:
    text = lambda d: str(d)  # noqa: E731 - money goes out as strings
    return {"symbol": symbol, "timestamp": timestamp.astimezone(UTC).isoformat(), "interval": interval,
            "open": text(o), "high": text(h), "low": text(low), "close": text(c), "volume": text(v)}


def expected_json(url: str, question: str):
    """The JSON a correct app answers, from plain SQL of our own."""
    conn = psycopg2.connect(url)
    try:
        with conn.cursor() as cur:
            columns = 'symbol, "timestamp", "interval", open, high, low, close, volume'
            if question == "latest":
                cur.execute(f'SELECT DISTINCT ON (symbol) {columns} FROM prices WHERE symbol = ANY(%s) '
                            'ORDER BY symbol, "timestamp" DESC', (LATEST,))
                return {row[0]: _bar(*row) for row in cur.fetchall()}
            cur.execute(f'SELECT {columns} FROM prices WHERE symbol = %s AND "timestamp" >= %s '
                        'AND "timestamp" < %s ORDER BY "timestamp"', (RANGE_SYMBOL, RANGE_START, RANGE_END))
            return [_bar(*row) for row in cur.fetchall()]
    finally:
        conn.close()


# -- wrk --------------------------------------------------------------------------------------------------
_LUA_COMMON = """
local counter = 0  -- tid: a global, set by setup() in each thread
local threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("tid", threads)
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('WRK {"requests": %d, "duration_us": %d, "connect": %d, "read": %d, "write": %d, '
    .. '"status": %d, "timeout": %d, "p50_us": %d, "p99_us": %d}\\n', summary.requests, summary.duration,
    e.connect, e.read, e.write, e.status, e.timeout, latency:percentile(50), latency:percentile(99)))
end
"""
_ORDER_LUA = ORDER.replace('"%s"', "\"' .. id .. '\"")
_LUA_REQUEST = {
    "get": 'function request() return wrk.format("GET", wrk.path) end',
    # wrk.path: the URL's path ("/", or "/async" for marketstore's async endpoints)
    "orders": f"""function request()
  counter = counter + 1
  local id = prefix .. "-" .. tid .. "-" .. counter
  local root = wrk.path == "/" and "" or wrk.path
  return wrk.format("POST", root .. "/orders", {{["Content-Type"] = "application/json"}}, '{_ORDER_LUA}')
end""",
    "transition": """function request()
  counter = counter + 1
  local root = wrk.path == "/" and "" or wrk.path
  local path = root .. "/orders/" .. prefix .. "-" .. tid .. "-" .. counter .. "/transition"
  return wrk.format("POST", path, {["Content-Type"] = "application/json"}, '{"status":"submitted"}')
end""",
}


def script(endpoint: str, servers, seconds: float, connections: int) -> dict:
    """The run's Lua script, URL path and prefix of order ids (the orders to move made first)."""
    prefix = uuid.uuid4().hex[:10]
    if endpoint == "transition":
        per_thread = int(TRANSITION_RATE * seconds / WRK_THREADS) + connections
        with servers.admin.cursor() as cur:
            cur.execute("INSERT INTO orders (order_id, symbol, order_type, side, quantity, price) "
                        "SELECT %s || '-' || t || '-' || n, 'S001', 'limit', 'buy', 10, 101.5 "
                        "FROM generate_series(1, %s) AS t, generate_series(1, %s) AS n",
                        (prefix, WRK_THREADS, per_thread))
    kind = endpoint if endpoint in _LUA_REQUEST else "get"
    handle, path = tempfile.mkstemp(prefix=f"marketstore-wrk-{endpoint}-", suffix=".lua")
    with os.fdopen(handle, "w") as out:
        out.write(f'local prefix = "{prefix}"\n' + _LUA_COMMON + _LUA_REQUEST[kind] + "\n")
    return {"script": path, "prefix": prefix, "path": PATHS.get(endpoint, "")}


def run_wrk(wrk: str, base: str, run: dict, seconds: float, connections: int) -> dict:
    """One wrk run: ``{"rps", "requests", "p50_us", "p99_us", errors...}``."""
    # wrk.path of the URL is where a POST script puts its paths: "/" or "/async"
    target = base + run["path"] if run["path"] or urllib.parse.urlsplit(base).path else base + "/"
    try:
        done = subprocess.run([wrk, "-t", str(WRK_THREADS), "-c", str(connections), "-d", f"{seconds:g}s",
                               "--timeout", "10s", "-s", run["script"], target],
                              capture_output=True, text=True, timeout=seconds + 120)
    finally:
        os.unlink(run["script"])
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("WRK ")), None)
    if done.returncode != 0 or line is None:
        raise AssertionError(f"wrk failed ({done.returncode}): {done.stdout[-2000:]} {done.stderr[-2000:]}")
    result = json.loads(line[4:])
    result["rps"] = result["requests"] / (result["duration_us"] / 1e6)
    return result


def check_run(result: dict, endpoint: str, servers, base: str, prefix: str, expected: dict) -> None:
    """No error of any kind; the GET answers right; every write counted in the database."""
    errors = {k: result[k] for k in ("connect", "read", "write", "status", "timeout") if result[k]}
    assert not errors and result["requests"] > 0, f"{endpoint} at {base}: {result}; {_probe(endpoint, base)}"
    if endpoint in PATHS:
        with urllib.request.urlopen(base + PATHS[endpoint], timeout=30) as response:
            got = json.loads(response.read())
        assert got == expected[endpoint], f"{endpoint} at {base}: {str(got)[:300]}"
    elif endpoint == "orders":
        stored = servers.count("SELECT count(*) FROM orders WHERE order_id LIKE %s", (prefix + "-%",))
        assert stored >= result["requests"], f"{result['requests']} orders answered 201, {stored} stored"
    else:
        moved = servers.count("SELECT count(*) FROM order_events e JOIN orders o ON o.id = e.order_id "
                              "WHERE o.order_id LIKE %s AND e.to_status = 'submitted'", (prefix + "-%",))
        assert moved >= result["requests"], f"{result['requests']} moves answered 200, {moved} in the audit trail"


def _probe(endpoint: str, base: str) -> str:
    """What one request answers now (to say why a run failed)."""
    if endpoint in PATHS:
        request = urllib.request.Request(base + PATHS[endpoint])
    else:
        body = ORDER % f"probe-{uuid.uuid4().hex[:10]}" if endpoint == "orders" else '{"status":"submitted"}'
        path = "/orders" if endpoint == "orders" else "/orders/no-such-order/transition"
        request = urllib.request.Request(base + path, body.encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return f"a probe got {response.status}"
    except urllib.error.HTTPError as exc:
        return f"a probe got {exc.code}: {exc.read()[:300]!r}"


# -- in-process: the endpoint functions called in a loop ------------------------------------------------------
class InProcess:
    """app.py's sync endpoint functions (marketstore) and raw_sync.py's, on the same database."""

    def __init__(self, url: str, app_dir: str):
        sys.path.insert(0, app_dir)
        import app
        import raw_common
        import raw_sync

        self.app, self.raw, self.common, self.url = app, raw_sync, raw_common, url
        os.environ.setdefault("RAW_DATABASE_URL", url)
        raw_sync.pool = raw_sync.open_pool()
        self.admin = psycopg2.connect(url)
        self.admin.autocommit = True
        self.cpu: dict[str, list] = {}
        self.work: dict[str, list] = {}
        self.expected = {q: expected_json(url, q) for q in PATHS}

    def close(self) -> None:
        self.raw.pool.closeall()
        self.admin.close()

    def calls(self, question: str) -> dict:
        app, raw = self.app, self.raw
        symbols = ",".join(LATEST)
        start, end = f"{RANGE_START:%Y-%m-%dT%H:%M:%S}", f"{RANGE_END:%Y-%m-%dT%H:%M:%S}"
        from .service import MS_SYNC, RAW_SYNC

        if question == "latest":
            return {MS_SYNC: lambda _: app.latest_prices(symbols, None), RAW_SYNC: lambda _: raw.latest_prices(symbols)}
        if question == "range":
            return {MS_SYNC: lambda _: app.price_range(RANGE_SYMBOL, start, end, None),
                    RAW_SYNC: lambda _: raw.price_range(RANGE_SYMBOL, start, end)}
        if question == "search":
            return {MS_SYNC: lambda _: app.search_articles(SEARCH, 20),
                    RAW_SYNC: lambda _: raw.search_articles(SEARCH, 20)}
        if question == "orders":
            return {MS_SYNC: lambda w: app.place_order(w), RAW_SYNC: lambda w: raw.place_order(w)}
        return {MS_SYNC: lambda w: app.transition_order(w[0], w[1]),
                RAW_SYNC: lambda w: raw.transition_order(w[0], w[1])}

    def setup(self, question: str, requests: int, name: str):
        """Untimed: the request bodies (pydantic models, as FastAPI hands them), orders to move."""
        def prepare():
            prefix = uuid.uuid4().hex[:10]
            model = self.app if name.startswith("marketstore") else self.common
            if question == "orders":
                self.work[name] = [model.NewOrder.model_validate_json(ORDER % f"{prefix}-{n}")
                                   for n in range(requests)]
            elif question == "transition":
                with self.admin.cursor() as cur:
                    cur.execute("INSERT INTO orders (order_id, symbol, order_type, side, quantity, price) "
                                "SELECT %s || '-' || n, 'S001', 'limit', 'buy', 10, 101.5 "
                                "FROM generate_series(1, %s) AS n", (prefix, requests))
                self.work[name] = [(f"{prefix}-{n}", model.Transition(status="submitted"))
                                   for n in range(1, requests + 1)]
            else:
                self.work[name] = [None] * requests
        return prepare

    def timed(self, name: str, call):
        """Every prepared request through ``call``; the process's CPU seconds per request recorded."""
        def run():
            work = self.work.pop(name)
            started = time.process_time()
            for item in work:
                result = call(item)
            self.cpu.setdefault(name, []).append((time.process_time() - started) / len(work))
            return result
        return run

    def check(self, question: str):
        def right(result):
            if question in self.expected:
                assert result == self.expected[question], f"{question}: {str(result)[:300]}"
            elif question == "search":
                assert len(result) == 20 and all(a["rank"] > 0 for a in result), f"search: {str(result)[:300]}"
            else:
                status = "pending" if question == "orders" else "submitted"
                assert result["status"] == status and result["price"] == "101.50000000", result
        return right


@contextlib.contextmanager
def in_process(url: str, app_dir: str, restore_url: str):
    """:class:`InProcess` on ``url``; marketstore's default connection back on ``restore_url`` after."""
    marketstore.initialize_database(url)
    apps = InProcess(url, app_dir)
    try:
        yield apps
    finally:
        apps.close()
        marketstore.initialize_database(restore_url)
