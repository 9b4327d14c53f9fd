"""PriceRepository against plain-Python oracles, on a real PostgreSQL.

Data is random but seeded (or drawn by hypothesis); every write is checked
through the raw connection, never through the code under test.
"""
from __future__ import annotations

import csv
import datetime as dt
import itertools
import random
import os
import threading
import time
from decimal import Decimal

import psycopg2

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import marketstore
from marketstore import DataValidationError, DuplicateKeyError, IntegrityViolation, PriceRepository
from marketstore.repositories import BUCKET_ORIGIN, PriceBar
from marketstore.models import validate_price_row as price_row
from marketstore.repositories._rows import copy_line, line_formatter

from helpers import count_rows


UTC = dt.timezone.utc
T0 = dt.datetime(2024, 1, 2, tzinfo=UTC)
MINUTE = dt.timedelta(minutes=1)




def bar(symbol: str, minute: int, low_cents: int = 10_000, span: int = 200, o: int = 50, c: int = 150,
        volume: int = 1_000, interval: str = "1m") -> dict:
    low = Decimal(low_cents) / 100
    return {"symbol": symbol, "timestamp": T0 + minute * MINUTE, "interval": interval,
            "low": low, "high": low + Decimal(span) / 100,
            "open": low + Decimal(min(o, span)) / 100, "close": low + Decimal(min(c, span)) / 100,
            "volume": Decimal(volume)}


def random_bars(rng: random.Random, symbol: str, count: int, interval: str = "1m", horizon: int = 5_000):
    minutes = rng.sample(range(horizon), count)
    rows = []
    for m in minutes:
        span = rng.randint(0, 500)
        rows.append(bar(symbol, m, rng.randint(100, 100_000), span, rng.randint(0, span), rng.randint(0, span),
                        rng.randint(0, 10**6), interval))
    return rows


def stored(raw, symbol=None) -> list[tuple]:
    """(symbol, interval, timestamp, open, high, low, close, volume) read back raw, ordered."""
    with raw.cursor() as cur:
        cur.execute('SELECT symbol, "interval", "timestamp", open, high, low, close, volume FROM prices '
                    "WHERE %s IS NULL OR symbol = %s ORDER BY 1, 2, 3", (symbol, symbol))
        return cur.fetchall()


def as_tuple(row: dict) -> tuple:
    return (row["symbol"], row["interval"], row["timestamp"], row["open"], row["high"], row["low"],
            row["close"], row["volume"])


@pytest.fixture
def prices(db):
    return PriceRepository()


# -- reads against an oracle ------------------------------------------------------

def test_get_range_matches_oracle(prices, raw):
    rng = random.Random(1)
    rows = [r for symbol in ("AAA", "BBB", "CCC") for interval in ("1m", "5m")
            for r in random_bars(rng, symbol, 150, interval, horizon=2_000)]
    prices.upsert_many(rows)
    for _ in range(25):
        symbol, interval = rng.choice(["AAA", "BBB", "CCC"]), rng.choice(["1m", "5m"])
        a, b = sorted(rng.sample(range(-50, 2_050), 2))
        start, end = T0 + a * MINUTE, T0 + b * MINUTE
        expected = sorted((r["timestamp"], r["close"]) for r in rows
                          if r["symbol"] == symbol and r["interval"] == interval and start <= r["timestamp"] < end)
        got = prices.get_range(symbol, start, end, interval=interval)
        assert [(p.timestamp, p.close) for p in got] == expected
        assert all(p.symbol == symbol and p.interval == interval for p in got)
    # the end is exclusive, the start inclusive
    first = min(r["timestamp"] for r in rows if r["symbol"] == "AAA" and r["interval"] == "1m")
    assert prices.get_range("AAA", first, first, "1m") == []
    assert [p.timestamp for p in prices.get_range("AAA", first, first + dt.timedelta(seconds=1), "1m")] == [first]
    with pytest.raises(DataValidationError) as caught:  # two intervals stored: which one is not guessed
        prices.get_range("AAA", first, first + dt.timedelta(seconds=1))
    assert caught.value.field == "interval" and "1m, 5m" in str(caught.value)


def test_naive_datetimes_are_utc_and_reads_are_aware(prices):
    prices.upsert_many([bar("AAA", 0)])
    got = prices.get_range("AAA", T0.replace(tzinfo=None), (T0 + MINUTE).replace(tzinfo=None))
    assert [p.timestamp for p in got] == [T0]
    assert got[0].timestamp.tzinfo is not None and got[0].timestamp.utcoffset() == dt.timedelta(0)
    assert isinstance(got[0].close, Decimal)


def test_latest_and_latest_for_symbols_match_oracle(prices):
    rng = random.Random(2)
    symbols = [f"S{i}" for i in range(12)]
    rows = [r for s in symbols[:10] for interval in ("1m", "1d")
            for r in random_bars(rng, s, rng.randint(1, 40), interval, horizon=10_000)]
    prices.upsert_many(rows)
    for interval in ("1m", "1d"):
        expected = {}
        for r in rows:
            if r["interval"] == interval and (r["symbol"] not in expected
                                              or r["timestamp"] > expected[r["symbol"]]["timestamp"]):
                expected[r["symbol"]] = r
        got = prices.latest_for_symbols(symbols + ["S3", "S3"], interval=interval)  # duplicates, unknowns
        assert set(got) == set(expected)
        for symbol, price in got.items():
            assert (price.symbol, price.timestamp, price.close) == (
                symbol, expected[symbol]["timestamp"], expected[symbol]["close"])
            assert price.interval == interval
        for symbol in symbols:
            latest = prices.latest(symbol, interval=interval)
            if symbol in expected:
                assert (latest.timestamp, latest.close) == (expected[symbol]["timestamp"], expected[symbol]["close"])
            else:
                assert latest is None
    assert prices.latest_for_symbols([]) == {}


FIELD_NAMES = [f.name for f in marketstore.Price._meta.sorted_fields]


def peewee_built(query) -> list:
    """The same rows through peewee's own model cursor: the reference for the direct construction."""
    return list(query)


def assert_same_instances(fast, slow):
    assert len(fast) == len(slow)
    for a, b in zip(fast, slow):
        assert type(a) is type(b) is marketstore.Price
        for name in FIELD_NAMES:
            x, y = getattr(a, name), getattr(b, name)
            assert (type(x), x) == (type(y), y), name
            if isinstance(x, Decimal):
                assert x.as_tuple() == y.as_tuple(), name  # exact: same digits and scale
            if isinstance(x, dt.datetime):
                assert x.tzinfo is UTC and y.utcoffset() == dt.timedelta(0), name
        assert a.__data__ == b.__data__ and a._dirty == b._dirty == set() and a.__rel__ == b.__rel__ == {}
        assert a == b and hash(a) == hash(b) and repr(a) == repr(b) and str(a) == str(b)


def test_get_range_and_latest_build_the_same_instances_as_peewee(prices):
    rows = random_bars(random.Random(7), "AAA", 200) + random_bars(random.Random(8), "BBB", 20, "1d")
    prices.upsert_many(rows)
    Price = marketstore.Price
    fast = prices.get_range("AAA", T0, T0 + 10_000 * MINUTE)
    with marketstore.get_db_session():
        slow = peewee_built(Price.select().where(Price.symbol == "AAA", Price.interval == "1m")
                            .order_by(Price.timestamp))
    assert len(fast) == 200
    assert_same_instances(fast, slow)
    latest = prices.latest_for_symbols(["AAA", "BBB", "ZZZ"], interval="1d")
    assert list(latest) == ["BBB"]
    assert_same_instances([latest["BBB"]], [prices.latest("BBB", interval="1d")])


def test_nested_and_concurrent_gc_pauses_end_with_the_last():
    import gc
    from marketstore.repositories._price_rows import no_gc as _no_gc
    first = _no_gc()
    first.__enter__()  # as another thread's get_range would
    with _no_gc():
        assert not gc.isenabled()
    assert not gc.isenabled()  # the first pause still runs
    first.__exit__(None, None, None)
    assert gc.isenabled()


def test_building_models_leaves_the_garbage_collector_as_it_found_it(prices):
    import gc
    prices.upsert_many([bar("AAA", m) for m in range(3)])
    assert gc.isenabled()
    assert len(prices.get_range("AAA", T0, T0 + 10 * MINUTE)) == 3 and gc.isenabled()
    gc.disable()  # the caller's choice is kept, not overridden
    try:
        assert len(prices.latest_for_symbols(["AAA"])) == 1 and not gc.isenabled()
    finally:
        gc.enable()


def test_get_range_as_tuples_is_the_fast_path_in_documented_order(prices):
    from marketstore.repositories import PRICE_ROW_COLUMNS
    rows = random_bars(random.Random(9), "AAA", 50)
    prices.upsert_many(rows)
    models = prices.get_range("AAA", T0, T0 + 10_000 * MINUTE)
    tuples = prices.get_range("AAA", T0, T0 + 10_000 * MINUTE, as_tuples=True)
    assert PRICE_ROW_COLUMNS == ("id", "symbol", "timestamp", "open", "high", "low", "close", "volume", "interval",
                                 "adj_close")
    assert tuples == [tuple(m.__data__[c] for c in PRICE_ROW_COLUMNS) for m in models]
    assert all(type(t) is tuple and t[2].tzinfo is UTC for t in tuples)
    with pytest.raises(DataValidationError):
        prices.get_range("AAA", T0, T0 + MINUTE, as_tuples="yes")


def test_get_range_is_aware_utc_even_after_set_timezone(prices):
    prices.upsert_many([bar("AAA", 0)])
    with marketstore.get_db_session() as db:
        db.execute_sql("SET LOCAL timezone = 'America/New_York'")
        got = prices.get_range("AAA", T0, T0 + MINUTE)
        tuples = prices.get_range("AAA", T0, T0 + MINUTE, as_tuples=True)
        latest = prices.latest_for_symbols(["AAA"])
    assert got[0].timestamp == tuples[0][2] == latest["AAA"].timestamp == T0
    assert got[0].timestamp.tzinfo is tuples[0][2].tzinfo is latest["AAA"].timestamp.tzinfo is UTC


def test_fast_built_instances_save_and_update_like_any_other(prices, raw):
    prices.upsert_many([bar("AAA", 0), bar("AAA", 1)])
    first, second = prices.get_range("AAA", T0, T0 + 2 * MINUTE)
    assert first != second and first == prices.get(first.id)
    first.close = first.high
    assert first._dirty == {"close"}
    with marketstore.get_db_session():
        first.save()
    updated = prices.update(second.id, volume=Decimal(42))
    assert updated.volume == Decimal(42)
    assert [r[6:] for r in stored(raw)] == [(first.high, Decimal(1000)), (second.close, Decimal(42))]
    first.low = first.high + 1  # validation still runs on save
    with pytest.raises(DataValidationError):
        with marketstore.get_db_session():
            first.save()


def _oracle_bars(rows, start, end, width) -> list[tuple]:
    buckets: dict[dt.datetime, list[dict]] = {}
    for r in sorted(rows, key=lambda r: r["timestamp"]):
        if start <= r["timestamp"] < end:
            key = BUCKET_ORIGIN + ((r["timestamp"] - BUCKET_ORIGIN) // width) * width
            buckets.setdefault(key, []).append(r)
    return [(key, group[0]["open"], max(r["high"] for r in group), min(r["low"] for r in group),
             group[-1]["close"], sum(r["volume"] for r in group), len(group))
            for key, group in sorted(buckets.items())]


_symbols = (f"H{i}" for i in itertools.count())
BUCKETS = {"1 minute": MINUTE, "5m": 5 * MINUTE, "15 minutes": 15 * MINUTE, "1 hour": 60 * MINUTE,
           "1d": dt.timedelta(days=1), "1 week": dt.timedelta(weeks=1)}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    bars=st.lists(st.tuples(st.integers(0, 20_000), st.integers(100, 10**6), st.integers(0, 10**4),
                            st.integers(0, 10**4), st.integers(0, 10**4), st.integers(0, 10**7)),
                  min_size=1, max_size=60, unique_by=lambda b: b[0]),
    window=st.tuples(st.integers(-100, 20_100), st.integers(-100, 20_100)),
    bucket=st.sampled_from([*BUCKETS, dt.timedelta(minutes=7), dt.timedelta(hours=5)]),
)
def test_resample_matches_oracle(prices, bars, window, bucket):
    symbol = next(_symbols)
    rows = [bar(symbol, m, low, span, o, c, v) for m, low, span, o, c, v in bars]
    prices.upsert_many(rows)
    start, end = T0 + min(window) * MINUTE, T0 + max(window) * MINUTE
    width = BUCKETS.get(bucket, bucket)
    got = prices.resample(symbol, start, end, bucket=bucket)
    assert all(isinstance(b, PriceBar) for b in got)
    assert [tuple(b) for b in got] == _oracle_bars(rows, start, end, width)


def test_resample_ignores_other_symbols_and_intervals(prices):
    prices.upsert_many([bar("AAA", 0, 10_000), bar("AAA", 1, 20_000), bar("AAA", 0, 50_000, interval="1h"),
                        bar("BBB", 0, 90_000)])
    (only,) = prices.resample("AAA", T0, T0 + dt.timedelta(hours=1), interval="1m")
    assert only.bucket == T0 and only.count == 2
    assert only.open == Decimal("100.50") and only.close == Decimal("201.50")
    assert only.low == Decimal("100") and only.high == Decimal("202")


def test_symbols_and_delete_before(prices, raw):
    rng = random.Random(3)
    rows = [r for s in ("ZED", "ABC", "MID", "AB") for r in random_bars(rng, s, 50, horizon=1_000)]
    prices.upsert_many(rows)
    assert prices.symbols() == ["AB", "ABC", "MID", "ZED"]
    cutoff = T0 + 500 * MINUTE
    deleted = prices.delete_before(cutoff)
    assert deleted == sum(r["timestamp"] < cutoff for r in rows)
    assert stored(raw) == sorted(as_tuple(r) for r in rows if r["timestamp"] >= cutoff)
    assert prices.delete_before(cutoff) == 0


# -- upsert_many --------------------------------------------------------------------

def test_upsert_many_inserts_then_updates(prices, raw):
    rows = [bar("AAA", m) for m in range(5)]
    assert prices.upsert_many(rows) == 5
    changed = [dict(r, close=r["high"], volume=Decimal(7)) for r in rows[:3]] + [bar("AAA", 5)]
    assert prices.upsert_many(changed) == 4
    expected = sorted(as_tuple(r) for r in changed + rows[3:])
    assert stored(raw) == expected
    assert count_rows(raw, "prices") == 6


def test_upsert_many_repeated_key_last_wins(prices, raw):
    rows = [bar("AAA", 0, volume=1), bar("AAA", 1), bar("AAA", 0, volume=3)]
    written = prices.upsert_many(rows, batch_size=10)
    assert (written, written.inserted, written.updated) == (2, 2, 0)  # two bars: the repeated key counts once
    assert [r[-1] for r in stored(raw)] == [Decimal(3), Decimal(1000)]


def test_upsert_many_is_all_or_nothing_across_batches(prices, raw):
    rows = [bar("AAA", m) for m in range(2_500)]
    rows[2_100] = dict(rows[2_100], high=rows[2_100]["low"] - 1)  # the third batch
    with pytest.raises(DataValidationError) as info:
        prices.upsert_many(rows, batch_size=1_000)
    assert (info.value.row, info.value.field, info.value.source) == (2101, "high", None)
    assert count_rows(raw, "prices") == 0


@pytest.mark.parametrize("row, field", [
    ({"symbol": "AAA", "timestamp": T0, "open": 1, "high": 2, "low": 1, "close": 2}, "volume"),
    (dict(bar("AAA", 0), id=5), "id"),
    (dict(bar("AAA", 0), close=Decimal("-1")), "close"),
    (dict(bar("AAA", 0), symbol="bad symbol!"), "symbol"),
    (dict(bar("AAA", 0), timestamp="tomorrow"), "timestamp"),
])
def test_upsert_many_refuses_bad_rows(prices, raw, row, field):
    with pytest.raises(DataValidationError) as info:
        prices.upsert_many([bar("AAA", 10), row])
    assert (info.value.row, info.value.field) == (2, field)
    assert count_rows(raw, "prices") == 0


# -- copy_from ------------------------------------------------------------------------

def write_csv(path, rows, columns=("symbol", "timestamp", "open", "high", "low", "close", "volume", "interval")):
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        for r in rows:
            writer.writerow([r[c].isoformat() if c == "timestamp" else r[c] for c in columns])


def test_copy_from_rows_dicts_and_sequences(prices, raw):
    rows = [bar("AAA", m) for m in range(10)]
    sequences = [tuple(r[c] for c in ("symbol", "timestamp", "open", "high", "low", "close", "volume"))
                 for r in (bar("BBB", m) for m in range(3))]
    assert prices.copy_from(iter(rows + sequences)) == 13
    expected = sorted([as_tuple(r) for r in rows] + [as_tuple(bar("BBB", m)) for m in range(3)])
    assert stored(raw) == expected


def test_copy_from_csv_path_any_column_order(prices, raw, tmp_path):
    rows = random_bars(random.Random(4), "CSV", 500)
    path = tmp_path / "prices.csv"
    write_csv(path, rows, ("timestamp", "close", "symbol", "volume", "low", "high", "open"))  # no interval
    assert prices.copy_from(str(path)) == 500
    empty = tmp_path / "empty.csv"
    empty.touch()
    assert prices.copy_from(empty) == 0
    assert stored(raw) == sorted(as_tuple(r) for r in rows)


def test_copy_from_bad_csv_line_aborts_whole_load(prices, raw, tmp_path):
    rows = [bar("AAA", m) for m in range(3_000)]  # well past the first COPY chunks
    rows[2_500] = dict(rows[2_500], low=rows[2_500]["high"] + 1)
    path = tmp_path / "bad.csv"
    write_csv(path, rows)
    with pytest.raises(DataValidationError) as info:
        prices.copy_from(str(path))
    assert (info.value.source, info.value.line, info.value.field) == (str(path), 2502, "high")  # header: line 1
    assert info.value.value == str(rows[2_500]["high"])  # the cell as the file wrote it
    assert info.value.expected == f"high >= low ({rows[2_500]['low']})"
    assert count_rows(raw, "prices") == 0


HEADER = "symbol,timestamp,open,high,low,close,volume\n"
GOOD = "AAA,2024-01-02T00:00:00Z,1,2,1,2,3\n"


BAD_FILES = [
    # (file text, line, field): the error's source is the file, its line and field these.
    ("symbol,timestamp,open,high,low,close\n", 1, "volume"),
    ("symbol,timestamp,open,high,low,close,volume,colour\n", 1, "colour"),
    ("symbol,timestamp,symbol,open,high,low,close,volume\n", 1, "symbol"),  # a column twice
    ("symbol,timestamp,,open,high,low,close,volume\n", 1, "header"),
    (HEADER + GOOD + "AAA,2024-01-02\n", 3, "row"),
    (HEADER + "AAA,2024-01-02,1,2,1,2,3,4\n", 2, "row"),
    (HEADER + "\n\r\nAAA,2024-01-02T00:00:00Z,1,2,1,2,x\n", 4, "volume"),
    # What PostgreSQL's input would take but a bar must not be: relative or infinite times,
    # years a Python datetime cannot hold, day/month order left to a server setting.
    *[(HEADER + GOOD.replace("2024-01-02T00:00:00Z", ts), 2, "timestamp") for ts in (
        "now", " Today", "infinity", "10000-01-01", "01/02/2024", "03/04/25", "02-01-24", "31.12.23", "240102",
        "Jan 2 2024", "2024.01.02", "epoch", "J2460000", "2024-01-01T24:00:00", "2024-01-01T23:59:60Z",
        "2024-01-02T00:00:00.9999995Z", "2024-01-02 10:00 EST", '"2024-01-02 10:00 America/New_York"')],
    (HEADER + GOOD + 'AAA,"2024-01-03\nnow",1,2,1,2,3\n', 3, "row"),  # a quoted line break
    ("symbol,timestamp,open,high,low,close,volume\rAAA,2024-01-02,1,2,1,2,3\r", 1, "header"),  # \r line ends
    ("symbol,timestamp,open,high,low,close,volume,interval\nAAA,2024-01-02,1,2,1,2,3,12345m\n", 2, "interval"),
    (HEADER + "AAA,2024-01-02,NaN,NaN,NaN,NaN,NaN\n", 2, "open"),
    (HEADER + "AAA,2024-01-02,1,Infinity,1,2,3\n", 2, "high"),
    (HEADER + "AAA,2024-01-02,1,99999999999999999,1,2,3\n", 2, "high"),
    (HEADER + "AAA,2024-01-02,,2,1,2,3\n", 2, "open"),
    (HEADER + "AA A,2024-01-02,1,2,1,2,3\n", 2, "symbol"),
    ("symbol,timestamp,open,high,low,close,volume,interval\nAAA,2024-01-02,1,2,1,2,3,1x\n", 2, "interval"),
    # COPY's end-of-data marker would silently drop the rest of the file.
    (HEADER + GOOD + "\\.\n" + GOOD.replace("00:00:00", "00:01:00"), 3, "row"),
]


@pytest.mark.parametrize("method", ["copy_from", "upsert_many"])
@pytest.mark.parametrize("content, line, field", BAD_FILES)
def test_a_bad_file_names_its_line_and_field_through_either_reader(prices, raw, tmp_path, method, content, line,
                                                                     field):
    path = tmp_path / "in.csv"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataValidationError) as info:
        getattr(prices, method)(path)
    assert (info.value.source, info.value.line, info.value.field) == (str(path), line, field)
    assert info.value.row is None
    assert str(info.value).startswith(f"{path}, line {line}: {field}=")
    assert count_rows(raw, "prices") == 0


def test_copy_from_interval_and_progress(prices, raw, tmp_path):
    path = tmp_path / "hourly.csv"
    path.write_text(HEADER + GOOD + "\n" + GOOD.replace("AAA", "BBB"), encoding="utf-8")
    read = []
    assert prices.copy_from(path, interval="1h", progress=read.append) == 2
    assert sum(read) == path.stat().st_size  # every byte, header included, reported once
    rows = [bar("CCC", 0), {k: v for k, v in bar("DDD", 0).items() if k != "interval"}]
    assert prices.copy_from(rows, interval="1d") == 2  # a row's own interval wins
    assert [(s, i) for s, i, *_ in stored(raw)] == [("AAA", "1h"), ("BBB", "1h"), ("CCC", "1m"), ("DDD", "1d")]
    with pytest.raises(DataValidationError, match="interval"):
        prices.copy_from(path, interval="1M")  # minutes or months: refused as ambiguous
    with pytest.raises(DataValidationError, match="progress"):
        prices.copy_from(path, progress=5)


def test_copy_from_csv_takes_iso_timestamps_quoted_or_spaced(prices, raw, tmp_path):
    path = tmp_path / "iso.csv"
    path.write_text(HEADER + 'AAA," 2024-01-02 10:00:00.5+01:00 ",1,2,1,2,3\nBBB,2024-01-02,1,2,1,2,3\n'
                    "CCC,2024-01-02T10:00-0500,1,2,1,2,3\n", encoding="utf-8")
    assert prices.copy_from(path) == 3
    assert [ts for _, _, ts, *_ in stored(raw)] == [dt.datetime(2024, 1, 2, 9, 0, 0, 500_000, tzinfo=UTC),
                                                    dt.datetime(2024, 1, 2, tzinfo=UTC),
                                                    dt.datetime(2024, 1, 2, 15, tzinfo=UTC)]


def test_copy_from_csv_long_runs_of_blank_lines_do_not_end_the_load(prices, raw, tmp_path):
    """A 64 KiB read of blank lines only must not reach psycopg2 as an empty read (end of data)."""
    rows = [f"AAA,{(T0 + m * MINUTE).isoformat()},1,2,1,2,3\n" for m in range(2_000)]
    path = tmp_path / "gaps.csv"
    path.write_text(HEADER + "\n" * 70_000 + "".join(rows[:1_000]) + "\r\n" * 140_000 + "".join(rows[1_000:])
                    + "AAA,2024-01-02,x,2,1,2,3\n", encoding="utf-8")
    with pytest.raises(DataValidationError) as info:
        prices.copy_from(path)
    assert (info.value.source, info.value.line, info.value.field) == (str(path), 1 + 70_000 + 2_000 + 140_000 + 1,
                                                                      "open")
    path.write_text(HEADER + "\n" * 70_000 + "".join(rows[:1_000]) + "\r\n" * 140_000 + "".join(rows[1_000:]),
                    encoding="utf-8")
    assert prices.copy_from(path) == 2_000
    assert count_rows(raw, "prices") == 2_000


def test_copy_from_lets_ctrl_c_through_and_keeps_the_pool_clean(prices, raw):
    def rows():
        yield bar("AAA", 0)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        prices.copy_from(rows())
    assert count_rows(raw, "prices") == 0
    assert marketstore.db_connection.pool_status()["in_use"] == 0


def test_copy_from_csv_server_refusal_is_logged_once_with_context(prices, raw, tmp_path, caplog):
    import logging
    caplog.set_level(logging.ERROR, logger="marketstore")
    path = tmp_path / "twice.csv"
    path.write_text(HEADER + GOOD + "AAA,2024-01-02,3,2,1,2,3\n" + GOOD, encoding="utf-8")
    with pytest.raises(DataValidationError):
        with marketstore.get_db_session():  # nested: the inner session logs, the outer does not again
            prices.copy_from(path)
    path.write_text(HEADER + GOOD + GOOD, encoding="utf-8")
    with pytest.raises(DuplicateKeyError) as info:
        prices.copy_from(path)
    assert (info.value.source, info.value.line) == (str(path), 3)
    assert info.value.key == {"symbol": "AAA", "interval": "1m", "timestamp": "2024-01-02 00:00:00+00"}
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2, messages
    assert messages[0].startswith("copy_from Price failed after") and "line 3: open" in messages[0]
    assert messages[1].startswith("copy_from Price failed after") and "DuplicateKeyError" in messages[1]


def test_copy_from_csv_never_reads_an_unbroken_line_whole(prices, raw, tmp_path):
    path = tmp_path / "one-line.csv"
    path.write_bytes(b"x" * (3 << 20))
    with pytest.raises(DataValidationError, match="line 1"):
        prices.copy_from(path)
    path.write_bytes((HEADER + GOOD).encode() + b"A" * (3 << 20))
    with pytest.raises(DataValidationError) as info:
        prices.copy_from(path)
    assert (info.value.source, info.value.line, info.value.field) == (str(path), 3, "row")
    assert count_rows(raw, "prices") == 0


def test_copy_from_reports_a_byte_that_is_not_utf8(prices, raw, tmp_path):
    path = tmp_path / "latin1.csv"
    path.write_bytes((HEADER + GOOD).encode() + "BÉB,2024-01-02,1,2,1,2,3\n".encode("latin-1"))
    with pytest.raises(DataValidationError) as info:
        prices.copy_from(path)
    assert (info.value.source, info.value.line, info.value.field) == (str(path), 3, "row")
    assert info.value.expected == "UTF-8 text"
    assert count_rows(raw, "prices") == 0


def test_copy_from_csv_counts_lines_across_chunks_and_blank_lines(prices, raw, tmp_path):
    """Blank lines are skipped, and a bad line far past the first 64 KiB read is still named exactly."""
    rows = [bar("AAA", m) for m in range(3_000)]
    lines = [f"AAA,{r['timestamp'].isoformat()},{r['open']},{r['high']},{r['low']},{r['close']},{r['volume']}"
             for r in rows]
    good = HEADER + "\n".join(line + ("\n\r" if i % 700 == 0 else "") for i, line in enumerate(lines)) + "\n\n"
    path = tmp_path / "blank.csv"
    path.write_text(good, encoding="utf-8")
    assert prices.copy_from(path) == 3_000
    assert stored(raw) == sorted(as_tuple(r) for r in rows)
    with marketstore.get_db_session() as db:
        db.execute_sql("TRUNCATE prices")
    text = good.splitlines(keepends=True)
    bad_at = next(i for i in range(2_800, len(text)) if text[i].startswith("AAA"))
    text[bad_at] = text[bad_at].replace("AAA", "A A", 1)
    path.write_text("".join(text), encoding="utf-8")
    with pytest.raises(DataValidationError) as info:
        prices.copy_from(path)
    assert (info.value.source, info.value.line, info.value.field, info.value.value) == (
        str(path), bad_at + 1, "symbol", "A A")
    assert count_rows(raw, "prices") == 0


def test_copy_from_csv_reads_naive_times_as_utc_whatever_the_session_says(prices, raw, tmp_path):
    path = tmp_path / "naive.csv"
    path.write_text(HEADER + "AAA,2024-01-02 10:00:00,1,2,1,2,3\nBBB,2024-01-02 10:00:00-05:00,1,2,1,2,3\n",
                    encoding="utf-8")
    with marketstore.get_db_session() as db:
        db.execute_sql("SET LOCAL timezone = 'America/New_York'")
        db.execute_sql("SET LOCAL datestyle = 'SQL, DMY'")
        assert prices.copy_from(path) == 2
        # The caller's settings are back once copy_from returns.
        assert db.execute_sql("SELECT current_setting('timezone'), current_setting('datestyle')").fetchone() \
            == ("America/New_York", "SQL, DMY")
    assert [(s, ts) for s, _, ts, *_ in stored(raw)] == [
        ("AAA", dt.datetime(2024, 1, 2, 10, tzinfo=UTC)), ("BBB", dt.datetime(2024, 1, 2, 15, tzinfo=UTC))]


def test_copy_from_csv_takes_a_symbol_that_spells_a_relative_word(prices, raw, tmp_path):
    path = tmp_path / "now.csv"
    path.write_text("Symbol, TIMESTAMP ,open,high,low,close,volume\r\n"
                    "NOW,2024-01-02T00:00:00Z,1,2,1,2,3\r\nSNOW,2024-01-02T00:00:00Z,1,2,1,2,3\r\n",
                    encoding="utf-8-sig")  # a BOM, spaces and capitals in the header
    assert prices.copy_from(path) == 2
    assert [s for s, *_ in stored(raw)] == ["NOW", "SNOW"]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs POSIX named pipes")
def test_copy_from_fifo_error_quotes_the_line_the_server_refused(prices, raw, tmp_path):
    path = tmp_path / "bad.fifo"
    os.mkfifo(path)

    def writer():
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(HEADER + GOOD + "AAA,2024-01-03T00:00:00Z,3,2,1,2,3\n")

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    try:
        with pytest.raises(DataValidationError) as info:
            prices.copy_from(path)
    finally:
        thread.join(10)
    assert (info.value.source, info.value.line, info.value.field) == (str(path), 3, "row")
    assert info.value.value == "AAA,2024-01-03T00:00:00Z,3,2,1,2,3"
    assert "prices_ohlc_check" in info.value.expected
    assert count_rows(raw, "prices") == 0


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.integers(0, 10**15), st.integers(0, 10**8), st.integers(0, 10**8),
                          st.integers(0, 10**8), st.integers(0, 10**12), st.integers(0, 8),
                          st.datetimes(min_value=dt.datetime(1, 1, 2), max_value=dt.datetime(9999, 12, 30),
                                       timezones=st.sampled_from([None, UTC, dt.timezone(dt.timedelta(hours=-5))]))),
                min_size=1, max_size=20))
def test_copy_from_csv_stores_what_copy_from_rows_stores(prices, raw, tmp_path, bars):
    """The server parsing the file and Python validating the rows agree on every value."""
    rows = []
    for i, (low, a, b, span, volume, scale, ts) in enumerate(bars):
        low = Decimal(low + 1).scaleb(-scale)
        high = low + Decimal(span).scaleb(-scale)
        rows.append({"symbol": f"S{i}", "timestamp": ts, "low": low, "high": high,
                     "open": min(low + Decimal(a).scaleb(-scale), high),
                     "close": min(low + Decimal(b).scaleb(-scale), high),
                     "volume": Decimal(volume).scaleb(-scale), "interval": "1m"})
    path = tmp_path / "generated.csv"
    write_csv(path, rows)
    with marketstore.get_db_session() as db:
        db.execute_sql("TRUNCATE prices")
        assert prices.copy_from(path) == len(rows)
        from_file = db.execute_sql('SELECT symbol, "timestamp", open, high, low, close, volume FROM prices '
                                   "ORDER BY symbol").fetchall()
        db.execute_sql("TRUNCATE prices")
        assert prices.copy_from(rows) == len(rows)
        from_rows = db.execute_sql('SELECT symbol, "timestamp", open, high, low, close, volume FROM prices '
                                   "ORDER BY symbol").fetchall()
        db.execute_sql("TRUNCATE prices")
    assert from_file == from_rows


def test_copy_from_bad_row_in_iterable_names_row(prices, raw):
    rows = [bar("AAA", m) for m in range(100)] + [{"symbol": "AAA"}]
    with pytest.raises(DataValidationError) as info:
        prices.copy_from(rows)
    assert (info.value.row, info.value.field) == (101, "timestamp")
    assert count_rows(raw, "prices") == 0


def test_copy_from_existing_bar_is_integrity_violation_and_loads_nothing(prices, raw):
    prices.upsert_many([bar("AAA", 5)])
    with pytest.raises(IntegrityViolation):
        prices.copy_from([bar("AAA", m) for m in range(10)])
    assert count_rows(raw, "prices") == 1


def wait_for_copy_progress(url: str, timeout: float = 3.0) -> int | None:
    """Rows the server's running COPY into prices has processed, once it is > 0; None on timeout."""
    conn = psycopg2.connect(url)
    conn.autocommit = True
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with conn.cursor() as cur:
                cur.execute("SELECT tuples_processed FROM pg_stat_progress_copy "
                            "WHERE datname = current_database() AND relid = 'prices'::regclass")
                found = cur.fetchone()
            if found and found[0] > 0:
                return found[0]
            time.sleep(0.02)
        return None
    finally:
        conn.close()


def test_copy_from_streams_rows_to_the_server_while_reading(prices, raw):
    """The server has processed rows before the iterable is exhausted: nothing is buffered whole."""
    seen = []

    def rows():
        for m in range(6_000):
            if m == 5_000:
                seen.append(wait_for_copy_progress(raw.dsn))
            yield bar("AAA", m)

    assert prices.copy_from(rows(), interval="1m") == 6_000  # given: straight into prices, no staging
    assert seen and seen[0] is not None and 0 < seen[0] <= 5_000
    assert count_rows(raw, "prices") == 6_000


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs POSIX named pipes")
def test_copy_from_csv_path_is_streamed(prices, raw, tmp_path):
    """A file is read as the server consumes it, not first read whole: fed through a FIFO,
    the server has processed rows before the writer has written the rest."""
    path = tmp_path / "prices.fifo"
    os.mkfifo(path)
    seen = []

    def writer():
        with open(path, "w", newline="", encoding="utf-8") as handle:
            handle.write("symbol,timestamp,open,high,low,close,volume\n")
            for m in range(6_000):
                if m == 5_000:
                    handle.flush()
                    seen.append(wait_for_copy_progress(raw_url))
                r = bar("AAA", m)
                handle.write(f"AAA,{r['timestamp'].isoformat()},{r['open']},{r['high']},{r['low']},"
                             f"{r['close']},{r['volume']}\n")

    raw_url = raw.dsn
    thread = threading.Thread(target=writer, daemon=True)  # never blocks the run if copy_from fails early
    thread.start()
    read = []
    try:
        # a FIFO cannot tell() its position; the interval given: straight into prices, no staging
        assert prices.copy_from(path, progress=read.append, interval="1m") == 6_000
    finally:
        thread.join(10)
    assert sum(read) > 6_000 * 40
    assert seen and seen[0] is not None and 0 < seen[0] <= 5_000
    assert count_rows(raw, "prices") == 6_000


def test_writes_compose_in_one_session(prices, raw):
    with pytest.raises(RuntimeError):
        with marketstore.get_db_session():
            prices.copy_from([bar("AAA", 0)])
            prices.upsert_many([bar("AAA", 1)])
            raise RuntimeError("caller fails after both writes")
    assert count_rows(raw, "prices") == 0
    with marketstore.get_db_session():
        prices.copy_from([bar("AAA", 0)])
        prices.upsert_many([bar("AAA", 0, volume=9), bar("AAA", 1)])
    assert [r[-1] for r in stored(raw)] == [Decimal(9), Decimal(1000)]


# -- parameter validation ---------------------------------------------------------------

LATER = T0 + dt.timedelta(hours=1)


@pytest.mark.parametrize("method, args, kwargs, field", [
    ("get_range", ("AAA", LATER, T0), {}, "end"),
    ("get_range", ("", T0, LATER), {}, "symbol"),
    ("get_range", (None, T0, LATER), {}, "symbol"),
    ("get_range", ("AAA", "yesterday", LATER), {}, "start"),
    ("get_range", ("AAA", T0, LATER), {"interval": "1x"}, "interval"),
    ("latest", ("A" * 33,), {}, "symbol"),
    ("latest_for_symbols", ("AAA",), {}, "symbols"),
    ("latest_for_symbols", (["AAA", 7],), {}, "symbols[1]"),
    ("resample", ("AAA", T0, LATER), {"bucket": "1M"}, "bucket"),  # minutes or months: ambiguous
    ("resample", ("AAA", T0, LATER), {"bucket": dt.timedelta(0)}, "bucket"),
    ("resample", ("AAA", T0, LATER), {"bucket": "0 hours"}, "bucket"),
    ("upsert_many", ({"symbol": "AAA"},), {}, "rows_or_csv_path"),
    ("upsert_many", ([bar("AAA", 0)],), {"batch_size": 0}, "batch_size"),
    ("copy_from", (42,), {}, "rows_or_csv_path"),
    ("delete_before", ("soon",), {}, "ts"),
])
def test_bad_parameters_are_refused(prices, method, args, kwargs, field):
    with pytest.raises(DataValidationError) as info:
        getattr(prices, method)(*args, **kwargs)
    assert info.value.field == field


# -- the fast row check of copy_from/upsert_many against the full validation ----------

def _copy_values(line: str) -> tuple:
    """The values a COPY text line sends, parsed back (None for a refused row)."""
    symbol, ts, o, h, lo, c, v, interval, adj_close = line.rstrip("\n").split("\t")
    assert adj_close == "\\N"
    stamp = dt.datetime.fromisoformat(ts)
    assert stamp.utcoffset() == dt.timedelta(0)
    return (symbol, stamp, *(Decimal(x) for x in (o, h, lo, c, v)), interval)


def _full_line(row):
    try:
        return copy_line(price_row(row))
    except DataValidationError:
        return None


_EDGE_NUMBERS = [Decimal("1E-9"), Decimal("5E-9"), Decimal("4.9E-9"), Decimal("0.00000001"), Decimal("-0"),
                 Decimal("0"), Decimal("1.000000000"), Decimal("1.000000005"), Decimal("1E+3"),
                 Decimal("9999999999999999.99999999"), Decimal("9999999999999999.999999999"), Decimal("1E+16"),
                 Decimal("99999999999999999999.99999999"), Decimal("1E+20"), Decimal("NaN"), Decimal("-NaN"),
                 Decimal("sNaN"), Decimal("Infinity"), Decimal("-Infinity"), 0, 1, 10**16, True, 1.5,
                 float("nan"), float("inf"), "12.5", " 3 ", "NaN", "abc", None, [], b"1"]


def _numbers():
    scaled = st.integers(0, 11).flatmap(
        lambda places: st.decimals(min_value=0, max_value=Decimal(10) ** 17, places=places))
    return st.one_of(scaled, st.sampled_from(_EDGE_NUMBERS), st.decimals(), st.integers(-5, 10**21),
                     st.floats(), scaled.map(str))


_OFFSETS = st.timedeltas(min_value=-dt.timedelta(hours=23, minutes=59),
                         max_value=dt.timedelta(hours=23, minutes=59)).map(dt.timezone)
_STAMPS = st.one_of(st.datetimes(timezones=st.one_of(st.none(), st.just(UTC), _OFFSETS)),
                    st.sampled_from([dt.datetime.min, dt.datetime.max,
                                     dt.datetime.max.replace(tzinfo=dt.timezone(-dt.timedelta(hours=5))),
                                     dt.datetime.min.replace(tzinfo=dt.timezone(dt.timedelta(hours=5)))]),
                    st.datetimes().map(lambda d: d.isoformat()), st.just(dt.date(2024, 1, 2)))
_SYMBOLS = st.one_of(st.from_regex(r"[A-Za-z0-9.^][A-Za-z0-9._\-/=^:]{0,33}", fullmatch=True), st.text(max_size=40),
                     st.sampled_from(["AAPL", "BRK.B", "^GSPC", "EUR/USD", "a\tb", "a\\b", "AAA\n", 7, None]))
_INTERVALS = st.one_of(st.sampled_from(["1m", "5m", "1h", "1d", "1w", "1mo", "9999mo", "10000m", "0m", "1x",
                                        "1M", " 1m", "1m\n", 1, None]), st.text(max_size=8))
_FIELD_VALUES = {"symbol": _SYMBOLS, "timestamp": _STAMPS, "interval": _INTERVALS,
                 **{name: _numbers() for name in ("open", "high", "low", "close", "volume")}}


@st.composite
def price_inputs(draw):
    """Mostly valid bars (ordered Decimals of any scale), some fields then replaced, removed or added."""
    values = sorted(draw(st.lists(st.integers(0, 11).flatmap(
        lambda p: st.decimals(min_value=0, max_value=Decimal(10) ** 16, places=p)), min_size=5, max_size=5)))
    low, a, b, high = values[1:]
    row = {"symbol": draw(st.sampled_from(["AAA", "BRK.B", "^GSPC"])),
           "timestamp": draw(st.datetimes(timezones=st.one_of(st.none(), st.just(UTC), _OFFSETS))),
           "open": a, "high": high, "low": low, "close": b, "volume": values[0] * draw(st.sampled_from([1, 10**4])),
           "interval": draw(st.sampled_from(["1m", "1h", "1mo"]))}
    if draw(st.booleans()):
        del row["interval"]
    for name in draw(st.sets(st.sampled_from(sorted(_FIELD_VALUES)), max_size=3)):
        row[name] = draw(_FIELD_VALUES[name])
    for name in draw(st.sets(st.sampled_from(sorted(_FIELD_VALUES)), max_size=1)):
        row.pop(name, None)
    if draw(st.integers(0, 20)) == 0:
        row[draw(st.sampled_from(["id", "Symbol", "extra"]))] = 1
    return draw(st.sampled_from([row, row, row, tuple(row.values())]))


def test_fast_row_check_takes_the_common_row():
    """The fast path is really taken for the rows callers pass (else the test above proves little)."""
    for row in (bar("AAA", 0), {k: v for k, v in bar("AAA", 1).items() if k != "interval"},
                dict(bar("AAA", 2), timestamp=(T0 + MINUTE).replace(tzinfo=None))):
        assert line_formatter()(row) == _full_line(row)
