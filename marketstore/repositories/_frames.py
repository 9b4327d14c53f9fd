"""Frames in: pandas and polars DataFrames, pyarrow Tables and Parquet files streamed to ``COPY``.

Every input becomes a sequence of Arrow record batches of at most
:data:`CHUNK_ROWS` rows (a Parquet file is read batch by batch, so memory stays
bounded whatever its size). Each batch is checked column by column with
vectorised operations -- types, nulls, NaN and infinities, the symbol and
interval patterns (once per distinct value), the timestamp range and the
table's price rules -- and written as CSV by Arrow's C++ writer, which
``COPY ... FORMAT csv`` reads on the session's connection. The one bad row a
check finds is handed to :func:`~marketstore.models.validate_price_row`, so a
frame gets a row's verdict and names the same field. The vectorised checks are
derived from the same declarations (``Price._meta.rules``) as the table's CHECK
constraints, which remain the last word; a refusal by the server (a duplicate
bar, a rule at the rounding edge) is mapped back to the frame's row.
"""
from __future__ import annotations

import importlib
import itertools
import os
import sys
from typing import Callable, Iterator

from .. import validation as check
from ..errors import DataValidationError, MissingExtraError
from ..models import PRICE_COLUMNS, Price, validate_price_row
from ..rules import Matches
from ..validation import NUMBER_TEXT, numeric_limit
from ._copy import COPY_COLUMNS, copy

CHUNK_ROWS = 65_536  # rows per batch: a few MB of CSV, while the server parses the previous one
EXTRA = "pip install 'marketstore[frames]'"
_NUMBERS = ("open", "high", "low", "close", "volume")
# Numeric text as PostgreSQL's numeric input reads it, white space around allowed.
_NUMERIC_TEXT = rf"^\s*{NUMBER_TEXT}\s*$"
_FRAME_TYPES = (("pandas", "DataFrame"), ("polars", "DataFrame"), ("pyarrow", "Table"), ("pyarrow", "RecordBatch"))


def need(module: str):
    """Import ``module`` of the ``frames`` extra, or raise :class:`MissingExtraError` naming the extra."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtraError(f"{module} is not installed: frames need the 'frames' extra ({EXTRA})") from exc


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


def frame_source(value, interval: str, symbol: str | None,
                 progress: Callable[[int], None] | None) -> FrameStream | None:
    """A :class:`FrameStream` of ``value`` when it is a frame or a ``.parquet`` path, else ``None``.

    ``symbol`` (for a frame without a symbol column) is refused for anything else.
    """
    if symbol is not None:
        symbol = check.symbol(symbol)
    library = frame_library(value)
    if library is not None:
        return FrameStream(lambda again=False: batches(value, library, symbol), interval)
    if isinstance(value, (str, os.PathLike)) and os.fsdecode(os.fspath(value)).lower().endswith(".parquet"):
        path = os.fsdecode(os.fspath(value))
        return FrameStream(lambda again=False: parquet_batches(path, symbol, None if again else progress), interval,
                           source=path)
    if symbol is not None:
        raise DataValidationError("symbol", symbol, "symbol= only with a frame or a Parquet file "
                                  "(rows and CSV files name their symbol)")
    return None


def _pandas_columns(frame, start: int, stop: int, pa) -> dict:
    """Arrow arrays of rows ``[start, stop)`` of a pandas frame: its columns and its named index levels."""
    part = frame.iloc[start:stop]
    columns = {}
    index = part.index
    for level, name in enumerate(index.names):
        if name is not None and name in PRICE_COLUMNS:
            columns[name] = index.get_level_values(level)
    for name in part.columns:
        if name in columns:
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
                    raise DataValidationError(str(name), value, "values of one type in the column",
                                              row=start + row + 1) from None
            raise DataValidationError(str(name), f"<{series.dtype} column>", f"a column Arrow can read ({exc})",
                                      row=start + 1) from None
    return arrays


def batches(frame, library: str, symbol: str | None) -> Iterator[tuple[int, dict]]:
    """``(offset, {name: arrow array})`` of each chunk of ``frame`` (any of the three libraries)."""
    pa = need("pyarrow")
    size = len(frame) if library != "pyarrow" else frame.num_rows
    for start in range(0, size, CHUNK_ROWS):
        stop = min(size, start + CHUNK_ROWS)
        if library == "pandas":
            arrays = _pandas_columns(frame, start, stop, pa)
        else:
            part = frame.slice(start, stop - start)
            table = part.to_arrow() if library == "polars" else part
            arrays = dict(zip(table.column_names, table.columns))
        yield start, _with_symbol(arrays, symbol, stop - start, pa)


def parquet_batches(path: str, symbol: str | None = None,
                    progress: Callable[[int], None] | None = None) -> Iterator[tuple[int, dict]]:
    """``(offset, {name: arrow array})`` of a Parquet file, read one record batch at a time.

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
    with handle:
        try:
            for batch in handle.iter_batches(batch_size=CHUNK_ROWS):
                arrays = dict(zip(batch.schema.names, batch.columns))
                yield offset, _with_symbol(arrays, symbol, batch.num_rows, pa)
                offset += batch.num_rows
                if progress is not None and size and total:
                    now = size * offset // total
                    progress(now - reported)
                    reported = now
        except (OSError, pa.ArrowException) as exc:
            raise DataValidationError("path", path, f"a readable Parquet file ({exc})", source=path) from None


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


class FrameStream:
    """Chunks of a frame as CSV for ``copy_expert``: checked, written, and mapped back when refused.

    ``source`` is the file the frame came from (for errors), ``None`` for a
    frame in memory. Like :class:`._copy.RowStream`, an error raised while
    reading is kept in ``error`` and re-raised by :func:`._copy.copy`.
    """

    rereadable = True  # upsert_many may try the frame as new bars first, then read it again

    def __init__(self, chunks: Callable[..., Iterator[tuple[int, dict]]], interval: str, source: str | None = None,
                 again: bool = False):
        self._factory, self._interval, self.source = chunks, interval, source
        self._chunks = chunks(again=True) if again else chunks()
        self._pa, self._pc, self._csv, self._np = (need("pyarrow"), need("pyarrow.compute"), need("pyarrow.csv"),
                                                   need("numpy"))
        self._options = self._csv.WriteOptions(include_header=False, quoting_style="none")
        self._recent: list[tuple[int, dict]] = []  # the last chunks sent: a server refusal names one of them
        self.rows = 0
        self.error: BaseException | None = None

    # -- reading --------------------------------------------------------------------
    def read(self, size: int = -1) -> bytes:
        try:
            for offset, arrays in self._chunks:
                table = self._checked(offset, arrays)
                if table.num_rows == 0:
                    continue
                self._recent = (self._recent + [(offset, arrays)])[-3:]
                self.rows += table.num_rows
                sink = self._pa.BufferOutputStream()
                self._csv.write_csv(table, sink, self._options)
                return sink.getvalue().to_pybytes()
            return b""
        except BaseException as exc:  # psycopg2 would report a generic ".read() call" error
            self.error = exc
            raise

    def rewound(self) -> FrameStream:
        """A stream reading the same frame (or file, without progress reports) again from its first row."""
        return FrameStream(self._factory, self._interval, self.source, again=True)

    def copy_into(self, db, table: str) -> int:
        """COPY every chunk into ``table`` on the session's connection; returns the number of rows."""
        copy(db, f"COPY {table} ({COPY_COLUMNS}) FROM STDIN WITH (FORMAT csv)", self)
        return self.rows

    # -- checks -----------------------------------------------------------------------
    def _where(self, row: int) -> dict:
        return {"row": row, "source": self.source} if self.source else {"row": row}

    def _checked(self, offset: int, arrays: dict):
        """The chunk as a table in COPY's column order, or ``DataValidationError`` at its first bad row."""
        pa, np = self._pa, self._np
        where = self._where(offset + 1)
        for name in arrays:
            if name not in PRICE_COLUMNS:
                raise DataValidationError(str(name), name, f"one of the columns {', '.join(PRICE_COLUMNS)}",
                                          **where)
        rows = len(next(iter(arrays.values()))) if arrays else 0
        for name in PRICE_COLUMNS[:-1]:
            if name not in arrays and rows:
                raise DataValidationError(name, None, f"a column {name} (or, for the timestamp, an index "
                                          "named timestamp; for the symbol, symbol=)", **where)
        if not rows:
            return pa.table({})
        out, bad = {}, np.zeros(rows, dtype=bool)  # bad: rows a check refused (the first is reported)
        for name in PRICE_COLUMNS:
            column = arrays.get(name)
            if column is None:  # interval: the call's, for every row
                out[name] = pa.repeat(self._interval, rows)
                continue
            if isinstance(column, pa.ChunkedArray):
                column = column.combine_chunks()
            if column.null_count:
                bad |= column.is_null().to_numpy(zero_copy_only=False)
            out[name] = column
        rules = Price._meta.rules
        out["symbol"] = self._text(offset, out["symbol"], "symbol", rules.pattern("symbol"), bad)
        out["interval"] = self._text(offset, out["interval"], "interval", rules.pattern("interval"), bad)
        values = {}
        out["timestamp"], values["timestamp"] = self._timestamps(offset, out["timestamp"], bad)
        doubt = np.zeros(rows, dtype=bool)
        for name in _NUMBERS:
            out[name], floats = self._number(offset, out[name], name, bad)
            # Rounded to the decimals the column keeps, as the server stores it; NaN fails every rule.
            field = Price._meta.fields[name]
            values[name] = np.round(floats, field.decimal_places)
            with np.errstate(invalid="ignore"):
                doubt |= ~(np.abs(values[name]) < float(numeric_limit(field)))
        found = rules.mask(values, np)
        if found is not None:
            doubt |= found
        # The first row refused, in the row's own words; a row only the rules doubted (rounding at the
        # 8th decimal) that the row rules accept goes on, and the table's CHECKs decide.
        for index in np.flatnonzero(bad | doubt):
            self._refuse(offset, arrays, int(index), lenient=not bad[index])
        return pa.table([out[name] for name in PRICE_COLUMNS], names=list(PRICE_COLUMNS))

    def _string(self, column):
        """``column`` as ``string``/``large_string`` when it holds text (dictionary, string view), else as is."""
        pa = self._pa
        if pa.types.is_dictionary(column.type):
            column = column.dictionary_decode()
        if getattr(pa.types, "is_string_view", lambda _: False)(column.type):
            column = column.cast(pa.large_string())
        return column

    def _is_text(self, column) -> bool:
        return self._pa.types.is_string(column.type) or self._pa.types.is_large_string(column.type)

    def _text(self, offset: int, column, name: str, rule: Matches | None, bad):
        pa, pc = self._pa, self._pc
        column = self._string(column)
        if not self._is_text(column):
            raise DataValidationError(name, column[0].as_py(), f"a column of text, not {column.type}",
                                      **self._where(offset + 1))
        # The rule (and the column's length) per distinct value, not per row.
        limit = Price._meta.fields[name].max_length
        wrong = [value for value in pc.unique(column).to_pylist()
                 if value is not None and (len(value) > limit or (rule is not None and not rule.accepts(value)))]
        if wrong:
            bad |= pc.is_in(column, pa.array(wrong, column.type)).fill_null(False).to_numpy(zero_copy_only=False)
        return column

    def _timestamps(self, offset: int, column, bad):
        pa = self._pa
        if not pa.types.is_timestamp(column.type):
            raise DataValidationError("timestamp", column[0].as_py(),
                                      f"a column of datetimes (naive ones are UTC), not {column.type}",
                                      **self._where(offset + 1))
        # An aware column holds UTC instants already and a naive one is UTC: only the unit changes
        # (nanoseconds are cut to the microseconds PostgreSQL keeps).
        stamps = column.cast(pa.timestamp(column.type.unit), safe=False).cast(pa.timestamp("us"), safe=False)
        micros = stamps.cast(pa.int64()).fill_null(0).to_numpy(zero_copy_only=False)
        # As text with an explicit +00 offset: Arrow formats a naive column ~15x faster than an aware one,
        # and the offset makes the server's reading independent of the session's time zone.
        return self._pc.binary_join_element_wise(stamps.cast(pa.string()), "+00", ""), micros

    def _number(self, offset: int, column, name: str, bad):
        """``(the column as written, its float64 values)``; NaN where a value is not a finite number."""
        pa, pc, np = self._pa, self._pc, self._np
        column = self._string(column)
        kind = column.type
        if self._is_text(column):
            numeric = pc.match_substring_regex(column, _NUMERIC_TEXT).fill_null(False)
            bad |= ~numeric.to_numpy(zero_copy_only=False)
            text = pc.utf8_trim_whitespace(pc.if_else(numeric, column, pa.scalar(None, kind)))
            return column, pc.cast(text, pa.float64()).to_numpy(zero_copy_only=False)
        if pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_decimal(kind):
            floats = column.cast(pa.float64(), safe=False).to_numpy(zero_copy_only=False)
            if pa.types.is_floating(kind):
                bad |= ~np.isfinite(floats)
            return column, floats
        raise DataValidationError(name, column[0].as_py(), f"a column of numbers, not {kind}",
                                  **self._where(offset + 1))

    def _row(self, offset: int, arrays: dict, index: int) -> dict:
        return {name: column[index].as_py() for name, column in arrays.items()}

    def _refuse(self, offset: int, arrays: dict, index: int, lenient: bool = False) -> None:
        """Raise the row's own verdict (:func:`validate_price_row`) for row ``index`` of the chunk.

        ``lenient``: a row the vectorised rules doubted (rounding at the 8th
        decimal) but that the row rules accept goes on; the table's CHECKs decide.
        """
        row = self._row(offset, arrays, int(index))
        try:
            validate_price_row(row, self._interval)
        except DataValidationError as exc:
            raise exc.at(**self._where(offset + int(index) + 1)) from None
        if not lenient:
            raise DataValidationError("row", row, "a price row", **self._where(offset + int(index) + 1))

    # -- the server's refusals (see ._copy.refusal) ----------------------------------
    def where(self, line: int) -> dict:
        return self._where(line)

    def verdict(self, line: int) -> tuple[DataValidationError | None, object]:
        """Validation's error for frame row ``line`` (COPY line = frame row).

        The server reports a refusal only once the whole COPY was sent, so
        the chunk may be gone: then it is read again from the frame (or file).
        """
        def holds(offset: int, arrays: dict) -> bool:
            return offset < line <= offset + len(next(iter(arrays.values())))

        chunks = itertools.chain(self._recent, self._factory(again=True))
        found = next(((offset, arrays) for offset, arrays in chunks if holds(offset, arrays)), None)
        if found is None:
            return None, None
        row = self._row(found[0], found[1], line - found[0] - 1)
        try:
            validate_price_row(row, self._interval)
        except DataValidationError as error:
            return error, row
        return None, row
