"""Point-in-time sentiment joined to price bars: :class:`SentimentWindow` and the SQL that wraps the bars.

A bar starting at ``t`` of width ``w`` closes at ``d = t + w``; a score counts
for it when its article is tagged with the bar's symbol, its model matches
(when given) and it was known at ``k = published_at + latency`` with
``d - window <= k < d``. ``sentiment_last`` is the counted score with the
greatest ``k`` (ties: the greater score id).

Set-based, in one statement: per symbol, the scores (at ``k``) and the bars (at
``d`` less one microsecond, the resolution of a timestamp, so that ``k < d`` is
``k <= d - 1us``) form one timeline, sorted once. A ``RANGE`` window of
``window - 1us`` preceding each bar gives the count and the mean: both
aggregates have inverse transitions, so the window slides in linear time, and
the mean is summed as ``numeric`` -- exact, with no prefix-sum cancellation.
The last score so far is the score row whose running count of scores equals
the bar's (a hash join, not a second sort).
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import re

from ..errors import DataValidationError
from ..intervals import parse
from ..validation import required_text

_FIXED_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_COUNT = re.compile(r"\s*(\d+)\s*([A-Za-z].*)")
COLUMNS = [("sentiment_mean", "float8"), ("sentiment_count", "int8"), ("sentiment_last", "float8")]


@dataclasses.dataclass(frozen=True)
class SentimentWindow:
    """What :meth:`PriceRepository.frame(..., sentiment=...) <marketstore.PriceRepository.frame>` adds to each bar.

    ``window``: how far back from a bar's close a score still counts (a
    positive duration: ``'1 day'``, ``'4h'``, a ``timedelta``; days are 24
    hours). ``model``: only that scorer's scores (``None``: all).
    ``latency``: how long after its article's ``published_at`` a score is
    known (``'0 seconds'``, ``'15m'``, a ``timedelta``). Checked when made:
    a bad value raises ``DataValidationError`` naming the field.
    """

    window: str | dt.timedelta = "1 day"
    model: str | None = None
    latency: str | dt.timedelta = "0 seconds"

    def __post_init__(self):
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
    frame = parse(value, name)
    if frame.unit not in _FIXED_SECONDS:
        raise DataValidationError(name, value, "a fixed duration (s, m, h, d, w): months and years vary")
    return dt.timedelta(seconds=frame.count * _FIXED_SECONDS[frame.unit])


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

    def wrap(inner: str, params: list) -> tuple[str, list, list[tuple[str, str]]]:
        sql = (
            f"WITH q AS (SELECT b.*, row_number() OVER () AS bar FROM ({inner}) AS b), "
            "sc AS (SELECT ws.position, a.published_at + %s::interval AS t, s.id, s.score "
            "  FROM unnest(%s::text[]) WITH ORDINALITY AS ws(symbol, position) "
            "  JOIN articles AS a ON a.symbols @> ARRAY[ws.symbol] "
            "  JOIN sentiment_scores AS s ON s.article_id = a.id "
            "  WHERE a.published_at >= (SELECT min(bar_end) FROM q) - %s::interval "
            f"  AND a.published_at < (SELECT max(bar_end) FROM q) - %s::interval{model}), "
            "ev AS (SELECT position, t, 0 AS kind, id, score, NULL::int8 AS bar FROM sc "
            "  UNION ALL SELECT position, bar_end - interval '1 microsecond', 1, NULL, NULL, bar FROM q), "
            # numeric sums are exact; via text, a float8 is its shortest exact decimal (not 15 digits)
            "w AS (SELECT kind, bar, position, score, "
            "  count(score) OVER (PARTITION BY position ORDER BY t, kind, id ROWS UNBOUNDED PRECEDING) AS seen, "
            "  count(score) OVER f AS n, avg(score::text::numeric) OVER f AS mean FROM ev "
            "  WINDOW f AS (PARTITION BY position ORDER BY t RANGE BETWEEN %s::interval PRECEDING AND CURRENT ROW)) "
            "SELECT q.*, coalesce(b.mean::float8, 'NaN') AS sentiment_mean, b.n AS sentiment_count, "
            "  coalesce(CASE WHEN b.n > 0 THEN l.score END, 'NaN') AS sentiment_last "
            "FROM q JOIN w AS b ON b.kind = 1 AND b.bar = q.bar "
            "LEFT JOIN w AS l ON l.kind = 0 AND l.position = b.position AND l.seen = b.seen"
        )
        out = list(params) + [_interval(latency), symbols, _interval(window + latency), _interval(latency)]
        out += ([] if join.model is None else [join.model]) + [_interval(window - dt.timedelta(microseconds=1))]
        return sql, out, COLUMNS

    return wrap
