"""The one reader of price CSV files: ``copy_from(path)`` and ``upsert_many(path)`` both use it.

The header is read here; the body goes to the server as it is (``COPY ...
FORMAT csv``), which parses it and holds every row to the table's rules.
Python looks only at chunks one regex cannot vouch for. A server refusal is
mapped back to the file, its line and the column.
"""
from __future__ import annotations

import bisect
import csv
import itertools
import os
import re
from typing import Callable


from ..errors import DataValidationError
from ..intervals import interval as canonical_interval
from ..models import PRICE_COLUMNS, PRICE_INPUT_COLUMNS, Price, price_column, validate_price_row
from ..validation import unreadable
from ._copy import copy

PRICE_HEADER = ",".join(PRICE_COLUMNS[:-1]) + "[,interval][,adj_close]"
"""The header of a price CSV file, for messages (any column order)."""
# The first column's name when pandas writes a frame's datetime index (unnamed, or yfinance's):
# without a timestamp column, it is the timestamp.
_INDEX_NAMES = ("", "date", "datetime")
_EMPTY_INTERVAL = "an interval in every line of the interval column (or interval= for the empty cells)"

Progress = Callable[[int], None]

# Timestamps of a CSV file: ISO 8601 only. PostgreSQL's own input also takes
# '03/04/25' (2003-04-25 under YMD), 'Jan 2 2024', 'epoch', 'now', 'J2460000',
# '24:00:00' and ':60' (the next day or minute), zone names and rounds past 6
# decimals, so the text is checked before the server parses it. Out-of-range
# months and days the server refuses by itself.
_ISO_TIMESTAMP = (r"[0-9]{4}-[0-9]{2}-[0-9]{2}"
                  r"(?:[T ](?:[01][0-9]|2[0-3]):[0-5][0-9](?::[0-5][0-9](?:\.[0-9]{1,6})?)?)?"
                  r"(?:Z|[+-][0-9]{2}(?::?[0-9]{2})?)?")
_ISO_TIMESTAMP_RE = re.compile(_ISO_TIMESTAMP)
ISO_EXPECTED = "an ISO-8601 timestamp (YYYY-MM-DD[THH:MM[:SS[.ffffff]]][Z|+HH:MM])"
_MAX_LINE = 1 << 20  # bytes: memory stays bounded even for a file without line breaks
_END_OF_COPY = b"\\."  # alone on a line, it ends COPY's data: the rest of the file would be dropped
_LINE_END = re.compile(rb"\r?\n")
_CSV_SETTINGS = ("SELECT current_setting('timezone'), current_setting('datestyle'), "
                 "set_config('timezone', 'UTC', true), set_config('datestyle', 'ISO, YMD', true)")
_CSV_RESTORE = "SELECT set_config('timezone', %s, true), set_config('datestyle', %s, true)"


def csv_header(handle, path: str, symbol: str | None = None) -> tuple[list[str], int] | None:
    """The column names of a price CSV file's header line and the line's size in bytes.

    Reads one line of the binary file ``handle`` (BOM, spaces and case
    ignored: ``Adj Close`` is ``adj_close``); ``None`` for an empty file. Without a timestamp
    column, a first column named ``Date``, ``Datetime`` or nothing (a frame's index as pandas
    writes it) is the timestamp. ``DataValidationError`` at ``path``, line 1, naming the column
    (as written) for an unknown, repeated or missing one.
    With ``symbol`` (every line's symbol) the file must have no symbol column.
    """
    first = handle.readline(_MAX_LINE)
    if not first:
        return None
    at = {"source": path, "line": 1}
    if not first.endswith(b"\n") and len(first) >= _MAX_LINE:  # one huge line: never read it whole
        raise DataValidationError("header", "<a line over 1 MiB>", f"the header {PRICE_HEADER}", **at)
    try:
        text = first.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataValidationError("header", exc.object[exc.start:exc.end], "UTF-8 text", **at) from None
    try:
        written = [name.strip() for name in next(csv.reader([text]), [])]
    except csv.Error as exc:  # e.g. a file with \r line ends only: one "line"
        raise DataValidationError("header", text[:80], f"a CSV header line ({exc})", **at) from None
    header = [price_column(name) or name.lower() for name in written]
    if header and "timestamp" not in header and header[0] in _INDEX_NAMES:
        header[0] = "timestamp"  # a frame's datetime index, as pandas' to_csv writes it
    for position, name in enumerate(header):
        if name not in PRICE_INPUT_COLUMNS:
            raise DataValidationError(written[position] or "header", written[position],
                                      f"a column of the header {PRICE_HEADER} (column {position + 1}; "
                                      "a column such as dividends or splits is not kept: drop it)", **at)
        if header.index(name) != position:
            raise DataValidationError(name, name, "each column once", **at)
    if symbol is not None and "symbol" in header:
        raise DataValidationError("symbol", symbol, "symbol= only for a file without a symbol column", **at)
    for name in PRICE_COLUMNS:
        if name not in header and name != "interval" and not (name == "symbol" and symbol is not None):
            raise DataValidationError(name, None, f"a column of the header {PRICE_HEADER} "
                                      f"{'(or symbol=) ' if name == 'symbol' else ''}", **at)
    return header, len(first)


def _plain_lines(header: list[str]) -> re.Pattern:
    """Matches a chunk of whole lines that need no look from Python.

    Every line has ``len(header)`` unquoted fields, the timestamp one ISO
    8601, the interval one (if any) not empty. One C-level match per chunk
    (~0.5 us per line); a chunk that does not match is checked line by line.
    """
    fields = [rb"[^,\"\r\n]*"] * len(header)
    fields[header.index("timestamp")] = _ISO_TIMESTAMP.encode()
    if "interval" in header:  # not empty (that takes the default); the table's rule judges the rest
        fields[header.index("interval")] = Price._meta.rules.pattern("interval").pattern.encode()
    line = b",".join(fields)
    return re.compile(rb"(?:" + line + rb"\r?\n)*(?:" + line + rb")?")


class CsvBody:
    """The body of a price CSV file, read for ``COPY ... FROM STDIN WITH (FORMAT csv)``.

    Python reads whole lines, 64 KiB at a time, and passes a chunk on as it
    is when one regex vouches for all of it. Other chunks are looked at line
    by line: blank lines are dropped (and line numbers remapped), an empty
    interval cell gets ``interval``, and a timestamp that is not ISO 8601, a
    line break inside quotes or COPY's end-of-data marker ``\\.`` is refused.
    """

    def __init__(self, handle, path: str, header: list[str], interval: str | None, progress: Progress | None = None,
                 symbol: str | None = None):
        self._handle, self.path, self._progress = handle, path, progress
        self._start = handle.tell() if handle.seekable() else None  # where the body begins
        self._read = 0  # bytes of the body read
        self.header = header
        self._plain = _plain_lines(header)
        self._timestamp_at = header.index("timestamp")
        self._interval_at = header.index("interval") if "interval" in header else None
        self.interval = interval
        self.symbol = symbol
        # Without an interval column, each line gets the interval given appended (after blank lines
        # are dropped; with none given, the staging table infers it); with symbol=, the symbol.
        extra = {"interval": None if "interval" in header else interval, "symbol": symbol}
        extra = {name: value for name, value in extra.items() if value is not None}
        self.columns = header + list(extra)
        self._suffix = "".join(f",{value}" for value in extra.values()).encode() or None
        self._sent = 0  # data lines handed to COPY
        self._file_line = 1  # last file line read (the header is line 1)
        self._marks: list[int] = []  # COPY line numbers from which ...
        self._offsets: list[int] = []  # ... this many more file lines were skipped
        self.error: BaseException | None = None

    def read(self, size: int = -1) -> bytes:
        try:
            chunk = b""
            while not chunk:  # b"" ends the COPY: a chunk of blank lines only must not
                raw = self._handle.read(64 * 1024)
                if raw and not raw.endswith(b"\n"):
                    raw += self._handle.readline(_MAX_LINE)
                    if not raw.endswith(b"\n") and len(raw.rpartition(b"\n")[2]) >= _MAX_LINE:
                        line = self._file_line + raw.count(b"\n") + 1
                        raise DataValidationError("row", "<a line over 1 MiB>", "a price row (a line break)",
                                                  source=self.path, line=line)
                if not raw:
                    return raw
                self._read += len(raw)
                if self._progress is not None:
                    self._progress(len(raw))
                if self._plain.fullmatch(raw):
                    lines = raw.count(b"\n") + (not raw.endswith(b"\n"))
                    self._sent += lines
                    self._file_line += lines
                    chunk = raw
                else:
                    chunk = self._checked(raw)
            if self._suffix is not None:
                chunk = _LINE_END.sub(self._suffix + b"\\g<0>", chunk)
                if not chunk.endswith(b"\n"):
                    chunk += self._suffix
            return chunk
        except OSError as exc:  # the file became unreadable part-way
            self.error = unreadable(self.path, exc)
            raise self.error from exc
        except BaseException as exc:  # psycopg2 would report a generic ".read() call" error
            self.error = exc
            raise

    def _checked(self, chunk: bytes) -> bytes:
        kept = []
        lines = [line + b"\n" for line in chunk.split(b"\n")]
        lines[-1] = lines[-1][:-1]  # what follows the last newline: b"" or a last line without one
        for line in filter(None, lines):  # lines counted as COPY and read() count them: by b"\n"
            self._file_line += 1
            stripped = line.rstrip(b"\r\n")
            if not stripped:  # blank: COPY would read it as a row of one empty field
                self._marks.append(self._sent + 1)
                self._offsets.append(self._file_line - 1 - self._sent)
                continue
            where = {"source": self.path, "line": self._file_line}
            if stripped == _END_OF_COPY:
                raise DataValidationError("row", "\\.", "a price row (\\. would end the COPY early)", **where)
            text = stripped.decode("utf-8", "replace")
            if stripped.count(b'"') % 2 or b"\r" in stripped:
                # COPY would join it to the next line (a quoted field spanning lines) or refuse the \r;
                # either way the line numbers of everything after would no longer be the file's.
                raise DataValidationError("row", text, "one record per line (no line break inside quotes)", **where)
            try:
                record = next(csv.reader([text]))
            except csv.Error as exc:
                raise DataValidationError("row", text, f"well-formed CSV ({exc})", **where) from None
            if self._timestamp_at < len(record):  # a missing field or an empty cell: the server names it
                value = record[self._timestamp_at].strip()
                if value and not _ISO_TIMESTAMP_RE.fullmatch(value):
                    raise DataValidationError("timestamp", value, ISO_EXPECTED, **where)
            cell = self._interval_at
            if cell is not None and cell < len(record):
                given = record[cell].strip()
                try:  # an empty cell takes the interval, as a missing column does; '1 hour' is stored as '1h'
                    spelled = canonical_interval(given) if given else (self.interval or "")
                except DataValidationError as exc:
                    raise DataValidationError("interval", record[cell], exc.expected, **where) from None
                if spelled != record[cell]:  # none given: NULL, which the server refuses (see row())
                    record[cell] = spelled
                    line = _csv_text(record).encode() + line[len(stripped):]
            self._sent += 1
            kept.append(line)
        return b"".join(kept)

    @property
    def rereadable(self) -> bool:
        """Whether :meth:`rewound` can read the file again (a FIFO cannot be)."""
        return self._start is not None and os.path.isfile(self.path)

    def rewound(self) -> CsvBody:
        """A body reading this :attr:`rereadable` file again from its first data line.

        Its progress reports only the bytes beyond those this one reported.
        """
        self._handle.seek(self._start)
        skip, progress = self._read, self._progress

        def beyond(size: int) -> None:
            nonlocal skip
            size, skip = size - min(size, skip), skip - min(size, skip)
            if size:
                progress(size)

        return CsvBody(self._handle, self.path, self.header, self.interval, progress and beyond, self.symbol)

    def file_line(self, copy_line: int) -> int:
        """The file line of COPY's data line ``copy_line`` (1-based)."""
        at = bisect.bisect_right(self._marks, copy_line) - 1
        return copy_line + 1 + (self._offsets[at] if at >= 0 else 0)

    def where(self, line: int) -> dict:
        return {"source": self.path, "line": self.file_line(line)}

    def first_key(self) -> tuple | None:
        return None  # the body is the server's to parse

    def located(self, number: int | None) -> dict:
        return {"source": self.path} if number is None else self.where(number)

    @property
    def complete(self) -> bool:
        """An interval given, or a column of them (an empty cell is then refused): none left to infer."""
        return self.interval is not None or "interval" in self.header

    def verdict(self, line: int) -> tuple[DataValidationError | None, object]:
        """Validation's error for the file line of COPY line ``line``, its value the cell as written.

        The line is read again when the file can be; a FIFO's line is gone,
        and the server's words serve. Bad bytes and a wrong number of fields
        are the line's own errors.
        """
        at = self.where(line)
        text = _file_line(self.path, at["line"])
        if text is None:
            return None, None
        try:
            record = next(csv.reader([text]), [])
        except csv.Error:
            return None, text
        if "\ufffd" in text and not _decodes(self.path, at["line"]):
            return DataValidationError("row", text, "UTF-8 text"), text
        if len(record) != len(self.header):
            return DataValidationError("row", text, f"{len(self.header)} fields ({', '.join(self.header)})"), text
        cells = dict(zip(self.header, record))
        try:
            self.row(cells)
        except DataValidationError as error:
            return DataValidationError(error.field, cells.get(error.field, error.value), error.expected), text
        return None, text

    def row(self, cells: dict[str, str]) -> dict:
        """The validated row of a record's ``cells`` read as COPY reads them: an empty cell is NULL."""
        data = {name: cell if cell.strip() else None for name, cell in cells.items()}
        if self.symbol is not None:
            data["symbol"] = self.symbol
        if data.get("interval", "") is None:
            del data["interval"]
            if self.interval is None:  # the row's other verdicts first, as the server checks them
                validate_price_row(data, Price.interval.default)
                raise DataValidationError("interval", cells["interval"], _EMPTY_INTERVAL)
        return validate_price_row(data, self.interval)

    def copy_into(self, db, table: str) -> int:
        """COPY the body into ``table`` on the session's connection; returns the number of rows."""
        # Naive timestamps are UTC and day-first/month-first dates are refused, whatever the
        # caller's session set (restored after: inside a caller's transaction SET LOCAL lasts).
        settings = db.execute_sql(_CSV_SETTINGS).fetchone()
        columns = ", ".join(f'"{c}"' for c in self.columns)
        count = copy(db, f"COPY {table} ({columns}) FROM STDIN WITH (FORMAT csv)", self)
        db.execute_sql(_CSV_RESTORE, settings[:2])
        return count


def _csv_text(record: list[str]) -> str:
    """``record`` as one CSV line (quoted where needed), without a line end."""
    return ",".join(f'"{c}"' if any(ch in c for ch in ',"\r\n') else c for c in
                    (c.replace('"', '""') if '"' in c else c for c in record))


def _decodes(path: str, number: int) -> bool:
    """Whether line ``number`` of the file is valid UTF-8."""
    with open(path, "rb") as handle:
        for line in itertools.islice(handle, number - 1, number):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError:
                return False
    return True


def _file_line(path: str, number: int) -> str | None:
    """Line ``number`` of a regular file, for an error; ``None`` for a FIFO (it cannot be read twice)."""
    if not os.path.isfile(path):
        return None
    with open(path, "rb") as handle:
        for line in itertools.islice(handle, number - 1, number):
            return line.decode("utf-8", "replace").rstrip("\r\n")
    return None


