"""Charts for ``marketstore plot``: price bars with volume, and a backtest's equity curve.

matplotlib is an optional dependency (the ``plot`` extra). Figures are drawn on
matplotlib's ``Figure`` directly, with the Agg canvas: no pyplot, no GUI
backend, no global state, so it works on a server without a display.
"""
from __future__ import annotations

import datetime as dt
from typing import Any, Sequence

from ..errors import DataValidationError
from ..extras import require

MAX_CANDLES = 200  # more intraday bars than this: a close line reads better than candles
GAP_BARS = 10  # a close line is broken where this many bars are missing (a night, a weekend)
UP, DOWN, LINE = "#26a269", "#c01c28", "#1c71d8"


def _figure(height_ratios: Sequence[int]):
    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(11, 6.5), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(len(height_ratios), 1, sharex=True, gridspec_kw={"height_ratios": height_ratios})
    return figure, axes


def require_matplotlib() -> None:
    """Raise :class:`~marketstore.errors.MissingExtraError` naming the ``plot`` extra unless matplotlib imports."""
    require("matplotlib", "plot")


def _time_axis(axes, tz: dt.tzinfo | None) -> None:
    """A calendar time axis labelled by the span shown -- hours over a day, days over a
    month, months or years over years -- in ``tz`` (UTC when ``None``), whatever the bars' width."""
    from matplotlib.dates import AutoDateLocator, ConciseDateFormatter

    tz = tz or dt.timezone.utc
    locator = AutoDateLocator(tz=tz, minticks=4, maxticks=10)
    axis = axes[-1].xaxis
    axis.set_major_locator(locator)
    axis.set_major_formatter(ConciseDateFormatter(locator, tz=tz))


def _compact(value: float, _position=None) -> str:
    """Axis label 1500000 -> 1.5M."""
    for size, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= size:
            return f"{value / size:g}{suffix}"
    return f"{value:g}"


def _boxes(x, bottoms, tops, width: float, colors, gid: str, **style):
    """One ``PolyCollection`` of rectangles centred on ``x`` (matplotlib day numbers), ``width`` days wide."""
    from matplotlib.collections import PolyCollection

    half = width / 2
    return PolyCollection([((t - half, b), (t - half, top), (t + half, top), (t + half, b))
                           for t, b, top in zip(x, bottoms, tops)],
                          facecolors=colors, edgecolors=colors, gid=gid, **style)


def _broken(x, values, width: float):
    """``(x, values)`` with a NaN point wherever more than :data:`GAP_BARS` bars are missing, so a
    line is not drawn across a night or a weekend."""
    xs, ys = [], []
    for i, (t, v) in enumerate(zip(x, values)):
        if i and t - x[i - 1] > GAP_BARS * width:
            xs.append((t + x[i - 1]) / 2)
            ys.append(float("nan"))
        xs.append(t)
        ys.append(v)
    return xs, ys


def price_figure(title: str, bars: Sequence[Any], width: dt.timedelta, *, candles: bool | None = None,
                 tz: dt.tzinfo | None = None):
    """A figure of ``bars`` (objects with timestamp/bucket, open, high, low, close, volume)
    ``width`` wide each, over a volume panel, on a calendar time axis in ``tz``.

    Candles (``PolyCollection`` bodies with gid ``candle-bodies`` over a
    ``LineCollection`` of wicks, gid ``candle-wicks``) when ``candles`` is true;
    ``None`` chooses them for daily and wider bars and for up to
    :data:`MAX_CANDLES` narrower ones, else the close line over the high-low band.
    """
    from matplotlib.collections import LineCollection
    from matplotlib.dates import date2num

    figure, (price, volume) = _figure([3, 1])
    times = [getattr(b, "timestamp", None) or b.bucket for b in bars]
    days = width / dt.timedelta(days=1)
    # A bar labelled by its start covers [start, start + width): drawn over that span, so a
    # daily candle stands over its own day, between that day's tick and the next.
    x = [float(t) + days / 2 for t in date2num(times)]
    opens, highs, lows, closes = ([float(getattr(b, k)) for b in bars] for k in ("open", "high", "low", "close"))
    volumes = [float(b.volume) for b in bars]
    colors = [UP if c >= o else DOWN for o, c in zip(opens, closes)]
    if candles is None:
        candles = width >= dt.timedelta(hours=23) or len(bars) <= MAX_CANDLES
    thin = 0.6 if len(bars) > MAX_CANDLES else 1.0
    if candles:
        price.add_collection(LineCollection([((t, lo), (t, hi)) for t, lo, hi in zip(x, lows, highs)],
                                            colors=colors, linewidths=thin, gid="candle-wicks"))
        price.add_collection(_boxes(x, [min(o, c) for o, c in zip(opens, closes)],
                                    [max(o, c) for o, c in zip(opens, closes)], 0.7 * days, colors,
                                    "candle-bodies", linewidths=thin / 2))
    else:
        price.plot(*_broken(x, closes, days), color=LINE, linewidth=1, gid="close-line")
        band_x, band_low = _broken(x, lows, days)
        price.fill_between(band_x, band_low, _broken(x, highs, days)[1], color=LINE, alpha=0.15, linewidth=0)
    volume.add_collection(_boxes(x, [0.0] * len(bars), volumes, 0.8 * days, colors, "volume", alpha=0.7,
                                 linewidths=0))
    for panel in (price, volume):
        panel.autoscale_view()
        panel.grid(alpha=0.3)
    volume.set_ylim(bottom=0)
    price.set_xlim(min(x) - days, max(x) + days)  # half a bar of margin on either side
    price.set_title(title)
    price.set_ylabel("price")
    volume.set_ylabel("volume")
    volume.yaxis.set_major_formatter(_compact)
    _time_axis((price, volume), tz)
    return figure


def price_chart(path: str, title: str, bars: Sequence[Any], width: dt.timedelta,
                tz: dt.tzinfo | None = None) -> None:
    """Write :func:`price_figure` of ``bars`` to ``path``; the format follows the extension (png, svg, pdf...)."""
    price_figure(title, bars, width, tz=tz).savefig(path)


def equity_points(curve: Any) -> list[tuple[dt.datetime | None, float]]:
    """``(time or None, equity)`` from a stored equity curve.

    Accepts a list of numbers, of ``[time, value]`` pairs, or of objects with a
    time key (timestamp/time/date/t) and a value key (equity/value/balance/nav).
    Raises ``DataValidationError`` (a ``ValueError``) when the curve has none of these shapes.
    """
    points = []
    for item in curve if isinstance(curve, list) else []:
        when, value = None, item
        if isinstance(item, dict):
            when = next((item[k] for k in ("timestamp", "time", "date", "t") if k in item), None)
            value = next((item[k] for k in ("equity", "value", "balance", "nav") if k in item), None)
        elif isinstance(item, (list, tuple)) and len(item) == 2:
            when, value = item
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise DataValidationError("equity_curve", item, "a point holding a number")
        if isinstance(when, str):
            try:
                when = dt.datetime.fromisoformat(when.replace("Z", "+00:00"))
            except ValueError:
                when = None
        points.append((when if isinstance(when, dt.datetime) else None, float(value)))
    if len(points) < 2:
        raise DataValidationError("equity_curve", curve, "at least two points")
    return points


def equity_chart(path: str, title: str, points: Sequence[tuple[dt.datetime | None, float]]) -> None:
    """Write the equity curve and its drawdown below it to ``path``."""
    figure, (equity, drawdown) = _figure([3, 1])
    values = [v for _, v in points]
    times = [t for t, _ in points]
    if all(times):
        from matplotlib.dates import date2num

        positions = date2num(times)
    else:
        positions = range(len(values))
    peak, drawdowns = values[0], []
    for value in values:
        peak = max(peak, value)
        drawdowns.append(100 * (value / peak - 1) if peak else 0.0)
    equity.plot(positions, values, color=LINE, linewidth=1.5)
    equity.axhline(values[0], color="grey", linewidth=0.8, linestyle="--")
    drawdown.fill_between(positions, drawdowns, 0, color=DOWN, alpha=0.4, linewidth=0)
    equity.set_title(title)
    equity.set_ylabel("equity")
    drawdown.set_ylabel("drawdown %")
    equity.grid(alpha=0.3)
    drawdown.grid(alpha=0.3)
    if all(times):
        _time_axis((equity, drawdown), None)
    else:
        drawdown.set_xlabel("step")
    figure.savefig(path)
