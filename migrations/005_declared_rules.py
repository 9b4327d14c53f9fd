"""Peewee migrations -- 005_declared_rules.py: the table holds every value rule validation holds.

The models declare each value rule once (``Meta.rules``) and the CHECK
constraints are derived from those declarations. Some rules were checked in
Python only -- text lengths of articles and audit notes, the symbol pattern of
signals and orders, the statuses and fills of the order audit trail -- so a
writer bypassing the package (COPY, raw SQL) was held to none of them. Two
orders constraints are restated as the derived text says them (same meaning),
and the prices' OHLC check names each price's bound, as validation does.

Adding a CHECK scans the table once to validate existing rows.
"""
import peewee as pw
from peewee_migrate import Migrator

STATUSES = "'pending', 'submitted', 'partially_filled', 'filled', 'cancelled', 'rejected'"
SYMBOL = r"'^[A-Za-z0-9.^][A-Za-z0-9._\-/=^:]*$'"

ADDED = {
    "articles": {
        "articles_title_length": 'char_length("title") <= 1000',
        "articles_content_length": 'char_length("content") <= 1000000',
        "articles_url_length": 'char_length("url") <= 2048',
    },
    "trading_signals": {"trading_signals_symbol_check": f'"symbol" ~ {SYMBOL}'},
    "orders": {"orders_symbol_check": f'"symbol" ~ {SYMBOL}'},
    "order_events": {
        "order_events_from_status_check": f'"from_status" IN ({STATUSES})',
        "order_events_fill_check": '"filled_quantity" >= 0 AND "fill_price" > 0',
        "order_events_note_length": 'char_length("note") <= 10000',
    },
}
RESTATED = {  # table: {name: (before, after)}
    "prices": {
        "prices_ohlc_check": (
            "low > 0 AND low <= open AND low <= close AND open <= high AND close <= high",
            '"open" > 0 AND "high" > 0 AND "low" > 0 AND "close" > 0 '
            'AND "low" <= "open" AND "low" <= "close" AND "open" <= "high" AND "close" <= "high"'),
    },
    "orders": {
        "orders_price_check": (
            "CASE WHEN price IS NULL THEN order_type = 'market' ELSE price > 0 END",
            '("price" IS NOT NULL OR "order_type" = \'market\') AND "price" > 0'),
        "orders_fill_price_check": (
            "average_fill_price IS NULL OR average_fill_price > 0",
            '"average_fill_price" > 0'),
    },
}


def migrate(migrator: Migrator, database: pw.Database, *, fake=False):
    """Add the checks validation alone held; restate three."""
    for table, checks in ADDED.items():
        for name, condition in checks.items():
            migrator.sql(f"ALTER TABLE {table} ADD CONSTRAINT {name} CHECK ({condition})")
    for table, checks in RESTATED.items():
        for name, (_, after) in checks.items():
            migrator.sql(f"ALTER TABLE {table} DROP CONSTRAINT {name}, ADD CONSTRAINT {name} CHECK ({after})")


def rollback(migrator: Migrator, database: pw.Database, *, fake=False):
    """Drop the added checks; the restated ones as they were."""
    for table, checks in ADDED.items():
        for name in checks:
            migrator.sql(f"ALTER TABLE {table} DROP CONSTRAINT IF EXISTS {name}")
    for table, checks in RESTATED.items():
        for name, (before, _) in checks.items():
            migrator.sql(f"ALTER TABLE {table} DROP CONSTRAINT {name}, ADD CONSTRAINT {name} CHECK ({before})")
