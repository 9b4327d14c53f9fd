"""Peewee migrations -- 002_article_search.py: full-text search over articles.

Adds ``articles.search_vector``, a stored generated ``tsvector`` (title weighted
A, the first 100,000 characters of content weighted B) and its GIN index, used by
``ArticleRepository.search``. A generated column is computed by PostgreSQL on
every insert and update, so it can never disagree with the text, whoever writes.

Written as SQL rather than ``migrator.add_fields``: peewee's ``add_column`` has
no way to say ``GENERATED ALWAYS AS``, and older playhouse versions build the
index without ``USING gin``. Adding a stored generated column rewrites the table
once (an ACCESS EXCLUSIVE lock for the duration).
"""
import peewee as pw
from peewee_migrate import Migrator

SEARCH_VECTOR = (
    "setweight(to_tsvector('english'::regconfig, coalesce(title, '')), 'A') || "
    "setweight(to_tsvector('english'::regconfig, left(coalesce(content, ''), 100000)), 'B')"
)


def migrate(migrator: Migrator, database: pw.Database, *, fake=False):
    """Add the generated search vector and its GIN index."""
    migrator.sql(f"ALTER TABLE articles ADD COLUMN search_vector tsvector "
                 f"GENERATED ALWAYS AS ({SEARCH_VECTOR}) STORED")
    migrator.sql("CREATE INDEX articles_search_vector ON articles USING gin (search_vector)")


def rollback(migrator: Migrator, database: pw.Database, *, fake=False):
    """Drop the index and the column."""
    migrator.sql("DROP INDEX IF EXISTS articles_search_vector")
    migrator.sql("ALTER TABLE articles DROP COLUMN IF EXISTS search_vector")
