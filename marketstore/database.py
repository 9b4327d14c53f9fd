"""The Peewee side of the connection layer: the pooled database class and ``database_proxy``.

:class:`PooledPostgresqlExtDatabase` is a plain ``PostgresqlExtDatabase`` whose
``_connect``/``_close`` check connections out of and into a
:class:`~marketstore.pool.ConnectionPool`; everything else is Peewee's own, so
plain Peewee code (queries outside a session, ``atomic()``,
``connection_context()``, ``with db:``) works as Peewee documents it. One
override adds the fast path of :meth:`DatabaseConnection.session`.

:data:`database_proxy`, the models' database, resolves to the database of this
thread's innermost session, else to the default one: a repository given its
own connection runs its ORM queries there, and a session can be served by
another database (a replica) without the models knowing.
"""
from __future__ import annotations

import contextlib
import functools
import logging
import threading

import peewee
from playhouse.postgres_ext import PostgresqlExtDatabase

from .errors import DRIVER_ERRORS
from .forksafe import on_fork_in_child
from .pool import ConnectionPool
from .transactions import COMMIT_CALLBACKS, DRIVER, PoolerModes, ThreadState


class _SessionMark:
    """Held in ``_state.ctx`` while a session owns the thread's connection, so that a
    ``connection_context()`` or ``with db:`` inside it does not close the connection on exit."""


_SESSION = _SessionMark()
_PEEWEE_LOG = peewee.logger  # where Peewee logs each statement


class _ConnectionContext:
    """``db.connection_context()``: opens a connection if none is open, closes it on
    leaving the outermost such block (Peewee 4's rule; Peewee 3.17 always closed,
    which inside a session would end the session's transaction)."""

    __slots__ = ("db",)

    def __init__(self, db):
        self.db = db

    def __enter__(self):
        if self.db.is_closed():
            self.db.connect()
        self.db._state.ctx.append(self)

    def __exit__(self, exc_type, exc_val, exc_tb):
        ctx = self.db._state.ctx
        if ctx and ctx[-1] is self:
            ctx.pop()
        if not ctx:
            self.db.close()

    def __call__(self, fn):
        @functools.wraps(fn)
        def inner(*args, **kwargs):
            with type(self)(self.db):
                return fn(*args, **kwargs)
        return inner


class PooledPostgresqlExtDatabase(PostgresqlExtDatabase):
    """``PostgresqlExtDatabase`` on a bounded pool: Peewee's pool parameters, and three of ours.

    ``max_connections`` (open at most), ``stale_timeout`` (seconds from a
    connection's creation after which it is replaced) and ``timeout``
    (seconds a checkout waits when all are in use; ``None``: no wait, ``0``:
    for ever) mean what they mean for Peewee's ``PooledPostgresqlExtDatabase``;
    ``pool_size`` caps the idle connections kept once quiet; ``idle_grace``
    (seconds, ``0``: none) is how long one returned beyond it may wait to be
    reused before it is closed. ``pre_ping`` replaces
    connections the server dropped at checkout; as Peewee 4's pool does, with
    a ``SELECT 1`` at every checkout unless ``ping_after_idle`` (seconds idle
    before a round trip is worth it; ``None``: the pool's default, 10 s) says
    otherwise -- younger connections get a check without a round trip
    (:class:`~marketstore.pool.ConnectionPool`). ``transaction_settings``
    (e.g. ``{"timezone": "UTC"}``): for a transaction pooler (PgBouncer),
    which refuses them at connect, settings made ``SET LOCAL`` in the same
    statement as each session's ``BEGIN``. ``manual_close()``,
    ``close_idle()``, ``close_stale(age)``, ``close_all()`` and ``dispose()``
    are Peewee's pool API.
    """

    def __init__(self, database, max_connections: int | None = 20, stale_timeout: float | None = None,
                 timeout: float | None = None, *, pool_size: int | None = None, pre_ping: bool = True,
                 ping_after_idle: float | None = 0.0, idle_grace: float = 0.0,
                 transaction_settings: dict | None = None, **kwargs):
        # Before super().__init__, which calls init().
        self._pooler_modes = None if transaction_settings is None else PoolerModes(transaction_settings)
        self._pool = ConnectionPool(functools.partial(PostgresqlExtDatabase._connect, self),
                                    max_connections=max_connections, pool_size=pool_size,
                                    timeout=_wait(timeout), recycle=stale_timeout or None, pre_ping=pre_ping,
                                    ping_after_idle=ping_after_idle, idle_grace=idle_grace)
        super().__init__(database, **kwargs)
        self._state = ThreadState()  # Peewee's per-thread state, plus the transaction mode
        # Peewee's connect() and close() hold this lock around _connect/_close. Our
        # _connect may wait up to `timeout` for a check-in, and a check-in needs
        # close(): under one lock that would deadlock until the timeout. What the
        # lock guards is per-thread state (_state is thread-local) and the pool,
        # which has its own lock, so it is not needed.
        self._lock = contextlib.nullcontext()
        # Pushed by open_transaction(), never entered: atomic() inside sees depth 1 and
        # makes a savepoint; its commit()/rollback() call ours. It holds no state of
        # its own, so one serves every session of every thread.
        self._session_transaction = self.transaction()
        on_fork_in_child(self._forget_connection)

    def init(self, database, max_connections=None, stale_timeout=None, timeout=None, *,
             pool_size=None, pre_ping=None, ping_after_idle=None, idle_grace=None, **kwargs):
        """Peewee's ``init()``; pool limits given here apply from the next checkout."""
        super().init(database, **kwargs)
        self._pool.configure(max_connections=max_connections, pool_size=pool_size, pre_ping=pre_ping,
                             timeout=None if timeout is None else _wait(timeout), recycle=stale_timeout,
                             ping_after_idle=ping_after_idle, idle_grace=idle_grace)

    # -- Peewee's hooks -------------------------------------------------------
    def _connect(self):
        return self._pool.checkout()

    def _close(self, conn):
        self._pool.checkin(conn)

    def _initialize_connection(self, conn):
        # Pooled connections keep autocommit off between sessions (the fast path);
        # Peewee's own mode is autocommit on, with BEGIN sent by atomic().
        if not conn.autocommit:
            conn.autocommit = True

    def connection_context(self):
        return _ConnectionContext(self)

    query_hooks = ()  # Peewee 4 sets a list per database; Peewee 3 has none
    telemetry = None
    """This database's :class:`~marketstore.telemetry.DatabaseTelemetry` when telemetry is on
    (:func:`marketstore.telemetry.instrument` then also wraps ``execute_sql``), else ``None``."""

    @property
    def pool(self) -> ConnectionPool:
        """The :class:`~marketstore.pool.ConnectionPool` behind ``_connect``/``_close``."""
        return self._pool

    def execute_sql(self, sql, params=None, *args, **kwargs):
        """Peewee's ``execute_sql``: ``(sql, params)`` logged at DEBUG to the ``peewee`` logger,
        driver errors raised as Peewee's, the cursor returned.

        On an open connection with no query hook, named cursor or other option
        it runs here, in one call instead of Peewee's six (``execute_sql`` twice,
        ``_execute_cursor``, ``_log_query``, ``cursor``, ``is_closed``) and the
        exception wrapper's two: a short transaction spent a tenth of its
        client time in them. The rest is Peewee's path, unchanged.
        """
        conn = self._state.conn
        if conn is None or args or kwargs or self.query_hooks:
            return super().execute_sql(sql, params, *args, **kwargs)
        if _PEEWEE_LOG.isEnabledFor(logging.DEBUG):
            _PEEWEE_LOG.debug((sql, params))
        cursor = conn.cursor()
        try:
            cursor.execute(sql, params or ())
        except Exception as exc:
            # What Peewee's `with __exception_wrapper__:` does: raises the Peewee
            # error for a driver error (the original chained), else nothing.
            peewee.__exception_wrapper__.__exit__(type(exc), exc, exc.__traceback__)
            raise
        return cursor

    # -- the pool API Peewee documents ----------------------------------------
    def manual_close(self) -> bool:
        """Close this thread's connection instead of returning it to the pool."""
        if self.is_closed():
            return False
        if self.in_transaction():
            raise peewee.OperationalError("Attempting to close database while transaction is open.")
        conn = self._state.conn
        self._state.reset()
        self._pool.checkin(conn, discard=True)
        return True

    def close_idle(self) -> int:
        return self._pool.close_idle()

    def close_stale(self, age: float = 600) -> int:
        return self._pool.close_stale(age)

    def close_all(self) -> None:
        """Close every connection; ones in use by other threads break.

        Like Peewee's, refuses (``OperationalError``) while this thread's
        transaction is open: its work would be lost.
        """
        if not self.deferred:
            self.close()
        self._pool.close_all()

    def dispose(self) -> None:
        """Forget this thread's connection and the pool's, closing none (after ``fork()``)."""
        self._state.reset()
        self._pool.dispose()

    def status(self) -> dict:
        """``{'max_connections', 'pool_size', 'in_use', 'idle'}``."""
        return self._pool.status()

    def _forget_connection(self) -> None:
        # In a child after fork(): the forking thread's open connection is the
        # parent's (the pool forgets its own connections itself).
        self._state.reset()

    # -- the session fast path (the one override of Peewee's transactions) ------
    # DatabaseConnection.session() opens the outermost transaction in a mode of
    # marketstore.transactions (the driver's, or SQL behind a pooler) instead of
    # atomic(), whose transaction objects and statements sent through new
    # cursors were about half the client time of a short transaction. A
    # transaction object is pushed (never entered), so atomic() inside makes a
    # savepoint and in_transaction() is true.
    def open_transaction(self, read_only: bool = False) -> None:
        """Check a connection out for this thread and start a transaction on it.

        ``read_only``: a ``READ ONLY`` transaction (a write in it fails with
        SQLSTATE 25006). End it with :meth:`close_transaction`. Raises
        ``PoolExhaustedError`` after the pool's timeout, the driver's error if
        the server is unreachable (the caller translates; no Peewee wrapper on
        this path).
        """
        if self.deferred:
            raise peewee.InterfaceError("database must be initialized before opening a connection")
        conn = self._pool.checkout()
        try:
            if self.server_version is None:  # first connection only
                self._set_server_version(conn)
            pooler = self._pooler_modes
            mode = DRIVER if pooler is None else pooler.choose(conn, read_only)
            mode.open(conn, read_only)
            self._state.open_session(conn, mode, _SESSION, self._session_transaction)
        except BaseException:
            self._state.reset()
            self._pool.checkin(conn, discard=True)
            raise

    def close_transaction(self, commit: bool, broken: bool = False) -> None:
        """End this thread's :meth:`open_transaction` and give the connection back.

        ``commit=True`` commits, then runs Peewee's ``after_commit`` callbacks;
        if COMMIT fails (a deferred constraint, a serialization failure, a lost
        connection) the server has rolled back and the driver's error is
        raised. ``commit=False`` rolls back and raises no driver error: a
        failed rollback means a lost connection, and the caller is already
        reporting an error of its own. ``broken=True`` skips the rollback and
        closes the connection.
        """
        state = self._state
        fields = state.__dict__  # this thread's: one lookup (see ThreadState)
        conn = fields["conn"]
        if conn is None:  # open_transaction() failed: nothing checked out
            return
        # Emptied before COMMIT (Peewee 4 pops its transaction first too), so
        # after_commit callbacks run outside the transaction.
        del fields["transactions"][:]
        try:
            if commit:
                fields["mode"].end(conn, True)
                if COMMIT_CALLBACKS and fields["commit_callbacks"]:
                    self._run_commit_callbacks()
            elif not broken:
                try:
                    fields["mode"].end(conn, False)
                except DRIVER_ERRORS:  # lost; the caller is reporting an error of its own
                    broken = True
        finally:
            state.close_session()
            self._pool.checkin(conn, broken)

    # Peewee's transaction hooks, as the mode of this thread's transaction has them.
    def begin(self, *args, **kwargs) -> None:
        """``BEGIN``; inside a session a no-op (the session's transaction is open)."""
        self._state.mode.begin(self, *args, **kwargs)

    def commit(self) -> None:
        """``COMMIT``; inside a session: of the work so far, and the session goes on in a new transaction."""
        self._state.mode.commit(self)

    def rollback(self) -> None:
        """``ROLLBACK``; inside a session: of the work so far, and the session goes on in a new transaction."""
        self._state.mode.rollback(self)


def _wait(timeout: float | None) -> float:
    """Peewee's ``timeout`` convention (``None``: no wait, ``0``: for ever) in seconds."""
    if timeout is None:
        return 0.0
    return float("inf") if timeout == 0 else float(timeout)


# -- database_proxy -----------------------------------------------------------
class SessionStack(threading.local):
    """This thread's open sessions, the one per-thread record of them (:data:`sessions`).

    ``stack``: the database of each open session, innermost last (what
    :data:`database_proxy` resolves to). ``reads``: ``(router, mode)`` of each
    routed read in progress (:meth:`marketstore.routing.ReplicaRouter.read`),
    innermost last. ``joins``: how many repository reads are in progress
    (:meth:`marketstore.connection.DatabaseConnection.read`); a session opened
    inside one joins an open transaction without a savepoint. ``call``: the
    repository call whose span is open (:mod:`marketstore.telemetry`), else ``None``.
    """

    def __init__(self):
        self.stack: list = []
        self.reads: list = []
        self.joins = 0
        self.call = None


sessions = SessionStack()


class RoutingDatabaseProxy(peewee.DatabaseProxy):
    """A ``DatabaseProxy`` that resolves to the database of this thread's innermost
    session (:meth:`route`), else to the one bound by ``initialize()``."""

    __slots__ = ("_bound", "_route")

    def __init__(self):
        object.__setattr__(self, "_route", sessions)
        super().__init__()

    def __setattr__(self, name, value):
        object.__setattr__(self, name, value)  # Proxy's own guard reads __slots__, which we extend

    @property
    def obj(self):
        stack = self._route.stack
        return stack[-1] if stack else self._bound

    @obj.setter
    def obj(self, value):
        object.__setattr__(self, "_bound", value)

    def connection_context(self):
        return self.obj.connection_context()

    def push(self, database) -> None:
        """Route this thread's queries to ``database`` until the matching :meth:`pop`."""
        self._route.stack.append(database)

    def pop(self) -> None:
        self._route.stack.pop()

    def routed(self) -> bool:
        """Whether this thread is inside a session (of any connection)."""
        return bool(self._route.stack)


database_proxy = RoutingDatabaseProxy()
"""The models' database: this thread's session's, else the default connection's
(bound by ``initialize_database()``); nothing connects at import."""
