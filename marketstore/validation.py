"""The checks every boundary shares: models validate field values with them, and
repositories validate query parameters with them.

Each function returns the value (normalised where said) or raises
:class:`DataValidationError` naming the field or parameter, the value and what
was expected.
"""
from __future__ import annotations

import datetime as dt
import decimal
import json
import math
import numbers
import re
from typing import Iterable

from peewee import CharField, DecimalField, DoubleField, Field, ForeignKeyField, TextField
from playhouse.postgres_ext import ArrayField, BinaryJSONField, DateTimeTZField

from .errors import DataValidationError
from . import intervals
from .intervals import zone
from .rules import SYMBOL_LENGTH, SYMBOL_PATTERN, TAG_LENGTH, UTC

MAX_PAGE = 10_000  # rows of one list call
MAX_ID = 2**63 - 1  # bigint: no row id is larger
MAX_INT_ID = 2**31 - 1  # the ids of integer-keyed tables (articles, trading_signals)

MAX_TEXT_CHARS = 1_000_000  # article content; titles and names are far smaller
MAX_JSON_BYTES = 1_000_000  # one JSONB document (explanations, metrics, curves)
MAX_JSON_DEPTH = 100  # nesting levels of one JSONB document

_SYMBOL_RE = re.compile(SYMBOL_PATTERN)
NUMBER_TEXT = r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]{1,3})?"
"""A number as text that PostgreSQL's ``numeric`` input and ``Decimal`` read alike.

(``Decimal`` also takes '1_000', other scripts' digits, 'NaN' and exponents
beyond what ``numeric`` accepts; the server takes none of those.)"""


def _fail(name: str, value, expected: str):
    raise DataValidationError(name, value, expected)


def text(name: str, value, max_length: int | None = None) -> str:
    """A string without NUL or lone surrogates, of at most ``max_length`` characters."""
    if not isinstance(value, str):
        raise DataValidationError(name, value, "a string")
    if "\x00" in value:
        raise DataValidationError(name, value, "text without NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise DataValidationError(name, value, "valid unicode (no lone surrogates)") from None
    if max_length is not None and len(value) > max_length:
        raise DataValidationError(name, value, f"at most {max_length} characters (got {len(value)})")
    return value


def required_text(name: str, value, max_length: int) -> str:
    """A non-empty :func:`text`: a query parameter such as a symbol or a search.

    Content is not restricted further: it is only ever sent as a bound
    parameter, so quotes or semicolons are data (and simply match nothing).
    """
    if not isinstance(value, str) or not value:
        raise DataValidationError(name, value, "a non-empty string")
    return text(name, value, max_length)


def timestamp(name: str, value) -> dt.datetime:
    """An aware UTC datetime from a datetime (naive = UTC) or an ISO-8601 string."""
    if isinstance(value, str):
        try:
            value = dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            raise DataValidationError(name, value, "an ISO-8601 timestamp") from None
    if getattr(getattr(value, "dtype", None), "kind", None) == "M":  # numpy.datetime64 (naive)
        moment = value.astype("datetime64[us]").item()  # None for NaT, an int beyond the year 9999
        if not isinstance(moment, dt.datetime):
            raise DataValidationError(name, value, "a datetime within the years 1-9999 in UTC")
        value = moment
    if not isinstance(value, dt.datetime) or value != value:  # pandas.NaT is a datetime unequal to itself
        raise DataValidationError(name, value, "a datetime")
    try:
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    except (OverflowError, ValueError):  # datetime.max at UTC-5 is past the year 9999 in UTC
        raise DataValidationError(name, value, "a datetime within the years 1-9999 in UTC") from None


def optional_timestamp(name: str, value) -> dt.datetime | None:
    """``None``, or :func:`timestamp` of ``value``: ``since`` and ``as_of`` parameters."""
    return None if value is None else timestamp(name, value)


def moment(name: str, value, tz: str | None = None) -> dt.datetime | None:
    """A range bound: ``None`` (open), a ``date`` (midnight in ``tz``, else UTC) or :func:`timestamp`."""
    if value is None:
        return None
    if isinstance(value, dt.date) and not isinstance(value, dt.datetime):
        return dt.datetime(value.year, value.month, value.day, tzinfo=zone(tz)).astimezone(UTC)
    return timestamp(name, value)


def span(start, end, tz: str | None = None) -> tuple[dt.datetime | None, dt.datetime | None]:
    """``(start, end)`` as aware UTC datetimes (``None``: unbounded), ``end`` not before ``start``.

    Each takes a datetime (naive = UTC), ISO text, a ``date`` (its midnight in
    ``tz``, else UTC) or ``None``.
    """
    start, end = moment("start", start, tz), moment("end", end, tz)
    if start is not None and end is not None and end < start:
        raise DataValidationError("end", end, f"a time at or after start ({start.isoformat()})")
    return start, end


def symbol(value, name: str = "symbol") -> str:
    """A ticker to look up: a non-empty :func:`text` of at most :data:`SYMBOL_LENGTH` characters."""
    return required_text(name, value, SYMBOL_LENGTH)


def symbol_list(symbols, max_length: int = SYMBOL_LENGTH, max_symbols: int = 10_000) -> list[str]:
    """``symbols`` (an iterable of symbols, not one ``str``) checked, without repeats, in order."""
    if isinstance(symbols, (str, bytes)) or not isinstance(symbols, Iterable):
        raise DataValidationError("symbols", symbols, "a list of symbols")
    # A symbol matching the pattern passes every text rule; others are checked (and match nothing).
    valid = _SYMBOL_RE.fullmatch  # no length bound in the pattern: max_length checks it
    wanted = list(dict.fromkeys(s if type(s) is str and len(s) <= max_length and valid(s) else required_text(f"symbols[{i}]", s, max_length)
                                for i, s in enumerate(symbols)))
    if len(wanted) > max_symbols:
        raise DataValidationError("symbols", f"<{len(wanted)} symbols>", f"at most {max_symbols} symbols")
    return wanted


def positive_int(name: str, value, maximum: int = MAX_ID) -> int:
    """``value`` when it is an int in ``[1, maximum]``."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= maximum:
        raise DataValidationError(name, value, f"a positive integer <= {maximum}")
    return value


def limit(value, name: str = "limit") -> int:
    """A page size: :func:`positive_int` up to :data:`MAX_PAGE`."""
    return positive_int(name, value, MAX_PAGE)


def flag(name: str, value) -> bool:
    """``True`` or ``False``, nothing merely truthy."""
    if not isinstance(value, bool):
        raise DataValidationError(name, value, "True or False")
    return value


def choice(name: str, value, choices) -> str:
    """One of ``choices``."""
    if value not in choices:
        raise DataValidationError(name, value, f"one of {', '.join(choices)}")
    return value


def interval(value, name: str = "interval") -> str:
    """A bar interval in its stored spelling (see :mod:`marketstore.intervals`: ``'1D'`` -> ``'1d'``)."""
    return intervals.interval(value, name)


def bucket(value) -> dt.timedelta:
    """A fixed bucket width as a ``timedelta`` (``'1 hour'``, ``'15m'``, ``'1d'``, ``'1w'``): UTC buckets.

    Months and years are calendar spans, not widths: the price reads take
    them (:func:`marketstore.intervals.parse`); here they are refused.
    """
    width = intervals.fixed_width(intervals.parse(value, "bucket"))
    if width is None:
        raise DataValidationError("bucket", value, "a fixed width (s, m, h, d, w): months and years vary")
    return width


def unreadable(path: str, exc: OSError) -> DataValidationError:
    """The error for an input file that cannot be opened or read (``field='path'``)."""
    return DataValidationError("path", path, f"a readable file ({exc.strerror or exc})", source=path)


def sendable(name: str, value):
    """A filter value the driver can send (else it would raise a raw ValueError)."""
    if isinstance(value, str):
        text(name, value)  # NUL and lone surrogates: the models' own rules
    elif isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**1000:
        raise DataValidationError(name, value, "an integer of at most 1000 digits")
    return value


# -- model field values (BaseModel.validate) ------------------------------------
# By column type: an AutoField is INTEGER, a BigAutoField BIGINT (it is no BigIntegerField).
_INT_BOUNDS = {"SMALLINT": 2**15, "BIGINT": 2**63, "BIGAUTO": 2**63}
_DECIMAL_CONTEXT = decimal.Context(prec=100)  # quantize() to 8 places never loses digits below the limits


def _int_bound(field: Field) -> int:
    """The values of ``field``'s integer column lie in ``[-bound, bound)``."""
    return _INT_BOUNDS.get(field.field_type, 2**31)


def _number(name: str, value, field: Field):
    # numbers.Real: numpy's integers and floats too; not numpy.bool_ (no number, like bool) nor
    # numpy.timedelta64, which numpy registers as an integer.
    if isinstance(value, bool) or not isinstance(value, (int, float, decimal.Decimal, str, numbers.Real)) \
            or getattr(getattr(value, "dtype", None), "kind", "f") not in "iuf":
        _fail(name, value, "a number")
    if isinstance(field, DecimalField):
        try:
            if isinstance(value, (int, decimal.Decimal)):
                # exact, and without str() (which refuses ints over 4300 digits)
                number = decimal.Decimal(value)
            elif isinstance(value, numbers.Integral):  # numpy.int64...
                number = decimal.Decimal(int(value))
            elif isinstance(value, str):
                number = decimal.Decimal(value.strip())
            else:
                # A float is the decimal its repr shows (exact round trip); numpy.float32 or
                # float16 the shortest decimal of its own precision, which str() shows
                # (float() would add float64 noise: 0.1 -> 0.10000000149011612).
                number = decimal.Decimal(float.__repr__(value) if type(value) is float else str(value))
        except decimal.InvalidOperation:
            _fail(name, value, "a decimal number")
        if not number.is_finite():
            _fail(name, value, "a finite number")
        limit = numeric_limit(field)
        if abs(number) < limit and number.as_tuple().exponent < -field.decimal_places:
            # More decimals than the column keeps: round as PostgreSQL would (half away
            # from zero), so that the range rules see the stored value and no digit the
            # server refuses (more than 16383 after the point: 1E-20000) is ever sent.
            number = number.quantize(decimal.Decimal(1).scaleb(-field.decimal_places),
                                     rounding=decimal.ROUND_HALF_UP, context=_DECIMAL_CONTEXT)
        if abs(number) >= limit:
            _fail(name, value, f"a number below {limit:.0e}")
        return number
    if isinstance(field, DoubleField):
        try:
            number = float(value)
        except ValueError:
            _fail(name, value, "a number")
        except OverflowError:  # an int beyond 1.8e308
            _fail(name, value, "a finite number")
        if not math.isfinite(number):
            _fail(name, value, "a finite number")
        return number
    if not isinstance(value, int):
        _fail(name, value, "an integer")
    bound = _int_bound(field)
    if not -bound <= value < bound:
        _fail(name, value, f"an integer in [{-bound}, {bound})")
    return value


def numeric_limit(field: DecimalField) -> decimal.Decimal:
    """The values of ``numeric(p, s)`` lie strictly between ``-limit`` and ``limit`` (10**(p-s))."""
    return decimal.Decimal(10) ** (field.max_digits - field.decimal_places)


def _json_depth(value, limit: int) -> int:
    """Nesting depth of a JSON document, iteratively, counting no further than ``limit + 1``."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            item = list(item.values())
        if isinstance(item, (list, tuple)):
            deepest = max(deepest, depth)
            if depth > limit:
                break
            stack.extend((child, depth + 1) for child in item)
    return deepest


def _json_document(name: str, value):
    try:
        # ensure_ascii=False keeps a lone surrogate a surrogate, for encode() below.
        text = json.dumps(value, allow_nan=False, ensure_ascii=False)
    except (TypeError, ValueError, RecursionError) as exc:
        _fail(name, value, f"a JSON-serialisable document ({type(exc).__name__}: {exc})")
    # jsonb cannot store NUL in strings (json.dumps always escapes control characters).
    if "\\u0000" in text:
        _fail(name, value, "JSON without NUL characters")
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError:  # any lone surrogate, high or low, in a key or a value
        _fail(name, value, "JSON with valid unicode (no lone surrogates)")
    if size > MAX_JSON_BYTES:
        _fail(name, f"<{size} bytes>", f"a document of at most {MAX_JSON_BYTES} bytes")
    # The driver serialises the document again deeper in the stack, and the server
    # parses it recursively: a fixed bound, far below either limit.
    if _json_depth(value, MAX_JSON_DEPTH) > MAX_JSON_DEPTH:
        _fail(name, f"<nested over {MAX_JSON_DEPTH} deep>", f"a document nested at most {MAX_JSON_DEPTH} deep")
    return value


def field_value(name: str, field: Field, value):
    """``value`` type-checked and normalised for the model field ``field`` (by its column type).

    Value rules (bounds, patterns, choices) are the model's ``Meta.rules``, judged after.
    """
    if isinstance(field, ForeignKeyField):
        value = getattr(value, "id", value)
        bound = _int_bound(field.rel_field)  # the referencing column has the referenced key's type
        if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < bound:
            _fail(name, value, f"the id (a positive integer below {bound}) of an existing row")
        return value
    if isinstance(field, ArrayField):
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            _fail(name, value, "a list of strings")
        return [text(f"{name}[{i}]", item, TAG_LENGTH) for i, item in enumerate(value)]
    if isinstance(field, BinaryJSONField):
        return _json_document(name, value)
    if isinstance(field, DateTimeTZField):
        return timestamp(name, value)
    if isinstance(field, (CharField, TextField)):
        return text(name, value, getattr(field, "max_length", None))
    return _number(name, value, field)
