"""A bounded, self-healing pool of psycopg2 connections.

The semantics of the original design (SQLAlchemy's ``QueuePool(pool_size=10,
max_overflow=20, pool_timeout=30, pool_recycle=3600, pool_pre_ping=True)``):

* at most ``max_connections`` open; a checkout that finds them all in use
  waits up to ``timeout`` seconds, then raises ``PoolExhaustedError``;
* at most ``pool_size`` idle: a connection returned while that many are idle
  is closed;
* a connection older than ``recycle`` seconds (counted from its creation) is
  closed instead of reused;
* with ``pre_ping``, a connection the server dropped is found at checkout and
  replaced, so the caller never sees it.

The pool knows nothing of Peewee: :class:`~marketstore.database.PooledPostgresqlExtDatabase`
delegates its ``_connect``/``_close`` to it. New connections are opened
outside the pool's lock, so one slow connect (an unreachable host) never
stalls the check-ins and status reads of other threads.
"""
from __future__ import annotations

import logging
import math
import os
import select
import threading
import time
import weakref
from typing import Any, Callable, NamedTuple

from psycopg2.extensions import TRANSACTION_STATUS_IDLE, TRANSACTION_STATUS_UNKNOWN

from .errors import DRIVER_ERRORS, PoolExhaustedError

logger = logging.getLogger(__name__)

# An idle connection older than this also gets a real round-trip ping at checkout;
# younger ones are checked with a zero-timeout poll of the socket (see _alive).
FULL_PING_AFTER_IDLE = 10.0


class _Idle(NamedTuple):
    conn: Any
    created: float
    returned: float


class _Busy(NamedTuple):
    conn: Any
    created: float
    checked_out: float


class ConnectionPool:
    """Connections made by ``connect()`` (a callable), handed out one per checkout.

    ``timeout`` is the longest a checkout waits for a free slot: ``0`` means
    not at all, ``math.inf`` for ever. ``pool_size=None`` keeps every
    returned connection; ``recycle=None`` never retires one for age.
    Thread-safe; after ``os.fork()`` the child starts with an empty pool (the
    parent's connections are forgotten, never closed: closing would end the
    parent's sessions on the server).
    """

    def __init__(self, connect: Callable[[], Any], *, max_connections: int | None = 30,
                 pool_size: int | None = None, timeout: float = 0.0, recycle: float | None = None,
                 pre_ping: bool = False):
        self._new = connect
        self._lock = threading.Lock()  # entered directly: Condition's own __enter__ is Python code
        self._cond = threading.Condition(self._lock)
        self._waiting = 0  # checkouts waiting for a slot: check-ins notify only then
        self._idle: list[_Idle] = []  # LIFO: the warmest connection first
        self._busy: dict[int, _Busy] = {}  # id(conn) -> slot
        self._opening = 0  # connects in progress: slots taken, no connection yet
        self.max_connections = max_connections
        self.pool_size = pool_size
        self.timeout = timeout
        self.recycle = recycle
        self.pre_ping = pre_ping
        _POOLS.add(self)

    def configure(self, *, max_connections=None, pool_size=None, timeout=None, recycle=None,
                  pre_ping=None) -> None:
        """Change the limits given (``None`` keeps one); they apply from the next checkout."""
        with self._lock:
            for name, value in (("max_connections", max_connections), ("pool_size", pool_size),
                                ("timeout", timeout), ("recycle", recycle), ("pre_ping", pre_ping)):
                if value is not None:
                    setattr(self, name, value)
            self._notify(every=True)

    # -- checkout -------------------------------------------------------------
    def checkout(self):
        """A live connection, waiting up to ``timeout`` for a free slot.

        Raises ``PoolExhaustedError`` when none frees in time, and whatever
        ``connect()`` raises when a new connection cannot be opened.
        """
        deadline = None
        while True:
            with self._lock:
                while not self._idle and self._full():
                    if deadline is None:
                        deadline = time.monotonic() + self.timeout
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise PoolExhaustedError(
                            f"all {self.max_connections} connections in use"
                            + (f" for {self.timeout:g} s (pool_timeout)" if self.timeout else ""))
                    self._waiting += 1
                    try:
                        self._cond.wait(remaining if remaining < math.inf else None)
                    finally:
                        self._waiting -= 1
                if not self._idle:
                    self._opening += 1
                    break
                conn, created, returned = self._idle.pop()
                # Counted as in use while it is checked: the check may be a round trip,
                # which must not hold the lock (a server that does not answer would
                # otherwise stall every checkout, check-in and status read).
                self._busy[id(conn)] = _Busy(conn, created, time.monotonic())
            if not self._expired(created) and self._alive(conn, returned):
                return conn
            self._forget(conn)
            self._close_raw(conn)
        try:
            conn = self._new()
        except BaseException:
            with self._lock:
                self._opening -= 1
                self._notify()
            raise
        now = time.monotonic()
        with self._lock:
            self._opening -= 1
            self._busy[id(conn)] = _Busy(conn, now, now)
        return conn

    def _notify(self, every: bool = False) -> None:
        """Wake waiting checkouts (called holding the lock)."""
        if self._waiting:
            self._cond.notify_all() if every else self._cond.notify()

    def _full(self) -> bool:
        cap = self.max_connections
        return bool(cap) and len(self._busy) + self._opening >= cap

    def _expired(self, created: float) -> bool:
        return bool(self.recycle) and time.monotonic() - created > self.recycle

    def _alive(self, conn, returned: float) -> bool:
        if conn.closed or conn.get_transaction_status() != TRANSACTION_STATUS_IDLE:
            return False
        if not self.pre_ping:
            return True
        # A backend that was terminated (pg_terminate_backend, restart, crash)
        # has sent its FATAL message and closed the socket, so the socket polls
        # readable; a healthy idle connection has nothing to read. That costs a
        # syscall instead of a round trip on every checkout.
        poller = select.poll()
        poller.register(conn.fileno(), select.POLLIN | select.POLLERR | select.POLLHUP)
        if poller.poll(0):
            return False
        if time.monotonic() - returned < FULL_PING_AFTER_IDLE:
            return True
        # Long idle: a silent network drop would not show on the socket.
        autocommit = conn.autocommit
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT 1")
            if not autocommit:
                conn.rollback()
            return True
        except DRIVER_ERRORS:
            return False

    # -- check-in -------------------------------------------------------------
    def checkin(self, conn, discard: bool = False) -> None:
        """Give ``conn`` back: kept idle, or closed when ``discard``, broken, too old or surplus.

        A connection the pool does not know (closed by :meth:`close_all` or
        :meth:`close_stale` meanwhile, or inherited across ``fork()``) is left alone.
        """
        slot = self._busy.get(id(conn))  # a dict read: atomic, no lock needed
        if slot is None or slot.conn is not conn:
            logger.debug("connection %x not checked out of this pool: ignored", id(conn))
            return
        # _reusable() may roll back (a round trip): not under the lock.
        keep = not discard and not self._expired(slot.created) and self._reusable(conn)
        with self._lock:
            if self._busy.pop(id(conn), None) is None:  # closed by close_all() meanwhile
                return
            keep = keep and (self.pool_size is None or len(self._idle) < self.pool_size)
            if keep:
                self._idle.append(_Idle(conn, slot.created, time.monotonic()))
            self._notify()
        if not keep:
            self._close_raw(conn)

    def _forget(self, conn) -> None:
        with self._lock:
            self._busy.pop(id(conn), None)
            self._notify()

    @staticmethod
    def _reusable(conn) -> bool:
        if conn.closed:
            return False
        status = conn.get_transaction_status()
        if status == TRANSACTION_STATUS_UNKNOWN:
            return False
        if status != TRANSACTION_STATUS_IDLE:
            try:
                conn.rollback()
            except DRIVER_ERRORS:
                return False
        return True

    @staticmethod
    def _close_raw(conn) -> None:
        try:
            conn.close()
        except DRIVER_ERRORS:
            logger.debug("closing a broken connection failed", exc_info=True)

    # -- maintenance ----------------------------------------------------------
    def close_idle(self) -> int:
        """Close every idle connection; returns how many."""
        with self._lock:
            idle, self._idle = self._idle, []
        for entry in idle:
            self._close_raw(entry.conn)
        return len(idle)

    def close_stale(self, age: float = 600) -> int:
        """Close connections checked out more than ``age`` seconds ago (their users' next query fails)."""
        cutoff = time.monotonic() - age
        with self._lock:
            stale = [slot for slot in self._busy.values() if slot.checked_out < cutoff]
            for slot in stale:
                del self._busy[id(slot.conn)]
            self._notify(every=True)
        for slot in stale:
            self._close_raw(slot.conn)
        return len(stale)

    def close_all(self) -> None:
        """Close every connection, idle or in use (other threads' queries then fail)."""
        with self._lock:
            busy, self._busy = list(self._busy.values()), {}
            self._notify(every=True)
        self.close_idle()
        for slot in busy:
            self._close_raw(slot.conn)

    def dispose(self) -> None:
        """Forget every connection without closing it: for a child process after ``fork()``."""
        # The parent's lock may have been held by one of its other threads.
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._idle, self._busy, self._opening, self._waiting = [], {}, 0, 0

    def status(self) -> dict:
        """``{'max_connections', 'pool_size', 'in_use', 'idle'}``."""
        with self._lock:
            return {"max_connections": self.max_connections, "pool_size": self.pool_size,
                    "in_use": len(self._busy) + self._opening, "idle": len(self._idle)}


_POOLS: "weakref.WeakSet[ConnectionPool]" = weakref.WeakSet()


def _after_fork_in_child() -> None:
    # Preforking servers (gunicorn, uvicorn workers) fork after the parent may
    # have used the pool: a child reusing those sockets would interleave its
    # protocol messages with the parent's on one server session.
    for pool in list(_POOLS):
        pool.dispose()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
