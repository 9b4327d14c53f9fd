"""A bounded, self-healing pool of psycopg2 connections.

The semantics of the original design (SQLAlchemy's ``QueuePool(pool_size=10,
max_overflow=20, pool_timeout=30, pool_recycle=3600, pool_pre_ping=True)``):

* at most ``max_connections`` open; a checkout that finds them all in use
  waits up to ``timeout`` seconds, then raises ``PoolExhaustedError``;
* at most ``pool_size`` idle once quiet: a connection returned while that
  many are idle is closed, at once or, with ``idle_grace``, when it has stayed
  idle that long (a steady load above ``pool_size`` in flight then reuses its
  connections instead of opening a backend per request, as HikariCP's
  ``idleTimeout`` and PgBouncer's ``server_idle_timeout`` do);
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
import threading
import time
from typing import Any, Callable

from psycopg2.extensions import POLL_OK, TRANSACTION_STATUS_IDLE, TRANSACTION_STATUS_UNKNOWN

from .errors import DRIVER_ERRORS, PoolExhaustedError
from .forksafe import on_fork_in_child

logger = logging.getLogger(__name__)

# An idle connection older than this also gets a real round-trip ping at checkout;
# younger ones are checked with a zero-timeout poll of the socket (see _alive).
FULL_PING_AFTER_IDLE = 10.0


# Entries are plain tuples (a NamedTuple costs a microsecond to build, twice per
# transaction): idle (conn, created, returned); busy id(conn) -> (conn, created,
# checked_out). Times are time.monotonic().
class ConnectionPool:
    """Connections made by ``connect()`` (a callable), handed out one per checkout.

    ``timeout`` is the longest a checkout waits for a free slot: ``0`` means
    not at all, ``math.inf`` for ever. ``pool_size=None`` keeps every
    returned connection; ``recycle=None`` never retires one for age. With
    ``pre_ping``, a checkout reads what the server sent an idle connection
    (a terminated backend's last words) without a round trip, and sends a
    ``SELECT 1`` when the connection was idle ``ping_after_idle`` seconds or
    more (``None``: :data:`FULL_PING_AFTER_IDLE`; ``0``: every checkout).
    ``idle_grace`` (seconds; ``0``: close at once) is how long a connection
    beyond ``pool_size`` idle may wait to be taken again before it is closed:
    checkouts and check-ins close the surplus that outstayed it, and when
    surplus is left behind a one-shot timer closes it after the grace, so a
    pool that falls quiet shrinks to ``pool_size`` without another call.
    Thread-safe; after ``os.fork()`` the child starts with an empty pool (the
    parent's connections are forgotten, never closed: closing would end the
    parent's sessions on the server).
    """

    def __init__(self, connect: Callable[[], Any], *, max_connections: int | None = 30,
                 pool_size: int | None = None, timeout: float = 0.0, recycle: float | None = None,
                 pre_ping: bool = False, ping_after_idle: float | None = None, idle_grace: float = 0.0):
        self.connect = connect  # makes a new connection (an attribute: telemetry times it)
        self._lock = threading.Lock()  # entered directly: Condition's own __enter__ is Python code
        self._cond = threading.Condition(self._lock)
        self._waiting = 0  # checkouts waiting for a slot: check-ins notify only then
        self._idle: list[tuple] = []  # LIFO: the warmest connection first
        self._busy: dict[int, tuple] = {}
        self._opening = 0  # connects in progress: slots taken, no connection yet
        self.max_connections = max_connections
        self.pool_size = pool_size
        self.timeout = timeout
        self.recycle = recycle
        self.pre_ping = pre_ping
        self.ping_after_idle = ping_after_idle
        self.idle_grace = idle_grace
        self._trimmer: threading.Timer | None = None  # pending one-shot trim of surplus idle
        on_fork_in_child(self.dispose)

    def configure(self, *, max_connections=None, pool_size=None, timeout=None, recycle=None,
                  pre_ping=None, ping_after_idle=None, idle_grace=None) -> None:
        """Change the limits given (``None`` keeps one); they apply from the next checkout."""
        with self._lock:
            for name, value in (("max_connections", max_connections), ("pool_size", pool_size),
                                ("timeout", timeout), ("recycle", recycle), ("pre_ping", pre_ping),
                                ("ping_after_idle", ping_after_idle), ("idle_grace", idle_grace)):
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
                idle = self._idle
                conn, created, returned = idle.pop()
                now = time.monotonic()
                # Counted as in use while it is checked: the check may be a round trip,
                # which must not hold the lock (a server that does not answer would
                # otherwise stall every checkout, check-in and status read).
                self._busy[id(conn)] = (conn, created, now)
                # LIFO leaves the least recently used at the bottom: retire it when it
                # has outlived `recycle`, one per checkout, so a quiet pool shrinks too.
                recycle = self.recycle
                stale = idle.pop(0) if recycle and idle and now - idle[0][1] > recycle else None
                surplus = self._surplus(now) if len(idle) > (self.pool_size or len(idle)) else None
            if stale is not None:
                self._close_raw(stale[0])
            if surplus:
                self._close_all_raw(surplus)
            if not (recycle and now - created > recycle) and self._alive(conn, now - returned):
                return conn
            self._forget(conn)
            self._close_raw(conn)
        try:
            conn = self.connect()
        except BaseException:
            with self._lock:
                self._opening -= 1
                self._notify()
            raise
        now = time.monotonic()
        with self._lock:
            self._opening -= 1
            self._busy[id(conn)] = (conn, now, now)
        return conn

    def _notify(self, every: bool = False) -> None:
        """Wake waiting checkouts (called holding the lock)."""
        if self._waiting:
            self._cond.notify_all() if every else self._cond.notify()

    def _full(self) -> bool:
        cap = self.max_connections
        return bool(cap) and len(self._busy) + self._opening >= cap

    def _alive(self, conn, idle_for: float) -> bool:
        if conn.closed or conn.get_transaction_status() != TRANSACTION_STATUS_IDLE:
            return False
        if not self.pre_ping:
            return True
        # A backend that was terminated (pg_terminate_backend, restart, crash)
        # has sent its FATAL message and closed the socket. conn.poll() reads
        # what arrived without blocking and without releasing the GIL (a
        # select() here cost a GIL handoff per checkout under contention): the
        # end of the stream raises, and the FATAL message arrives as a notice.
        # Any notice on an idle connection is reason enough to replace it.
        notices = conn.notices
        last = notices[-1] if notices else None
        try:
            if conn.poll() != POLL_OK:
                return False
        except DRIVER_ERRORS:
            return False
        if notices and notices[-1] is not last:
            return False
        after = self.ping_after_idle
        if idle_for < (FULL_PING_AFTER_IDLE if after is None else after):
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
        if slot is None or slot[0] is not conn:
            logger.debug("connection %x not checked out of this pool: ignored", id(conn))
            return
        created, now, recycle = slot[1], time.monotonic(), self.recycle
        # _reusable() may roll back (a round trip): not under the lock.
        keep = not discard and not (recycle and now - created > recycle) and self._reusable(conn)
        surplus = timer = None
        with self._lock:
            if self._busy.pop(id(conn), None) is None:  # closed by close_all() meanwhile
                return
            idle, size = self._idle, self.pool_size
            if keep and size is not None and len(idle) >= size:
                # Beyond pool_size: kept for the grace (closed at once without one), and
                # whatever surplus outstayed it goes now.
                keep = self.idle_grace > 0
                if keep:
                    surplus = self._surplus(now)
                    if self._trimmer is None:
                        timer = self._new_trimmer()
            if keep:
                idle.append((conn, created, now))
            if self._waiting:  # _notify(), without a call per transaction
                self._cond.notify()
        if timer is not None:
            timer.start()  # outside the lock: starting a thread waits for it
        if not keep:
            self._close_raw(conn)
        if surplus:
            self._close_all_raw(surplus)

    # -- the idle grace (called holding the lock) ------------------------------
    def _surplus(self, now: float) -> list:
        """Remove and return the idle connections beyond ``pool_size`` idle longer than the grace."""
        idle, size, grace = self._idle, self.pool_size or 0, self.idle_grace
        # LIFO: the list is in check-in order, the longest idle first.
        count = 0
        while len(idle) - count > size and now - idle[count][2] >= grace:
            count += 1
        if not count:
            return []
        surplus = idle[:count]
        del idle[:count]
        return surplus

    def _new_trimmer(self, delay: float | None = None) -> threading.Timer:
        """The pool's one pending trim in ``delay`` seconds (default: the grace), made (the caller
        starts it, outside the lock)."""
        # Only while surplus exists: a pool at or under pool_size idle runs no
        # thread. A little after the grace, so the connections it finds have
        # outstayed it.
        delay = self.idle_grace if delay is None else delay
        timer = self._trimmer = threading.Timer(delay + 0.05, self._trim)
        timer.daemon = True
        timer.name = "marketstore-pool-trim"
        return timer

    def _trim(self) -> None:
        """The timer's work: close the surplus that outstayed the grace; again later if some is left."""
        timer = None
        with self._lock:
            if self._trimmer is not threading.current_thread():  # disposed or replaced meanwhile
                return
            self._trimmer = None
            now = time.monotonic()
            surplus = self._surplus(now)
            if self.pool_size is not None and len(self._idle) > self.pool_size and self.idle_grace > 0:
                # Again when the oldest left outstays its grace, not a whole grace from now: a burst's
                # check-ins spread over time would otherwise keep its last ones twice as long.
                timer = self._new_trimmer(max(0.0, self._idle[0][2] + self.idle_grace - now))
        if timer is not None:
            timer.start()
        self._close_all_raw(surplus)

    def _close_all_raw(self, entries) -> None:
        for entry in entries:
            self._close_raw(entry[0])

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
                if conn.autocommit:  # a transaction begun as SQL (behind PgBouncer): psycopg2's rollback() is a no-op
                    with conn.cursor() as cursor:
                        cursor.execute("ROLLBACK")
                else:
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
        """Close every idle connection (surplus in its grace too); returns how many."""
        with self._lock:
            idle, self._idle = self._idle, []
        self._close_all_raw(idle)
        return len(idle)

    def close_stale(self, age: float = 600) -> int:
        """Close connections checked out more than ``age`` seconds ago (their users' next query fails)."""
        cutoff = time.monotonic() - age
        with self._lock:
            stale = [slot[0] for slot in self._busy.values() if slot[2] < cutoff]
            for conn in stale:
                del self._busy[id(conn)]
            self._notify(every=True)
        for conn in stale:
            self._close_raw(conn)
        return len(stale)

    def close_all(self) -> None:
        """Close every connection, idle or in use (other threads' queries then fail)."""
        with self._lock:
            busy, self._busy = list(self._busy.values()), {}
            self._notify(every=True)
        self.close_idle()
        for slot in busy:
            self._close_raw(slot[0])

    def dispose(self) -> None:
        """Forget every connection without closing it: for a child process after ``fork()``."""
        # The parent's lock may have been held by one of its other threads.
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._idle, self._busy, self._opening, self._waiting = [], {}, 0, 0
        self._trimmer = None  # the parent's timer thread does not exist here

    @property
    def pending(self) -> int:
        """How many checkouts are waiting for a free slot now."""
        return self._waiting

    def status(self) -> dict:
        """``{'max_connections', 'pool_size', 'in_use', 'idle'}``."""
        with self._lock:
            return {"max_connections": self.max_connections, "pool_size": self.pool_size,
                    "in_use": len(self._busy) + self._opening, "idle": len(self._idle)}

