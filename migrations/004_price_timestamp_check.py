"""Peewee migrations -- 004_price_timestamp_check.py: bar timestamps a Python datetime can hold.

``timestamptz`` takes 'infinity', '-infinity' and the years 4713 BC to 294276
AD; Python's ``datetime`` holds the years 1 to 9999. Validation refuses the
rest, but a CSV file streamed straight into COPY (``copy_from(path)``) meets
only the database's rules, and one bar outside that span would make every read
that returns it fail in the driver. The bounds are UTC instants; the session
time zone does not change them.

Adding a CHECK scans the table once to validate existing rows.
"""
import peewee as pw
from peewee_migrate import Migrator

NAME = "prices_timestamp_check"
CONDITION = "\"timestamp\" >= '0001-01-01 00:00:00+00' AND \"timestamp\" < '10000-01-01 00:00:00+00'"


def migrate(migrator: Migrator, database: pw.Database, *, fake=False):
    """Add the CHECK constraint."""
    migrator.sql(f"ALTER TABLE prices ADD CONSTRAINT {NAME} CHECK ({CONDITION})")


def rollback(migrator: Migrator, database: pw.Database, *, fake=False):
    """Drop it."""
    migrator.sql(f"ALTER TABLE prices DROP CONSTRAINT IF EXISTS {NAME}")
