"""The checks every boundary shares: models validate field values with them, and
repositories validate query parameters with them.

Each function returns the value (normalised where said) or raises
:class:`DataValidationError` naming the field or parameter, the value and what
was expected.
"""
from __future__ import annotations

import datetime as dt
import re

from .errors import DataValidationError

UTC = dt.timezone.utc
SYMBOL_PATTERN = r"[A-Za-z0-9.^][A-Za-z0-9._\-/=^:]{0,31}"
INTERVAL_PATTERN = r"[1-9][0-9]{0,3}(s|m|h|d|w|mo)"
MAX_PAGE = 10_000  # rows of one list call
MAX_ID = 2**63 - 1  # bigint: no row id is larger
MAX_INT_ID = 2**31 - 1  # the ids of integer-keyed tables (articles, trading_signals)

_INTERVAL_RE = re.compile(INTERVAL_PATTERN)


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
    if not isinstance(value, dt.datetime):
        raise DataValidationError(name, value, "a datetime")
    try:
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    except (OverflowError, ValueError):  # datetime.max at UTC-5 is past the year 9999 in UTC
        raise DataValidationError(name, value, "a datetime within the years 1-9999 in UTC") from None


def optional_timestamp(name: str, value) -> dt.datetime | None:
    """``None``, or :func:`timestamp` of ``value``: ``since`` and ``as_of`` parameters."""
    return None if value is None else timestamp(name, value)


def span(start, end) -> tuple[dt.datetime, dt.datetime]:
    """``(start, end)`` as aware UTC datetimes, ``end`` not before ``start``."""
    start, end = timestamp("start", start), timestamp("end", end)
    if end < start:
        raise DataValidationError("end", end, f"a time at or after start ({start.isoformat()})")
    return start, end


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
    """A bar interval such as ``1m``, ``5m``, ``1h``, ``1d``, ``1w``, ``1mo``."""
    if not isinstance(value, str) or not _INTERVAL_RE.fullmatch(value):
        raise DataValidationError(name, value, "a bar interval such as 1m, 5m, 1h, 1d, 1w, 1mo")
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


def bucket(value) -> dt.timedelta:
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


def sendable(name: str, value):
    """A filter value the driver can send (else it would raise a raw ValueError)."""
    if isinstance(value, str):
        text(name, value)  # NUL and lone surrogates: the models' own rules
    elif isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**1000:
        raise DataValidationError(name, value, "an integer of at most 1000 digits")
    return value
