"""Bar intervals and buckets: one grammar, their widths, inference from spacing, exchange-time buckets.

An interval (how wide each stored bar is) and a bucket (how wide each
resampled bar is) are spelled alike: a count and a unit, ``s``, ``m``/``min``,
``h``, ``d``, ``w``, ``mo``, ``y`` (or the words: ``'1 hour'``, ``'15 minutes'``),
case-insensitive except that ``M`` alone is refused as ambiguous. Seconds,
minutes and hours are fixed widths; days, weeks, months and years are
calendar spans of a time zone (a day across a DST change lasts 23 or 25 hours).
"""
from __future__ import annotations

import datetime as dt
import functools
import re
from typing import NamedTuple

from .errors import DataValidationError
from .rules import INTERVAL_DIGITS, INTERVAL_UNITS, UTC

_ALIASES = {
    "s": ("s", "sec", "secs", "second", "seconds"),
    "m": ("m", "min", "mins", "minute", "minutes"),
    "h": ("h", "hr", "hrs", "hour", "hours"),
    "d": ("d", "day", "days"),
    "w": ("w", "wk", "week", "weeks"),
    "mo": ("mo", "mon", "month", "months"),
    "y": ("y", "yr", "year", "years"),
}
# The units are the ones the interval rule declares (rules.INTERVAL_UNITS); the words are the grammar's.
_UNIT_OF = {alias: unit for unit in INTERVAL_UNITS for alias in _ALIASES[unit]}
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_SPELLING = re.compile(r"\s*(\d{1,6})?\s*([A-Za-z]+)\s*")
# A calendar bar is never shorter than its nominal width by more than a DST shift
# (an hour); a month is at least 28 days, a year 365.
_NOMINAL = {"d": 86400, "w": 7 * 86400, "mo": 28 * 86400, "y": 365 * 86400}
_LONGEST = {**_SECONDS, "mo": 31 * 86400, "y": 366 * 86400}
_DST_SLACK = 3600
EXPECTED = "a count and a unit: s, m (or min), h, d, w, mo, y -- e.g. 1m, 5m, 1h, 1d, 1w, 1mo"


class Timeframe(NamedTuple):
    """A parsed interval or bucket: ``count`` of ``unit`` (one of ``s m h d w mo y``)."""

    count: int
    unit: str

    @property
    def text(self) -> str:
        """The canonical spelling, as stored: ``'5m'``, ``'1d'``, ``'1mo'``."""
        return f"{self.count}{self.unit}"

    @property
    def calendar(self) -> bool:
        """Days, weeks, months, years: aligned on a zone's calendar, not a fixed width."""
        return self.unit not in ("s", "m", "h")

    @property
    def shortest(self) -> dt.timedelta:
        """The least time between the starts of two consecutive bars of this width."""
        if self.calendar:
            return dt.timedelta(seconds=self.count * _NOMINAL[self.unit] - _DST_SLACK)
        return dt.timedelta(seconds=self.count * _SECONDS[self.unit])

    @property
    def longest(self) -> dt.timedelta:
        """The most time one bar of this width can span (a calendar one in any zone, DST included)."""
        return dt.timedelta(seconds=self.count * _LONGEST[self.unit] + (_DST_SLACK if self.calendar else 0))


def parse(value, name: str, max_digits: int = 6) -> Timeframe:
    """``value`` (text, or a ``timedelta`` for buckets) as a :class:`Timeframe`.

    Raises :class:`DataValidationError` naming ``name``.
    """
    if isinstance(value, dt.timedelta) and name != "interval":
        return _from_timedelta(value, name)
    match = _SPELLING.fullmatch(value) if isinstance(value, str) else None
    if match is not None and match.group(2) == "M":
        raise DataValidationError(name, value, "an unambiguous unit: 'M' alone is refused; "
                                               "use 'm' for minutes or 'mo' for months")
    unit = _UNIT_OF.get(match.group(2).lower()) if match else None
    digits = match.group(1) if match else None
    if unit is None or (digits is not None and (len(digits.lstrip("0")) > max_digits or int(digits) < 1)):
        raise DataValidationError(name, value, EXPECTED + (f" (at most {max_digits} digits)"
                                                          if name == "interval" else ""))
    return Timeframe(int(digits or 1), unit)


def _from_timedelta(value: dt.timedelta, name: str) -> Timeframe:
    seconds = value.total_seconds()
    if seconds < 1 or seconds != int(seconds):
        raise DataValidationError(name, value, "a positive whole number of seconds")
    return timeframe_of(int(seconds), name)


def timeframe_of(seconds: int, name: str = "bucket") -> Timeframe:
    """The fixed width ``seconds`` in its largest whole unit (``86400`` -> ``1d``)."""
    for unit in ("w", "d", "h", "m", "s"):
        if seconds % _SECONDS[unit] == 0:
            return Timeframe(seconds // _SECONDS[unit], unit)
    raise DataValidationError(name, seconds, "a whole number of seconds")  # unreachable: s divides all


def fixed_width(frame: Timeframe) -> dt.timedelta | None:
    """The width of seconds, minutes, hours, days (24 h) or weeks; ``None`` for months and years (they vary)."""
    seconds = _SECONDS.get(frame.unit)
    return None if seconds is None else dt.timedelta(seconds=frame.count * seconds)


def interval(value, name: str = "interval") -> str:
    """A bar interval in its canonical, stored spelling (``'1D'`` -> ``'1d'``, ``'1 hour'`` -> ``'1h'``)."""
    return parse(value, name, INTERVAL_DIGITS).text


def optional_interval(value, name: str = "interval") -> str | None:
    """``None`` (the interval stored, or inferred), else :func:`interval`."""
    return None if value is None else interval(value, name)


def inferred(gap: dt.timedelta) -> str:
    """The interval that bars whose closest two starts are ``gap`` apart have.

    Under a day: the gap itself (``5m``, ``1h``); a day to six: ``1d`` (a
    weekend or a holiday between daily bars); seven to 27 days: ``1w``; 28
    to 364: ``1mo``; a year or more: ``1y``. A DST shift (an hour) is allowed
    for: daily bars at local midnight are 23 hours apart once a year. A gap
    whose whole seconds a stored interval cannot spell (more than 9999 of
    them, not whole minutes: ``12345s``) is its whole minutes (``205m``):
    never wider than the gap, so the bars never contradict it.
    """
    seconds = gap.total_seconds()
    for unit in ("y", "mo", "w", "d"):
        if seconds >= _NOMINAL[unit] - _DST_SLACK:
            return f"1{unit}"
    if seconds < 1:
        raise DataValidationError("interval", gap, f"bars at least a second apart (two are {gap} apart); "
                                                   "pass interval=")
    found = timeframe_of(int(seconds), "interval")  # whole seconds: a stamp's jitter is not the width
    if len(str(found.count)) > INTERVAL_DIGITS:  # under 23 hours: at most 1380 whole minutes
        found = timeframe_of(int(seconds) // 60 * 60, "interval")
    return found.text


def contradiction(interval_text: str, gap: dt.timedelta) -> str | None:
    """Why bars ``gap`` apart cannot be ``interval_text`` bars (closer than one bar), else ``None``."""
    frame = parse(interval_text, "interval", INTERVAL_DIGITS)
    if gap < frame.shortest:
        return (f"an interval the bars' spacing allows: two bars are {gap} apart, closer than one "
                f"{interval_text} bar (their spacing says {inferred(gap) if gap.total_seconds() >= 1 else 'less than 1s'})")
    return None


# -- buckets in exchange time -------------------------------------------------------
@functools.lru_cache(maxsize=256)
def zone(name) -> dt.tzinfo:
    """The IANA zone ``name`` (``None``: UTC), or :class:`DataValidationError` naming ``tz``."""
    if name is None:
        return UTC
    import zoneinfo

    try:
        if not isinstance(name, str) or not name or ".." in name or name.startswith("/"):
            raise ValueError(name)
        return zoneinfo.ZoneInfo(name)
    except (ValueError, zoneinfo.ZoneInfoNotFoundError):
        raise DataValidationError("tz", name, "an IANA time zone such as 'America/New_York' or 'UTC'") from None


def zone_name(tz) -> str:
    """The validated name the server is given (``'UTC'`` for ``None``)."""
    zone(tz)
    return "UTC" if tz is None else tz


def bucket_sql(frame: Timeframe, tz: str | None, column: str = '"timestamp"',
               column_params: tuple | list = ()) -> tuple[str, list]:
    """SQL of the start of the bucket holding ``column``, a ``timestamptz``, and its parameters.

    ``column`` may hold placeholders of its own (``'%s::timestamptz'``):
    ``column_params`` are their values, placed wherever ``column`` appears.
    Seconds, minutes and hours: fixed widths counted from a Monday midnight
    in ``tz`` (so hours are the zone's hours). Days and weeks: calendar days
    of ``tz`` (weeks start on Monday); months and years: calendar months
    (``count`` of them from January of year 0). The start is an instant.
    """
    name = zone_name(tz)
    at = list(column_params)
    if not frame.calendar:
        origin = dt.datetime(2000, 1, 3, tzinfo=zone(tz))
        return (f"date_bin(%s::interval, {column}, %s::timestamptz)",
                [f"{frame.count * _SECONDS[frame.unit]} seconds"] + at + [origin])
    local, local_params = f"({column} AT TIME ZONE %s)", at + [name]
    if frame.unit in ("d", "w"):
        days = frame.count * (7 if frame.unit == "w" else 1)
        return (f"(date_bin(%s::interval, {local}, TIMESTAMP '2000-01-03') AT TIME ZONE %s)",
                [f"{days} days"] + local_params + [name])
    field, step = ("month", "months") if frame.unit == "mo" else ("year", "years")
    if frame.count == 1:
        return f"(date_trunc('{field}', {local}) AT TIME ZONE %s)", local_params + [name]
    if frame.unit == "mo":
        position = f"(extract(year FROM {local})::int * 12 + extract(month FROM {local})::int - 1)"
        position_params = local_params * 2
    else:
        position, position_params = f"extract(year FROM {local})::int", local_params
    return (f"((date_trunc('{field}', {local}) - make_interval({step} => mod({position}, %s))) AT TIME ZONE %s)",
            local_params + position_params + [frame.count, name])


def step_sql(frame: Timeframe, literal: bool = True) -> str:
    """One bar or bucket as a PostgreSQL ``interval`` (a literal, or its text with ``literal=False``)."""
    words = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks", "mo": "months", "y": "years"}
    text = f"{frame.count} {words[frame.unit]}"
    return f"'{text}'::interval" if literal else text
