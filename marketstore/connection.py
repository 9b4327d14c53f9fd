"""The connection layer: a bounded, self-healing pool and transactional sessions.

Pool semantics follow the original SQLAlchemy design (``QueuePool(pool_size=10,
max_overflow=20, pool_timeout=30, pool_recycle=3600, pool_pre_ping=True)``).
peewee's pool has one cap, never shrinks and differs between 3.17 and 4.x, so
:class:`PooledDatabase` keeps peewee's connection and transaction machinery but
owns the checkout/check-in bookkeeping.
"""
from __future__ import annotations

import functools
import logging
import math
import os
import random
import select
import threading
import time
from contextlib import contextmanager
from typing import Iterator

import peewee
from playhouse.pool import MaxConnectionsExceeded, PooledDatabase as _PeeweePool
from psycopg2.extensions import (
    TRANSACTION_STATUS_IDLE,
    TRANSACTION_STATUS_UNKNOWN,
)

try:  # peewee 4 moved it here
    from playhouse.postgres_ext import PooledPostgresqlExtDatabase
except ImportError:  # peewee 3.17
    from playhouse.pool import PooledPostgresqlExtDatabase

from .config import Settings, load_settings
from .errors import (
    DRIVER_ERRORS,
    DatabaseConnectionError,
    DataValidationError,
    MarketstoreError,
    SerializationFailure,
    driver_error,
    is_connection_lost,
    translate,
)
from .models import database_proxy

logger = logging.getLogger(__name__)

CONNECT_TIMEOUT = "10"  # seconds, per host address tried
# Probe an idle TCP connection after 60 s, every 10 s, give up after 5 misses: a
# vanished server or NAT entry is found in under 2 minutes, not the OS's 2 hours.
TCP_KEEPALIVES = {"keepalives": "1", "keepalives_idle": "60", "keepalives_interval": "10", "keepalives_count": "5"}

# An idle connection older than this also gets a real round-trip ping at checkout;
# younger ones are checked with a zero-timeout poll of the socket (see _alive).
FULL_PING_AFTER_IDLE = 10.0


class PooledDatabase(PooledPostgresqlExtDatabase):
    """``PooledPostgresqlExtDatabase`` with SPEC's limits.

    * at most ``pool_size + max_overflow`` connections open; a checkout that finds
      them all in use waits up to ``pool_timeout`` s, then raises
      ``MaxConnectionsExceeded`` (translated to ``PoolExhaustedError``);
    * at most ``pool_size`` idle: a connection returned while that many are idle
      is closed;
    * a connection older than ``pool_recycle`` s is closed instead of reused;
    * with pre-ping, a connection the server dropped is found at checkout and
      replaced, so the caller never sees it.
    """

    def __init__(self, settings: Settings):
        params = dict(settings.connect_params)
        dbname = params.pop("dbname", None) or settings.database
        # Every session runs in UTC so timestamptz values come back in UTC, and
        # statement_timeout is a server setting so it also bounds COPY and DDL.
        options = [params.pop("options", ""), "-c timezone=UTC"]
        if settings.statement_timeout:
            options.append(f"-c statement_timeout={int(settings.statement_timeout)}")
        params.setdefault("application_name", settings.application_name)
        # libpq waits for the OS otherwise: minutes for a connect to a black-holed
        # host, hours before a dead peer of an idle pooled connection is noticed.
        # The caller's URL or PGCONNECT_TIMEOUT wins; keepalives apply to TCP only.
        if not os.environ.get("PGCONNECT_TIMEOUT"):
            params.setdefault("connect_timeout", CONNECT_TIMEOUT)
        for name, value in TCP_KEEPALIVES.items():
            params.setdefault(name, value)
        super().__init__(
            dbname,
            max_connections=settings.max_connections,
            stale_timeout=settings.pool_recycle or None,
            timeout=settings.pool_timeout or None,
            autoconnect=False,  # session() is the only way in: a slot is always returned
            options=" ".join(o for o in options if o),
            **params,
        )
        self._pool_size = settings.pool_size
        self._cap = settings.max_connections
        self._recycle = settings.pool_recycle
        self._wait = settings.pool_timeout
        self._pre_ping = settings.pool_pre_ping
        self._cond = threading.Condition(threading.RLock())
        self._idle: list[tuple[object, float, float]] = []  # (conn, created, returned), LIFO
        self._busy: dict[int, tuple[object, float]] = {}  # id(conn) -> (conn, created)

    # -- checkout ---------------------------------------------------------
    def connect(self, reuse_if_open: bool = False) -> bool:
        """Check a connection out for this thread, waiting up to ``pool_timeout``.

        Unlike ``Database.connect`` this does not hold the database lock while
        a new connection is opened: check-ins take that lock too, so one slow
        connect (an unreachable host) would otherwise stall every thread.
        """
        if not self._state.closed:
            if reuse_if_open:
                return False
            raise peewee.OperationalError("Connection already opened.")
        self._attach(self._checkout())
        return True

    def open_transaction(self) -> None:
        """Check a connection out for this thread and start a transaction on it.

        The fast path of :meth:`DatabaseConnection.session`; end it with
        :meth:`close_transaction`. psycopg2 (autocommit off) sends ``BEGIN``
        with the first statement, and a transaction is pushed on peewee's
        stack, so ``atomic()`` inside becomes a savepoint and
        ``in_transaction()`` is true. Raises ``MaxConnectionsExceeded`` after
        ``pool_timeout``, ``peewee.OperationalError`` if the server is unreachable.
        """
        self._attach(self._checkout(), transaction=True)

    def close_transaction(self, commit: bool, broken: bool = False) -> None:
        """End this thread's :meth:`open_transaction` and give the connection back.

        ``commit=True`` commits, then runs peewee's ``after_commit`` callbacks;
        if COMMIT fails (a deferred constraint, a serialization failure, a lost
        connection) the server has rolled back and the driver's error, wrapped
        by peewee, is raised. ``commit=False`` rolls back and raises no driver
        error: a failed rollback means a lost connection, and the caller is
        already reporting an error of its own. ``broken=True`` skips the
        rollback. The connection is closed instead of pooled when it is broken
        or, as for any check-in, found closed (:meth:`_close`). It goes back
        with autocommit off, ready for the next session (``connect()``
        switches it on for peewee's own use).
        """
        conn = self._state.conn
        if conn is None:  # open_transaction() failed: nothing checked out
            return
        # Emptied before COMMIT (peewee 4 pops its transaction first too), so
        # after_commit callbacks run outside the transaction.
        del self._state.transactions[:]
        try:
            if commit:
                with peewee.__exception_wrapper__:
                    conn.commit()
            elif not broken:
                try:
                    conn.rollback()
                except DRIVER_ERRORS:  # lost; the caller is reporting an error of its own
                    broken = True
            if commit and hasattr(self, "_run_commit_callbacks"):  # peewee 4's after_commit()
                self._run_commit_callbacks()
        finally:
            self._state.reset()
            # _close() pools it only if it is open and out of any transaction (_reusable).
            self._close(conn, close_conn=broken)

    def _checkout(self):
        """A connection from :meth:`_connect`, waiting up to ``pool_timeout`` for a free slot."""
        if self.deferred:
            raise peewee.InterfaceError("database must be initialized before opening a connection")
        deadline = time.monotonic() + self._wait
        while True:
            try:
                with peewee.__exception_wrapper__:
                    return self._connect()
            except MaxConnectionsExceeded:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise MaxConnectionsExceeded(
                        f"all {self._cap} connections in use for {self._wait:g} s (pool_timeout)"
                    ) from None
                with self._cond:
                    if len(self._busy) >= self._cap and not self._idle:
                        self._cond.wait(min(remaining, 1.0))

    def _attach(self, conn, transaction: bool = False) -> None:
        """Make ``conn`` this thread's connection, as ``Database.connect`` does; closes it on failure."""
        try:
            with peewee.__exception_wrapper__:
                self._state.reset()
                self._state.set_connection(conn)
                if self.server_version is None:  # first connection only
                    with self._lock:
                        self._set_server_version(conn)
                self._initialize_connection(conn)
                # Switched only when the mode changes: the switch is cheap but
                # psycopg2 takes its connection lock without the GIL, and under
                # contention each release of the GIL costs a thread handoff.
                if transaction:
                    if conn.autocommit:
                        conn.autocommit = False  # psycopg2 then sends BEGIN with the first statement
                    # A peewee transaction object, never entered: atomic() inside sees
                    # depth 1 and makes a savepoint; its commit()/rollback() call ours.
                    self.push_transaction(self.transaction())
                elif not conn.autocommit:
                    conn.autocommit = True  # peewee's own mode: it sends BEGIN itself
        except BaseException:
            self._state.reset()
            self._close(conn, close_conn=True)
            raise

    def _connect(self):
        while True:
            with self._cond:
                if not self._idle:
                    break
                conn, created, returned = self._idle.pop()
                # Counted as in use while it is checked: the check may be a round trip,
                # which must not hold _cond (a server that does not answer would
                # otherwise stall every checkout, check-in and pool_status()).
                self._busy[id(conn)] = (conn, created)
            if not self._expired(created) and self._alive(conn, returned):
                return conn
            with self._cond:
                self._busy.pop(id(conn), None)
                self._cond.notify()
            self._close_raw(conn)
        with self._cond:
            if len(self._busy) >= self._cap:
                raise MaxConnectionsExceeded(f"all {self._cap} connections in use")
            # Reserve the slot before the (slow) connect so concurrent check-ins
            # and status reads see it; released again if the connect fails.
            token = object()
            self._busy[id(token)] = (token, time.monotonic())
        try:
            conn = super(_PeeweePool, self)._connect()
        finally:
            with self._cond:
                self._busy.pop(id(token), None)
        with self._cond:
            self._busy[id(conn)] = (conn, time.monotonic())
        return conn

    def _expired(self, created: float) -> bool:
        return bool(self._recycle) and time.monotonic() - created > self._recycle

    def _alive(self, conn, returned: float) -> bool:
        if conn.closed or conn.get_transaction_status() != TRANSACTION_STATUS_IDLE:
            return False
        if not self._pre_ping:
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
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT 1")
            conn.rollback()
            return True
        except DRIVER_ERRORS:
            return False

    # -- transaction control ----------------------------------------------
    # Inside open_transaction() psycopg2 owns the transaction: a COMMIT or
    # ROLLBACK sent as SQL would leave it believing one is still open, and every
    # later statement would run outside any transaction. So peewee's commit()
    # and rollback() (also reached through a transaction object's commit() or
    # rollback()) call the driver's, and the rest of the session runs in a new
    # transaction that psycopg2 begins with the next statement.
    def _driver_transaction(self) -> bool:
        conn = self._state.conn
        return conn is not None and not conn.autocommit

    def begin(self, *args, **kwargs) -> None:
        """``BEGIN``; inside a session a no-op (psycopg2 begins with the next statement).

        An isolation level passed then is ignored, as the server would ignore
        a ``BEGIN`` sent inside a transaction.
        """
        if not self._driver_transaction():
            super().begin(*args, **kwargs)

    def commit(self) -> None:
        """``COMMIT``; inside a session: of the work so far, and the session goes on in a new transaction."""
        if self._driver_transaction():
            with peewee.__exception_wrapper__:
                self._state.conn.commit()
        else:
            super().commit()

    def rollback(self) -> None:
        """``ROLLBACK``; inside a session: of the work so far, and the session goes on in a new transaction."""
        if self._driver_transaction():
            with peewee.__exception_wrapper__:
                self._state.conn.rollback()
        else:
            super().rollback()

    # -- check-in ---------------------------------------------------------
    def _close(self, conn, close_conn: bool = False) -> None:
        with self._cond:
            entry = self._busy.get(id(conn))
        # _reusable() may roll back (a round trip): not under _cond.
        keep = entry is not None and not close_conn and not self._expired(entry[1]) and self._reusable(conn)
        with self._cond:
            self._busy.pop(id(conn), None)
            keep = keep and len(self._idle) < self._pool_size
            if keep:
                self._idle.append((conn, entry[1], time.monotonic()))
            self._cond.notify()
        if not keep:
            self._close_raw(conn)

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

    def _close_raw(self, conn) -> None:
        try:
            conn.close()
        except DRIVER_ERRORS:
            logger.debug("closing a broken connection failed", exc_info=True)

    def discard(self) -> None:
        """Forget this thread's connection and close it: it must not be reused."""
        conn = self._state.conn
        self._state.reset()
        if conn is not None:
            self._close(conn, close_conn=True)

    def close_idle(self) -> None:
        with self._cond:
            idle, self._idle = self._idle, []
        for conn, _, _ in idle:
            self._close_raw(conn)

    def close_all(self) -> None:
        """Close every connection; ones in use by other threads break."""
        if not self.is_closed():
            self.discard()
        with self._cond:
            busy, self._busy = list(self._busy.values()), {}
            self._cond.notify_all()
        self.close_idle()
        for conn, _ in busy:
            if hasattr(conn, "close"):
                self._close_raw(conn)

    def status(self) -> dict:
        with self._cond:
            return {
                "max_connections": self._cap,
                "pool_size": self._pool_size,
                "in_use": len(self._busy),
                "idle": len(self._idle),
            }


def _log_once(error: MarketstoreError, operation: str, model: str, started: float) -> None:
    """Log a failed session's error, unless an inner session already did."""
    if getattr(error, "_marketstore_logged", False):
        return
    error._marketstore_logged = True
    logger.error("%s failed after %.1f ms: %s: %s", f"{operation} {model}".strip(),
                 (time.perf_counter() - started) * 1000, type(error).__name__, error)


class DatabaseConnection:
    """Owns the pool; hands out transactional sessions. Thread-safe.

    Nothing connects until the first :meth:`session`.
    """

    def __init__(self, bind_models: bool = True) -> None:
        # Only the module-level db_connection binds the models' database_proxy;
        # a private one (run_migrations(url), tests) must not rebind them.
        self._bind_models = bind_models
        self._db: PooledDatabase | None = None
        self.settings: Settings | None = None
        self._lock = threading.Lock()

    def initialize(self, url: str | None = None, **options) -> "DatabaseConnection":
        """Configure from ``url``/``options`` over the environment; see :mod:`marketstore.config`."""
        settings = load_settings(url, **options)
        with self._lock:
            old, self._db = self._db, PooledDatabase(settings)
            self.settings = settings
            if self._bind_models:
                database_proxy.initialize(self._db)
        if old is not None:
            old.close_all()
        logger.info("database configured: %r", settings)
        return self

    @property
    def database(self) -> PooledDatabase:
        db = self._db
        if db is None:
            raise DatabaseConnectionError("database not initialized: call initialize_database() first")
        return db

    @property
    def is_initialized(self) -> bool:
        return self._db is not None

    @contextmanager
    def session(self, operation: str = "session", model: str = "") -> Iterator[PooledDatabase]:
        """Check a connection out and run the block in a transaction.

        Commits on success; on any exception rolls back and re-raises, driver
        errors translated to :mod:`marketstore.errors` (the original chained).
        The connection always goes back to the pool, or is closed if it broke.
        Nested sessions in one thread share the connection and use a savepoint,
        as does ``db.atomic()`` inside. ``db.commit()``/``db.rollback()`` inside
        end the work so far, and the session goes on in a new transaction.
        """
        db = self.database
        started = time.perf_counter()
        try:
            if not db.is_closed():
                # Nested: this thread's transaction is open; atomic() makes a savepoint.
                with db.atomic():
                    yield db
                return
            # Outermost: the driver's own BEGIN/COMMIT (C calls) instead of atomic(),
            # whose transaction objects and statements sent through new cursors
            # were about half the client time of a short transaction
            # (bench/RESULTS.md, "Sessions").
            db.open_transaction()
            try:
                yield db
            except BaseException as exc:
                db.close_transaction(commit=False, broken=is_connection_lost(exc))
                raise
            db.close_transaction(commit=True)
        except MarketstoreError as exc:  # first: our errors are Peewee exceptions too
            # A driver error a repository turned into a precise one itself (a COPY
            # line mapped back to the file's) is logged here, once for nested sessions.
            if driver_error(exc) is not None:
                _log_once(exc, operation, model, started)
            raise
        except DRIVER_ERRORS as exc:
            error = translate(exc, f"{operation} {model}".strip())
            _log_once(error, operation, model, started)
            raise error from exc

    def health_check(self) -> bool:
        """True when a round trip to the server succeeds; never raises."""
        try:
            with self.session("health_check") as db:
                db.execute_sql("SELECT 1").fetchone()
            return True
        except MarketstoreError as exc:
            logger.warning("health check failed: %s", exc)
            return False

    def pool_status(self) -> dict:
        """``{'max_connections', 'pool_size', 'in_use', 'idle'}`` (zeros before initialization)."""
        if self._db is None:
            return {"max_connections": 0, "pool_size": 0, "in_use": 0, "idle": 0}
        return self._db.status()

    def close(self) -> None:
        """Close every pooled connection; the next session needs ``initialize()`` again."""
        with self._lock:
            db, self._db = self._db, None
        if db is not None:
            db.close_all()


db_connection = DatabaseConnection()


def initialize_database(url: str | None = None, **options) -> DatabaseConnection:
    """Configure the module-level :data:`db_connection` (nothing connects yet)."""
    return db_connection.initialize(url, **options)


def close_database() -> None:
    """Close every connection of :data:`db_connection`."""
    db_connection.close()


def get_db_session(operation: str = "session", model: str = ""):
    """``with get_db_session() as db:`` — a transaction on :data:`db_connection`."""
    return db_connection.session(operation, model)


def _in_transaction() -> bool:
    """True when this thread is inside a session of :data:`db_connection`."""
    db = db_connection._db
    return db is not None and not db.is_closed() and db.transaction_depth() > 0


def retry_transaction(fn=None, /, *, retries: int = 3, backoff: float = 0.05, max_backoff: float = 2.0):
    """Run ``fn()`` - one whole transaction - again when it raises ``SerializationFailure``.

    ``retry_transaction(fn, retries=3)`` calls ``fn()`` now and returns its result.
    ``@retry_transaction(retries=3)`` (or ``@retry_transaction()``) wraps a function
    instead, so that every call of it is retried (arguments passed through).

    At most ``retries`` re-runs follow the first attempt; before re-run ``n + 1``
    it sleeps a random time between half and all of ``min(max_backoff,
    backoff * 2**n)`` seconds, so that the transactions that collided do not
    collide again in step. Only ``SerializationFailure`` (a deadlock or
    serialization conflict: the server rolled the transaction back) is retried.
    Any other error propagates at once, ``DatabaseConnectionError`` included (a
    COMMIT whose reply was lost may have succeeded), and so does a
    ``SerializationFailure`` raised inside an open session, where only the
    outer transaction can be re-run. So ``fn`` opens its own session, and must
    be safe to run again. Raises the last ``SerializationFailure`` when the
    retries are used up, and ``DataValidationError`` for bad arguments.
    """
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise DataValidationError("retries", retries, "an integer >= 0")
    for name, value in (("backoff", backoff), ("max_backoff", max_backoff)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf:
            raise DataValidationError(name, value, "a finite number of seconds >= 0")

    def run(call, *args, **kwargs):
        attempt = 0
        while True:
            try:
                return call(*args, **kwargs)
            except SerializationFailure as exc:
                if attempt >= retries or _in_transaction():
                    raise
                delay = min(max_backoff, backoff * 2 ** attempt)
                delay = random.uniform(delay / 2, delay)
                attempt += 1
                logger.warning("%s: %s; retry %d of %d in %.0f ms",
                               getattr(call, "__qualname__", "transaction"), exc, attempt, retries, delay * 1000)
                time.sleep(delay)

    if fn is None:
        def decorate(func):
            @functools.wraps(func)
            def wrapper(*args, **kwargs):
                return run(func, *args, **kwargs)
            return wrapper
        return decorate
    if not callable(fn):
        raise DataValidationError("fn", fn, "a callable (the whole transaction)")
    return run(fn)
