"""``marketstore migrate | verify | health | grant | demo``: the schema, the server, the demo."""
from __future__ import annotations

import click

from ..connection import db_connection
from ..migrations import DatabaseMigration, grant_application_role
from . import demo as demo_data
from .common import command

@click.command()
@command
def migrate() -> None:
    """Apply pending schema migrations (under an advisory lock).

    \b
    Example:
      marketstore migrate --database postgresql://app@db.internal/market
    """
    applied = DatabaseMigration().migrate()
    click.echo(f"Applied {len(applied)} migration(s){': ' + ', '.join(applied) if applied else ''}.")


@click.command()
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
        # On a standby some comparisons cannot be made: say so rather than call them drift.
        unchecked = sum(" not compared: " in problem for problem in problems)
        found = len(problems) - unchecked
        parts = [f"{found} schema difference(s)"] if found else []
        parts += [f"{unchecked} comparison(s) not made"] if unchecked else []
        raise click.ClickException(", ".join(parts))
    click.echo("Schema matches the models.")


@click.command()
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


@click.command(short_help="Give ROLE row access to the tables and nothing else.")
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


@click.command()
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


COMMANDS = (migrate, verify, health, grant, demo)
