"""Value rules declared once, as data; everything that enforces them is derived.

A model lists its rules in ``Meta.rules`` (CHECK name -> rules). From that one
declaration come:

* the table's ``CHECK`` constraints (:meth:`Rules.constraints`, which the
  migrations must match: ``verify_schema`` and the tests compare them);
* :meth:`BaseModel.validate`'s verdict and its wording (:meth:`Rules.violation`);
* the vectorised checks of frames (:meth:`Rules.mask` over NumPy columns, and
  :meth:`Rules.pattern` for text columns);
* the COPY fast paths' cheap pre-checks (:meth:`Rules.pattern`).

Each rule is written in the subset of regular expressions and SQL that
PostgreSQL and Python read alike, so the server's verdict on a COPY line and
Python's on the same row agree.
"""
from __future__ import annotations

import datetime as dt
import functools
import operator
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

from .errors import DataValidationError

UTC = dt.timezone.utc

SYMBOL_PATTERN = r"[A-Za-z0-9.^][A-Za-z0-9._\-/=^:]*"
"""A ticker: no white space, quote, tab or backslash (COPY text needs no escaping)."""
SYMBOL_LENGTH = 32
"""Characters of a ticker (the ``varchar`` of every symbol column)."""
TAG_LENGTH = 256
"""Characters of one item of a ``text[]`` column (an article's symbols, keywords)."""
INTERVAL_UNITS = ("s", "m", "h", "d", "w", "mo", "y")
"""Stored bar intervals: a count of at most :data:`INTERVAL_DIGITS` digits and one of these units."""
INTERVAL_DIGITS = 4

_OPS = {">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le}


def _q(name: str) -> str:
    return f'"{name}"'


def _literal(value) -> str:
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    return str(value)


def _present(row: Mapping, *names: str) -> bool:
    return all(row.get(n) is not None for n in names)


class Rule:
    """One rule on one or more columns of a row.

    ``sql()`` is the condition a CHECK holds; ``violation(row)`` the first
    ``(field, value, expected)`` a normalised row breaks (``None``: it holds,
    or a value it needs is absent or NULL, which a CHECK lets through too);
    ``mask(columns, np)`` the rows of float64/int64 columns that break it,
    or ``None`` for a rule frames check otherwise (text).
    """

    fields: tuple[str, ...] = ()

    def sql(self) -> str:
        raise NotImplementedError

    def violation(self, row: Mapping, partial: bool = False) -> tuple[str, Any, str] | None:
        raise NotImplementedError

    def mask(self, columns: Mapping, np):
        return None


class OneField(Rule):
    """A rule on the one column ``field``."""

    field: str

    @property
    def fields(self):
        return (self.field,)


@dataclass(frozen=True)
class Bound(OneField):
    """``field op limit``: ``Bound("low", ">", 0)``."""

    field: str
    op: str
    limit: Any

    def sql(self) -> str:
        return f"{_q(self.field)} {self.op} {_literal(self.limit)}"

    def violation(self, row, partial=False):
        value = row.get(self.field)
        if value is not None and not _OPS[self.op](value, self.limit):
            return self.field, value, f"a number {self.op} {self.limit}"
        return None

    def mask(self, columns, np):
        if self.field not in columns:
            return None
        with np.errstate(invalid="ignore"):
            return ~_OPS[self.op](columns[self.field], self.limit)  # NaN breaks every bound


def between(field: str, low, high) -> tuple[Bound, Bound]:
    """``low <= field <= high``: two bounds (PostgreSQL reads ``BETWEEN`` as just that)."""
    return Bound(field, ">=", low), Bound(field, "<=", high)


@dataclass(frozen=True)
class Ordered(Rule):
    """``low <= each of middle <= high`` (the OHLC order); the middle value is the one blamed."""

    low: str
    middle: tuple[str, ...]
    high: str

    @property
    def fields(self):
        return (self.low, *self.middle, self.high)

    def sql(self) -> str:
        pairs = [(self.low, m) for m in self.middle] + [(m, self.high) for m in self.middle]
        return " AND ".join(f"{_q(a)} <= {_q(b)}" for a, b in pairs)

    def violation(self, row, partial=False):
        low, high = row.get(self.low), row.get(self.high)
        if low is not None and high is not None and high < low:
            return self.high, high, f"{self.high} >= {self.low} ({low})"
        for name in self.middle:
            value = row.get(name)
            if value is not None and low is not None and value < low:
                return name, value, f"{name} >= {self.low} ({low})"
            if value is not None and high is not None and value > high:
                return name, value, f"{name} <= {self.high} ({high})"
        return None

    def mask(self, columns, np):
        if not all(n in columns for n in self.fields):
            return None
        low, high = columns[self.low], columns[self.high]
        ok = np.ones(len(low), dtype=bool)
        with np.errstate(invalid="ignore"):
            for name in self.middle:
                ok &= (low <= columns[name]) & (columns[name] <= high)
        return ~ok


@dataclass(frozen=True)
class AtMost(Rule):
    """``field <= other`` (a fill within its order's quantity)."""

    field: str
    other: str

    @property
    def fields(self):
        return (self.field, self.other)

    def sql(self) -> str:
        return f"{_q(self.field)} <= {_q(self.other)}"

    def violation(self, row, partial=False):
        value, other = row.get(self.field), row.get(self.other)
        if value is not None and other is not None and value > other:
            return self.field, value, f"at most {self.other} ({other})"
        return None

    def mask(self, columns, np):
        if self.field not in columns or self.other not in columns:
            return None
        with np.errstate(invalid="ignore"):
            return ~(columns[self.field] <= columns[self.other])


@dataclass(frozen=True)
class NotNaN(Rule):
    """``numeric`` takes 'NaN' and sorts it above every number, so bounds alone let it through."""

    fields: tuple[str, ...]

    def __init__(self, *fields: str):
        object.__setattr__(self, "fields", fields)

    def sql(self) -> str:
        return " AND ".join(f"{_q(n)} <> 'NaN'" for n in self.fields)

    def violation(self, row, partial=False):
        for name in self.fields:  # validation refuses non-finite numbers before rules run
            value = row.get(name)
            if value is not None and value != value:
                return name, value, "a finite number"
        return None

    def mask(self, columns, np):
        present = [columns[n] for n in self.fields if n in columns]
        if not present:
            return None
        return np.logical_or.reduce([np.isnan(v) for v in present])


@dataclass(frozen=True)
class Choice(OneField):
    """``field IN (...)``."""

    field: str
    values: tuple[str, ...]

    def sql(self) -> str:
        return f"{_q(self.field)} IN ({', '.join(_literal(v) for v in self.values)})"

    def violation(self, row, partial=False):
        value = row.get(self.field)
        if value is not None and value not in self.values:
            return self.field, value, f"one of {', '.join(self.values)}"
        return None


@dataclass(frozen=True)
class Matches(OneField):
    """``field`` matches ``pattern`` whole (a regex PostgreSQL and Python read alike)."""

    field: str
    pattern: str
    expected: str = ""

    @property
    def regex(self) -> re.Pattern:
        return _compiled(self.pattern)

    def sql(self) -> str:
        return f"{_q(self.field)} ~ {_literal('^' + self.pattern + '$')}"

    def accepts(self, value: str) -> bool:
        return self.regex.fullmatch(value) is not None

    def violation(self, row, partial=False):
        value = row.get(self.field)
        if value is not None and not self.accepts(value):
            return self.field, value, self.expected or f"text matching {self.pattern}"
        return None


@dataclass(frozen=True)
class IntervalText(Matches):
    """A bar interval: a count of at most ``digits`` digits (no leading zero) and a unit."""

    units: tuple[str, ...] = INTERVAL_UNITS
    digits: int = INTERVAL_DIGITS

    def __init__(self, field: str, units: tuple[str, ...] = INTERVAL_UNITS, digits: int = INTERVAL_DIGITS):
        object.__setattr__(self, "field", field)
        object.__setattr__(self, "units", tuple(units))
        object.__setattr__(self, "digits", digits)
        # Unbounded count in SQL, its digits bounded apart: '{0,3}' costs PostgreSQL's regex engine more per row.
        object.__setattr__(self, "pattern", f"[1-9][0-9]*({'|'.join(self.units)})")
        examples = ", ".join(f"1{u}" for u in self.units)
        object.__setattr__(self, "expected", f"text matching {self.pattern} with at most {digits} digits: "
                                             f"a bar interval such as {examples}")

    def sql(self) -> str:
        letters = "".join(dict.fromkeys("".join(self.units)))  # rtrim strips the unit: the digits remain
        return (f"{super().sql()} AND length(rtrim({_q(self.field)}, {_literal(letters)})) <= {self.digits}")

    def accepts(self, value: str) -> bool:
        return super().accepts(value) and len(value.rstrip("".join(self.units))) <= self.digits


@dataclass(frozen=True)
class Span(OneField):
    """``first_year <= year(field) <= last_year`` in UTC: what a Python ``datetime`` holds."""

    field: str
    first_year: int = 1
    last_year: int = 9999

    def sql(self) -> str:
        return (f"{_q(self.field)} >= '{self.first_year:04d}-01-01 00:00:00+00' AND "
                f"{_q(self.field)} < '{self.last_year + 1:04d}-01-01 00:00:00+00'")

    @property
    def micros(self) -> tuple[int, int]:
        """``[low, high)`` in microseconds since 1970-01-01 UTC."""
        def since_epoch(year: int) -> int:
            days = dt.date(min(year, 9999), 1, 1).toordinal() - dt.date(1970, 1, 1).toordinal()
            if year > 9999:  # the year 10000 starts one (non-leap) year after 9999-01-01
                days += 365
            return days * 86_400_000_000
        return since_epoch(self.first_year), since_epoch(self.last_year + 1)

    def violation(self, row, partial=False):
        value = row.get(self.field)
        if value is not None and not self.first_year <= value.astimezone(UTC).year <= self.last_year:
            return self.field, value, f"a datetime within the years {self.first_year}-{self.last_year} in UTC"
        return None

    def mask(self, columns, np):
        if self.field not in columns:
            return None
        low, high = self.micros
        micros = columns[self.field]
        return (micros < low) | (micros >= high)


@dataclass(frozen=True)
class RequiredUnless(Rule):
    """``field`` is given unless ``other`` is ``value`` (a price, except for a market order).

    On an update (``partial``) a field left out keeps its stored value, so
    only an explicit ``None`` is judged.
    """

    field: str
    other: str
    value: str

    @property
    def fields(self):
        return (self.field, self.other)

    def sql(self) -> str:
        return f"({_q(self.field)} IS NOT NULL OR {_q(self.other)} = {_literal(self.value)})"

    def violation(self, row, partial=False):
        other = row.get(self.other)
        if (other not in (None, self.value) and row.get(self.field) is None
                and (not partial or self.field in row)):
            return self.field, None, f"a {self.field} for a {other} {self.other.split('_')[0]}"
        return None


@dataclass(frozen=True)
class Length(OneField):
    """``char_length(field) <= limit``, for ``text`` columns (``varchar`` bounds itself)."""

    field: str
    limit: int

    def sql(self) -> str:
        return f"char_length({_q(self.field)}) <= {self.limit}"

    def violation(self, row, partial=False):
        value = row.get(self.field)
        if value is not None and len(value) > self.limit:
            return self.field, value, f"at most {self.limit} characters (got {len(value)})"
        return None


_compiled = functools.lru_cache(maxsize=None)(re.compile)


@dataclass
class Rules:
    """A table's rules: ``{check name: (rule, ...)}`` in the order they are judged."""

    table: str
    checks: dict[str, tuple[Rule, ...]] = field(default_factory=dict)

    def __iter__(self):
        for rules in self.checks.values():
            yield from rules

    def condition(self, name: str) -> str:
        """The SQL condition of CHECK ``name`` (without the table prefix)."""
        return " AND ".join(rule.sql() for rule in self.checks[name])

    def constraints(self) -> dict[str, str]:
        """``{constraint name: condition}`` as the table must hold them."""
        return {f"{self.table}_{name}": self.condition(name) for name in self.checks}

    def violation(self, row: Mapping, partial: bool = False) -> DataValidationError | None:
        """The first rule ``row`` (normalised values) breaks, as the error naming it."""
        for rule in self:
            found = rule.violation(row, partial)
            if found is not None:
                return DataValidationError(*found)
        return None

    def mask(self, columns: Mapping, np, nulls: Mapping | None = None):
        """Rows of ``columns`` (NumPy arrays by field; numbers as float64 rounded to the
        column's decimals, timestamps as int64 microseconds) that break a rule.

        ``nulls`` marks the NULLs of nullable columns: a CHECK lets those through.
        """
        bad = None
        for rule in self:
            found = rule.mask(columns, np)
            for name in rule.fields if found is not None and nulls else ():
                if name in nulls:
                    found = found & ~nulls[name]
            if found is not None:
                bad = found if bad is None else bad | found
        return bad

    def pattern(self, name: str) -> Matches | None:
        """The text rule on column ``name`` (its ``accepts`` takes one value), if any."""
        for rule in self:
            if isinstance(rule, Matches) and rule.field == name:
                return rule
        return None

    def with_rule(self, name: str, *rules: Rule) -> "Rules":
        """A copy with CHECK ``name`` holding ``rules`` too (a new check, or appended)."""
        checks = dict(self.checks)
        checks[name] = checks.get(name, ()) + tuple(rules)
        return Rules(self.table, checks)
