"""Where a session runs: the router a :class:`~marketstore.connection.DatabaseConnection` owns.

A session asks its connection's router once when it opens
(``enter(read_only, route) -> db``) and once when it ends (``leave(db,
wrote, exc)``). Without replicas the router is :class:`PrimaryRouter`: every
session on the primary, nothing else run. With replicas,
:class:`ReplicaRouter` sends outermost read-only sessions (and the sessions
of a routed read, :meth:`ReplicaRouter.read`) to a replica the
:class:`~marketstore.replicas.LagSampler` finds within the lag bound, joins
sessions opened inside them, and tells the sampler about writes and broken
replicas. The thread's open sessions are :data:`~marketstore.database.sessions`.
"""
from __future__ import annotations

from .database import sessions
from .errors import DRIVER_ERRORS, DatabaseConnectionError, PoolExhaustedError, is_connection_lost


class PrimaryRouter:
    """Every session on the primary database."""

    __slots__ = ("primary",)

    def __init__(self, primary):
        self.primary = primary

    def enter(self, read_only: bool, route: bool = True):
        """The database the session runs on: opened there if closed, else joined."""
        return self.primary

    def leave(self, db, wrote: bool, exc: BaseException | None) -> None:
        """An outermost session on ``db`` has ended (``wrote``: it may have written)."""

    def refused(self, db, exc: BaseException):
        """``db`` could not open the session's transaction: the database to try instead, or ``None``."""
        return None

    def reruns(self, db, error: BaseException) -> bool:
        """Whether the session's ``error`` on ``db`` is followed by a rerun elsewhere (so not logged)."""
        return False

    def in_session(self) -> bool:
        """Whether this thread has a transaction open on the primary."""
        db = self.primary
        return not db.is_closed() and db.in_transaction()

    def read(self, fn, args, kwargs):
        """``fn(*args, **kwargs)``: see :meth:`DatabaseConnection.read`."""
        return fn(*args, **kwargs)

    def close(self) -> None:
        """Stop whatever runs for routing."""


class ReplicaRouter(PrimaryRouter):
    """Read-only sessions on a replica within the lag bound, the rest on the primary."""

    __slots__ = ("sampler", "_replicas")

    def __init__(self, primary, sampler):
        super().__init__(primary)
        self.sampler = sampler
        self._replicas = frozenset(replica.db for replica in sampler.replicas)

    def _mode(self) -> str | None:
        reads = sessions.reads
        return reads[-1][1] if reads and reads[-1][0] is self else None

    def _joined(self):
        """This thread's innermost open session on one of this router's replicas, or ``None``."""
        replicas = self._replicas
        for db in reversed(sessions.stack):
            if db in replicas:
                return db
        return None

    def enter(self, read_only: bool, route: bool = True):
        joined = self._joined()
        if joined is not None:
            return joined
        primary = self.primary
        if not (route and primary.is_closed()):
            return primary
        mode = self._mode()
        if read_only or mode is not None:
            if mode != "primary":
                replica = self.sampler.pick()
                if replica is not None:
                    return replica
        return primary

    def refused(self, db, exc: BaseException):
        if db is self.primary or not isinstance(exc, DRIVER_ERRORS):
            return None
        if not isinstance(exc, PoolExhaustedError):  # busy is not down
            self.sampler.failed(db, exc)
        return self.primary

    def leave(self, db, wrote: bool, exc: BaseException | None) -> None:
        if db is self.primary:
            # Later reads must see what it may have written; a routed read's sessions only read.
            if wrote and self._mode() is None:
                self.sampler.wrote()
            return
        reads = sessions.reads
        if reads and reads[-1][0] is self:
            reads[-1] = (self, reads[-1][1], db)  # the replica that served the routed read
        if exc is not None and is_connection_lost(exc):
            self.sampler.failed(db, exc)

    def reruns(self, db, error: BaseException) -> bool:
        return db is not self.primary and self._mode() is not None and isinstance(error, DatabaseConnectionError)

    def in_session(self) -> bool:
        return self._joined() is not None or super().in_session()

    def read(self, fn, args, kwargs):
        if self._mode() is not None or self.in_session():
            return fn(*args, **kwargs)
        reads = sessions.reads
        reads.append((self, "replica", None))
        try:
            try:
                return fn(*args, **kwargs)
            except DatabaseConnectionError as exc:
                served = reads[-1][2]
                if served is None or isinstance(exc, PoolExhaustedError):
                    raise
                self.sampler.failed(served, exc)
                reads[-1] = (self, "primary", None)
                return fn(*args, **kwargs)
        finally:
            reads.pop()

    def close(self) -> None:
        self.sampler.close()
