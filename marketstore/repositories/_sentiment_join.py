"""Point-in-time sentiment joined to price bars: :class:`SentimentWindow` and the SQL that wraps the bars.

A bar starting at ``t`` of width ``w`` closes at ``d = t + w``; a score counts
for it when its article is tagged with the bar's symbol, its model matches
(when given) and it was known at ``k = published_at + latency`` with
``d - window <= k < d``. ``sentiment_last`` is the counted score with the
greatest ``k`` (ties: the greater score id).

Set-based, in one statement, and no sort of the bars: per symbol, the scores
in ``(k, id)`` order become three arrays -- the known times, the scores and
their running sums -- and each bar finds its window by two binary searches
(``width_bucket``): ``i1`` scores known before ``d``, ``i0`` known before
``d - window``; the count is ``i1 - i0``, the sum the difference of two running
sums, the last score the ``i1``-th. The running sums are integers (each score
times ``2**scale``, ``scale = 59 - log2(n + 1)`` for a symbol's ``n`` scores),
so the difference is exact whatever the history before the window: a mean is
off by at most ``(n + 1) * 2**-60`` (under 1e-12 up to a million scores of one
symbol in one frame), where a running float sum would cancel.
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


def wrapper(join: SentimentWindow, symbols: list[str], start, end, longest: dt.timedelta):
    """The ``wrap`` of :func:`~._frames_out.frame_query` adding :data:`COLUMNS` to the bars of ``symbols``.

    ``symbols`` are the symbols read, in the order that gave the bars their
    ``position``; ``start`` and ``end`` the range read (``None``: open) and
    ``longest`` the most time one of its bars spans: together they bound the
    articles read, with a margin for a session's close and DST.
    """
    window, latency = duration("window", join.window), duration("latency", join.latency)
    margin = dt.timedelta(days=2)
    bounds = ([] if start is None else [("a.published_at >= %s", start - window - latency - margin)]) + \
             ([] if end is None else [("a.published_at < %s", end + longest + margin)])
    where = "".join(f" AND {clause}" for clause, _ in bounds)
    model = "" if join.model is None else " AND s.model = %s"

    def wrap(inner: str, params: list, names: list[str]) -> tuple[str, list, list[tuple[str, str]]]:
        closing = "i.bar_end"
        if join.close is not None:  # a day or longer: its last local day, at the session's close
            closing = ("CASE WHEN i.bar_end - i.bar_start >= interval '23 hours' THEN "
                       "((((i.bar_end - interval '1 microsecond') AT TIME ZONE %s)::date + %s::time) AT TIME ZONE %s) "
                       "ELSE i.bar_end END")
        sql = (
            "WITH sc AS (SELECT ws.position, a.published_at + %s::interval AS k, s.id, s.score, "
            "  59 - floor(ln((count(*) OVER (PARTITION BY ws.position) + 1)::float8) / ln(2::float8)) AS scale "
            "  FROM unnest(%s::text[]) WITH ORDINALITY AS ws(symbol, position) "
            "  JOIN articles AS a ON a.symbols @> ARRAY[ws.symbol] "
            f"  JOIN sentiment_scores AS s ON s.article_id = a.id WHERE a.published_at IS NOT NULL{where}{model}), "
            "known AS (SELECT position, array_agg(k ORDER BY k, id) AS ks, array_agg(score ORDER BY k, id) AS scores, "
            "  '{0}'::int8[] || array_agg(total::int8 ORDER BY k, id) AS totals, min(scale) AS scale FROM ("
            "  SELECT *, sum((score * 2::float8 ^ scale)::int8) OVER (PARTITION BY position ORDER BY k, id "
            "  ROWS UNBOUNDED PRECEDING) AS total FROM sc) AS running GROUP BY position) "
            f"SELECT {', '.join('i.' + name for name in names)}, "
            "  coalesce(((totals[i1 + 1] - totals[i0 + 1])::float8 / 2::float8 ^ scale) / nullif(i1 - i0, 0), 'NaN') "
            "  AS sentiment_mean, coalesce(i1 - i0, 0)::int8 AS sentiment_count, "
            "  coalesce(CASE WHEN i1 > i0 THEN scores[i1] END, 'NaN') AS sentiment_last "
            f"FROM ({inner}) AS i LEFT JOIN known ON known.position = i.position "
            # OFFSET 0 keeps the searches one per bar: inlined, each use of i1 or i0 would search again
            "CROSS JOIN LATERAL (SELECT width_bucket(d - interval '1 microsecond', known.ks) AS i1, "
            f"  width_bucket(d - %s::interval, known.ks) AS i0 FROM (SELECT {closing} AS d) AS c OFFSET 0) AS b"
        )
        name = zone_name(join.tz)
        closing_params = [] if join.close is None else [name, close_time(join.close).isoformat(), name]
        out = [_interval(latency), symbols] + [value for _, value in bounds]
        out += ([] if join.model is None else [join.model]) + list(params)
        return sql, out + [_interval(window + dt.timedelta(microseconds=1))] + closing_params, COLUMNS

    return wrap
