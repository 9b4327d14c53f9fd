"""``db.query.summary``, ``db.operation.name`` and ``db.collection.name`` read from a statement's text."""
from __future__ import annotations

import pytest

from marketstore.query_summary import summarize


@pytest.mark.parametrize("sql, expected", [
    ('SELECT "t1"."id", "t1"."close" FROM "prices" AS "t1" WHERE ("t1"."id" = %s) LIMIT %s',
     ("SELECT", "prices", "SELECT prices")),
    ("select close from prices where id = %s", ("SELECT", "prices", "SELECT prices")),
    ("SELECT %s", ("SELECT", None, "SELECT")),
    ('INSERT INTO "prices" ("symbol", "close") VALUES (%s, %s) ON CONFLICT ("symbol") DO UPDATE SET '
     '"close" = EXCLUDED."close" RETURNING "id"', ("INSERT", "prices", "INSERT prices")),
    ('UPDATE "orders" SET "status" = %s WHERE "id" = %s', ("UPDATE", "orders", "UPDATE orders")),
    ('DELETE FROM "prices" WHERE "id" = %s', ("DELETE", "prices", "DELETE prices")),
    ('SELECT * FROM "prices" WHERE "id" = %s FOR UPDATE', ("SELECT", "prices", "SELECT prices")),
    ('COPY "prices" ("symbol", "timestamp") FROM STDIN WITH (FORMAT csv)', ("COPY", "prices", "COPY prices")),
    ("INSERT INTO prices SELECT * FROM stage", ("INSERT", "prices", "INSERT prices SELECT stage")),
    ('SELECT a.title FROM "public"."articles" a JOIN sentiment_scores s ON s.article_id = a.id',
     ("SELECT", "public.articles", "SELECT public.articles sentiment_scores")),
    # a subquery of the same table is said once; FROM inside a function names no table
    ("SELECT x FROM (SELECT extract(epoch FROM timestamp) AS x FROM prices) p", ("SELECT", "prices", "SELECT prices")),
    ("SELECT * FROM unnest(%s) AS u(s)", ("SELECT", None, "SELECT")),
    # literals and comments are not read
    ("/* FROM secrets */ SELECT 'FROM secrets' FROM prices -- FROM secrets", ("SELECT", "prices", "SELECT prices")),
    ("BEGIN", ("BEGIN", None, "BEGIN")),
    ("SET LOCAL timezone = 'UTC'", ("SET", None, "SET")),
    ("CREATE TABLE t (id int)", ("CREATE", None, "CREATE")),
])
def test_summary(sql, expected):
    assert summarize(sql) == expected


def test_a_long_statement_is_read_from_its_start():
    sql = 'INSERT INTO "prices" ("symbol", "close") VALUES ' + ", ".join(["(%s, %s)"] * 20_000)
    assert summarize(sql) == ("INSERT", "prices", "INSERT prices")
