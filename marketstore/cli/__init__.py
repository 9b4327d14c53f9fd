"""The ``marketstore`` command (entry point ``marketstore.cli:main``).

Each group of commands has its module (:mod:`.admin`, :mod:`.ingest`,
:mod:`.query`, :mod:`.plot`); they only call the library. Every
``MarketstoreError`` becomes one line and exit status 1 (:mod:`.common`).
"""
from __future__ import annotations

import logging
import sys

import click

from . import admin, ingest, plot, query


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


for _command in admin.COMMANDS:
    main.add_command(_command)
main.add_command(ingest.group)
main.add_command(query.group)
main.add_command(plot.group)
