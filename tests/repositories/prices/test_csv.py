"""Price files (CSV) given to ``copy_from`` and ``upsert_many``: column order, timestamps,
blank lines, encodings, FIFOs, streaming, and the line and field a bad file is refused at."""
from __future__ import annotations

import csv
import datetime as dt
import random
import os
import threading
from decimal import Decimal


import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import marketstore
from marketstore import DataValidationError, DuplicateKeyError


from helpers import HEADER as COLUMNS
from helpers import MINUTE, T0, UTC, as_tuple, bar, count_rows, random_bars, stored_prices, wait_for_copy_progress

HEADER = COLUMNS + "\n"


def write_csv(path, rows, columns=("symbol", "timestamp", "open", "high", "low", "close", "volume", "interval")):
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        for r in rows:
            writer.writerow([r[c].isoformat() if c == "timestamp" else r[c] for c in columns])


def test_copy_from_csv_path_any_column_order(prices, raw, tmp_path):
    rows = random_bars(random.Random(4), "CSV", 500)
    path = tmp_path / "prices.csv"
    write_csv(path, rows, ("timestamp", "close", "symbol", "volume", "low", "high", "open"))  # no interval
    assert prices.copy_from(str(path)) == 500
    empty = tmp_path / "empty.csv"
    empty.touch()
    assert prices.copy_from(empty) == 0
    assert stored_prices(raw) == sorted(as_tuple(r) for r in rows)


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
    assert [(s, i) for s, i, *_ in stored_prices(raw)] == [("AAA", "1h"), ("BBB", "1h"), ("CCC", "1m"), ("DDD", "1d")]
    with pytest.raises(DataValidationError, match="interval"):
        prices.copy_from(path, interval="1M")  # minutes or months: refused as ambiguous
    with pytest.raises(DataValidationError, match="progress"):
        prices.copy_from(path, progress=5)


def test_copy_from_csv_takes_iso_timestamps_quoted_or_spaced(prices, raw, tmp_path):
    path = tmp_path / "iso.csv"
    path.write_text(HEADER + 'AAA," 2024-01-02 10:00:00.5+01:00 ",1,2,1,2,3\nBBB,2024-01-02,1,2,1,2,3\n'
                    "CCC,2024-01-02T10:00-0500,1,2,1,2,3\n", encoding="utf-8")
    assert prices.copy_from(path) == 3
    assert [ts for _, _, ts, *_ in stored_prices(raw)] == [dt.datetime(2024, 1, 2, 9, 0, 0, 500_000, tzinfo=UTC),
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
    assert stored_prices(raw) == sorted(as_tuple(r) for r in rows)
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
    assert [(s, ts) for s, _, ts, *_ in stored_prices(raw)] == [
        ("AAA", dt.datetime(2024, 1, 2, 10, tzinfo=UTC)), ("BBB", dt.datetime(2024, 1, 2, 15, tzinfo=UTC))]


def test_copy_from_csv_takes_a_symbol_that_spells_a_relative_word(prices, raw, tmp_path):
    path = tmp_path / "now.csv"
    path.write_text("Symbol, TIMESTAMP ,open,high,low,close,volume\r\n"
                    "NOW,2024-01-02T00:00:00Z,1,2,1,2,3\r\nSNOW,2024-01-02T00:00:00Z,1,2,1,2,3\r\n",
                    encoding="utf-8-sig")  # a BOM, spaces and capitals in the header
    assert prices.copy_from(path) == 2
    assert [s for s, *_ in stored_prices(raw)] == ["NOW", "SNOW"]


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

