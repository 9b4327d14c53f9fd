"""Buckets in exchange time, held against pandas: ``tz_convert`` then ``resample(label="left", closed="left")``.

Random bars cross a DST change (New York in March and November, London in
March and October); some buckets are left empty on purpose. pandas computes
the expected frame, and its own grid of buckets: a NaN row at ``start`` and
one just before ``end`` make pandas' resample cover exactly ``[start, end)``.
"""
from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from marketstore import DataValidationError, PriceRepository

RULES = {"1h": "1h", "1d": "D", "1w": "W-MON", "1mo": "MS", "1y": "YS"}
_OHLCV = ["open", "high", "low", "close", "volume"]


def random_bars(first: str, last: str, freq: str, tz: str, seed: int, empty: list[tuple[str, str]]) -> pd.DataFrame:
    """Bars every ``freq`` in ``[first, last)`` (local times of ``tz``), a tenth dropped at random, and none
    in each local ``[a, b)`` of ``empty``; indexed by aware UTC timestamps."""
    rng = np.random.default_rng(seed)
    stamps = pd.date_range(pd.Timestamp(first, tz=tz), pd.Timestamp(last, tz=tz), freq=freq, inclusive="left")
    keep = rng.random(len(stamps)) > 0.1
    for a, b in empty:
        keep &= ~((stamps >= pd.Timestamp(a, tz=tz)) & (stamps < pd.Timestamp(b, tz=tz)))
    stamps = stamps[keep]
    close = np.round(100 + np.cumsum(rng.normal(0, 0.5, len(stamps))), 4)
    open_ = np.round(close + rng.normal(0, 0.2, len(stamps)), 4)
    high = np.round(np.maximum(open_, close) + rng.random(len(stamps)), 4)
    low = np.round(np.minimum(open_, close) - rng.random(len(stamps)), 4)
    volume = rng.integers(1, 10_000, len(stamps)).astype(float)
    index = pd.DatetimeIndex(stamps.tz_convert("UTC"), name="timestamp").as_unit("us")
    return pd.DataFrame({"open": open_, "high": high, "low": low, "close": close, "volume": volume}, index=index)


def pandas_buckets(bars: pd.DataFrame, bucket: str, tz: str, start: pd.Timestamp, end: pd.Timestamp,
                   fill: str | None, before: float | None = None) -> pd.DataFrame:
    """What ``frame(..., bucket=, tz=, fill=)`` should return, computed by pandas alone.

    ``before``: the last close stored before ``start`` (what ``locf`` carries into leading empty buckets).
    """
    inside = bars[(bars.index >= start) & (bars.index < end)].tz_convert(tz)
    edges = pd.DataFrame(np.nan, columns=_OHLCV, index=pd.DatetimeIndex([start, end - pd.Timedelta(microseconds=1)])
                         .tz_convert(tz).as_unit("us"))
    # The NaN rows only stretch pandas' grid to [start, end); they count as no bar.
    spread = pd.concat([inside, edges]).sort_index()
    grouped = spread.resample(RULES[bucket], label="left", closed="left")
    out = grouped.agg({"open": "first", "high": "max", "low": "min", "close": "last", "volume": "sum"})
    out["bars"] = grouped["close"].count()
    if fill is None:
        out = out[out["bars"] > 0]
    elif fill == "locf":
        carried = out["close"].ffill()
        if before is not None:
            carried = carried.fillna(before)
        empty = out["bars"] == 0
        previous = carried.shift(1)
        if before is not None and len(previous):
            previous.iloc[0] = before
        for name in ("open", "high", "low", "close"):
            out.loc[empty, name] = previous[empty]
    out.index.name = "timestamp"
    return out


def assert_same(got: pd.DataFrame, expected: pd.DataFrame, tz: str) -> None:
    assert str(got.index.tz) == tz
    assert list(got.index) == list(expected.index), "bucket labels differ"
    assert list(got.index.tz_convert("UTC")) == list(expected.index.tz_convert("UTC"))
    for name in _OHLCV:
        np.testing.assert_allclose(got[name].to_numpy(), expected[name].to_numpy(dtype=float), rtol=0, atol=5e-9,
                                   err_msg=name)
    assert got["bars"].tolist() == expected["bars"].astype(int).tolist()


# (tz, the bars: first, last, freq, empty local spans, seed; the range read: start, end as local dates)
SCENARIOS = {
    "new-york-spring-minutes": ("America/New_York", ("2024-03-08", "2024-03-12", "1min",
                                                     [("2024-03-09", "2024-03-10"),
                                                      ("2024-03-10 01:00", "2024-03-10 04:00")], 1),
                                "2024-03-08", "2024-03-12"),
    "new-york-autumn-minutes": ("America/New_York", ("2024-11-01", "2024-11-05", "1min",
                                                     [("2024-11-03 00:30", "2024-11-03 02:30"),
                                                      ("2024-11-02", "2024-11-03")], 2),
                                "2024-11-01", "2024-11-05"),
    "london-spring-minutes": ("Europe/London", ("2024-03-29", "2024-04-02", "1min",
                                                [("2024-03-30", "2024-03-31"), ("2024-03-31 00:00", "2024-03-31 03:00")], 3),
                              "2024-03-29", "2024-04-02"),
    "new-york-hours-months": ("America/New_York", ("2024-01-01", "2024-05-01", "1h",
                                                   [("2024-02-01", "2024-03-01"), ("2024-03-11", "2024-03-18")], 4),
                              "2024-01-01", "2024-05-01"),
    "new-york-hours-autumn": ("America/New_York", ("2024-09-30", "2024-12-30", "1h",
                                                   [("2024-10-01", "2024-11-01"), ("2024-11-04", "2024-11-11")], 5),
                              "2024-09-30", "2024-12-30"),
    "london-hours-autumn": ("Europe/London", ("2024-09-30", "2024-12-30", "1h",
                                              [("2024-10-28", "2024-12-02")], 6),
                            "2024-09-30", "2024-12-30"),
    "new-york-days-years": ("America/New_York", ("2021-01-01", "2025-01-01", "1D",
                                                 [("2022-02-01", "2022-03-01"), ("2023-01-01", "2024-01-01")], 7),
                            "2021-01-01", "2025-01-01"),
}
BUCKETS = {"1min": ("1h", "1d"), "1h": ("1d", "1w", "1mo"), "1D": ("1w", "1mo", "1y")}
CASES = [(name, bucket) for name, (_, (_, _, freq, _, _), _, _) in SCENARIOS.items() for bucket in BUCKETS[freq]]


def load(name: str):
    tz, (first, last, freq, empty, seed), start, end = SCENARIOS[name]
    bars = random_bars(first, last, freq, tz, seed, empty)
    PriceRepository().copy_from(bars, symbol="SYM")
    return tz, bars, dt.date.fromisoformat(start), dt.date.fromisoformat(end)


def local_midnight(day: dt.date, tz: str) -> pd.Timestamp:
    return pd.Timestamp(day).tz_localize(tz).tz_convert("UTC")


@pytest.mark.parametrize("name, bucket", CASES)
@pytest.mark.parametrize("fill", [None, "nan", "locf"])
def test_buckets_equal_pandas_resample_of_the_converted_index(db, name, bucket, fill):
    tz, bars, start, end = load(name)
    got = PriceRepository().frame("SYM", start, end, bucket=bucket, tz=tz, fill=fill)
    expected = pandas_buckets(bars, bucket, tz, local_midnight(start, tz), local_midnight(end, tz), fill)
    if fill is not None:
        assert (expected["bars"] == 0).any(), "the scenario should leave a bucket empty"
    assert_same(got, expected, tz)


@pytest.mark.parametrize("bucket", ["1h", "1d"])
def test_locf_carries_the_last_close_stored_before_start(db, bucket):
    tz, bars, _, end = load("new-york-spring-minutes")
    start = dt.date(2024, 3, 9)  # its first hours are empty; bars before it are stored
    utc_start = local_midnight(start, tz)
    before = float(bars[bars.index < utc_start]["close"].iloc[-1])
    got = PriceRepository().frame("SYM", start, end, bucket=bucket, tz=tz, fill="locf")
    expected = pandas_buckets(bars, bucket, tz, utc_start, local_midnight(end, tz), "locf", before=before)
    assert_same(got, expected, tz)
    if bucket == "1h":
        assert got["bars"].iloc[0] == 0 and got["close"].iloc[0] == pytest.approx(before)


@pytest.mark.parametrize("name, bucket", CASES)
def test_resample_bars_equal_pandas(db, name, bucket):
    tz, bars, start, end = load(name)
    got = PriceRepository().resample("SYM", start, end, bucket, tz=tz)
    expected = pandas_buckets(bars, bucket, tz, local_midnight(start, tz), local_midnight(end, tz), None)
    assert [b.bucket for b in got] == [t.to_pydatetime() for t in expected.index]
    assert all(str(b.bucket.tzinfo) == tz for b in got)
    for name_ in _OHLCV:
        np.testing.assert_allclose([float(getattr(b, name_)) for b in got], expected[name_].to_numpy(dtype=float),
                                   rtol=0, atol=5e-9, err_msg=name_)
    assert [b.count for b in got] == expected["bars"].astype(int).tolist()


@pytest.mark.parametrize("bucket", ["1h", "1d"])
@pytest.mark.parametrize("fill", [None, "nan", "locf"])
def test_bounds_inside_a_bucket_give_it_the_bars_of_the_range_only(db, bucket, fill):
    tz, bars, _, _ = load("new-york-autumn-minutes")
    start, end = pd.Timestamp("2024-11-01 10:17", tz=tz), pd.Timestamp("2024-11-04 13:45", tz=tz)
    got = PriceRepository().frame("SYM", start.to_pydatetime(), end.to_pydatetime(), bucket=bucket, tz=tz, fill=fill)
    before = float(bars[bars.index < start]["close"].iloc[-1])
    expected = pandas_buckets(bars, bucket, tz, start.tz_convert("UTC"), end.tz_convert("UTC"), fill, before=before)
    assert_same(got, expected, tz)


def test_without_tz_buckets_are_utc_days(db):
    _, bars, start, end = load("new-york-spring-minutes")
    got = PriceRepository().frame("SYM", start, end, bucket="1d", fill="nan")
    expected = pandas_buckets(bars, "1d", "UTC", local_midnight(start, "UTC"), local_midnight(end, "UTC"), "nan")
    assert_same(got, expected, "UTC")


@pytest.mark.parametrize("name, hours", [("new-york-spring-minutes", [23.0, 24.0]),
                                         ("new-york-autumn-minutes", [24.0, 25.0])])
def test_a_local_day_across_the_dst_change_is_23_or_25_hours(db, name, hours):
    tz, _, start, end = load(name)
    got = PriceRepository().frame("SYM", start, end, bucket="1d", tz=tz, fill="nan")
    assert len(got) == (end - start).days
    widths = got.index.to_series().diff().dropna().dt.total_seconds() / 3600
    assert sorted(set(widths)) == hours


def test_fill_of_a_symbol_without_bars_is_empty(db):
    tz, _, start, end = load("new-york-spring-minutes")
    assert PriceRepository().frame("OTHER", start, end, bucket="1d", tz=tz, fill="nan").empty


def test_date_bounds_are_midnight_in_tz_and_none_is_open(db):
    tz, bars, _, _ = load("new-york-spring-minutes")
    repository = PriceRepository()
    bounded = repository.frame("SYM", dt.date(2024, 3, 10), dt.date(2024, 3, 11), bucket="1h", tz=tz)
    assert bounded.index[0] >= pd.Timestamp("2024-03-10", tz=tz)
    assert bounded.index[-1] < pd.Timestamp("2024-03-11", tz=tz)
    assert bounded["bars"].sum() == ((bars.index >= local_midnight(dt.date(2024, 3, 10), tz))
                                     & (bars.index < local_midnight(dt.date(2024, 3, 11), tz))).sum()
    everything = repository.frame("SYM", None, None, bucket="1d", tz=tz)
    assert everything["bars"].sum() == len(bars)
    opened = repository.frame("SYM", dt.date(2024, 3, 10), None)
    assert len(opened) == (bars.index >= pd.Timestamp("2024-03-10", tz="UTC")).sum()  # no tz: midnight UTC


@pytest.mark.parametrize("fill", ["nan", "locf"])
def test_fill_needs_a_bucket_and_both_bounds(db, fill):
    load("new-york-spring-minutes")
    with pytest.raises(DataValidationError) as caught:
        PriceRepository().frame("SYM", dt.date(2024, 3, 9), None, bucket="1h", fill=fill)
    assert caught.value.field == "fill"


def test_capital_m_alone_is_refused_as_ambiguous(db):
    load("new-york-spring-minutes")
    for call in (lambda r: r.frame("SYM", None, None, bucket="1M"), lambda r: r.resample("SYM", None, None, "1M")):
        with pytest.raises(DataValidationError) as caught:
            call(PriceRepository())
        assert caught.value.field == "bucket"
        assert "use 'm' for minutes or 'mo' for months" in str(caught.value)


@pytest.mark.parametrize("spelling", ["1D", "1d", "1 day", "1 DAY"])
def test_interval_spellings_are_one_grammar(db, spelling):
    tz, bars, start, end = load("new-york-hours-months")
    assert PriceRepository().series()[0].interval == "1h"
    PriceRepository().copy_from(bars.iloc[::24].head(30), symbol="DAILY", interval=spelling)
    assert [s.interval for s in PriceRepository().series(["DAILY"])] == ["1d"]
    assert len(PriceRepository().frame("DAILY", interval=spelling)) == 30
    got = PriceRepository().frame("SYM", start, end, bucket=spelling.swapcase(), tz=tz)
    expected = pandas_buckets(bars, "1d", tz, local_midnight(start, tz), local_midnight(end, tz), None)
    assert_same(got, expected, tz)
