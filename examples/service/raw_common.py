"""What the raw-driver references of ``app.py`` share: the SQL marketstore sends, the JSON, the order moves.

The references (``raw_sync.py`` on psycopg2, ``raw_async.py`` on asyncpg or
psycopg 3) answer the same questions as ``app.py`` with the statements
marketstore sends for them (captured from the server's log with
``log_statement = all``; ``python -m bench`` checks that they still are), the
same JSON, and no marketstore at all: what a hand-written service costs, the
yardstick of the bench's ``service`` case. Statements use ``%s`` placeholders
(psycopg2, psycopg 3); :func:`numbered` gives asyncpg's ``$n``.
"""
from __future__ import annotations

import datetime as dt
import decimal
import os
import re
from typing import Optional

from pydantic import BaseModel, ConfigDict

UTC = dt.timezone.utc
# The pool of each worker process: marketstore's defaults (pool_size 10 + max_overflow 20).
POOL_MIN = int(os.environ.get("RAW_POOL_MIN", "10"))
POOL_MAX = int(os.environ.get("RAW_POOL_MAX", "30"))

PRICE_COLUMNS = '"id", "symbol", "timestamp", "open", "high", "low", "close", "volume", "interval", "adj_close"'
# A symbol's stored intervals: its first and the next one (a second means it has several).
INTERVAL_PROBE = (
    'SELECT s.symbol, f.iv, (SELECT "interval" FROM prices WHERE symbol = s.symbol AND "interval" > f.iv '
    'ORDER BY "interval" LIMIT 1) FROM unnest(%s::text[]) AS s(symbol) '
    'CROSS JOIN LATERAL (SELECT "interval" AS iv FROM prices WHERE symbol = s.symbol ORDER BY "interval" LIMIT 1) AS f'
)
RANGE = (f'SELECT {PRICE_COLUMNS} FROM prices WHERE symbol = %s AND "interval" = %s '
         'AND "timestamp" >= %s AND "timestamp" < %s ORDER BY "timestamp"')
# The newest bar of each symbol's (one) stored interval, and that symbol's smallest interval.
LATEST = ('SELECT p.*, (SELECT o."interval" FROM prices AS o WHERE o.symbol = p.symbol '
          'ORDER BY o."interval" LIMIT 1) FROM unnest(%s::text[]) AS s(symbol) '
          f'CROSS JOIN LATERAL (SELECT {PRICE_COLUMNS} FROM prices WHERE prices.symbol = s.symbol '
          'ORDER BY prices."interval" DESC, prices."timestamp" DESC LIMIT 1) AS p')
ARTICLE_COLUMNS = ('a."id", a."title", a."content", a."source", a."url", a."published_at", a."ingested_at", '
                   'a."symbols", a."metadata"')
SEARCH = (f"SELECT {ARTICLE_COLUMNS}, ts_rank(a.search_vector, q) AS rank "
          "FROM articles a, websearch_to_tsquery('english', %s) AS q WHERE a.search_vector @@ q "
          "ORDER BY rank DESC, a.published_at DESC NULLS LAST, a.id DESC LIMIT %s")
ORDER_COLUMNS = ('"id", "order_id", "symbol", "order_type", "side", "quantity", "price", "status", "signal_id", '
                 '"filled_quantity", "average_fill_price", "timestamp", "updated_at"')
CREATE_ORDER = ('INSERT INTO "orders" ("order_id", "symbol", "order_type", "side", "quantity", "price", "status", '
                f'"filled_quantity", "signal_id") VALUES (%s, %s, %s, %s, %s, %s, \'pending\', 0, %s) '
                f'RETURNING {ORDER_COLUMNS}')
LOCK_ORDER = f'SELECT {ORDER_COLUMNS} FROM "orders" WHERE "order_id" = %s LIMIT 1 FOR UPDATE'
MOVE_ORDER = ('UPDATE "orders" SET "status" = %s, "filled_quantity" = %s, "average_fill_price" = %s, '
              f'"updated_at" = clock_timestamp() WHERE "id" = %s RETURNING {ORDER_COLUMNS}')
ORDER_EVENT = ('INSERT INTO "order_events" ("order_id", "from_status", "to_status", "filled_quantity", "fill_price", '
               '"timestamp", "note") VALUES (%s, %s, %s, %s, %s, %s, %s)')
MOVES = {"pending": ("submitted", "cancelled", "rejected"),
         "submitted": ("partially_filled", "filled", "cancelled", "rejected"),
         "partially_filled": ("partially_filled", "filled", "cancelled", "rejected")}


def numbered(sql: str) -> str:
    """``sql`` with asyncpg's ``$1, $2, ...`` for its ``%s`` placeholders."""
    count = iter(range(1, 1000))
    return re.sub("%s", lambda _: f"${next(count)}", sql)


def moment(text: str) -> dt.datetime:
    """An ISO-8601 query parameter (naive = UTC) as an aware datetime."""
    value = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


def money(value) -> Optional[str]:
    return None if value is None else str(value)


def time(value) -> Optional[str]:
    return None if value is None else value.isoformat()


def price(row) -> dict:
    """A price row (``PRICE_COLUMNS`` order) as ``app.py``'s JSON."""
    return {"symbol": row[1], "timestamp": time(row[2]), "interval": row[8], "open": money(row[3]),
            "high": money(row[4]), "low": money(row[5]), "close": money(row[6]), "volume": money(row[7])}


def order(row) -> dict:
    """An order row (``ORDER_COLUMNS`` order) as ``app.py``'s JSON."""
    return {"order_id": row[1], "symbol": row[2], "order_type": row[3], "side": row[4], "quantity": money(row[5]),
            "price": money(row[6]), "status": row[7], "filled_quantity": money(row[9]),
            "average_fill_price": money(row[10]), "signal_id": row[8], "timestamp": time(row[11]),
            "updated_at": time(row[12])}


def article(row) -> dict:
    return {"id": row[0], "title": row[1], "source": row[3], "url": row[4], "published_at": time(row[5]),
            "symbols": row[7], "rank": row[9]}


def symbols_of(text: str) -> list[str]:
    return list(dict.fromkeys(s.strip() for s in text.split(",") if s.strip()))


def move(current: dict, status: str, filled, average) -> tuple:
    """``(status, filled_quantity, average_fill_price)`` after a legal move, else ``None``."""
    if status not in MOVES.get(current["status"], ()):
        return None
    if status in ("partially_filled", "filled"):
        return status, current["quantity"] if filled is None else filled, average
    return status, current["filled_quantity"], current["average_fill_price"]


class NewOrder(BaseModel):
    model_config = ConfigDict(extra="forbid")
    order_id: str
    symbol: str
    order_type: str
    side: str
    quantity: decimal.Decimal
    price: Optional[decimal.Decimal] = None
    signal_id: Optional[int] = None


class Transition(BaseModel):
    model_config = ConfigDict(extra="forbid")
    status: str
    filled_quantity: Optional[decimal.Decimal] = None
    average_fill_price: Optional[decimal.Decimal] = None
    note: Optional[str] = None
