"""The pool's idle grace: connections beyond ``pool_size`` idle close after a short
grace instead of at once, so a steady load above ``pool_size`` in flight reuses its
connections, and a pool that falls quiet still shrinks to ``pool_size`` within about
a second. Observed from the server (``pg_stat_activity``), on the real database.
"""
from __future__ import annotations

import random
import threading
import time

import pytest

from marketstore import ConfigurationError, DatabaseConnection
from marketstore.config import load_settings
from helpers import eventually


def server_connections(raw, conn: DatabaseConnection) -> int:
    with raw.cursor() as cur:
        cur.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
                    (conn.settings.application_name,))
        return cur.fetchone()[0]


def burst(conn: DatabaseConnection, n: int) -> set[int]:
    """``n`` sessions open at once (all inside before any leaves); their backend pids."""
    inside = threading.Barrier(n, timeout=30)
    pids: set[int] = set()

    def hold():
        with conn.session("burst") as db:
            pids.add(db.execute_sql("SELECT pg_backend_pid()").fetchone()[0])
            inside.wait()

    threads = [threading.Thread(target=hold) for _ in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(pids) == n
    return pids


def test_the_grace_is_a_setting_with_a_default_of_one_second(monkeypatch):
    url = "postgresql://u@h/d"
    assert load_settings(url, environ={}).pool_idle_grace == 1.0
    assert load_settings(url, environ={"MARKETSTORE_POOL_IDLE_GRACE": "0.25"}).pool_idle_grace == 0.25
    assert load_settings(url, environ={}, pool_idle_grace=0).pool_idle_grace == 0
    with pytest.raises(ConfigurationError, match="MARKETSTORE_POOL_IDLE_GRACE"):
        load_settings(url, environ={"MARKETSTORE_POOL_IDLE_GRACE": "-1"})


def test_after_a_burst_the_surplus_closes_within_the_grace_with_no_further_call(pool, raw):
    conn = pool()  # defaults: 10 kept, 20 overflow, 1 s grace
    burst(conn, 30)
    ended = time.monotonic()  # the grace runs from each check-in: on a loaded machine the burst takes a while
    # Within the grace the surplus waits to be reused...
    if time.monotonic() - ended < 0.5:
        assert conn.pool_status()["idle"] > 10
    # ...and after it is closed by the pool itself: no call is made here.
    time.sleep(max(0.0, ended + 1.5 - time.monotonic()))
    assert conn.pool_status()["idle"] <= 10
    assert eventually(lambda: server_connections(raw, conn), 10) == 10


def test_after_a_burst_the_next_call_trims_the_surplus_that_outstayed_the_grace(pool, raw):
    conn = pool(pool_idle_grace=0.3)
    burst(conn, 30)
    conn.database._pool._trimmer.cancel()  # leave trimming to the next call alone
    time.sleep(0.5)
    with conn.session() as db:
        db.execute_sql("SELECT 1")
    # The checkout closed the 19 that outstayed the grace; the connection it just
    # returned is the one surplus left, in a grace of its own.
    assert conn.pool_status()["idle"] == 11
    assert eventually(lambda: server_connections(raw, conn), 11) == 11


def test_a_connection_taken_again_within_the_grace_is_reused(pool, raw):
    conn = pool(pool_size=1, max_overflow=1)
    first = burst(conn, 2)
    with conn.session() as db:  # both are idle: one beyond pool_size, in its grace
        assert db.execute_sql("SELECT pg_backend_pid()").fetchone()[0] in first
    assert burst(conn, 2) == first  # neither was closed: no new backend
    assert server_connections(raw, conn) == 2


def test_without_a_grace_the_surplus_closes_at_check_in(pool, raw):
    conn = pool(pool_idle_grace=0)
    burst(conn, 30)
    assert conn.pool_status()["idle"] == 10
    assert eventually(lambda: server_connections(raw, conn), 10) == 10


def steady_load(conn: DatabaseConnection, threads: int, seconds: float) -> tuple[int, set]:
    """``threads`` threads looping short sessions (a few ms apart) for ``seconds``;
    (sessions run, distinct backends).

    A backend is (pid, backend_start): a pid can be reused by a later backend.
    """
    seen: set = set()
    done = [0]
    errors: list[BaseException] = []
    stop = time.monotonic() + seconds
    lock = threading.Lock()

    def loop():
        pause = random.Random(threading.get_ident()).uniform
        try:
            while time.monotonic() < stop:
                time.sleep(pause(0, 0.005))  # between requests: a service's pace, not a tight loop
                with conn.session("steady") as db:
                    backend = db.execute_sql(
                        "SELECT pid, backend_start FROM pg_stat_activity WHERE pid = pg_backend_pid()").fetchone()
                with lock:
                    seen.add(backend)
                    done[0] += 1
        except BaseException as exc:  # reported below
            errors.append(exc)

    workers = [threading.Thread(target=loop) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(seconds + 30)
    assert not errors, errors[0]
    return done[0], seen


@pytest.mark.parametrize("grace", [1.0, 0.0])
def test_a_steady_30_way_load_opens_no_backend_per_request(pool, grace):
    conn = pool(pool_idle_grace=grace)
    sessions, backends = steady_load(conn, 30, 2.0)
    assert sessions > 300
    if grace:
        assert len(backends) <= 30 + 2
    else:  # the churn without the grace, what the grace is for: more backends than the 30 a load needs
        assert len(backends) > 40  # (fewer on a loaded machine, where fewer requests overlap)
