"""``copy_from(path)`` and ``upsert_many(path)`` read a price file alike: the same rows stored, the same
verdict, and errors that carry where and what as attributes (``source``, ``line``, ``field``, ``value``)."""
from __future__ import annotations

import datetime as dt
import os
import threading
from decimal import Decimal

import pytest

from marketstore import DataValidationError, DuplicateKeyError

from helpers import HEADER, T0, count_rows

HEADER8 = HEADER + ",interval"
METHODS = ["copy_from", "upsert_many"]


def stored(raw) -> list[tuple]:
    with raw.cursor() as cur:
        cur.execute('SELECT symbol, "interval", "timestamp", close FROM prices ORDER BY 1, 2, 3')
        return cur.fetchall()


# (name, file text, interval=, the rows stored) for files both readers load
LOADED = [
    ("empty interval cell takes interval= 1m", f"{HEADER8}\nAAA,2024-01-02,1,2,1,2,3,\nBBB,2024-01-02,1,2,1,2,3,1h\n",
     "1m", [("AAA", "1m"), ("BBB", "1h")]),
    ("an interval cell in words is stored as its short spelling",
     f"{HEADER8}\nAAA,2024-01-02,1,2,1,2,3,1 hour\nBBB,2024-01-02,1,2,1,2,3,1D\n", None, [("AAA", "1h"), ("BBB", "1d")]),
    ("daily bars without an interval are daily", f"{HEADER}\nAAA,2024-01-02,1,2,1,2,3\nAAA,2024-01-03,1,2,1,2,3\n"
     "AAA,2024-01-08,1,2,1,2,3\n", None, [("AAA", "1d")] * 3),
    ("empty interval cell takes interval=", f"{HEADER8}\nAAA,2024-01-02,1,2,1,2,3, \nBBB,2024-01-02,1,2,1,2,3,1h\n",
     "1d", [("AAA", "1d"), ("BBB", "1h")]),
    ("a missing interval column takes interval=", f"{HEADER}\nAAA,2024-01-02,1,2,1,2,3\n", "1d", [("AAA", "1d")]),
    ("an empty interval cell in a quoted line", f'{HEADER8}\n"AAA","2024-01-02","1,0",2,1,2,3,\n', "1m", None),
    ("empty lines are skipped", f"{HEADER}\n\nAAA,2024-01-02,1,2,1,2,3\n\r\n\nBBB,2024-01-02,1,2,1,2,3\n\n",
     "1m", [("AAA", "1m"), ("BBB", "1m")]),
]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name, text, interval, expected", LOADED, ids=[c[0] for c in LOADED])
def test_files_both_readers_load_alike(prices, raw, tmp_path, method, name, text, interval, expected):
    path = tmp_path / "in.csv"
    path.write_text(text, encoding="utf-8")
    if expected is None:  # "1,0" is not a number: refused alike, after the interval was filled in
        with pytest.raises(DataValidationError) as info:
            getattr(prices, method)(path, interval=interval)
        assert (info.value.source, info.value.line, info.value.field, info.value.value) == (str(path), 2, "open",
                                                                                             "1,0")
        return
    assert getattr(prices, method)(path, interval=interval) == len(expected)
    assert [(s, i) for s, i, *_ in stored(raw)] == expected


# (name, file text, line, field, value) for files both readers refuse
REFUSED = [
    ("a line of separators only", f"{HEADER}\nAAA,2024-01-02,1,2,1,2,3\n,,,,,,\n", 3, "symbol", ""),
    ("separators only, interval column too", f"{HEADER8}\n,,,,,,,\n", 2, "symbol", ""),
    ("a line of spaces is not empty", f"{HEADER}\nAAA,2024-01-02,1,2,1,2,3\n   \n", 3, "row", "   "),
    ("non-ISO timestamp", f"{HEADER}\nAAA,2024-01-02,1,2,1,2,3\nAAA,01/03/2024,1,2,1,2,3\n", 3, "timestamp",
     "01/03/2024"),
    ("bad value", f"{HEADER}\nAAA,2024-01-02,1,2,1,2,3\n\nAAA,2024-01-03,1,2,1,2,lots\n", 4, "volume", "lots"),
    ("broken rule", f"{HEADER8}\nAAA,2024-01-02,1,2,1,2,3,1d\nAAA,2024-01-03,1,2,3,2,3,1d\n", 3, "high", "2"),
    ("an empty interval cell without interval=", f"{HEADER8}\nAAA,2024-01-02,1,2,1,2,3,1d\nAAA,2024-01-03,1,2,1,2,3,\n",
     3, "interval", ""),
    ("a column twice", f"{HEADER},close\nAAA,2024-01-02,1,2,1,2,3,2\n", 1, "close", "close"),
]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name, text, line, field, value", REFUSED, ids=[c[0] for c in REFUSED])
def test_files_both_readers_refuse_alike(prices, raw, tmp_path, method, name, text, line, field, value):
    path = tmp_path / "in.csv"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(DataValidationError) as info:
        getattr(prices, method)(path)
    error = info.value
    assert (error.source, error.line, error.row, error.field, error.value) == (str(path), line, None, field, value)
    assert count_rows(raw, "prices") == 0


def test_a_duplicate_bar_is_refused_by_copy_from_and_the_last_wins_in_upsert(prices, raw, tmp_path):
    """The one difference between the two is what they are for: insert-only, or insert-or-update."""
    path = tmp_path / "twice.csv"
    path.write_text(f"{HEADER}\nAAA,2024-01-02,1,2,1,2,3\n\nAAA,2024-01-02,1,2,1,1.5,3\n", encoding="utf-8")
    with pytest.raises(DuplicateKeyError) as info:
        prices.copy_from(path)
    assert (info.value.source, info.value.line, info.value.row) == (str(path), 4, None)
    assert info.value.key == {"symbol": "AAA", "interval": "1m", "timestamp": "2024-01-02 00:00:00+00"}
    assert count_rows(raw, "prices") == 0
    assert prices.upsert_many(path) == 1  # one bar: the last of the two wins
    assert stored(raw) == [("AAA", "1m", T0, Decimal("1.5"))]


def test_upsert_of_a_file_with_stored_bars_updates_them_and_reports_progress_once(prices, raw, tmp_path):
    path = tmp_path / "bars.csv"
    lines = [f"AAA,{(T0 + dt.timedelta(minutes=m)).isoformat()},1,2,1,{1 + m / 10_000},3" for m in range(3_000)]
    path.write_text("\n".join([HEADER] + lines) + "\n", encoding="utf-8")
    assert prices.upsert_many(path, interval="1m") == 3_000  # all new, interval given: COPY straight into prices
    lines[2_999] = lines[2_999].replace(",3", ",4", 1)
    lines.append(f"BBB,{T0.isoformat()},1,2,1,2,3")
    path.write_text("\n".join([HEADER] + lines) + "\n", encoding="utf-8")
    read = []
    written = prices.upsert_many(path, progress=read.append, interval="1m")  # stored bars: read again, merged
    assert (written, written.inserted, written.updated, written.unchanged) == (2, 1, 1, 2_999)
    assert sum(read) == path.stat().st_size  # each byte reported once, though the file was read twice
    assert count_rows(raw, "prices") == 3_001
    with raw.cursor() as cur:
        cur.execute("SELECT volume FROM prices WHERE symbol = 'AAA' ORDER BY timestamp DESC LIMIT 1")
        assert cur.fetchone() == (Decimal(4),)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs POSIX named pipes")
def test_upsert_of_a_fifo_goes_through_the_staging_table(prices, raw, tmp_path):
    prices.copy_from([{"symbol": "AAA", "timestamp": T0, "open": 1, "high": 2, "low": 1, "close": 2, "volume": 3}])
    path = tmp_path / "in.fifo"
    os.mkfifo(path)

    def writer():
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(f"{HEADER}\nAAA,2024-01-02,1,2,1,1.5,3\nBBB,2024-01-02,1,2,1,2,3\n")

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    try:
        assert prices.upsert_many(path) == 2
    finally:
        thread.join(10)
    assert stored(raw) == [("AAA", "1m", T0, Decimal("1.5")), ("BBB", "1m", T0, Decimal(2))]


@pytest.mark.parametrize("method", METHODS)
def test_a_file_that_cannot_be_read_is_a_validation_error_naming_it(prices, tmp_path, method):
    path = tmp_path / "missing.csv"
    with pytest.raises(DataValidationError) as info:
        getattr(prices, method)(path)
    assert (info.value.field, info.value.source, info.value.line) == ("path", str(path), None)
