"""Small helpers shared by the reliability tests: server-side views and fault injection."""
from __future__ import annotations

import threading
import time
from contextlib import contextmanager

import peewee
import psycopg2

import marketstore
from marketstore.models import MODELS
from helpers import UTC, app_name, backend_pid, count_rows, eventually, price_row, truncate_all  # noqa: F401

DBNAME = "marketstore"  # the migrated database on the throwaway cluster
DRIVER_ERRORS = (psycopg2.Error, peewee.PeeweeException)


def query(conn, sql: str, params=None) -> list[tuple]:
    with conn.cursor() as cur:
        cur.execute(sql, params)
        return cur.fetchall() if cur.description else []


def backends(admin, application_name: str, state: str | None = None) -> list[int]:
    """Pids of the server connections with ``application_name`` (optionally in ``state``)."""
    sql = "SELECT pid FROM pg_stat_activity WHERE application_name = %s"
    params: tuple = (application_name,)
    if state is not None:
        sql += " AND state = %s"
        params += (state,)
    return [pid for (pid,) in query(admin, sql, params)]


def kill_backend(admin, pid: int, wait: bool = True) -> bool:
    """pg_terminate_backend(pid); with ``wait``, until the backend is gone."""
    killed = query(admin, "SELECT pg_terminate_backend(%s)", (pid,))[0][0]
    if killed and wait:
        gone = eventually(lambda: query(admin, "SELECT count(*) FROM pg_stat_activity WHERE pid = %s",
                                        (pid,))[0][0], 0)
        assert gone == 0, f"backend {pid} survived pg_terminate_backend"
    return killed


def snapshot(conn) -> dict[str, tuple]:
    """Row count and a digest of every table's content: equal snapshots, equal data."""
    result = {}
    for model in MODELS:
        table = model._meta.table_name
        result[table] = query(conn, f"SELECT count(*), md5(coalesce(string_agg(t::text, '|' ORDER BY t.id), '')) "
                                    f"FROM {table} t")[0]
    return result


def order_row(order_id: str, **overrides) -> dict:
    row = dict(order_id=order_id, symbol="AAPL", order_type="limit", side="buy", quantity=10, price=100)
    row.update(overrides)
    return row


def chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and everything it was raised from, and the arguments peewee wraps."""
    seen, todo = [], [exc]
    while todo and len(seen) < 20:
        cur = todo.pop()
        if cur is None or any(cur is s for s in seen):
            continue
        seen.append(cur)
        todo += [cur.__cause__, cur.__context__] + [a for a in getattr(cur, "args", ()) if isinstance(a, BaseException)]
    return seen


def pgcodes(exc: BaseException) -> set[str]:
    return {getattr(link, "pgcode", None) for link in chain(exc)} - {None}


class Threads:
    """Start threads that are always joined; errors they raise are collected, not lost."""

    def __init__(self):
        self.threads: list[threading.Thread] = []
        self.errors: list[BaseException] = []

    def start(self, target, *args) -> threading.Thread:
        def run():
            try:
                target(*args)
            except BaseException as exc:  # reported by join()
                self.errors.append(exc)

        thread = threading.Thread(target=run, daemon=True)
        self.threads.append(thread)
        thread.start()
        return thread

    def join(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        for thread in self.threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        alive = [t for t in self.threads if t.is_alive()]
        assert not alive, f"{len(alive)} thread(s) still running after {timeout} s: a hang"


@contextmanager
def held_sessions(n: int, connection=None, timeout: float = 30.0):
    """``n`` threads sitting inside a session until the block ends; yields their backend pids."""
    connection = connection or marketstore.db_connection
    inside = threading.Barrier(n + 1, timeout=timeout)
    release = threading.Event()
    pids: list[int] = []
    threads = Threads()

    def hold():
        try:
            with connection.session("hold") as db:
                pids.append(backend_pid(db))
                inside.wait()
                release.wait(timeout)
        except BaseException:
            inside.abort()
            raise

    for _ in range(n):
        threads.start(hold)
    try:
        try:
            inside.wait()
        except threading.BrokenBarrierError:
            pass
        if threads.errors:
            raise threads.errors[0]
        yield pids
    finally:
        release.set()
        threads.join(timeout)
    if threads.errors:
        raise threads.errors[0]
