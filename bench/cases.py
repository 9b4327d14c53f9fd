"""The cases: side-by-side comparisons with their references, each result checked for correctness.

A case is a generator of comparisons: the runner measures each one as it is
yielded, so a case can use the figures of one comparison to build the next.
It builds its contenders (marketstore and the references named in the
issue), the untimed setup each sample needs, a check of what each returned or
loaded (against the seeded data, or the reference's own result), and the
targets. ``CASES`` maps a case name to its builder.
"""
from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
import threading
from typing import Callable, Iterator

from peewee import chunked

import marketstore
from marketstore.models import Price

from . import data, references, sqla
from .checks import BAR_FIELDS, bars_of, expect, frame_close_to, latest_of, resampled_of
from .context import Context, minutes_after_start
from .harness import Comparison, Contender, Finding, Target

CASES: dict[str, Callable[[Context], Iterator[Comparison]]] = {}

RANGE_ROWS = 100_000
RESAMPLE_MINUTES = 30 * 24 * 60  # a month of minute bars
SCALING_WINDOW = 10_000
SESSION_THREADS, SESSION_TRANSACTIONS = 4, 2000
SESSION_SQL = "SELECT close FROM prices WHERE id = %s"
SELECT_ONE = "SELECT %s"  # SELECT 1, echoing the id so that the check sees every transaction ran
FLAT = 1.2  # per-row cost or read time may grow by at most this factor with the table
MEMORY_LIMIT_MB = 150


def case(name: str):
    def register(builder):
        CASES[name] = builder
        return builder
    return register


def ahead(contender: str, sqlalchemy: str) -> Target:
    return Target(contender, sqlalchemy, "speed>=", 1.0, "ahead of SQLAlchemy")


# -- naive peewee, the way a first version would write it ------------------------
def naive_insert_many(rows, batch: int = 1000) -> int:
    with marketstore.get_db_session():
        for page in chunked(rows, batch):
            Price.insert_many(page).execute()
    return len(rows)


def naive_upsert_many(rows, batch: int = 1000) -> int:
    with marketstore.get_db_session():
        for page in chunked(rows, batch):
            (Price.insert_many(page)
             .on_conflict(conflict_target=[Price.symbol, Price.interval, Price.timestamp],
                          preserve=[Price.open, Price.high, Price.low, Price.close, Price.volume])
             .execute())
    return len(rows)


def peewee_tuples(symbol, start, end, interval="1m") -> list[tuple]:
    """Stand-in fast path: the same query as get_range, ``.tuples()`` instead of models."""
    with marketstore.get_db_session("get_range", "Price"):
        return list(Price.select()
                    .where(Price.symbol == symbol, Price.interval == interval,
                           Price.timestamp >= start, Price.timestamp < end)
                    .order_by(Price.timestamp).tuples())


# -- 1. ingest and upsert -------------------------------------------------------------
@case("ingest")
def ingest(ctx: Context) -> Iterator[Comparison]:
    rows = ctx.rows
    expected = data.summarize(rows)
    path, written = ctx.csv_file(ctx.n)
    expect(written, expected, "CSV file summary")
    repo = marketstore.PriceRepository()

    def loaded(count):
        expect(count, ctx.n, "rows reported loaded")
        expect(ctx.summary(), expected, "prices after the load")

    contenders = [
        Contender("raw COPY (rows)", lambda: references.copy_rows(ctx.raw, rows), "reference",
                  note="copy_expert, COPY text built from the row dicts as the server reads"),
        Contender("copy_from(rows)", lambda: repo.copy_from(rows)),
        Contender("raw COPY (CSV file)", lambda: references.copy_csv(ctx.raw, path), "reference",
                  note="copy_expert streaming the file, no Python parsing"),
        Contender("copy_from(CSV file)", lambda: repo.copy_from(str(path))),
        Contender("SQLAlchemy ORM bulk insert", lambda: sqla.orm_bulk_insert(ctx.engine, rows), "sqlalchemy"),
        Contender("SQLAlchemy Core executemany", lambda: sqla.core_executemany(ctx.engine, rows), "sqlalchemy"),
        Contender("peewee insert_many (naive)", lambda: naive_insert_many(rows), "peewee",
                  note="Price.insert_many per 1,000 rows in one transaction"),
    ]
    for c in contenders:
        c.setup, c.check = ctx.reset, loaded
    yield Comparison(
        "ingest", f"ingest {ctx.n:,} rows into an empty table", ctx.n, "rows", "raw COPY (rows)", contenders,
        [Target("copy_from(rows)", "raw COPY (rows)", "speed>=", 0.9),
         Target("copy_from(CSV file)", "raw COPY (CSV file)", "speed>=", 0.9, "vs COPY of the same file"),
         Target("copy_from(CSV file)", "raw COPY (rows)", "speed>=", 0.9, "vs COPY of the same rows"),
         ahead("copy_from(rows)", "SQLAlchemy ORM bulk insert"),
         ahead("copy_from(rows)", "SQLAlchemy Core executemany"),
         ahead("copy_from(CSV file)", "SQLAlchemy ORM bulk insert")],
        warmup=False,
    )


@case("upsert")
def upsert(ctx: Context) -> Iterator[Comparison]:
    rows = ctx.rows
    half = rows[::2]  # already stored: half the upserted rows update, half insert
    changed = ctx.dataset("upsert_rows", lambda: [dict(r, volume=r["volume"] + 1) for r in rows])
    before = data.summarize(rows)
    expected = data.Summary(before.count, before.symbols, before.sum_open, before.sum_close,
                            before.sum_volume + len(rows), before.first, before.last)
    repo = marketstore.PriceRepository()

    def preload():
        ctx.reset()
        references.copy_rows(ctx.raw, half)
        ctx.checkpoint()

    def upserted(count):
        expect(count, ctx.n, "rows reported upserted")
        expect(ctx.summary(), expected, "prices after the upsert")

    contenders = [
        Contender("raw execute_values ON CONFLICT", lambda: references.upsert_execute_values(ctx.raw, changed),
                  "reference", note="page_size=1000"),
        Contender("upsert_many", lambda: repo.upsert_many(changed)),
        Contender("SQLAlchemy ORM upsert", lambda: sqla.orm_upsert(ctx.engine, changed), "sqlalchemy",
                  note="session.execute(insert().on_conflict_do_update(), rows)"),
        Contender("peewee insert_many ON CONFLICT (naive)", lambda: naive_upsert_many(changed), "peewee"),
    ]
    for c in contenders:
        c.setup, c.check = preload, upserted
    yield Comparison(
        "upsert", f"upsert {ctx.n:,} rows, half of them already stored", ctx.n, "rows",
        "raw execute_values ON CONFLICT", contenders,
        [Target("upsert_many", "raw execute_values ON CONFLICT", "speed>=", 1.5),
         ahead("upsert_many", "SQLAlchemy ORM upsert")],
        warmup=False,
    )


# -- 2. range read --------------------------------------------------------------------
# Spellings a tuple/dict fast path of get_range may take, tried in order.
FAST_PATH_KEYWORDS = (("as_tuples", True), ("tuples", True), ("rows", "tuples"), ("output", "tuples"))
FAST_PATH_METHODS = ("get_range_tuples", "get_range_rows")


def fast_path(repo) -> tuple[Callable, str, str]:
    """The repository's tuple/dict fast path for get_range, else peewee ``.tuples()``."""
    params = inspect.signature(repo.get_range).parameters
    for keyword, value in FAST_PATH_KEYWORDS:
        if keyword in params:
            return ((lambda *a: repo.get_range(*a, **{keyword: value})),
                    f"get_range({keyword}={value!r})", "the repository's fast path")
    for method in FAST_PATH_METHODS:
        if hasattr(repo, method):
            return getattr(repo, method), f"{method}()", "the repository's fast path"
    return peewee_tuples, "peewee .tuples() (stand-in)", "no fast path in PriceRepository yet: same query, .tuples()"


@case("range")
def range_read(ctx: Context) -> Iterator[Comparison]:
    ctx.load_read_dataset()
    count = min(RANGE_ROWS, data.counts(ctx.n)[data.HEAVY])
    start, end = minutes_after_start(count)
    expected = [tuple(r[f] for f in BAR_FIELDS) for r in ctx.rows if r["symbol"] == data.HEAVY][:count]
    repo = marketstore.PriceRepository()
    fast, fast_name, fast_note = fast_path(repo)
    args = (data.HEAVY, start, end)

    def right(result):
        expect(len(result), count, "rows returned")
        expect(bars_of(result), expected, "rows returned")

    contenders = [
        Contender("raw fetchall", lambda: references.fetch_range(ctx.raw, *args), "reference",
                  note="all 10 columns, as the models carry"),
        Contender("get_range (models)", lambda: list(repo.get_range(*args))),
        Contender(fast_name, lambda: list(fast(*args)), note=fast_note),
        Contender("SQLAlchemy ORM select", lambda: sqla.orm_range(ctx.engine, *args), "sqlalchemy"),
    ]
    for c in contenders:
        c.check = right
    yield Comparison(
        "range", f"range read of {count:,} rows of one symbol", count, "rows", "raw fetchall", contenders,
        [Target(fast_name, "raw fetchall", "time<=", 1.2, "fast path"),
         Target("get_range (models)", "raw fetchall", "time<=", 2.5, "models"),
         ahead("get_range (models)", "SQLAlchemy ORM select")],
        sample_seconds=0.5,
    )


# -- 3. latest price --------------------------------------------------------------------
@case("latest")
def latest(ctx: Context) -> Iterator[Comparison]:
    ctx.load_read_dataset()
    repo = marketstore.PriceRepository()
    for symbols in (data.SYMBOLS, data.SYMBOLS + data.TAIL_SYMBOLS):
        expected = data.latest(ctx.read_rows, symbols)

        def right(result, expected=expected):
            expect(latest_of(result), expected, "latest (timestamp, close) per symbol")

        contenders = [
            Contender("raw LATERAL", lambda s=symbols: references.latest_lateral(ctx.raw, s), "reference",
                      note="unnest(symbols) CROSS JOIN LATERAL (... ORDER BY timestamp DESC LIMIT 1)"),
            Contender("latest_for_symbols", lambda s=symbols: repo.latest_for_symbols(s)),
            Contender("raw DISTINCT ON", lambda s=symbols: references.latest_distinct_on(ctx.raw, s), "reference",
                      note="sorts every row of the symbols"),
            Contender("SQLAlchemy ORM (LATERAL)", lambda s=symbols: sqla.orm_latest(ctx.engine, s), "sqlalchemy"),
        ]
        for c in contenders:
            c.check = right
        yield Comparison(
            "latest", f"latest price of {len(symbols)} symbols", len(symbols), "symbols", "raw LATERAL",
            contenders,
            [Target("latest_for_symbols", "raw LATERAL", "time<=", 1.2),
             ahead("latest_for_symbols", "SQLAlchemy ORM (LATERAL)")],
        )


# -- 4. resample ----------------------------------------------------------------------
@case("resample")
def resample(ctx: Context) -> Iterator[Comparison]:
    ctx.load_read_dataset()
    minutes = min(RESAMPLE_MINUTES, data.counts(ctx.n)[data.HEAVY])
    start, end = minutes_after_start(minutes)
    expected = data.resample(ctx.rows, data.HEAVY, start, end)
    repo = marketstore.PriceRepository()
    args = (data.HEAVY, start, end)

    def right(result):
        expect(resampled_of(result), expected, "hourly bars")

    contenders = [
        Contender("hand-written SQL", lambda: references.resample_sql(ctx.raw, *args), "reference",
                  note="date_bin + ordered array_agg for first/last"),
        Contender("resample", lambda: list(repo.resample(*args))),
        Contender("pandas resample after raw fetch", lambda: references.resample_pandas(ctx.raw, *args),
                  "pandas", check=lambda frame: frame_close_to(frame, expected),
                  note="fetchall, DataFrame, .resample('1h').agg(...)"),
        Contender("SQLAlchemy Core (same SQL)", lambda: sqla.resample(ctx.engine, *args), "sqlalchemy"),
    ]
    for c in contenders:
        c.check = c.check or right
    yield Comparison(
        "resample", f"resample {minutes:,} minute bars to {len(expected):,} hourly bars", minutes, "rows",
        "hand-written SQL", contenders,
        [Target("resample", "hand-written SQL", "time<=", 1.1),
         Target("resample", "pandas resample after raw fetch", "speed>=", 1.0, "ahead of pandas"),
         ahead("resample", "SQLAlchemy Core (same SQL)")],
    )


# -- 5. sessions ------------------------------------------------------------------------
def run_threads(transaction: Callable, ids_per_thread: list[list[int]], sql: str = SESSION_SQL) -> list:
    """Each thread runs one transaction of ``sql`` per id; returns the values, thread by thread."""
    results: list = [None] * len(ids_per_thread)
    errors: list = []
    start = threading.Barrier(len(ids_per_thread))

    def worker(number, ids):
        try:
            start.wait()
            results[number] = [transaction(sql, (i,)) for i in ids]
        except BaseException as exc:  # reported by the check, not lost in a thread
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n, ids)) for n, ids in enumerate(ids_per_thread)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results


def marketstore_transaction(sql, params):
    with marketstore.get_db_session() as db:
        return db.execute_sql(sql, params).fetchone()[0]


def session_workload(ctx: Context) -> tuple[list[list[int]], list[list]]:
    """The read data set loaded; the ids each thread reads in turn, and the close each must get."""
    ctx.load_read_dataset()
    total = len(ctx.read_rows)
    per_thread = 200 if ctx.quick else SESSION_TRANSACTIONS
    ids = [[(t * per_thread + i) % total + 1 for i in range(per_thread)] for t in range(SESSION_THREADS)]
    with ctx.admin.cursor() as cur:
        cur.execute("SELECT id, close FROM prices WHERE id = ANY(%s)", (sorted({i for t in ids for i in t}),))
        close = dict(cur.fetchall())
    return ids, [[close[i] for i in t] for t in ids]


@case("sessions")
def sessions(ctx: Context) -> Iterator[Comparison]:
    ids, expected = session_workload(ctx)
    per_thread = len(ids[0])
    raw_pool = references.RawPool(ctx.url)
    ctx.closers.append(raw_pool.close)
    settings = marketstore.db_connection.settings
    assert settings.pool_pre_ping, "the sessions case measures marketstore with pre-ping on"

    def right(result):
        expect(result, expected, "values read by every transaction")

    contenders = [
        Contender("psycopg2 ThreadedConnectionPool", lambda: run_threads(raw_pool.transaction, ids), "reference",
                  note="getconn, execute, commit, putconn; no ping"),
        Contender("get_db_session() (pre-ping on)", lambda: run_threads(marketstore_transaction, ids)),
        Contender("SQLAlchemy QueuePool (pre-ping)",
                  lambda: run_threads(lambda s, p: sqla.transaction(ctx.engine, s, p), ids), "sqlalchemy",
                  note="pool_size=10, max_overflow=20, pool_pre_ping=True; engine.begin()"),
    ]
    for c in contenders:
        c.check = right
    yield Comparison(
        "sessions", f"{SESSION_THREADS} threads x {per_thread:,} short transactions", SESSION_THREADS * per_thread,
        "transactions", "psycopg2 ThreadedConnectionPool", contenders,
        [Target("get_db_session() (pre-ping on)", "psycopg2 ThreadedConnectionPool", "speed>=", 0.9),
         ahead("get_db_session() (pre-ping on)", "SQLAlchemy QueuePool (pre-ping)")],
    )
    # The plainest session a service opens: nothing but the pool and the transaction.
    plain = [
        Contender("psycopg2 ThreadedConnectionPool", lambda: run_threads(raw_pool.transaction, ids, SELECT_ONE),
                  "reference", note="getconn, SELECT %s, commit, putconn; no ping"),
        Contender("get_db_session() (pre-ping on)",
                  lambda: run_threads(marketstore_transaction, ids, SELECT_ONE)),
    ]
    for c in plain:
        c.check = lambda result: expect(result, ids, "values echoed by every transaction")
    yield Comparison(
        "sessions", f"{SESSION_THREADS} threads x {per_thread:,} SELECT 1 transactions", SESSION_THREADS * per_thread,
        "transactions", "psycopg2 ThreadedConnectionPool", plain,
        [Target("get_db_session() (pre-ping on)", "psycopg2 ThreadedConnectionPool", "speed>=", 0.9)],
    )


# -- 6. scaling -------------------------------------------------------------------------
def memory_probe(url: str, path) -> dict:
    """Peak RSS of one ``copy_from(path)`` in a fresh interpreter (see bench.memprobe)."""
    done = subprocess.run([sys.executable, "-m", "bench.memprobe", url, str(path)], check=True,
                          capture_output=True, text=True,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return json.loads(done.stdout.strip().splitlines()[-1])


@case("scaling")
def scaling(ctx: Context) -> Iterator[Comparison]:
    sizes = [max(ctx.n // 10, 100), ctx.n] + ([ctx.n * 5] if ctx.large else [])
    window = min(SCALING_WINDOW, data.counts(sizes[0])[data.HEAVY])
    start, end = minutes_after_start(window)
    repo = marketstore.PriceRepository()
    per_row, read_time, peak = {}, {}, {}
    for size in sizes:
        path, expected = ctx.csv_file(size)

        def loaded(count, size=size, expected=expected):
            expect(count, size, "rows reported loaded")
            expect(ctx.summary(), expected, "prices after the load")

        load = Comparison(
            "scaling", f"copy_from(CSV file) of {size:,} rows", size, "rows", "raw COPY (CSV file)",
            [Contender("raw COPY (CSV file)", lambda p=path: references.copy_csv(ctx.raw, p), "reference",
                       setup=ctx.reset, check=loaded),
             Contender("copy_from(CSV file)", lambda p=path: repo.copy_from(str(p)), setup=ctx.reset, check=loaded)],
            [Target("copy_from(CSV file)", "raw COPY (CSV file)", "speed>=", 0.9)],
            warmup=False,
        )
        ctx.reset()
        probe = memory_probe(ctx.url, path)
        expect(probe["count"], size, "rows loaded by the memory probe")
        peak[size] = probe["peak_mb"] - probe["baseline_mb"]
        load.findings.append(Finding(f"peak memory of copy_from(CSV) above baseline, {size:,} rows",
                                     round(peak[size], 2), f"< {MEMORY_LIMIT_MB} MB",
                                     peak[size] < MEMORY_LIMIT_MB))
        yield load  # measured by the runner before the table is read below
        per_row[size] = load.medians()["copy_from(CSV file)"] / size
        ctx.table = f"scaling-{size}"
        with ctx.admin.cursor() as cur:
            cur.execute("VACUUM ANALYZE prices")
        reference = references.fetch_range(ctx.raw, data.HEAVY, start, end)
        expect(len(reference), window, "rows in the fixed window")

        def right(result, reference=reference):
            expect(bars_of(result), bars_of(reference), "rows returned")

        read = Comparison(
            "scaling", f"get_range of a fixed {window:,}-row window, table of {size:,} rows", window, "rows",
            "raw fetchall",
            [Contender("raw fetchall", lambda: references.fetch_range(ctx.raw, data.HEAVY, start, end),
                       "reference", check=right),
             Contender("get_range (models)", lambda: list(repo.get_range(data.HEAVY, start, end)), check=right)],
            [Target("get_range (models)", "raw fetchall", "time<=", 2.5)],
        )
        yield read
        read_time[size] = read.medians()["get_range (models)"]
    small, large = sizes[0], sizes[-1]
    growth = per_row[large] / per_row[small]
    read_growth = read_time[large] / read_time[small]
    memory_growth = peak[large] - peak[small]
    read.findings += [
        Finding(f"copy_from(CSV) cost per row, {large:,} vs {small:,} rows", round(growth, 3), f"<= {FLAT}",
                growth <= FLAT),
        Finding(f"get_range fixed window time, table of {large:,} vs {small:,} rows", round(read_growth, 3),
                f"<= {FLAT}", read_growth <= FLAT),
        Finding(f"peak memory growth of copy_from(CSV), {large:,} vs {small:,} rows (MB)",
                round(memory_growth, 2), f"< {MEMORY_LIMIT_MB} MB", memory_growth < MEMORY_LIMIT_MB),
    ]


# -- the natural types of market data on the fast path ------------------------------------
def int_volume(rows: list[dict]) -> list[dict]:
    """The rows with an ``int`` volume: the natural type of a volume."""
    return [dict(r, volume=int(r["volume"])) for r in rows]


def float_bars(rows: list[dict]) -> list[dict]:
    """The rows with ``float`` prices and volume, as an exchange API or a CSV dump gives them."""
    return [dict(r, open=float(r["open"]), high=float(r["high"]), low=float(r["low"]), close=float(r["close"]),
                 volume=float(r["volume"])) for r in rows]


@case("types")
def natural_types(ctx: Context) -> Iterator[Comparison]:
    rows = ctx.rows
    expected = data.summarize(rows)  # cents and whole volumes: a float prints them exactly
    repo = marketstore.PriceRepository()

    def loaded(count):
        expect(count, ctx.n, "rows reported loaded")
        expect(ctx.summary(), expected, "prices after the load")

    for label, shaped in (("int volume", ctx.dataset("int_volume", lambda: int_volume(rows))),
                          ("float prices and volume", ctx.dataset("float_bars", lambda: float_bars(rows)))):
        contenders = [
            Contender("raw COPY (rows)", lambda shaped=shaped: references.copy_rows(ctx.raw, shaped), "reference",
                      note="copy_expert, COPY text built from the same rows (str of each value)"),
            Contender(f"copy_from(rows, {label})", lambda shaped=shaped: repo.copy_from(shaped)),
            Contender("copy_from(rows, Decimal)", lambda: repo.copy_from(rows), note="the bench's own shape"),
        ]
        for c in contenders:
            c.setup, c.check = ctx.reset, loaded
        yield Comparison(
            "types", f"ingest {ctx.n:,} rows with {label} into an empty table", ctx.n, "rows", "raw COPY (rows)",
            contenders, [Target(f"copy_from(rows, {label})", "raw COPY (rows)", "speed>=", 0.9)], warmup=False)

    changed = ctx.dataset("upsert_int_volume", lambda: [dict(r, volume=int(r["volume"]) + 1) for r in rows])
    upserted_summary = data.Summary(expected.count, expected.symbols, expected.sum_open, expected.sum_close,
                                    expected.sum_volume + len(rows), expected.first, expected.last)

    def preload():
        ctx.reset()
        references.copy_rows(ctx.raw, rows[::2])
        ctx.checkpoint()

    def upserted(count):
        expect(count, ctx.n, "rows reported upserted")
        expect(ctx.summary(), upserted_summary, "prices after the upsert")

    contenders = [
        Contender("raw execute_values ON CONFLICT", lambda: references.upsert_execute_values(ctx.raw, changed),
                  "reference", note="page_size=1000, the same rows"),
        Contender("upsert_many(rows, int volume)", lambda: repo.upsert_many(changed)),
    ]
    for c in contenders:
        c.setup, c.check = preload, upserted
    yield Comparison(
        "types", f"upsert {ctx.n:,} rows with int volume, half of them already stored", ctx.n, "rows",
        "raw execute_values ON CONFLICT", contenders,
        [Target("upsert_many(rows, int volume)", "raw execute_values ON CONFLICT", "speed>=", 1.5)], warmup=False)


from . import service as _service_case  # noqa: E402,F401 - registers the service case (it imports case from here)
