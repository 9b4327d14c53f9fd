"""The ``marketstore`` command. Library errors become one line and exit status 1 here."""
from __future__ import annotations

import functools
import logging
import os
import re
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import click

from . import demo as demo_data
from . import embedded
from .config import URL_VAR, is_configured
from .connection import CONNECT_TIMEOUT, db_connection, initialize_database
from .errors import (
    DatabaseConnectionError,
    IntegrityViolation,
    MarketstoreError,
    PoolExhaustedError,
    driver_error,
)
from .ingest import file_size, load_articles, load_price_file, read_articles
from .migrations import DatabaseMigration, grant_application_role
from .models import ORDER_STATUSES, SIGNAL_TYPES
from .output import FORMATS, render
from .plotting import PlotUnavailable
from .repositories import (
    ArticleRepository,
    BacktestResultRepository,
    OrderRepository,
    PriceRepository,
    TradingSignalRepository,
)

logger = logging.getLogger(__name__)

FAR_PAST, FAR_FUTURE = "0001-01-01", "9999-12-31"


def _connect(url: str | None) -> None:
    """Bind the models to ``--database``, else the environment, else the embedded server."""
    if url is None and not is_configured():
        try:
            url = embedded.embedded_url()
        except (subprocess.CalledProcessError, OSError) as exc:
            # pgserver's initdb/pg_ctl failed; it logs their output (shown with -v).
            step = (f"{Path(exc.cmd[0]).name} exited with status {exc.returncode}"
                    if isinstance(exc, subprocess.CalledProcessError) else str(exc))
            raise embedded.EmbeddedUnavailable(
                f"the embedded PostgreSQL in {embedded.data_dir()} could not start ({step}; -v shows more): "
                f"set {URL_VAR} or pass --database to use another server") from exc
        click.echo(f"Using the embedded PostgreSQL, data in {embedded.data_dir()}", err=True)
        click.echo(f"  (set {URL_VAR} or pass --database to use another server)", err=True)
    initialize_database(url)


def command(fn):
    """Open the database before ``fn`` and turn library errors into one clean line."""

    @functools.wraps(fn)
    def wrapper(*args, database=None, **kwargs):
        try:
            _connect(database)
            return fn(*args, **kwargs)
        except (MarketstoreError, embedded.EmbeddedUnavailable, PlotUnavailable,
                demo_data.DemoError) as exc:
            raise click.ClickException(_hint(exc)) from exc
        finally:
            db_connection.close()

    return click.option(
        "--database", metavar="URL", default=None,
        help=f"PostgreSQL URL (overrides {URL_VAR}; default: the environment, else the embedded server).",
    )(wrapper)


def _hint(exc: Exception) -> str:
    """The one line a person reads: what failed, where (password masked), what to do."""
    text = str(exc)
    settings = db_connection.settings
    where = settings.safe_url() if settings is not None else "the database"
    missing = re.search(r'relation "([^"]+)" does not exist', text)
    if missing:
        return f"table {missing.group(1)} does not exist in {where}: run `marketstore migrate` first"
    if isinstance(exc, DatabaseConnectionError) and not isinstance(exc, PoolExhaustedError):
        driver = driver_error(exc)
        if driver is not None:  # libpq's reason, without its own "connection to server ... failed:"
            reason = str(driver).strip().splitlines()[0]
            reason = re.sub(r"^connection to server .*? failed: ", "", reason)
            return f"cannot connect to {where}: {re.sub(r'^FATAL: +', '', reason)}"
    return text


def _format_option(fn):
    return click.option("--format", "fmt", type=click.Choice(FORMATS), default="table", show_default=True,
                        help="table for a person; csv or json for a pipe.")(fn)


def _range_options(fn):
    fn = click.option("--end", required=True, metavar="TIME",
                      help="End, exclusive (ISO-8601 date or time; UTC unless it has an offset).")(fn)
    return click.option("--start", required=True, metavar="TIME",
                        help="Start, inclusive (ISO-8601 date or time; UTC unless it has an offset).")(fn)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("-v", "--verbose", count=True, help="Log more (-v info, -vv debug).")
def main(verbose: int) -> None:
    """marketstore: prices, news, sentiment, events, signals, orders and backtests in PostgreSQL.

    With no database configured, commands use an embedded PostgreSQL.

    \b
    Example:
      marketstore demo
      marketstore query prices AAPL --start 2024-03-08 --end 2024-03-09 --bucket 1h
    """
    # Errors reach the user once, as the command's own line; logs only on request.
    level = (logging.CRITICAL, logging.INFO, logging.DEBUG)[min(verbose, 2)]
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    # The pool sets it too; this also covers the migration and admin connections.
    os.environ.setdefault("PGCONNECT_TIMEOUT", CONNECT_TIMEOUT)


# -- schema and administration ---------------------------------------------------

@main.command()
@command
def migrate() -> None:
    """Apply pending schema migrations (under an advisory lock).

    \b
    Example:
      marketstore migrate --database postgresql://app@db.internal/market
    """
    applied = DatabaseMigration().migrate()
    click.echo(f"Applied {len(applied)} migration(s){': ' + ', '.join(applied) if applied else ''}.")


@main.command()
@command
def verify() -> None:
    """Compare the live schema with the models; exit 1 on any drift.

    \b
    Example:
      marketstore verify
    """
    problems = DatabaseMigration().verify_schema()
    for problem in problems:
        click.echo(problem)
    if problems:
        raise click.ClickException(f"{len(problems)} schema difference(s)")
    click.echo("Schema matches the models.")


@main.command()
@command
def health() -> None:
    """Check the server answers; print its version and the pool status.

    \b
    Example:
      marketstore health
    """
    with db_connection.session("health") as db:
        version = db.execute_sql("SHOW server_version").fetchone()[0]
    settings = db_connection.settings
    click.echo(f"OK: PostgreSQL {version} at {settings.safe_url()}")
    status = db_connection.pool_status()
    click.echo("pool: " + ", ".join(f"{key}={value}" for key, value in status.items()))


@main.command(short_help="Give ROLE row access to the tables and nothing else.")
@click.argument("role")
@click.option("--create", is_flag=True, help="Create the role (LOGIN, no password) if it does not exist.")
@command
def grant(role: str, create: bool) -> None:
    """Give ROLE row access to the tables and nothing else (run as the table owner).

    ROLE can SELECT/INSERT/UPDATE/DELETE rows and use the id sequences; it
    cannot DROP, TRUNCATE or CREATE, and the order audit trail is append-only.
    The same SQL ships as marketstore/sql/roles.sql.

    \b
    Example:
      marketstore grant marketstore_app --create
    """
    grant_application_role(role, create=create)
    click.echo(f"Granted row access on the marketstore tables to {role}.")


# -- demo ----------------------------------------------------------------------

@main.command()
@click.option("--reset", is_flag=True, help="Delete the demo's rows (only those) and load them again.")
@click.option("--seed", type=int, default=demo_data.SEED, show_default=True,
              help="Seed of the synthetic market.")
@command
def demo(reset: bool, seed: int) -> None:
    """Load a synthetic market week and print a short report.

    Migrates the schema, then loads 24 symbols x 5 trading days of 1-minute
    bars (4-8 March 2024), 300 articles with sentiment scores, events,
    signals, orders moved through their state machine and three backtests,
    all in one transaction. Running it again loads nothing new; --reset
    starts over. Other data in the database is never touched.

    \b
    Example:
      marketstore demo
      marketstore demo --reset --database postgresql://postgres@localhost/scratch
    """
    applied = DatabaseMigration().migrate()
    if applied:
        click.echo(f"Applied {len(applied)} migration(s): {', '.join(applied)}.", err=True)
    result = demo_data.load(seed, reset=reset, step=lambda line: click.echo(f"  {line}", err=True))
    if result.loaded:
        click.echo(f"Loaded the demo market (seed {seed}) in {result.seconds:.1f} s.", err=True)
    else:
        click.echo(f"The demo market (seed {seed}) is already loaded; --reset starts over.", err=True)
    click.echo(demo_data.report())
    click.echo("\nNext:\n"
               "  marketstore query prices AAPL --start 2024-03-08 --end 2024-03-09 --bucket 1h\n"
               "  marketstore query articles --symbol NVDA\n"
               "  marketstore query backtests --best sharpe\n"
               "  marketstore plot prices AAPL --start 2024-03-08 --end 2024-03-09 --bucket 5m --out aapl.png")


# -- ingest --------------------------------------------------------------------

@contextmanager
def _progress(path: str, label: str):
    """A byte-counting progress bar on a terminal; ``None`` (silence) when piped."""
    size = file_size(path)
    if not size or not sys.stderr.isatty():
        yield None
        return
    with click.progressbar(length=size, label=label, file=sys.stderr) as bar:
        yield bar.update


@main.group()
def ingest() -> None:
    """Load price bars (CSV) or articles (JSON Lines) from files.

    A bad file loads nothing; the error names its line and field.

    \b
    Example:
      marketstore ingest prices bars.csv
      marketstore ingest articles news.jsonl
    """


@ingest.command("prices")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--upsert", is_flag=True, help="Update bars that already exist instead of refusing the file.")
@click.option("--interval", default="1m", show_default=True,
              help="Bar interval of rows when the file has no interval column.")
@command
def ingest_prices(file: str, upsert: bool, interval: str) -> None:
    """Load price bars from a CSV FILE (PostgreSQL COPY; --upsert: INSERT ... ON CONFLICT).

    The header is symbol,timestamp,open,high,low,close,volume[,interval], in
    any order; timestamps are ISO-8601, UTC unless they carry an offset. The
    whole file loads in one transaction: a bad line loads nothing. A bar
    already stored, or twice in the file, is refused; with --upsert it is
    updated (twice in the file: the last one wins).

    \b
    Example:
      marketstore ingest prices bars.csv
      marketstore ingest prices corrections.csv --upsert
    """
    started = time.perf_counter()
    try:
        with _progress(file, "prices") as tick:
            count = load_price_file(file, interval, upsert, tick)
    except IntegrityViolation as exc:
        key = re.search(r"=\((.*)\) already exists", str(exc))
        line = re.search(r", (line \d+): ", str(exc))
        bar = f"the bar ({key.group(1)})" if key else f"a bar ({exc})"
        raise click.ClickException(f"{file}: {line.group(1) + ': ' if line else ''}{bar} is already stored or "
                                   "appears earlier in the file; use --upsert to update existing bars "
                                   "(nothing was loaded)") from exc
    verb = "Inserted or updated" if upsert else "Loaded"
    click.echo(f"{verb} {count:,} price bars from {file} in {time.perf_counter() - started:.1f} s.")


@ingest.command("articles")
@click.argument("file", type=click.Path(dir_okay=False))
@command
def ingest_articles(file: str) -> None:
    """Load news articles from a JSON Lines FILE (one object per line).

    Fields: title (required), content, source, url, published_at (ISO-8601),
    symbols (a list), metadata (an object). An article whose url is already
    stored is skipped, so loading a file twice is harmless. A bad line loads
    nothing.

    \b
    Example:
      marketstore ingest articles news.jsonl
      # news.jsonl: {"title": "Apple beats estimates", "url": "https://...", "symbols": ["AAPL"]}
    """
    started = time.perf_counter()
    with _progress(file, "articles") as tick:
        created, skipped = load_articles(read_articles(file, tick))
    note = f" ({skipped:,} already stored, skipped)" if skipped else ""
    click.echo(f"Loaded {created:,} articles from {file}{note} in {time.perf_counter() - started:.1f} s.")


# -- query ---------------------------------------------------------------------

@main.group()
def query() -> None:
    """Read stored data as a table, CSV or JSON.

    Prices, articles, signals, orders and backtests.

    \b
    Example:
      marketstore query prices AAPL --start 2024-03-08 --end 2024-03-09 --bucket 1h
      marketstore query orders --status open --format csv > open_orders.csv
    """


def _emit(rows: list[dict], columns: list[str], fmt: str, table_columns: list[str] | None = None) -> None:
    click.echo(render(rows, table_columns if fmt == "table" and table_columns else columns, fmt))


def _bars(symbol: str, start: str, end: str, bucket: str | None, interval: str) -> list:
    prices = PriceRepository()
    if bucket:
        return prices.resample(symbol, start, end, bucket=bucket, interval=interval)
    return prices.get_range(symbol, start, end, interval=interval)


@query.command("prices")
@click.argument("symbol")
@_range_options
@click.option("--bucket", default=None, metavar="WIDTH", help="Resample in SQL into bars of WIDTH: 5m, 1h, 1d, 1w.")
@click.option("--interval", default="1m", show_default=True, help="Bar interval to read.")
@_format_option
@command
def query_prices(symbol: str, start: str, end: str, bucket: str | None, interval: str, fmt: str) -> None:
    """Price bars of SYMBOL with start <= time < end, oldest first.

    CSV output without --bucket has the columns `ingest prices` reads.

    \b
    Example:
      marketstore query prices AAPL --start 2024-03-08 --end 2024-03-09 --bucket 1h
      marketstore query prices AAPL --start 2024-03-08T14:30 --end 2024-03-08T15:00 --format json
    """
    bars = _bars(symbol, start, end, bucket, interval)
    if bucket:
        rows = [{"symbol": symbol, "timestamp": b.bucket, "open": b.open, "high": b.high, "low": b.low,
                 "close": b.close, "volume": b.volume, "bars": b.count} for b in bars]
        columns = ["symbol", "timestamp", "open", "high", "low", "close", "volume", "bars"]
    else:
        rows = [{name: getattr(b, name) for name in ("symbol", "timestamp", "open", "high", "low", "close",
                                                      "volume", "interval")} for b in bars]
        columns = ["symbol", "timestamp", "open", "high", "low", "close", "volume", "interval"]
    _emit(rows, columns, fmt, [c for c in columns if c not in ("symbol", "interval")])


@query.command("articles")
@click.option("--symbol", default=None, help="Articles tagged with SYMBOL, newest first.")
@click.option("--search", "text", default=None, metavar="TEXT",
              help='Full-text search, best match first (words, "a phrase", or, -word).')
@click.option("--since", default=None, metavar="TIME", help="Only articles published at or after TIME (--symbol).")
@click.option("--as-of", default=None, metavar="TIME", help="Only articles ingested at or before TIME (point in time).")
@click.option("--limit", default=20, show_default=True, type=click.IntRange(1, 10_000))
@_format_option
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
    _emit(rows, columns, fmt, ["id", "published_at", "symbols", "source", "title"])


@query.command("signals")
@click.option("--symbol", default=None, help="Signals for SYMBOL.")
@click.option("--type", "signal_type", type=click.Choice(SIGNAL_TYPES), default=None, help="Only this signal type.")
@click.option("--since", default=None, metavar="TIME", help="Only signals at or after TIME.")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 10_000),
              help="Show the most recent N.")
@_format_option
@command
def query_signals(symbol, signal_type, since, limit, fmt) -> None:
    """Trading signals for a symbol and/or of a type, oldest first (the most recent --limit).

    \b
    Example:
      marketstore query signals --symbol AAPL
      marketstore query signals --type buy --since 2024-03-08 --format csv
    """
    signals = TradingSignalRepository()
    if symbol:
        found = signals.in_range(symbol, since or FAR_PAST, FAR_FUTURE)
        found = [s for s in found if signal_type is None or s.signal_type == signal_type]
    elif signal_type:
        found = signals.by_type(signal_type, since=since)[::-1]
    else:
        raise click.UsageError("give --symbol SYMBOL and/or --type buy|sell|hold")
    columns = ["id", "timestamp", "symbol", "signal_type", "cms_score", "sentiment_component",
               "technical_component", "regime_component", "explanation"]
    rows = [{c: getattr(s, c) for c in columns} for s in found[-limit:]]
    _emit(rows, columns, fmt, columns[:-1])


@query.command("orders")
@click.option("--status", type=click.Choice(("open",) + ORDER_STATUSES), default="open", show_default=True,
              help="open = pending, submitted or partially_filled.")
@click.option("--symbol", default=None, help="Only orders for SYMBOL.")
@_format_option
@command
def query_orders(status, symbol, fmt) -> None:
    """Orders by status, oldest first.

    \b
    Example:
      marketstore query orders
      marketstore query orders --status filled --symbol AAPL --format json
    """
    orders = OrderRepository()
    if status == "open":
        found = orders.open_orders(symbol)
    else:
        found = [o for o in orders.by_status(status) if symbol is None or o.symbol == symbol]
    columns = ["order_id", "timestamp", "symbol", "side", "order_type", "quantity", "price", "status",
               "filled_quantity", "average_fill_price", "updated_at"]
    rows = [{c: getattr(o, c) for c in columns} for o in found]
    _emit(rows, columns, fmt, columns[:-1])


@query.command("backtests")
@click.option("--best", "metric", default=None, metavar="METRIC",
              help="Rank by this numeric metric (sharpe, total_return...), best first.")
@click.option("--ascending", is_flag=True, help="With --best: lowest first (e.g. for a loss metric).")
@click.option("--limit", default=10, show_default=True, type=click.IntRange(1, 10_000))
@_format_option
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


# -- plot ----------------------------------------------------------------------

@main.group()
def plot() -> None:
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


@plot.command("prices")
@click.argument("symbol")
@_range_options
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
    from .plotting import price_chart, require_matplotlib

    require_matplotlib()
    bars = _bars(symbol, start, end, bucket, interval)
    if not bars:
        raise click.ClickException(f"no {interval} bars for {symbol} with {start} <= time < {end}")
    title = f"{symbol} {bucket or interval} bars, {start} to {end} (UTC)"
    _save(price_chart, out, title, bars)


@plot.command("backtest")
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
    from .plotting import equity_chart, equity_points, require_matplotlib

    require_matplotlib()
    result = BacktestResultRepository().get(backtest_id)
    try:
        points = equity_points(result.equity_curve)
    except ValueError as exc:
        raise click.ClickException(f"backtest {backtest_id} cannot be plotted: {exc}") from exc
    metrics = result.metrics or {}
    shown = {"sharpe": ("Sharpe", "{:.2f}"), "total_return": ("return", "{:+.2%}"),
             "max_drawdown": ("max drawdown", "{:.2%}")}
    summary = ", ".join(f"{label} {pattern.format(metrics[name])}" for name, (label, pattern) in shown.items()
                        if isinstance(metrics.get(name), (int, float)) and not isinstance(metrics[name], bool))
    _save(equity_chart, out, f"{result.name}" + (f" ({summary})" if summary else ""), points)


if __name__ == "__main__":  # pragma: no cover
    main()
