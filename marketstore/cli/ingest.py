"""``marketstore ingest prices | articles``: load files, all or nothing."""
from __future__ import annotations

import os
import sys
import time
from contextlib import contextmanager

import click

from ..errors import DataValidationError, DuplicateKeyError
from ..repositories import PRICE_HEADER, ArticleRepository, PriceRepository
from .common import command, in_file


def _file_size(path: str) -> int | None:
    """Size in bytes for a progress bar, or ``None`` when unknown."""
    try:
        return os.path.getsize(path)
    except OSError:
        return None


@contextmanager
def _progress(path: str, label: str):
    """A byte-counting progress bar on a terminal; ``None`` (silence) when piped."""
    size = _file_size(path)
    if not size or not sys.stderr.isatty():
        yield None
        return
    with click.progressbar(length=size, label=label, file=sys.stderr) as bar:
        yield bar.update


@click.group("ingest")
def group() -> None:
    """Load price bars (CSV or Parquet) or articles (JSON Lines) from files.

    A bad file loads nothing; the error names its line and field.

    \b
    Example:
      marketstore ingest prices bars.csv
      marketstore ingest articles news.jsonl
    """


@group.command("prices")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--upsert", is_flag=True, help="Update bars that already exist instead of refusing the file.")
@click.option("--interval", default=None,
              help="Bar interval (1m, 1h, 1d...) of rows the file gives none; default: each symbol's, "
                   "inferred from the spacing of its bars.")
@click.option("--symbol", default=None, help="The symbol of every bar, for a file without a symbol column.")
@command
def ingest_prices(file: str, upsert: bool, interval: str | None, symbol: str | None) -> None:
    """Load price bars from a CSV or Parquet FILE (PostgreSQL COPY; --upsert: INSERT ... ON CONFLICT).

    A FILE ending in .parquet is read one record batch at a time (the
    'frames' extra: pip install 'marketstore[frames]'); its columns are
    named as in a CSV header and an error names its row (1-based).

    The header is symbol,timestamp,open,high,low,close,volume[,interval][,adj_close],
    in any order and any case (Open, Adj Close); with --symbol, no symbol
    column. Timestamps are ISO-8601, UTC unless they carry an offset; an
    empty interval cell takes --interval; empty lines are skipped. Without
    --interval and an interval column, each symbol's interval is inferred
    from its bars' spacing (daily bars: 1d). The whole
    file loads in one transaction: a bad line loads nothing, with or without
    --upsert (one reader). A bar already stored, or twice in the file, is
    refused; with --upsert it is updated (twice in the file: the last one wins).

    \b
    Example:
      marketstore ingest prices bars.csv
      marketstore ingest prices bars.parquet
      marketstore ingest prices corrections.csv --upsert
      marketstore ingest prices GOOG.parquet --symbol GOOG
    """
    # An empty CSV file is no rows to the repository; a user meant some.
    if _file_size(file) == 0 and os.path.isfile(file) and not file.lower().endswith(".parquet"):
        raise DataValidationError("header", "", f"the header {PRICE_HEADER} (the file is empty)", source=file, line=1)
    prices = PriceRepository()
    load = prices.upsert_many if upsert else prices.copy_from
    started = time.perf_counter()
    try:
        with _progress(file, "prices") as tick:
            count = load(file, interval=interval, progress=tick, symbol=symbol)
    except DuplicateKeyError as exc:
        where = in_file(exc.source or file, line=exc.line, row=exc.row)
        raise click.ClickException(f"{where}: the bar ({', '.join(exc.key.values())}) is already "
                                   "stored or appears earlier in the file; use --upsert to update existing bars "
                                   "(nothing was loaded)") from exc
    took = f"in {time.perf_counter() - started:.1f} s"
    if upsert:
        click.echo(f"Inserted {count.inserted:,} and updated {count.updated:,} price bars from {file} {took} "
                   f"({count.unchanged:,} unchanged).")
    else:
        click.echo(f"Loaded {count:,} price bars from {file} {took}.")


@group.command("articles")
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
        created, skipped = ArticleRepository().copy_from(file, progress=tick)
    note = f" ({skipped:,} already stored, skipped)" if skipped else ""
    click.echo(f"Loaded {created:,} articles from {file}{note} in {time.perf_counter() - started:.1f} s.")
