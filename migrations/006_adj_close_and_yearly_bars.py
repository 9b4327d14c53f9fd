"""Peewee migrations -- 006_adj_close_and_yearly_bars.py: a vendor's adjusted close, and yearly bars.

``prices.adj_close`` keeps the adjusted close that backtesting.py, yfinance and
arch frames carry (``Adj Close``): nullable, positive, never NaN. The interval
rule takes the unit ``y`` (yearly bars), which the interval and bucket grammar
shares. Both are the rules ``Price.Meta.rules`` declares.

Adding a nullable column without a default is instant; the interval CHECK
scans the table once to validate existing rows.
"""
import peewee as pw
from peewee_migrate import Migrator

ADJ_CLOSE_CHECK = "\"adj_close\" > 0 AND \"adj_close\" <> 'NaN'"
INTERVAL_CHECK = ("\"interval\" ~ '^[1-9][0-9]*(s|m|h|d|w|mo|y)$' "
                  "AND length(rtrim(\"interval\", 'smhdwoy')) <= 4")
INTERVAL_CHECK_BEFORE = ("\"interval\" ~ '^[1-9][0-9]*(s|m|h|d|w|mo)$' "
                         "AND length(rtrim(\"interval\", 'smhdwo')) <= 4")


def migrate(migrator: Migrator, database: pw.Database, *, fake=False):
    """Add adj_close and its check; let the interval rule take years."""
    migrator.add_fields("prices", adj_close=pw.DecimalField(max_digits=24, decimal_places=8, auto_round=False,
                                                           null=True))
    migrator.sql(f"ALTER TABLE prices ADD CONSTRAINT prices_adj_close_check CHECK ({ADJ_CLOSE_CHECK})")
    migrator.sql("ALTER TABLE prices DROP CONSTRAINT prices_interval_check, "
                 f"ADD CONSTRAINT prices_interval_check CHECK ({INTERVAL_CHECK})")


def rollback(migrator: Migrator, database: pw.Database, *, fake=False):
    """Drop adj_close (and its check); yearly bars are refused again (rolling back fails if any is stored)."""
    migrator.sql("ALTER TABLE prices DROP CONSTRAINT prices_interval_check, "
                 f"ADD CONSTRAINT prices_interval_check CHECK ({INTERVAL_CHECK_BEFORE})")
    migrator.remove_fields("prices", "adj_close")
