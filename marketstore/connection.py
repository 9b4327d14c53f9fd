"""The connection layer: connections to a database, transactional sessions, retries.

A :class:`DatabaseConnection` owns one pooled database
(:class:`~marketstore.database.PooledPostgresqlExtDatabase`, whose pool follows
the original SQLAlchemy design: 10 kept, 20 overflow, 30 s wait, 1 h recycle,
pre-ping) and hands out sessions on it. Inside a session, the models'
``database_proxy`` resolves to that database, so a repository given its own
connection runs every query there; :data:`db_connection` is the default.
With ``replica_urls``, read-only sessions and repository reads are served by a
standby within ``max_replica_lag`` (:mod:`marketstore.replicas`); with
``pooler="transaction"``, nothing session-scoped reaches a PgBouncer.
"""
from __future__ import annotations

import functools
import logging
import math
import random
import threading
import time

from .config import Settings, load_settings
from .database import PooledPostgresqlExtDatabase, database_proxy, sessions
from .replicas import LagSampler
from .routing import PrimaryRouter, ReplicaRouter
from .errors import (
    DRIVER_ERRORS,
    DatabaseConnectionError,
    DataValidationError,
    MarketstoreError,
    SerializationFailure,
    TransactionError,
    driver_error,
    is_connection_lost,
    translate,
)

logger = logging.getLogger(__name__)

# Probe an idle TCP connection after 60 s, every 10 s, give up after 5 misses: a
# vanished server or NAT entry is found in under 2 minutes, not the OS's 2 hours.
TCP_KEEPALIVES = {"keepalives": "1", "keepalives_idle": "60", "keepalives_interval": "10", "keepalives_count": "5"}


def _telemetry():
    """:mod:`marketstore.telemetry`, imported here: it imports this module (and no OpenTelemetry itself)."""
    from . import telemetry

    return telemetry


def _database(settings: Settings, traced: bool = False) -> PooledPostgresqlExtDatabase:
    """The pooled database of ``settings``: SPEC's limits, UTC sessions, bounded waits (``traced``: with telemetry)."""
    params = dict(settings.connect_params)
    dbname = params.pop("dbname", None) or settings.database
    # Every session runs in UTC so timestamptz values come back in UTC, and
    # statement_timeout is a server setting so it also bounds COPY and DDL.
    session_settings = {"timezone": "UTC"}
    if settings.statement_timeout:
        session_settings["statement_timeout"] = int(settings.statement_timeout)
    transaction_settings = None
    if settings.pooler:
        # PgBouncer (transaction mode) refuses `options` at connect, and a SET would
        # stay on a server connection that other clients share: SET LOCAL in each
        # session's BEGIN instead (see PooledPostgresqlExtDatabase.open_transaction).
        transaction_settings = session_settings
    else:
        options = [params.pop("options", "")] + [f"-c {k}={v}" for k, v in session_settings.items()]
        params["options"] = " ".join(o for o in options if o)
    params.setdefault("application_name", settings.application_name)
    # libpq waits for the OS otherwise: minutes for a connect to a black-holed
    # host, hours before a dead peer of an idle pooled connection is noticed.
    # The URL's own values win; keepalives apply to TCP only.
    params.setdefault("connect_timeout", str(settings.connect_timeout))
    for name, value in TCP_KEEPALIVES.items():
        params.setdefault(name, value)
    db = PooledPostgresqlExtDatabase(
        dbname, max_connections=settings.max_connections, stale_timeout=settings.pool_recycle or None,
        timeout=settings.pool_timeout or None, pool_size=settings.pool_size, pre_ping=settings.pool_pre_ping,
        ping_after_idle=None, idle_grace=settings.pool_idle_grace, transaction_settings=transaction_settings,
        **params)
    if traced:
        _telemetry().instrument(db, settings)
    return db


class _Joined:
    """What a session that joined its caller's transaction leaves on exit: nothing to end."""

    __slots__ = ()

    def __exit__(self, exc_type, exc, tb) -> None:
        return None


_JOINED = _Joined()


class Session:
    """``with connection.session() as db:`` -- see :meth:`DatabaseConnection.session`.

    A class rather than a generator-based context manager: it is entered and
    left once per transaction, on the hot path of every repository call. Where
    it runs is its connection's router's decision (:mod:`marketstore.routing`).
    """

    __slots__ = ("_connection", "_operation", "_model", "_read_only", "_route", "_router", "_db", "_started",
                 "_atomic")

    def __init__(self, connection: "DatabaseConnection", operation: str, model: str, read_only: bool = False,
                 *, route: bool = True):
        self._connection, self._operation, self._model = connection, operation, model
        # route=False: a read-only session that must reach the primary (health_check).
        self._read_only, self._route = read_only, route

    def __enter__(self) -> PooledPostgresqlExtDatabase:
        router = self._router = self._connection._router
        if router is None:
            raise DatabaseConnectionError("database not initialized: call initialize_database() first")
        self._started = time.perf_counter()
        db = router.enter(self._read_only, self._route)
        stack = sessions.stack
        while True:
            self._db = db
            # The models' database_proxy is this database until the block ends.
            stack.append(db)
            try:
                if db.is_closed():
                    # Outermost: a transaction of PooledPostgresqlExtDatabase's fast path.
                    self._atomic = None
                    db.open_transaction(self._read_only)
                elif sessions.joins and db.in_transaction():
                    # A repository read inside a transaction: it joins it. A savepoint
                    # (SAVEPOINT + RELEASE, two round trips) would only serve a caller
                    # that catches a failed read and goes on; a read has nothing to undo.
                    self._atomic = _JOINED
                else:
                    # Nested, or inside plain Peewee use of the thread's connection:
                    # atomic() makes a savepoint, or a transaction if none is open.
                    atomic = self._atomic = db.atomic()
                    atomic.__enter__()
                return db
            except BaseException as exc:
                stack.pop()
                instead = router.refused(db, exc)
                if instead is None:
                    self._reraise(exc)
                db = instead

    def __exit__(self, exc_type, exc, tb) -> bool:
        db = self._db
        try:
            if self._atomic is not None:
                self._atomic.__exit__(exc_type, exc, tb)
            elif exc is None:
                db.close_transaction(True)
            else:
                db.close_transaction(False, is_connection_lost(exc))
        except BaseException as failure:  # COMMIT failed: the server rolled back
            self._reraise(failure)
        finally:
            sessions.stack.pop()
            if self._atomic is None:
                self._router.leave(db, not self._read_only, exc)
        if exc is not None:
            error = self._translated(exc)
            if error is not None:
                raise error from exc
        return False

    def _reraise(self, exc: BaseException):
        """Raise ``exc``, or its translation (the original chained) when it is a driver error."""
        error = self._translated(exc)
        if error is None:
            raise exc
        raise error from exc

    def _translated(self, exc: BaseException) -> MarketstoreError | None:
        """What to raise instead of ``exc`` (a driver error, translated and logged), or ``None``."""
        if isinstance(exc, MarketstoreError):  # first: our errors are Peewee exceptions too
            # A driver error a repository turned into a precise one itself (a COPY
            # line mapped back to the file's) is logged here, once for nested sessions.
            if driver_error(exc) is not None:
                _log_once(exc, self._operation, self._model, self._started)
            return None
        if isinstance(exc, DRIVER_ERRORS):
            error = translate(exc, f"{self._operation} {self._model}".strip())
            # A read the router runs again elsewhere: its warning is the one log line.
            if not self._router.reruns(self._db, error):
                _log_once(error, self._operation, self._model, self._started)
            return error
        return None


def _log_once(error: MarketstoreError, operation: str, model: str, started: float) -> None:
    """Log a failed session's error, unless an inner session already did."""
    if getattr(error, "_marketstore_logged", False):
        return
    error._marketstore_logged = True
    logger.error("%s failed after %.1f ms: %s: %s", f"{operation} {model}".strip(),
                 (time.perf_counter() - started) * 1000, type(error).__name__, error)


class DatabaseConnection:
    """One database (a bounded pool) and transactional sessions on it. Thread-safe.

    Each instance is independent: two can serve two databases side by side.
    :data:`db_connection` is the default one, which repositories made without
    a connection use. Nothing connects until the first :meth:`session`.
    """

    def __init__(self) -> None:
        self._db: PooledPostgresqlExtDatabase | None = None
        self._router: PrimaryRouter | None = None
        self.settings: Settings | None = None
        self._lock = threading.Lock()

    def initialize(self, url: str | None = None, **options) -> "DatabaseConnection":
        """Configure from ``url``/``options`` over the environment (see :mod:`marketstore.config`);
        returns ``self``. A previous configuration's connections are closed.

        Raises ``ConfigurationError`` for a bad setting, and ``TransactionError``
        (changing nothing) inside a transaction of this connection in this thread.
        """
        settings = load_settings(url, **options)
        self._refuse_inside_transaction("initialize")
        # Off (or not installed), OpenTelemetry is never imported and nothing is wrapped.
        traced = settings.telemetry != "off" and _telemetry().enabled(settings.telemetry)
        db = _database(settings, traced)
        if settings.replica_urls:
            sampler = LagSampler(settings, [(replica, _database(replica, traced))
                                            for replica in settings.replicas()])
            router = ReplicaRouter(db, sampler)
        else:
            router = PrimaryRouter(db)
        with self._lock:
            old, self._db = self._db, db
            old_router, self._router = self._router, router
            self.settings = settings
            if self is db_connection:  # the default serves queries outside any session
                database_proxy.initialize(self._db)
            _telemetry().trace_calls(self, traced)
        if old is not None:
            old.close_all()
        if old_router is not None:
            old_router.close()
            _telemetry().forget(old_router)
        logger.info("database configured: %r", settings)
        return self

    @property
    def database(self) -> PooledPostgresqlExtDatabase:
        db = self._db
        if db is None:
            raise DatabaseConnectionError("database not initialized: call initialize_database() first")
        return db

    @property
    def is_initialized(self) -> bool:
        return self._db is not None

    def session(self, operation: str = "session", model: str = "", read_only: bool = False) -> "Session":
        """Check a connection out and run the block in a transaction.

        Commits on success; on any exception rolls back and re-raises, driver
        errors translated to :mod:`marketstore.errors` (the original chained).
        The connection always goes back to the pool, or is closed if it broke.
        Nested sessions in one thread share the connection and use a savepoint,
        as does ``db.atomic()`` inside. ``db.commit()``/``db.rollback()`` inside
        end the work so far, and the session goes on in a new transaction.

        ``read_only=True``: a ``READ ONLY`` transaction, where a write raises
        ``ReadOnlyError``; served by a replica within ``max_replica_lag`` when
        one is configured, else by the primary. A session opened inside
        another one of this thread joins it, whatever its ``read_only``.
        """
        return Session(self, operation, model, read_only)

    def in_transaction(self) -> bool:
        """True when this thread has a transaction open on this connection's database (or a replica's)."""
        router = self._router
        return router is not None and router.in_session()

    def read(self, fn, /, *args, **kwargs):
        """``fn(*args, **kwargs)``, a read made of sessions of this connection, served by a replica.

        Outside any session of this thread, ``fn``'s sessions are read-only and
        served by a replica within ``max_replica_lag`` (else the primary); if
        the replica's connection breaks midway, ``fn`` runs once more on the
        primary, so it must be safe to repeat (a read is). Inside a session
        ``fn``'s sessions join its transaction without a savepoint (a read has
        nothing to roll back; a failed one then fails the whole session);
        without replicas it simply runs. Returns what ``fn``
        returns; raises what it raises.
        """
        router = self._router
        if router is None:  # fn's own sessions say that nothing is initialized
            return fn(*args, **kwargs)
        state = sessions
        state.joins += 1
        try:
            return router.read(fn, args, kwargs)
        finally:
            state.joins -= 1

    def health_check(self) -> bool:
        """True when a round trip to the (primary) server succeeds; never raises."""
        try:
            with Session(self, "health_check", "", True, route=False) as db:
                db.execute_sql("SELECT 1").fetchone()
            return True
        except MarketstoreError as exc:
            logger.warning("health check failed: %s", exc)
            return False

    def pool_status(self) -> dict:
        """``{'max_connections', 'pool_size', 'in_use', 'idle'}`` of the primary's pool (zeros
        before initialization), and ``'replicas'``: one dict per replica, ``{'url'`` (no
        password), ``'in_use', 'idle', 'healthy', 'lag_seconds'}`` (``None`` when unknown).
        """
        db, router = self._db, self._router
        if db is None:
            return {"max_connections": 0, "pool_size": 0, "in_use": 0, "idle": 0, "replicas": []}
        sampler = getattr(router, "sampler", None)
        return {**db.status(), "replicas": sampler.status() if sampler is not None else []}

    def close(self) -> None:
        """Close every pooled connection; the next session needs ``initialize()`` again.

        Raises ``TransactionError`` (closing nothing) inside a transaction of
        this connection in this thread: its work would be lost.
        """
        self._refuse_inside_transaction("close")
        with self._lock:
            db, self._db = self._db, None
            router, self._router = self._router, None
            if self is db_connection and db is not None:
                database_proxy.initialize(None)
        if db is not None:
            db.close_all()
        if router is not None:
            router.close()
            _telemetry().forget(router)

    def _refuse_inside_transaction(self, operation: str) -> None:
        # Checked before anything changes: the pool would refuse to close this
        # thread's connection only after the database was already swapped out.
        if self.in_transaction():
            raise TransactionError(f"{operation}: this thread has a transaction open on this connection; "
                                   "end it (leave the session) first")


db_connection = DatabaseConnection()


def initialize_database(url: str | None = None, **options) -> DatabaseConnection:
    """Configure the module-level :data:`db_connection` (nothing connects yet)."""
    return db_connection.initialize(url, **options)


def close_database() -> None:
    """Close every connection of :data:`db_connection`."""
    db_connection.close()


def get_db_session(operation: str = "session", model: str = "", read_only: bool = False):
    """``with get_db_session() as db:`` — a transaction on :data:`db_connection`
    (``read_only=True``: see :meth:`DatabaseConnection.session`)."""
    return Session(db_connection, operation, model, read_only)


def _in_transaction(connection: DatabaseConnection | None = None) -> bool:
    """Whether a transaction that ``fn`` would join is open in this thread.

    Without a connection, any session of any connection counts (the repositories
    ``fn`` uses may have connections of their own), and so does a plain
    ``atomic()`` on the default database.
    """
    if connection is not None:
        return connection.in_transaction()
    return database_proxy.routed() or db_connection.in_transaction()


def retry_transaction(fn=None, /, *, retries: int = 3, backoff: float = 0.05, max_backoff: float = 2.0,
                      connection: DatabaseConnection | None = None):
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
    be safe to run again. ``connection``: the connection ``fn``'s transaction
    runs on, when not the default; then only a session open on it prevents a
    retry (by default, any open session does). Raises the last
    ``SerializationFailure`` when the retries are used up, and
    ``DataValidationError`` for bad arguments.
    """
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise DataValidationError("retries", retries, "an integer >= 0")
    for name, value in (("backoff", backoff), ("max_backoff", max_backoff)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf:
            raise DataValidationError(name, value, "a finite number of seconds >= 0")
    if connection is not None and not isinstance(connection, DatabaseConnection):
        raise DataValidationError("connection", connection, "a DatabaseConnection or None")

    def run(call, *args, **kwargs):
        attempt = 0
        while True:
            try:
                return call(*args, **kwargs)
            except SerializationFailure as exc:
                if attempt >= retries or _in_transaction(connection):
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
