"""What every ``marketstore`` command shares: the database option, one-line errors, output options."""
from __future__ import annotations

import contextlib
import datetime as dt
import functools
import subprocess
from pathlib import Path

import click
import psycopg2.errorcodes

from .. import embedded
from .. import validation as check
from ..config import URL_VAR, is_configured
from ..connection import db_connection, initialize_database
from ..errors import (DatabaseConnectionError, DataValidationError, EmbeddedUnavailable, MarketstoreError,
                      PoolExhaustedError, driver_error, location)
from ..extras import require
from ..repositories import PriceRepository
from .output import FORMATS, render


def connect(url: str | None) -> None:
    """Bind the models to ``--database``, else the environment, else the embedded server."""
    if url is None and not is_configured():
        try:
            url = embedded.embedded_url()
        except (subprocess.CalledProcessError, OSError) as exc:
            # pgserver's initdb/pg_ctl failed; it logs their output (shown with -v).
            step = (f"{Path(exc.cmd[0]).name} exited with status {exc.returncode}"
                    if isinstance(exc, subprocess.CalledProcessError) else str(exc))
            raise EmbeddedUnavailable(
                f"the embedded PostgreSQL in {embedded.data_dir()} could not start ({step}; -v shows more): "
                f"set {URL_VAR} or pass --database to use another server") from exc
        click.echo(f"Using the embedded PostgreSQL, data in {embedded.data_dir()}", err=True)
        click.echo(f"  (set {URL_VAR} or pass --database to use another server)", err=True)
    initialize_database(url)


def command(fn):
    """Open the database before ``fn`` and turn every marketstore error into one clean line."""

    @functools.wraps(fn)
    def wrapper(*args, database=None, **kwargs):
        try:
            connect(database)
            return fn(*args, **kwargs)
        except MarketstoreError as exc:
            raise click.ClickException(hint(exc)) from exc
        finally:
            db_connection.close()

    return click.option(
        "--database", metavar="URL", default=None,
        help=f"PostgreSQL URL (overrides {URL_VAR}; default: the environment, else the embedded server).",
    )(wrapper)


def shown(value, limit: int = 60) -> str:
    """``value`` as a person reads it in an error line: its repr, cut to ``limit`` characters."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def hint(exc: MarketstoreError) -> str:
    """The one line a person reads: what failed, where (password masked), what to do."""
    settings = db_connection.settings
    where = settings.safe_url() if settings is not None else "the database"
    if isinstance(exc, DataValidationError) and exc.source is not None:
        got = "" if exc.value == exc.source else f"got {shown(exc.value)}, "
        return f"{in_file(exc.source, line=exc.line, row=exc.row, field=exc.field)}: {got}expected {exc.expected}"
    driver = driver_error(exc)
    if driver is not None and driver.pgcode == psycopg2.errorcodes.UNDEFINED_TABLE:
        return f"{driver.diag.message_primary} in {where}: run `marketstore migrate` first"
    if isinstance(exc, DatabaseConnectionError) and not isinstance(exc, PoolExhaustedError) and driver is not None:
        # A refused connection has no SQLSTATE or diagnostics in psycopg2, only libpq's
        # text: shown whole (its first line), never taken apart.
        return f"cannot connect to {where}: {str(driver).strip().splitlines()[0]}"
    return str(exc)


def in_file(source: str, **where) -> str:
    """``"bars.csv: line 4, field 'close'"``: the file, then :func:`~marketstore.errors.location` of ``where``."""
    rest = location(**where)
    return f"{source}: {rest}" if rest else source


def format_option(fn):
    return click.option("--format", "fmt", type=click.Choice(FORMATS), default="table", show_default=True,
                        help="table for a person; csv or json for a pipe.")(fn)


class Moment(click.ParamType):
    """A range bound: a date (``2024-03-08``: midnight, in ``--tz`` where a zone is given) or an ISO-8601 time."""

    name = "time"

    def convert(self, value, param, ctx):
        if isinstance(value, (dt.date, dt.datetime)):
            return value
        try:
            return dt.date.fromisoformat(value.strip())
        except ValueError:
            return value  # a time: the library reads it (and names it when it cannot)


def range_options(fn):
    fn = click.option("--end", default=None, type=Moment(), metavar="TIME",
                      help="End, exclusive (ISO-8601 date or time; UTC unless it has an offset; "
                           "a date is midnight in --tz). Default: after the last bar.")(fn)
    return click.option("--start", default=None, type=Moment(), metavar="TIME",
                        help="Start, inclusive (ISO-8601 date or time; UTC unless it has an offset; "
                             "a date is midnight in --tz). Default: the first bar.")(fn)


def tz_option(fn):
    return click.option("--tz", default=None, metavar="ZONE",
                        help="IANA time zone (America/New_York) that buckets align to and times are shown in. "
                             "Default: UTC.")(fn)


def interval_option(fn):
    return click.option("--interval", default=None, metavar="WIDTH",
                        help="Bar interval to read (1m, 1h, 1d). Default: the one stored for the symbol.")(fn)


def emit(rows: list[dict], columns: list[str], fmt: str, table_columns: list[str] | None = None) -> None:
    """Print ``rows`` as ``fmt``; a table shows ``table_columns`` when given."""
    click.echo(render(rows, table_columns if fmt == "table" and table_columns else columns, fmt))


def read_bars(symbol: str, start, end, bucket: str | None, interval: str | None, tz: str | None = None) -> list:
    """Stored bars of ``symbol``, resampled in SQL into ``bucket`` bars (aligned in ``tz``) when given.

    Without a bucket the bars are ``Price`` rows; ``tz`` then only places a
    date bound at midnight in that zone (their timestamps stay UTC).
    """
    prices = PriceRepository()
    with several_intervals(symbol, interval):
        if bucket:
            return prices.resample(symbol, start, end, bucket=bucket, interval=interval, tz=tz)
        return prices.get_range(symbol, *check.span(start, end, tz), interval=interval)


@contextlib.contextmanager
def several_intervals(symbol: str, interval: str | None):
    """Turn the library's refusal of a symbol with several intervals into a line saying ``--interval``."""
    try:
        yield
    except DataValidationError as exc:
        if interval is not None or exc.field != "interval":
            raise
        stored = ", ".join(s.interval for s in PriceRepository().series([symbol]))
        raise click.ClickException(f"{symbol} has bars of several intervals ({stored}): "
                                   f"pass --interval with one of them") from exc


def stored_hint(symbol: str) -> str:
    """What is stored for ``symbol`` (its series: interval, first and last bar), for a read that found nothing."""
    found = PriceRepository().series([symbol])
    if not found:
        return f"nothing is stored for {symbol}"
    return f"{symbol} has " + "; ".join(
        f"{s.interval} bars from {s.first:%Y-%m-%d %H:%M} to {s.last:%Y-%m-%d %H:%M} UTC" for s in found)


def write_parquet(symbol: str, start, end, bucket: str | None, interval: str | None, path: str, *,
                  tz: str | None = None, fill: str | None = None) -> int:
    """Bars of ``symbol`` (resampled into ``bucket``) as a Parquet file without index; returns the rows.

    Columns ``symbol, timestamp, open, high, low, close, volume[, bars]``: the
    frame of a list of symbols has the ``symbol`` column that ``ingest prices`` reads.
    """
    table = read_frame(symbol, start, end, bucket, interval, tz=tz, fill=fill)
    parquet = require("pyarrow.parquet", "frames")
    try:
        parquet.write_table(table, path)
    except OSError as exc:
        raise DataValidationError("out", path, f"a writable file ({exc.strerror or exc})", source=path) from exc
    return table.num_rows


def read_frame(symbol: str, start, end, bucket: str | None, interval: str | None, *, tz: str | None = None,
               fill: str | None = None):
    """``PriceRepository.frame([symbol], ...)`` as a pyarrow Table (the 'frames' extra): leading columns
    ``symbol, timestamp``, prices and volume as float64, ``bars`` with a bucket."""
    with several_intervals(symbol, interval):
        return PriceRepository().frame([symbol], start, end, interval=interval, bucket=bucket, tz=tz, fill=fill,
                                       library="arrow")
