"""Helpers for the command-line tests: run ``marketstore`` in-process with click's runner."""
from __future__ import annotations

from click.testing import CliRunner, Result

from marketstore.cli import main

from helpers import count_rows as count  # noqa: F401 (the name the command-line tests use)


def run(*args) -> Result:
    """Invoke ``marketstore ARGS``; an exception the command did not handle is re-raised."""
    result = CliRunner().invoke(main, [str(a) for a in args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception  # a traceback would have reached the user
    return result


def succeeds(*args) -> Result:
    result = run(*args)
    assert result.exit_code == 0, result.output
    return result


def fails(*args) -> str:
    """Run a command that must fail cleanly: exit 1 and one ``Error:`` line; returns that line."""
    result = run(*args)
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert "Traceback" not in result.output
    return lines[0]
