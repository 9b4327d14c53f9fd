"""Re-upserting a frame leaves out, before sending, exactly the bars stored as given: never a changed one.

The truth is what the server stores: the text written for a value (Python's
shortest repr for a float) rounded half away from zero to 8 decimals.
"""
from __future__ import annotations

import datetime as dt
from decimal import ROUND_HALF_UP, Decimal

import numpy as np
import pandas as pd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import marketstore
from marketstore import PriceRepository
from marketstore.repositories._load import STAGE

from helpers import sent_statements

EIGHT = Decimal("1e-8")
N = 24


def stored_as(value) -> Decimal | None:
    """What a NUMERIC(_, 8) column keeps of the value a frame gives (None: no value)."""
    if isinstance(value, float) and np.isnan(value):
        return None
    return Decimal(value if isinstance(value, str) else repr(float(value))).quantize(EIGHT, ROUND_HALF_UP)


def frame_of(close, volume, adj_close, text: bool = False) -> pd.DataFrame:
    frame = pd.DataFrame({"open": 1.0, "high": 9.99e11, "low": 1e-8, "close": close, "volume": volume,
                          "adj_close": adj_close},
                         index=pd.date_range("2024-03-08", periods=len(close), freq="1h", tz="UTC"))
    return frame.astype({"close": str, "volume": str}) if text else frame


def stored_rows(raw) -> list[tuple]:
    with raw.cursor() as cur:
        cur.execute('SELECT close, volume, adj_close FROM prices WHERE symbol = %s ORDER BY "timestamp"', ("UNC",))
        return cur.fetchall()


def _eighths(n):  # a price of exactly 8 decimals
    return float(Decimal(n) * EIGHT)


prices = st.one_of(
    st.integers(1, 10**12).map(_eighths),  # 8 decimals, the common case
    st.integers(1, 10**11).map(lambda n: float(Decimal(n) * EIGHT + Decimal("5e-9"))),  # half way: rounds up
    st.floats(1e-6, 9e11, allow_nan=False),  # any float: up to 17 digits
    st.integers(2**24, 10**11).map(float),  # whole, beyond the floats that are exact to 1e-8
)
volumes = st.one_of(st.integers(0, 9 * 10**15).map(float), st.floats(0, 9e15, allow_nan=False), prices)
nudges = st.sampled_from(["same", "same", "same", "plus 1e-8", "plus 1e-9", "next float", "other"])


def nudged(value: float, how: str, other: float) -> float:
    if how == "plus 1e-8":
        return value + 1e-8
    if how == "plus 1e-9":
        return value + 1e-9
    if how == "next float":
        return float(np.nextafter(value, np.inf))
    return other if how == "other" else value


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(close=st.lists(prices, min_size=N, max_size=N), volume=st.lists(volumes, min_size=N, max_size=N),
       adj=st.lists(st.none() | prices, min_size=N, max_size=N),
       how=st.lists(st.tuples(nudges, nudges, nudges), min_size=N, max_size=N),
       others=st.lists(st.tuples(prices, volumes), min_size=N, max_size=N), text=st.booleans())
def test_a_re_upsert_updates_exactly_the_bars_whose_stored_value_changes(db, raw, close, volume, adj, how,
                                                                         others, text):
    adj = [np.nan if a is None else a for a in adj]
    first = frame_of(close, volume, adj, text)
    again = frame_of([nudged(c, h[0], o[0]) for c, h, o in zip(close, how, others)],
                     [nudged(v, h[1], o[1]) for v, h, o in zip(volume, how, others)],
                     [a if np.isnan(a) else nudged(a, h[2], o[0]) for a, h, o in zip(adj, how, others)], text)
    before = [tuple(stored_as(v) for v in row) for row in first[["close", "volume", "adj_close"]].itertuples(False)]
    after = [tuple(stored_as(v) for v in row) for row in again[["close", "volume", "adj_close"]].itertuples(False)]
    repository = PriceRepository()
    try:
        repository.upsert_many(first, symbol="UNC")
        assert stored_rows(raw) == before
        count = repository.upsert_many(again, symbol="UNC")
        changed = sum(b != a for b, a in zip(before, after))
        assert (count, count.inserted, count.updated, count.unchanged) == (changed, 0, changed, N - changed)
        assert stored_rows(raw) == after
    finally:
        with raw.cursor() as cur:
            cur.execute("TRUNCATE prices")


def test_an_unchanged_frame_is_never_staged(db, raw):
    frame = frame_of([101.0019, 55.5, 3.25], [1e6, 2.5e7, 123456789.0], [np.nan, 1.5, 2.0])
    repository = PriceRepository()
    repository.upsert_many(frame, symbol="UNC")
    with sent_statements() as sent:
        count = repository.upsert_many(frame, symbol="UNC")
    assert (count.inserted, count.updated, count.unchanged) == (0, 0, 3)
    assert not [sql for sql, _ in sent if STAGE in sql]
    changed = frame.assign(close=[101.0019, 55.50000001, 3.25])
    with sent_statements() as sent:
        count = repository.upsert_many(changed, symbol="UNC")
    assert (count.inserted, count.updated, count.unchanged) == (0, 1, 2)
    assert [sql for sql, _ in sent if STAGE in sql]
    assert stored_rows(raw)[1][0] == Decimal("55.50000001")


def test_a_key_given_twice_is_settled_by_its_last_row_as_before(db, raw):
    frame = frame_of([10.0, 11.0], [5.0, 6.0], [np.nan, np.nan])
    repository = PriceRepository()
    repository.upsert_many(frame, symbol="UNC")
    # the first copy of bar 0 differs, the last is as stored: nothing changes
    twice = pd.concat([frame.iloc[[0]].assign(close=99.0), frame])
    count = repository.upsert_many(twice, symbol="UNC")
    assert (count.inserted, count.updated, count.unchanged) == (0, 0, 2)
    assert [row[0] for row in stored_rows(raw)] == [Decimal("10.00000000"), Decimal("11.00000000")]


def test_the_timestamps_compared_are_the_instants_stored(db, raw):
    # the same bars given in New York time: the same instants, nothing changes
    frame = frame_of([10.0, 11.0, 12.0], [5.0, 6.0, 7.0], [np.nan] * 3)
    repository = PriceRepository()
    repository.upsert_many(frame, symbol="UNC")
    local = frame.tz_convert("America/New_York")
    count = repository.upsert_many(local, symbol="UNC")
    assert (count.inserted, count.updated, count.unchanged) == (0, 0, 3)
    shifted = frame.set_axis(frame.index + dt.timedelta(microseconds=1))
    count = repository.upsert_many(shifted, symbol="UNC")
    assert (count.inserted, count.unchanged) == (3, 0)
