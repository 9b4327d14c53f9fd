"""The exception hierarchy, and the one place where driver errors are translated.

Callers depend on these classes, never on psycopg2 or peewee: every driver error
that leaves the package goes through :func:`translate`, with the original chained
as ``__cause__``.
"""
from __future__ import annotations

import re

import psycopg2
import psycopg2.errorcodes
import peewee
from playhouse.pool import MaxConnectionsExceeded


class MarketstoreError(Exception):
    """Base class of every error raised by marketstore."""


# Each translated error also derives from the Peewee exception a plain Peewee
# user would catch for it (``except peewee.IntegrityError`` keeps working around
# repository calls), and MarketstoreError stays the one root of our own.
class ConfigurationError(MarketstoreError, ValueError):
    """A setting (environment variable or option) has a bad value."""


class MissingExtraError(MarketstoreError, ImportError):
    """An optional feature was used without its extra installed; the message names the extra.

    Raised by :func:`marketstore.extras.require`, which says it the one way:
    ``extra`` (e.g. ``'frames'``) and the missing ``module`` are attributes.
    """

    def __init__(self, message: str, *, extra: str | None = None, module: str | None = None):
        super().__init__(message)
        self.extra, self.module = extra, module


# The plot extra's missing matplotlib is a MissingExtraError like any other extra;
# the name stays for code that catches it.
PlotUnavailable = MissingExtraError


class EmbeddedUnavailable(MarketstoreError, RuntimeError):
    """The embedded PostgreSQL cannot start here (its data directory is unusable, or initdb/pg_ctl failed).

    Without the ``embedded`` extra installed, :class:`MissingExtraError` is raised instead.
    """


class DemoError(MarketstoreError, ValueError):
    """The demo cannot run as asked (e.g. another seed's data is loaded)."""


class DatabaseConnectionError(MarketstoreError, peewee.OperationalError):
    """The server could not be reached, or the connection was lost."""


class PoolExhaustedError(DatabaseConnectionError, MaxConnectionsExceeded):
    """Every pooled connection stayed in use for longer than ``pool_timeout``."""


class TransactionError(MarketstoreError, peewee.DatabaseError):
    """A transaction failed and was rolled back."""


class IntegrityViolation(TransactionError, peewee.IntegrityError):
    """A unique, foreign-key, not-null or check constraint refused the write."""


class SerializationFailure(TransactionError, peewee.OperationalError):
    """A deadlock or serialization conflict: the whole transaction is safe to retry."""


class QueryError(MarketstoreError, peewee.DatabaseError):
    """A statement failed (bad SQL, statement timeout, missing table...)."""


class NotFoundError(QueryError, peewee.DoesNotExist):
    """The requested row does not exist."""


class ReadOnlyError(QueryError):
    """A write reached a standby or a read-only session (SQLSTATE 25006)."""


def location(source: str | None = None, line: int | None = None, row: int | None = None,
             field: str | None = None) -> str:
    """Where a value is, for a message a person reads; ``""`` when nothing is known.

    ``location("bars.csv", line=4)`` is ``"bars.csv, line 4"``, ``location(row=3,
    field="close")`` is ``"row 3, field 'close'"``: a file's ``line`` (the header
    being line 1), or a ``row`` (1-based among the rows given). Every message
    that says where -- the errors' own and the command line's -- is built here.
    """
    parts = [source, None if line is None else f"line {line}", None if row is None else f"row {row}",
             None if field is None else f"field '{field}'"]
    return ", ".join(part for part in parts if part is not None)


def _prefixed(where: str, message: str) -> str:
    return f"{where}: {message}" if where else message


class DataValidationError(MarketstoreError, ValueError):
    """Input refused before it reached the server.

    Attributes: ``field`` (the bare column or parameter name), ``value``,
    ``expected``, and where known ``source`` (a file's path) with ``line``
    (the physical line of the file, the header being line 1), or ``row``
    (1-based position of a row among the rows given).
    """

    def __init__(self, field: str, value, expected: str, *, source: str | None = None,
                 line: int | None = None, row: int | None = None):
        self.field = field
        self.value = value
        self.expected = expected
        self.source, self.line, self.row = source, line, row
        super().__init__(_prefixed(self.location, f"{field}={_short(value)}: expected {expected}"))

    @property
    def location(self) -> str:
        """Where the bad value was (:func:`location` of ``source``, ``line``, ``row``), or ``""``."""
        return location(self.source, self.line, self.row)

    def at(self, *, source: str | None = None, line: int | None = None,
           row: int | None = None) -> "DataValidationError":
        """A copy of this error located in a file (``source``, ``line``) or a row (``row``)."""
        return DataValidationError(self.field, self.value, self.expected,
                                   source=self.source if source is None else source,
                                   line=self.line if line is None else line,
                                   row=self.row if row is None else row)


def _short(value, limit: int = 80) -> str:
    try:
        text = repr(value)
    except Exception:  # noqa: BLE001 - e.g. an int over 4300 digits: the error must still be raised
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


# SQLSTATE classes (first two characters) and codes we map.
_CONNECTION_CLASSES = {"08"}  # connection exception
_CONNECTION_CODES = {
    "57P01",  # admin_shutdown (pg_terminate_backend, fast shutdown)
    "57P02",  # crash_shutdown
    "57P03",  # cannot_connect_now (server starting up / shutting down)
    "53300",  # too_many_connections
}
_READ_ONLY_CODE = psycopg2.errorcodes.READ_ONLY_SQL_TRANSACTION  # 25006
# Recovery refuses some things with a generic code: "cannot execute ... during
# recovery" (0A000), "cannot assign TransactionIds during recovery" (25000), ...
_RECOVERY_CODES = {"0A000", "25000", "55000"}
_SERIALIZATION_CODES = {
    psycopg2.errorcodes.SERIALIZATION_FAILURE,
    psycopg2.errorcodes.DEADLOCK_DETECTED,
}


def driver_error(exc: BaseException) -> BaseException | None:
    """The psycopg2 error behind ``exc`` (a peewee wrapper or a translated error), or ``None``.

    peewee keeps it in ``args``; :func:`translate` chains it as ``__cause__``.
    """
    seen = 0
    cur: BaseException | None = exc
    while cur is not None and seen < 5:
        if isinstance(cur, psycopg2.Error):
            return cur
        for arg in getattr(cur, "args", ()):
            if isinstance(arg, psycopg2.Error):
                return arg
        cur = cur.__cause__ or cur.__context__
        seen += 1
    return None


def is_connection_lost(exc: BaseException) -> bool:
    """True when ``exc`` means the connection is unusable and must be discarded."""
    if isinstance(exc, DatabaseConnectionError):
        return True
    driver = driver_error(exc)
    if driver is None:
        return isinstance(exc, peewee.InterfaceError)
    code = driver.pgcode or ""
    if code[:2] in _CONNECTION_CLASSES or code in _CONNECTION_CODES:
        return True
    if isinstance(driver, psycopg2.InterfaceError):
        return True
    # A server that went away mid-query surfaces as OperationalError without a code.
    return isinstance(driver, psycopg2.OperationalError) and not code


def translate(exc: BaseException, context: str = "") -> MarketstoreError:
    """Map a psycopg2/peewee exception to the marketstore type; the caller chains it.

    Usage: ``raise translate(exc, "insert prices") from exc``.
    ``MarketstoreError`` instances are returned unchanged.
    """
    if isinstance(exc, MarketstoreError):
        return exc
    prefix = f"{context}: " if context else ""
    if isinstance(exc, MaxConnectionsExceeded):
        return PoolExhaustedError(f"{prefix}connection pool exhausted: {exc}")
    driver = driver_error(exc)
    message = str(driver if driver is not None else exc).strip().splitlines()
    text = prefix + (message[0] if message else type(exc).__name__)
    code = getattr(driver, "pgcode", None) or ""
    if is_connection_lost(exc):
        return DatabaseConnectionError(text)
    if code in _SERIALIZATION_CODES:
        return SerializationFailure(text)
    first = message[0] if message else ""
    if code == _READ_ONLY_CODE or (code in _RECOVERY_CODES and ("recovery" in first or "read-only" in first)):
        return ReadOnlyError(text)
    if code == "23505":  # unique_violation: the key as data, whichever path met it
        return duplicate_key(driver)
    if code.startswith("23") or isinstance(exc, (peewee.IntegrityError, psycopg2.IntegrityError)):
        detail = getattr(getattr(driver, "diag", None), "message_detail", None)
        return IntegrityViolation(f"{text} ({detail})" if detail else text)
    return QueryError(text)


DRIVER_ERRORS = (psycopg2.Error, peewee.PeeweeException, MaxConnectionsExceeded)
"""What :func:`translate` expects; catch exactly these at the boundary.

Our own errors are Peewee exceptions too: catch ``MarketstoreError`` first
wherever both can arrive, or they would be translated (to themselves) again.
"""


class DuplicateKeyError(IntegrityViolation):
    """A row's unique key is already stored, or appears earlier in the same input.

    Attributes: ``key`` (column name -> value, as the server printed them),
    ``constraint`` (the unique index or constraint, when the server named it)
    and, where known, ``source`` with ``line`` (a file, the header being line
    1), or ``row`` (1-based position among the rows given).
    """

    def __init__(self, key: dict, *, source: str | None = None, line: int | None = None,
                 row: int | None = None, constraint: str | None = None):
        self.key = dict(key)
        self.constraint = constraint
        self.source, self.line, self.row = source, line, row
        named = f" ({constraint})" if constraint else ""
        super().__init__(_prefixed(self.location, f"the key ({', '.join(self.key)})="
                                   f"({', '.join(map(str, self.key.values()))}) is already stored{named}, "
                                   "or appears earlier in the input"))

    @property
    def location(self) -> str:
        """Where the key was (:func:`location` of ``source``, ``line``, ``row``), or ``""``."""
        return location(self.source, self.line, self.row)


_DUPLICATE = re.compile(r"Key \((.*)\)=\((.*)\) already exists")


def duplicate_key(driver, **where) -> DuplicateKeyError:
    """The unique violation ``driver`` (a psycopg2 error, SQLSTATE 23505) with its key as data."""
    diag = getattr(driver, "diag", None)
    found = _DUPLICATE.search(getattr(diag, "message_detail", None) or "")
    # Column names and values are split on ", " (the key columns of our tables hold none in practice).
    names = [n.strip('"') for n in found.group(1).split(", ")] if found else []
    values = found.group(2).split(", ") if found else []
    return DuplicateKeyError(dict(zip(names, values)), constraint=getattr(diag, "constraint_name", None), **where)
