"""``marketstore plot prices | backtest``: charts to image files."""
from __future__ import annotations

import click

from ..errors import DataValidationError
from ..intervals import parse, zone
from ..repositories import BacktestResultRepository
from .plotting import equity_chart, equity_points, price_chart, require_matplotlib
from .common import command, interval_option, range_options, read_bars, stored_hint, tz_option


@click.group("plot")
def group() -> None:
    """Draw price and equity charts to image files.

    Needs the plot extra: pip install 'marketstore[plot]'.

    \b
    Example:
      marketstore plot prices AAPL --start 2024-03-08 --end 2024-03-09 --bucket 5m --out aapl.png
      marketstore plot backtest 1 --out equity.png
    """


def _save(draw, out: str, *args) -> None:
    try:
        draw(out, *args)
    except OSError as exc:
        raise click.ClickException(f"cannot write {out}: {exc.strerror or exc}") from exc
    except ValueError as exc:  # matplotlib: unknown image format
        raise click.ClickException(f"cannot write {out}: {exc}") from exc
    click.echo(f"Wrote {out}")


@group.command("prices")
@click.argument("symbol")
@range_options
@click.option("--bucket", default=None, metavar="WIDTH",
              help="Resample into bars of WIDTH (5m, 1h, 1d, 1w, 1mo) first.")
@tz_option
@interval_option
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Image file (.png, .svg, .pdf).")
@command
def plot_prices(symbol, start, end, bucket, tz, interval, out) -> None:
    """Chart SYMBOL's bars with start <= time < end over a volume panel.

    Daily and wider bars (and up to 200 narrower ones) are candles, more
    intraday bars the close line. The time axis is labelled by the span
    shown (hours, days, months, years) in --tz.

    \b
    Example:
      marketstore plot prices AAPL --start 2024-03-08 --end 2024-03-09 --bucket 5m --out aapl.png
      marketstore plot prices GOOG --start 2004-01-01 --end 2014-01-01 --out goog.png
      marketstore plot prices AAPL --start 2024-03-01 --end 2024-04-01 --bucket 1d --tz America/New_York --out d.png
    """
    require_matplotlib()
    place = zone(tz)
    bars = read_bars(symbol, start, end, bucket, interval, tz)
    if not bars:
        raise click.ClickException(f"no {interval + ' ' if interval else ''}bars for {symbol}"
                                   f"{_span_text(start, end)} ({stored_hint(symbol)})")
    width = parse(bucket or bars[0].interval, "bucket")
    first, last = (getattr(b, "timestamp", None) or b.bucket for b in (bars[0], bars[-1]))
    shown = [str(bound) if bound else f"{moment.astimezone(place):%Y-%m-%d}"
             for bound, moment in ((start, first), (end, last))]
    title = f"{symbol} {width.text} bars, {shown[0]} to {shown[1]} ({tz or 'UTC'})"
    # A calendar bar is drawn as wide as its shortest span (a day across DST: 23 hours).
    _save(price_chart, out, title, bars, width.shortest, place)


def _span_text(start, end) -> str:
    """`` with START <= time < END`` for the bounds given, ``""`` for an open range."""
    if start is None and end is None:
        return ""
    return " with " + " ".join(part for part in (start and f"{start} <=", "time", end and f"< {end}") if part)


@group.command("backtest")
@click.argument("backtest_id", metavar="ID", type=click.IntRange(min=1))
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Image file (.png, .svg, .pdf).")
@command
def plot_backtest(backtest_id, out) -> None:
    """Chart the equity curve (and drawdown) of backtest result ID.

    \b
    Example:
      marketstore query backtests --best sharpe --limit 1
      marketstore plot backtest 1 --out equity.png
    """
    require_matplotlib()
    result = BacktestResultRepository().get(backtest_id)
    try:
        points = equity_points(result.equity_curve)
    except DataValidationError as exc:
        raise click.ClickException(f"backtest {backtest_id} cannot be plotted: {exc}") from exc
    metrics = result.metrics or {}
    shown = {"sharpe": ("Sharpe", "{:.2f}"), "total_return": ("return", "{:+.2%}"),
             "max_drawdown": ("max drawdown", "{:.2%}")}
    summary = ", ".join(f"{label} {pattern.format(metrics[name])}" for name, (label, pattern) in shown.items()
                        if isinstance(metrics.get(name), (int, float)) and not isinstance(metrics[name], bool))
    _save(equity_chart, out, f"{result.name}" + (f" ({summary})" if summary else ""), points)
