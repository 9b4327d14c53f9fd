"""The interval a load infers from the bars' spacing: always one the table stores and the spacing allows,
the same whichever path carries the bars (frame, rows), and the calendar's (1d, 1w, 1mo) for bars at local
midnights across DST changes; an interval the spacing contradicts is refused."""
from __future__ import annotations

import datetime as dt

import pandas as pd
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from marketstore import DataValidationError, PriceRepository
from marketstore.intervals import contradiction, inferred, interval

from helpers import truncate_all

ZONES = ["UTC", "America/New_York", "Europe/London", "Australia/Sydney", "Asia/Tokyo"]
gaps = st.one_of(
    st.integers(1, 400 * 86400).map(lambda s: dt.timedelta(seconds=s)),
    st.integers(1_000_000, 40 * 86400 * 1_000_000).map(lambda us: dt.timedelta(microseconds=us)),
    st.sampled_from([1, 59, 60, 300, 3600, 9999, 10_000, 12_345, 82_799, 82_800, 86_399, 86_400, 90_000,
                     6 * 86400, 7 * 86400 - 3600, 27 * 86400, 28 * 86400 - 3600, 365 * 86400 - 3600]
                    ).map(lambda s: dt.timedelta(seconds=s)),
)


@given(gaps)
def test_the_inferred_interval_is_stored_as_is_and_allowed_by_its_spacing(gap):
    found = inferred(gap)
    assert interval(found) == found  # the table's rule (at most 4 digits) and its canonical spelling
    assert contradiction(found, gap) is None


@given(gaps, gaps)
def test_a_wider_gap_never_infers_a_narrower_interval(a, b):
    small, large = sorted((a, b))

    def width(text):
        from marketstore.intervals import parse
        return parse(text, "interval", 4).shortest

    assert width(inferred(small)) <= width(inferred(large))


@pytest.mark.parametrize("gap, expected", [
    (dt.timedelta(minutes=5), "5m"), (dt.timedelta(hours=1), "1h"), (dt.timedelta(hours=23), "1d"),
    (dt.timedelta(days=3), "1d"), (dt.timedelta(days=6, hours=23), "1w"), (dt.timedelta(days=27), "1w"),
    (dt.timedelta(days=28), "1mo"), (dt.timedelta(days=364), "1mo"), (dt.timedelta(days=365), "1y"),
    (dt.timedelta(seconds=59.9), "59s"), (dt.timedelta(seconds=9999), "9999s"),
])
def test_inferred_intervals_of_known_gaps(gap, expected):
    assert inferred(gap) == expected


def test_bars_less_than_a_second_apart_are_refused():
    with pytest.raises(DataValidationError) as caught:
        inferred(dt.timedelta(milliseconds=500))
    assert caught.value.field == "interval"


@given(st.sampled_from(["1m", "5m", "1h", "4h", "1d", "1w", "1mo", "1y"]), st.floats(0.0, 0.98))
def test_bars_closer_than_one_bar_contradict_it(text, fraction):
    from marketstore.intervals import parse

    frame = parse(text, "interval", 4)
    gap = frame.shortest * fraction
    assert contradiction(text, gap) is not None
    assert contradiction(text, frame.shortest) is None


CALENDARS = {"1d": "B", "1w": "W-MON", "1mo": "MS"}


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(zone=st.sampled_from(ZONES), width=st.sampled_from(list(CALENDARS)),
       first=st.dates(dt.date(2000, 1, 1), dt.date(2030, 1, 1)), count=st.integers(2, 60))
def test_bars_at_local_midnights_infer_the_calendar_interval_across_dst(database_url, db, zone, width, first, count):
    truncate_all(database_url)
    stamps = pd.date_range(pd.Timestamp(first), periods=count, freq=CALENDARS[width]).tz_localize(zone)
    bars = pd.DataFrame({"open": 1.0, "high": 2.0, "low": 1.0, "close": 2.0, "volume": 3.0}, index=stamps)
    PriceRepository().copy_from(bars, symbol="FRAME")
    rows = [{"symbol": "ROWS", "timestamp": t.to_pydatetime(), "open": 1, "high": 2, "low": 1, "close": 2,
             "volume": 3} for t in stamps]
    PriceRepository().copy_from(rows)
    assert {(s.symbol, s.interval) for s in PriceRepository().series()} == {("FRAME", width), ("ROWS", width)}
    PriceRepository().copy_from(bars, symbol="GIVEN", interval=width)  # and the spacing allows it when given


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seconds=st.lists(st.integers(1, 200_000), min_size=1, max_size=30))
@example(seconds=[1, 12_345, 20_000])  # 12345s: more seconds than an interval spells
def test_frames_and_rows_infer_the_same_interval_from_any_spacing(database_url, db, seconds):
    truncate_all(database_url)
    stamps = pd.Timestamp("2024-03-01", tz="UTC") + pd.to_timedelta(pd.Series(seconds).cumsum(), unit="s")
    bars = pd.DataFrame({"open": 1.0, "high": 2.0, "low": 1.0, "close": 2.0, "volume": 3.0},
                        index=pd.DatetimeIndex(stamps))
    PriceRepository().copy_from(bars, symbol="FRAME")
    PriceRepository().copy_from([{"symbol": "ROWS", "timestamp": t.to_pydatetime(), "open": 1, "high": 2, "low": 1,
                                  "close": 2, "volume": 3} for t in bars.index])
    expected = inferred(dt.timedelta(seconds=min(seconds[1:]))) if len(seconds) > 1 else "1m"
    assert {(s.symbol, s.interval) for s in PriceRepository().series()} == {("FRAME", expected), ("ROWS", expected)}
