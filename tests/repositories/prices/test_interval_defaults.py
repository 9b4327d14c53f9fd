"""Reads without an interval read the symbol's one stored interval; ``series()`` says what is stored by index
probes; an upsert rewrites only the bars that changed, and says so."""
from __future__ import annotations

import datetime as dt
import time

import pandas as pd
import pytest

import marketstore
from marketstore import DataValidationError, PriceRepository

from helpers import eventually, sent_statements

UTC = dt.timezone.utc
T0 = dt.datetime(2024, 1, 2, tzinfo=UTC)


def bars(symbol: str, interval: str, step: dt.timedelta, count: int, start: dt.datetime = T0) -> list[dict]:
    return [{"symbol": symbol, "interval": interval, "timestamp": start + i * step, "open": 10 + i, "high": 12 + i,
             "low": 9 + i, "close": 11 + i, "volume": 100} for i in range(count)]


READS = {
    "get_range": lambda r, s: r.get_range(s, None, None),
    "latest": lambda r, s: r.latest(s),
    "latest_for_symbols": lambda r, s: r.latest_for_symbols([s]),
    "resample": lambda r, s: r.resample(s, None, None, "1d"),
    "frame": lambda r, s: r.frame(s),
    "frame-list": lambda r, s: r.frame([s]),
    "frame-bucketed": lambda r, s: r.frame(s, T0.date(), T0.date() + dt.timedelta(days=40), bucket="1w", fill="nan"),
}


@pytest.mark.parametrize("read", list(READS))
def test_a_read_without_interval_reads_the_one_stored(db, read):
    repository = PriceRepository()
    repository.copy_from(bars("DAY", "1d", dt.timedelta(days=1), 30) + bars("MIN", "1m", dt.timedelta(minutes=1), 5))
    got = READS[read](repository, "DAY")
    if read == "get_range":
        assert [p.interval for p in got] == ["1d"] * 30
    elif read == "latest":
        assert (got.interval, got.timestamp) == ("1d", T0 + dt.timedelta(days=29))
    elif read == "latest_for_symbols":
        assert got["DAY"].interval == "1d"
    elif read == "resample":
        assert len(got) == 30 and sum(b.count for b in got) == 30
    elif read == "frame-bucketed":
        assert got["bars"].sum() == 30
    else:
        assert len(got) == 30


@pytest.mark.parametrize("read", list(READS))
def test_a_read_without_interval_of_a_symbol_with_several_names_them(db, read):
    repository = PriceRepository()
    repository.copy_from(bars("SYM", "1d", dt.timedelta(days=1), 3) + bars("SYM", "1h", dt.timedelta(hours=1), 3)
                         + bars("SYM", "5m", dt.timedelta(minutes=5), 3))
    with pytest.raises(DataValidationError) as caught:
        READS[read](repository, "SYM")
    assert caught.value.field == "interval"
    assert all(name in str(caught.value) for name in ("1d", "1h", "5m", "SYM"))
    assert len(PriceRepository().get_range("SYM", None, None, interval="1h")) == 3  # the one named is read


@pytest.mark.parametrize("read", list(READS))
def test_a_read_of_a_symbol_without_bars_is_empty(db, read):
    PriceRepository().copy_from(bars("OTHER", "1d", dt.timedelta(days=1), 3))
    got = READS[read](PriceRepository(), "NONE")
    assert (got is None) if read == "latest" else (len(got) == 0)


def test_latest_for_symbols_mixes_symbols_of_different_intervals(db):
    PriceRepository().copy_from(bars("DAY", "1d", dt.timedelta(days=1), 3) + bars("MIN", "1m", dt.timedelta(minutes=1), 3))
    got = PriceRepository().latest_for_symbols(["MIN", "DAY", "NONE"])
    assert {s: p.interval for s, p in got.items()} == {"DAY": "1d", "MIN": "1m"}


def test_series_lists_each_symbol_and_interval_with_its_first_and_last_bar(db):
    PriceRepository().copy_from(bars("B", "1d", dt.timedelta(days=1), 4) + bars("A", "1h", dt.timedelta(hours=1), 3)
                                + bars("B", "1m", dt.timedelta(minutes=1), 2, T0 + dt.timedelta(hours=5)))
    series = PriceRepository().series()
    assert [(s.symbol, s.interval, s.first, s.last) for s in series] == [
        ("A", "1h", T0, T0 + dt.timedelta(hours=2)),
        ("B", "1d", T0, T0 + dt.timedelta(days=3)),
        ("B", "1m", T0 + dt.timedelta(hours=5), T0 + dt.timedelta(hours=5, minutes=1)),
    ]
    assert PriceRepository().series(["B", "C"]) == series[1:]
    assert PriceRepository().series([]) == []


@pytest.fixture
def hundred_thousand_bars(db, raw):
    """100,000 bars: 20 symbols, each with a 1m and a 1h series; planner statistics up to date."""
    with raw.cursor() as cur:
        cur.execute(
            "INSERT INTO prices (symbol, \"interval\", \"timestamp\", open, high, low, close, volume) "
            "SELECT 'S' || (n % 20), CASE WHEN n % 40 < 20 THEN '1m' ELSE '1h' END, "
            "timestamptz '2024-01-01' + (n / 40) * interval '1 hour', 10, 11, 9, 10, 1 "
            "FROM generate_series(0, 99999) AS n")
        cur.execute("ANALYZE prices")


def plans_of(raw, statements) -> list[str]:
    out = []
    with raw.cursor() as cur:
        for sql, params in statements:
            cur.execute("EXPLAIN " + sql, params)
            out.append("\n".join(row[0] for row in cur.fetchall()))
    return out


@pytest.mark.parametrize("symbols", [None, ["S3", "S7"]])
def test_series_is_index_probes_not_a_scan(hundred_thousand_bars, raw, symbols):
    with sent_statements() as sent:
        found = PriceRepository().series(symbols)
    assert len(found) == (40 if symbols is None else 4)
    [plan] = plans_of(raw, [s for s in sent if "prices" in s[0]])
    assert "Seq Scan" not in plan, plan
    assert "prices_symbol_interval_timestamp" in plan or "Index Only Scan" in plan, plan


@pytest.mark.parametrize("read", ["get_range", "latest", "latest_for_symbols", "frame"])
def test_the_interval_lookup_of_a_read_is_index_probes(hundred_thousand_bars, raw, read):
    repository = PriceRepository()
    repository.copy_from(bars("ONE", "1d", dt.timedelta(days=1), 3))
    with raw.cursor() as cur:
        cur.execute("ANALYZE prices")
    with sent_statements() as sent:
        READS[read](repository, "ONE")
    plans = plans_of(raw, [s for s in sent if "prices" in s[0] and not s[0].lstrip().upper().startswith("COPY")])
    assert plans and all("Seq Scan on prices" not in plan for plan in plans), plans


def n_tup_upd(raw) -> int:
    with raw.cursor() as cur:
        cur.execute("SELECT n_tup_upd FROM pg_stat_user_tables WHERE relname = 'prices'")
        return cur.fetchone()[0]


def settled(read, pause: float = 1.2, tries: int = 10) -> int:
    """``read()`` once two reads ``pause`` apart agree (statistics reach the view in batches)."""
    value = read()
    for _ in range(tries):
        time.sleep(pause)
        again = read()
        if again == value:
            return value
        value = again
    return value


def test_an_unchanged_frame_upserted_again_writes_nothing(db, database_url, raw):
    frame = pd.DataFrame({"open": 10.0, "high": 12.0, "low": 9.0, "close": 11.0, "volume": 5.0},
                         index=pd.date_range("2024-01-02", periods=500, freq="1D", tz="UTC"))
    repository = PriceRepository()
    first = repository.upsert_many(frame, symbol="SYM")
    assert (first, first.inserted, first.updated, first.unchanged) == (500, 500, 0, 0)
    marketstore.close_database()  # its backends exit, flushing their statistics
    before = settled(lambda: n_tup_upd(raw))

    marketstore.initialize_database(database_url, pool_timeout=5)
    again = PriceRepository().upsert_many(frame, symbol="SYM")
    assert (again, again.inserted, again.updated, again.unchanged) == (0, 0, 0, 500)
    changed = frame.copy()
    changed.iloc[7, changed.columns.get_loc("close")] = 11.5
    once = PriceRepository().upsert_many(changed, symbol="SYM")
    assert (once, once.inserted, once.updated, once.unchanged) == (1, 0, 1, 499)
    assert repr(once) == "UpsertCount(inserted=0, updated=1, unchanged=499)"
    marketstore.close_database()
    assert eventually(lambda: n_tup_upd(raw), before + 1) == before + 1
    assert settled(lambda: n_tup_upd(raw)) == before + 1  # and no more: the unchanged upsert wrote nothing
    marketstore.initialize_database(database_url, pool_timeout=5)
    [series] = PriceRepository().series()
    assert series.interval == "1d"
    assert PriceRepository().frame("SYM")["close"].iloc[7] == 11.5


def test_an_upsert_of_rows_counts_inserted_updated_and_unchanged(db):
    rows = bars("SYM", "1h", dt.timedelta(hours=1), 10)
    assert PriceRepository().upsert_many(rows[:6]) == 6
    rows[2] = dict(rows[2], volume=7)
    count = PriceRepository().upsert_many(iter(rows))  # a generator: staged, never tried as new bars first
    assert (count, count.inserted, count.updated, count.unchanged) == (5, 4, 1, 5)
