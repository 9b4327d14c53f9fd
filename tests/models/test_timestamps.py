"""A naive datetime means UTC whatever the process's or the session's time zone, through
the repository and through plain Peewee alike, up to the instant the clocks change."""
from __future__ import annotations

import calendar
import datetime as dt
import os
import time

import pytest

import marketstore
from marketstore import (
    Price,
    PriceRepository,
)
from helpers import UTC, bar_at


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
        return PriceRepository().create(**bar_at(naive)).id
    # Plain Peewee skips validation: the field's own conversion is all there is.
    return Price.insert(**bar_at(naive)).execute()


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

