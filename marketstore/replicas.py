"""The lag sampler of read replicas: which standby may serve a read now, decided without a round trip.

A :class:`LagSampler` holds one pooled database per standby and samples them: one
daemon thread per server that, every ``max_replica_lag / 4`` seconds (50 ms to
1 s), reads the primary's ``pg_current_wal_lsn()`` (kept as a short history of
``(monotonic time, lsn)``) and each standby's ``pg_last_wal_replay_lsn()``,
on small connections of its own.

A standby may serve a read when the WAL position it last reported replaying is
at least the position of the oldest primary sample taken at or after ``now -
max_replica_lag``: replay only moves forward, so it then holds every
transaction the primary had committed ``max_replica_lag`` seconds ago. (Not
``now() - pg_last_xact_replay_timestamp()``: that grows on an idle primary.)
Read-your-writes: a session that may have written moves that horizon up to the
time its COMMIT returned (:meth:`LagSampler.wrote`); a primary sample taken
after it is at or past its commit record (a commit is flushed before COMMIT
returns, with the default ``synchronous_commit``), so until the sampler has
seen a standby replay that far, reads go to the primary. With no fresh sample
(a stalled sampler), reads go to the primary too.
"""
from __future__ import annotations

import bisect
import itertools
import logging
import threading
import time

import psycopg2

from .config import Settings, safe_url
from .errors import DRIVER_ERRORS
from .forksafe import on_fork_in_child

logger = logging.getLogger(__name__)

SAMPLE_CONNECT_TIMEOUT = "2"  # seconds: a sampler must not hang on a black-holed host
SAMPLE_STATEMENT_TIMEOUT = 1000  # ms
_PRIMARY_SQL = ("BEGIN READ ONLY; SET LOCAL statement_timeout = %d; "
                "SELECT true, (pg_current_wal_lsn() - '0/0'::pg_lsn)::bigint" % SAMPLE_STATEMENT_TIMEOUT)
# Not in recovery (a promoted standby): no replay position, never eligible.
_REPLICA_SQL = ("BEGIN READ ONLY; SET LOCAL statement_timeout = %d; "
                "SELECT pg_is_in_recovery(), (pg_last_wal_replay_lsn() - '0/0'::pg_lsn)::bigint"
                % SAMPLE_STATEMENT_TIMEOUT)


def sample_interval(max_lag: float) -> float:
    """Seconds between two samples: a quarter of the bound, 50 ms to 1 s."""
    return min(1.0, max(0.05, max_lag / 4))


class _Server:
    """One sampled server: the primary, or a replica with its pooled database."""

    __slots__ = ("url", "params", "db", "healthy", "lsn", "sampled_at", "__weakref__")

    def __init__(self, settings: Settings, db=None):
        self.url = safe_url(settings.connect_params)
        params = dict(settings.connect_params)
        params.pop("options", None)  # a pooler refuses it; the timeout is SET LOCAL
        params.setdefault("application_name", f"{settings.application_name}:lag-sampler"[:63])
        params["connect_timeout"] = min(params.get("connect_timeout", SAMPLE_CONNECT_TIMEOUT),
                                        SAMPLE_CONNECT_TIMEOUT, key=float)
        self.params, self.db = params, db
        self.healthy = True  # until a sample or a session says otherwise
        self.lsn: int | None = None
        self.sampled_at: float | None = None


class LagSampler:
    """The standbys of one :class:`~marketstore.connection.DatabaseConnection`, sampled.

    ``replicas``: ``(settings, pooled database)`` of each replica, in order.
    Which one a session uses is :mod:`marketstore.routing`'s decision; this
    says which may serve (:meth:`pick`) and keeps their health. Thread-safe;
    the sampling threads start with the first :meth:`pick` (nothing connects
    before), and again in a child process after ``fork()``.
    """

    def __init__(self, settings: Settings, replicas: list):
        self.max_lag = settings.max_replica_lag
        self.interval = sample_interval(self.max_lag)
        # Long enough for lag_seconds to say how far behind a paused standby is.
        self._window = max(30.0, 10 * self.max_lag)
        self._primary = _Server(settings)
        self.replicas = [_Server(replica, db) for replica, db in replicas]
        self._history: tuple[tuple, tuple] = ((), ())  # (times, lsns), replaced whole (lock-free reads)
        self._last_write = float("-inf")
        self._turn = itertools.count()
        self._lock = threading.Lock()
        self._health_lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._running = False
        on_fork_in_child(self._after_fork)

    # -- eligibility (on the routed read's path: no round trip, no lock) ----------
    def pick(self):
        """A replica's database that may serve a read now, or ``None`` (the primary serves)."""
        if not self._running:
            self._start()
        times, lsns = self._history
        horizon = max(time.monotonic() - self.max_lag, self._last_write)
        oldest = bisect.bisect_left(times, horizon)
        if oldest == len(times):  # no sample since the horizon: the sampler stalled
            return None
        needed = lsns[oldest]
        replicas = self.replicas
        count = len(replicas)
        first = next(self._turn)
        for step in range(count):
            replica = replicas[(first + step) % count]
            if replica.healthy and replica.lsn is not None and replica.lsn >= needed:
                return replica.db
        return None

    def wrote(self) -> None:
        """A session that may have written has ended on the primary: later reads must see it."""
        self._last_write = time.monotonic()

    def failed(self, db, exc: BaseException) -> None:
        """A session could not be served by the replica of ``db``: left out until a sample succeeds."""
        for replica in self.replicas:
            if replica.db is db:
                self._down(replica, exc)

    def _down(self, server: _Server, exc: BaseException) -> None:
        with self._health_lock:  # one warning when several threads see it fail at once
            was, server.healthy = server.healthy, False
        if was:
            lines = str(exc).strip().splitlines()
            reason = lines[0] if lines else type(exc).__name__  # libpq's messages carry no password
            if server.db is not None:
                logger.warning("replica %s unavailable, the primary serves its reads: %s", server.url, reason)
            else:
                logger.warning("lag sampling of the primary %s failed, the primary serves every read: %s",
                               server.url, reason)

    # -- the sampler --------------------------------------------------------------
    def _start(self) -> None:
        with self._lock:
            if self._running:
                return
            self._stop = threading.Event()
            self._threads = [threading.Thread(target=self._sample_loop, args=(server, self._stop), daemon=True,
                                              name=f"marketstore-lag-sampler-{number}")
                             for number, server in enumerate([self._primary, *self.replicas])]
            for thread in self._threads:
                thread.start()
            self._running = True

    def _sample_loop(self, server: _Server, stop: threading.Event) -> None:
        conn = None
        try:
            while True:
                conn = self._sample(server, conn)
                if stop.wait(self.interval):
                    return
        finally:
            if conn is not None:
                _close(conn)

    def _sample(self, server: _Server, conn):
        """Take one sample of ``server``; returns the connection to use next time (or ``None``)."""
        try:
            if conn is None:
                conn = psycopg2.connect(**server.params)
                conn.autocommit = True
            taken = time.monotonic()  # before the query: the position read is at least the one at `taken`
            with conn.cursor() as cursor:
                cursor.execute(_PRIMARY_SQL if server is self._primary else _REPLICA_SQL)
                in_recovery, lsn = cursor.fetchone()
                cursor.execute("ROLLBACK")
        except DRIVER_ERRORS as exc:
            self._down(server, exc)
            if conn is not None:
                _close(conn)
            return None
        if server is self._primary:
            self._record(taken, lsn)
            server.lsn, server.sampled_at = lsn, taken
        elif not in_recovery:
            self._down(server, RuntimeError("not a standby (pg_is_in_recovery() is false)"))
            return conn
        else:
            server.lsn, server.sampled_at = lsn, taken
        if not server.healthy:
            server.healthy = True
            logger.info("%s %s is back", "replica" if server.db is not None else "primary", server.url)
        return conn

    def _record(self, taken: float, lsn: int) -> None:
        times, lsns = self._history
        keep = bisect.bisect_left(times, taken - self._window)
        self._history = (times[keep:] + (taken,), lsns[keep:] + (lsn,))

    # -- status and lifecycle -----------------------------------------------------
    def lag_seconds(self, replica: _Server) -> float | None:
        """How far behind ``replica`` was at its last sample, from the primary's history."""
        if not replica.healthy or replica.lsn is None or replica.sampled_at is None:
            return None
        times, lsns = self._history
        if not times:
            return None
        # The newest primary sample the replica had replayed: it was current then.
        behind = bisect.bisect_right(lsns, replica.lsn)  # lsns never decrease
        if behind == len(lsns):
            return 0.0
        since = times[behind - 1] if behind else times[0]
        return round(max(0.0, replica.sampled_at - since), 3)

    def status(self) -> list[dict]:
        """One dict per replica: ``url`` (no password), ``in_use``, ``idle``, ``healthy``, ``lag_seconds``."""
        out = []
        for replica in self.replicas:
            pool = replica.db.status()
            out.append({"url": replica.url, "in_use": pool["in_use"], "idle": pool["idle"],
                        "healthy": replica.healthy and replica.lsn is not None,
                        "lag_seconds": self.lag_seconds(replica)})
        return out

    def close(self) -> None:
        """Stop the sampler and close every replica connection."""
        with self._lock:
            self._stop.set()
            threads, self._threads, self._running = self._threads, [], False
        for thread in threads:
            thread.join(timeout=3)
        for replica in self.replicas:
            replica.db.close_all()

    def _after_fork(self) -> None:
        # The parent's threads did not survive; the child starts its own sampler
        # (with connections of its own) at its first pick().
        self._lock, self._health_lock = threading.Lock(), threading.Lock()
        self._stop = threading.Event()
        self._threads, self._running = [], False


def _close(conn) -> None:
    try:
        conn.close()
    except DRIVER_ERRORS:
        logger.debug("closing a sampler connection failed", exc_info=True)

