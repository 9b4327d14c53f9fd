"""Read replicas: routing, the lag bound, read-your-writes, failover to the primary, ReadOnlyError."""
from __future__ import annotations

import datetime as dt
import logging
import os
import threading
import time
import uuid

import psycopg2
import pytest

from marketstore import (
    DatabaseConnection,
    DatabaseConnectionError,
    OrderRepository,
    PriceRepository,
    QueryError,
    ReadOnlyError,
    database_proxy,
)
from scaleout_helpers import scalar, wait_for
from helpers import T0, UTC

MAX_LAG = 1.0


def bar(symbol: str, minute: int = 0) -> dict:
    return {"symbol": symbol, "timestamp": T0 + dt.timedelta(minutes=minute), "open": 10, "high": 11,
            "low": 9, "close": 10.5, "volume": 100}


def symbol() -> str:
    return "R" + uuid.uuid4().hex[:8].upper()


def served_by_replica(connection) -> bool:
    """Whether a read-only session of ``connection`` lands on the standby now."""
    with connection.session(read_only=True) as db:
        return db.execute_sql("SELECT pg_is_in_recovery()").fetchone()[0]


@pytest.fixture
def routed(primary_url, standby):
    """A connection to the primary with the standby as its replica, routing to it already."""
    connection = DatabaseConnection().initialize(primary_url, replica_urls=[standby.url()],
                                                 max_replica_lag=MAX_LAG, pool_timeout=5)
    wait_for(lambda: served_by_replica(connection), what="the replica serving reads")
    yield connection
    connection.close()


def test_read_only_session_and_database_proxy_reach_the_replica(routed, standby):
    with routed.session(read_only=True) as db:
        assert db.execute_sql("SELECT pg_is_in_recovery(), inet_server_port()").fetchone() == (True, standby.port)
        # Plain Peewee model queries inside the session go there too.
        assert database_proxy.obj is db
        assert database_proxy.execute_sql("SELECT pg_is_in_recovery()").fetchone()[0] is True
        assert db.execute_sql("SHOW transaction_read_only").fetchone()[0] == "on"
    with routed.session() as db:  # a write session: the primary, read-write
        assert db.execute_sql("SELECT pg_is_in_recovery()").fetchone()[0] is False
        assert db.execute_sql("SHOW transaction_read_only").fetchone()[0] == "off"


def test_lag_bound_moves_reads_to_the_primary_and_back(routed, standby, primary_url):
    prices = PriceRepository(routed)
    name = symbol()
    standby.pause_replay()
    try:
        # Written behind the package's back (no read-your-writes horizon): within
        # the bound the replica still serves, without the new row.
        raw = psycopg2.connect(primary_url)
        raw.autocommit = True
        with raw.cursor() as cur:
            cur.execute("INSERT INTO prices (symbol, timestamp, open, high, low, close, volume, interval) "
                        "VALUES (%s, %s, 1, 1, 1, 1, 1, '1m')", (name, T0))
        raw.close()
        written = time.monotonic()
        assert prices.latest(name) is None or time.monotonic() - written > MAX_LAG * 0.8
        # Past the bound the paused replica is too far behind: the primary serves.
        time.sleep(MAX_LAG + 0.3)
        assert prices.latest(name) is not None
        assert served_by_replica(routed) is False
        lagging = wait_for(lambda: [r for r in routed.pool_status()["replicas"]
                                    if r["healthy"] and (r["lag_seconds"] or 0) > MAX_LAG],
                           timeout=5, what="lag_seconds past the bound")
        assert lagging[0]["lag_seconds"] < 30
    finally:
        standby.resume_replay()
    wait_for(lambda: served_by_replica(routed), timeout=5, what="reads back on the caught-up replica")
    assert prices.latest(name) is not None


def test_read_your_writes_with_replay_paused(routed, standby):
    prices = PriceRepository(routed)
    name = symbol()
    standby.pause_replay()
    try:
        created = prices.create(**bar(name))
        # Immediately: the replica has not replayed it, so the primary serves the read.
        assert prices.get_by_id(created.id) == created
        assert [p.id for p in prices.get_range(name, T0, T0 + dt.timedelta(hours=1))] == [created.id]
        assert served_by_replica(routed) is False
    finally:
        standby.resume_replay()
    # Once the sampler has seen the replica replay past the write, it serves again, and sees it.
    wait_for(lambda: served_by_replica(routed), timeout=5, what="reads back on the replica")
    with routed.session(read_only=True):
        assert prices.latest(name) == created


def test_a_read_inside_a_write_session_joins_it(routed):
    prices = PriceRepository(routed)
    name = symbol()
    with routed.session() as db:
        created = prices.create(**bar(name))
        assert prices.get_by_id(created.id) == created  # uncommitted: only this transaction sees it
        assert db.execute_sql("SELECT pg_is_in_recovery()").fetchone()[0] is False


def test_writes_go_to_the_primary(routed, primary_url):
    name = symbol()
    created = PriceRepository(routed).create(**bar(name))
    assert scalar(primary_url, "SELECT count(*) FROM prices WHERE id = %s", (created.id,)) == 1


WRITES = {
    "create": lambda conn, name: PriceRepository(conn).create(**bar(name)),
    "copy_from": lambda conn, name: PriceRepository(conn).copy_from([bar(name, 1)]),
    "upsert_many": lambda conn, name: PriceRepository(conn).upsert_many([bar(name, 2)]),
    "delete_before": lambda conn, name: PriceRepository(conn).delete_before(T0),
    "transition": lambda conn, name: OrderRepository(conn).transition("no-such-order", "cancelled"),
    # database_proxy: the session's database, wherever it is
    "nextval": lambda conn, name: database_proxy.execute_sql("SELECT nextval('prices_id_seq')"),
    "insert": lambda conn, name: database_proxy.execute_sql(
        "INSERT INTO prices (symbol, timestamp, open, high, low, close, volume, interval) "
        "VALUES ('X', now(), 1, 1, 1, 1, 1, '1m')"),
}


@pytest.mark.parametrize("write", sorted(WRITES))
def test_a_write_in_a_read_only_session_on_the_replica_is_read_only_error(routed, write):
    with pytest.raises(ReadOnlyError):
        with routed.session(read_only=True) as db:
            assert db.execute_sql("SELECT pg_is_in_recovery()").fetchone()[0] is True
            WRITES[write](routed, symbol())


@pytest.mark.parametrize("write", sorted(WRITES))
def test_a_write_straight_to_a_standby_is_read_only_error(standby, write):
    connection = DatabaseConnection().initialize(standby.url(), pool_timeout=5)
    try:
        with pytest.raises(ReadOnlyError):
            with connection.session():
                WRITES[write](connection, symbol())
    finally:
        connection.close()


@pytest.mark.parametrize("write", ["create", "copy_from", "upsert_many", "insert"])
def test_a_write_in_a_read_only_session_on_the_primary_is_read_only_error(primary_url, write):
    # No replica: a read-only session is served by the primary, read-only still.
    connection = DatabaseConnection().initialize(primary_url, pool_timeout=5)
    try:
        with pytest.raises(ReadOnlyError):
            with connection.session(read_only=True) as db:
                assert db.execute_sql("SELECT pg_is_in_recovery()").fetchone()[0] is False
                WRITES[write](connection, symbol())
        assert not isinstance(ReadOnlyError("x"), DatabaseConnectionError) and issubclass(ReadOnlyError, QueryError)
    finally:
        connection.close()


def test_read_only_session_falls_back_to_the_primary_past_the_bound_and_stays_read_only(routed, standby,
                                                                                       primary_url):
    standby.pause_replay()
    try:
        scalar(primary_url, "SELECT txid_current()")  # a write the replica will not replay
        time.sleep(MAX_LAG + 0.3)
        with pytest.raises(ReadOnlyError):
            with routed.session(read_only=True) as db:
                assert db.execute_sql("SELECT pg_is_in_recovery()").fetchone()[0] is False
                PriceRepository(routed).create(**bar(symbol()))
    finally:
        standby.resume_replay()


def test_pool_status_lists_replicas_without_password(primary_url, standby, caplog):
    caplog.set_level(logging.DEBUG, logger="marketstore")
    url = standby.url(password="s3cret-Pw")  # trust auth: the server never asks for it
    connection = DatabaseConnection().initialize(primary_url, replica_urls=url, max_replica_lag=MAX_LAG,
                                                 pool_timeout=5)
    try:
        wait_for(lambda: served_by_replica(connection), what="the replica serving reads")
        [replica] = connection.pool_status()["replicas"]
        assert replica["url"] == f"postgresql://postgres:***@127.0.0.1:{standby.port}/marketstore"
        assert replica["healthy"] is True and replica["lag_seconds"] == 0.0
        assert replica["in_use"] == 0 and replica["idle"] == 1
        with connection.session(read_only=True):
            [replica] = connection.pool_status()["replicas"]
            assert replica["in_use"] == 1 and replica["idle"] == 0
        assert set(connection.pool_status()) == {"max_connections", "pool_size", "in_use", "idle", "replicas"}
        assert "s3cret" not in repr(connection.pool_status()) + repr(connection.settings) + caplog.text
    finally:
        connection.close()
    assert connection.pool_status()["replicas"] == []


def test_a_replica_connection_lost_midway_reruns_the_read_on_the_primary(routed, standby):
    name = f"ms_mid_{uuid.uuid4().hex[:8]}"
    connection = DatabaseConnection().initialize(routed.settings.safe_url().replace("***", ""),
                                                 replica_urls=[standby.url(application_name=name)],
                                                 max_replica_lag=MAX_LAG, pool_timeout=5)
    calls = []

    def slow_read():
        with connection.session("slow_read") as db:
            calls.append(db.execute_sql("SELECT pg_is_in_recovery()").fetchone()[0])
            db.execute_sql("SELECT pg_sleep(%s)", (10 if len(calls) == 1 else 0,))
            return calls[-1]

    def terminate():  # the first run's backend, once it sleeps (a loaded machine may take a while)
        wait_for(lambda: scalar(standby.url(), "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                                "WHERE application_name = %s AND query LIKE %s", (name, "%pg_sleep(10)%")),
                 timeout=10, interval=0.05, what="the replica backend to terminate")

    try:
        wait_for(lambda: served_by_replica(connection), what="the replica serving reads")
        killer = threading.Thread(target=terminate)
        killer.start()
        assert connection.read(slow_read) is False  # the second run: on the primary
        killer.join()
        assert calls == [True, False]
    finally:
        connection.close()


def test_replica_killed_mid_run_reads_keep_succeeding_with_one_warning(routed, standby, caplog):
    caplog.set_level(logging.WARNING, logger="marketstore")
    prices = PriceRepository(routed)
    name = symbol()
    created = prices.create(**bar(name))
    wait_for(lambda: served_by_replica(routed), timeout=5, what="the replica serving reads")
    errors, reads, stop = [], [0], threading.Event()

    def reader():
        while not stop.is_set():
            try:
                assert prices.get_by_id(created.id) == created
                reads[0] += 1
            except Exception as exc:  # noqa: BLE001 - collected for the assertion below
                errors.append(exc)

    threads = [threading.Thread(target=reader) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(0.3)
        before = reads[0]
        standby.kill()
        time.sleep(1.0)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert errors == []
    assert before > 0 and reads[0] > before
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert f"127.0.0.1:{standby.port}" in warnings[0].getMessage()
    assert served_by_replica(routed) is False
    assert routed.pool_status()["replicas"][0]["healthy"] is False


def test_through_pgbouncer_reads_go_to_the_replica_and_writes_through_pgbouncer(pgbouncer_url, standby, pgbouncer):
    connection = DatabaseConnection().initialize(pgbouncer_url, pooler="transaction", replica_urls=[standby.url()],
                                                 max_replica_lag=MAX_LAG, pool_timeout=5, statement_timeout=2000)
    try:
        wait_for(lambda: served_by_replica(connection), what="the replica serving reads")
        with connection.session(read_only=True) as db:
            assert db.execute_sql("SELECT pg_is_in_recovery(), inet_server_port(), current_setting('TimeZone'), "
                                  "current_setting('statement_timeout')").fetchone() == (True, standby.port,
                                                                                          "UTC", "2s")
        name = symbol()
        created = PriceRepository(connection).create(**bar(name))
        assert PriceRepository(connection).get_by_id(created.id) == created  # read-your-writes
        with connection.session() as db:
            assert db.execute_sql("SELECT pg_is_in_recovery()").fetchone()[0] is False
    finally:
        connection.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_samples_and_routes_on_its_own(routed):
    assert served_by_replica(routed)
    pid = os.fork()
    if pid == 0:  # the child: the parent's sampler threads did not survive the fork
        code = 1
        try:
            time.sleep(MAX_LAG + 0.3)  # the samples inherited from the parent are too old now
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                if served_by_replica(routed):
                    code = 0 if routed.pool_status()["replicas"][0]["healthy"] else 2
                    break
                time.sleep(0.05)
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0
    assert served_by_replica(routed)  # the parent's sampler and pools are untouched
