"""``COPY ... FROM STDIN`` of a price source, and the one mapping of the server's refusals.

Three sources feed ``COPY``: rows (:mod:`._rows`), a CSV file (:mod:`._csv`) and
a frame or Parquet file (:mod:`._frames`). Each is a :class:`CopySource`. None
of them judges a value the table's rules can judge: the server holds every row
to the CHECK constraints derived from ``Meta.rules``, and a row it refuses is
handed back to its source, which validates it again (``validate_price_row``)
so the error is validation's own, located in the source's own terms (a row, or
a file's line).
"""
from __future__ import annotations

import re
from typing import Protocol

import psycopg2

from .. import telemetry
from ..errors import DataValidationError, DuplicateKeyError, MarketstoreError, duplicate_key
from ..models import PRICE_INPUT_COLUMNS

COPY_COLUMNS = ", ".join(f'"{c}"' for c in PRICE_INPUT_COLUMNS)
"""The columns every source writes, in this order (``interval`` and ``adj_close`` may be NULL: ``\\N``)."""


class CopySource(Protocol):
    """What :func:`copy` and ``PriceRepository`` need of a source of price rows."""

    error: BaseException | None
    """What was raised while the source was read (re-raised as itself, not as psycopg2's generic error)."""

    @property
    def complete(self) -> bool:
        """Whether every row it writes has its interval (else some are NULL, to be inferred when staged)."""

    @property
    def rereadable(self) -> bool:
        """Whether :meth:`rewound` can read the source again from its first row."""

    def read(self, size: int = -1) -> str | bytes:
        """The next chunk of COPY data; empty at the end."""

    def rewound(self) -> "CopySource":
        """A source reading the same data again (only when :attr:`rereadable`)."""

    def copy_into(self, db, table: str) -> int:
        """COPY every row into ``table`` on the session's connection; returns the number of rows."""

    def first_key(self) -> tuple | None:
        """``(symbol, interval, timestamp)`` of the first row when cheap to know, else ``None``."""

    def where(self, line: int) -> dict:
        """The location (``row``, or ``source`` and ``line``) of COPY data line ``line``, for errors."""

    def located(self, number: int | None) -> dict:
        """The location of the ``number``-th row of the whole input (``None``: the input itself)."""

    def verdict(self, line: int) -> tuple[DataValidationError | None, object]:
        """Validation's error for COPY line ``line`` if it refuses the row, else ``(None, the row or its text)``."""


# A server refusal names the COPY's line (and column) only in its context text.
_COPY_ERROR = re.compile(r'COPY [\w.]+, line (\d+)(?:, column (\w+))?(?:: "(.*)")?', re.DOTALL)


def refused_line(exc: psycopg2.Error) -> tuple[int, str | None, str | None] | None:
    """(COPY line, column, quoted value) of a row the server refused for its data, else ``None``."""
    code = exc.pgcode or ""
    found = _COPY_ERROR.search(getattr(exc.diag, "context", None) or "")
    if not found or not (code.startswith("22") or code in ("23502", "23505", "23514")):
        return None
    return int(found.group(1)), found.group(2), found.group(3)


def duplicate(exc: psycopg2.Error, **where) -> DuplicateKeyError:
    """The unique violation ``exc`` (23505) with its key as data, located."""
    return duplicate_key(exc, **where)


def refusal(exc: psycopg2.Error, source: CopySource) -> MarketstoreError | None:
    """The row the server refused, as the error naming it where the source has it.

    A repeated or stored key is a :class:`DuplicateKeyError`; a bad row is
    validation's own error when validation refuses it, else (a rule at the
    rounding edge, a row no longer at hand) the server's words. ``None`` for
    anything that is not a row's fault (a lost connection...): the usual
    translation applies.
    """
    found = refused_line(exc)
    if found is None:
        return None
    line, column, quoted = found
    where = source.where(line)
    if exc.pgcode == "23505":
        return duplicate(exc, **where)
    error, value = source.verdict(line)
    if error is not None:
        return error.at(**where)
    rule = exc.diag.constraint_name
    return DataValidationError(column or "row", quoted if quoted is not None else value,
                               f"a row within the rule {rule}" if rule
                               else f"a value the server accepts (it said: {exc.diag.message_primary})", **where)


def copy(db, sql: str, source: CopySource) -> int:
    """Run ``COPY ... FROM STDIN`` of ``source`` on the session's connection; returns the rows copied."""
    cursor = db.connection().cursor()
    record = telemetry.statement(db, sql)  # its span, with the rows copied; None when telemetry is off
    try:
        try:
            cursor.copy_expert(sql, source, size=64 * 1024)
        except psycopg2.Error as exc:
            if source.error is not None:
                raise source.error from None
            refused = refusal(exc, source)
            if refused is None:
                raise
            raise refused from exc
    except BaseException as exc:
        if record is not None:
            record.end(exc)
        raise
    finally:
        cursor.close()
    if record is not None:
        record.end(rows=cursor.rowcount)
    return cursor.rowcount
