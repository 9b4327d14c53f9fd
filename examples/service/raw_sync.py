"""``app.py``'s sync endpoints on raw psycopg2: the reference of the bench's ``service`` case.

    RAW_DATABASE_URL=postgresql://app@db/market \\
        uvicorn raw_sync:app --app-dir examples/service --workers 2 --http serving:HTTPProtocol

FastAPI sync ``def`` endpoints, a ``psycopg2.pool.ThreadedConnectionPool``
per worker process of marketstore's size (``RAW_POOL_MAX``, 30, all kept
open), its connections opened in UTC as marketstore's are, the thread
pool sized to it; per request ``getconn``, the statements of
:mod:`raw_common` (psycopg2 sends ``BEGIN`` or ``BEGIN READ ONLY`` before the
first), ``COMMIT``, ``putconn``. Same JSON as ``app.py``; no validation
beyond FastAPI's (the server's CHECKs hold).
"""
from __future__ import annotations

import os
from contextlib import asynccontextmanager

import anyio.to_thread
import psycopg2
import psycopg2.errors
import psycopg2.pool
from fastapi import FastAPI
from fastapi.responses import JSONResponse

import raw_common as rc

pool: psycopg2.pool.ThreadedConnectionPool | None = None


def open_pool() -> psycopg2.pool.ThreadedConnectionPool:
    # minconn = maxconn: psycopg2's pool closes every connection returned while minconn are
    # idle, so with minconn 10 a load above 10 requests in flight reconnects on most of them
    # (measured: 0.4-0.5x the requests/s at 128 connections). Kept at 30, it never churns:
    # the strongest reference, where marketstore's overflow closes after its idle grace.
    return psycopg2.pool.ThreadedConnectionPool(rc.POOL_MAX, rc.POOL_MAX, os.environ["RAW_DATABASE_URL"],
                                                options="-c timezone=UTC", application_name="raw_sync")


@asynccontextmanager
async def lifespan(app: FastAPI):
    global pool
    pool = open_pool()
    anyio.to_thread.current_default_thread_limiter().total_tokens = rc.POOL_MAX
    try:
        yield
    finally:
        pool.closeall()


app = FastAPI(title="raw psycopg2 reference", lifespan=lifespan)


class Refused(Exception):
    """An answer other than 200: ``status`` and the JSON body."""

    def __init__(self, status: int, body: dict):
        super().__init__(status)
        self.status, self.body = status, body


@app.exception_handler(Refused)
async def refused(request, exc: Refused) -> JSONResponse:
    return JSONResponse(exc.body, status_code=exc.status)


def in_transaction(read_only: bool, work, *args):
    """``work(cursor, *args)`` on a pooled connection, in one transaction."""
    conn = pool.getconn()
    try:
        if conn.readonly is not (read_only or None):
            conn.readonly = read_only or None
        with conn.cursor() as cur:
            result = work(cur, *args)
        conn.commit()
        return result
    except BaseException:
        conn.rollback()
        raise
    finally:
        pool.putconn(conn)


# -- the questions, one transaction each (shared with the bench's in-process measurement) ----------
def latest(cur, symbols: list) -> dict:
    cur.execute(rc.LATEST, (symbols,))
    rows = cur.fetchall()
    if any(row[10] != row[8] for row in rows):
        raise Refused(422, {"error": "DataValidationError", "field": "interval"})
    return {row[1]: rc.price(row) for row in rows}


def bars(cur, symbol: str, start: str, end: str) -> list:
    cur.execute(rc.INTERVAL_PROBE, ([symbol],))
    found = cur.fetchall()
    if not found:
        return []
    if found[0][2] is not None:
        raise Refused(422, {"error": "DataValidationError", "field": "interval"})
    cur.execute(rc.RANGE, (symbol, found[0][1], rc.moment(start), rc.moment(end)))
    return [rc.price(row) for row in cur.fetchall()]


def search(cur, text: str, limit: int) -> list:
    cur.execute(rc.SEARCH, (text, limit))
    return [rc.article(row) for row in cur.fetchall()]


def create(cur, order: rc.NewOrder) -> dict:
    try:
        cur.execute(rc.CREATE_ORDER, (order.order_id, order.symbol, order.order_type, order.side, order.quantity,
                                      order.price, order.signal_id))
    except psycopg2.errors.UniqueViolation:
        raise Refused(409, {"error": "DuplicateKeyError", "field": "order_id", "value": order.order_id}) from None
    return rc.order(cur.fetchone())


def transition(cur, order_id: str, move: rc.Transition) -> dict:
    cur.execute(rc.LOCK_ORDER, (order_id,))
    row = cur.fetchone()
    if row is None:
        raise Refused(404, {"error": "NotFoundError", "field": "order_id", "value": order_id})
    current = {"status": row[7], "quantity": row[5], "filled_quantity": row[9], "average_fill_price": row[10]}
    after = rc.move(current, move.status, move.filled_quantity, move.average_fill_price)
    if after is None:
        raise Refused(422, {"error": "DataValidationError", "field": "new_status", "value": move.status})
    cur.execute(rc.MOVE_ORDER, (*after, row[0]))
    updated = cur.fetchone()
    cur.execute(rc.ORDER_EVENT, (row[0], row[7], after[0], updated[9], updated[10], updated[12], move.note))
    return rc.order(updated)


# -- endpoints: the paths, parameters and JSON of app.py ----------------------------------------------
@app.get("/prices/latest")
def latest_prices(symbols: str, interval: str | None = None) -> dict:
    return in_transaction(True, latest, rc.symbols_of(symbols))


@app.get("/prices/{symbol}")
def price_range(symbol: str, start: str, end: str, interval: str | None = None) -> list:
    return in_transaction(True, bars, symbol, start, end)


@app.get("/articles/search")
def search_articles(q: str, limit: int = 20) -> list:
    return in_transaction(True, search, q, limit)


@app.post("/orders", status_code=201)
def place_order(order: rc.NewOrder) -> dict:
    return in_transaction(False, create, order)


@app.post("/orders/{order_id}/transition")
def transition_order(order_id: str, move: rc.Transition) -> dict:
    return in_transaction(False, transition, order_id, move)
