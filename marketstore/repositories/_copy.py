"""The prices' bulk engine: rows streamed to PostgreSQL ``COPY``, and the staging merge.

``PriceRepository.copy_from`` streams into ``prices``; ``upsert_many`` streams
the same way into a temporary staging table that carries the same CHECK rules,
then merges it with one ``INSERT ... ON CONFLICT``. Rows are validated in
Python as they are read (a cheap check vouches for the common row; anything
else gets the full validation). CSV files are read by :mod:`._csv` and go
through the same :func:`copy`, so a file gets one verdict whichever loads it.
"""
from __future__ import annotations

import datetime as dt
import itertools
import re
from decimal import Decimal
from typing import Iterable, Iterator, Mapping

import psycopg2

from ..errors import DataValidationError, DuplicateKeyError, MarketstoreError
from ..models import Price
from ..validation import INTERVAL_PATTERN, SYMBOL_PATTERN, UTC

PRICE_COLUMNS = ("symbol", "timestamp", "open", "high", "low", "close", "volume", "interval")
"""Column order of ``copy_from`` sequences and CSV rows (``interval`` may be left out)."""
PRICE_HEADER = ",".join(PRICE_COLUMNS[:-1]) + "[,interval]"
"""The header of a price CSV file, for messages (any column order)."""
DEFAULT_INTERVAL = Price.interval.default

COPY_COLUMNS = ", ".join(f'"{c}"' for c in PRICE_COLUMNS)


# -- rows -------------------------------------------------------------------------

def price_row(data, interval: str = DEFAULT_INTERVAL) -> dict:
    """One input row (a mapping, or a sequence in ``PRICE_COLUMNS`` order), validated.

    A row without an interval gets ``interval``. ``DataValidationError``
    names the bare field (``row`` for a row of the wrong shape).
    """
    if isinstance(data, Mapping):
        row = dict(data)
    elif isinstance(data, (list, tuple)) and len(data) in (len(PRICE_COLUMNS) - 1, len(PRICE_COLUMNS)):
        row = dict(zip(PRICE_COLUMNS, data))
    else:
        raise DataValidationError("row", data, f"a mapping or a sequence of {', '.join(PRICE_COLUMNS)} "
                                               "(interval optional)")
    for name in row:
        if name not in PRICE_COLUMNS:
            raise DataValidationError(name, row[name], f"one of the columns {', '.join(PRICE_COLUMNS)}")
    row = Price.validate(row)
    row.setdefault("interval", interval)
    return row


def copy_line(row: dict) -> str:
    """The COPY text-format line of a row validated by :func:`price_row`.

    No value needs escaping: symbols and intervals match their patterns (no
    tab, newline or backslash), numbers and ISO timestamps are plain ASCII.
    """
    return (f"{row['symbol']}\t{row['timestamp'].isoformat()}\t{row['open']}\t{row['high']}\t"
            f"{row['low']}\t{row['close']}\t{row['volume']}\t{row['interval']}\n")


_SYMBOL_RE = re.compile(SYMBOL_PATTERN)
_INTERVAL_RE = re.compile(INTERVAL_PATTERN)
_MONEY_LIMIT = Decimal(10) ** (Price.high.max_digits - Price.high.decimal_places)
_VOLUME_LIMIT = Decimal(10) ** (Price.volume.max_digits - Price.volume.decimal_places)
_SCALE = Decimal(1).scaleb(-Price.high.decimal_places)  # the columns keep 8 decimals
assert Price.volume.decimal_places == Price.high.decimal_places


def fast_copy_line(data, symbols: set, intervals: set, default: str = DEFAULT_INTERVAL) -> str | None:
    """The COPY line of the common, valid row, or ``None``: then :func:`price_row` decides.

    Accepts only a ``dict`` of exactly the price columns (``interval``
    optional) holding ``Decimal`` prices with at most 8 decimals, a plain
    ``datetime`` and pattern-matching ``str`` symbol and interval (patterns
    checked once per distinct value: ``symbols``/``intervals`` remember the
    ones seen), and rules that one chained comparison decides (it is false for
    NaN, and a signalling comparison raises, which also means ``None``).
    Everything else goes to the full validation, so it accepts exactly what
    ``price_row`` accepts. ~10x cheaper than ``Price.validate``.
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
        # More than 8 decimals: price_row rounds them first (and the rules see the rounded value).
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


def copy_lines(rows: Iterable, interval: str = DEFAULT_INTERVAL) -> Iterator[str]:
    """COPY text lines of ``rows``; an error carries the row's 1-based position as ``row``."""
    symbols: set = set()
    intervals: set = {interval}
    fast = fast_copy_line
    for number, data in enumerate(rows, 1):
        line = fast(data, symbols, intervals, interval)
        if line is None:
            try:
                line = copy_line(price_row(data, interval))
            except DataValidationError as exc:
                raise exc.at(row=number) from None
        yield line


# A server refusal names the COPY's line (and column) only in its context text.
_COPY_ERROR = re.compile(r'COPY [\w.]+, line (\d+)(?:, column (\w+))?(?:: "(.*)")?', re.DOTALL)
_DUPLICATE = re.compile(r"Key \((.*)\)=\((.*)\) already exists")


def refused_line(exc: psycopg2.Error) -> tuple[int, str | None, str | None] | None:
    """(COPY line, column, quoted value) of a row the server refused for its data, else ``None``."""
    code = exc.pgcode or ""
    found = _COPY_ERROR.search(getattr(exc.diag, "context", None) or "")
    if not found or not (code.startswith("22") or code in ("23502", "23505", "23514")):
        return None
    return int(found.group(1)), found.group(2), found.group(3)


def duplicate(exc: psycopg2.Error, **where) -> DuplicateKeyError:
    """The unique violation ``exc`` (23505) with its key as data."""
    found = _DUPLICATE.search(exc.diag.message_detail or "")
    # Columns and values of the prices key hold no ", " (symbols and intervals match their patterns).
    names = [n.strip('"') for n in found.group(1).split(", ")] if found else []
    values = found.group(2).split(", ") if found else []
    return DuplicateKeyError(dict(zip(names, values)), **where)


class RowStream:
    """Rows as a read-only file of COPY text lines produced on demand, for ``copy_expert``.

    Each ``read()`` returns the next ``rows_per_read`` lines joined, so only one
    chunk is ever held and the server parses one chunk while the next is
    built. ``rows`` counts the lines handed out. An exception raised while
    reading is kept in ``error`` (psycopg2 would report a generic "error in
    .read() call") and re-raised by :func:`copy`.
    """

    def __init__(self, rows: Iterable, interval: str, rows_per_read: int = 2000):
        self._rows, self._interval, self._rows_per_read = rows, interval, rows_per_read
        self._lines: Iterator[str] = iter(())
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

    def refusal(self, exc: psycopg2.Error) -> MarketstoreError | None:
        """A duplicate key names its row; other refusals are left to the usual translation."""
        found = refused_line(exc)
        return duplicate(exc, row=found[0]) if found and exc.pgcode == "23505" else None

    def copy_into(self, db, table: str) -> int:
        """COPY every row into ``table`` on the session's connection; returns the number of rows."""
        self._lines = copy_lines(self._rows, self._interval)
        copy(db, f"COPY {table} ({COPY_COLUMNS}) FROM STDIN", self)
        return self.rows


def copy(db, sql: str, stream) -> int:
    """Run ``COPY ... FROM STDIN`` of ``stream`` on the session's connection; returns the rows copied.

    ``stream`` is a :class:`RowStream` or a CSV body: a file with ``error``
    (what was raised while it was read, re-raised as itself) and
    ``refusal(exc)`` (a row the server refused, as the error naming it).
    """
    cursor = db.connection().cursor()
    try:
        cursor.copy_expert(sql, stream, size=64 * 1024)
        return cursor.rowcount
    except psycopg2.Error as exc:
        if stream.error is not None:
            raise stream.error from None
        refusal = stream.refusal(exc)
        if refusal is None:
            raise
        raise refusal from exc
    finally:
        cursor.close()


# upsert_many's staging table: the rules of prices (LIKE ... INCLUDING CONSTRAINTS, so a
# refused row names its line as copy_from's would) but no index and no WAL; dropped at the
# end of the call (ON COMMIT DROP too, in case the caller's transaction outlives an error).
STAGE = "marketstore_price_stage"
STAGE_CREATE = (
    f"CREATE TEMPORARY TABLE {STAGE} (LIKE prices INCLUDING DEFAULTS INCLUDING CONSTRAINTS) ON COMMIT DROP; "
    # id numbers the staged rows in input order (and takes nothing from prices' sequence)
    f"ALTER TABLE {STAGE} ALTER COLUMN id DROP DEFAULT, ALTER COLUMN id ADD GENERATED ALWAYS AS IDENTITY; "
    "SELECT current_setting('work_mem'), set_config('work_mem', '256MB', true)"
)
# ON CONFLICT may touch a row once per statement: DISTINCT ON keeps the last
# staged row (highest id) of each key, as applying the rows in order would.
STAGE_MERGE = (
    f"INSERT INTO prices ({COPY_COLUMNS}) "
    f'SELECT DISTINCT ON (symbol, "interval", "timestamp") {COPY_COLUMNS} FROM {STAGE} '
    'ORDER BY symbol, "interval", "timestamp", id DESC '
    'ON CONFLICT (symbol, "interval", "timestamp") DO UPDATE SET '
    + ", ".join(f"{c} = EXCLUDED.{c}" for c in ("open", "high", "low", "close", "volume"))
    + f"; DROP TABLE {STAGE}; SELECT set_config('work_mem', %s, true)"
)
