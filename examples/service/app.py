"""A small HTTP service on marketstore: prices, article search, orders, health.

Run it (configured by the environment, see README.md beside this file)::

    MARKETSTORE_DATABASE_URL=postgresql://app@db/market \\
        uvicorn app:app --app-dir examples/service --workers 4 --http serving:HTTPProtocol

Every endpoint is a plain ``def``: FastAPI runs it in its thread pool, and
the whole body runs in one marketstore session (one transaction on one pooled
connection, see :func:`in_session`), reads on a replica when one is configured.
Each has an ``async def`` twin under ``/async`` with the same JSON, whose
session is a FastAPI dependency (:func:`read_session`, :func:`write_session`).
marketstore's errors become HTTP statuses with a JSON body naming the field and
the value (:data:`STATUS`).
"""
from __future__ import annotations

import datetime as dt
import decimal
import functools
import inspect
import logging
from contextlib import asynccontextmanager
from typing import Annotated, AsyncIterator, Optional

import anyio.to_thread
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict

import marketstore
from marketstore import errors
from marketstore.aio import AsyncSession, get_async_db_session

logger = logging.getLogger("marketstore.service")

prices = marketstore.PriceRepository()
articles = marketstore.ArticleRepository()
orders = marketstore.OrderRepository()


@asynccontextmanager
async def lifespan(app: FastAPI):
    # Each uvicorn worker process runs this: one pool per process, nothing
    # connects until the first request.
    connection = marketstore.initialize_database()
    # More threads than pooled connections would only wait on the pool (and
    # fail after pool_timeout): excess requests queue in the event loop instead.
    anyio.to_thread.current_default_thread_limiter().total_tokens = connection.settings.max_connections
    logger.info("serving %s", connection.settings.safe_url())
    try:
        yield
    finally:
        marketstore.close_database()


app = FastAPI(title="marketstore service", lifespan=lifespan)


def in_session(*, read_only: bool):
    """Run the decorated endpoint in one ``get_db_session()``: one session per request.

    A decorator, not a ``Depends`` with ``yield``: FastAPI enters a sync
    dependency in one thread-pool thread, runs the endpoint in another and
    leaves the dependency in a third, while a session (a connection checked
    out, a transaction, the models' ``database_proxy``) belongs to the thread
    that opened it. Here the session is opened, used and closed in the thread
    that runs the endpoint. ``read_only=True``: a replica within the lag bound
    serves it when replicas are configured, and a write in it raises
    ``ReadOnlyError``.
    """
    def decorate(endpoint):
        operation = endpoint.__name__

        @functools.wraps(endpoint)
        def run(*args, **kwargs):
            with marketstore.get_db_session(operation, read_only=read_only):
                return endpoint(*args, **kwargs)

        return run
    return decorate


# -- JSON shapes -----------------------------------------------------------------
def _money(value: Optional[decimal.Decimal]) -> Optional[str]:
    # Strings, not JSON numbers: a float would round a NUMERIC(20, 8).
    return None if value is None else str(value)


def _time(value: Optional[dt.datetime]) -> Optional[str]:
    return None if value is None else value.isoformat()


def _price(bar) -> dict:
    return {"symbol": bar.symbol, "timestamp": _time(bar.timestamp), "interval": bar.interval,
            "open": _money(bar.open), "high": _money(bar.high), "low": _money(bar.low),
            "close": _money(bar.close), "volume": _money(bar.volume)}


def _price_row(row: tuple) -> dict:
    # get_range(as_tuples=True): (id, symbol, timestamp, open, high, low, close, volume, interval, adj_close).
    # A list of bars turned into JSON needs their values, not models.
    return {"symbol": row[1], "timestamp": _time(row[2]), "interval": row[8], "open": _money(row[3]),
            "high": _money(row[4]), "low": _money(row[5]), "close": _money(row[6]), "volume": _money(row[7])}


def _order(order) -> dict:
    return {"order_id": order.order_id, "symbol": order.symbol, "order_type": order.order_type,
            "side": order.side, "quantity": _money(order.quantity), "price": _money(order.price),
            "status": order.status, "filled_quantity": _money(order.filled_quantity),
            "average_fill_price": _money(order.average_fill_price), "signal_id": order.signal_id,
            "timestamp": _time(order.timestamp), "updated_at": _time(order.updated_at)}


class NewOrder(BaseModel):
    """``POST /orders``: money as strings ("10.5") or numbers; marketstore validates the values."""

    model_config = ConfigDict(extra="forbid")
    order_id: str
    symbol: str
    order_type: str
    side: str
    quantity: decimal.Decimal
    price: Optional[decimal.Decimal] = None
    signal_id: Optional[int] = None


class Transition(BaseModel):
    """``POST /orders/{order_id}/transition``: the new status and, for fills, the cumulative fill."""

    model_config = ConfigDict(extra="forbid")
    status: str
    filled_quantity: Optional[decimal.Decimal] = None
    average_fill_price: Optional[decimal.Decimal] = None
    note: Optional[str] = None


# -- endpoints -------------------------------------------------------------------
# /prices/latest before /prices/{symbol}: routes match in declaration order.
@app.get("/prices/latest")
@in_session(read_only=True)
def latest_prices(symbols: str, interval: Optional[str] = None) -> dict:
    """The newest bar of each of ``symbols`` (comma-separated) that has one."""
    wanted = [s.strip() for s in symbols.split(",") if s.strip()]
    found = prices.latest_for_symbols(wanted, interval)
    return {symbol: _price(bar) for symbol, bar in found.items()}


@app.get("/prices/{symbol}")
@in_session(read_only=True)
def price_range(symbol: str, start: str, end: str, interval: Optional[str] = None) -> list:
    """Bars of ``symbol`` with ``start <= timestamp < end`` (ISO-8601; naive = UTC), oldest first."""
    return [_price_row(bar) for bar in prices.get_range(symbol, start, end, interval, as_tuples=True)]


@app.get("/articles/search")
@in_session(read_only=True)
def search_articles(q: str, limit: int = 20) -> list:
    """Full-text search (web-search syntax), best match first."""
    return [{"id": a.id, "title": a.title, "source": a.source, "url": a.url,
             "published_at": _time(a.published_at), "symbols": a.symbols, "rank": a.rank}
            for a in articles.search(q, limit)]


@app.post("/orders", status_code=201)
@in_session(read_only=False)
def place_order(order: NewOrder) -> dict:
    """Create an order (status ``pending``); 409 if ``order_id`` exists."""
    data = order.model_dump(exclude_none=True)
    if "signal_id" in data:
        data["signal"] = data.pop("signal_id")
    return _order(orders.create(**data))


@app.post("/orders/{order_id}/transition")
@in_session(read_only=False)
def transition_order(order_id: str, move: Transition) -> dict:
    """Move the order along its state machine; 422 names an illegal move, 404 an unknown order."""
    return _order(orders.transition(order_id, move.status, move.filled_quantity,
                                    move.average_fill_price, note=move.note))


# -- the same endpoints, async ----------------------------------------------------
# A dependency can hold an async session: its awaited calls run on the thread the
# session holds, whichever task or thread FastAPI enters and leaves it in. Scope
# "function" (FastAPI >= 0.121) leaves it before the response is sent, so a failed
# COMMIT is the response, not a log line after a 201.
_BEFORE_RESPONSE = {"scope": "function"} if "scope" in inspect.signature(Depends).parameters else {}


async def read_session() -> AsyncIterator[AsyncSession]:
    """A read-only async session per request (a replica within the lag bound when configured)."""
    async with get_async_db_session("request", read_only=True) as session:
        yield session


async def write_session() -> AsyncIterator[AsyncSession]:
    """An async session per request on the primary: committed when the endpoint returns."""
    async with get_async_db_session("request") as session:
        yield session


Reads = Annotated[AsyncSession, Depends(read_session, **_BEFORE_RESPONSE)]
Writes = Annotated[AsyncSession, Depends(write_session, **_BEFORE_RESPONSE)]


@app.get("/async/prices/latest")
async def alatest_prices(session: Reads, symbols: str, interval: Optional[str] = None) -> dict:
    """``GET /prices/latest``, async."""
    wanted = [s.strip() for s in symbols.split(",") if s.strip()]
    found = await prices.alatest_for_symbols(wanted, interval)
    return {symbol: _price(bar) for symbol, bar in found.items()}


@app.get("/async/prices/{symbol}")
async def aprice_range(session: Reads, symbol: str, start: str, end: str, interval: Optional[str] = None) -> list:
    """``GET /prices/{symbol}``, async."""
    return [_price_row(bar) for bar in await prices.aget_range(symbol, start, end, interval, as_tuples=True)]


@app.get("/async/articles/search")
async def asearch_articles(session: Reads, q: str, limit: int = 20) -> list:
    """``GET /articles/search``, async."""
    return [{"id": a.id, "title": a.title, "source": a.source, "url": a.url,
             "published_at": _time(a.published_at), "symbols": a.symbols, "rank": a.rank}
            for a in await articles.asearch(q, limit)]


@app.post("/async/orders", status_code=201)
async def aplace_order(session: Writes, order: NewOrder) -> dict:
    """``POST /orders``, async."""
    data = order.model_dump(exclude_none=True)
    if "signal_id" in data:
        data["signal"] = data.pop("signal_id")
    return _order(await orders.acreate(**data))


@app.post("/async/orders/{order_id}/transition")
async def atransition_order(session: Writes, order_id: str, move: Transition) -> dict:
    """``POST /orders/{order_id}/transition``, async."""
    return _order(await orders.atransition(order_id, move.status, move.filled_quantity,
                                           move.average_fill_price, note=move.note))


@app.get("/health")
def health() -> JSONResponse:
    """``health_check()`` and ``pool_status()`` of this worker process; 503 when unhealthy."""
    healthy = marketstore.db_connection.health_check()
    body = {"healthy": healthy, "pool": marketstore.db_connection.pool_status()}
    return JSONResponse(body, status_code=200 if healthy else 503)


# -- errors ----------------------------------------------------------------------
# Most specific first: the first class in an error's MRO that is listed wins.
STATUS = [
    # A write reached a standby: a primary URL that points at one, or a failover
    # in progress. Not the client's doing, and over once the primary is back.
    (errors.ReadOnlyError, 503),
    (errors.DataValidationError, 422),
    (errors.NotFoundError, 404),
    (errors.IntegrityViolation, 409),  # DuplicateKeyError included
    (errors.SerializationFailure, 409),  # safe to retry the request
    (errors.DatabaseConnectionError, 503),  # PoolExhaustedError included
    (errors.MarketstoreError, 500),
]


def _jsonable(value):
    return value if value is None or isinstance(value, (str, int, float, bool)) else str(value)


def _status(exc: errors.MarketstoreError) -> int:
    return next(status for kind, status in STATUS if isinstance(exc, kind))


@app.exception_handler(errors.MarketstoreError)
async def marketstore_error(request: Request, exc: errors.MarketstoreError) -> JSONResponse:
    status = _status(exc)
    body = {"error": type(exc).__name__, "message": str(exc)}
    if isinstance(exc, errors.DataValidationError):
        body.update(field=exc.field, value=_jsonable(exc.value), expected=exc.expected)
    elif isinstance(exc, errors.DuplicateKeyError):  # the key already stored, and its constraint
        body.update(field=", ".join(exc.key), value=", ".join(map(str, exc.key.values())), key=exc.key,
                    constraint=exc.constraint)
    elif isinstance(exc, errors.IntegrityViolation):
        # Which unique/foreign-key/check constraint refused the row (the server's own name).
        diag = getattr(errors.driver_error(exc), "diag", None)
        body.update(constraint=getattr(diag, "constraint_name", None))
    elif isinstance(exc, errors.NotFoundError) and len(request.path_params) == 1:
        # The path names what was looked up: /orders/{order_id}/...
        (name, value), = request.path_params.items()
        body.update(field=name, value=value)
    if status >= 500:
        logger.warning("%s %s -> %d: %s", request.method, request.url.path, status, exc)
    return JSONResponse(body, status_code=status, headers={"Retry-After": "1"} if status == 503 else None)


@app.exception_handler(RequestValidationError)
async def request_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    """FastAPI's own 422 (a missing parameter, a body that is not JSON) in the same shape."""
    first = exc.errors()[0]
    field = ".".join(str(part) for part in first["loc"] if part not in ("body", "query", "path"))
    return JSONResponse({"error": "RequestValidationError", "message": first["msg"],
                         "field": field, "value": _jsonable(first.get("input")), "expected": first["msg"]},
                        status_code=422)


# -- /metrics: marketstore's OpenTelemetry metrics for Prometheus ------------------
# With the OpenTelemetry SDK and its Prometheus exporter installed (README,
# "Telemetry"), this process's meter provider is read by GET /metrics in
# Prometheus' text format: db_client_operation_duration_seconds, the pool's
# db_client_connection_* series. Each uvicorn worker is a process of its own
# with its own figures: scrape each, or run one worker per container.
try:
    import prometheus_client
    from opentelemetry import metrics as otel_metrics
    from opentelemetry.exporter.prometheus import PrometheusMetricReader
    from opentelemetry.sdk.metrics import MeterProvider
except ImportError:  # not installed: no /metrics
    prometheus_client = None

if prometheus_client is not None:
    from fastapi.responses import Response

    otel_metrics.set_meter_provider(MeterProvider(metric_readers=[PrometheusMetricReader()]))

    @app.get("/metrics", include_in_schema=False)
    def prometheus_metrics() -> Response:
        """Every metric of this worker process, in Prometheus' text format."""
        return Response(prometheus_client.generate_latest(), media_type=prometheus_client.CONTENT_TYPE_LATEST)
