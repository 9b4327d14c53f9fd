"""Rows of any natural type streamed to ``COPY`` as text lines (a :class:`._copy.CopySource`).

Rows are formatted as they are read, without judging their values: the
table's constraints (derived from ``Meta.rules``) hold the rules, and a row
the server refuses is validated again, alone, for validation's own error.
Rows the formatter cannot send as they are get the full validation first.
"""
from __future__ import annotations

import datetime as dt
import re
import sys
from decimal import Decimal
from typing import Callable, Iterable, Iterator, Sequence

from ..errors import DataValidationError
from ..models import PRICE_COLUMNS, Price, validate_price_row
from ..validation import NUMBER_TEXT, UTC, timestamp
from ._copy import COPY_COLUMNS, copy

DEFAULT_INTERVAL = Price.interval.default


# -- rows -------------------------------------------------------------------------

def copy_line(row: dict) -> str:
    """The COPY text-format line of a row validated by :func:`validate_price_row`.

    No value needs escaping: symbols and intervals match their patterns (no
    tab, newline or backslash), numbers and ISO timestamps are plain ASCII.
    A missing interval (to be inferred) or adjusted close is ``\\N``, NULL.
    """
    interval, adj = row.get("interval"), row.get("adj_close")
    return (f"{row['symbol']}\t{row['timestamp'].isoformat(' ')}\t{row['open']}\t{row['high']}\t"
            f"{row['low']}\t{row['close']}\t{row['volume']}\t{_NULL if interval is None else interval}\t"
            f"{_NULL if adj is None else adj}\n")


_NULL = "\\N"


_NUMBER_TEXT = re.compile(NUMBER_TEXT)
_MAX_LINE = 1024  # longer: a number of thousands of digits, which the server may read otherwise


def number_types() -> tuple[frozenset, frozenset]:
    """The types of numbers :func:`line_formatter` sends as they print: ``(by format(), by str())``.

    ``format(x, "")`` of int, float, Decimal and numpy's float64 and integers
    is their ``str()``; numpy's other floats format as float64 (0.1 as a
    float32 prints 0.10000000149011612) but ``str()`` prints the shortest
    decimal of their own precision, the value validation takes. numpy is
    only looked at if the caller imported it. ``bool`` and ``numpy.bool_``
    are in neither: validation refuses them.
    """
    direct, printed = {int, float, Decimal}, set()
    np = sys.modules.get("numpy")
    if np is not None:
        kinds = {t: np.dtype(t).kind for t in set(np.sctypeDict.values())}  # timedelta64 is an np.integer
        direct.update(t for t, kind in kinds.items() if kind in "iu")
        direct.add(np.float64)
        printed.update(t for t, kind in kinds.items() if kind == "f" and t is not np.float64)
    return frozenset(direct), frozenset(printed)


def _number_texts(values: tuple, printed: frozenset, direct: frozenset) -> tuple | None:
    """``values`` as the text COPY gets, when one of them is not of a ``direct`` type; else ``None``."""
    out = []
    for value in values:
        kind = type(value)
        if kind in direct:
            out.append(value)
        elif kind in printed:
            out.append(str(value))
        elif kind is str and _NUMBER_TEXT.fullmatch(value):
            out.append(value)
        else:
            return None
    return tuple(out)


def line_formatter(default: str | None = DEFAULT_INTERVAL) -> Callable[[object], str | None]:
    """A function giving the COPY line of a row, or ``None``: then :func:`validate_price_row` decides.

    The line is built without judging any value: the table's CHECK
    constraints and column types hold the rules of ``Price.validate`` (NaN
    is refused by them, infinity and more than 16 integer digits by
    ``numeric(24, 8)``, which also rounds past 8 decimals as validation does),
    and :class:`RowStream` turns a refusal back into validation's own error.
    What is checked here is what the server would read differently from
    validation: only a ``dict`` of the price columns (``interval`` optional,
    else ``default``) or a tuple/list in ``PRICE_COLUMNS`` order, numbers of
    the :func:`number_types` or plain numeric strings, a ``datetime``
    (pandas' ``Timestamp`` too; any other timestamp goes through
    validation's own conversion), and a symbol and interval matching their
    patterns (so no tab, newline or backslash breaks the COPY format).
    Symbols and intervals are matched once per distinct value, and a
    timestamp shared by consecutive rows (a feed's bars of one minute) is
    formatted once.
    """
    rules = Price._meta.rules
    symbol_ok, interval_ok = rules.pattern("symbol").accepts, rules.pattern("interval").accepts
    symbol_length = Price.symbol.max_length
    default = _NULL if default is None else default  # None: the interval is inferred later (staging)
    symbols, intervals = set(), {default}
    direct, printed = number_types()
    last_ts = last_stamp = None

    def line(data) -> str | None:
        nonlocal last_ts, last_stamp
        try:
            kind = type(data)
            if kind is dict:
                size = len(data)
                if size == 8:
                    iv = data["interval"]
                elif size == 7:
                    iv = default
                else:
                    return None
                s, ts, o, h, lo, c, v = (data["symbol"], data["timestamp"], data["open"], data["high"],
                                         data["low"], data["close"], data["volume"])
            elif kind is tuple or kind is list:
                size = len(data)
                if size == 8:
                    s, ts, o, h, lo, c, v, iv = data
                elif size == 7:
                    s, ts, o, h, lo, c, v = data
                    iv = default
                else:
                    return None
            else:
                return None
            if not (type(o) in direct and type(h) in direct and type(lo) in direct and type(c) in direct
                    and type(v) in direct):
                texts = _number_texts((o, h, lo, c, v), printed, direct)
                if texts is None:
                    return None
                o, h, lo, c, v = texts
            if s not in symbols:
                if type(s) is not str or len(s) > symbol_length or not symbol_ok(s):
                    return None
                symbols.add(s)
            if iv not in intervals:
                if type(iv) is not str or not interval_ok(iv):
                    return None
                intervals.add(iv)
            if ts is last_ts:
                stamp = last_stamp
            else:
                stamp = _stamp(ts)
                last_ts, last_stamp = ts, stamp
            text = f"{s}\t{stamp}\t{o}\t{h}\t{lo}\t{c}\t{v}\t{iv}\t\\N\n"
        except (LookupError, TypeError, ValueError, ArithmeticError):  # DataValidationError, >4300 digits...
            return None
        # 'E-': a Decimal such as 1E-20000, which validation rounds to 0 and the server refuses
        # (a float prints 'e-', at most e-324, and NUMBER_TEXT three exponent digits: read alike).
        # Rare: those rows take validate_price_row.
        if len(text) > _MAX_LINE or "E-" in text:
            return None
        return text

    return line


def _has_interval(row) -> bool:
    if type(row) is dict or isinstance(row, dict):
        return row.get("interval") is not None
    return isinstance(row, (tuple, list)) and len(row) == len(PRICE_COLUMNS) and row[-1] is not None


def _stamp(ts) -> str:
    """A timestamp as ISO text with its zone (naive = UTC), as validation reads it.

    A space between date and time: the server parses that form ~10 % faster than 'T'.
    """
    if not isinstance(ts, dt.datetime):  # numpy.datetime64, ISO text: validation's conversion
        ts = timestamp("timestamp", ts)
    tz = ts.tzinfo
    if tz is UTC:
        return ts.isoformat(" ")
    if tz is None:
        return ts.isoformat(" ") + "+00:00"
    return ts.astimezone(UTC).isoformat(" ")  # OverflowError past the year 9999 in UTC: the caller catches it


_END = object()


class RowStream:
    """Rows as a read-only file of COPY text lines produced on demand, for ``copy_expert``.

    Each ``read()`` returns the next ``rows_per_read`` lines joined, so the
    server parses one chunk while the next is built. A row the server
    refuses (the COPY names its line) is validated again in Python to raise
    validation's own error for it (both judge by the same ``Meta.rules``), so
    a good row costs only its formatting. To find
    that row again, a sequence (a list) is indexed; any other iterable (a
    generator) is sent ``rows_per_copy`` rows per ``COPY`` statement and
    only the rows of the statement in flight are kept: memory stays bounded.

    A row the cheap formatter cannot send goes through :func:`validate_price_row`; if
    validation refuses it, the COPY ends just before it, so that a bad row
    earlier (refused by the server) is the one named, as row-by-row
    validation would; then its own error is raised. ``rows`` counts the lines
    handed out. Any other exception raised while reading is kept in
    ``error`` (psycopg2 would report a generic "error in .read() call") and
    re-raised by :func:`copy`.
    """

    def __init__(self, rows: Iterable, interval: str | None, rows_per_read: int = 2000, rows_per_copy: int = 20_000):
        self._rows, self._interval, self._rows_per_read = rows, interval, rows_per_read
        self._fast = line_formatter(interval)
        self._indexed = isinstance(rows, Sequence)
        self._rows_per_copy = None if self._indexed else rows_per_copy
        self._source: Iterator = iter(rows)
        self._kept: list = []  # the rows of the COPY in flight (not indexed rows)
        self._first = 0  # rows sent before the COPY in flight
        self._left = 0  # rows the COPY in flight may still take (when sent rows_per_copy per COPY)
        self._next = next(self._source, _END)  # a row read ahead: another COPY needed? its interval given?
        self._complete: bool | None = None
        self._refused: DataValidationError | None = None  # validation's verdict on the next row
        self.rows = 0
        self.error: BaseException | None = None

    def read(self, size: int = -1) -> str:
        if self._refused is not None or self._next is _END:
            return ""
        try:
            return self._chunk()
        except BaseException as exc:  # whatever the producer raised (Ctrl-C too): kept for the caller
            self.error = exc
            raise

    def _chunk(self) -> str:
        lines = []
        count = self._rows_per_read if self._rows_per_copy is None else min(self._rows_per_read, self._left)
        fast, interval = self._fast, self._interval
        keep = None if self._indexed else self._kept.append
        source, data = self._source, self._next
        for _ in range(count):
            line = fast(data)
            if line is None:
                try:
                    line = copy_line(validate_price_row(data, interval))
                except DataValidationError as exc:
                    self._refused = exc.at(row=self.rows + len(lines) + 1)
                    break
            lines.append(line)
            if keep is not None:
                keep(data)
            data = next(source, _END)
            if data is _END:
                break
        self._next = data
        self.rows += len(lines)
        self._left -= len(lines)
        return "".join(lines)

    def _row(self, number: int):
        """The ``number``-th row (1-based) of the input, if still at hand."""
        if self._indexed:
            return self._rows[number - 1]
        at = number - self._first - 1
        return self._kept[at] if 0 <= at < len(self._kept) else _END

    rereadable = False  # a generator cannot be read twice; rows go straight to upsert's staging table

    @property
    def complete(self) -> bool:
        """An interval given, or a list whose rows all carry theirs: none is left to infer.

        Rows of any other iterable without ``interval=`` are staged: which of
        them lack one is known only once they are read.
        """
        if self._complete is None:
            self._complete = self._interval is not None or (
                self._indexed and all(_has_interval(row) for row in self._rows))
        return self._complete

    def first_key(self) -> tuple | None:
        return None  # rows are not tried straight into the table: nothing to decide

    def rewound(self) -> "RowStream":
        raise TypeError("rows are read once")

    def where(self, line: int) -> dict:
        return {"row": self._first + line}

    def located(self, number: int | None) -> dict:
        return {} if number is None else {"row": number}

    def verdict(self, line: int) -> tuple[DataValidationError | None, object]:
        data = self._row(self._first + line)
        if data is _END:  # a generator's row no longer at hand: the server's words
            return None, None
        try:
            validate_price_row(data, self._interval)
        except DataValidationError as error:
            return error, data
        return None, data

    def copy_into(self, db, table: str) -> int:
        """COPY every row into ``table`` on the session's connection; returns the number of rows."""
        sql = f"COPY {table} ({COPY_COLUMNS}) FROM STDIN"
        while True:
            self._first, self._kept, self._left = self.rows, [], self._rows_per_copy or 0
            copy(db, sql, self)
            if self._refused is not None:
                raise self._refused
            if self._next is _END:
                return self.rows
