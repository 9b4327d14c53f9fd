"""``marketstore plot prices | backtest``: charts to image files."""
from __future__ import annotations

import click

from ..errors import DataValidationError
from ..repositories import BacktestResultRepository
from .plotting import equity_chart, equity_points, price_chart, require_matplotlib
from .common import command, range_options, read_bars


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
@click.option("--bucket", default=None, metavar="WIDTH", help="Resample into bars of WIDTH (5m, 1h, 1d) first.")
@click.option("--interval", default="1m", show_default=True, help="Bar interval to read.")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Image file (.png, .svg, .pdf).")
@command
def plot_prices(symbol, start, end, bucket, interval, out) -> None:
    """Chart SYMBOL's bars with start <= time < end: candles (or the close line
    when there are many) over a volume panel.

    \b
    Example:
      marketstore plot prices AAPL --start 2024-03-08 --end 2024-03-09 --bucket 5m --out aapl.png
    """
    require_matplotlib()
    bars = read_bars(symbol, start, end, bucket, interval)
    if not bars:
        raise click.ClickException(f"no {interval} bars for {symbol} with {start} <= time < {end}")
    title = f"{symbol} {bucket or interval} bars, {start} to {end} (UTC)"
    _save(price_chart, out, title, bars)


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
