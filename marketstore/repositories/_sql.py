"""SQL building blocks the specialised repositories share."""
from __future__ import annotations

import datetime as dt

from peewee import SQL, Expression, Tuple

from ..validation import UTC

MAX_QUERY_TEXT = 1_000  # search text, metric names
# date_bin aligns buckets to this origin: a Monday at midnight UTC.
BUCKET_ORIGIN = dt.datetime(2000, 1, 3, tzinfo=UTC)


def aware(value: dt.datetime) -> dt.datetime:
    """``value`` in UTC (the server returns it in the session's zone)."""
    return value.astimezone(UTC)


def visible_to(article, as_of: dt.datetime | None):
    """Condition: the article was known (ingested) at ``as_of``; ``None`` without ``as_of``."""
    return None if as_of is None else article.ingested_at <= as_of


def contains(field, item: str):
    """``field @> ARRAY[item]::text[]``: array containment, the operator a GIN index serves."""
    return Expression(field, "@>", SQL("ARRAY[%s]::text[]", [item]))


def where(query, *conditions):
    """``query.where(...)`` of the conditions that are not ``None``."""
    conditions = [c for c in conditions if c is not None]
    return query.where(*conditions) if conditions else query


def page(query, model, limit: int, after_id: int | None, *, newest_first: bool = False):
    """``limit`` rows of ``query`` in (timestamp, id) order, from just past row ``after_id``.

    Keyset pagination: pass the id of the last row of a page as ``after_id``
    of the next; rows written or deleted in between shift nothing.
    """
    ts, pk = model.timestamp, model._meta.primary_key
    if after_id is not None:
        last = model.alias()
        mark = last.select(last.timestamp, last.id).where(last.id == after_id)
        query = query.where(Tuple(ts, pk) < mark if newest_first else Tuple(ts, pk) > mark)
    order = (ts.desc(), pk.desc()) if newest_first else (ts, pk)
    return query.order_by(*order).limit(limit)
