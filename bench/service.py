"""Case ``service``: examples/service under ``wrk``, beside the same endpoints on raw drivers (issue #18).

On a private PostgreSQL on loopback (``max_connections`` for every app's
pool at once; the test suite's ``pgcluster``), seeded with 50 symbols of
minute bars and 2,000 articles, uvicorn serves with 2 workers each:

* ``app:app`` -- marketstore, its sync ``def`` endpoints and its ``/async`` ones;
* ``raw_sync:app`` -- the same endpoints on psycopg2's ``ThreadedConnectionPool``;
* ``raw_async:app`` -- on an asyncpg pool, and on psycopg 3's ``AsyncConnectionPool``.

``wrk`` (Debian's; installed with apt-get when missing and we are root) keeps
``CONNECTIONS`` connections alive for ``SECONDS`` per sample, after a warm-up,
every contender interleaved, for ``GET /prices/latest`` (10 symbols),
``GET /prices/{symbol}`` (60 bars), ``POST /orders`` (a unique ``order_id``
per request) and ``POST /orders/{id}/transition`` (``pending -> submitted``
of orders created before each sample). A contender's figure is seconds per
request (the inverse of requests/s); p50 and p99 are findings. Then
``uvicorn`` against ``uvicorn[standard]``, and the client CPU per request
in-process (the endpoint functions called in a loop, ``time.process_time``).

Environment: ``MARKETSTORE_BENCH_SERVICE_SECONDS`` (5), ``..._CONNECTIONS``
(32,128), ``..._ENDPOINTS`` (latest,range,orders,transition), ``..._UVICORN``
(the comparison of the two servers: on, or off).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import psycopg2

from marketstore import DatabaseConnection

from . import service_load as load
from .cases import case
from .context import Context
from .harness import Comparison, Contender, Finding, Target

_TESTS = Path(__file__).resolve().parent.parent / "tests"
for _folder in ("reliability", "scaleout"):
    if str(_TESTS / _folder) not in sys.path:
        sys.path.insert(0, str(_TESTS / _folder))
from pgcluster import Cluster  # noqa: E402
from service_process import APP_DIR, Service  # noqa: E402

WORKERS = 2
SECONDS = float(os.environ.get("MARKETSTORE_BENCH_SERVICE_SECONDS", "5"))
CONNECTIONS = tuple(int(c) for c in os.environ.get("MARKETSTORE_BENCH_SERVICE_CONNECTIONS", "32,128").split(","))
ENDPOINTS = tuple(e for e in os.environ.get("MARKETSTORE_BENCH_SERVICE_ENDPOINTS",
                                         "latest,range,orders,transition").split(",") if e)
UVICORN_COMPARISON = os.environ.get("MARKETSTORE_BENCH_SERVICE_UVICORN", "on") != "off"
IN_PROCESS_REQUESTS = 1000
# The shipped server: httptools and uvloop (uvicorn[standard]); see the uvicorn comparison.
STANDARD = {"http": "serving:HTTPProtocol", "loop": "uvloop"}
PLAIN = {"http": "serving:H11Protocol", "loop": "asyncio"}

MS_SYNC, MS_ASYNC = "marketstore sync", "marketstore async"
RAW_SYNC, ASYNCPG, PSYCOPG3 = "raw psycopg2 sync", "raw asyncpg", "raw psycopg 3 async"
# contender -> (uvicorn app, its environment, path prefix)
APPS = {
    MS_SYNC: ("app:app", {}, ""),
    MS_ASYNC: ("app:app", {}, "/async"),
    RAW_SYNC: ("raw_sync:app", {}, ""),
    ASYNCPG: ("raw_async:app", {"RAW_ASYNC_DRIVER": "asyncpg"}, ""),
    PSYCOPG3: ("raw_async:app", {"RAW_ASYNC_DRIVER": "psycopg"}, ""),
}


def ensure_wrk(log) -> str | None:
    """The ``wrk`` binary; installed with apt-get when missing and we are root; else ``None``."""
    found = shutil.which("wrk")
    if found or os.geteuid() != 0 or not shutil.which("apt-get"):
        return found
    log("service: installing wrk with apt-get")
    for command in (["apt-get", "install", "-y", "-q", "wrk"], ["apt-get", "update", "-q"],
                    ["apt-get", "install", "-y", "-q", "wrk"]):
        subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True, timeout=600,
                       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
        if shutil.which("wrk"):
            break
    return shutil.which("wrk")


class Servers:
    """The private cluster, its seeded database, and the uvicorn servers started on it (by name)."""

    def __init__(self, ctx: Context):
        self.cluster = Cluster.create(max_connections=500, shared_buffers="'128MB'")
        ctx.closers.append(self.cluster.destroy)
        self.url = self.cluster.create_database("marketstore")
        self.admin = psycopg2.connect(self.url)
        self.admin.autocommit = True
        ctx.closers.append(self.admin.close)
        connection = DatabaseConnection().initialize(self.url)
        try:
            load.seed(connection)
        finally:
            connection.close()
        self.services: dict[tuple, Service] = {}
        self.ctx = ctx

    def base_url(self, contender: str, server: dict = STANDARD) -> str:
        """Start (once) the app serving ``contender``; its URL with the path prefix."""
        app, env, prefix = APPS[contender]
        key = (app, tuple(sorted(env.items())), tuple(sorted(server.items())))
        if key not in self.services:
            env = {"MARKETSTORE_DATABASE_URL": self.url, "RAW_DATABASE_URL": self.url, **env}
            service = self.services[key] = Service.start(env, workers=WORKERS, app=app, **server)
            self.ctx.closers.append(service.stop)
        return self.services[key].url + prefix

    def count(self, sql: str, params=()) -> int:
        with self.admin.cursor() as cur:
            cur.execute(sql, params)
            return cur.fetchone()[0]


@case("service")
def service(ctx: Context) -> Iterator[Comparison]:
    servers = Servers(ctx)
    wrk = ensure_wrk(ctx.log)
    seconds = 1.0 if ctx.quick else SECONDS
    if wrk is None:
        ctx.log("service: no wrk binary (and none could be installed): only the in-process comparison runs")
    else:
        expected = {name: load.expected_json(servers.url, name) for name in ("latest", "range")}
        for endpoint in ENDPOINTS:
            for connections in CONNECTIONS[:1] if ctx.quick else CONNECTIONS:
                names = [MS_SYNC, RAW_SYNC, MS_ASYNC, ASYNCPG, PSYCOPG3]
                runs = {name: [] for name in names}
                contenders = [_wrk_contender(servers, wrk, name, endpoint, connections, seconds, expected,
                                             runs[name]) for name in names]
                comparison = Comparison(
                    "service", f"{load.TITLES[endpoint]}, {connections} connections, {WORKERS} workers (wrk)",
                    1, "requests", RAW_SYNC, contenders, [Target(MS_SYNC, RAW_SYNC, "speed>=", 0.9)],
                    warmup=not ctx.quick, min_repeat=3)
                yield comparison
                _settle(comparison, runs, (MS_SYNC, RAW_SYNC), (MS_ASYNC, (ASYNCPG, PSYCOPG3)))
        if UVICORN_COMPARISON and not ctx.quick:
            yield from _uvicorn_comparison(servers, wrk, seconds, expected)
    yield from _in_process(ctx, servers)


def _wrk_contender(servers, wrk, name, endpoint, connections, seconds, expected, runs, server=STANDARD,
                   label=None) -> Contender:
    """One app under ``wrk``: each sample a run; its results appended to ``runs``."""
    state = {}

    def setup():
        state["base"] = servers.base_url(name, server)
        state["run"] = load.script(endpoint, servers, seconds, connections)

    def run():
        return load.run_wrk(wrk, state["base"], state["run"], seconds, connections)

    def check(result):
        load.check_run(result, endpoint, servers, state["base"], state["run"]["prefix"], expected)
        runs.append(result)

    return Contender(label or name, run, "marketstore" if name.startswith("marketstore") else "reference",
                     setup=setup, check=check, note=f"{APPS[name][0]} {APPS[name][2] or '/'} {server}")


def _settle(comparison: Comparison, runs: dict, sync: tuple, asynchronous: tuple) -> None:
    """Seconds per request from each run's requests/s; targets and the p50/p99 findings."""
    for contender in comparison.contenders:
        contender.times = [1.0 / r["rps"] for r in runs[contender.name]]
    medians = comparison.medians()

    def percentile(name, key):
        values = sorted(r[key] for r in runs[name])
        return values[len(values) // 2] / 1000

    mine, reference = sync
    pairs = [(mine, reference, 1.25)]
    async_mine, async_references = asynchronous
    faster = min(async_references, key=lambda n: medians[n])
    comparison.targets.append(Target(async_mine, faster, "speed>=", 0.8, "the faster raw async app"))
    pairs.append((async_mine, faster, 1.25))
    for contender, ref, goal in pairs:
        p50, p99 = percentile(contender, "p50_us"), percentile(contender, "p99_us")
        ref50, ref99 = percentile(ref, "p50_us"), percentile(ref, "p99_us")
        comparison.findings.append(Finding(
            f"{contender} p99 {p99:.1f} ms vs {ref} {ref99:.1f} ms (p50 {p50:.1f} vs {ref50:.1f} ms, "
            f"{p50 / ref50:.2f}x)", round(p99 / ref99, 3), f"<= {goal}x", p99 / ref99 <= goal))
    for contender in comparison.contenders:
        contender.note += (f"; median p50 {percentile(contender.name, 'p50_us'):.1f} ms, "
                           f"p99 {percentile(contender.name, 'p99_us'):.1f} ms")


def _uvicorn_comparison(servers, wrk, seconds, expected) -> Iterator[Comparison]:
    """``uvicorn`` (h11, asyncio) against ``uvicorn[standard]`` (httptools, uvloop) for every app."""
    for endpoint in ("latest", "orders"):
        connections = CONNECTIONS[0]
        runs, contenders = {}, []
        for name in (MS_SYNC, RAW_SYNC, MS_ASYNC, ASYNCPG):
            for server, tag in ((PLAIN, "uvicorn"), (STANDARD, "uvicorn[standard]")):
                label = f"{name}, {tag}"
                runs[label] = []
                contenders.append(_wrk_contender(servers, wrk, name, endpoint, connections, seconds, expected,
                                                 runs[label], server, label))
        comparison = Comparison(
            "service", f"{load.TITLES[endpoint]}, {connections} connections: uvicorn vs uvicorn[standard]", 1,
            "requests", f"{RAW_SYNC}, uvicorn", contenders,
            [Target(f"{name}, uvicorn[standard]", f"{name}, uvicorn", "speed>=", 1.0, "standard ahead")
             for name in (MS_SYNC, RAW_SYNC, MS_ASYNC, ASYNCPG)], min_repeat=3)
        yield comparison
        for contender in contenders:
            contender.times = [1.0 / r["rps"] for r in runs[contender.name]]


def _in_process(ctx: Context, servers: Servers) -> Iterator[Comparison]:
    """Client CPU per request: the endpoint functions of app.py and raw_sync.py called in a loop."""
    requests = 50 if ctx.quick else IN_PROCESS_REQUESTS
    with load.in_process(servers.url, str(APP_DIR), ctx.url) as apps:
        for question in ("latest", "range", "search", "orders", "transition"):
            contenders = [Contender(name, apps.timed(name, call), "marketstore" if name == MS_SYNC else "reference",
                                    setup=apps.setup(question, requests, name), check=apps.check(question),
                                    note=f"{requests} calls of the endpoint function, time.process_time()")
                          for name, call in apps.calls(question).items()]
            # Warmed up with a short sample of each, not timed: the first calls import and prepare.
            for contender in contenders:
                apps.setup(question, 20, contender.name)()
                contender.check(contender.run())
            apps.cpu.clear()
            comparison = Comparison(
                "service", f"client CPU per request in-process: {load.TITLES[question]}", 1, "requests", RAW_SYNC,
                contenders, [Target(MS_SYNC, RAW_SYNC, "time<=", 1.3, "client CPU")], warmup=False,
                min_repeat=5)
            yield comparison
            for contender in contenders:  # CPU seconds per request, as each sample measured it
                contender.times = apps.cpu.pop(contender.name)
