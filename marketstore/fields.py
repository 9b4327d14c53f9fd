"""Field types and column builders of the models: timestamps in UTC, money, arrays, documents, rules.

:class:`RuledMetadata` is Peewee's model metadata plus ``Meta.rules``, from
which a table's CHECK constraints are derived (:mod:`marketstore.rules`).
"""
from __future__ import annotations

import datetime as dt
import json
from typing import Mapping

from peewee import SQL, CharField, DecimalField, Metadata, TextField
from playhouse.postgres_ext import ArrayField, BinaryJSONField, DateTimeTZField, TSVectorField

from .rules import SYMBOL_LENGTH, UTC, Rules


class RuledMetadata(Metadata):
    """Peewee's model metadata plus ``rules``: the CHECK constraints are derived from them.

    ``Meta.rules`` maps a CHECK's name (without the table prefix) to the
    rules it holds; ``_meta.rules`` is the :class:`~marketstore.rules.Rules`
    that validation, frames and the COPY paths read at call time.
    """

    def __init__(self, model, rules: Mapping | None = None, **kwargs):
        super().__init__(model, **kwargs)
        self.rules = Rules(self.table_name, dict(rules or {}))
        derived = [SQL(f"CONSTRAINT {name} CHECK ({condition})")
                   for name, condition in self.rules.constraints().items()]
        self.constraints = list(self.constraints or []) + derived


class UTCDateTimeField(DateTimeTZField):
    """``timestamptz``: naive datetimes are taken as UTC; reads are aware UTC."""

    def db_value(self, value):
        if isinstance(value, dt.datetime):
            value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
        return super().db_value(value)

    def python_value(self, value):
        if isinstance(value, dt.datetime):
            return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
        return value


class GeneratedTSVectorField(TSVectorField):
    """A ``tsvector GENERATED ALWAYS AS (...) STORED`` column: PostgreSQL computes it.

    A generated column accepts no value but ``DEFAULT``, so every write of this
    field sends ``DEFAULT``: saving a fetched instance keeps working, and the
    stored vector can never drift from the text it indexes.
    """

    def db_value(self, value):
        return SQL("DEFAULT")


def server_now(**kwargs) -> UTCDateTimeField:
    """A required timestamp the database fills in (``DEFAULT now()``) when a write leaves it out."""
    field = UTCDateTimeField(constraints=[SQL("DEFAULT now()")], **kwargs)
    field.server_default = True  # required, but the database fills it in: validation lets it be absent
    return field


def money(**kwargs) -> DecimalField:
    """``numeric(24, 8)``: prices and quantities, never float."""
    # NUMERIC(24, 8): 16 integer digits, 8 decimals; never float.
    return DecimalField(max_digits=24, decimal_places=8, auto_round=False, **kwargs)


def default_sql(sql: str) -> list:
    """A column's database default (``DEFAULT <sql>``)."""
    # Database defaults too, so COPY and raw SQL writers get the same values.
    return [SQL(f"DEFAULT {sql}")]


def text_array(index: bool = False) -> ArrayField:
    """``text[]``, empty by default (a GIN index only where a query uses it)."""
    return ArrayField(TextField, default=list, index=index, constraints=default_sql("'{}'"))


def document(default=None, index: bool = False) -> BinaryJSONField:
    """``jsonb``, with a database default when ``default`` (a factory) is given."""
    if default is None:
        return BinaryJSONField(index=index)
    return BinaryJSONField(default=default, index=index, constraints=default_sql(f"'{json.dumps(default())}'"))


def symbol_column(**kwargs) -> CharField:
    """A ticker column, ``varchar(SYMBOL_LENGTH)``."""
    return CharField(max_length=SYMBOL_LENGTH, **kwargs)


def enum_column(**kwargs) -> CharField:
    """A short choice column (its values: a ``Choice`` rule)."""
    return CharField(max_length=16, **kwargs)
