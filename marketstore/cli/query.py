"""``marketstore query prices | articles | signals | orders | backtests``: read stored data."""
from __future__ import annotations

import click

from ..intervals import zone
from ..models import ORDER_STATUSES, SIGNAL_TYPES
from ..repositories import (PRICE_COLUMNS, ArticleRepository, BacktestResultRepository, OrderRepository, PriceBar,
                            PriceRepository, PriceSeries, TradingSignalRepository)
from ..repositories.prices import FILLS
from .common import (command, emit, format_option, interval_option, range_options, read_bars, read_frame,
                     stored_hint, tz_option, write_parquet)
from .output import FORMATS, render


@click.group("query")
def group() -> None:
    """Read stored data as a table, CSV or JSON.

    Prices (and the series stored), articles, signals, orders and backtests.

    \b
    Example:
      marketstore query prices AAPL --start 2024-03-08 --end 2024-03-09 --bucket 1h
      marketstore query orders --status open --format csv > open_orders.csv
    """


@group.command("prices")
@click.argument("symbol")
@range_options
@click.option("--bucket", default=None, metavar="WIDTH",
              help="Resample in SQL into bars of WIDTH: 5m, 1h, 1d, 1w, 1mo, 1y.")
@tz_option
@interval_option
@click.option("--fill", type=click.Choice(FILLS), default=None,
              help="With --bucket, --start and --end: every bucket of the range; an empty one has NaN prices "
                   "(nan) or the previous close (locf), volume 0. Needs the 'frames' extra; prices are float64.")
@click.option("--format", "fmt", type=click.Choice(FORMATS + ("parquet",)), default="table", show_default=True,
              help="table for a person; csv or json for a pipe; parquet (with --out) for a frame.")
@click.option("--out", type=click.Path(dir_okay=False, writable=True), default=None, metavar="FILE",
              help="Write to FILE instead of the terminal (required for --format parquet).")
@command
def query_prices(symbol: str, start, end, bucket: str | None, tz: str | None, interval: str | None,
                 fill: str | None, fmt: str, out: str | None) -> None:
    """Price bars of SYMBOL with start <= time < end, oldest first.

    Reads the interval stored for SYMBOL (--interval when it has several).
    With --bucket, bars of that width are built in SQL, aligned in --tz and
    labelled by their start in that zone. CSV output without --bucket has
    the columns `ingest prices` reads. Parquet (the 'frames' extra): columns
    symbol, timestamp, open, high, low, close, volume as float64 (and bars
    with --bucket), no index: a file `ingest prices` reads back.

    \b
    Example:
      marketstore query prices AAPL --start 2024-03-08 --end 2024-03-09 --bucket 1h
      marketstore query prices AAPL --start 2024-03-01 --end 2024-04-01 --bucket 1d --tz America/New_York
      marketstore query prices AAPL --start 2024-03-08T14:30 --end 2024-03-08T15:00 --format json
      marketstore query prices AAPL --start 2024-03-01 --end 2024-04-01 --format parquet --out bars.parquet
    """
    if fmt == "parquet":
        if not out:
            raise click.UsageError("--format parquet writes a file: give --out FILE")
        count = write_parquet(symbol, start, end, bucket, interval, out, tz=tz, fill=fill)
        click.echo(f"Wrote {count:,} bars to {out}.", err=True)
        if not count:
            click.echo(f"(no rows: {stored_hint(symbol)})", err=True)
        return
    if fill:
        table = read_frame(symbol, start, end, bucket, interval, tz=tz, fill=fill)
        columns, rows = table.column_names, table.to_pylist()
    elif bucket:  # a bucket's start is its timestamp; "bars" counts the bars it holds
        bars = read_bars(symbol, start, end, bucket, interval, tz)
        values = [name for name in PriceBar._fields if name in PRICE_COLUMNS]
        columns = [*(name for name in PRICE_COLUMNS if name != "interval"), "bars"]
        rows = [{"symbol": symbol, "timestamp": b.bucket, "bars": b.count, **{v: getattr(b, v) for v in values}}
                for b in bars]
    else:
        bars = read_bars(symbol, start, end, bucket, interval, tz)
        columns = list(PRICE_COLUMNS)
        rows = [{name: getattr(b, name) for name in columns} for b in bars]
        if tz:  # shown in the zone asked for, as bucketed bars are (the instant is the same)
            place = zone(tz)
            for row in rows:
                row["timestamp"] = row["timestamp"].astimezone(place)
    table_columns = [c for c in columns if c not in ("symbol", "interval")]
    if out:
        with open(out, "w", encoding="utf-8") as handle:
            handle.write(render(rows, columns, fmt) + "\n")
    elif rows or fmt != "table":
        emit(rows, columns, fmt, table_columns)
    if not rows:
        # A person reading "(no rows)" needs to know what is stored instead (another interval, other dates).
        line = f"(no rows: {stored_hint(symbol)})"
        click.echo(line, err=bool(out) or fmt != "table")


@group.command("series")
@click.argument("symbols", nargs=-1, metavar="[SYMBOL]...")
@format_option
@command
def query_series(symbols: tuple[str, ...], fmt: str) -> None:
    """What is stored: one row per symbol and interval with its first and last bar (UTC).

    All symbols, or only the SYMBOLs given. Index probes, not a scan of the bars.

    \b
    Example:
      marketstore query series
      marketstore query series AAPL MSFT --format json
    """
    found = PriceRepository().series(list(symbols) if symbols else None)
    columns = list(PriceSeries._fields)
    emit([s._asdict() for s in found], columns, fmt)


@group.command("articles")
@click.option("--symbol", default=None, help="Articles tagged with SYMBOL, newest first.")
@click.option("--search", "text", default=None, metavar="TEXT",
              help='Full-text search, best match first (words, "a phrase", or, -word).')
@click.option("--since", default=None, metavar="TIME", help="Only articles published at or after TIME (--symbol).")
@click.option("--as-of", default=None, metavar="TIME", help="Only articles ingested at or before TIME (point in time).")
@click.option("--limit", default=20, show_default=True, type=click.IntRange(1, 10_000))
@format_option
@command
def query_articles(symbol, text, since, as_of, limit, fmt) -> None:
    """News articles: by symbol, by full-text search, or the most recent.

    \b
    Example:
      marketstore query articles --symbol NVDA --limit 5
      marketstore query articles --search "raises guidance" --format json
    """
    if symbol and text:
        raise click.UsageError("use --symbol or --search, not both")
    articles = ArticleRepository()
    if text:
        found = articles.search(text, limit, as_of=as_of)
    elif symbol:
        found = articles.for_symbol(symbol, since=since, limit=limit, as_of=as_of)
    else:
        found = articles.recent(limit, as_of=as_of)
    columns = ["id", "published_at", "symbols", "source", "title", "url", "ingested_at"]
    rows = [{c: getattr(a, c) for c in columns} for a in found]
    emit(rows, columns, fmt, ["id", "published_at", "symbols", "source", "title"])


@group.command("signals")
@click.option("--symbol", default=None, help="Signals for SYMBOL.")
@click.option("--type", "signal_type", type=click.Choice(SIGNAL_TYPES), default=None, help="Only this signal type.")
@click.option("--since", default=None, metavar="TIME", help="Only signals at or after TIME.")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 10_000),
              help="Show the most recent N.")
@format_option
@command
def query_signals(symbol, signal_type, since, limit, fmt) -> None:
    """Trading signals for a symbol and/or of a type, oldest first (the most recent --limit).

    \b
    Example:
      marketstore query signals --symbol AAPL
      marketstore query signals --type buy --since 2024-03-08 --format csv
    """
    if not symbol and not signal_type:
        raise click.UsageError("give --symbol SYMBOL and/or --type buy|sell|hold")
    newest = TradingSignalRepository().recent(limit, symbol=symbol, signal_type=signal_type, since=since)
    columns = ["id", "timestamp", "symbol", "signal_type", "cms_score", "sentiment_component",
               "technical_component", "regime_component", "explanation"]
    rows = [{c: getattr(s, c) for c in columns} for s in reversed(newest)]
    emit(rows, columns, fmt, columns[:-1])


@group.command("orders")
@click.option("--status", type=click.Choice(("open",) + ORDER_STATUSES), default="open", show_default=True,
              help="open = pending, submitted or partially_filled.")
@click.option("--symbol", default=None, help="Only orders for SYMBOL.")
@click.option("--limit", default=100, show_default=True, type=click.IntRange(1, 10_000),
              help="Show the oldest N.")
@format_option
@command
def query_orders(status, symbol, limit, fmt) -> None:
    """Orders by status, oldest first (the first --limit).

    \b
    Example:
      marketstore query orders
      marketstore query orders --status filled --symbol AAPL --format json
    """
    orders = OrderRepository()
    if status == "open":
        found = orders.open_orders(symbol, limit=limit)
    else:
        found = orders.by_status(status, symbol=symbol, limit=limit)
    columns = ["order_id", "timestamp", "symbol", "side", "order_type", "quantity", "price", "status",
               "filled_quantity", "average_fill_price", "updated_at"]
    rows = [{c: getattr(o, c) for c in columns} for o in found]
    emit(rows, columns, fmt, columns[:-1])


@group.command("backtests")
@click.option("--best", "metric", default=None, metavar="METRIC",
              help="Rank by this numeric metric (sharpe, total_return...), best first.")
@click.option("--ascending", is_flag=True, help="With --best: lowest first (e.g. for a loss metric).")
@click.option("--limit", default=10, show_default=True, type=click.IntRange(1, 10_000))
@format_option
@command
def query_backtests(metric, ascending, limit, fmt) -> None:
    """Stored backtest results: the best by a metric, or the most recent.

    \b
    Example:
      marketstore query backtests --best sharpe
      marketstore query backtests --best max_drawdown --limit 3 --format json
    """
    backtests = BacktestResultRepository()
    if metric:
        found = backtests.best_by_metric(metric, limit=limit, descending=not ascending)
    else:
        found = backtests.recent(limit)
    if fmt != "table":
        columns = ["id", "name", "created_at", "config_hash", "metrics", "config"]
        click.echo(render([{c: getattr(b, c) for c in columns} for b in found], columns, fmt))
        return
    shown = [metric] if metric else []
    for name in ("sharpe", "total_return", "max_drawdown", "win_rate", "num_trades"):
        if name not in shown and any(name in b.metrics for b in found):
            shown.append(name)
    rows = [{"id": b.id, "name": b.name, "created_at": b.created_at,
             **{m: b.metrics.get(m) for m in shown}} for b in found]
    click.echo(render(rows, ["id", "name", "created_at", *shown], fmt))
