"""``marketstore query series`` and ``query prices`` on bars loaded without an interval.

Daily bars read back without ``--interval``, what is stored listed, and the
hint an empty read gives naming it.
"""
from __future__ import annotations

import csv
import datetime as dt
import io
import json

import pytest
from cli_helpers import fails, succeeds

HEADER = "symbol,timestamp,open,high,low,close,volume"
UTC = dt.timezone.utc


def _daily(symbol: str, first: dt.date, days: int) -> list[str]:
    stamps = (first + dt.timedelta(days=n) for n in range(days))
    return [f"{symbol},{d.isoformat()}T00:00:00+00:00,{10 + i},{12 + i},{9 + i},{11 + i},100"
            for i, d in enumerate(d for d in stamps if d.weekday() < 5)]


def _hourly(symbol: str, first: dt.datetime, hours: int) -> list[str]:
    return [f"{symbol},{(first + dt.timedelta(hours=n)).isoformat()},{10 + n},{12 + n},{9 + n},{11 + n},{n + 1}"
            for n in range(hours)]


def _ingest(tmp_path, database_url, lines: list[str], *extra) -> None:
    path = tmp_path / "bars.csv"
    path.write_text("\n".join([HEADER] + lines) + "\n")
    succeeds("ingest", "prices", path, *extra, "--database", database_url)


def _rows(text: str) -> list[dict]:
    return list(csv.DictReader(io.StringIO(text)))


@pytest.fixture
def goog(db, database_url, tmp_path):
    """GOOG: the weekdays of January 2012 as daily bars, loaded with no interval given."""
    lines = _daily("GOOG", dt.date(2012, 1, 2), 30)
    _ingest(tmp_path, database_url, lines)
    return lines


def test_query_series_lists_the_daily_series_with_its_first_and_last_bar(goog, database_url, tmp_path):
    _ingest(tmp_path, database_url, _hourly("EURUSD", dt.datetime(2012, 1, 2, tzinfo=UTC), 5))
    rows = _rows(succeeds("query", "series", "--format", "csv", "--database", database_url).stdout)
    assert [(r["symbol"], r["interval"]) for r in rows] == [("EURUSD", "1h"), ("GOOG", "1d")]
    assert dt.datetime.fromisoformat(rows[1]["first"]) == dt.datetime(2012, 1, 2, tzinfo=UTC)
    assert dt.datetime.fromisoformat(rows[1]["last"]) == dt.datetime(2012, 1, 31, tzinfo=UTC)
    only = json.loads(succeeds("query", "series", "GOOG", "--format", "json", "--database", database_url).stdout)
    assert only == [{"symbol": "GOOG", "interval": "1d", "first": "2012-01-02T00:00:00+00:00",
                     "last": "2012-01-31T00:00:00+00:00"}]
    table = succeeds("query", "series", "--database", database_url).stdout.splitlines()
    assert table[0].split() == ["symbol", "interval", "first", "last"]
    assert table[2].split() == ["GOOG", "1d", "2012-01-02", "00:00", "2012-01-31", "00:00"]


def test_query_prices_reads_the_stored_interval_without_being_told(goog, database_url):
    rows = _rows(succeeds("query", "prices", "GOOG", "--start", "2012-01-01", "--end", "2012-02-01",
                          "--format", "csv", "--database", database_url).stdout)
    assert len(rows) == len(goog) == 22
    assert {r["interval"] for r in rows} == {"1d"}


def test_query_prices_without_bounds_reads_every_bar(goog, database_url):
    rows = _rows(succeeds("query", "prices", "GOOG", "--format", "csv", "--database", database_url).stdout)
    assert len(rows) == len(goog)
    rows = _rows(succeeds("query", "prices", "GOOG", "--start", "2012-01-30", "--format", "csv",
                          "--database", database_url).stdout)
    assert [r["timestamp"][:10] for r in rows] == ["2012-01-30", "2012-01-31"]


def test_no_rows_names_the_interval_stored(goog, database_url):
    result = succeeds("query", "prices", "GOOG", "--start", "2012-01-01", "--end", "2012-02-01",
                      "--interval", "1m", "--database", database_url)
    assert result.stdout.strip() == "(no rows: GOOG has 1d bars from 2012-01-02 00:00 to 2012-01-31 00:00 UTC)"


def test_no_rows_outside_the_range_names_what_is_stored_and_keeps_csv_clean(goog, database_url):
    result = succeeds("query", "prices", "GOOG", "--start", "2020-01-01", "--format", "csv",
                      "--database", database_url)
    assert result.stdout.strip() == "symbol,timestamp,open,high,low,close,volume,interval"
    assert "GOOG has 1d bars from 2012-01-02" in result.stderr


def test_no_rows_for_an_unknown_symbol_says_nothing_is_stored(goog, database_url):
    result = succeeds("query", "prices", "NOPE", "--database", database_url)
    assert result.stdout.strip() == "(no rows: nothing is stored for NOPE)"


def test_several_intervals_ask_for_one(goog, database_url, tmp_path):
    _ingest(tmp_path, database_url, _hourly("GOOG", dt.datetime(2012, 2, 1, 14, tzinfo=UTC), 3))
    line = fails("query", "prices", "GOOG", "--database", database_url)
    assert "GOOG has bars of several intervals (1d, 1h)" in line and "--interval" in line
    rows = _rows(succeeds("query", "prices", "GOOG", "--interval", "1h", "--format", "csv",
                          "--database", database_url).stdout)
    assert len(rows) == 3


def test_daily_buckets_in_new_york_time(db, database_url, tmp_path):
    """Hourly bars from 2024-03-08 00:00 UTC: the New York day of 03-07 ends at 05:00 UTC."""
    _ingest(tmp_path, database_url, _hourly("EURUSD", dt.datetime(2024, 3, 8, tzinfo=UTC), 30))
    found = json.loads(succeeds("query", "prices", "EURUSD", "--bucket", "1d", "--tz", "America/New_York",
                                "--format", "json", "--database", database_url).stdout)
    assert [(b["timestamp"], b["bars"]) for b in found] == [("2024-03-07T00:00:00-05:00", 5),
                                                            ("2024-03-08T00:00:00-05:00", 24),
                                                            ("2024-03-09T00:00:00-05:00", 1)]
    utc = json.loads(succeeds("query", "prices", "EURUSD", "--bucket", "1d", "--format", "json",
                              "--database", database_url).stdout)
    assert [(b["timestamp"], b["bars"]) for b in utc] == [("2024-03-08T00:00:00+00:00", 24),
                                                          ("2024-03-09T00:00:00+00:00", 6)]


def test_a_date_bound_is_midnight_in_tz(db, database_url, tmp_path):
    _ingest(tmp_path, database_url, _hourly("EURUSD", dt.datetime(2024, 3, 8, tzinfo=UTC), 30))
    rows = _rows(succeeds("query", "prices", "EURUSD", "--start", "2024-03-08", "--end", "2024-03-09",
                          "--tz", "America/New_York", "--format", "csv", "--database", database_url).stdout)
    assert rows[0]["timestamp"] == "2024-03-08T00:00:00-05:00"  # 05:00 UTC
    assert len(rows) == 24


def test_a_bad_zone_or_bucket_is_one_line(goog, database_url):
    assert "IANA time zone" in fails("query", "prices", "GOOG", "--bucket", "1d", "--tz", "Mars/Base",
                                     "--database", database_url)
    assert "'mo' for months" in fails("query", "prices", "GOOG", "--bucket", "1M", "--database", database_url)


def test_fill_gives_every_bucket_of_the_range(goog, database_url):
    found = json.loads(succeeds("query", "prices", "GOOG", "--start", "2012-01-06", "--end", "2012-01-10",
                                "--bucket", "1d", "--fill", "locf", "--format", "json",
                                "--database", database_url).stdout)
    assert [b["timestamp"][:10] for b in found] == ["2012-01-06", "2012-01-07", "2012-01-08", "2012-01-09"]
    weekend = found[1]
    assert weekend["close"] == weekend["open"] == found[0]["close"] and weekend["volume"] == 0
