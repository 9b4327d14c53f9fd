"""``app.py``'s endpoints as ``async def`` on a raw async driver: the bench's async references.

    RAW_DATABASE_URL=postgresql://app@db/market RAW_ASYNC_DRIVER=asyncpg \\
        uvicorn raw_async:app --app-dir examples/service --workers 2 --http serving:HTTPProtocol

``RAW_ASYNC_DRIVER=asyncpg`` (an ``asyncpg`` pool) or ``psycopg`` (psycopg
3's ``AsyncConnectionPool``), each of marketstore's size per worker process
(``RAW_POOL_MIN``/``RAW_POOL_MAX``, 10 and 30), connections opened in UTC.
Per request one transaction (``BEGIN`` or ``BEGIN READ ONLY``, the
statements of :mod:`raw_common`, ``COMMIT``) on a pooled connection; same
paths and JSON as ``app.py``'s ``/async`` endpoints, served here without the
prefix. Each driver as its users run it: asyncpg prepares and caches every
statement, psycopg 3 prepares those run 5 times.
"""
from __future__ import annotations

import os
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.responses import JSONResponse

import raw_common as rc

DRIVER = os.environ.get("RAW_ASYNC_DRIVER", "asyncpg")
if DRIVER not in ("asyncpg", "psycopg"):
    raise RuntimeError(f"RAW_ASYNC_DRIVER={DRIVER!r}: expected asyncpg or psycopg")


class Refused(Exception):
    """An answer other than 200: ``status`` and the JSON body."""

    def __init__(self, status: int, body: dict):
        super().__init__(status)
        self.status, self.body = status, body


class Asyncpg:
    """Each question on an ``asyncpg`` pool; rows are ``Record``s (indexable as tuples)."""

    def __init__(self, url: str):
        self.url = url

    async def open(self) -> None:
        import asyncpg

        self.duplicate = asyncpg.UniqueViolationError
        self.pool = await asyncpg.create_pool(self.url, min_size=rc.POOL_MIN, max_size=rc.POOL_MAX,
                                              server_settings={"timezone": "UTC", "application_name": "raw_asyncpg"})
        self.sql = {name: rc.numbered(getattr(rc, name)) for name in
                    ("LATEST", "INTERVAL_PROBE", "RANGE", "SEARCH", "CREATE_ORDER", "LOCK_ORDER", "MOVE_ORDER",
                     "ORDER_EVENT")}

    async def close(self) -> None:
        await self.pool.close()

    async def run(self, read_only: bool, work, *args):
        async with self.pool.acquire() as conn:
            async with conn.transaction(readonly=read_only):
                return await work(self, conn, *args)

    async def fetch(self, conn, name: str, *params) -> list:
        return await conn.fetch(self.sql[name], *params)

    async def execute(self, conn, name: str, *params) -> None:
        await conn.execute(self.sql[name], *params)


class Psycopg:
    """Each question on psycopg 3's ``AsyncConnectionPool``."""

    def __init__(self, url: str):
        self.url = url

    async def open(self) -> None:
        import psycopg
        from psycopg_pool import AsyncConnectionPool

        self.duplicate = psycopg.errors.UniqueViolation
        self.pool = AsyncConnectionPool(self.url, min_size=rc.POOL_MIN, max_size=rc.POOL_MAX, open=False,
                                        kwargs={"options": "-c timezone=UTC", "application_name": "raw_psycopg"})
        await self.pool.open(wait=True)

    async def close(self) -> None:
        await self.pool.close()

    async def run(self, read_only: bool, work, *args):
        # The pool's context commits on success and rolls back on an exception.
        async with self.pool.connection() as conn:
            if conn.read_only is not read_only:
                await conn.set_read_only(read_only)
            return await work(self, conn, *args)

    async def fetch(self, conn, name: str, *params) -> list:
        cur = await conn.execute(getattr(rc, name), params)
        return await cur.fetchall()

    async def execute(self, conn, name: str, *params) -> None:
        await conn.execute(getattr(rc, name), params)


db = (Asyncpg if DRIVER == "asyncpg" else Psycopg)(os.environ.get("RAW_DATABASE_URL", ""))


@asynccontextmanager
async def lifespan(app: FastAPI):
    await db.open()
    try:
        yield
    finally:
        await db.close()


app = FastAPI(title=f"raw {DRIVER} reference", lifespan=lifespan)


@app.exception_handler(Refused)
async def refused(request, exc: Refused) -> JSONResponse:
    return JSONResponse(exc.body, status_code=exc.status)


# -- the questions, one transaction each ------------------------------------------------------------
async def latest(d, conn, symbols: list) -> dict:
    rows = await d.fetch(conn, "LATEST", symbols)
    if any(row[10] != row[8] for row in rows):
        raise Refused(422, {"error": "DataValidationError", "field": "interval"})
    return {row[1]: rc.price(row) for row in rows}


async def bars(d, conn, symbol: str, start: str, end: str) -> list:
    found = await d.fetch(conn, "INTERVAL_PROBE", [symbol])
    if not found:
        return []
    if found[0][2] is not None:
        raise Refused(422, {"error": "DataValidationError", "field": "interval"})
    rows = await d.fetch(conn, "RANGE", symbol, found[0][1], rc.moment(start), rc.moment(end))
    return [rc.price(row) for row in rows]


async def search(d, conn, text: str, limit: int) -> list:
    return [rc.article(row) for row in await d.fetch(conn, "SEARCH", text, limit)]


async def create(d, conn, order: rc.NewOrder) -> dict:
    try:
        rows = await d.fetch(conn, "CREATE_ORDER", order.order_id, order.symbol, order.order_type, order.side,
                             order.quantity, order.price, order.signal_id)
    except d.duplicate:
        raise Refused(409, {"error": "DuplicateKeyError", "field": "order_id", "value": order.order_id}) from None
    return rc.order(rows[0])


async def transition(d, conn, order_id: str, move: rc.Transition) -> dict:
    rows = await d.fetch(conn, "LOCK_ORDER", order_id)
    if not rows:
        raise Refused(404, {"error": "NotFoundError", "field": "order_id", "value": order_id})
    row = rows[0]
    current = {"status": row[7], "quantity": row[5], "filled_quantity": row[9], "average_fill_price": row[10]}
    after = rc.move(current, move.status, move.filled_quantity, move.average_fill_price)
    if after is None:
        raise Refused(422, {"error": "DataValidationError", "field": "new_status", "value": move.status})
    updated = (await d.fetch(conn, "MOVE_ORDER", *after, row[0]))[0]
    await d.execute(conn, "ORDER_EVENT", row[0], row[7], after[0], updated[9], updated[10], updated[12], move.note)
    return rc.order(updated)


# -- endpoints ----------------------------------------------------------------------------------------
@app.get("/prices/latest")
async def latest_prices(symbols: str, interval: str | None = None) -> dict:
    return await db.run(True, latest, rc.symbols_of(symbols))


@app.get("/prices/{symbol}")
async def price_range(symbol: str, start: str, end: str, interval: str | None = None) -> list:
    return await db.run(True, bars, symbol, start, end)


@app.get("/articles/search")
async def search_articles(q: str, limit: int = 20) -> list:
    return await db.run(True, search, q, limit)


@app.post("/orders", status_code=201)
async def place_order(order: rc.NewOrder) -> dict:
    return await db.run(False, create, order)


@app.post("/orders/{order_id}/transition")
async def transition_order(order_id: str, move: rc.Transition) -> dict:
    return await db.run(False, transition, order_id, move)
