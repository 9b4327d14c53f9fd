"""The three ways a transaction runs on a pooled connection, each a small object.

:class:`~marketstore.database.PooledPostgresqlExtDatabase` picks one when a
transaction opens and keeps it in this thread's state until the connection
goes back; Peewee's hooks (``begin``, ``commit``, ``rollback``) and the end
of a session then ask the mode, never ``conn.autocommit`` or a flag:

* :data:`AUTOCOMMIT`, Peewee's own: the connection in autocommit, ``BEGIN``
  and ``COMMIT`` sent as SQL by ``atomic()`` -- plain Peewee code outside a
  session;
* :data:`DRIVER`, a session's fast path: psycopg2's transaction (autocommit
  off: ``BEGIN`` goes with the first statement, ``COMMIT``/``ROLLBACK`` are C
  calls), about half the client time of ``atomic()``'s statements. A
  ``COMMIT`` sent as SQL would leave psycopg2 believing a transaction is still
  open, so inside it commit and rollback are the driver's;
* :class:`SqlTransaction`, a session behind a transaction pooler (PgBouncer),
  which refuses settings at connect: ``BEGIN`` and its ``SET LOCAL``\\ s in one
  statement on an autocommit connection, ``COMMIT``/``ROLLBACK`` as SQL, and
  after a commit or rollback inside the session the same ``BEGIN`` again.
"""
from __future__ import annotations

import peewee
from playhouse.postgres_ext import PostgresqlExtDatabase

# Peewee 4's after_commit(): its per-thread state then has a list of callbacks (3.17's has none).
COMMIT_CALLBACKS = hasattr(peewee.Database, "_run_commit_callbacks")

# Names PostgreSQL reports for UTC: a connection already in it needs no SET LOCAL.
UTC_NAMES = frozenset({"UTC", "Etc/UTC"})


class Autocommit:
    """Peewee's mode: ``begin``/``commit``/``rollback`` are Peewee's own."""

    __slots__ = ()

    def begin(self, db, *args, **kwargs) -> None:
        PostgresqlExtDatabase.begin(db, *args, **kwargs)

    def commit(self, db) -> None:
        PostgresqlExtDatabase.commit(db)

    def rollback(self, db) -> None:
        PostgresqlExtDatabase.rollback(db)


class DriverTransaction:
    """psycopg2 runs the transaction: ``open`` switches autocommit off, the driver begins."""

    __slots__ = ()

    def open(self, conn, read_only: bool) -> None:
        # Switched only when the mode changes: the switch is cheap but psycopg2
        # takes its connection lock without the GIL, and under contention each
        # release of the GIL costs a thread handoff.
        if conn.autocommit:
            conn.autocommit = False
        # psycopg2 then sends BEGIN READ ONLY: no round trip of its own.
        if conn.readonly is not (read_only or None):
            conn.readonly = read_only or None

    def end(self, conn, commit: bool) -> None:
        conn.commit() if commit else conn.rollback()

    def begin(self, db, *args, **kwargs) -> None:
        pass  # the driver begins with the next statement

    def commit(self, db) -> None:
        with peewee.__exception_wrapper__:
            db.connection().commit()

    def rollback(self, db) -> None:
        with peewee.__exception_wrapper__:
            db.connection().rollback()


class SqlTransaction:
    """``BEGIN`` (with ``SET LOCAL``\\ s) and ``COMMIT``/``ROLLBACK`` sent as SQL on an autocommit connection."""

    __slots__ = ("begin_sql",)

    def __init__(self, begin_sql: str):
        self.begin_sql = begin_sql

    def open(self, conn, read_only: bool) -> None:
        # BEGIN and the SET LOCALs in one round trip, as many as psycopg2's own BEGIN.
        if not conn.autocommit:
            conn.autocommit = True
        with conn.cursor() as cursor:
            cursor.execute(self.begin_sql)

    def end(self, conn, commit: bool) -> None:
        with conn.cursor() as cursor:
            cursor.execute("COMMIT" if commit else "ROLLBACK")

    def begin(self, db, *args, **kwargs) -> None:
        pass  # open() began

    def commit(self, db) -> None:
        db.execute_sql("COMMIT; " + self.begin_sql)  # the new transaction gets the settings again

    def rollback(self, db) -> None:
        db.execute_sql("ROLLBACK; " + self.begin_sql)


AUTOCOMMIT = Autocommit()
DRIVER = DriverTransaction()


class PoolerModes:
    """The mode of each session behind a transaction pooler, for ``settings`` made ``SET LOCAL``.

    PgBouncer keeps a client's TimeZone (a tracked parameter) on every server
    connection it lends it, so a connection that reports UTC needs no ``SET
    LOCAL`` for it; with nothing left to set, the driver's transaction serves
    (measured: 6 us of client CPU less per transaction than SQL BEGIN/COMMIT).
    """

    __slots__ = ("_read_write", "_read_only")

    def __init__(self, settings: dict):
        # Each: (mode when the connection is not in UTC yet, mode when it is).
        self._read_write = (self._mode("BEGIN", settings, False), self._mode("BEGIN", settings, True))
        self._read_only = (self._mode("BEGIN READ ONLY", settings, False),
                           self._mode("BEGIN READ ONLY", settings, True))

    @staticmethod
    def _mode(begin: str, settings: dict, utc: bool):
        sets = "".join(f"; SET LOCAL {name} = '{str(value).replace(chr(39), chr(39) * 2)}'"
                       for name, value in settings.items()
                       if not (utc and name == "timezone" and value in UTC_NAMES))
        return SqlTransaction(begin + sets) if sets else DRIVER

    def choose(self, conn, read_only: bool):
        """The mode for a transaction on ``conn``."""
        modes = self._read_only if read_only else self._read_write
        return modes[conn.get_parameter_status("TimeZone") in UTC_NAMES]


class ThreadState(peewee._ConnectionLocal):
    """Peewee's per-thread connection state, and the mode of its transaction (Peewee's outside a session).

    Peewee's ``connect()`` and ``close()`` use :meth:`set_connection` and
    :meth:`reset`; a session uses :meth:`open_session` and
    :meth:`close_session`, which leave the same state but write it through
    this thread's ``__dict__`` at once: every attribute of a
    ``threading.local`` looks that dictionary up again, five times the cost
    of a plain attribute, and a session wrote a dozen of them.
    """

    mode = AUTOCOMMIT
    # Savepoints of repository writes this transaction left for COMMIT to release
    # (:class:`marketstore.repository.Write`); counted high, never low.
    unreleased = 0

    def reset(self):
        super().reset()
        self.mode = AUTOCOMMIT
        self.unreleased = 0

    def set_connection(self, conn):
        super().set_connection(conn)
        self.mode = AUTOCOMMIT
        self.unreleased = 0

    def open_session(self, conn, mode, mark, transaction) -> None:
        """``set_connection(conn)`` in ``mode``, with ``mark`` in ``ctx`` and ``transaction`` pushed."""
        fields = self.__dict__
        fields.update(conn=conn, closed=False, ctx=[mark], transactions=[transaction], mode=mode, unreleased=0)
        if COMMIT_CALLBACKS:
            fields["commit_callbacks"] = []

    def close_session(self) -> None:
        """:meth:`reset`."""
        fields = self.__dict__
        fields.update(conn=None, closed=True, ctx=[], transactions=[], mode=AUTOCOMMIT, unreleased=0)
        if COMMIT_CALLBACKS:
            fields["commit_callbacks"] = []

