"""Boundaries the other tests missed (mutation testing left these alive).

Each test pins one edge of a rule: the value exactly at a limit, the time a
limit takes, the instant a zone could shift. Public API only: pools are built
with ``DatabaseConnection(...).initialize(url, ...)`` and observed from the
server (``pg_backend_pid()``), never through pool internals.
"""
from __future__ import annotations

import calendar
import datetime as dt
import os
import threading
import time
import uuid
from contextlib import contextmanager
from urllib.parse import quote, urlsplit, urlunsplit

import psycopg2
import pytest

import marketstore
from marketstore import (
    ArticleRepository,
    DatabaseConnection,
    DatabaseConnectionError,
    DataValidationError,
    PoolExhaustedError,
    Price,
    PriceRepository,
    SentimentScoreRepository,
)
from marketstore.errors import driver_error
from helpers import eventually

UTC = dt.timezone.utc


def bar(timestamp, symbol="AAPL") -> dict:
    return dict(symbol=symbol, timestamp=timestamp, open="10", high="11", low="9", close="10.5", volume="100")


@pytest.fixture
def pool(database_url):
    """Factory: a private pool on the session database, closed afterwards."""
    opened = []

    def pool(**options) -> DatabaseConnection:
        conn = DatabaseConnection().initialize(
            database_url, application_name=f"mst_boundary_{uuid.uuid4().hex[:8]}", **options)
        opened.append(conn)
        return conn

    yield pool
    for conn in opened:
        conn.close()


def backend_pid(conn: DatabaseConnection) -> int:
    with conn.session() as db:
        return db.execute_sql("SELECT pg_backend_pid()").fetchone()[0]


# -- retention: strict < ------------------------------------------------------

def test_delete_before_keeps_the_bar_exactly_at_the_cutoff(db, raw):
    prices = PriceRepository()
    cutoff = dt.datetime(2024, 3, 8, 14, 30, tzinfo=UTC)
    tick = dt.timedelta(microseconds=1)
    for when in (cutoff - tick, cutoff, cutoff + tick):
        prices.create(**bar(when))

    assert prices.delete_before(cutoff) == 1

    with raw.cursor() as cur:
        cur.execute('SELECT "timestamp" FROM prices ORDER BY "timestamp"')
        assert [row[0] for row in cur.fetchall()] == [cutoff, cutoff + tick]


# -- sentiment ranges: closed intervals ------------------------------------------

SENTIMENT_CASES = [
    ("score", -1, True), ("score", 1, True), ("score", -1.0, True), ("score", 1.0, True),
    ("confidence", 0, True), ("confidence", 1, True),
    ("score", -1.0000001, False), ("score", 1.0000001, False),
    ("confidence", -0.0000001, False), ("confidence", 1.0000001, False),
]


@pytest.mark.parametrize("field, value, accepted", SENTIMENT_CASES,
                         ids=[f"{f}={v!r}" for f, v, _ in SENTIMENT_CASES])
def test_sentiment_bounds_are_inclusive(db, raw, field, value, accepted):
    article = ArticleRepository().create(title="Edge case")
    row = {"article": article, "score": 0.5, "confidence": 0.5, "model": "edge", field: value}
    scores = SentimentScoreRepository()
    if accepted:
        stored = scores.create(**row)
        assert getattr(stored, field) == value
    else:
        with pytest.raises(DataValidationError) as info:
            scores.create(**row)
        assert (info.value.field, info.value.value) == (field, value)

    # The CHECK constraint, the second line of defence, draws the same line.
    other = {"score": 0.5, "confidence": 0.5, field: value}
    sql = ("INSERT INTO sentiment_scores (article_id, score, confidence, model) "
           "VALUES (%s, %s, %s, 'raw')")
    with raw.cursor() as cur:
        if accepted:
            cur.execute(sql, (article.id, other["score"], other["confidence"]))
        else:
            with pytest.raises(psycopg2.errors.CheckViolation):
                cur.execute(sql, (article.id, other["score"], other["confidence"]))


# -- the pool: recycle age and checkout timeout ------------------------------------

def test_recycle_age_counts_from_creation_not_last_use(pool):
    # Checked out every 0.1 s, the connection is never idle for long: an
    # implementation that measured age from the last use would keep it forever.
    recycle = 1.0
    conn = pool(pool_size=1, max_overflow=0, pool_recycle=recycle)
    seen: list[tuple[float, int]] = []
    started = time.monotonic()
    while time.monotonic() - started < recycle * 2.5:
        seen.append((time.monotonic() - started, backend_pid(conn)))
        time.sleep(0.1)

    first = seen[0][1]
    assert len({pid for _, pid in seen}) >= 2, seen
    # Not replaced before its time (a pool that recycled on every checkout) ...
    assert all(pid == first for at, pid in seen if at < recycle * 0.8), seen
    # ... and gone soon after it (pool_recycle past the connection's creation).
    assert all(pid != first for at, pid in seen if at > recycle + 0.5), seen


@contextmanager
def one_session_held(conn):
    """Another thread holds a session (and its connection) of ``conn`` while the block runs."""
    holding, release = threading.Event(), threading.Event()

    def hold():
        with conn.session() as db:
            db.execute_sql("SELECT 1")
            holding.set()
            release.wait(30)

    holder = threading.Thread(target=hold, daemon=True)
    holder.start()
    try:
        assert holding.wait(10)
        yield
    finally:
        release.set()
        holder.join(30)


def test_exhausted_pool_raises_within_a_tight_bound_of_pool_timeout(pool):
    timeout = 0.5
    conn = pool(pool_size=1, max_overflow=0, pool_timeout=timeout)
    with one_session_held(conn):
        assert conn.pool_status()["in_use"] == 1
        started = time.monotonic()
        with pytest.raises(PoolExhaustedError):
            with conn.session() as db:
                db.execute_sql("SELECT 1")
        elapsed = time.monotonic() - started
    assert timeout <= elapsed <= timeout + 0.25, elapsed
    assert backend_pid(conn)  # the slot came back


# -- SQLSTATEs that mean "the connection is gone" ----------------------------------

def terminate_when_busy(url: str, pid: int) -> threading.Thread:
    """In a thread: wait until backend ``pid`` runs a statement, then terminate it."""

    def run():
        admin = psycopg2.connect(url)
        admin.autocommit = True
        try:
            with admin.cursor() as cur:
                def state():
                    cur.execute("SELECT state FROM pg_stat_activity WHERE pid = %s", (pid,))
                    return cur.fetchone()[0]
                eventually(state, "active")
                cur.execute("SELECT pg_terminate_backend(%s)", (pid,))
        finally:
            admin.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_a_terminated_backend_is_a_connection_error(pool, database_url):
    # The real 57P01 (admin_shutdown): pg_terminate_backend of the session's own
    # backend while it runs a statement. The server sends the FATAL 57P01, but
    # psycopg2 2.9 (libpq 17) reports only "server closed the connection
    # unexpectedly", without a SQLSTATE: this pins the no-code rule and the
    # recovery; the code itself is pinned by the next test.
    conn = pool(pool_size=1, max_overflow=0)
    with pytest.raises(DatabaseConnectionError) as info:
        with conn.session() as db:
            pid = db.execute_sql("SELECT pg_backend_pid()").fetchone()[0]
            killer = terminate_when_busy(database_url, pid)
            db.execute_sql("SELECT pg_sleep(30)")
    killer.join(30)
    assert isinstance(driver_error(info.value), psycopg2.OperationalError)
    assert driver_error(info.value).pgcode in (None, "57P01")
    assert conn.pool_status()["in_use"] == 0
    assert backend_pid(conn) != pid  # the broken connection was not pooled


@pytest.mark.parametrize("code", ["57P01", "57P02", "57P03", "53300"])
def test_connection_sqlstates_map_to_database_connection_error(pool, code):
    # Each code carried by a real server error, raised by the server itself (the
    # driver builds the matching psycopg2.errors class): the situations behind
    # them give psycopg2 errors without a code (57P01 above; 53300 and 57P03 come
    # at connect time, which psycopg2 reports without one), and a crash (57P02)
    # cannot be staged on a shared server. Each fails if its code leaves the map.
    conn = pool()
    with pytest.raises(DatabaseConnectionError) as info:
        with conn.session() as db:
            db.execute_sql(f"DO $$ BEGIN RAISE EXCEPTION 'staged' USING ERRCODE = '{code}'; END $$")
    assert driver_error(info.value).pgcode == code
    assert type(driver_error(info.value)) is psycopg2.errors.lookup(code)
    assert conn.pool_status()["in_use"] == 0


def sessions_of(raw, role: str) -> int:
    with raw.cursor() as cur:
        cur.execute("SELECT count(*) FROM pg_stat_activity WHERE usename = %s", (role,))
        return cur.fetchone()[0]


def test_a_role_at_its_connection_limit_is_a_connection_error(database_url, raw):
    # The real 53300: too many connections for a role (superusers are exempt, so
    # a plain role). psycopg2 reports connect-time errors without a SQLSTATE.
    role, password = f"mst_limit_{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    with raw.cursor() as cur:
        cur.execute(f"CREATE ROLE {role} LOGIN CONNECTION LIMIT 1 PASSWORD %s", (password,))
    try:
        parts = urlsplit(database_url)
        host = parts.netloc.rpartition("@")[2]
        url = urlunsplit(parts._replace(netloc=f"{role}:{quote(password, safe='')}@{host}"))
        conn = DatabaseConnection().initialize(url, pool_timeout=1)
        try:
            with one_session_held(conn):
                with pytest.raises(DatabaseConnectionError, match="too many connections"):
                    with conn.session() as db:
                        db.execute_sql("SELECT 1")
        finally:
            conn.close()
    finally:
        assert eventually(lambda: sessions_of(raw, role), 0) == 0
        with raw.cursor() as cur:
            cur.execute(f"DROP ROLE {role}")


# -- naive means UTC, whatever the zones ----------------------------------------

@pytest.fixture
def new_york():
    """The process runs in America/New_York (TZ + tzset), restored afterwards."""
    if not hasattr(time, "tzset"):
        pytest.skip("time.tzset() is Unix only")
    old = os.environ.get("TZ")
    os.environ["TZ"] = "America/New_York"
    time.tzset()
    try:
        assert time.timezone == 5 * 3600  # the zone really changed
        yield
    finally:
        if old is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = old
        time.tzset()


def stored_epoch(raw, bar_id: int) -> float:
    """The stored instant, as seconds since the epoch: no session zone involved."""
    with raw.cursor() as cur:
        cur.execute('SELECT extract(epoch FROM "timestamp") FROM prices WHERE id = %s', (bar_id,))
        return float(cur.fetchone()[0])


def write_naive(writer: str, naive: dt.datetime) -> int:
    """Store a bar at ``naive``; returns its id."""
    if writer == "repository":
        return PriceRepository().create(**bar(naive)).id
    # Plain Peewee skips validation: the field's own conversion is all there is.
    return Price.insert(**bar(naive)).execute()


def read_back(bar_id: int, naive: dt.datetime) -> list[dt.datetime]:
    """The bar's timestamp as the repository and as plain Peewee return it."""
    (ranged,) = PriceRepository().get_range("AAPL", naive - dt.timedelta(minutes=1), naive + dt.timedelta(minutes=1))
    return [ranged.timestamp, Price.get_by_id(bar_id).timestamp]


def assert_utc(values: list[dt.datetime], naive: dt.datetime) -> None:
    for value in values:
        assert value == naive.replace(tzinfo=UTC) and value.utcoffset() == dt.timedelta(0), (values, naive)


# The morning US clocks sprang forward: local and UTC differ by 5 h before, 4 h after.
NAIVE = [dt.datetime(2024, 3, 10, 6, 30), dt.datetime(2024, 3, 10, 7, 30), dt.datetime(2024, 7, 1, 12, 0)]
WRITERS = ["repository", "peewee"]


@pytest.mark.parametrize("writer", WRITERS)
@pytest.mark.parametrize("naive", NAIVE, ids=str)
def test_naive_datetime_is_utc_in_a_non_utc_process_zone(db, raw, new_york, naive, writer):
    with marketstore.get_db_session():
        bar_id = write_naive(writer, naive)
        values = read_back(bar_id, naive)
    assert_utc(values, naive)
    assert stored_epoch(raw, bar_id) == calendar.timegm(naive.timetuple())


@pytest.mark.parametrize("writer", WRITERS)
@pytest.mark.parametrize("zone", ["Asia/Kolkata", "America/New_York"])
def test_naive_datetime_is_utc_in_a_non_utc_session_zone(db, raw, zone, writer):
    naive = dt.datetime(2024, 3, 10, 6, 30)
    with marketstore.get_db_session() as session:
        session.execute_sql(f"SET LOCAL TIME ZONE '{zone}'")
        assert session.execute_sql("SHOW timezone").fetchone() == (zone,)
        bar_id = write_naive(writer, naive)
        values = read_back(bar_id, naive)
    assert_utc(values, naive)
    assert stored_epoch(raw, bar_id) == calendar.timegm(naive.timetuple())
