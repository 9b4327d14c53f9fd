"""Rendering rows for the command line: aligned tables for a person, CSV and JSON for a pipe.

Rows are mappings of column name to value. Decimals keep every digit: plain
text in tables and CSV, strings in JSON (a JSON number would go through float).
Datetimes are shown in their own zone (UTC unless a command was given
``--tz``); tables show minutes, CSV and JSON full ISO-8601 with the offset.
A missing value (``None``, a float NaN) is an empty cell, ``null`` in JSON.
"""
from __future__ import annotations

import csv
import datetime as dt
import decimal
import io
import json
import math
from typing import Any, Iterable, Mapping, Sequence

from ..errors import DataValidationError

FORMATS = ("table", "csv", "json")


def plain(value: decimal.Decimal) -> str:
    """``Decimal('185.50000000')`` -> ``'185.5'``: no trailing zeros, never an exponent."""
    text = format(value.normalize(), "f")
    return "0" if text in ("-0", "") else text


def _missing(value: Any) -> bool:
    """``None``, or a float NaN (an empty bucket's price in a filled frame)."""
    return value is None or (isinstance(value, float) and math.isnan(value))


def _cell(value: Any, for_table: bool) -> str:
    if _missing(value):
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, decimal.Decimal):
        return plain(value)
    if isinstance(value, float):
        return f"{value:.4f}".rstrip("0").rstrip(".") if for_table else repr(value)
    if isinstance(value, dt.datetime):
        if for_table:
            return value.strftime("%Y-%m-%d %H:%M" if not value.second else "%Y-%m-%d %H:%M:%S")
        return value.isoformat()
    if isinstance(value, (list, tuple)):
        if all(isinstance(item, str) for item in value):
            return ",".join(value)
        return json.dumps(value, default=_json_default, separators=(",", ":"))
    if isinstance(value, Mapping):
        return json.dumps(value, default=_json_default, separators=(",", ":"), sort_keys=True)
    return str(value)


def _numeric(value: Any) -> bool:
    return isinstance(value, (int, float, decimal.Decimal)) and not isinstance(value, bool)


def _json_default(value: Any):
    if isinstance(value, decimal.Decimal):
        return plain(value)
    if isinstance(value, (dt.datetime, dt.date)):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _decimal_places(values: list) -> int | None:
    """Common number of decimals for a column of Decimals or floats (so the points
    line up: up to 8 places for Decimals, 4 for floats), else None."""
    present = [v for v in values if not _missing(v)]
    if not present or not all(isinstance(v, (decimal.Decimal, float)) for v in present):
        return None
    exact = [decimal.Decimal(_cell(v, True)) if isinstance(v, float) else v for v in present]
    if not all(v.is_finite() for v in exact):
        return None
    return min(8, max(max(0, -v.normalize().as_tuple().exponent) for v in exact))


def table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str], indent: str = "",
          max_width: int = 60, right: Iterable[str] = ()) -> str:
    """Columns aligned; numbers (and ``right`` columns) right-aligned, a column of
    decimals to a common number of places; cells over ``max_width`` are cut."""
    places = {col: _decimal_places([row.get(col) for row in rows]) for col in columns}
    cells = [[_cell(row.get(col), True) if places[col] is None or _missing(row.get(col))
              else f"{row[col]:.{places[col]}f}" for col in columns] for row in rows]
    cells = [[c if len(c) <= max_width else c[: max_width - 1] + "…" for c in line] for line in cells]
    right = set(right)
    align = [col in right or (bool(rows) and all(_numeric(r.get(col)) or r.get(col) is None for r in rows))
             for col in columns]
    widths = [max([len(col)] + [len(line[i]) for line in cells]) for i, col in enumerate(columns)]

    def fmt(line):
        parts = [c.rjust(w) if r else c.ljust(w) for c, w, r in zip(line, widths, align)]
        return (indent + "  ".join(parts)).rstrip()

    return "\n".join([fmt(columns)] + [fmt(line) for line in cells])


def render(rows: Iterable[Mapping[str, Any]], columns: Sequence[str], fmt: str) -> str:
    """``rows`` as ``fmt`` (``table``, ``csv`` or ``json``); no trailing newline."""
    rows = list(rows)
    if fmt == "json":
        return json.dumps([{col: None if _missing(row.get(col)) else row.get(col) for col in columns} for row in rows],
                          default=_json_default, indent=2)
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows([_cell(row.get(col), False) for col in columns] for row in rows)
        return buffer.getvalue().rstrip("\n")
    if fmt == "table":
        return table(rows, columns) if rows else "(no rows)"
    raise DataValidationError("fmt", fmt, f"one of {', '.join(FORMATS)}")
