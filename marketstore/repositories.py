"""The seven specialised repositories: each holds only its own queries.

CRUD is inherited from :class:`~marketstore.repository.BaseRepository`. Every
method validates its parameters before touching the database (raising
:class:`DataValidationError` naming the parameter and value), runs in
``self.session(...)`` so callers can compose several calls into one
``get_db_session()`` transaction, and sends every value as a bound parameter.

Conventions shared by all queries:

* time ranges are half-open, ``start <= t < end``; datetimes may be naive
  (taken as UTC) or aware, and every datetime returned is aware UTC;
* ``since`` is inclusive (``t >= since``);
* ``as_of`` (point in time): only rows whose article was ingested at or
  before ``as_of`` are visible; an event without an article is visible when its
  own ``timestamp`` is at or before ``as_of``;
* buckets (``resample``, ``timeseries``) are ``date_bin`` buckets aligned to
  Monday 2000-01-03 00:00 UTC, so hours and days fall on UTC boundaries and
  weeks start on Monday; each is labelled by its start, and buckets without
  rows are omitted.
"""
from __future__ import annotations

import bisect
import csv
import datetime as dt
import gc
import itertools
import os
import re
import threading
from contextlib import contextmanager
from decimal import Decimal
from typing import Any, Callable, Iterable, Iterator, Mapping, NamedTuple

import peewee
import psycopg2
from peewee import JOIN, SQL, Expression, fn

from .errors import DataValidationError, IntegrityViolation, MarketstoreError, NotFoundError
from .models import (
    INTERVAL_PATTERN,
    ORDER_STATUSES,
    SYMBOL_PATTERN,
    SIGNAL_TYPES,
    UTC,
    Article,
    BacktestResult,
    Event,
    Order,
    OrderEvent,
    Price,
    SentimentScore,
    TradingSignal,
    _text as _check_text,
    _timestamp,
    config_hash,
)
from .repository import MAX_PAGE, BaseRepository, _positive_int

# -- parameter checks -----------------------------------------------------------

MAX_SYMBOLS = 10_000  # latest_for_symbols: one array parameter
MAX_QUERY_TEXT = 1_000  # search text, metric names, event types


def _text(name: str, value, max_length: int) -> str:
    """A non-empty string without NUL of at most ``max_length`` characters.

    Content is not restricted further: it is only ever sent as a bound
    parameter, so quotes or semicolons are data (and simply match nothing).
    """
    if not isinstance(value, str) or not value:
        raise DataValidationError(name, value, "a non-empty string")
    return _check_text(name, value, max_length)  # NUL, lone surrogates, length: the models' rules


def _when(name: str, value) -> dt.datetime:
    """An aware UTC datetime from a datetime (naive = UTC) or ISO-8601 string."""
    try:
        return _timestamp(name, value)
    except (DataValidationError, OverflowError):  # OverflowError: beyond datetime's range once in UTC
        raise DataValidationError(name, value, "a datetime (naive = UTC) or ISO-8601 string") from None


def _maybe_when(name: str, value) -> dt.datetime | None:
    return None if value is None else _when(name, value)


def _span(start, end) -> tuple[dt.datetime, dt.datetime]:
    start, end = _when("start", start), _when("end", end)
    if end < start:
        raise DataValidationError("end", end, f"a time at or after start ({start.isoformat()})")
    return start, end


def _row_id(name: str, value) -> int:
    """The id of a row of an ``integer``-keyed table (articles, trading_signals)."""
    return _positive_int(name, value, 2**31 - 1)


def _limit(value, name: str = "limit") -> int:
    return _positive_int(name, value, MAX_PAGE)


def _choice(name: str, value, choices) -> str:
    if value not in choices:
        raise DataValidationError(name, value, f"one of {', '.join(choices)}")
    return value


def _interval(value) -> str:
    if not isinstance(value, str) or not re.fullmatch(INTERVAL_PATTERN, value):
        raise DataValidationError("interval", value, "a bar interval such as 1m, 5m, 1h, 1d, 1w, 1mo")
    return value


_BUCKET_UNITS = {
    unit: seconds
    for names, seconds in (
        (("s", "sec", "secs", "second", "seconds"), 1),
        (("m", "min", "mins", "minute", "minutes"), 60),
        (("h", "hr", "hrs", "hour", "hours"), 3600),
        (("d", "day", "days"), 86400),
        (("w", "week", "weeks"), 604800),
    )
    for unit in names
}
_BUCKET_PATTERN = re.compile(r"\s*(\d{1,6})?\s*([a-z]+)\s*", re.IGNORECASE)
# date_bin aligns buckets to this origin: a Monday at midnight UTC.
BUCKET_ORIGIN = dt.datetime(2000, 1, 3, tzinfo=UTC)


def _bucket(value) -> dt.timedelta:
    """A bucket width: a positive ``timedelta`` or text like ``'1 hour'``, ``'15m'``, ``'1d'``.

    Months and years are refused: they have no fixed width (``date_bin`` cannot bin by them).
    """
    expected = "a positive timedelta or text such as '1 hour', '15 minutes', '15m', '1d', '1 week'"
    if isinstance(value, dt.timedelta):
        if value <= dt.timedelta(0):
            raise DataValidationError("bucket", value, expected)
        return value
    match = _BUCKET_PATTERN.fullmatch(value) if isinstance(value, str) else None
    unit = _BUCKET_UNITS.get(match.group(2).lower()) if match else None
    count = int(match.group(1) or 1) if match else 0
    if unit is None or count < 1:
        raise DataValidationError("bucket", value, expected)
    return dt.timedelta(seconds=count * unit)


def _aware(value: dt.datetime) -> dt.datetime:
    return value.astimezone(UTC)


def _visible_to(article, as_of: dt.datetime | None):
    """Condition: the article was known (ingested) at ``as_of``."""
    return None if as_of is None else article.ingested_at <= as_of


def _contains(field, item: str):
    """``field @> ARRAY[item]::text[]``: array containment, the operator a GIN index serves."""
    return Expression(field, "@>", SQL("ARRAY[%s]::text[]", [item]))


def _where(query, *conditions):
    """``query.where(...)`` of the conditions that are not ``None``."""
    conditions = [c for c in conditions if c is not None]
    return query.where(*conditions) if conditions else query


# Everything but the generated search vector: large, and of no use to callers.
_ARTICLE_FIELDS = [f for f in Article._meta.sorted_fields if f is not Article.search_vector]
_ARTICLE_COLUMNS = ", ".join(f'a."{f.column_name}"' for f in _ARTICLE_FIELDS)


# -- prices ---------------------------------------------------------------------

class PriceBar(NamedTuple):
    """One resampled OHLCV bar; ``bucket`` is the (aware UTC) start of its bucket."""

    bucket: dt.datetime
    open: Decimal
    high: Decimal
    low: Decimal
    close: Decimal
    volume: Decimal
    count: int  # source bars in the bucket


PRICE_COLUMNS = ("symbol", "timestamp", "open", "high", "low", "close", "volume", "interval")
"""Column order of ``copy_from`` sequences and CSV rows (``interval`` may be left out)."""
PRICE_HEADER = ",".join(PRICE_COLUMNS[:-1]) + "[,interval]"
"""The header of a price CSV file, for messages (any column order)."""

_PRICE_KEY = ("symbol", "interval", "timestamp")

_PRICE_FIELDS = Price._meta.sorted_fields
PRICE_ROW_COLUMNS = tuple(f.column_name for f in _PRICE_FIELDS)
"""Column order of the tuples ``get_range(..., as_tuples=True)`` returns: ``("id",) + PRICE_COLUMNS``."""
_PRICE_NAMES = tuple(f.name for f in _PRICE_FIELDS)
_PRICE_SELECT = ", ".join(f'"{c}"' for c in PRICE_ROW_COLUMNS)
_TIMESTAMP_AT = PRICE_ROW_COLUMNS.index("timestamp")
_SYMBOL_AT = PRICE_ROW_COLUMNS.index("symbol")


def _utc_rows(rows: list[tuple]) -> list[tuple]:
    """``rows`` (full price rows) with every timestamp aware UTC.

    Sessions run with ``timezone=UTC``, so psycopg2 already returns
    ``tzinfo is timezone.utc`` and ``rows`` comes back unchanged; only a caller
    who ran ``SET timezone`` in its session pays for a conversion.
    """
    at = _TIMESTAMP_AT
    if all(row[at].tzinfo is UTC for row in rows):
        return rows
    return [(*row[:at], _aware(row[at]), *row[at + 1:]) for row in rows]


def _price_models(rows: list[tuple]) -> list[Price]:
    """``Price`` instances of full rows in ``PRICE_ROW_COLUMNS`` order.

    Built directly in the state ``Model.__init__`` leaves for a fetched row
    (``__data__`` holding the values, nothing dirty, no related objects):
    peewee's model cursor would build a dict per row through a converter per
    column, then set each field through its descriptor, 2-3x the cost of the
    fetch itself. Its converters are no-ops here: psycopg2 returns ``Decimal``
    for numeric and, via :func:`_utc_rows`, aware UTC datetimes. The instances
    are ordinary ones: attribute access, ``save()``, equality and repr work.
    """
    new, names, out = Price.__new__, _PRICE_NAMES, []
    append = out.append
    with _no_gc():
        for row in _utc_rows(rows):
            obj = new(Price)
            obj.__data__ = dict(zip(names, row))
            obj._dirty = set()
            obj.__rel__ = {}
            append(obj)
    return out


_gc_lock = threading.Lock()
_gc_paused = 0  # _no_gc blocks running, in any thread
_gc_resume = False  # whether the first of them found the collector enabled


@contextmanager
def _no_gc():
    """Pause the cyclic garbage collector while many long-lived objects are built.

    Each instance and its ``_dirty`` set are tracked containers that all
    survive, so the collector would run again and again over them (and over
    everything else the process holds) without freeing anything: measured
    here, a third of the time of building 100,000 models. Nothing built
    here forms a cycle. The collector is process-wide: it stays paused until
    the last block in any thread ends, then is enabled again only if it was
    when the first began (a ``gc.disable()`` made in between is undone).
    """
    global _gc_paused, _gc_resume
    with _gc_lock:
        if _gc_paused == 0:
            _gc_resume = gc.isenabled()
            gc.disable()
        _gc_paused += 1
    try:
        yield
    finally:
        with _gc_lock:
            _gc_paused -= 1
            if _gc_paused == 0 and _gc_resume:
                gc.enable()


def _price_row(data, where: str, interval: str = Price.interval.default) -> dict:
    """Validate one input row (a mapping or a sequence in ``PRICE_COLUMNS`` order).

    ``where`` ("row 3", "prices.csv, line 4") prefixes the field in any error;
    a row without an interval gets ``interval``.
    """
    if isinstance(data, Mapping):
        row = dict(data)
    elif isinstance(data, (list, tuple)) and len(data) in (len(PRICE_COLUMNS) - 1, len(PRICE_COLUMNS)):
        row = dict(zip(PRICE_COLUMNS, data))
    else:
        raise DataValidationError(where, data, f"a mapping or a sequence of {', '.join(PRICE_COLUMNS)} "
                                               "(interval optional)")
    for name in row:
        if name not in PRICE_COLUMNS:
            raise DataValidationError(f"{where}: {name}", row[name], f"one of the columns {', '.join(PRICE_COLUMNS)}")
    try:
        row = Price.validate(row)
    except DataValidationError as exc:
        raise DataValidationError(f"{where}: {exc.field}", exc.value, exc.expected) from None
    row.setdefault("interval", interval)
    return row


class _CopyStream:
    """A read-only file over COPY text lines produced on demand, for ``cursor.copy_expert``.

    Each ``read()`` returns the next ``rows_per_read`` lines joined (psycopg2
    encodes the text), so only one chunk is ever held in memory and the server
    parses one chunk while the next is built. ``rows`` counts the lines handed
    out. An exception raised by the producer is kept in ``error`` (psycopg2
    replaces it by a generic "error in .read() call") and re-raised, which
    aborts the COPY.
    """

    def __init__(self, lines: Iterator[str], rows_per_read: int = 2000):
        self._lines = lines
        self._rows_per_read = rows_per_read
        self.rows = 0
        self.error: BaseException | None = None

    def read(self, size: int = -1) -> str:
        try:
            chunk = list(itertools.islice(self._lines, self._rows_per_read))
        except BaseException as exc:  # whatever the producer raised (Ctrl-C too): kept for the caller
            self.error = exc
            raise
        self.rows += len(chunk)
        return "".join(chunk)


# Timestamps of a CSV file: ISO 8601 only. PostgreSQL's own input also takes
# '03/04/25' (2003-04-25 under YMD), 'Jan 2 2024', 'epoch', 'now', 'J2460000',
# '24:00:00' and ':60' (the next day or minute), zone names and rounds past 6
# decimals, so the text is checked before the server parses it. Out-of-range
# months and days the server refuses by itself.
_ISO_TIMESTAMP = (r"[0-9]{4}-[0-9]{2}-[0-9]{2}"
                  r"(?:[T ](?:[01][0-9]|2[0-3]):[0-5][0-9](?::[0-5][0-9](?:\.[0-9]{1,6})?)?)?"
                  r"(?:Z|[+-][0-9]{2}(?::?[0-9]{2})?)?")
_ISO_TIMESTAMP_RE = re.compile(_ISO_TIMESTAMP)
_MAX_LINE = 1 << 20  # bytes: memory stays bounded even for a file without line breaks
_END_OF_COPY = b"\\."  # alone on a line, it ends COPY's data: the rest of the file would be dropped
_LINE_END = re.compile(rb"\r?\n")
_COPY_ERROR = re.compile(r'COPY prices, line (\d+)(?:, column (\w+))?(?:: "(.*)")?', re.DOTALL)


def _plain_lines(header: list[str]) -> re.Pattern:
    """Matches a chunk of whole lines that need no look from Python.

    Every line has ``len(header)`` unquoted fields, the timestamp one ISO
    8601. One C-level match per chunk (~0.5 us per line); a chunk that does
    not match -- blank lines, quotes, another field count, another timestamp
    form -- is checked line by line (:meth:`_CsvBody._checked`).
    """
    fields = [rb"[^,\"\r\n]*"] * len(header)
    fields[header.index("timestamp")] = _ISO_TIMESTAMP.encode()
    line = b",".join(fields)
    return re.compile(rb"(?:" + line + rb"\r?\n)*(?:" + line + rb")?")


class _CsvBody:
    """The body of a price CSV file, read for ``COPY ... FROM STDIN WITH (FORMAT csv)``.

    The server parses the bytes and holds every row to the table's
    constraints; Python reads them in whole lines, 64 KiB at a time, and
    passes on a chunk untouched when one regex vouches for all of it. Other
    chunks are looked at line by line: blank lines are dropped (and line
    numbers remapped), and a timestamp that is not ISO 8601, a line break
    inside quotes or COPY's end-of-data marker ``\\.`` is refused.
    """

    def __init__(self, handle, path: str, header: list[str], interval: str | None = None, progress=None):
        self._handle, self._path, self._progress = handle, path, progress
        self._plain = _plain_lines(header)
        self._timestamp_at = header.index("timestamp")
        # A file without an interval column, loaded with another interval than the column
        # default: each line gets it appended (after blank lines are dropped).
        self.interval = interval
        self._suffix = None if interval is None else f",{interval}".encode()
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
                        raise DataValidationError(f"{self._path}, line {line}", "<a line over 1 MiB>",
                                                  "a price row (a line break)")
                if not raw:
                    return raw
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
            where = f"{self._path}, line {self._file_line}"
            if stripped == _END_OF_COPY:
                raise DataValidationError(where, "\\.", "a price row (\\. would end the COPY early)")
            text = stripped.decode("utf-8", "replace")
            if stripped.count(b'"') % 2 or b"\r" in stripped:
                # COPY would join it to the next line (a quoted field spanning lines) or refuse the \r;
                # either way the line numbers of everything after would no longer be the file's.
                raise DataValidationError(where, text, "one record per line (no line break inside quotes)")
            try:
                record = next(csv.reader([text]))
            except csv.Error as exc:
                raise DataValidationError(where, text, f"well-formed CSV ({exc})") from None
            if self._timestamp_at < len(record):  # a missing field: the server names it
                value = record[self._timestamp_at].strip()
                if not _ISO_TIMESTAMP_RE.fullmatch(value):
                    raise DataValidationError(f"{where}: timestamp", value,
                                              "an ISO-8601 timestamp (YYYY-MM-DD[THH:MM[:SS[.ffffff]]][Z|+HH:MM])")
            self._sent += 1
            kept.append(line)
        return b"".join(kept)

    def file_line(self, copy_line: int) -> int:
        """The file line of COPY's data line ``copy_line`` (1-based)."""
        at = bisect.bisect_right(self._marks, copy_line) - 1
        return copy_line + 1 + (self._offsets[at] if at >= 0 else 0)


def price_csv_header(handle, path: str) -> tuple[list[str], int] | None:
    """The column names of a price CSV file's header line and the line's size in bytes.

    Reads one line of the binary file ``handle`` (BOM, spaces and case
    ignored); ``None`` for an empty file. ``DataValidationError`` naming
    ``path``, line 1 and the column for an unknown, repeated or missing one.
    """
    first = handle.readline(_MAX_LINE)
    if not first:
        return None
    if not first.endswith(b"\n") and len(first) >= _MAX_LINE:  # one huge line: never read it whole
        raise DataValidationError(f"{path}, line 1", "<a line over 1 MiB>", f"the header {PRICE_HEADER}")
    try:
        text = first.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataValidationError(f"{path}, line 1", exc.object[exc.start:exc.end], "UTF-8 text") from None
    try:
        header = [name.strip().lower() for name in next(csv.reader([text]), [])]
    except csv.Error as exc:  # e.g. a file with \r line ends only: one "line"
        raise DataValidationError(f"{path}, line 1", text[:80], f"a CSV header line ({exc})") from None
    for position, name in enumerate(header):
        if name not in PRICE_COLUMNS:
            raise DataValidationError(f"{path}, line 1: {name or f'column {position + 1}'}", name,
                                      f"a column of the header {PRICE_HEADER}")
        if header.index(name) != position:
            raise DataValidationError(f"{path}, line 1: {name}", name, "each column once")
    for name in PRICE_COLUMNS:
        if name not in header and name != "interval":
            raise DataValidationError(f"{path}, line 1: {name}", None, f"a column of the header {PRICE_HEADER}")
    return header, len(first)


def _csv_line(path: str, number: int) -> str | None:
    """Line ``number`` of a regular file, for an error message; ``None`` for a FIFO (it cannot be read twice)."""
    if not os.path.isfile(path):
        return None
    with open(path, "rb") as handle:
        for line in itertools.islice(handle, number - 1, number):
            return line.decode("utf-8", "replace").rstrip("\r\n")
    return None


def _csv_error(exc: psycopg2.Error, path: str, body: _CsvBody, header: list[str]) -> MarketstoreError | None:
    """The server's refusal of a CSV line as an error naming the file, the line and the field.

    Bad values (SQLSTATE class 22), missing ones (23502) and broken rules
    (23514) are the file's fault: a ``DataValidationError``. The line is
    validated again in Python when the file can be re-read, so the message is
    the one a row would get; otherwise it is built from the server's. A bar
    already stored, or repeated in the file, is an ``IntegrityViolation``
    naming the line. Anything else (a lost connection...) is left to the
    usual translation.
    """
    code = exc.pgcode or ""
    found = _COPY_ERROR.search(getattr(exc.diag, "context", None) or "")
    if not found or not (code.startswith("22") or code in ("23502", "23505", "23514")):
        return None
    line, column, quoted = body.file_line(int(found.group(1))), found.group(2), found.group(3)
    where = f"{path}, line {line}"
    if code == "23505":
        return IntegrityViolation(f"{where}: {exc.diag.message_primary} ({exc.diag.message_detail}): the bar is "
                                  "already stored, or appears earlier in the file")
    text = _csv_line(path, line)
    try:
        record = next(csv.reader([text]), []) if text is not None else None
    except csv.Error:
        record = None
    if record is not None and body.interval is not None:
        record.append(body.interval)  # appended by _CsvBody, as the server saw it
    if code == "22021":  # invalid byte sequence
        return DataValidationError(where, text if text is not None else quoted, "UTF-8 text")
    if record is not None and len(record) != len(header):
        return DataValidationError(where, text, f"{len(header)} fields ({', '.join(header)})")
    if record is not None:
        try:
            _price_row(dict(zip(header, record)), where)
        except DataValidationError as error:
            return error
    rule = exc.diag.constraint_name
    return DataValidationError(f"{where}: {column}" if column else where, quoted if quoted is not None else text,
                               f"a row within the rule {rule}" if rule
                               else f"a value the server accepts (it said: {exc.diag.message_primary})")


_SYMBOL_RE = re.compile(SYMBOL_PATTERN)
_INTERVAL_RE = re.compile(INTERVAL_PATTERN)
_MONEY_LIMIT = Decimal(10) ** (Price.high.max_digits - Price.high.decimal_places)
_VOLUME_LIMIT = Decimal(10) ** (Price.volume.max_digits - Price.volume.decimal_places)
_SCALE = Decimal(1).scaleb(-Price.high.decimal_places)  # the columns keep 8 decimals
assert Price.volume.decimal_places == Price.high.decimal_places
_DEFAULT_INTERVAL = Price.interval.default


def _copy_line(row: dict) -> str:
    """The COPY text-format line of a row validated by :func:`_price_row`.

    No value needs escaping: symbols and intervals match their patterns (no
    tab, newline or backslash), numbers and ISO timestamps are plain ASCII.
    """
    return (f"{row['symbol']}\t{row['timestamp'].isoformat()}\t{row['open']}\t{row['high']}\t"
            f"{row['low']}\t{row['close']}\t{row['volume']}\t{row['interval']}\n")


def _fast_copy_line(data, symbols: set, intervals: set, default: str = _DEFAULT_INTERVAL) -> str | None:
    """The COPY line of the common, valid row, or ``None``: then :func:`_price_row` decides.

    Accepts only a ``dict`` of exactly the price columns (``interval``
    optional) holding ``Decimal`` prices with at most 8 decimals, a plain
    ``datetime`` and pattern-matching ``str`` symbol and interval (patterns
    checked once per distinct value: ``symbols``/``intervals`` remember the
    ones seen), and rules that one chained comparison decides (it is false for
    NaN, and a signalling comparison raises, which also means ``None``).
    Everything else -- ints, floats, strings, other types, bad values -- goes
    to the full validation, so it accepts exactly what ``_price_row`` accepts
    and errors keep naming the row and field. ~10x cheaper than
    ``Price.validate``.
    """
    try:
        if type(data) is not dict:
            return None
        size = len(data)
        if size == 8:
            iv = data["interval"]
        elif size == 7:
            iv = default
        else:
            return None
        s, ts, o, h, lo, c, v = (data["symbol"], data["timestamp"], data["open"], data["high"], data["low"],
                                 data["close"], data["volume"])
        D = Decimal
        if (type(o) is not D or type(h) is not D or type(lo) is not D or type(c) is not D
                or type(v) is not D or type(ts) is not dt.datetime or type(s) is not str or type(iv) is not str):
            return None
        if s not in symbols:
            if not _SYMBOL_RE.fullmatch(s):
                return None
            symbols.add(s)
        if iv not in intervals:
            if not _INTERVAL_RE.fullmatch(iv):
                return None
            intervals.add(iv)
        if not (0 < lo <= o <= h < _MONEY_LIMIT and lo <= c <= h and 0 <= v < _VOLUME_LIMIT):
            return None
        # More than 8 decimals: _price_row rounds them first (and the rules see the rounded value).
        q = _SCALE
        if o.quantize(q) != o or h.quantize(q) != h or lo.quantize(q) != lo or c.quantize(q) != c \
                or v.quantize(q) != v:
            return None
        tz = ts.tzinfo
        if tz is UTC:
            stamp = ts.isoformat()
        elif tz is None:
            stamp = ts.isoformat() + "+00:00"
        else:
            stamp = ts.astimezone(UTC).isoformat()
    except (LookupError, TypeError, ValueError, ArithmeticError):  # decimal signals, datetime overflow
        return None
    return f"{s}\t{stamp}\t{o}\t{h}\t{lo}\t{c}\t{v}\t{iv}\n"


def _copy_lines(records: Iterable[tuple[Any, Any]], interval: str = _DEFAULT_INTERVAL) -> Iterator[str]:
    """COPY text lines of ``(where, row)`` records; ``where`` is a label or a row number.

    The fast check first; any row it does not vouch for gets the full
    validation, whose error names ``where`` and the field. Rows without an
    interval get ``interval`` (already checked).
    """
    symbols: set = set()
    intervals: set = {interval}
    fast = _fast_copy_line
    for where, data in records:
        line = fast(data, symbols, intervals, interval)
        if line is None:
            line = _copy_line(_price_row(data, where if type(where) is str else f"row {where}", interval))
        yield line


_COPY_COLUMNS = ", ".join(f'"{c}"' for c in PRICE_COLUMNS)


def _copy(db, sql: str, stream) -> int:
    """Run ``COPY ... FROM STDIN`` of ``stream`` on the session's connection; returns the rows copied.

    A validation error raised while the stream was read is re-raised as
    itself (psycopg2 would report a generic ".read() call" error instead).
    """
    cursor = db.connection().cursor()
    try:
        cursor.copy_expert(sql, stream, size=64 * 1024)
        return cursor.rowcount
    except psycopg2.Error:
        if stream.error is not None:
            raise stream.error from None
        raise
    finally:
        cursor.close()


_CSV_SETTINGS = ("SELECT current_setting('timezone'), current_setting('datestyle'), "
                 "set_config('timezone', 'UTC', true), set_config('datestyle', 'ISO, YMD', true)")
_CSV_RESTORE = "SELECT set_config('timezone', %s, true), set_config('datestyle', %s, true)"

# upsert_many's staging table: no index, no WAL, dropped at the end of the call
# (ON COMMIT DROP too, in case the caller's transaction outlives an error).
_STAGE = "marketstore_price_stage"
_STAGE_CREATE = (
    f"CREATE TEMPORARY TABLE {_STAGE} (seq bigserial, symbol varchar(32), \"timestamp\" timestamptz, "
    "open numeric(24, 8), high numeric(24, 8), low numeric(24, 8), close numeric(24, 8), "
    "volume numeric(28, 8), \"interval\" varchar(8)) ON COMMIT DROP; "
    "SELECT current_setting('work_mem'), set_config('work_mem', '256MB', true)"
)
# ON CONFLICT may touch a row once per statement: DISTINCT ON keeps the last
# staged row (highest seq) of each key, as applying the rows in order would.
_STAGE_MERGE = (
    f"INSERT INTO prices ({_COPY_COLUMNS}) "
    f'SELECT DISTINCT ON (symbol, "interval", "timestamp") {_COPY_COLUMNS} FROM {_STAGE} '
    'ORDER BY symbol, "interval", "timestamp", seq DESC '
    'ON CONFLICT (symbol, "interval", "timestamp") DO UPDATE SET '
    + ", ".join(f"{c} = EXCLUDED.{c}" for c in ("open", "high", "low", "close", "volume"))
    + f"; DROP TABLE {_STAGE}; SELECT set_config('work_mem', %s, true)"
)


class PriceRepository(BaseRepository[Price]):
    """OHLCV bars. Served by the unique (symbol, interval, timestamp) index."""

    model = Price

    def get_range(self, symbol: str, start, end, interval: str = "1m", *,
                  as_tuples: bool = False) -> list[Price] | list[tuple]:
        """Bars of ``symbol``/``interval`` with ``start <= timestamp < end``, oldest first.

        Returns ``Price`` instances; with ``as_tuples=True``, plain tuples in
        :data:`PRICE_ROW_COLUMNS` order (``id, symbol, timestamp, open, high,
        low, close, volume, interval``; ``Decimal`` prices, aware UTC
        timestamps): the fast path for large reads, at the cost of the driver's
        own fetch. Raises ``DataValidationError`` for a bad parameter.
        """
        symbol, interval = _text("symbol", symbol, 32), _interval(interval)
        start, end = _span(start, end)
        if not isinstance(as_tuples, bool):
            raise DataValidationError("as_tuples", as_tuples, "True or False")
        sql = (f'SELECT {_PRICE_SELECT} FROM prices WHERE symbol = %s AND "interval" = %s '
               'AND "timestamp" >= %s AND "timestamp" < %s ORDER BY "timestamp"')
        with self.session("get_range") as db:
            rows = db.execute_sql(sql, (symbol, interval, start, end)).fetchall()
        return _utc_rows(rows) if as_tuples else _price_models(rows)

    def latest(self, symbol: str, interval: str = "1m") -> Price | None:
        """The newest bar of ``symbol``/``interval``, or ``None``."""
        symbol, interval = _text("symbol", symbol, 32), _interval(interval)
        query = (Price.select().where(Price.symbol == symbol, Price.interval == interval)
                 .order_by(Price.timestamp.desc()).limit(1))
        with self.session("latest"):
            return query.first()

    def latest_for_symbols(self, symbols: Iterable[str], interval: str = "1m") -> dict[str, Price]:
        """``{symbol: newest bar}`` for each of ``symbols`` that has a bar, in one statement.

        One index probe per symbol (``unnest`` + ``LATERAL ... LIMIT 1``), not a
        sort of the whole table as ``DISTINCT ON`` would need.
        """
        if isinstance(symbols, (str, bytes)) or not isinstance(symbols, Iterable):
            raise DataValidationError("symbols", symbols, "a list of symbols")
        # A symbol matching the pattern passes every _text rule; others are checked (and match nothing).
        valid = _SYMBOL_RE.fullmatch
        wanted = list(dict.fromkeys(s if type(s) is str and valid(s) else _text(f"symbols[{i}]", s, 32)
                                    for i, s in enumerate(symbols)))
        if len(wanted) > MAX_SYMBOLS:
            raise DataValidationError("symbols", f"<{len(wanted)} symbols>", f"at most {MAX_SYMBOLS} symbols")
        interval = _interval(interval)
        if not wanted:
            return {}
        sql = (f'SELECT p.* FROM unnest(%s::text[]) AS s(symbol) '
               f'CROSS JOIN LATERAL (SELECT {_PRICE_SELECT} FROM prices '
               '  WHERE prices.symbol = s.symbol AND prices."interval" = %s '
               '  ORDER BY prices."timestamp" DESC LIMIT 1) AS p')
        with self.session("latest_for_symbols") as db:
            rows = db.execute_sql(sql, (wanted, interval)).fetchall()
        return dict(zip((row[_SYMBOL_AT] for row in rows), _price_models(rows)))

    def upsert_many(self, rows: Iterable[Mapping[str, Any]], batch_size: int = 1000) -> int:
        """Insert ``rows``, or update open/high/low/close/volume where (symbol, interval, timestamp) exists.

        All rows or none: one transaction. Each row is validated as it is read
        (an error names the row number and field) and streamed with ``COPY``,
        ``batch_size`` rows per chunk, into a temporary staging table; then
        one ``INSERT ... SELECT ... ON CONFLICT DO UPDATE`` applies them all.
        A key repeated in the input: the last one wins. Returns the number of
        input rows written. Raises ``DataValidationError`` or
        ``IntegrityViolation``. Needs the ``TEMPORARY`` privilege on the
        database, which PostgreSQL grants to PUBLIC (``sql/roles.sql``).
        """
        batch_size = _limit(batch_size, "batch_size")
        if isinstance(rows, (str, bytes, Mapping)) or not isinstance(rows, Iterable):
            raise DataValidationError("rows", rows, "an iterable of price rows (mappings)")

        def records(rows):
            for number, data in enumerate(rows, 1):
                if type(data) is not dict and not isinstance(data, Mapping):
                    raise DataValidationError(f"row {number}", data, "a mapping of price columns")
                yield number, data

        with self.session("upsert_many") as db:
            if isinstance(rows, peewee.BaseQuery):  # read it first: the COPY will hold the connection
                rows = list(rows)
            stream = _CopyStream(_copy_lines(records(rows)), rows_per_read=batch_size)
            # work_mem: the DISTINCT ON sort of the staged rows stays in memory (restored after).
            work_mem = db.execute_sql(_STAGE_CREATE).fetchone()[0]
            _copy(db, f"COPY {_STAGE} ({_COPY_COLUMNS}) FROM STDIN", stream)
            db.execute_sql(_STAGE_MERGE, (work_mem,))
        return stream.rows

    def copy_from(self, rows_or_csv_path, *, interval: str = "1m",
                  progress: Callable[[int], None] | None = None) -> int:
        """Bulk-load new bars with PostgreSQL ``COPY``; returns the number of rows loaded.

        ``rows_or_csv_path`` is an iterable of rows (mappings, or sequences in
        :data:`PRICE_COLUMNS` order), validated in Python as they are read, or
        the path of a UTF-8 CSV file (a FIFO such as ``/dev/stdin`` works
        too). Either way the data is streamed, so a file of any size is never
        held in memory. Insert-only: a bar that already exists is an
        ``IntegrityViolation`` (use :meth:`upsert_many` to update). All or
        nothing: a bad row aborts the whole load with a ``DataValidationError``
        naming the row number, or the file and line, and the field.

        A CSV file's header names the columns (any order, ``interval``
        optional: ``'1m'``); its body goes to the server untouched, which
        parses it and holds every row to the table's constraints -- the same
        rules as validation. Values are read as PostgreSQL reads them:
        timestamps in ISO 8601 or another unambiguous form (naive ones are
        UTC; ``01/02/2024`` is refused as ambiguous, and so are ``now``,
        ``today``, ``tomorrow`` and ``yesterday``), numbers with at most 8
        decimals kept (more are rounded). Blank lines are skipped. ``OSError``
        if the file cannot be read.

        ``interval`` is the interval of rows (or a file) that give none;
        ``progress``, if given, is called with the number of bytes of the
        file read since its last call (for a progress bar).
        """
        interval = _interval(interval)
        if progress is not None and not callable(progress):
            raise DataValidationError("progress", progress, "a callable taking a byte count, or None")
        if isinstance(rows_or_csv_path, (str, os.PathLike)):
            path = os.fspath(rows_or_csv_path)
            if isinstance(path, bytes):
                path = os.fsdecode(path)
            _text("rows_or_csv_path", path, 4096)
            return self._copy_csv(path, interval, progress)
        if isinstance(rows_or_csv_path, (peewee.BaseQuery, peewee.ModelBase)):
            # Iterating a query runs it: before the session there is no connection, and
            # inside it the connection is busy with this COPY.
            raise DataValidationError("rows_or_csv_path", rows_or_csv_path,
                                      "rows, not a query: read it first (list(query)), or use bulk_create")
        if not isinstance(rows_or_csv_path, Iterable) or isinstance(rows_or_csv_path, (bytes, Mapping)):
            raise DataValidationError("rows_or_csv_path", rows_or_csv_path, "an iterable of rows or a CSV path")
        stream = _CopyStream(_copy_lines(enumerate(rows_or_csv_path, 1), interval))
        with self.session("copy_from") as db:
            _copy(db, f"COPY prices ({_COPY_COLUMNS}) FROM STDIN", stream)
        return stream.rows

    def _copy_csv(self, path: str, interval: str, progress) -> int:
        with open(path, "rb") as handle:  # before the session: a missing file is an OSError, no transaction
            found = price_csv_header(handle, path)
            if found is None:
                return 0
            header, header_bytes = found
            if progress is not None:
                progress(header_bytes)
            appended = None
            if "interval" not in header and interval != _DEFAULT_INTERVAL:
                appended, header = interval, header + ["interval"]
            body = _CsvBody(handle, path, header, appended, progress)
            columns = ", ".join(f'"{c}"' for c in header)
            with self.session("copy_from") as db:
                # Naive timestamps are UTC and day-first/month-first dates are refused, whatever the
                # caller's session set (restored after: inside a caller's transaction SET LOCAL lasts).
                settings = db.execute_sql(_CSV_SETTINGS).fetchone()
                try:
                    count = _copy(db, f"COPY prices ({columns}) FROM STDIN WITH (FORMAT csv)", body)
                except psycopg2.Error as exc:
                    error = _csv_error(exc, path, body, header)
                    if error is None:
                        raise
                    raise error from exc
                db.execute_sql(_CSV_RESTORE, settings[:2])
        return count

    def resample(self, symbol: str, start, end, bucket="1 hour", interval: str = "1m") -> list[PriceBar]:
        """OHLCV bars of width ``bucket`` built in SQL from the ``interval`` bars in ``[start, end)``.

        Per bucket: first open, max high, min low, last close, summed volume
        and the number of source bars; oldest first, empty buckets omitted.
        """
        symbol, interval = _text("symbol", symbol, 32), _interval(interval)
        start, end = _span(start, end)
        width = _bucket(bucket)
        sql = ('SELECT date_bin(%s, "timestamp", %s) AS bucket, '
               '(array_agg(open ORDER BY "timestamp"))[1], max(high), min(low), '
               '(array_agg(close ORDER BY "timestamp" DESC))[1], sum(volume), count(*) '
               'FROM prices WHERE symbol = %s AND "interval" = %s AND "timestamp" >= %s AND "timestamp" < %s '
               'GROUP BY 1 ORDER BY 1')
        with self.session("resample") as db:
            rows = db.execute_sql(sql, (width, BUCKET_ORIGIN, symbol, interval, start, end)).fetchall()
        return [PriceBar(_aware(b), o, h, lo, c, v, n) for b, o, h, lo, c, v, n in rows]

    def symbols(self) -> list[str]:
        """Every symbol that has bars, sorted.

        A loose index scan (one probe of the unique index per distinct
        symbol), instead of reading every row as ``SELECT DISTINCT`` would.
        """
        sql = ("WITH RECURSIVE s(symbol) AS ("
               "  (SELECT symbol FROM prices ORDER BY symbol LIMIT 1)"
               "  UNION ALL"
               "  SELECT (SELECT p.symbol FROM prices p WHERE p.symbol > s.symbol ORDER BY p.symbol LIMIT 1)"
               "  FROM s WHERE s.symbol IS NOT NULL"
               ") SELECT symbol FROM s WHERE symbol IS NOT NULL")
        with self.session("symbols") as db:
            return [symbol for (symbol,) in db.execute_sql(sql).fetchall()]

    def delete_before(self, ts) -> int:
        """Delete every bar (all symbols and intervals) with ``timestamp < ts``; returns the count.

        Retention is a sweep over the whole table, so this is a sequential scan
        by design: SPEC gives prices no timestamp index (it would slow ingest).
        """
        ts = _when("ts", ts)
        with self.session("delete_before"):
            return Price.delete().where(Price.timestamp < ts).execute()


# -- articles -------------------------------------------------------------------

class ArticleRepository(BaseRepository[Article]):
    """News articles. Returned instances leave out ``search_vector``."""

    model = Article

    def for_symbol(self, symbol: str, since=None, limit: int = 100, *, as_of=None) -> list[Article]:
        """Articles tagged ``symbol``, newest ``published_at`` first (undated last).

        ``since``: only articles published at or after it. Array containment
        (``symbols @> ARRAY[symbol]``), served by the GIN index on ``symbols``.
        """
        symbol, limit = _text("symbol", symbol, 256), _limit(limit)
        since, as_of = _maybe_when("since", since), _maybe_when("as_of", as_of)
        query = _where(Article.select(*_ARTICLE_FIELDS),
                       _contains(Article.symbols, symbol),
                       None if since is None else Article.published_at >= since,
                       _visible_to(Article, as_of))
        query = query.order_by(Article.published_at.desc(nulls="LAST"), Article.id.desc()).limit(limit)
        with self.session("for_symbol"):
            return list(query)

    def recent(self, limit: int = 100, *, as_of=None) -> list[Article]:
        """The ``limit`` newest articles by ``published_at`` (undated ones after all dated ones)."""
        limit, as_of = _limit(limit), _maybe_when("as_of", as_of)
        visible = _visible_to(Article, as_of)
        # Two index-ordered statements: ORDER BY published_at DESC NULLS LAST
        # cannot walk the (ASC NULLS LAST) published_at index, and would sort
        # the whole table on every call.
        dated = _where(Article.select(*_ARTICLE_FIELDS), Article.published_at.is_null(False), visible)
        with self.session("recent"):
            found = list(dated.order_by(Article.published_at.desc(), Article.id.desc()).limit(limit))
            if len(found) < limit:
                undated = _where(Article.select(*_ARTICLE_FIELDS), Article.published_at.is_null(), visible)
                found += list(undated.order_by(Article.id.desc()).limit(limit - len(found)))
        return found

    def search(self, text: str, limit: int = 20, *, as_of=None) -> list[Article]:
        """Full-text search over title and content, best match first.

        ``text`` is web-search syntax (``websearch_to_tsquery``: words,
        ``"a phrase"``, ``or``, ``-word``) and can never be a syntax error.
        Ranked by ``ts_rank`` (title words weigh more than content words);
        each article has its rank as ``article.rank``. Uses the GIN index on
        the generated ``search_vector``.
        """
        text, limit = _text("text", text, MAX_QUERY_TEXT), _limit(limit)
        as_of = _maybe_when("as_of", as_of)
        params: list[Any] = [text]
        visible = ""
        if as_of is not None:
            visible, params = "AND a.ingested_at <= %s ", params + [as_of]
        sql = (f"SELECT {_ARTICLE_COLUMNS}, ts_rank(a.search_vector, q) AS rank "
               "FROM articles a, websearch_to_tsquery('english', %s) AS q "
               f"WHERE a.search_vector @@ q {visible}"
               "ORDER BY rank DESC, a.published_at DESC NULLS LAST, a.id DESC LIMIT %s")
        with self.session("search"):
            return list(Article.raw(sql, *params, limit))

    def create_if_new(self, url: str, **data) -> tuple[Article, bool]:
        """Insert the article unless one with ``url`` exists: ``(article, created)``.

        Race-safe: ``INSERT ... ON CONFLICT (url) DO NOTHING`` then, if nothing
        was inserted, a read of the existing row; concurrent callers with one
        url get one row. Raises ``DataValidationError`` for bad data.
        """
        url = _text("url", url, 2048)
        row = Article.validate({**data, "url": url})
        insert = (Article.insert(row).on_conflict(action="IGNORE", conflict_target=[Article.url])
                  .returning(*_ARTICLE_FIELDS).objects(Article))
        with self.session("create_if_new"):
            for _ in range(3):  # the existing row may be deleted between the two statements
                inserted = list(insert.clone().execute())
                if inserted:
                    return inserted[0], True
                existing = Article.select(*_ARTICLE_FIELDS).where(Article.url == url).first()
                if existing is not None:
                    return existing, False
        raise NotFoundError(f"article url={url!r} kept vanishing while being created")


# -- sentiment ------------------------------------------------------------------

class SentimentBucket(NamedTuple):
    """One bucket of a sentiment time series; ``bucket`` is its (aware UTC) start."""

    bucket: dt.datetime
    average: float  # mean score in the bucket
    count: int  # scores in the bucket


def _sentiment_filters(symbol, start, end, as_of) -> tuple[str, list]:
    """WHERE clause (and its parameters) for the scores of ``symbol``'s articles in [start, end)."""
    sql = ("FROM sentiment_scores s JOIN articles a ON a.id = s.article_id "
           "WHERE a.symbols @> ARRAY[%s]::text[] AND s.timestamp >= %s AND s.timestamp < %s")
    params: list[Any] = [symbol, start, end]
    if as_of is not None:
        sql, params = sql + " AND a.ingested_at <= %s", params + [as_of]
    return sql, params


class SentimentScoreRepository(BaseRepository[SentimentScore]):
    """Sentiment scores of articles. A score's symbols are its article's ``symbols``."""

    model = SentimentScore

    def for_article(self, article_id: int, *, as_of=None) -> list[SentimentScore]:
        """The scores of one article, oldest first (none if it was ingested after ``as_of``)."""
        article_id, as_of = _row_id("article_id", article_id), _maybe_when("as_of", as_of)
        query = SentimentScore.select().where(SentimentScore.article == article_id)
        if as_of is not None:
            query = query.join(Article).where(Article.ingested_at <= as_of)
        with self.session("for_article"):
            return list(query.order_by(SentimentScore.timestamp, SentimentScore.id))

    def average_for_symbol(self, symbol: str, start, end, *, as_of=None) -> float | None:
        """Mean score of the articles tagged ``symbol``, scored in ``[start, end)``; ``None`` if none."""
        symbol = _text("symbol", symbol, 256)
        start, end = _span(start, end)
        sql, params = _sentiment_filters(symbol, start, end, _maybe_when("as_of", as_of))
        with self.session("average_for_symbol") as db:
            (average,) = db.execute_sql("SELECT avg(s.score) " + sql, params).fetchone()
        return average

    def timeseries(self, symbol: str, start, end, bucket="1 hour", *, as_of=None) -> list[SentimentBucket]:
        """Per ``bucket`` of score time in ``[start, end)``: mean score and count, oldest first."""
        symbol = _text("symbol", symbol, 256)
        start, end = _span(start, end)
        width = _bucket(bucket)
        sql, params = _sentiment_filters(symbol, start, end, _maybe_when("as_of", as_of))
        sql = f"SELECT date_bin(%s, s.timestamp, %s), avg(s.score), count(*) {sql} GROUP BY 1 ORDER BY 1"
        with self.session("timeseries") as db:
            rows = db.execute_sql(sql, [width, BUCKET_ORIGIN, *params]).fetchall()
        return [SentimentBucket(_aware(b), average, n) for b, average, n in rows]


# -- events ---------------------------------------------------------------------

class EventRepository(BaseRepository[Event]):
    """Market events, newest first.

    No GIN index on ``events.symbols``: SPEC gives GIN indexes only to
    ``articles.symbols`` and ``backtest_results.metrics``, and events are a
    small table (detected from a fraction of the articles). ``for_symbol`` is
    asked for recent events: with ``since`` it walks the ``timestamp`` index
    and filters the few rows in range; only an unbounded call reads the whole
    (small) table. Should events grow to article scale, a GIN index on
    ``symbols`` would serve the same ``@>`` condition unchanged.
    """

    model = Event

    @staticmethod
    def _query(as_of: dt.datetime | None, *conditions):
        query = Event.select()
        if as_of is not None:
            query = query.join(Article, JOIN.LEFT_OUTER)
            conditions += ((Article.ingested_at <= as_of) | (Event.article.is_null() & (Event.timestamp <= as_of)),)
        return _where(query, *conditions).order_by(Event.timestamp.desc(), Event.id.desc())

    def recent(self, min_severity: int = 1, since=None, limit: int = 100, *, as_of=None) -> list[Event]:
        """The ``limit`` newest events of severity >= ``min_severity`` (since ``since``)."""
        if isinstance(min_severity, bool) or not isinstance(min_severity, int) or not 1 <= min_severity <= 5:
            raise DataValidationError("min_severity", min_severity, "an integer from 1 to 5")
        limit = _limit(limit)
        since, as_of = _maybe_when("since", since), _maybe_when("as_of", as_of)
        query = self._query(as_of, Event.severity >= min_severity,
                            None if since is None else Event.timestamp >= since).limit(limit)
        with self.session("recent"):
            return list(query)

    def by_type(self, event_type: str, since=None, *, as_of=None) -> list[Event]:
        """Events of ``event_type`` (since ``since``), newest first."""
        event_type = _text("event_type", event_type, 64)
        since, as_of = _maybe_when("since", since), _maybe_when("as_of", as_of)
        query = self._query(as_of, Event.event_type == event_type,
                            None if since is None else Event.timestamp >= since)
        with self.session("by_type"):
            return list(query)

    def for_symbol(self, symbol: str, since=None, *, as_of=None) -> list[Event]:
        """Events whose ``symbols`` contain ``symbol`` (since ``since``), newest first."""
        symbol = _text("symbol", symbol, 256)
        since, as_of = _maybe_when("since", since), _maybe_when("as_of", as_of)
        query = self._query(as_of, _contains(Event.symbols, symbol),
                            None if since is None else Event.timestamp >= since)
        with self.session("for_symbol"):
            return list(query)


# -- trading signals ------------------------------------------------------------

class TradingSignalRepository(BaseRepository[TradingSignal]):
    """Trading signals."""

    model = TradingSignal

    def latest(self, symbol: str) -> TradingSignal | None:
        """The newest signal for ``symbol``, or ``None``."""
        symbol = _text("symbol", symbol, 32)
        query = (TradingSignal.select().where(TradingSignal.symbol == symbol)
                 .order_by(TradingSignal.timestamp.desc(), TradingSignal.id.desc()).limit(1))
        with self.session("latest"):
            return query.first()

    def by_type(self, signal_type: str, since=None) -> list[TradingSignal]:
        """Signals of ``signal_type`` (buy, sell, hold) since ``since``, newest first."""
        signal_type = _choice("signal_type", signal_type, SIGNAL_TYPES)
        since = _maybe_when("since", since)
        query = _where(TradingSignal.select(), TradingSignal.signal_type == signal_type,
                       None if since is None else TradingSignal.timestamp >= since)
        with self.session("by_type"):
            return list(query.order_by(TradingSignal.timestamp.desc(), TradingSignal.id.desc()))

    def in_range(self, symbol: str, start, end) -> list[TradingSignal]:
        """Signals for ``symbol`` with ``start <= timestamp < end``, oldest first."""
        symbol = _text("symbol", symbol, 32)
        start, end = _span(start, end)
        query = (TradingSignal.select()
                 .where(TradingSignal.symbol == symbol, TradingSignal.timestamp >= start,
                        TradingSignal.timestamp < end)
                 .order_by(TradingSignal.timestamp, TradingSignal.id))
        with self.session("in_range"):
            return list(query)


# -- orders ---------------------------------------------------------------------

OPEN_STATUSES = ("pending", "submitted", "partially_filled")
FILL_STATUSES = ("partially_filled", "filled")
ORDER_MOVES: dict[str, tuple[str, ...]] = {
    "pending": ("submitted", "cancelled", "rejected"),
    # A submitted order may fill at once; a partly filled one may fill again.
    "submitted": ("partially_filled", "filled", "cancelled", "rejected"),
    "partially_filled": ("partially_filled", "filled", "cancelled", "rejected"),
    "filled": (),
    "cancelled": (),
    "rejected": (),
}
"""The order state machine: status -> the statuses it may move to."""


class OrderRepository(BaseRepository[Order]):
    """Orders, their state machine and audit trail. ``order_id`` is the external id."""

    model = Order

    def get_by_order_id(self, order_id: str) -> Order | None:
        """The order with external id ``order_id``, or ``None``."""
        order_id = _text("order_id", order_id, 64)
        with self.session("get_by_order_id"):
            return Order.select().where(Order.order_id == order_id).first()

    def by_status(self, status: str) -> list[Order]:
        """Orders in ``status``, oldest first."""
        status = _choice("status", status, ORDER_STATUSES)
        with self.session("by_status"):
            return list(Order.select().where(Order.status == status).order_by(Order.timestamp, Order.id))

    def open_orders(self, symbol: str | None = None) -> list[Order]:
        """Orders not yet final (pending, submitted, partially_filled), oldest first."""
        symbol = None if symbol is None else _text("symbol", symbol, 32)
        query = _where(Order.select(), Order.status.in_(OPEN_STATUSES),
                       None if symbol is None else Order.symbol == symbol)
        with self.session("open_orders"):
            return list(query.order_by(Order.timestamp, Order.id))

    def for_signal(self, signal_id: int) -> list[Order]:
        """Orders placed for trading signal ``signal_id``, oldest first."""
        signal_id = _row_id("signal_id", signal_id)
        with self.session("for_signal"):
            return list(Order.select().where(Order.signal == signal_id).order_by(Order.timestamp, Order.id))

    def transition(self, order_id: str, new_status: str, filled_quantity=None,
                   average_fill_price=None, *, note: str | None = None) -> Order:
        """Move order ``order_id`` to ``new_status``; returns the updated order.

        Under a row lock (``SELECT ... FOR UPDATE``), so concurrent moves of one
        order apply one after the other against the latest state. Legal moves
        are :data:`ORDER_MOVES`. Fills are cumulative, as brokers report them:
        ``filled_quantity`` is the total filled so far and ``average_fill_price``
        the average price of all fills, both required for ``partially_filled``
        (``0 <= filled < total < quantity``) and the price for ``filled`` (whose
        quantity defaults to, and must equal, the order quantity); other moves
        take no fill. ``updated_at`` is set, and an :class:`OrderEvent` holding
        the move and the fill state after it is appended in the same
        transaction. Raises ``NotFoundError`` for an unknown order and
        ``DataValidationError`` (naming the from/to states or the fill) for an
        illegal move; a refused move changes nothing.
        """
        order_id = _text("order_id", order_id, 64)
        new_status = _choice("new_status", new_status, ORDER_STATUSES)
        given = {"filled_quantity": filled_quantity, "average_fill_price": average_fill_price}
        if new_status not in FILL_STATUSES:
            for name, value in given.items():
                if value is not None:
                    raise DataValidationError(name, value, f"no fill on a move to {new_status}")
        fill = {name: None for name in given}
        fill.update(Order.validate({k: v for k, v in given.items() if v is not None}, partial=True))
        if new_status in FILL_STATUSES:
            if fill["average_fill_price"] is None:
                raise DataValidationError("average_fill_price", None,
                                          f"the average fill price for a move to {new_status}")
            if new_status == "partially_filled" and fill["filled_quantity"] is None:
                raise DataValidationError("filled_quantity", None,
                                          "the total filled so far for a move to partially_filled")
        if note is not None:
            note = OrderEvent.validate({"note": note}, partial=True)["note"]

        with self.session("transition"):
            order = Order.select().where(Order.order_id == order_id).for_update().first()
            if order is None:
                raise NotFoundError(f"order order_id={order_id!r} not found")
            current = order.status
            if new_status not in ORDER_MOVES[current]:
                allowed = ", ".join(ORDER_MOVES[current]) or f"none: {current} is final"
                raise DataValidationError("new_status", new_status,
                                          f"a legal move from {current} (allowed: {allowed}); "
                                          f"{current} -> {new_status} is not")
            changes: dict[Any, Any] = {Order.status: new_status, Order.updated_at: fn.clock_timestamp()}
            if new_status in FILL_STATUSES:
                total = fill["filled_quantity"] if fill["filled_quantity"] is not None else order.quantity
                if new_status == "filled" and total != order.quantity:
                    raise DataValidationError("filled_quantity", total,
                                              f"the order quantity ({order.quantity}) for a move to filled")
                if new_status == "partially_filled" and not order.filled_quantity < total < order.quantity:
                    raise DataValidationError(
                        "filled_quantity", total,
                        f"more than already filled ({order.filled_quantity}) and less than the order "
                        f"quantity ({order.quantity}) for {current} -> partially_filled")
                changes[Order.filled_quantity] = total
                changes[Order.average_fill_price] = fill["average_fill_price"]
            # clock_timestamp(), not now(): taken after the lock was granted, so
            # the audit trail's timestamps follow the order in which moves applied.
            updated = self._returning(Order.update(changes).where(Order.id == order.id)).execute()[0]
            OrderEvent.insert(order=order.id, from_status=current, to_status=new_status,
                              filled_quantity=updated.filled_quantity, fill_price=updated.average_fill_price,
                              timestamp=updated.updated_at, note=note).execute()
            return updated

    def history(self, order_id: str) -> list[OrderEvent]:
        """The audit trail of order ``order_id``, oldest move first (``[]`` for an unknown order)."""
        order_id = _text("order_id", order_id, 64)
        query = (OrderEvent.select().join(Order).where(Order.order_id == order_id)
                 .order_by(OrderEvent.timestamp, OrderEvent.id))
        with self.session("history"):
            return list(query)


# -- backtests ------------------------------------------------------------------

_BACKTEST_COLUMNS = ", ".join(f'"{f.column_name}"' for f in BacktestResult._meta.sorted_fields)
_HAS_NUMBER = "(metrics ? %s AND jsonb_typeof(metrics -> %s) = 'number')"


class BacktestResultRepository(BaseRepository[BacktestResult]):
    """Stored backtest results."""

    model = BacktestResult

    def best_by_metric(self, metric: str, limit: int = 10, descending: bool = True) -> list[BacktestResult]:
        """The ``limit`` best results by the numeric value of ``metrics[metric]``.

        Ordered numerically (10 > 9 > 1.5), highest first unless
        ``descending=False``; ties newest first. Results whose metric is
        missing or not a number come after all others, newest first. The
        metric name is a bound parameter. The key test (``metrics ? name``) is
        served by the GIN index on ``metrics`` when few results have the metric;
        when most do, every row must be read to rank them (no index can order by
        a key chosen at query time).
        """
        metric, limit = _text("metric", metric, MAX_QUERY_TEXT), _limit(limit)
        if not isinstance(descending, bool):
            raise DataValidationError("descending", descending, "True or False")
        direction = "DESC" if descending else "ASC"
        ranked = (f"SELECT {_BACKTEST_COLUMNS} FROM backtest_results WHERE {_HAS_NUMBER} "
                  f"ORDER BY (metrics ->> %s)::numeric {direction}, created_at DESC, id DESC LIMIT %s")
        # Two statements, each index-friendly: a UNION ALL would need an outer
        # ORDER BY to keep its order, and that would run both halves in full.
        rest = (f"SELECT {_BACKTEST_COLUMNS} FROM backtest_results WHERE NOT {_HAS_NUMBER} "
                "ORDER BY created_at DESC, id DESC LIMIT %s")
        with self.session("best_by_metric"):
            found = list(BacktestResult.raw(ranked, metric, metric, metric, limit))
            if len(found) < limit:
                found += list(BacktestResult.raw(rest, metric, metric, limit - len(found)))
        return found

    def recent(self, limit: int = 10) -> list[BacktestResult]:
        """The ``limit`` most recently created results, newest first."""
        limit = _limit(limit)
        query = BacktestResult.select().order_by(BacktestResult.created_at.desc(), BacktestResult.id.desc())
        with self.session("recent"):
            return list(query.limit(limit))

    def find_by_config(self, config) -> list[BacktestResult]:
        """Results run with ``config`` (equal as JSON: key order and whitespace ignored), newest first."""
        try:
            digest = config_hash(config)
        except (TypeError, ValueError) as exc:
            raise DataValidationError("config", config, f"a JSON-serialisable document ({exc})") from None
        query = (BacktestResult.select().where(BacktestResult.config_hash == digest)
                 .order_by(BacktestResult.created_at.desc(), BacktestResult.id.desc()))
        with self.session("find_by_config"):
            return list(query)
