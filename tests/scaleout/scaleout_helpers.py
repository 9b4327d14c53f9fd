"""Helpers of the scale-out tests (a module, not conftest.py: ``from conftest import``
is ambiguous across the test folders)."""
from __future__ import annotations

import time


from helpers import autocommit_connection
from pgcluster import Cluster

DBNAME = "marketstore"
REPLAY_TIMEOUT = 15.0  # seconds a standby gets to catch up


def wait_for(predicate, timeout: float = 10.0, interval: float = 0.02, what: str = "condition"):
    """Poll ``predicate()`` until it returns something true; returns it, or fails after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not reached in {timeout} s")
        time.sleep(interval)


def scalar(url: str, sql: str, params=None):
    """One value from a fresh autocommit connection (independent of the code under test)."""
    with autocommit_connection(url, connect_timeout=5) as conn, conn.cursor() as cur:
        cur.execute(sql, params)
        return cur.fetchone()[0]


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


