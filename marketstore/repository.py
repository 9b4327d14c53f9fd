"""``BaseRepository[T]``: the one generic CRUD implementation every repository inherits."""
from __future__ import annotations

import functools
import itertools
from typing import Any, Callable, Generic, Iterable, Mapping, TypeVar

import peewee

from .aio import AsyncTwins
from .connection import DatabaseConnection, db_connection
from .database import sessions
from .errors import DRIVER_ERRORS, DataValidationError, NotFoundError
from .models import BaseModel
from . import validation as check

T = TypeVar("T", bound=BaseModel)
F = TypeVar("F", bound=Callable)


def reads(method: F) -> F:
    """Marks a repository method that only reads (and returns what it read, not a lazy cursor).

    Called outside any session, it is served by a replica within
    ``max_replica_lag`` when the repository's connection has replicas, and run
    once more on the primary if the replica's connection breaks midway
    (:meth:`DatabaseConnection.read`); inside a session it joins its
    transaction, without a savepoint.
    """
    @functools.wraps(method)
    def routed(self, *args, **kwargs):
        return self.connection.read(method, self, *args, **kwargs)
    return routed


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class Statements:
    """The SQL of one model's fixed-shape statements, built once per shape, and its rows as instances.

    Peewee builds a statement anew on every call: an ``INSERT ... RETURNING``
    of an order is some 105 nested ``sql()`` calls, more client time than
    the round trip, and reading its row back through a model cursor a
    converter call and a descriptor per column besides. A repository's hot
    statements have a few shapes each: their text is kept here (the model's
    quoted names, ``%s`` for every value, as Peewee would send it), values
    go through each field's ``db_value`` and read columns through its
    ``python_value``, as Peewee's own do.
    """

    def __init__(self, model: type[BaseModel]):
        meta = model._meta
        self.model, self.table = model, _quoted(meta.table_name)
        self.fields = meta.sorted_fields
        self.names = tuple(f.name for f in self.fields)
        self.converters = tuple(f.python_value for f in self.fields)
        self.columns = ", ".join(f"{self.table}.{_quoted(f.column_name)}" for f in self.fields)
        self._defaults = meta.defaults  # field -> default, as Peewee's insert fills them in
        self._inserts: dict[frozenset, tuple] = {}
        self._readers: dict[tuple, Callable] = {}

    def insert(self, row: Mapping[str, Any]) -> tuple[str, list] | None:
        """``INSERT ... RETURNING`` every column of ``row`` (defaults filled in); ``None`` when a value
        is SQL (a generated column's ``DEFAULT``), which only Peewee's own insert can send."""
        shape = self._inserts.get(frozenset(row))
        if shape is None:
            shape = self._inserts[frozenset(row)] = self._insert_shape(row)
        sql, fields = shape
        params = []
        for field in fields:
            value = row[field.name] if field.name in row else self._defaults[field]
            value = field.db_value(value() if callable(value) else value)
            if isinstance(value, peewee.Node):
                return None
            params.append(value)
        return sql, params

    def _insert_shape(self, row) -> tuple[str, list]:
        given = set(row)
        fields = [f for f in self.fields if f.name in given or f in self._defaults]
        names = ", ".join(_quoted(f.column_name) for f in fields)
        places = ", ".join(["%s"] * len(fields))
        return f"INSERT INTO {self.table} ({names}) VALUES ({places}) RETURNING {self.columns}", fields

    def instance(self, row: tuple) -> BaseModel:
        """A fetched row of every column (``columns`` order) as an instance, as Peewee's model cursor
        leaves it: values through ``python_value``, nothing dirty."""
        return self.reader(self.fields)(row)

    def reader(self, fields, extra: tuple[str, ...] = ()):
        """``row -> instance`` for rows of ``fields`` then ``extra`` columns (plain attributes,
        as ``Model.raw()`` sets a computed column such as a rank)."""
        key = (tuple(fields), extra)
        made = self._readers.get(key)
        if made is None:
            model, names = self.model, tuple(f.name for f in fields)
            specs = tuple(zip(names, (f.python_value for f in fields)))
            width = len(names)

            def made(row):
                obj = model.__new__(model)
                obj.__data__ = {name: convert(value) for (name, convert), value in zip(specs, row)}
                obj._dirty = set()
                obj.__rel__ = {}
                if extra:
                    obj.__dict__.update(zip(extra, row[width:]))
                return obj
            self._readers[key] = made
        return made


_SAVEPOINT_NAMES = itertools.count(1)
# Savepoints a transaction's repository writes may leave for its COMMIT to release. Each
# open one nests the next statements a level deeper; PostgreSQL tracks 64 subtransactions
# of a backend cheaply (PGPROC_MAX_CACHED_SUBXIDS), beyond which every snapshot of
# every session must look them up: well below that, whatever the caller's own savepoints.
UNRELEASED_SAVEPOINTS = 16


class Write:
    """A repository write's session: ``with self._write("op") as w: w.execute(sql, params, last=...)``.

    Outside any session its own transaction. Inside one it joins the
    caller's transaction under a savepoint (a caller may catch the write's
    failure and go on), and the savepoint costs no round trip of its own:
    ``SAVEPOINT`` goes in the same message as the write's first statement,
    and ``RELEASE`` with its last when the caller does not need that
    statement's rows. Else it is left to the transaction's ``COMMIT``, which
    releases every savepoint (up to :data:`UNRELEASED_SAVEPOINTS` a
    transaction; then ``RELEASE`` is sent alone). A savepoint left open only
    nests what follows one level deeper: a later ``ROLLBACK TO`` or
    ``RELEASE`` of the caller's own savepoint, made before or after it, means
    what it meant. On a failure the transaction rolls back to the savepoint,
    and the error is raised translated.
    """

    __slots__ = ("_session", "_name", "_state", "db")

    def __init__(self, connection: DatabaseConnection, operation: str, model: str):
        self._session = connection.session(operation, model)
        # None: a transaction of its own; else the savepoint's name and 0 (not sent),
        # 1 (sent), 2 (released).
        self._name = f"ms_write_{next(_SAVEPOINT_NAMES)}" if connection.in_transaction() else None
        self._state = 0

    def __enter__(self) -> "Write":
        if self._name is not None:
            sessions.joins += 1  # the session joins the caller's: the savepoint is ours
        try:
            self.db = self._session.__enter__()
        except BaseException:
            if self._name is not None:
                sessions.joins -= 1
            raise
        return self

    def execute(self, sql: str, params, *, last: bool = False):
        """Run ``sql`` (with the savepoint's commands when inside a session); the cursor."""
        name = self._name
        if name is not None:
            if self._state == 0:
                sql, self._state = f"SAVEPOINT {name}; {sql}", 1
            if last:
                sql, self._state = f"{sql}; RELEASE SAVEPOINT {name}", 2
        return self.db.execute_sql(sql, params)

    def __exit__(self, exc_type, exc, tb) -> bool:
        name = self._name
        if name is None:
            return self._session.__exit__(exc_type, exc, tb)
        try:
            if exc_type is None and self._state == 1:
                fields = self.db._state.__dict__  # this thread's (transactions.ThreadState)
                left = fields.get("unreleased", 0)
                if left < UNRELEASED_SAVEPOINTS:
                    fields["unreleased"] = left + 1
                else:
                    try:
                        self.db.execute_sql(f"RELEASE SAVEPOINT {name}")
                    except BaseException as failure:
                        exc_type, exc, tb = type(failure), failure, failure.__traceback__
            if exc_type is not None and self._state:
                try:
                    self.db.execute_sql(f"ROLLBACK TO SAVEPOINT {name}")
                except DRIVER_ERRORS:
                    pass  # the connection is lost: the error already raised says so
        finally:
            sessions.joins -= 1
        # The joined session ends (nothing to send) and raises the error translated.
        if not self._session.__exit__(exc_type, exc, tb) and exc is not None:
            raise exc
        return False


@functools.cache
def statements(model: type[BaseModel]) -> Statements:
    """The :class:`Statements` of ``model``, made once."""
    return Statements(model)


class BaseRepository(AsyncTwins, Generic[T]):  # AsyncTwins: an awaitable twin of each method
    """CRUD over one model. Subclasses set ``model`` and add their own queries.

    Every method runs in its own session (a transaction), or joins the caller's
    when called inside ``get_db_session()``, so several calls can be made atomic
    together: a write in a savepoint (a caller may catch its failure and go on),
    a read (``@reads``) without one. Errors are :mod:`marketstore.errors` types.
    """

    model: type[T]

    def __init__(self, connection: DatabaseConnection | None = None):
        self.connection = connection or db_connection

    def session(self, operation: str):
        """A session labelled with this repository's model, for logs and errors."""
        return self.connection.session(operation, self.model.__name__)

    def _write(self, operation: str) -> Write:
        """A write's session (see :class:`Write`): its statements through ``execute``."""
        return Write(self.connection, operation, self.model.__name__)

    def _returning(self, query):
        return query.returning(*self.model._meta.sorted_fields).objects(self.model)

    def _where(self, query, filters: Mapping[str, Any]):
        fields = self.model._meta.fields
        for name, value in filters.items():
            if name not in fields:
                raise DataValidationError(name, value, f"a field of {self.model.__name__} ({', '.join(fields)})")
            field = fields[name]
            query = query.where(field.is_null() if value is None else field == check.sendable(name, value))
        return query

    def create(self, **data) -> T:
        """Insert one row; returns it as stored (database defaults filled in).

        Raises ``DataValidationError`` (bad input) or ``IntegrityViolation``.
        """
        row = self.model.validate(data)
        compiled = statements(self.model)
        insert = compiled.insert(row)
        if insert is None:
            with self.session("create"):
                return self._returning(self.model.insert(row)).execute()[0]
        with self._write("create") as write:
            return compiled.instance(write.execute(*insert).fetchone())

    @reads
    def get_by_id(self, id: int) -> T | None:
        """The row with primary key ``id``, or ``None``."""
        check.positive_int("id", id)
        with self.session("get_by_id"):
            return self.model.get_or_none(self.model._meta.primary_key == id)

    def get(self, id: int) -> T:
        """The row with primary key ``id``; raises ``NotFoundError`` if absent."""
        found = self.get_by_id(id)
        if found is None:
            raise NotFoundError(f"{self.model.__name__} id={id!r} not found")
        return found

    @reads
    def list(self, limit: int = 100, after_id: int | None = None, **filters) -> list[T]:
        """Up to ``limit`` rows matching ``filters`` (equality), ordered by id.

        Keyset pagination: pass the last id of one page as ``after_id`` of the next.
        """
        check.limit(limit)
        pk = self.model._meta.primary_key
        query = self._where(self.model.select(), filters).order_by(pk).limit(limit)
        if after_id is not None:
            query = query.where(pk > check.positive_int("after_id", after_id))
        with self.session("list"):
            return list(query)

    def update(self, id: int, **data) -> T:
        """Change fields of row ``id`` (validated against the whole row); returns it.

        Raises ``NotFoundError``, ``DataValidationError`` or ``IntegrityViolation``.
        """
        check.positive_int("id", id)
        changes = self.model.validate(data, partial=True)
        pk = self.model._meta.primary_key
        with self.session("update"):
            current = self.model.select().where(pk == id).for_update().get_or_none()
            if current is None:
                raise NotFoundError(f"{self.model.__name__} id={id!r} not found")
            # Cross-field rules (high >= low...) need the merged row, not just the change.
            merged = self.model.validate({**current.__data__, **changes}, partial=True)
            if not changes:
                return current
            query = self.model.update({k: merged[k] for k in changes}).where(pk == id)
            return self._returning(query).execute()[0]

    def delete(self, id: int) -> bool:
        """Delete row ``id``; ``True`` if it existed."""
        check.positive_int("id", id)
        with self.session("delete"):
            return self.model.delete().where(self.model._meta.primary_key == id).execute() > 0

    @reads
    def count(self, **filters) -> int:
        """Number of rows matching ``filters`` (equality)."""
        with self.session("count"):
            return self._where(self.model.select(), filters).count()

    @reads
    def exists(self, **filters) -> bool:
        """Whether any row matches ``filters`` (equality)."""
        with self.session("exists"):
            return self._where(self.model.select(), filters).exists()

    def bulk_create(self, rows: Iterable[Mapping[str, Any]], batch_size: int = 1000) -> int:
        """Insert all ``rows`` in one transaction, ``batch_size`` per statement.

        Every row is validated before the first statement; any failure writes
        nothing (a ``DataValidationError`` names the bare ``field`` and the
        1-based ``row``). ``rows`` may come from a query (read in the same
        transaction). Returns the number of rows inserted.
        """
        check.limit(batch_size, "batch_size")
        if isinstance(rows, (str, bytes, Mapping)) or not isinstance(rows, Iterable):
            raise DataValidationError("rows", rows, "an iterable of rows (mappings)")
        # Rows are read inside the session: a query (or anything else that reads
        # the database while iterated) needs the connection checked out.
        with self.session("bulk_create"):
            validated = []
            for number, row in enumerate(rows, 1):
                try:
                    validated.append(self.model.validate(row))
                except DataValidationError as exc:
                    raise exc.at(row=number) from None
            # One statement needs one column list: group rows by the fields they set.
            groups: dict[tuple, list[dict]] = {}
            for row in validated:
                groups.setdefault(tuple(sorted(row)), []).append(row)
            for group in groups.values():
                for start in range(0, len(group), batch_size):
                    self.model.insert_many(group[start:start + batch_size]).execute()
        return len(validated)
