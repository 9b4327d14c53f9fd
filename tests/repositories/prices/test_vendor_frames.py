"""Frames as vendors hand them over load as they are: backtesting.py's bundled data, a yfinance-shaped frame,
the same written to Parquet and CSV; their interval comes from their spacing, and one they contradict is refused."""
from __future__ import annotations

import csv
import datetime as dt

import numpy as np
import pandas as pd
import pytest

from marketstore import DataValidationError, PriceRepository

from helpers import count_rows

backtesting_test = pytest.importorskip("backtesting.test")
GOOG, EURUSD = backtesting_test.GOOG, backtesting_test.EURUSD
_OHLCV = ["open", "high", "low", "close", "volume"]


def yfinance_frame(rows: int = 60) -> pd.DataFrame:
    """The shape of yfinance's ``Ticker.history()``: a ``Date`` index in New York time and vendor columns."""
    part = GOOG.iloc[:rows]
    index = pd.DatetimeIndex(part.index).tz_localize("America/New_York")
    index.name = "Date"
    adjusted = part["Close"].to_numpy() * 0.5
    adjusted[[3, 7]] = np.nan  # a vendor without an adjusted close for some days
    return pd.DataFrame({"Open": part["Open"].to_numpy(), "High": part["High"].to_numpy(),
                         "Low": part["Low"].to_numpy(), "Close": part["Close"].to_numpy(), "Adj Close": adjusted,
                         "Volume": part["Volume"].to_numpy(), "Dividends": 0.0, "Stock Splits": 0.0}, index=index)


def minute_bars(rows: int = 30) -> pd.DataFrame:
    index = pd.date_range("2024-01-02 14:30", periods=rows, freq="1min", name="Datetime")
    values = np.linspace(100, 101, rows)
    return pd.DataFrame({"Open": values, "High": values + 0.5, "Low": values - 0.5, "Close": values,
                         "Volume": 100.0}, index=index)


def assert_round_trip(got: pd.DataFrame, given: pd.DataFrame, stamps) -> None:
    assert list(got.index) == list(stamps)
    for name in _OHLCV:
        np.testing.assert_allclose(got[name].to_numpy(), given[name.capitalize()].to_numpy(dtype=float),
                                   rtol=0, atol=5e-9, err_msg=name)


@pytest.mark.parametrize("symbol, data, interval", [("GOOG", GOOG, "1d"), ("EURUSD", EURUSD, "1h")])
def test_backtesting_frames_load_as_they_are_with_their_interval_inferred(db, symbol, data, interval):
    repository = PriceRepository()
    assert repository.copy_from(data, symbol=symbol) == len(data)
    [series] = repository.series([symbol])
    assert (series.interval, series.first, series.last) == (
        interval, data.index[0].tz_localize("UTC").to_pydatetime(), data.index[-1].tz_localize("UTC").to_pydatetime())
    start, end = data.index[0].date(), data.index[-1].date() + dt.timedelta(days=1)
    got = repository.frame(symbol, start, end)
    assert "adj_close" not in got.columns
    assert_round_trip(got, data, data.index.tz_localize("UTC"))
    assert len(repository.get_range(symbol, start, end)) == len(data)


def test_a_column_the_table_does_not_keep_is_refused_by_name(db, raw):
    with pytest.raises(DataValidationError) as caught:
        PriceRepository().copy_from(yfinance_frame(), symbol="GOOG")
    assert caught.value.field == "Dividends"
    assert "column" in str(caught.value) and caught.value.row is None and "row" not in str(caught.value)
    assert count_rows(raw, "prices") == 0


def test_a_yfinance_frame_without_corporate_actions_loads_with_its_adjusted_close(db):
    given = yfinance_frame().drop(columns=["Dividends", "Stock Splits"])
    repository = PriceRepository()
    assert repository.copy_from(given, symbol="GOOG") == len(given)
    assert [s.interval for s in repository.series()] == ["1d"]
    got = repository.frame("GOOG", None, None, tz="America/New_York")
    assert_round_trip(got, given, given.index)
    expected = given["Adj Close"].to_numpy()
    np.testing.assert_allclose(got["adj_close"].to_numpy(), expected, rtol=0, atol=5e-9)
    assert np.isnan(got["adj_close"].to_numpy()[[3, 7]]).all()


def test_a_date_index_is_midnight_utc(db):
    given = GOOG.iloc[:20].copy()
    given.index = [stamp.date() for stamp in given.index]
    PriceRepository().copy_from(given, symbol="GOOG")
    [series] = PriceRepository().series()
    assert series.interval == "1d"
    assert series.first == dt.datetime(2004, 8, 19, tzinfo=dt.timezone.utc)
    got = PriceRepository().frame("GOOG", dt.date(2004, 8, 19), None)
    assert_round_trip(got, given, pd.DatetimeIndex(pd.to_datetime(given.index)).tz_localize("UTC"))


def frames_as_read():
    """Each vendor frame, and how ``frame()`` should read it back (UTC stamps, values)."""
    dated = GOOG.iloc[:40].copy()
    dated.index = [stamp.date() for stamp in dated.index]
    yf = yfinance_frame().drop(columns=["Dividends", "Stock Splits"])
    return {
        "goog-unnamed-index": (GOOG, GOOG.index.tz_localize("UTC"), "1d"),
        "eurusd-unnamed-index": (EURUSD.iloc[:500], EURUSD.index[:500].tz_localize("UTC"), "1h"),
        "yfinance-date-in-new-york": (yf, yf.index.tz_convert("UTC"), "1d"),
        "date-objects": (dated, pd.DatetimeIndex(pd.to_datetime(dated.index)).tz_localize("UTC"), "1d"),
        "minutes-named-datetime": (minute_bars(), minute_bars().index.tz_localize("UTC"), "1m"),
    }


@pytest.mark.parametrize("name", list(frames_as_read()))
def test_parquet_written_by_pandas_loads_as_the_frame_does(db, tmp_path, name):
    given, stamps, interval = frames_as_read()[name]
    path = tmp_path / "bars.parquet"
    given.to_parquet(path)
    repository = PriceRepository()
    assert repository.copy_from(str(path), symbol="FILE") == len(given)
    assert repository.copy_from(given, symbol="FRAME") == len(given)
    assert [(s.symbol, s.interval) for s in repository.series()] == [("FILE", interval), ("FRAME", interval)]
    from_file, from_frame = repository.frame("FILE"), repository.frame("FRAME")
    pd.testing.assert_frame_equal(from_file, from_frame)
    assert_round_trip(from_file, given, stamps)


def write_csv(path, frame: pd.DataFrame) -> str:
    """``frame`` as a vendor CSV: ``Timestamp,Open,High,...`` with ISO timestamps."""
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["Timestamp"] + list(frame.columns))
        for stamp, row in zip(frame.index, frame.itertuples(index=False)):
            writer.writerow([pd.Timestamp(stamp).isoformat()] + list(row))
    return str(path)


def test_a_vendor_csv_with_symbol_loads_with_its_interval_inferred(db, tmp_path):
    given = EURUSD.iloc[:300]
    path = write_csv(tmp_path / "eurusd.csv", given)
    repository = PriceRepository()
    assert repository.copy_from(path, symbol="EURUSD") == len(given)
    assert [s.interval for s in repository.series()] == ["1h"]
    assert_round_trip(repository.frame("EURUSD"), given, given.index.tz_localize("UTC"))


def test_a_vendor_csv_with_a_column_the_table_does_not_keep_is_refused_by_name(db, tmp_path):
    given = yfinance_frame(10)
    path = write_csv(tmp_path / "yf.csv", given)
    with pytest.raises(DataValidationError) as caught:
        PriceRepository().copy_from(path, symbol="GOOG")
    assert caught.value.field == "Dividends"
    assert "column" in str(caught.value)


def bars_as_rows(frame: pd.DataFrame, symbol: str) -> list[dict]:
    return [{"symbol": symbol, "timestamp": stamp.to_pydatetime(), "open": r.Open, "high": r.High, "low": r.Low,
             "close": r.Close, "volume": r.Volume} for stamp, r in zip(frame.index, frame.itertuples())]


@pytest.mark.parametrize("path", ["frame", "parquet", "csv", "rows", "rows-generator"])
@pytest.mark.parametrize("method", ["copy_from", "upsert_many"])
def test_an_interval_the_spacing_contradicts_is_refused_and_nothing_loads(db, raw, tmp_path, path, method):
    bars = minute_bars()
    if path == "frame":
        given, symbol = bars, "MIN"
    elif path == "parquet":
        bars.to_parquet(tmp_path / "bars.parquet")
        given, symbol = str(tmp_path / "bars.parquet"), "MIN"
    elif path == "csv":
        given, symbol = write_csv(tmp_path / "bars.csv", bars), "MIN"
    else:
        rows = bars_as_rows(bars, "MIN")
        given, symbol = (rows if path == "rows" else (row for row in rows)), None
    with pytest.raises(DataValidationError) as caught:
        getattr(PriceRepository(), method)(given, symbol=symbol, interval="1d")
    assert caught.value.field == "interval"
    assert "1m" in str(caught.value)  # what the spacing says
    assert count_rows(raw, "prices") == 0


@pytest.mark.parametrize("path", ["frame", "csv", "rows"])
def test_without_an_interval_each_symbol_gets_its_own(db, tmp_path, path):
    minutes = minute_bars()
    days = GOOG.iloc[:30]
    if path == "frame":
        both = pd.concat([minutes.assign(Symbol="MIN"), days.assign(Symbol="DAY")])
        PriceRepository().copy_from(both)
    elif path == "csv":
        both = pd.concat([minutes.assign(Symbol="MIN"), days.assign(Symbol="DAY")])
        PriceRepository().copy_from(write_csv(tmp_path / "both.csv", both))
    else:
        PriceRepository().copy_from(bars_as_rows(minutes, "MIN") + bars_as_rows(days, "DAY"))
    assert [(s.symbol, s.interval) for s in PriceRepository().series()] == [("DAY", "1d"), ("MIN", "1m")]


@pytest.mark.parametrize("name", ["goog-unnamed-index", "eurusd-unnamed-index", "yfinance-date-in-new-york",
                                  "minutes-named-datetime"])
def test_csv_written_by_pandas_loads_as_the_frame_does(db, tmp_path, name):
    given, stamps, interval = frames_as_read()[name]
    path = tmp_path / "bars.csv"
    given.to_csv(path)  # the index as the first column: unnamed, Date or Datetime
    repository = PriceRepository()
    assert repository.copy_from(str(path), symbol="FILE") == len(given)
    assert [s.interval for s in repository.series()] == [interval]
    got = repository.frame("FILE")
    assert_round_trip(got, given, stamps)
    if "Adj Close" in given.columns:
        np.testing.assert_allclose(got["adj_close"].to_numpy(), given["Adj Close"].to_numpy(), rtol=0, atol=5e-9)


@pytest.mark.parametrize("library", ["pandas", "polars", "arrow", "parquet"])
@pytest.mark.parametrize("name", ["goog-unnamed-index", "yfinance-date-in-new-york", "date-objects",
                                  "minutes-named-datetime"])
def test_a_date_column_first_is_the_timestamp_as_in_csv(db, tmp_path, library, name):
    given, stamps, interval = frames_as_read()[name]
    flat = given.rename_axis("Datetime" if name.startswith("minutes") else "Date").reset_index()
    if library == "polars":
        flat = pytest.importorskip("polars").from_pandas(flat)
    elif library == "arrow":
        flat = pytest.importorskip("pyarrow").Table.from_pandas(flat, preserve_index=False)
    elif library == "parquet":
        flat.to_parquet(tmp_path / "flat.parquet", index=False)
        flat = str(tmp_path / "flat.parquet")
    assert PriceRepository().copy_from(flat, symbol="FLAT") == len(given)
    assert [s.interval for s in PriceRepository().series()] == [interval]
    assert_round_trip(PriceRepository().frame("FLAT"), given, stamps)


def test_a_date_column_of_text_is_refused_by_name(db):
    flat = GOOG.iloc[:5].rename_axis("Date").reset_index()
    flat["Date"] = flat["Date"].astype(str)
    with pytest.raises(DataValidationError) as caught:
        PriceRepository().copy_from(flat, symbol="FLAT")
    assert caught.value.field == "Date"


def download_frame(tickers=("GOOG",)) -> pd.DataFrame:
    """The shape of yfinance's ``download()``: a ``Date`` index and (Price, Ticker) column pairs."""
    part = GOOG.iloc[:50]
    columns = pd.MultiIndex.from_product([["Close", "High", "Low", "Open", "Volume"], list(tickers)],
                                         names=["Price", "Ticker"])
    values = {(price, ticker): part[price].to_numpy() for price, ticker in columns}
    return pd.DataFrame(values, index=pd.DatetimeIndex(part.index, name="Date"), columns=columns)


@pytest.mark.parametrize("symbol", [None, "GOOG"])
def test_a_download_frame_of_one_ticker_loads_under_its_ticker(db, symbol):
    given = download_frame()
    assert PriceRepository().copy_from(given, symbol=symbol) == len(given)
    assert [(s.symbol, s.interval) for s in PriceRepository().series()] == [("GOOG", "1d")]
    assert_round_trip(PriceRepository().frame("GOOG"), given.xs("GOOG", axis=1, level="Ticker"),
                      given.index.tz_localize("UTC"))


@pytest.mark.parametrize("given, symbol, field", [
    (download_frame(), "MSFT", "symbol"),
    (download_frame(("GOOG", "MSFT")), None, "columns"),
])
def test_a_download_frame_is_refused_when_its_ticker_is_not_one_symbol(db, raw, given, symbol, field):
    with pytest.raises(DataValidationError) as caught:
        PriceRepository().copy_from(given, symbol=symbol)
    assert caught.value.field == field
    assert count_rows(raw, "prices") == 0
