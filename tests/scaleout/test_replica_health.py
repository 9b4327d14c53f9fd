"""Replica health as reads meet it: a replica marked down, promoted, or only busy."""
from __future__ import annotations

import threading

import pytest

from marketstore import DatabaseConnection
from scaleout_helpers import DBNAME, scalar, wait_for

MAX_LAG = 1.0


def served_by(connection) -> int:
    """The port of the server a read-only session of ``connection`` lands on now."""
    with connection.session(read_only=True) as db:
        return db.execute_sql("SELECT inet_server_port()").fetchone()[0]


def replica_healthy(connection) -> bool:
    return connection.pool_status()["replicas"][0]["healthy"]


@pytest.fixture
def routed(primary_url, standby):
    connection = DatabaseConnection().initialize(primary_url, replica_urls=[standby.url()],
                                                 max_replica_lag=MAX_LAG, pool_size=1, max_overflow=0,
                                                 pool_timeout=0)
    wait_for(lambda: served_by(connection) == standby.port, what="the replica serving reads")
    yield connection
    connection.close()


def test_a_replica_marked_failed_is_not_tried_first(routed, primary):
    sampler = routed._router.sampler
    replica = sampler.replicas[0]
    # A sample taken between these lines would mark it back: retry until one is not.
    for _ in range(20):
        sampler.failed(replica.db, RuntimeError("connection refused"))
        if served_by(routed) == primary.port:
            return
    pytest.fail("reads kept going to the replica marked failed")


def test_a_busy_replica_sends_the_read_to_the_primary_and_stays_healthy(routed, primary, standby):
    holding, release = threading.Event(), threading.Event()

    def hold():
        with routed.session(read_only=True) as db:  # the replica's only connection
            assert db.execute_sql("SELECT inet_server_port()").fetchone()[0] == standby.port
            holding.set()
            release.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert holding.wait(10)
        assert served_by(routed) == primary.port
        assert replica_healthy(routed)
    finally:
        release.set()
        holder.join()
    wait_for(lambda: served_by(routed) == standby.port, what="the replica serving reads again")


def test_a_promoted_standby_is_no_longer_a_replica(primary, primary_url):
    promoted = primary.create_standby()
    try:
        url = promoted.url(DBNAME)
        connection = DatabaseConnection().initialize(primary_url, replica_urls=[url], max_replica_lag=MAX_LAG)
        try:
            wait_for(lambda: served_by(connection) == promoted.port, what="the standby serving reads")
            assert scalar(url, "SELECT pg_promote(true, 30)") is True
            wait_for(lambda: not replica_healthy(connection), what="the promoted standby marked down")
            assert served_by(connection) == primary.port
        finally:
            connection.close()
    finally:
        promoted.destroy()
