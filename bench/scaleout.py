"""Case ``scaleout``: sessions through PgBouncer, and reads routed to a replica.

It runs on throwaway servers of its own on loopback (the test suite's
``pgcluster`` and PgBouncer helpers): a primary, a streaming standby of it, and
Debian's ``pgbouncer`` in transaction mode in front of the primary. Without
the pgbouncer binary only the replica comparison runs.

* Sessions through PgBouncer: ``session()`` with ``pooler="transaction"``
  against a ``psycopg2.pool.ThreadedConnectionPool`` sending
  ``BEGIN``, the query and ``COMMIT`` through the same PgBouncer. Target >= 0.8x,
  with the defaults (the server is in UTC: ``BEGIN`` alone) and with a
  ``statement_timeout`` (its ``SET LOCAL`` rides on the ``BEGIN``).
* A replica-routed read: ``PriceRepository.latest()`` on a connection whose
  replica serves it, against the same call on a connection to the primary
  alone. Target <= 1.1x the time (the routing decision is not a round trip).
"""
from __future__ import annotations

import datetime as dt
import sys
import time
from pathlib import Path
from typing import Iterator

import psycopg2

import marketstore
from marketstore import DatabaseConnection, PriceRepository

from .cases import SELECT_ONE, SESSION_THREADS, case, run_threads
from .checks import expect
from .context import Context
from .references import RawPool
from .harness import Comparison, Contender, Target

_TESTS = Path(__file__).resolve().parent.parent / "tests"
for _folder in ("reliability", "scaleout"):
    if str(_TESTS / _folder) not in sys.path:
        sys.path.insert(0, str(_TESTS / _folder))
from pgbouncer import PgBouncer, find_pgbouncer  # noqa: E402
from pgcluster import Cluster  # noqa: E402

DBNAME = "marketstore"
SYMBOLS, BARS = 50, 200
READS = 50  # latest() calls per sample
BOUNCER_TRANSACTIONS = 500  # per thread and sample
T0 = dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc)
STATEMENT_TIMEOUT_MS = 30_000  # so that both SET LOCALs are sent, as in production


def _servers(ctx: Context):
    """Primary (migrated, loaded), standby caught up, PgBouncer or None; all closed with ``ctx``."""
    primary = Cluster.create(wal_level="replica", max_wal_senders=5, hot_standby="on")
    ctx.closers.append(primary.destroy)
    loader = DatabaseConnection().initialize(primary.create_database(DBNAME, migrate=False))
    try:
        marketstore.DatabaseMigration(loader).migrate()
        PriceRepository(loader).copy_from(
            {"symbol": f"S{s:03d}", "timestamp": T0 + dt.timedelta(minutes=m), "open": 10, "high": 11,
             "low": 9, "close": 10 + (m % 7) / 8, "volume": 100} for s in range(SYMBOLS) for m in range(BARS))
    finally:
        loader.close()
    standby = primary.create_standby()
    ctx.closers.append(standby.destroy)
    _wait_replayed(primary.url(DBNAME), standby.url(DBNAME))
    binary = find_pgbouncer()
    bouncer = None
    if binary is not None:
        bouncer = PgBouncer.start(primary.port, binary=binary)
        ctx.closers.append(bouncer.stop)
    else:
        ctx.log("scaleout: no pgbouncer binary, the PgBouncer comparison is skipped")
    return primary, standby, bouncer


def _scalar(url: str, sql: str):
    conn = psycopg2.connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
            return cur.fetchone()[0]
    finally:
        conn.close()


def _wait_replayed(primary_url: str, standby_url: str, timeout: float = 30.0) -> None:
    target = _scalar(primary_url, "SELECT pg_current_wal_lsn()::text")
    deadline = time.monotonic() + timeout
    while not _scalar(standby_url, f"SELECT pg_last_wal_replay_lsn() >= '{target}'::pg_lsn"):
        if time.monotonic() > deadline:
            raise RuntimeError("the standby did not catch up")
        time.sleep(0.05)


@case("scaleout")
def scaleout(ctx: Context) -> Iterator[Comparison]:
    primary, standby, bouncer = _servers(ctx)
    # Shorter samples than the sessions case, more of them: the machine's load swings
    # within seconds, and only samples taken side by side compare.
    per_thread = 200 if ctx.quick else BOUNCER_TRANSACTIONS
    ids = [[t * per_thread + i for i in range(per_thread)] for t in range(SESSION_THREADS)]
    if bouncer is not None:
        url = bouncer.url(DBNAME)
        raw = RawPool(url, options=None)
        ctx.closers.append(raw.close)
        pooled = DatabaseConnection().initialize(url, pooler="transaction")
        timed = DatabaseConnection().initialize(url, pooler="transaction", statement_timeout=STATEMENT_TIMEOUT_MS)
        ctx.closers += [pooled.close, timed.close]

        def transaction_on(connection):
            def transaction(sql, params):
                with connection.session() as db:
                    return db.execute_sql(sql, params).fetchone()[0]
            return transaction

        default, with_timeout = "session(), pooler='transaction'", "session(), pooler='transaction', statement_timeout"
        contenders = [
            Contender("psycopg2 ThreadedConnectionPool via PgBouncer",
                      lambda: run_threads(raw.transaction, ids, SELECT_ONE), "reference",
                      note="getconn, BEGIN, SELECT %s, COMMIT, putconn; no ping, no settings"),
            Contender(default, lambda: run_threads(transaction_on(pooled), ids, SELECT_ONE),
                      note="pre-ping on; the server's time zone is UTC: BEGIN alone"),
            Contender(with_timeout, lambda: run_threads(transaction_on(timed), ids, SELECT_ONE),
                      note="BEGIN; SET LOCAL statement_timeout in the same round trip"),
        ]
        for c in contenders:
            c.check = lambda result: expect(result, ids, "values echoed by every transaction")
        yield Comparison(
            "scaleout", f"PgBouncer (transaction mode): {SESSION_THREADS} threads x {per_thread:,} SELECT 1 "
                        "transactions", SESSION_THREADS * per_thread, "transactions",
            "psycopg2 ThreadedConnectionPool via PgBouncer", contenders,
            [Target(name, "psycopg2 ThreadedConnectionPool via PgBouncer", "speed>=", 0.8)
             for name in (default, with_timeout)],
            min_repeat=11,
        )

    on_primary = DatabaseConnection().initialize(primary.url(DBNAME))
    on_standby = DatabaseConnection().initialize(standby.url(DBNAME))
    routed = DatabaseConnection().initialize(primary.url(DBNAME), replica_urls=[standby.url(DBNAME)])
    ctx.closers += [on_primary.close, on_standby.close, routed.close]
    symbols = [f"S{s:03d}" for s in range(SYMBOLS)]
    direct, via_replica = PriceRepository(on_primary), PriceRepository(routed)
    deadline = time.monotonic() + 10
    while not (routed.pool_status()["replicas"] and routed.pool_status()["replicas"][0]["idle"]):
        via_replica.latest(symbols[0])  # until the sampler has seen the replica caught up
        if time.monotonic() > deadline:
            raise RuntimeError("reads were never routed to the replica")
        time.sleep(0.05)
    routed.database.close_all()  # reads made before the sampler's first samples went to the primary
    expected = [direct.latest(s) for s in symbols]
    turn = iter(range(10**12))

    def latest_of(repo):
        return lambda: repo.latest(symbols[next(turn) % SYMBOLS])

    def right(result):
        assert result in expected, f"latest(): {result!r} is not the newest bar of a symbol"

    def right_and_routed(result):
        right(result)
        status = routed.pool_status()
        # The routed connection never touched its primary: every read was the replica's.
        assert status["in_use"] == 0 and status["idle"] == 0, status
        assert status["replicas"][0]["healthy"], status

    contenders = [
        Contender("latest() on the primary", latest_of(direct), "reference", check=right,
                  note="a DatabaseConnection without replicas"),
        Contender("latest() routed to the replica", latest_of(via_replica), check=right_and_routed,
                  note="replica_urls=[standby]: the lag-bound check, then a READ ONLY session there"),
        # What the standby itself costs, routing aside: the two servers differ.
        Contender("latest() on the standby, not routed", latest_of(PriceRepository(on_standby)), "reference",
                  check=right, note="a DatabaseConnection to the standby's URL"),
    ]
    # A difference of a few percent needs many samples of the same size on a shared
    # machine: warmed up here, then READS calls per sample for every contender.
    for contender in contenders:
        for _ in range(SYMBOLS):
            contender.check(contender.run())
        contender.inner = 1 if ctx.quick else READS
    yield Comparison(
        "scaleout", "one PriceRepository.latest() read, primary vs routed to a caught-up replica", 1, "reads",
        "latest() on the primary", contenders,
        [Target("latest() routed to the replica", "latest() on the primary", "time<=", 1.1)],
        warmup=False, min_repeat=31,
    )
