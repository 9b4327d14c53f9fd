"""Stored price rows as ``Price`` models or tuples, without Peewee's per-row cost.

The fast path of ``PriceRepository`` reads: rows fetched with the driver's own
``fetchall`` become models directly (or stay tuples), in the column order of
:data:`PRICE_ROW_COLUMNS`.
"""
from __future__ import annotations

import gc
import threading
from contextlib import contextmanager

from ..models import Price
from ..validation import UTC
from ._sql import aware

_PRICE_FIELDS = Price._meta.sorted_fields
PRICE_ROW_COLUMNS = tuple(f.column_name for f in _PRICE_FIELDS)
"""Column order of the tuples ``get_range(..., as_tuples=True)`` returns: ``id``, the columns, ``adj_close``."""
_PRICE_NAMES = tuple(f.name for f in _PRICE_FIELDS)
PRICE_SELECT = ", ".join(f'"{c}"' for c in PRICE_ROW_COLUMNS)
_TIMESTAMP_AT = PRICE_ROW_COLUMNS.index("timestamp")
SYMBOL_AT = PRICE_ROW_COLUMNS.index("symbol")


def utc_rows(rows: list[tuple]) -> list[tuple]:
    """``rows`` (full price rows) with every timestamp aware UTC.

    Sessions run with ``timezone=UTC``, so psycopg2 already returns
    ``tzinfo is timezone.utc`` and ``rows`` comes back unchanged; only a caller
    who ran ``SET timezone`` in its session pays for a conversion.
    """
    at = _TIMESTAMP_AT
    if all(row[at].tzinfo is UTC for row in rows):
        return rows
    return [(*row[:at], aware(row[at]), *row[at + 1:]) for row in rows]


def price_models(rows: list[tuple]) -> list[Price]:
    """``Price`` instances of full rows in ``PRICE_ROW_COLUMNS`` order.

    Built directly in the state ``Model.__init__`` leaves for a fetched row
    (``__data__`` holding the values, nothing dirty, no related objects):
    peewee's model cursor would build a dict per row through a converter per
    column, then set each field through its descriptor, 2-3x the cost of the
    fetch itself. Its converters are no-ops here: psycopg2 returns ``Decimal``
    for numeric and, via :func:`_utc_rows`, aware UTC datetimes. The instances
    are ordinary ones: attribute access, ``save()``, equality and repr work.
    """
    new, names, out = Price.__new__, _PRICE_NAMES, []
    append = out.append
    with no_gc():
        for row in utc_rows(rows):
            obj = new(Price)
            obj.__data__ = dict(zip(names, row))
            obj._dirty = set()
            obj.__rel__ = {}
            append(obj)
    return out


_gc_lock = threading.Lock()
_gc_paused = 0  # _no_gc blocks running, in any thread
_gc_resume = False  # whether the first of them found the collector enabled


@contextmanager
def no_gc():
    """Pause the cyclic garbage collector while many long-lived objects are built.

    Each instance and its ``_dirty`` set are tracked containers that all
    survive, so the collector would run again and again over them (and over
    everything else the process holds) without freeing anything: measured
    here, a third of the time of building 100,000 models. Nothing built
    here forms a cycle. The collector is process-wide: it stays paused until
    the last block in any thread ends, then is enabled again only if it was
    when the first began (a ``gc.disable()`` made in between is undone).
    """
    global _gc_paused, _gc_resume
    with _gc_lock:
        if _gc_paused == 0:
            _gc_resume = gc.isenabled()
            gc.disable()
        _gc_paused += 1
    try:
        yield
    finally:
        with _gc_lock:
            _gc_paused -= 1
            if _gc_paused == 0 and _gc_resume:
                gc.enable()
