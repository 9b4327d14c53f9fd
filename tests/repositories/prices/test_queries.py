"""PriceRepository's queries against plain-Python oracles, on a real PostgreSQL: ranges,
latest bars, the model instances it builds, resampling, symbols and ``delete_before``.

Data is random but seeded (or drawn by hypothesis); every write is checked
through the raw connection, never through the code under test.
"""
from __future__ import annotations

import datetime as dt
import itertools
import random
from decimal import Decimal


import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import marketstore
from marketstore import DataValidationError, PriceRepository
from marketstore.repositories import BUCKET_ORIGIN, PriceBar


from helpers import MINUTE, T0, UTC, as_tuple, bar, bar_at, random_bars, stored_prices


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
    assert [r[6:] for r in stored_prices(raw)] == [(first.high, Decimal(1000)), (second.close, Decimal(42))]
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
    assert stored_prices(raw) == sorted(as_tuple(r) for r in rows if r["timestamp"] >= cutoff)
    assert prices.delete_before(cutoff) == 0


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



def test_delete_before_keeps_the_bar_exactly_at_the_cutoff(db, raw):
    prices = PriceRepository()
    cutoff = dt.datetime(2024, 3, 8, 14, 30, tzinfo=UTC)
    tick = dt.timedelta(microseconds=1)
    for when in (cutoff - tick, cutoff, cutoff + tick):
        prices.create(**bar_at(when))

    assert prices.delete_before(cutoff) == 1

    with raw.cursor() as cur:
        cur.execute('SELECT "timestamp" FROM prices ORDER BY "timestamp"')
        assert [row[0] for row in cur.fetchall()] == [cutoff, cutoff + tick]

