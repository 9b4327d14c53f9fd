"""Frames in and out, side by side with the hand-rolled and the C references.

``frames`` (a case of ``python -m bench``): ``copy_from(pandas frame)`` against
``df.to_csv`` -> ``COPY`` and ADBC's ``adbc_ingest`` (Arrow binary COPY in C),
Parquet ingest against ``copy_from(frame)`` of the same data, ``to_sql(method=
"multi")`` at a smaller N, ``frame(symbol, 100k bars)`` against
``pandas.read_sql``, connectorx and ADBC, and the peak memory of
``copy_from(frame)`` of 5N rows in a fresh interpreter
(``python -m bench.frames URL ROWS``). ADBC and connectorx are optional (the
``bench`` extra): without them their contenders are left out.
"""
from __future__ import annotations

import datetime as dt
import io
import json
import subprocess
import sys
from typing import Iterator

import marketstore

from . import data, references
from .cases import case
from .checks import expect
from .context import Context, minutes_after_start
from .harness import Comparison, Contender, Finding, Target

FRAME_COLUMNS = ["symbol", "timestamp", "open", "high", "low", "close", "volume", "interval"]
TO_SQL_ROWS = 20_000  # DataFrame.to_sql(method="multi") takes minutes at 1M rows
READ_ROWS = 100_000
COPY_SQL = "COPY prices (" + ", ".join(f'"{c}"' for c in FRAME_COLUMNS) + ") FROM STDIN WITH (FORMAT csv)"
NUMBERS = ("open", "high", "low", "close", "volume")
READ_SQL = ('SELECT "timestamp", open::float8 AS open, high::float8 AS high, low::float8 AS low, '
            'close::float8 AS close, volume::float8 AS volume FROM prices WHERE symbol = \'{symbol}\' '
            'AND "interval" = \'1m\' AND "timestamp" >= \'{start}\' AND "timestamp" < \'{end}\' ORDER BY "timestamp"')


def _optional(module: str):
    try:
        return __import__(module, fromlist=["_"])
    except ImportError:
        return None


def pandas_frame(rows: list[dict]):
    """The data set as a pandas frame the way a feed delivers it: float prices, int volume, UTC times."""
    import pandas as pd

    frame = pd.DataFrame(rows, columns=FRAME_COLUMNS)
    for name in NUMBERS[:-1]:
        frame[name] = frame[name].astype("float64")
    frame["volume"] = frame["volume"].astype("int64")
    frame["timestamp"] = pd.to_datetime(frame["timestamp"], utc=True)
    return frame


def to_csv_copy(conn, frame) -> int:
    """The hand-rolled way: ``df.to_csv`` into memory, then ``COPY ... FORMAT csv``."""
    buffer = io.StringIO()
    frame.to_csv(buffer, index=False, header=False)
    buffer.seek(0)
    with conn.cursor() as cur:
        cur.copy_expert(COPY_SQL, buffer)
        count = cur.rowcount
    conn.commit()
    return count


def decimal_table(rows: list[dict]):
    """The data set as Arrow with decimal128(20, 8) columns: what ADBC can COPY into numeric columns
    (it refuses float64 -> numeric), built once and untimed."""
    import pyarrow as pa

    columns = {name: [row[name] for row in rows] for name in FRAME_COLUMNS}
    arrays = {name: pa.array(values, pa.decimal128(20, 8)) if name in NUMBERS else pa.array(values)
              for name, values in columns.items()}
    return pa.table(arrays)


def adbc_ingest(url: str, table) -> int:
    import adbc_driver_postgresql.dbapi as adbc

    with adbc.connect(url) as conn:
        with conn.cursor() as cur:
            count = cur.adbc_ingest("prices", table, mode="append")
        conn.commit()
    return count


@case("frames")
def frames(ctx: Context) -> Iterator[Comparison]:
    pd, pq = _optional("pandas"), _optional("pyarrow.parquet")
    if pd is None or pq is None:
        ctx.log("frames: pandas/pyarrow not installed (the frames extra); case skipped")
        return
    adbc = _optional("adbc_driver_postgresql.dbapi")
    cx = _optional("connectorx")
    rows = ctx.rows
    expected = data.summarize(rows)
    frame = ctx.dataset("pandas_frame", lambda: pandas_frame(rows))
    parquet = ctx.workdir / f"prices_{ctx.n}.parquet"
    if not parquet.exists():
        import pyarrow as pa

        pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), parquet, row_group_size=65_536)
    repo = marketstore.PriceRepository()

    def loaded(count):
        expect(count, ctx.n, "rows reported loaded")
        expect(ctx.summary(), expected, "prices after the load")

    contenders = [
        Contender("df.to_csv -> COPY", lambda: to_csv_copy(ctx.raw, frame), "reference",
                  note="to_csv into memory, copy_expert FORMAT csv"),
        Contender("copy_from(pandas frame)", lambda: repo.copy_from(frame)),
        Contender("copy_from(Parquet file)", lambda: repo.copy_from(str(parquet))),
    ]
    targets = [Target("copy_from(pandas frame)", "df.to_csv -> COPY", "speed>=", 1.0),
               Target("copy_from(Parquet file)", "copy_from(pandas frame)", "speed>=", 0.9, "Parquet ingest")]
    if adbc is not None:
        table = ctx.dataset("decimal_table", lambda: decimal_table(rows))
        contenders.append(Contender("ADBC adbc_ingest", lambda: adbc_ingest(ctx.url, table), "reference",
                                    note="Arrow decimal128 table (built untimed; ADBC refuses float64 -> numeric)"))
        targets.append(Target("copy_from(pandas frame)", "ADBC adbc_ingest", "speed>=", 0.8, "vs ADBC"))
    for c in contenders:
        c.setup, c.check = ctx.reset, loaded
    yield Comparison("frames", f"ingest a {ctx.n:,}-row pandas frame into an empty table", ctx.n, "rows",
                     "df.to_csv -> COPY", contenders, targets, warmup=False)

    small_n = min(ctx.n, TO_SQL_ROWS)
    small = frame.iloc[:small_n]
    small_expected = data.summarize(rows[:small_n])

    def small_loaded(count):
        assert count in (small_n, None) or count >= 0, count  # to_sql reports rows or None by version
        expect(ctx.summary(), small_expected, "prices after the load")

    contenders = [
        Contender("to_sql(method='multi')", lambda: small.to_sql("prices", ctx.engine, if_exists="append",
                                                                  index=False, method="multi", chunksize=1000),
                  "pandas", note="SQLAlchemy engine, chunksize=1000"),
        Contender("copy_from(pandas frame) ", lambda: repo.copy_from(small)),
    ]
    for c in contenders:
        c.setup, c.check = ctx.reset, small_loaded
    yield Comparison("frames", f"ingest a {small_n:,}-row pandas frame (to_sql's N)", small_n, "rows",
                     "to_sql(method='multi')", contenders,
                     [Target("copy_from(pandas frame) ", "to_sql(method='multi')", "speed>=", 10.0)], warmup=False)

    yield _upsert_unchanged(ctx, frame, expected)
    yield _sentiment(ctx)
    finding = _memory(ctx)
    comparison = _frame_out(ctx, pd, adbc, cx)  # leaves the read data set, as the other read cases do
    comparison.findings.append(finding)  # reported with the last comparison of the case
    yield comparison


def _upsert_unchanged(ctx: Context, frame, expected) -> Comparison:
    """Upserting a frame already stored, unchanged, against upserting it into an empty table.

    Nothing is rewritten: the table's ``n_tup_upd`` must not move, and the
    count says every bar was unchanged.
    """
    repo = marketstore.PriceRepository()

    def updates() -> int:
        with ctx.raw.cursor() as cur:
            cur.execute("SELECT pg_stat_force_next_flush(); "
                        "SELECT n_tup_upd FROM pg_stat_user_tables WHERE relname = 'prices'")
            return cur.fetchone()[0]

    def stored_already():
        ctx.reset()
        repo.copy_from(frame)
        ctx.checkpoint()
        stored_already.updates = updates()

    def first(count):
        expect((count, count.inserted), (ctx.n, ctx.n), "rows reported inserted")
        expect(ctx.summary(), expected, "prices after the upsert")

    def again(count):
        expect((count, count.updated, count.unchanged), (0, 0, ctx.n), "rows reported written, updated, unchanged")
        expect(updates(), stored_already.updates, "n_tup_upd of prices (rows rewritten)")
        expect(ctx.summary(), expected, "prices after the upsert")

    contenders = [
        Contender("upsert_many(frame), empty table", lambda: repo.upsert_many(frame), "reference",
                  setup=ctx.reset, check=first),
        Contender("upsert_many(frame), unchanged", lambda: repo.upsert_many(frame),
                  setup=stored_already, check=again),
    ]
    return Comparison("frames", f"upsert a {ctx.n:,}-row frame stored already, unchanged", ctx.n, "rows",
                      "upsert_many(frame), empty table", contenders,
                      [Target("upsert_many(frame), unchanged", "upsert_many(frame), empty table", "time<=", 0.5,
                              "unchanged upsert")], warmup=False)


def _frame_out(ctx: Context, pd, adbc, cx) -> Comparison:
    ctx.load_read_dataset()
    count = min(READ_ROWS, data.counts(ctx.n)[data.HEAVY])
    start, end = minutes_after_start(count)
    repo = marketstore.PriceRepository()
    sql = READ_SQL.format(symbol=data.HEAVY, start=start.isoformat(), end=end.isoformat())
    closes = sum(float(r["close"]) for r in ctx.rows if r["symbol"] == data.HEAVY and start <= r["timestamp"] < end)

    def right(result):
        frame = result if isinstance(result, pd.DataFrame) else result.to_pandas()
        expect(len(frame), count, "bars read")
        assert abs(float(frame["close"].sum()) - closes) < 1e-6 * count, "sum of close"

    def adbc_read():
        with adbc.connect(ctx.url) as conn, conn.cursor() as cur:
            cur.execute(sql)
            return cur.fetch_arrow_table().to_pandas()

    contenders = [
        Contender("pandas.read_sql", lambda: pd.read_sql(sql, ctx.engine), "pandas",
                  note="SQLAlchemy engine, the same float8 query"),
        Contender("frame(symbol)", lambda: repo.frame(data.HEAVY, start, end)),
    ]
    targets = [Target("frame(symbol)", "pandas.read_sql", "speed>=", 3.0)]
    if adbc is not None:
        contenders.append(Contender("ADBC fetch_arrow_table().to_pandas()", adbc_read, "reference",
                                    note="the same float8 query, a new connection per read"))
        targets.append(Target("frame(symbol)", "ADBC fetch_arrow_table().to_pandas()", "time<=", 1.2))
    if cx is not None:
        contenders.append(Contender("connectorx read_sql", lambda: cx.read_sql(ctx.url, sql), "reference",
                                    note="the same float8 query"))
        targets.append(Target("frame(symbol)", "connectorx read_sql", "time<=", 1.2))
    for c in contenders:
        c.check = right
    return Comparison("frames", f"frame of {count:,} bars of one symbol", count, "rows", "pandas.read_sql",
                      contenders, targets)


SENTIMENT_SYMBOLS = 10
# Articles spread over the bars' span, one symbol and one score each; the windows' counts by brute force
_ARTICLES_SQL = """
INSERT INTO articles (title, content, source, url, published_at, symbols)
SELECT 'a' || g, 'c', 'bench', 'https://example.com/' || g, %(t0)s + random() * %(span)s * interval '1 hour',
       ARRAY['SENT' || (g %% %(symbols)s)] FROM generate_series(1, %(articles)s) AS g;
INSERT INTO sentiment_scores (article_id, score, confidence, model)
SELECT id, random() * 2 - 1, random(), 'bench' FROM articles"""
_COUNTED_SQL = """
SELECT count(*) FROM prices AS p JOIN articles AS a ON a.symbols @> ARRAY[p.symbol::text]
 AND a.published_at >= p."timestamp" + interval '1 hour' - interval '1 day'
 AND a.published_at < p."timestamp" + interval '1 hour' JOIN sentiment_scores AS s ON s.article_id = a.id"""


def _sentiment(ctx: Context) -> Comparison:
    """``frame(symbols, sentiment=True)`` against ``frame(symbols)`` alone, on the same hourly bars.

    10 symbols of hourly bars (the read size in all) and a tenth as many
    scored articles over the same span; the join must count, per bar, the
    scores known in the day before its close (checked against a brute-force
    SQL count).
    """
    ctx.reset()
    count = min(READ_ROWS, ctx.n)
    per_symbol = count // SENTIMENT_SYMBOLS
    t0 = dt.datetime(2020, 1, 1, tzinfo=dt.timezone.utc)
    rows = [{"symbol": f"SENT{i}", "timestamp": t0 + dt.timedelta(hours=h), "open": 10, "high": 11, "low": 9,
             "close": 10, "volume": 100, "interval": "1h"} for i in range(SENTIMENT_SYMBOLS) for h in range(per_symbol)]
    references.copy_rows(ctx.raw, rows)
    with ctx.admin.cursor() as cur:
        cur.execute("TRUNCATE articles RESTART IDENTITY CASCADE")
        cur.execute(_ARTICLES_SQL, {"t0": t0, "span": per_symbol, "symbols": SENTIMENT_SYMBOLS,
                                    "articles": max(1, count // 10)})
        cur.execute("VACUUM ANALYZE prices, articles, sentiment_scores")
        cur.execute(_COUNTED_SQL)
        counted = cur.fetchone()[0]
    ctx.table = "sentiment"  # prices no longer hold the read dataset
    symbols = [f"SENT{i}" for i in range(SENTIMENT_SYMBOLS)]
    end = t0 + dt.timedelta(hours=per_symbol)
    repo = marketstore.PriceRepository()

    def bars(frame):
        expect(len(frame), per_symbol * SENTIMENT_SYMBOLS, "bars read")

    def joined(frame):
        bars(frame)
        expect(int(frame["sentiment_count"].sum()), counted, "scores counted over all bars")

    contenders = [
        Contender("frame(symbols)", lambda: repo.frame(symbols, t0, end), "reference", check=bars),
        Contender("frame(symbols, sentiment=True)", lambda: repo.frame(symbols, t0, end, sentiment=True),
                  check=joined),
    ]
    return Comparison("frames", f"frame of {per_symbol * SENTIMENT_SYMBOLS:,} hourly bars with sentiment",
                      per_symbol * SENTIMENT_SYMBOLS, "rows", "frame(symbols)", contenders,
                      [Target("frame(symbols, sentiment=True)", "frame(symbols)", "time<=", 2.0, "sentiment join")])


def _memory(ctx: Context) -> Finding:
    """Peak RSS above the frame of ``copy_from(frame)`` of 5N rows, in a fresh interpreter."""
    n = 5 * ctx.n
    ctx.reset()
    out = subprocess.run([sys.executable, "-m", "bench.frames", ctx.url, str(n)], capture_output=True, text=True,
                         timeout=3600)
    if out.returncode != 0:
        raise RuntimeError(f"bench.frames memory probe failed: {out.stderr[-2000:]}")
    probe = json.loads(out.stdout.strip().splitlines()[-1])
    expect(probe["count"], n, "rows loaded by the memory probe")
    ctx.reset()
    ratio = probe["peak_above_mb"] / probe["frame_mb"]
    ctx.log(f"frames memory probe: {json.dumps(probe)}")
    return Finding(f"peak RSS above the frame / frame size, copy_from(frame) of {n:,} rows", ratio, "<= 1.0",
                   ratio <= 1.0)


def _probe(url: str, n: int) -> dict:
    """Build an n-row frame (float prices, int volume), then measure copy_from's peak RSS above it."""
    import numpy as np
    import pandas as pd

    from .memprobe import peak_of

    rng = np.random.default_rng(5)
    symbols = np.array(data.SYMBOLS)[np.arange(n) % len(data.SYMBOLS)]
    opens = np.round(100 + rng.random(n) * 10, 2)
    closes = np.round(opens + rng.random(n) - 0.5, 2)
    frame = pd.DataFrame({
        "symbol": pd.array(symbols, dtype=str), "timestamp": pd.Timestamp("2020-01-01", tz="UTC")
        + pd.to_timedelta(np.arange(n) // len(data.SYMBOLS), unit="min"),
        "open": opens, "high": np.maximum(opens, closes) + 0.05, "low": np.minimum(opens, closes) - 0.05,
        "close": closes, "volume": rng.integers(0, 100_000, n)})
    del symbols, opens, closes
    marketstore.initialize_database(url)
    repo = marketstore.PriceRepository()
    try:  # warm up (imports, first connection) with a load that rolls back
        with marketstore.get_db_session():
            repo.copy_from(frame.iloc[:1000])
            raise LookupError
    except LookupError:
        pass
    import gc

    gc.collect()
    measured = peak_of(lambda: repo.copy_from(frame))
    marketstore.close_database()
    return {**measured, "frame_mb": frame.memory_usage(deep=True).sum() / 2**20,
            "peak_above_mb": measured["peak_mb"] - measured["baseline_mb"]}


if __name__ == "__main__":
    print(json.dumps(_probe(sys.argv[1], int(sys.argv[2]))))
