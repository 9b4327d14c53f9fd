"""Fixtures of the scale-out tests: a primary with a streaming standby, and a PgBouncer.

Each is started once per test session on loopback and always torn down:

* ``primary``: a throwaway cluster (``pgcluster.Cluster``) with WAL for
  streaming, its database ``marketstore`` migrated;
* ``standby``: a hot standby of it (``pg_basebackup -R``) on another port,
  with helpers to pause and resume replay, and to kill and restart it;
* ``pgbouncer``: Debian's PgBouncer in transaction mode in front of the
  primary. Without the binary these tests skip, except under CI (``CI`` set),
  where ``.ci/run`` installs it and a skip would hide a failure.
"""
from __future__ import annotations

import atexit
import os
import sys
import time
from pathlib import Path

import psycopg2
import pytest

import marketstore

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "reliability"))
from pgcluster import Cluster, ClusterUnavailable  # noqa: E402
from pgbouncer import PgBouncer, find_pgbouncer  # noqa: E402

DBNAME = "marketstore"
REPLAY_TIMEOUT = 15.0  # seconds a standby gets to catch up


def scalar(url: str, sql: str, params=None):
    """One value from a fresh autocommit connection (independent of the code under test)."""
    conn = psycopg2.connect(url, connect_timeout=5)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(sql, params)
            return cur.fetchone()[0]
    finally:
        conn.close()


def wait_replayed(primary_url: str, standby_url: str, timeout: float = REPLAY_TIMEOUT) -> None:
    """Wait until the standby has replayed everything the primary has written so far."""
    target = scalar(primary_url, "SELECT pg_current_wal_lsn()::text")
    deadline = time.monotonic() + timeout
    while True:
        if scalar(standby_url, "SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", (target,)):
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"standby did not replay up to {target} in {timeout} s")
        time.sleep(0.02)


class Standby:
    """The standby cluster and what the tests do to it."""

    def __init__(self, cluster: Cluster, primary: Cluster):
        self.cluster, self.primary = cluster, primary

    def url(self, dbname: str = DBNAME, **params) -> str:
        return self.cluster.url(dbname, **params)

    @property
    def port(self) -> int:
        return self.cluster.port

    def pause_replay(self) -> None:
        scalar(self.url(), "SELECT pg_wal_replay_pause()::text")
        deadline = time.monotonic() + REPLAY_TIMEOUT
        while scalar(self.url(), "SELECT pg_get_wal_replay_pause_state()") != "paused":
            if time.monotonic() > deadline:
                raise AssertionError("standby replay did not pause")
            time.sleep(0.01)

    def resume_replay(self) -> None:
        scalar(self.url(), "SELECT pg_wal_replay_resume()::text")

    def caught_up(self, timeout: float = REPLAY_TIMEOUT) -> None:
        wait_replayed(self.primary.url(DBNAME), self.url(), timeout)

    def kill(self) -> None:
        self.cluster.kill()

    def ensure_running(self) -> None:
        """Started again (after :meth:`kill`), replay resumed, caught up with the primary."""
        self.cluster.ensure_running()
        if scalar(self.url(), "SELECT pg_get_wal_replay_pause_state()") != "not paused":
            self.resume_replay()
        self.caught_up()


@pytest.fixture(scope="session")
def primary():
    """A throwaway primary (WAL for a standby), database ``marketstore`` migrated."""
    try:
        server = Cluster.create(wal_level="replica", max_wal_senders=10, hot_standby="on",
                                wal_keep_size="'256MB'", max_connections=200)
    except ClusterUnavailable as exc:
        pytest.skip(str(exc))
    atexit.register(server.destroy)  # if pytest dies before the finalizer runs
    try:
        admin = psycopg2.connect(server.url())
        admin.autocommit = True
        with admin.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{DBNAME}"')
        admin.close()
        marketstore.run_migrations(server.url(DBNAME))
        marketstore.close_database()
        yield server
    finally:
        server.destroy()


@pytest.fixture(scope="session")
def primary_url(primary) -> str:
    return primary.url(DBNAME)


@pytest.fixture(scope="session")
def standby_cluster(primary):
    cluster = primary.create_standby()
    atexit.register(cluster.destroy)
    try:
        yield Standby(cluster, primary)
    finally:
        cluster.destroy()


@pytest.fixture
def standby(standby_cluster) -> Standby:
    """The standby, running, replaying and caught up when the test starts."""
    standby_cluster.ensure_running()
    return standby_cluster


@pytest.fixture(scope="session")
def pgbouncer_binary() -> str:
    binary = find_pgbouncer()
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("pgbouncer is missing under CI: .ci/run installs it (apt-get install pgbouncer)")
        pytest.skip("pgbouncer not installed (Debian: apt-get install pgbouncer)")
    return binary


@pytest.fixture(scope="session")
def pgbouncer(primary, pgbouncer_binary):
    """PgBouncer, transaction mode, in front of the primary (default_pool_size 20)."""
    bouncer = PgBouncer.start(primary.port, binary=pgbouncer_binary)
    atexit.register(bouncer.stop)
    try:
        yield bouncer
    finally:
        bouncer.stop()


@pytest.fixture(scope="session")
def pgbouncer_url(pgbouncer) -> str:
    """The migrated database, through PgBouncer."""
    return pgbouncer.url(DBNAME)
