"""Point-in-time sentiment joined to price bars: :class:`SentimentWindow` and the SQL that wraps the bars.

A bar starting at ``t`` of width ``w`` closes at ``d = t + w``; a score counts
for it when its article is tagged with the bar's symbol, its model matches
(when given) and it was known at ``k = published_at + latency`` with
``d - window <= k < d``. ``sentiment_last`` is the counted score with the
greatest ``k`` (ties: the greater score id).

Set-based, in one statement: per symbol, the scores (at ``k``) and the bars (at
``d`` less one microsecond, the resolution of a timestamp, so that ``k < d`` is
``k <= d - 1us``) form one timeline, sorted once. A ``RANGE`` window of
``window - 1us`` preceding each bar gives the count and the sum: both
aggregates have inverse transitions, so the window slides in linear time, and
the sum is ``numeric`` -- exact, with no prefix-sum cancellation. The last
score is the running maximum of ``(k, id, score)`` over the same sort.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import re

from ..errors import DataValidationError
from ..intervals import fixed_width, parse, zone, zone_name
from ..validation import required_text

_COUNT = re.compile(r"\s*(\d+)\s*([A-Za-z].*)")
COLUMNS = [("sentiment_mean", "float8"), ("sentiment_count", "int8"), ("sentiment_last", "float8")]


@dataclasses.dataclass(frozen=True)
class SentimentWindow:
    """What :meth:`PriceRepository.frame(..., sentiment=...) <marketstore.PriceRepository.frame>` adds to each bar.

    ``window``: how far back from a bar's close a score still counts (a
    positive duration: ``'1 day'``, ``'4h'``, a ``timedelta``; days are 24
    hours). ``model``: only that scorer's scores (``None``: all).
    ``latency``: how long after its article's ``published_at`` a score is
    known (``'0 seconds'``, ``'15m'``, a ``timedelta``). ``close`` and
    ``tz``: the local time a session closes (``close="16:00",
    tz="America/New_York"``): a bar a day or longer then closes on its last
    local day at that time -- a daily bar of 2012-01-19, however a vendor
    stamped it, at 16:00 New York time that day, DST included -- instead of
    at ``t + w``. Checked when made: a bad value raises
    ``DataValidationError`` naming the field.
    """

    window: str | dt.timedelta = "1 day"
    model: str | None = None
    latency: str | dt.timedelta = "0 seconds"
    close: str | dt.time | None = None
    tz: str | None = None

    def __post_init__(self):
        if self.close is not None:
            close_time(self.close)
        zone(self.tz)
        if duration("window", self.window) <= dt.timedelta(0):
            raise DataValidationError("window", self.window, "a positive duration such as '1 day' or '4h'")
        duration("latency", self.latency)
        if self.model is not None:
            required_text("model", self.model, 64)


def duration(name: str, value) -> dt.timedelta:
    """``value`` (a ``timedelta``, or a count and a fixed unit: s, m, h, d, w) as a non-negative ``timedelta``."""
    if isinstance(value, dt.timedelta):
        if value < dt.timedelta(0):
            raise DataValidationError(name, value, "a duration of zero or more")
        return value
    match = _COUNT.fullmatch(value) if isinstance(value, str) else None
    if match is not None and int(match.group(1)) == 0:  # '0 seconds': the grammar's counts start at 1
        parse("1" + match.group(2), name)
        return dt.timedelta(0)
    width = fixed_width(parse(value, name))
    if width is None:
        raise DataValidationError(name, value, "a fixed duration (s, m, h, d, w): months and years vary")
    return width


def close_time(value) -> dt.time:
    """A session's local closing time: a ``time`` or ``'HH:MM[:SS]'``."""
    if isinstance(value, dt.time):
        return value
    try:
        return dt.time.fromisoformat(value.strip())
    except (AttributeError, ValueError):
        raise DataValidationError("close", value, "a local time of day such as '16:00'") from None


def sentiment_window(value) -> SentimentWindow | None:
    """The ``sentiment=`` of a price frame: ``None``/``False`` (none), ``True`` (the defaults) or a window."""
    if value is None or value is False:
        return None
    if value is True:
        return SentimentWindow()
    if isinstance(value, SentimentWindow):
        return value
    raise DataValidationError("sentiment", value, "True or a SentimentWindow(window=..., model=..., latency=...)")


def _interval(value: dt.timedelta) -> str:
    """``value`` as interval text of microseconds only: no day field, whatever the session's time zone."""
    return f"{value // dt.timedelta(microseconds=1)} microseconds"


def wrapper(join: SentimentWindow, symbols: list[str]):
    """The ``wrap`` of :func:`~._frames_out.frame_query` adding :data:`COLUMNS` to the bars of ``symbols``.

    ``symbols`` are the symbols read, in the order that gave the bars their
    ``position``.
    """
    window, latency = duration("window", join.window), duration("latency", join.latency)
    model = "" if join.model is None else " AND s.model = %s"

    def wrap(inner: str, params: list, names: list[str]) -> tuple[str, list, list[tuple[str, str]]]:
        bar = ", ".join(names)
        blank = ", ".join(["sc.position"] + ["NULL"] * (len(names) - 1))
        closing = "bar_end"
        if join.close is not None:  # a day or longer: its last local day, at the session's close
            closing = ("CASE WHEN bar_end - bar_start >= interval '23 hours' THEN "
                       "((((bar_end - interval '1 microsecond') AT TIME ZONE %s)::date + %s::time) AT TIME ZONE %s) "
                       "ELSE bar_end END")
        sql = (
            f"WITH q AS (SELECT i.*, {closing} AS bar_close FROM ({inner}) AS i), "
            "sc AS (SELECT ws.position, a.published_at + %s::interval AS t, s.id, s.score "
            "  FROM unnest(%s::text[]) WITH ORDINALITY AS ws(symbol, position) "
            "  JOIN articles AS a ON a.symbols @> ARRAY[ws.symbol] "
            "  JOIN sentiment_scores AS s ON s.article_id = a.id "
            "  WHERE a.published_at >= (SELECT min(bar_close) FROM q) - %s::interval "
            f"  AND a.published_at < (SELECT max(bar_close) FROM q) - %s::interval{model}), "
            f"ev AS (SELECT {bar}, bar_close - interval '1 microsecond' AS t, 1 AS kind, NULL::int8 AS id, "
            "  NULL::float8 AS score, NULL::float8[] AS packed FROM q "
            # a score as (known time, id, score): the greatest so far is the last score, ties to the greater id
            f"  UNION ALL SELECT {blank}, sc.t, 0, sc.id, sc.score, "
            "  ARRAY[extract(epoch FROM sc.t) * 1000000, sc.id, sc.score]::float8[] FROM sc) "
            f"SELECT {bar}, coalesce((total / n)::float8, 'NaN') AS sentiment_mean, n AS sentiment_count, "
            "  coalesce(CASE WHEN n > 0 THEN latest[3] END, 'NaN') AS sentiment_last FROM ("
            # numeric sums are exact; via text, a float8 is its shortest exact decimal (not 15 digits)
            "  SELECT *, count(score) OVER f AS n, sum(score::text::numeric) OVER f AS total, "
            "  max(packed) OVER (PARTITION BY position ORDER BY t, kind, id ROWS UNBOUNDED PRECEDING) AS latest "
            "  FROM ev WINDOW f AS (PARTITION BY position ORDER BY t RANGE BETWEEN %s::interval PRECEDING "
            "  AND CURRENT ROW)) AS w WHERE kind = 1"
        )
        name = zone_name(join.tz)
        closing_params = [] if join.close is None else [name, close_time(join.close).isoformat(), name]
        out = closing_params + list(params) + [_interval(latency), symbols, _interval(window + latency),
                                               _interval(latency)]
        out += ([] if join.model is None else [join.model]) + [_interval(window - dt.timedelta(microseconds=1))]
        return sql, out, COLUMNS

    return wrap
