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

import datetime as dt
import itertools
from typing import Callable, NamedTuple

from ..errors import DataValidationError
from ..intervals import contradiction, inferred
from ..intervals import interval as canonical_interval
from ..models import PRICE_COLUMNS, PRICE_INPUT_COLUMNS, Price, validate_price_row
from ..rules import Matches
from ..validation import NUMBER_TEXT, numeric_limit
from ._copy import COPY_COLUMNS, copy
from ._frame_chunks import Chunks, frame_chunks, need

_NUMBERS = ("open", "high", "low", "close", "volume", "adj_close")
# Numeric text as PostgreSQL's numeric input reads it, white space around allowed.
_NUMERIC_TEXT = rf"^\s*{NUMBER_TEXT}\s*$"
_NO_GAP = 2**63 - 1


class Facts(NamedTuple):
    """What a checked chunk holds, for comparing it with stored bars (:mod:`._unchanged`).

    ``floats``: each number column as float64 (NaN: none); ``exact``: whether
    that float is the value written (an integer or float column), not a
    reading of text or of a decimal.
    """

    table: object  # the pyarrow table written (PRICE_INPUT_COLUMNS)
    micros: object  # the timestamps, microseconds since 1970 UTC
    floats: dict
    exact: dict


def frame_source(value, interval: str | None, symbol: str | None,
                 progress: Callable[[int], None] | None) -> FrameStream | None:
    """A :class:`FrameStream` of ``value`` when it is a frame or a ``.parquet`` path, else ``None``."""
    found = frame_chunks(value, symbol, progress)
    return None if found is None else FrameStream(found[0], interval, found[1])


class FrameStream:
    """Chunks of a frame as CSV for ``copy_expert``: checked, written, and mapped back when refused.

    ``source`` is the file the frame came from (for errors), ``None`` for a
    frame in memory. Like :class:`._copy.RowStream`, an error raised while
    reading is kept in ``error`` and re-raised by :func:`._copy.copy`.
    """

    rereadable = True  # upsert_many may try the frame as new bars first, then read it again
    complete = True  # an interval given, the frame's own, or inferred here before the first chunk

    def __init__(self, chunks: Chunks, interval: str | None, source: str | None = None, again: bool = False,
                 by_symbol: dict | None = None):
        self._factory, self._interval, self.source = chunks, interval, source
        self._chunks = chunks(again=True) if again else chunks()
        self._by_symbol = by_symbol  # {symbol: interval} inferred from the bars' spacing (no interval given)
        self._planned = by_symbol is not None
        self._pa, self._pc, self._csv, self._np = (need("pyarrow"), need("pyarrow.compute"), need("pyarrow.csv"),
                                                   need("numpy"))
        self._options = self._csv.WriteOptions(include_header=False, quoting_style="none")
        self._recent: list[tuple[int, dict]] = []  # the last chunks sent: a server refusal names one of them
        self._keep: dict | None = None  # {chunk offset: rows to write}: only those (see filtered())
        self._sent: list[tuple[int, int, object]] = []  # (first COPY line - 1, offset, row indices) when filtered
        self.rows = 0
        self.error: BaseException | None = None

    # -- reading --------------------------------------------------------------------
    def read(self, size: int = -1) -> bytes:
        try:
            if not self._planned:
                self._plan()
            for offset, arrays in self._chunks:
                keep = None if self._keep is None else self._keep.get(offset)
                if self._keep is not None and keep is None:
                    continue  # nothing of this chunk to write
                table = self._checked(offset, arrays).table
                if keep is not None:
                    self._sent.append((self.rows, offset, self._np.flatnonzero(keep)))
                    table = table.filter(self._pa.array(keep))
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
        return FrameStream(self._factory, self._interval, self.source, again=True, by_symbol=self._by_symbol)

    def checked(self):
        """``(offset, Facts)`` of each chunk, checked, from a fresh pass over the frame."""
        if not self._planned:
            self._plan()
        for offset, arrays in self._factory(again=True):
            facts = self._checked(offset, arrays)
            if facts.table.num_rows:
                yield offset, facts

    def filtered(self, keep: dict) -> FrameStream:
        """The frame read again writing only the rows ``keep`` (``{chunk offset: boolean mask}``) marks.

        A chunk absent from ``keep`` is skipped whole; errors still name the
        frame's own rows.
        """
        again = self.rewound()
        again._keep = keep
        return again

    def wanted(self) -> bool:
        """Whether any row is left to write (always, unless :meth:`filtered` left every one out)."""
        return self._keep is None or bool(self._keep)

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
        rows = len(next(iter(arrays.values()))) if arrays else 0
        for name in PRICE_COLUMNS[:-1]:
            if name not in arrays and rows:
                raise DataValidationError(name, None, f"a column {name} (or, for the timestamp, a datetime "
                                          "index; for the symbol, symbol=)", **where)
        if not rows:
            return Facts(pa.table({}), None, {}, {})
        out, bad = {}, np.zeros(rows, dtype=bool)  # bad: rows a check refused (the first is reported)
        for name in PRICE_INPUT_COLUMNS:
            column = arrays.get(name)
            if column is None:  # interval: the call's or the inferred one; adj_close: none
                out[name] = None
                continue
            if isinstance(column, pa.ChunkedArray):
                column = column.combine_chunks()
            if column.null_count and name != "adj_close":
                bad |= column.is_null().to_numpy(zero_copy_only=False)
            out[name] = column
        rules = Price._meta.rules
        out["symbol"] = self._text(offset, out["symbol"], "symbol", rules.pattern("symbol"), bad)
        if out["interval"] is None:
            out["interval"] = self._intervals(out["symbol"], rows)
        else:
            out["interval"] = self._text(offset, self._canonical(out["interval"]), "interval",
                                         rules.pattern("interval"), bad)
        if out["adj_close"] is None:
            out["adj_close"] = pa.nulls(rows, pa.float64())
        elif pa.types.is_floating(out["adj_close"].type):  # NaN: no adjusted close for that bar, as NULL
            column = out["adj_close"]
            out["adj_close"] = self._pc.if_else(self._pc.is_nan(column), pa.scalar(None, column.type), column)
        nulls = {"adj_close": out["adj_close"].is_null().to_numpy(zero_copy_only=False)}
        values = {}
        out["timestamp"], values["timestamp"] = self._timestamps(offset, out["timestamp"], bad)
        doubt = np.zeros(rows, dtype=bool)
        raw, exact = {}, {}
        for name in _NUMBERS:
            out[name], floats = self._number(offset, out[name], name, bad)
            raw[name], kind = floats, out[name].type
            exact[name] = pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_null(kind)
            # Rounded to the decimals the column keeps, as the server stores it; NaN fails every rule.
            field = Price._meta.fields[name]
            values[name] = np.round(floats, field.decimal_places)
            with np.errstate(invalid="ignore"):
                beyond = ~(np.abs(values[name]) < float(numeric_limit(field)))
            doubt |= beyond & ~nulls[name] if name in nulls else beyond
        found = rules.mask(values, np, nulls)
        if found is not None:
            doubt |= found
        # The first row refused, in the row's own words; a row only the rules doubted (rounding at the
        # 8th decimal) that the row rules accept goes on, and the table's CHECKs decide.
        for index in np.flatnonzero(bad | doubt):
            self._refuse(offset, arrays, int(index), lenient=not bad[index])
        table = pa.table([out[name] for name in PRICE_INPUT_COLUMNS], names=list(PRICE_INPUT_COLUMNS))
        return Facts(table, values["timestamp"], raw, exact)

    # -- intervals ------------------------------------------------------------------
    def _plan(self) -> None:
        """Before the first chunk: the intervals of a frame that gives none, or the check of the one given.

        Reads the symbol and timestamp of every row once (vectorised): the
        smallest gap between a symbol's bars says its interval
        (:func:`~marketstore.intervals.inferred`), or contradicts the one given.
        """
        self._planned = True
        gaps = self._gaps()
        if gaps is None:
            return
        if self._interval is None:
            self._by_symbol = {symbol: inferred(gap) for symbol, gap in gaps.items()}
            return
        for symbol, gap in gaps.items():
            why = contradiction(self._interval, gap)
            if why is not None:
                raise DataValidationError("interval", self._interval, f"{why}, for {symbol}",
                                          **({"source": self.source} if self.source else {}))

    def _gaps(self) -> dict[str, dt.timedelta] | None:
        """``{symbol: smallest gap between two of its bars}``; ``None`` when the frame gives its intervals."""
        pa, pc, np = self._pa, self._pc, self._np
        symbols, stamps = [], []
        for _, arrays in self._factory(again=True):
            if "interval" in arrays:
                return None  # the rows carry their own intervals
            symbol, stamp = arrays.get("symbol"), arrays.get("timestamp")
            if isinstance(symbol, pa.ChunkedArray):
                symbol = symbol.combine_chunks()
            if isinstance(stamp, pa.ChunkedArray):
                stamp = stamp.combine_chunks()
            if symbol is None or stamp is None or not self._is_text(self._string(symbol)) or not (
                    pa.types.is_timestamp(stamp.type) or pa.types.is_date(stamp.type)):
                return {}  # the chunk is refused when it is read
            symbols.append(self._string(symbol).cast(pa.large_string()))
            stamps.append(self._micros(stamp))
        if not stamps:
            return {}
        encoded = pc.dictionary_encode(pa.chunked_array(symbols)).combine_chunks()
        codes = encoded.indices.to_numpy(zero_copy_only=False)
        micros = np.concatenate(stamps)
        order = np.lexsort((micros, codes))
        codes, micros = codes[order], micros[order]
        gap = np.diff(micros)
        counted = (codes[1:] == codes[:-1]) & (gap > 0)
        smallest = np.full(len(encoded.dictionary), _NO_GAP, dtype=np.int64)
        np.minimum.at(smallest, codes[1:][counted], gap[counted])
        return {name: dt.timedelta(microseconds=int(us)) for name, us in
                zip(encoded.dictionary.to_pylist(), smallest) if us != _NO_GAP}

    def _intervals(self, symbols, rows: int):
        """The interval column of a chunk: the one given, else each symbol's inferred one (a lone bar: 1m)."""
        pa, pc = self._pa, self._pc
        if self._interval is not None:
            return pa.repeat(self._interval, rows)
        known = self._by_symbol or {}
        names = pa.array(list(known), symbols.type)
        values = pa.array(list(known.values()) + [Price.interval.default])
        return pc.take(values, pc.fill_null(pc.index_in(symbols, names), len(known)))

    def _canonical(self, column):
        """An interval column in the stored spelling ('1D' -> '1d'); a value the grammar refuses is kept."""
        pa, pc = self._pa, self._pc
        column = self._string(column)
        if not self._is_text(column):
            return column
        spelled = {}
        for value in pc.unique(column).to_pylist():
            try:
                spelled[value] = canonical_interval(value) if value is not None else None
            except DataValidationError:
                spelled[value] = value
        if all(k == v for k, v in spelled.items()):
            return column
        keys = pa.array(list(spelled), column.type)
        return pc.take(pa.array(list(spelled.values()), column.type), pc.index_in(column, keys))

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

    def _utc_micros(self, column):
        """A timestamp column as naive UTC ``timestamp[us]``; a date is midnight UTC."""
        pa = self._pa
        if pa.types.is_date(column.type):
            return column.cast(pa.timestamp("us"))
        # An aware column holds UTC instants already and a naive one is UTC: only the unit changes
        # (nanoseconds are cut to the microseconds PostgreSQL keeps).
        return column.cast(pa.timestamp(column.type.unit), safe=False).cast(pa.timestamp("us"), safe=False)

    def _micros(self, column):
        return self._utc_micros(column).cast(self._pa.int64()).fill_null(0).to_numpy(zero_copy_only=False)

    def _timestamps(self, offset: int, column, bad):
        pa = self._pa
        if not (pa.types.is_timestamp(column.type) or pa.types.is_date(column.type)):
            raise DataValidationError("timestamp", column[0].as_py(),
                                      f"a column of datetimes or dates (naive ones are UTC), not {column.type}",
                                      **self._where(offset + 1))
        stamps = self._utc_micros(column)
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
                bad |= ~np.isfinite(floats) & ~column.is_null().to_numpy(zero_copy_only=False)
            return column, floats
        if pa.types.is_null(kind):  # an all-NaN adjusted close: none for any bar
            return column, np.full(len(column), np.nan)
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
        return self._where(self._row_of(line))

    def _row_of(self, line: int) -> int:
        """The frame row (1-based) written as COPY line ``line``: the same unless rows were left out."""
        if self._keep is None:
            return line
        for before, offset, indices in self._sent:
            if before < line <= before + len(indices):
                return offset + int(indices[line - before - 1]) + 1
        return line

    def first_key(self) -> tuple | None:
        """The first row's key, read from a fresh pass (the interval as it will be written)."""
        if not self._planned:
            self._plan()
        for _, arrays in self._factory(again=True):
            if "symbol" not in arrays or "timestamp" not in arrays:
                return None
            symbol, stamp = arrays["symbol"][0].as_py(), self._utc_micros(arrays["timestamp"][:1])[0].as_py()
            if not isinstance(symbol, str) or stamp is None:
                return None
            if "interval" in arrays:
                interval = arrays["interval"][0].as_py()
            else:
                interval = self._interval or (self._by_symbol or {}).get(symbol, Price.interval.default)
            return symbol, interval, stamp.replace(tzinfo=dt.timezone.utc)
        return None

    def located(self, number: int | None) -> dict:
        return ({"source": self.source} if self.source else {}) if number is None else self._where(number)

    def verdict(self, line: int) -> tuple[DataValidationError | None, object]:
        """Validation's error for the frame row written as COPY line ``line``.

        The server reports a refusal only once the whole COPY was sent, so
        the chunk may be gone: then it is read again from the frame (or file).
        """
        line = self._row_of(line)
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
