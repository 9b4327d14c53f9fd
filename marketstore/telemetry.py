"""OpenTelemetry spans and metrics by the database-client semantic conventions (the ``telemetry`` extra).

Switched once per :meth:`~marketstore.connection.DatabaseConnection.initialize`
by ``Settings.telemetry`` (``MARKETSTORE_TELEMETRY``): unset, on when
``opentelemetry-api`` can be imported; ``on``, required (``MissingExtraError``
without it); ``off``, never. Off, nothing of OpenTelemetry is imported and
nothing is instrumented. On, :func:`instrument` and :func:`trace_calls` give
the database, its pool and the connection instance attributes that wrap their
methods (``execute_sql``; ``checkout``, ``checkin``, ``connect``; ``session``,
``read``), chosen once: no call asks whether telemetry is on.

Recorded (README, "Telemetry"): a CLIENT span per repository call, parent of
one per statement; ``db.client.operation.duration`` of each; the pool
metrics. Never a parameter value, an exception message or ``db.query.text``
(SQL written by hand, and COPY, may hold literals). The providers are the
global ones, or those given to :func:`use`.
"""
from __future__ import annotations

import logging
import threading
import time
import types
import weakref

from .connection import DatabaseConnection, Session
from .database import sessions
from .errors import DRIVER_ERRORS, MarketstoreError, MissingExtraError, PoolExhaustedError, driver_error, translate
from .extras import require
from .query_summary import PARSED_PREFIX, summarize

SYSTEM = "postgresql"
DEFAULT_PORT = 5432
DURATION_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10)
"""The conventions' buckets of ``db.client.operation.duration`` (seconds), used for every time histogram."""
SCOPE = "marketstore"
MINIMUM_API = (1, 30)  # opentelemetry-api: the first whose histograms take explicit_bucket_boundaries_advisory

logger = logging.getLogger(__name__)
_lock = threading.Lock()
_providers: tuple = (None, None)  # (tracer provider, meter provider) given to use(); None: the global one
_otel: "_Otel | None" = None  # the tracer and instruments of those providers, made on first need
_made: dict = {}  # (tracer provider, meter provider) -> their _Otel: an instrument is made once per provider
_pools: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # instrumented pool -> its pool name
_context = None  # opentelemetry.context, once telemetry has been on
perf_counter = time.perf_counter


def enabled(mode: str | None) -> bool:
    """Whether telemetry is on for ``mode`` (``Settings.telemetry``), importing OpenTelemetry if so.

    Raises ``MissingExtraError`` for ``"on"`` without ``opentelemetry-api`` >= :data:`MINIMUM_API`.
    """
    global _context
    if mode == "off":
        return False
    try:
        version = require("opentelemetry.version", "telemetry").__version__
        context = require("opentelemetry.context", "telemetry")
        require("opentelemetry.trace", "telemetry")
        require("opentelemetry.metrics", "telemetry")
    except ImportError:  # MissingExtraError is one
        if mode == "on":
            raise
        return False
    if tuple(int(part) for part in version.split(".")[:2]) < MINIMUM_API:  # installed for something else
        message = (f"opentelemetry-api {version} is installed; marketstore's telemetry needs "
                   f">= {'.'.join(map(str, MINIMUM_API))} (pip install 'marketstore[telemetry]')")
        if mode == "on":
            raise MissingExtraError(message, extra="telemetry", module="opentelemetry")
        logger.warning("telemetry off: %s", message)
        return False
    _context = context
    return True


def captured():
    """The caller's OpenTelemetry context, for work a worker thread does for it (:func:`within`);
    ``None`` while telemetry has never been on (nothing of OpenTelemetry is imported then)."""
    context = _context
    return None if context is None else context.get_current()


def within(context, fn, /, *args, **kwargs):
    """``fn(*args, **kwargs)`` with ``context`` (from :func:`captured`) current, so that the
    spans it starts are children of the caller's; ``None``: as it is."""
    if context is None:
        return fn(*args, **kwargs)
    token = _context.attach(context)
    try:
        return fn(*args, **kwargs)
    finally:
        _context.detach(token)


def use(tracer_provider=None, meter_provider=None) -> None:
    """Record to these providers from now on (``None``: the global one, the default)."""
    global _providers, _otel
    with _lock:
        _providers, _otel = (tracer_provider, meter_provider), None
    if len(_pools):  # the pools' observable instruments, on the new meter provider from now on
        _current()


def _current() -> "_Otel":
    """The tracer and instruments of the providers in use, made once per pair of providers."""
    global _otel
    otel = _otel
    if otel is None:
        with _lock:
            otel = _made.get(_providers)
            if otel is None:
                if len(_made) >= 8:  # providers a test or a bench switched between, long shut down
                    _made.clear()
                otel = _made[_providers] = _Otel(*_providers)
            _otel = otel
    return otel


class _Otel:
    """The tracer and the instruments, made once per pair of providers."""

    def __init__(self, tracer_provider, meter_provider):
        from opentelemetry import context, metrics, trace

        self.attach, self.detach, self.in_context = context.attach, context.detach, trace.set_span_in_context
        self.client, self.error = trace.SpanKind.CLIENT, trace.StatusCode.ERROR
        self.start_span = trace.get_tracer(SCOPE, tracer_provider=tracer_provider).start_span
        meter = metrics.get_meter(SCOPE, meter_provider=meter_provider)

        for attribute, name, description in (
                ("duration", "db.client.operation.duration", "Duration of database client operations."),
                ("wait_time", "db.client.connection.wait_time",
                 "The time it took to obtain an open connection from the pool."),
                ("create_time", "db.client.connection.create_time", "The time it took to create a new connection."),
                ("use_time", "db.client.connection.use_time",
                 "The time between borrowing a connection and returning it to the pool.")):
            setattr(self, attribute, meter.create_histogram(name, unit="s", description=description,
                                                            explicit_bucket_boundaries_advisory=DURATION_BUCKETS))
        self.timeouts = meter.create_counter(
            "db.client.connection.timeouts", unit="{timeout}",
            description="The number of connection timeouts that have occurred trying to obtain a connection "
                        "from the pool.")
        observation = metrics.Observation
        for name, unit, read, description in (
                ("db.client.connection.count", "{connection}", _counts,
                 "The number of connections that are currently in state described by the state attribute."),
                ("db.client.connection.idle.max", "{connection}", _figure(2),
                 "The maximum number of idle open connections allowed."),
                ("db.client.connection.max", "{connection}", _figure(3),
                 "The maximum number of open connections allowed."),
                ("db.client.connection.pending_requests", "{request}", _figure(4),
                 "The number of current pending requests for an open connection.")):
            meter.create_observable_up_down_counter(
                name, callbacks=[lambda options, read=read: [observation(v, a) for v, a in read()]],
                unit=unit, description=description)


# -- pool state, read at collection ---------------------------------------------
def _pool_figures() -> dict:
    """``{pool name: [idle, used, idle max, max, pending]}``, summed over the live pools of each name."""
    figures: dict = {}
    for pool, name in list(_pools.items()):
        status = pool.status()
        most = status["max_connections"] or 0
        row = figures.setdefault(name, [0, 0, 0, 0, 0])
        for i, value in enumerate((status["idle"], status["in_use"], status["pool_size"] or most, most,
                                   pool.pending)):
            row[i] += value
    return figures


def _counts():
    for name, row in _pool_figures().items():
        for state, value in (("idle", row[0]), ("used", row[1])):
            yield value, {"db.client.connection.pool.name": name, "db.client.connection.state": state}


def _figure(index: int):
    def read():
        return [(row[index], {"db.client.connection.pool.name": name}) for name, row in _pool_figures().items()]
    return read


# -- one database: a primary or a replica -----------------------------------------
class DatabaseTelemetry:
    """What the spans and metrics of one database carry: its server, namespace and pool name.

    ``params``: its libpq connection parameters (a multi-host URL is named by its first host).
    """

    __slots__ = ("attributes", "pool_name", "_statements")

    def __init__(self, params, database: str):
        host = (params.get("host") or params.get("hostaddr") or "localhost").split(",")[0]
        port = int(str(params.get("port") or DEFAULT_PORT).split(",")[0])
        self.attributes = {"db.system.name": SYSTEM, "db.namespace": database, "server.address": host,
                           "server.port": port}
        self.pool_name = f"{host}:{port}/{database}"
        self._statements: dict = {}  # statement prefix -> (span name, attributes)

    def statement(self, sql: str) -> tuple[str, dict]:
        """The span name and attributes of ``sql`` (summarized once per distinct statement)."""
        key = sql[:PARSED_PREFIX]
        found = self._statements.get(key)
        if found is None:
            operation, collection, summary = summarize(key)
            attributes = dict(self.attributes)
            for name, value in (("db.operation.name", operation), ("db.collection.name", collection),
                                ("db.query.summary", summary)):
                if value:
                    attributes[name] = value
            if len(self._statements) >= 1024:  # hand-written SQL with literals: bounded
                self._statements.clear()
            found = self._statements[key] = (summary or SYSTEM, attributes)
        return found



def _failure(exc: BaseException) -> dict:
    """``error.type`` and, from the server, ``db.response.status_code`` of ``exc``."""
    if isinstance(exc, MarketstoreError):
        kind = type(exc)
    elif isinstance(exc, DRIVER_ERRORS):
        kind = type(translate(exc))
    else:
        kind = type(exc)
    name = kind.__qualname__ if kind.__module__ in ("builtins", "marketstore.errors") \
        else f"{kind.__module__}.{kind.__qualname__}"
    failure = {"error.type": name}
    code = getattr(driver_error(exc), "pgcode", None)
    if code:
        failure["db.response.status_code"] = code
    return failure


def _finish(otel: "_Otel", span, attributes: dict, started: float, exc: BaseException | None) -> None:
    """End ``span`` (failed with ``exc`` if given) and record its duration with ``attributes``."""
    elapsed = perf_counter() - started
    if exc is not None:
        failure = _failure(exc)
        span.set_attributes(failure)
        span.set_status(otel.error)  # no description: an error's message may hold values
        attributes = {**attributes, **failure}
    span.end()
    otel.duration.record(elapsed, attributes)


class Statement:
    """The CLIENT span and duration of one statement: :meth:`end` it once."""

    __slots__ = ("otel", "span", "attributes", "started")

    def __init__(self, telemetry: DatabaseTelemetry, sql: str):
        otel = self.otel = _current()
        name, self.attributes = telemetry.statement(sql)
        self.span = otel.start_span(name, kind=otel.client, attributes=self.attributes)
        self.started = perf_counter()

    def end(self, exc: BaseException | None = None, rows: int | None = None) -> None:
        """End the span: failed with ``exc`` if given; ``rows``: a batch's size (COPY)."""
        if rows is not None and rows >= 2:  # the conventions: a batch is two operations or more
            self.span.set_attribute("db.operation.batch.size", rows)
        _finish(self.otel, self.span, self.attributes, self.started, exc)


def statement(db, sql: str) -> Statement | None:
    """The span of ``sql`` sent to ``db``'s driver other than by ``execute_sql`` (COPY), or
    ``None`` when telemetry is off for ``db``."""
    telemetry = getattr(db, "telemetry", None)  # a plain Peewee database has none
    return None if telemetry is None else Statement(telemetry, sql)


def _execute_sql(db, sql, params=None, *args, **kwargs):
    # The database's execute_sql, in a span (bound to each instrumented database).
    record = Statement(db.telemetry, sql)
    try:
        cursor = type(db).execute_sql(db, sql, params, *args, **kwargs)
    except BaseException as exc:
        record.end(exc)
        raise
    record.end()
    return cursor


# -- repository calls ---------------------------------------------------------------
class _Call:
    """This thread's open repository-call span (``sessions.call``), current for the statements inside."""

    __slots__ = ("otel", "span", "token", "attributes", "telemetry", "started")

    def __init__(self, operation: str, table: str):
        otel = self.otel = _current()
        self.telemetry = None
        self.attributes = {"db.system.name": SYSTEM, "db.operation.name": operation}
        if table:  # a read() of a plain function has none
            self.attributes["db.collection.name"] = table
        self.span = otel.start_span(f"{operation} {table}".rstrip(), kind=otel.client, attributes=self.attributes)
        self.token = otel.attach(otel.in_context(self.span))
        sessions.call = self
        self.started = perf_counter()

    def ran_on(self, db) -> None:
        """A session of the call runs on ``db``: its server is the span's (the last one, after a rerun)."""
        telemetry = db.telemetry
        if telemetry is not None and telemetry is not self.telemetry:
            self.telemetry = telemetry
            self.span.set_attributes(telemetry.attributes)

    def end(self, exc: BaseException | None) -> None:
        sessions.call = None
        self.otel.detach(self.token)
        telemetry = self.telemetry
        attributes = self.attributes if telemetry is None else {**telemetry.attributes, **self.attributes}
        _finish(self.otel, self.span, attributes, self.started, exc)


_TABLES: dict = {}  # model name -> table name


def _table(model: str) -> str:
    table = _TABLES.get(model)
    if table is None:
        from .models import MODELS  # not at import: the models import the connection layer

        _TABLES.update({m.__name__: m._meta.table_name for m in MODELS})
        table = _TABLES.setdefault(model, model)
    return table


class TracedSession(Session):
    """A :class:`~marketstore.connection.Session` that, for a repository call (a model
    named, no call open in the thread), is the call's span."""

    __slots__ = ("_call",)

    def __enter__(self):
        call = self._call = _Call(self._operation, _table(self._model)) \
            if self._model and sessions.call is None else None
        try:
            db = Session.__enter__(self)
        except BaseException as exc:
            if call is not None:
                call.end(exc)
            raise
        current = sessions.call
        if current is not None:
            current.ran_on(db)
        return db

    def __exit__(self, exc_type, exc, tb) -> bool:
        call = self._call
        if call is None:
            return Session.__exit__(self, exc_type, exc, tb)
        try:
            result = Session.__exit__(self, exc_type, exc, tb)
        except BaseException as error:
            call.end(error)
            raise
        call.end(exc)
        return result


def _session(connection, operation: str = "session", model: str = "", read_only: bool = False):
    return TracedSession(connection, operation, model, read_only)


def _read(connection, fn, /, *args, **kwargs):
    # DatabaseConnection.read in the span of the repository call, so that a rerun
    # on the primary is part of the same call (the conventions' "with all retries").
    if sessions.call is not None:
        return DatabaseConnection.read(connection, fn, *args, **kwargs)
    model = getattr(args[0], "model", None) if args else None
    call = _Call(fn.__name__, model._meta.table_name if model is not None else "")
    try:
        result = DatabaseConnection.read(connection, fn, *args, **kwargs)
    except BaseException as exc:
        call.end(exc)
        raise
    call.end(None)
    return result


# -- instrumenting -------------------------------------------------------------------
def instrument(db, settings) -> None:
    """Give ``db`` (made from ``settings``) and its pool their spans and metrics."""
    telemetry = db.telemetry = DatabaseTelemetry(settings.connect_params, settings.database)
    db.execute_sql = types.MethodType(_execute_sql, db)
    _instrument_pool(db.pool, telemetry.pool_name)
    _current()  # the instruments, so that the pool is observed before its first checkout


def trace_calls(connection: DatabaseConnection, on: bool) -> None:
    """Make ``connection``'s repository sessions and reads spans of repository calls, or
    (``on=False``) give it back its own methods."""
    if on:
        connection.session = types.MethodType(_session, connection)
        connection.read = types.MethodType(_read, connection)
    else:
        vars(connection).pop("session", None)
        vars(connection).pop("read", None)


def forget(router) -> None:
    """Stop reporting the pools of ``router``'s databases (closed: the connection let them go)."""
    sampler = getattr(router, "sampler", None)
    for db in [router.primary, *(replica.db for replica in (sampler.replicas if sampler is not None else ()))]:
        _pools.pop(db.pool, None)


def _instrument_pool(pool, name: str) -> None:
    attributes = {"db.client.connection.pool.name": name}
    checkout, checkin, connect = pool.checkout, pool.checkin, pool.connect
    # When each connection out was checked out. Connections closed while out
    # (close_all, close_stale) leave an entry; a later connection may reuse the id.
    since: dict = {}

    def timed_checkout():
        started = perf_counter()
        try:
            conn = checkout()
        except PoolExhaustedError:
            _current().timeouts.add(1, attributes)
            raise
        now = since[id(conn)] = perf_counter()
        _current().wait_time.record(now - started, attributes)
        return conn

    def timed_checkin(conn, discard: bool = False) -> None:
        began = since.pop(id(conn), None)
        checkin(conn, discard)
        if began is not None:
            _current().use_time.record(perf_counter() - began, attributes)

    def timed_connect():
        started = perf_counter()
        conn = connect()
        _current().create_time.record(perf_counter() - started, attributes)
        return conn

    pool.checkout, pool.checkin, pool.connect = timed_checkout, timed_checkin, timed_connect
    _pools[pool] = name
