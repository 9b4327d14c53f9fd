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

MAX_CANDLES = 200  # more bars than this: a close line reads better than candles
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


def _time_axis(axes, times: Sequence[dt.datetime]) -> None:
    """Label bar positions 0..n-1 with their times, so nights and weekends take no
    space; over several days, one tick and a separator line per day."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, MaxNLocator

    starts = [0] + [i for i in range(1, len(times)) if times[i].date() != times[i - 1].date()]
    axis = axes[-1]
    if len(starts) > 1:
        for index in starts[1:]:
            for panel in axes:
                panel.axvline(index - 0.5, color="grey", linewidth=0.8, alpha=0.6)
        axis.xaxis.set_major_locator(FixedLocator(starts))
        pattern = "%a %m-%d"
    else:
        axis.xaxis.set_major_locator(MaxNLocator(nbins=8, integer=True))
        pattern = "%H:%M"

    def label(position, _):
        index = int(round(position))
        return times[index].strftime(pattern) if 0 <= index < len(times) else ""

    axis.xaxis.set_major_formatter(FuncFormatter(label))
    axis.set_xlim(-1, len(times))


def _compact(value: float, _position=None) -> str:
    """Axis label 1500000 -> 1.5M."""
    for size, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= size:
            return f"{value / size:g}{suffix}"
    return f"{value:g}"


def price_chart(path: str, title: str, bars: Sequence[Any]) -> None:
    """Write a chart of ``bars`` (objects with timestamp/bucket, open, high, low, close,
    volume) to ``path``: candles up to :data:`MAX_CANDLES` bars, else the close line,
    with a volume panel. The format follows the extension (png, svg, pdf...)."""
    figure, (price, volume) = _figure([3, 1])
    times = [getattr(b, "timestamp", None) or b.bucket for b in bars]
    opens, highs, lows, closes = ([float(getattr(b, k)) for b in bars] for k in ("open", "high", "low", "close"))
    volumes = [float(b.volume) for b in bars]
    positions = range(len(bars))
    colors = [UP if c >= o else DOWN for o, c in zip(opens, closes)]
    if len(bars) <= MAX_CANDLES:
        price.vlines(positions, lows, highs, colors=colors, linewidth=1)
        bodies = [max(abs(c - o), (h - l) * 0.02 or 0.01) for o, c, h, l in zip(opens, closes, highs, lows)]
        price.bar(positions, bodies, bottom=[min(o, c) for o, c in zip(opens, closes)], width=0.7, color=colors)
    else:
        price.plot(positions, closes, color=LINE, linewidth=1)
        price.fill_between(positions, lows, highs, color=LINE, alpha=0.15, linewidth=0)
    volume.bar(positions, volumes, width=0.8, color=colors, alpha=0.7)
    price.set_title(title)
    price.set_ylabel("price")
    volume.set_ylabel("volume")
    volume.yaxis.set_major_formatter(_compact)
    price.grid(alpha=0.3)
    volume.grid(alpha=0.3)
    _time_axis((price, volume), times)
    figure.savefig(path)


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
    times = [t for t, _ in points]
    if all(times):
        _time_axis((equity, drawdown), times)
    else:
        drawdown.set_xlabel("step")
    figure.savefig(path)
