"""Peewee migrations -- 004_price_timestamp_interval_checks.py: what a CSV streamed to COPY must also meet.

``copy_from(path)`` hands a CSV file's body to the server, so the database's
rules are the only ones its rows meet after the timestamp check in Python:

* ``timestamptz`` takes 'infinity' and the years 4713 BC to 294276 AD; Python's
  ``datetime`` holds the years 1 to 9999, and one bar outside that span would
  make every read that returns it fail in the driver. The bounds are UTC
  instants; the session time zone does not change them.
* migration 003's interval rule let five digits through ('12345m' fits the
  length); validation allows at most four (``INTERVAL_PATTERN``), and the
  repositories refuse to query anything else, so such bars could not be read.
  ``rtrim`` strips the unit letters: what remains are the digits.

Adding a CHECK scans the table once to validate existing rows.
"""
import peewee as pw
from peewee_migrate import Migrator

TIMESTAMP_CHECK = "\"timestamp\" >= '0001-01-01 00:00:00+00' AND \"timestamp\" < '10000-01-01 00:00:00+00'"
INTERVAL_CHECK = ("\"interval\" ~ '^[1-9][0-9]*(s|m|h|d|w|mo)$' "
                  "AND length(rtrim(\"interval\", 'smhdwo')) <= 4")
INTERVAL_CHECK_003 = "\"interval\" ~ '^[1-9][0-9]*(s|m|h|d|w|mo)$' AND length(\"interval\") <= 6"


def migrate(migrator: Migrator, database: pw.Database, *, fake=False):
    """Add the timestamp CHECK, tighten the interval CHECK."""
    migrator.sql(f"ALTER TABLE prices ADD CONSTRAINT prices_timestamp_check CHECK ({TIMESTAMP_CHECK})")
    migrator.sql("ALTER TABLE prices DROP CONSTRAINT prices_interval_check, "
                 f"ADD CONSTRAINT prices_interval_check CHECK ({INTERVAL_CHECK})")


def rollback(migrator: Migrator, database: pw.Database, *, fake=False):
    """Back to migration 003's constraints."""
    migrator.sql("ALTER TABLE prices DROP CONSTRAINT IF EXISTS prices_timestamp_check")
    migrator.sql("ALTER TABLE prices DROP CONSTRAINT prices_interval_check, "
                 f"ADD CONSTRAINT prices_interval_check CHECK ({INTERVAL_CHECK_003})")
