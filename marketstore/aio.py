"""The async API: awaitable twins of the repository methods, and async sessions.

The sync core runs on worker threads, as Django's async ORM runs its own:
an async session (:func:`get_async_db_session`) is pinned to one thread for
its whole life, and the sync session it holds (a pooled connection, its
transaction, the models' ``database_proxy``) lives on that thread, where
every awaited repository call of the session runs, joining it. So there is
one implementation of every query; ``aget_range`` is ``get_range`` run
there. Outside an async session a twin runs its sync method on a worker
thread, in its own short session(s).

The threads of a :class:`~marketstore.connection.DatabaseConnection` are
bounded like its connections (``pool_size + max_overflow``); a session that
finds them all busy waits up to ``pool_timeout``, then raises
``PoolExhaustedError``. An idle thread ends after :data:`IDLE_SECONDS`.

A task cancelled while its call runs (a client gone) cancels the running
statement on the server (``connection.cancel()``, so the thread is free at
once) and the session then rolls back and returns its connection, on the
same thread, before the thread serves another session. Nothing here needs
Peewee 4: it works on Peewee 3.17 and 4.
"""
from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import queue
import threading
import logging
import weakref

from . import telemetry
from .connection import DatabaseConnection, db_connection
from .errors import DRIVER_ERRORS, DatabaseConnectionError, PoolExhaustedError

logger = logging.getLogger(__name__)

IDLE_SECONDS = 5.0  # an idle worker thread ends after this long: a quiet process keeps none

# The async session of the running task (and of the tasks it starts).
_current: contextvars.ContextVar["AsyncSession | None"] = contextvars.ContextVar("marketstore_async_session",
                                                                                  default=None)


class _Job:
    __slots__ = ("fn", "args", "kwargs", "future", "dbs", "release", "cancelled", "context")

    def __init__(self, fn, args, kwargs, future, dbs, release):
        self.fn, self.args, self.kwargs, self.future, self.dbs = fn, args, kwargs, future, dbs
        self.release, self.cancelled = release, False
        # The caller's OpenTelemetry context: spans the job starts are its children (None when off).
        self.context = telemetry.captured()


def _deliver(future: asyncio.Future, ok: bool, value) -> None:
    if not future.done():  # the awaiting task may have been cancelled meanwhile
        future.set_result(value) if ok else future.set_exception(value)


def _databases(connection: DatabaseConnection) -> tuple:
    """The databases a job of ``connection`` may hold a connection of: the primary, each replica."""
    if not connection.is_initialized:
        return ()
    # The router's replicas: DatabaseConnection has no public accessor for them yet.
    return (connection.database, *getattr(connection._router, "_replicas", ()))


class _Worker(threading.Thread):
    """One thread running jobs in order; the async session that holds it owns it."""

    def __init__(self, threads: "_Threads"):
        super().__init__(name="marketstore-aio", daemon=True)
        self.threads, self.jobs, self.current, self.states = threads, queue.SimpleQueue(), None, ()

    def submit(self, fn, args=(), kwargs=None, dbs=(), *, release=False) -> _Job:
        job = _Job(fn, args, kwargs or {}, asyncio.get_running_loop().create_future(), dbs, release)
        self.jobs.put(job)
        return job

    def post(self, fn, args=(), *, release=False) -> None:
        """Run ``fn(*args)`` on this thread after the jobs before it, awaited by nobody."""
        self.jobs.put(_Job(fn, args, {}, None, (), release))

    async def call(self, fn, args=(), kwargs=None, dbs=(), *, release=False, interruptible=True):
        """``fn(*args, **kwargs)`` on this thread; a cancellation while it runs cancels its statement."""
        job = self.submit(fn, args, kwargs, dbs, release=release)
        try:
            return await job.future
        except asyncio.CancelledError:
            if interruptible:
                job.cancelled = True  # not started yet: skipped (the worker checks after publishing current)
                if self.current is job:
                    self.interrupt()
            raise

    def interrupt(self) -> None:
        """Cancel the statement this thread's job is running (``PQcancel``: thread-safe, one short round trip)."""
        for state in self.states:
            conn = state.get("conn")
            if conn is not None and not conn.closed:
                try:
                    conn.cancel()
                except DRIVER_ERRORS:  # the connection broke: the job fails on its own
                    pass

    def run(self) -> None:
        jobs = self.jobs
        while True:
            try:
                job = jobs.get(timeout=IDLE_SECONDS)
            except queue.Empty:
                if self.threads.retire(self):
                    return
                continue
            if job.future is None:  # posted: nobody waits for it
                try:
                    job.fn(*job.args, **job.kwargs)
                except Exception as exc:
                    logger.warning("ending a read-only async session failed: %s: %s", type(exc).__name__, exc)
            elif not job.cancelled:
                # Peewee keeps each connection in a thread-local: this thread's own dicts of
                # them, read by interrupt() from the event loop's thread.
                self.states = [db._state.__dict__ for db in job.dbs]
                self.current = job
                ok, value = True, None
                if not job.cancelled:
                    try:
                        value = telemetry.within(job.context, job.fn, *job.args, **job.kwargs)
                    except BaseException as exc:  # handed to the awaiting task
                        ok, value = False, exc
                self.current = None
                try:
                    job.future.get_loop().call_soon_threadsafe(_deliver, job.future, ok, value)
                except RuntimeError:  # the event loop is closed: nobody is waiting
                    pass
                value = None
            if job.release:
                self.threads.release(self)


class _Threads:
    """The worker threads of one connection: at most ``size``; a checkout waits up to ``timeout``."""

    def __init__(self, size: int, timeout: float):
        self.size, self.timeout = size, timeout
        self._lock = threading.Lock()
        self._idle: list[_Worker] = []
        self._count = 0
        self._waiters: list[asyncio.Future] = []

    async def acquire(self) -> _Worker:
        with self._lock:
            if self._idle:
                return self._idle.pop()
            if self._count < self.size:
                self._count += 1
                worker = None
            else:
                worker = asyncio.get_running_loop().create_future()
                self._waiters.append(worker)
        if worker is None:
            worker = _Worker(self)
            worker.start()
            return worker
        waiter = worker
        try:
            return await asyncio.wait_for(waiter, self.timeout)  # asyncio.timeout() is Python 3.11+
        except BaseException as exc:
            if waiter.done() and not waiter.cancelled():
                # Handed over just as this task was cancelled or timed out: pass it on.
                self.release(waiter.result())
            else:
                with self._lock:
                    if waiter in self._waiters:
                        self._waiters.remove(waiter)
            if isinstance(exc, (TimeoutError, asyncio.TimeoutError)):  # distinct classes before 3.11
                raise PoolExhaustedError(f"all {self.size} connections in use for {self.timeout:g} s "
                                         "(pool_timeout)") from None
            raise

    def release(self, worker: _Worker) -> None:
        """``worker`` is free: to the longest waiting session, else idle (from any thread)."""
        with self._lock:
            while self._waiters:
                waiter = self._waiters.pop(0)
                try:
                    waiter.get_loop().call_soon_threadsafe(self._hand, waiter, worker)
                    return
                except RuntimeError:  # its loop is closed
                    continue
            self._idle.append(worker)

    def _hand(self, waiter: asyncio.Future, worker: _Worker) -> None:
        if waiter.done():  # timed out or cancelled since: the next one
            self.release(worker)
        else:
            waiter.set_result(worker)

    def retire(self, worker: _Worker) -> bool:
        """Whether idle ``worker`` ends now (called by the worker itself after a quiet spell)."""
        with self._lock:
            if worker not in self._idle:
                return False
            self._idle.remove(worker)
            self._count -= 1
            return True

    def status(self) -> dict:
        with self._lock:
            return {"threads": self._count, "idle": len(self._idle), "waiting": len(self._waiters)}


_registry: "weakref.WeakKeyDictionary[DatabaseConnection, tuple]" = weakref.WeakKeyDictionary()
_registry_lock = threading.Lock()


def threads_of(connection: DatabaseConnection) -> _Threads:
    """The worker threads of ``connection``, sized by its settings (new ones after ``initialize()``)."""
    settings = connection.settings
    if settings is None:
        raise DatabaseConnectionError("database not initialized: call initialize_database() first")
    entry = _registry.get(connection)
    if entry is None or entry[0] is not settings:
        with _registry_lock:
            entry = _registry.get(connection)
            if entry is None or entry[0] is not settings:
                entry = _registry[connection] = (settings, _Threads(settings.max_connections,
                                                                    float(settings.pool_timeout or 0)))
    return entry[1]


class AsyncSession:
    """``async with connection.async_session() as db:`` -- see :func:`get_async_db_session`."""

    __slots__ = ("connection", "_session", "_read_only", "_worker", "_owned", "_entered", "_used", "_parent",
                 "_dbs")

    def __init__(self, connection: DatabaseConnection, operation: str = "session", model: str = "",
                 read_only: bool = False):
        self.connection = connection
        self._session = connection.session(operation, model, read_only)
        self._read_only = read_only
        self._entered = self._used = False

    async def __aenter__(self) -> "AsyncSession":
        parent = self._parent = _current.get()
        self._owned = parent is None
        # Nested: on the outer session's thread, where the sync session nests (a savepoint).
        self._worker = await threads_of(self.connection).acquire() if parent is None else parent._worker
        self._dbs = _databases(self.connection) + (parent._dbs if parent is not None else ())
        # The sync session opens with the first call, in the same hop: a thread hop costs
        # more than the whole short transaction's client work (see README, "Async").
        _current.set(self)
        return self

    async def __aexit__(self, exc_type, exc, tb) -> bool:
        # set(), not reset(token): a FastAPI dependency may leave in another context.
        _current.set(self._parent)
        if not self._used:  # nothing ever ran on the thread: nothing to close there
            if self._owned:
                self._worker.threads.release(self._worker)
            return False
        if self._read_only and self._owned and exc_type is None:
            # Ending a read-only transaction changes nothing the caller could act on:
            # not waited for (half the hops of a one-read request). The thread
            # releases itself after it, before serving another session.
            self._worker.post(self._leave, (None, None, None), release=True)
            return False
        # Never skipped nor interrupted, and it releases the thread itself once the
        # transaction is over: a second cancellation here cannot leak the connection.
        return await self._worker.call(self._leave, (exc_type, exc, tb), release=self._owned,
                                       interruptible=False)

    def call(self, fn, args=(), kwargs=None, dbs=None):
        """Await ``fn(*args, **kwargs)`` run on this session's thread, inside its sync session."""
        session = self
        while session is not None and not session._used:
            session._used, session = True, session._parent
        return self._worker.call(self._within, (fn, args, kwargs or {}), None, self._dbs if dbs is None else dbs)

    def _within(self, fn, args, kwargs):
        self._open()
        return fn(*args, **kwargs)

    def _open(self) -> None:
        # On the thread: the outer sessions first, so that this one nests in them.
        if not self._entered:
            if self._parent is not None:
                self._parent._open()
            self._session.__enter__()
            self._entered = True

    def _leave(self, exc_type, exc, tb) -> bool:
        if not self._entered:
            return False
        self._entered = False
        return self._session.__exit__(exc_type, exc, tb)

    async def run(self, fn, /, *args, **kwargs):
        """``fn(*args, **kwargs)`` (sync code: Peewee queries, ``db.execute_sql``) run in this session."""
        return await self.call(fn, args, kwargs)

    async def execute_sql(self, sql: str, params=None):
        """Run ``sql`` in this session: its rows (a list) if it returns any, else its row count."""
        def execute():
            cursor = self.connection.database.execute_sql(sql, params)
            return cursor.fetchall() if cursor.description is not None else cursor.rowcount
        return await self.run(execute)


def async_session(connection: DatabaseConnection, operation: str = "session", model: str = "",
                  read_only: bool = False) -> AsyncSession:
    """``async with async_session(connection) as db:`` -- :func:`get_async_db_session` on ``connection``."""
    return AsyncSession(connection, operation, model, read_only)


def get_async_db_session(operation: str = "session", model: str = "", read_only: bool = False) -> AsyncSession:
    """``async with get_async_db_session() as db:`` -- one transaction across awaited calls.

    The awaited repository calls inside run, in order, on the one thread this
    session holds, joining its sync session (:meth:`DatabaseConnection.session`):
    commit on success; an exception rolls back and is re-raised (driver errors
    translated); nested async sessions are savepoints; ``read_only=True``
    routes as the sync session does. ``db.run(fn, ...)`` and
    ``await db.execute_sql(sql)`` run sync code in it. A cancelled task's
    statement is cancelled, and the session rolls back and returns its
    connection. Raises ``PoolExhaustedError`` when no thread (or connection)
    frees within ``pool_timeout``.
    """
    return AsyncSession(db_connection, operation, model, read_only)


# -- the awaitable twins ------------------------------------------------------
_READS_CODE = None  # the code of marketstore.repository.reads's wrapper: a read method's


async def _call(repository, name: str, read: bool, args, kwargs):
    method = getattr(repository, name)
    session = _current.get()
    if session is not None:  # join it, on its thread
        dbs = session._dbs
        if repository.connection is not session.connection:
            dbs = dbs + _databases(repository.connection)
        return await session.call(method, args, kwargs, dbs)
    connection = repository.connection
    if read:  # its own short sessions, routed; a cancel stops the statement, nothing to roll back
        worker = await threads_of(connection).acquire()
        return await worker.call(method, args, kwargs, _databases(connection), release=True)
    # A write: in a session of its own, so that a cancellation, whenever it comes, rolls back.
    async with AsyncSession(connection, name, repository.model.__name__) as session:
        return await session.call(method, args, kwargs)


def _twin(cls, name: str, method) -> None:
    read = getattr(method, "__code__", None) is _READS_CODE

    async def twin(self, *args, **kwargs):
        return await _call(self, name, read, args, kwargs)

    functools.update_wrapper(twin, method)  # signature, annotations, module: the sync method's
    twin.__name__ = "a" + name
    twin._marketstore_twin = True
    twin.__qualname__ = f"{cls.__qualname__}.a{name}"
    first = (method.__doc__ or "").strip().split("\n", 1)[0]
    twin.__doc__ = (f"Awaitable :meth:`{cls.__qualname__}.{name}`: the same call, run on the async "
                    f"session's thread (or a worker thread outside one); see :mod:`marketstore.aio`."
                    + (f"\n\n{name}: {first}" if first else ""))
    setattr(cls, "a" + name, twin)


class AsyncTwins:
    """Mixin: every public method ``m`` of a subclass gets an awaitable twin ``am``, generated once."""

    _not_twinned = frozenset({"session"})  # a sync context manager: get_async_db_session() is its twin

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        global _READS_CODE
        if _READS_CODE is None:
            from .repository import reads  # only here: repository.py imports this module
            _READS_CODE = reads(lambda self: None).__code__
        own = vars(cls)
        for name, value in list(own.items()):
            # Plain functions only (no static/class methods, properties, nested classes); a
            # twin the class writes itself is kept; generated twins get no twin of their own.
            if (inspect.isfunction(value) and not name.startswith("_") and name not in cls._not_twinned
                    and "a" + name not in own and not getattr(value, "_marketstore_twin", False)):
                _twin(cls, name, value)
