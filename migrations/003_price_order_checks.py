"""Peewee migrations -- 003_price_order_checks.py: close what the first CHECKs let through.

``numeric`` accepts 'NaN', which PostgreSQL sorts above every number, so
``low > 0 AND ... <= high`` holds for an all-NaN bar and ``quantity > 0`` for a
NaN quantity. Python validation refuses NaN, but COPY and raw SQL writers only
meet these constraints. On prices a finite high and volume are enough: every
other price is bounded by high. The symbol and interval rules join them so a
CSV streamed straight into COPY is held to the same rules as validated rows
(unbounded regexes: the varchar types bound the length, and ``{0,31}`` costs
PostgreSQL's regex engine several times more per row).

Adding a CHECK scans the table once to validate existing rows.
"""
import peewee as pw
from peewee_migrate import Migrator

CHECKS = {
    "prices": {
        "prices_nan_check": "high <> 'NaN' AND volume <> 'NaN'",
        "prices_symbol_check": r"symbol ~ '^[A-Za-z0-9.^][A-Za-z0-9._\-/=^:]*$'",
        "prices_interval_check": "\"interval\" ~ '^[1-9][0-9]*(s|m|h|d|w|mo)$' AND length(\"interval\") <= 6",
    },
    "orders": {
        "orders_nan_check": "quantity <> 'NaN' AND filled_quantity <> 'NaN' "
                            "AND price <> 'NaN' AND average_fill_price <> 'NaN'",
    },
    "order_events": {
        "order_events_nan_check": "filled_quantity <> 'NaN' AND fill_price <> 'NaN'",
    },
}


def migrate(migrator: Migrator, database: pw.Database, *, fake=False):
    """Add the CHECK constraints."""
    for table, checks in CHECKS.items():
        for name, condition in checks.items():
            migrator.sql(f"ALTER TABLE {table} ADD CONSTRAINT {name} CHECK ({condition})")


def rollback(migrator: Migrator, database: pw.Database, *, fake=False):
    """Drop them."""
    for table, checks in CHECKS.items():
        for name in checks:
            migrator.sql(f"ALTER TABLE {table} DROP CONSTRAINT IF EXISTS {name}")
