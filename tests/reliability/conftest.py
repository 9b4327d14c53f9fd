"""Fixtures of the reliability tests: a throwaway PostgreSQL cluster of their own.

These tests restart the server, kill backends and exhaust connections, so they
never touch the shared test server: the session starts its own cluster
(:mod:`pgcluster`), migrates one database on it, and always destroys it. Each
test gets empty tables, a pool with its own ``application_name`` (so server-side
counts see only that test's connections), and a raw autocommit connection as
the superuser for checks and for injecting faults.
"""
from __future__ import annotations

import atexit

import pytest

import marketstore

from pgcluster import Cluster, ClusterUnavailable
from helpers import autocommit_connection, initialized
from reliability_helpers import DBNAME, app_name


@pytest.fixture(scope="session")
def cluster():
    """The session's throwaway cluster, destroyed at the end (also at interpreter exit)."""
    try:
        server = Cluster.create()
    except ClusterUnavailable as exc:
        pytest.skip(str(exc))
    atexit.register(server.destroy)  # if pytest dies before the finalizer runs
    try:
        server.create_database(DBNAME)
        yield server
    finally:
        marketstore.close_database()
        server.destroy()


@pytest.fixture
def cluster_url(cluster) -> str:
    """Superuser URL of the migrated database; the server is up when the test starts."""
    cluster.ensure_running()  # a test that failed mid-restart must not break the next one
    return cluster.url(DBNAME)


@pytest.fixture
def admin(cluster_url):
    """A raw autocommit psycopg2 connection as the superuser, independent of the pool."""
    with autocommit_connection(cluster_url, application_name="reliability-admin") as conn:
        yield conn


@pytest.fixture
def store(cluster_url):
    """``marketstore.db_connection`` on empty tables with a unique application_name."""
    with initialized(cluster_url, application_name=app_name()) as connection:
        yield connection
