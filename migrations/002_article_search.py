"""Peewee migrations -- 002_article_search.py: full-text search over articles.

Adds ``articles.search_vector``, a stored generated ``tsvector`` (title weighted
A, the first 100,000 characters of content weighted B) and its GIN index, used by
``ArticleRepository.search``. A generated column is computed by PostgreSQL on
every insert and update, so it can never disagree with the text, whoever writes.

Written with ``migrator.add_fields`` rather than raw SQL so that peewee-migrate's
model state has the column: ``pw_migrate create --auto`` replays the migrations
in memory and diffs that state against the models, and a column added by SQL
alone would be written into every new migration again. ``GENERATED ALWAYS AS``
rides in the field's ``constraints`` (peewee puts them after the type), and
``TSVectorField`` asks for a GIN index, so the DDL is::

    ALTER TABLE articles ADD COLUMN search_vector TSVECTOR GENERATED ALWAYS AS (...) STORED
    CREATE INDEX articles_search_vector ON articles USING GIN (search_vector)

Adding a stored generated column rewrites the table once (an ACCESS EXCLUSIVE
lock for the duration).
"""
import peewee as pw
from peewee import SQL
from peewee_migrate import Migrator
from playhouse import postgres_ext as pw_pext

SEARCH_VECTOR = (
    "setweight(to_tsvector('english'::regconfig, coalesce(title, '')), 'A') || "
    "setweight(to_tsvector('english'::regconfig, left(coalesce(content, ''), 100000)), 'B')"
)


def migrate(migrator: Migrator, database: pw.Database, *, fake=False):
    """Add the generated search vector and its GIN index."""
    migrator.add_fields(
        "articles",
        search_vector=pw_pext.TSVectorField(
            null=True, index=True, constraints=[SQL(f"GENERATED ALWAYS AS ({SEARCH_VECTOR}) STORED")]),
    )


def rollback(migrator: Migrator, database: pw.Database, *, fake=False):
    """Drop the column (and with it its index)."""
    migrator.remove_fields("articles", "search_vector")
