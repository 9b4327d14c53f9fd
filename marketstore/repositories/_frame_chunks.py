"""Frames as chunks: pandas and polars DataFrames, pyarrow Tables and Parquet files as Arrow arrays.

Every input becomes ``(offset, {column: arrow array})`` chunks of at most
:data:`CHUNK_ROWS` rows (a Parquet file is read batch by batch, so memory
stays bounded). Column names are read as vendors write them (``Open``,
``Adj Close``: any case, spaces or underscores); a datetime index of any name
is the timestamp; (price, ticker) column pairs of one ticker (yfinance's
``download()``) are its prices; a column the table does not keep is refused by name.
"""
from __future__ import annotations

import os
import sys
from typing import Callable, Iterator

from .. import validation as check
from ..errors import DataValidationError
from ..extras import require
from ..models import PRICE_INPUT_COLUMNS, price_column

CHUNK_ROWS = 65_536  # rows per batch: a few MB of CSV, while the server parses the previous one
_FRAME_TYPES = (("pandas", "DataFrame"), ("polars", "DataFrame"), ("pyarrow", "Table"), ("pyarrow", "RecordBatch"))
Chunks = Callable[..., Iterator[tuple[int, dict]]]


def need(module: str):
    """Import ``module`` of the ``frames`` extra (:func:`marketstore.extras.require`)."""
    return require(module, "frames")


def frame_library(value) -> str | None:
    """``'pandas'``, ``'polars'`` or ``'pyarrow'`` when ``value`` is one of their frames, else ``None``.

    Looks only at modules already imported: a caller holding a pandas frame has
    imported pandas, and nobody else pays for importing it.
    """
    for module, name in _FRAME_TYPES:
        found = sys.modules.get(module)
        if found is not None and isinstance(value, getattr(found, name, ())):
            return module
    return None


def frame_chunks(value, symbol: str | None, progress: Callable[[int], None] | None) -> tuple[Chunks, str | None] | None:
    """``(chunk factory, source path or None)`` when ``value`` is a frame or a ``.parquet`` path, else ``None``.

    The factory, called with ``again=True``, reads the input once more from its
    first row (without progress reports). ``symbol`` (for a frame without a
    symbol column) is refused for anything else.
    """
    if symbol is not None:
        symbol = check.symbol(symbol)
    library = frame_library(value)
    if library is not None:
        return (lambda again=False: batches(value, library, symbol)), None
    if isinstance(value, (str, os.PathLike)) and os.fsdecode(os.fspath(value)).lower().endswith(".parquet"):
        path = os.fsdecode(os.fspath(value))
        return (lambda again=False: parquet_batches(path, symbol, None if again else progress)), path
    return None


def named(arrays: dict, where: dict | None = None) -> dict:
    """``arrays`` under the price columns their names mean; an unknown or repeated column is refused by name.

    Without a timestamp column, a first column ``Date`` or ``Datetime`` of datetimes or dates is
    the timestamp: a frame's index made a column (polars has no index), as CSV reads it.
    """
    out = {}
    first = next(iter(arrays), None)
    stamped = isinstance(first, str) and first.strip().lower() in ("date", "datetime") and _is_time(arrays[first])
    if stamped and not any(price_column(name) == "timestamp" for name in arrays):
        arrays = {("timestamp" if name == first else name): array for name, array in arrays.items()}
    for name, array in arrays.items():
        column = price_column(name)
        if column is None:
            raise DataValidationError(str(name), name, f"a price column, in any case: {', '.join(PRICE_INPUT_COLUMNS)} "
                                      "(a column such as dividends or splits is not kept: drop it)", **(where or {}))
        if column in out:
            raise DataValidationError(column, name, "each column once (as a column or an index level)",
                                      **(where or {}))
        out[column] = array
    return out


def _is_time(array) -> bool:
    pa = need("pyarrow")
    return pa.types.is_timestamp(array.type) or pa.types.is_date(array.type)


def _pandas_columns(frame, start: int, stop: int, pa) -> dict:
    """Arrow arrays of rows ``[start, stop)`` of a pandas frame: its columns and its index.

    An index level named like a price column is that column; a datetime (or
    date) index of any other name, or none, is the timestamp.
    """
    pd = need("pandas")
    part = frame.iloc[start:stop]
    columns = {}
    index = part.index
    for level, name in enumerate(index.names):
        values = index.get_level_values(level)
        if price_column(name) is not None:
            columns[name] = values
        elif index.nlevels == 1 and (pd.api.types.is_datetime64_any_dtype(values)
                                     or pd.api.types.infer_dtype(values, skipna=True) == "date"):
            columns["timestamp"] = values  # 'Date', 'Datetime', unnamed: a datetime index is the bars' time
    for name in part.columns:
        if name in columns or (name != "timestamp" and price_column(name) == "timestamp" and "timestamp" in columns):
            raise DataValidationError(str(name), name, "each column once (as a column or an index level)")
        columns[name] = part[name]
    arrays = {}
    for name, series in columns.items():
        try:
            # NaN stays NaN in float columns (named as such); elsewhere None and NaT become nulls.
            arrays[name] = pa.array(series, from_pandas=series.dtype.kind != "f")
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, TypeError, ValueError) as exc:
            # A column of mixed objects: the first element that is not of the column's kind is named.
            for row, value in enumerate(series.tolist()):
                try:
                    pa.array([value], from_pandas=True)
                    pa.array([series.iloc[0], value], from_pandas=True)
                except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, TypeError, ValueError):
                    raise DataValidationError(price_column(name) or str(name), value,
                                              "values of one type in the column", row=start + row + 1) from None
            raise DataValidationError(price_column(name) or str(name), f"<{series.dtype} column>",
                                      f"a column Arrow can read ({exc})", row=start + 1) from None
    return arrays


def batches(frame, library: str, symbol: str | None) -> Iterator[tuple[int, dict]]:
    """``(offset, {column: arrow array})`` of each chunk of ``frame`` (any of the three libraries)."""
    pa = need("pyarrow")
    if library == "pandas" and frame.columns.nlevels > 1:
        frame, symbol = _one_ticker(frame, symbol)
    size = len(frame) if library != "pyarrow" else frame.num_rows
    for start in range(0, size, CHUNK_ROWS):
        stop = min(size, start + CHUNK_ROWS)
        if library == "pandas":
            arrays = _pandas_columns(frame, start, stop, pa)
        else:
            part = frame.slice(start, stop - start)
            table = part.to_arrow() if library == "polars" else part
            arrays = dict(zip(table.column_names, table.columns))
        yield start, _with_symbol(named(arrays), symbol, stop - start, pa)


def _one_ticker(frame, symbol: str | None):
    """``(frame, symbol)`` of a frame whose columns are (price, ticker) pairs, as yfinance's ``download()``.

    One ticker: the frame under its price names, the ticker its symbol
    (``symbol=``, when given, must name it). Several tickers, or levels that are
    not prices and tickers: ``DataValidationError`` (``field='columns'``).
    """
    columns = frame.columns
    for level in range(columns.nlevels if columns.nlevels == 2 else 0):
        names, tickers = columns.get_level_values(level), columns.get_level_values(1 - level).unique()
        if len(tickers) == 1 and all(price_column(name) is not None for name in names):
            ticker = str(tickers[0])
            if symbol is not None and symbol != ticker:
                raise DataValidationError("symbol", symbol, f"the frame's ticker {ticker!r} (or no symbol=)")
            flat = frame.copy(deep=False)
            flat.columns = list(names)
            return flat, symbol or check.symbol(ticker)
    raise DataValidationError("columns", [tuple(c) for c in columns[:4]],
                              "one level of price columns: a frame of one ticker (frame.xs(ticker, axis=1, "
                              "level=1) for one of several)")


def parquet_batches(path: str, symbol: str | None = None,
                    progress: Callable[[int], None] | None = None) -> Iterator[tuple[int, dict]]:
    """``(offset, {column: arrow array})`` of a Parquet file, read one record batch at a time.

    ``progress`` gets the file's bytes in proportion to the rows read.
    """
    pa, pq = need("pyarrow"), need("pyarrow.parquet")
    try:  # opened now, before any transaction: a missing file starts none
        handle = pq.ParquetFile(path)
        total = handle.metadata.num_rows
    except (OSError, pa.ArrowException) as exc:
        raise DataValidationError("path", path, f"a readable Parquet file ({exc})", source=path) from None
    return _parquet_read(handle, path, total, symbol, progress)


def _parquet_read(handle, path: str, total: int, symbol: str | None, progress) -> Iterator[tuple[int, dict]]:
    pa = need("pyarrow")
    size = _file_size(path)
    offset = reported = 0
    # pandas writes a frame's index as a column; an unnamed one as "__index_level_0__".
    index_columns = _pandas_index_columns(handle)
    with handle:
        try:
            for batch in handle.iter_batches(batch_size=CHUNK_ROWS):
                arrays = {("timestamp" if name in index_columns and price_column(name) is None else name): column
                          for name, column in zip(batch.schema.names, batch.columns)}
                yield offset, _with_symbol(named(arrays, {"source": path}), symbol, batch.num_rows, pa)
                offset += batch.num_rows
                if progress is not None and size and total:
                    now = size * offset // total
                    progress(now - reported)
                    reported = now
        except (OSError, pa.ArrowException) as exc:
            raise DataValidationError("path", path, f"a readable Parquet file ({exc})", source=path) from None


def _pandas_index_columns(handle) -> set[str]:
    """The columns a pandas frame's datetime index became in a Parquet file (from its metadata)."""
    import json

    meta = (handle.schema_arrow.metadata or {}).get(b"pandas")
    if not meta:
        return set()
    described = json.loads(meta)
    kinds = {c.get("field_name"): c.get("pandas_type") for c in described.get("columns", [])}
    names = [n for n in described.get("index_columns", []) if isinstance(n, str)]
    return {n for n in names if len(names) == 1 and kinds.get(n) in ("datetime", "datetimetz", "date")}


def _file_size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def _with_symbol(arrays: dict, symbol: str | None, rows: int, pa) -> dict:
    if symbol is not None:
        if "symbol" in arrays:
            raise DataValidationError("symbol", symbol, "symbol= only for a frame without a symbol column")
        arrays["symbol"] = pa.repeat(symbol, rows)
    return arrays
