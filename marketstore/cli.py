"""The ``marketstore`` command. Library errors become one line and exit status 1 here."""
from __future__ import annotations

import functools
import logging
import sys

import click

from . import embedded
from .config import URL_VAR, is_configured
from .connection import db_connection, initialize_database
from .errors import MarketstoreError
from .migrations import DatabaseMigration, grant_application_role

logger = logging.getLogger(__name__)


def _connect(url: str | None) -> None:
    """Bind the models to ``--database``, else the environment, else the embedded server."""
    if url is None and not is_configured():
        url = embedded.embedded_url()
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
        except (MarketstoreError, embedded.EmbeddedUnavailable) as exc:
            raise click.ClickException(_hint(exc)) from exc
        finally:
            db_connection.close()

    return click.option(
        "--database", metavar="URL", default=None,
        help=f"PostgreSQL URL (overrides {URL_VAR}; default: the environment, else the embedded server).",
    )(wrapper)


def _hint(exc: Exception) -> str:
    text = str(exc)
    if "does not exist" in text and "relation" in text:
        return f"{text} (run `marketstore migrate`)"
    return text


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="Log more (-v info, -vv debug).")
def main(verbose: int) -> None:
    """marketstore: prices, news, sentiment, events, signals, orders and backtests in PostgreSQL.

    \b
    Example:
      marketstore migrate && marketstore health
    """
    # Errors reach the user once, as the command's own line; logs only on request.
    level = (logging.CRITICAL, logging.INFO, logging.DEBUG)[min(verbose, 2)]
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)


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


@main.command()
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


if __name__ == "__main__":  # pragma: no cover
    main()
