"""Fixtures of the scale-out tests: a primary with a streaming standby, and a PgBouncer.

Each is started once per test session on loopback and always torn down:

* ``primary``: a throwaway cluster (``pgcluster.Cluster``) with WAL for
  streaming, its database ``marketstore`` migrated, its time zone not UTC;
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
from pathlib import Path

import psycopg2
import pytest

import marketstore

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "reliability"))
from pgcluster import Cluster, ClusterUnavailable  # noqa: E402
from pgbouncer import PgBouncer, find_pgbouncer  # noqa: E402
from scaleout_helpers import DBNAME, Standby  # noqa: E402


@pytest.fixture(scope="session")
def primary():
    """A throwaway primary (WAL for a standby), database ``marketstore`` migrated."""
    try:
        # Not UTC (+05:30): a session that missed its UTC setting returns visibly wrong offsets.
        server = Cluster.create(wal_level="replica", max_wal_senders=10, hot_standby="on",
                                wal_keep_size="'256MB'", max_connections=200, timezone="'Asia/Kolkata'")
    except ClusterUnavailable as exc:
        pytest.skip(str(exc))
    atexit.register(server.destroy)  # if pytest dies before the finalizer runs
    try:
        server.create_database(DBNAME)
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
