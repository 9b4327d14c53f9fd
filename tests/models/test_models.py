"""Models: bad input refused in Python, CHECK constraints behind it, exact round trips.

Round trips are checked twice: through the repository (what callers see) and
with raw SQL on a separate connection (what is really stored).
"""
from __future__ import annotations

import datetime as dt
import hashlib
import itertools
import logging
import zoneinfo
from decimal import Decimal

import psycopg2.errors
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import marketstore
from marketstore import (
    Article,
    ArticleRepository,
    BacktestResult,
    BacktestResultRepository,
    DataValidationError,
    Event,
    Order,
    OrderEvent,
    OrderRepository,
    Price,
    PriceRepository,
    SentimentScore,
    TradingSignal,
    get_db_session,
)
from marketstore.models import config_hash
from helpers import REPOSITORIES, UTC, count_rows

NAN, INF = float("nan"), float("inf")
MISSING = object()  # drop the field from the valid row






def valid_row(model) -> dict:
    """A row that passes validation; foreign keys point at id 1 (never reached here)."""
    return {
        Price: lambda: dict(symbol="AAPL", timestamp=dt.datetime(2024, 1, 2, 15, 30, tzinfo=UTC),
                            open=Decimal("10"), high=Decimal("12"), low=Decimal("9"), close=Decimal("11"),
                            volume=Decimal("1000"), interval="1m"),
        Article: lambda: dict(title="Apple beats", content="...", source="wire", url="https://x/1",
                              published_at=dt.datetime(2024, 1, 2, tzinfo=UTC), symbols=["AAPL"],
                              metadata={"lang": "en"}),
        SentimentScore: lambda: dict(article=1, score=0.5, confidence=0.9, keywords_positive=["beat"],
                                     keywords_negative=[], model="finbert"),
        Event: lambda: dict(article=None, symbols=["AAPL"], event_type="earnings", severity=3,
                            keywords=["beat"], details={"eps": 1.2}),
        TradingSignal: lambda: dict(symbol="AAPL", signal_type="buy", cms_score=0.4,
                                    sentiment_component=0.5, technical_component=0.1, regime_component=None,
                                    explanation={"why": "news"}),
        Order: lambda: dict(order_id="o-1", symbol="AAPL", order_type="limit", side="buy",
                            quantity=Decimal("10"), price=Decimal("100")),
        OrderEvent: lambda: dict(order=1, from_status="pending", to_status="submitted"),
        # config_hash given explicitly: see test_config_hash_is_derived_from_config.
        BacktestResult: lambda: dict(name="run", config={"window": 5}, config_hash=config_hash({"window": 5}),
                                     metrics={"sharpe": 1.1}, trades=[], equity_curve=[1, 2]),
    }[model]()


class Opaque:
    def __repr__(self):
        return "<Opaque>"


# (model, changes to the valid row, field the error must name, value it must show)
BAD_INPUTS = [
    # non-finite numbers
    (Price, {"open": NAN}, "open", NAN),
    (Price, {"high": INF}, "high", INF),
    (Price, {"low": -INF}, "low", -INF),
    (Price, {"close": Decimal("NaN")}, "close", Decimal("NaN")),
    (SentimentScore, {"score": NAN}, "score", NAN),
    (TradingSignal, {"sentiment_component": INF}, "sentiment_component", INF),
    # ranges
    (Price, {"volume": Decimal("-1")}, "volume", Decimal("-1")),
    (Price, {"low": Decimal("0"), "open": Decimal("0"), "close": Decimal("0")}, "open", Decimal("0")),
    (Price, {"open": 10 ** 16}, "open", 10 ** 16),  # beyond NUMERIC(24,8)
    (SentimentScore, {"score": 1.5}, "score", 1.5),
    (SentimentScore, {"score": -1.01}, "score", -1.01),
    (SentimentScore, {"confidence": 1.1}, "confidence", 1.1),
    (SentimentScore, {"confidence": -0.1}, "confidence", -0.1),
    (TradingSignal, {"cms_score": 2}, "cms_score", 2),
    (Event, {"severity": 0}, "severity", 0),
    (Event, {"severity": 6}, "severity", 6),
    (Event, {"severity": 2 ** 40}, "severity", 2 ** 40),
    (Order, {"quantity": Decimal("0")}, "quantity", Decimal("0")),
    (Order, {"quantity": Decimal("-5")}, "quantity", Decimal("-5")),
    (Order, {"price": Decimal("0")}, "price", Decimal("0")),
    (Order, {"average_fill_price": Decimal("-1")}, "average_fill_price", Decimal("-1")),
    (OrderEvent, {"fill_price": Decimal("0")}, "fill_price", Decimal("0")),
    # cross-field rules
    (Price, {"high": Decimal("8")}, "high", Decimal("8")),
    (Price, {"open": Decimal("13")}, "open", Decimal("13")),
    (Price, {"open": Decimal("8.5")}, "open", Decimal("8.5")),
    (Price, {"close": Decimal("12.01")}, "close", Decimal("12.01")),
    (Price, {"close": Decimal("8.99")}, "close", Decimal("8.99")),
    (Order, {"price": None}, "price", None),  # a limit order needs a price
    (Order, {"order_type": "stop", "price": None}, "price", None),
    (Order, {"filled_quantity": Decimal("11")}, "filled_quantity", Decimal("11")),
    (BacktestResult, {"config_hash": "0" * 64}, "config_hash", "0" * 64),
    # unknown enum values
    (TradingSignal, {"signal_type": "strong_buy"}, "signal_type", "strong_buy"),
    (TradingSignal, {"signal_type": "BUY"}, "signal_type", "BUY"),
    (Order, {"order_type": "iceberg"}, "order_type", "iceberg"),
    (Order, {"side": "short"}, "side", "short"),
    (Order, {"status": "done"}, "status", "done"),
    (OrderEvent, {"to_status": "done"}, "to_status", "done"),
    # text shape
    (Price, {"symbol": "AA PL"}, "symbol", "AA PL"),
    (Price, {"symbol": ""}, "symbol", ""),
    (Price, {"interval": "1x"}, "interval", "1x"),
    (BacktestResult, {"name": "x" * 201}, "name", "x" * 201),
    # documents that are not JSON (or not storable as jsonb)
    (Event, {"details": {1, 2}}, "details", {1, 2}),
    (Event, {"details": {"at": dt.datetime(2024, 1, 1)}}, "details", {"at": dt.datetime(2024, 1, 1)}),
    (Event, {"details": {"obj": Opaque()}}, "details", {"obj": Opaque()}),
    (Event, {"details": {"x": NAN}}, "details", {"x": NAN}),
    (Event, {"details": {"s": "a\x00b"}}, "details", {"s": "a\x00b"}),
    (Event, {"details": {"s": "\ud800"}}, "details", {"s": "\ud800"}),
    (Article, {"metadata": {"tags": {"a"}}}, "metadata", {"tags": {"a"}}),
    (TradingSignal, {"explanation": {"w": [INF]}}, "explanation", {"w": [INF]}),
    (BacktestResult, {"config": {"a": {1}}}, "config", {"a": {1}}),
    (BacktestResult, {"metrics": {"sharpe": NAN}}, "metrics", {"sharpe": NAN}),
    (BacktestResult, {"trades": [dt.date(2024, 1, 1)]}, "trades", [dt.date(2024, 1, 1)]),
    # NUL bytes and lone surrogates in text
    (Article, {"title": "a\x00b"}, "title", "a\x00b"),
    (Article, {"content": "\ud800"}, "content", "\ud800"),
    (Event, {"event_type": "\udcff"}, "event_type", "\udcff"),
    (SentimentScore, {"model": "fin\x00bert"}, "model", "fin\x00bert"),
    (Article, {"symbols": ["AAPL", "\x00"]}, "symbols[1]", "\x00"),
    # wrong types
    (Price, {"open": "abc"}, "open", "abc"),
    (Price, {"volume": True}, "volume", True),
    (Price, {"symbol": 42}, "symbol", 42),
    (Price, {"timestamp": "yesterday"}, "timestamp", "yesterday"),
    (Price, {"timestamp": 1700000000}, "timestamp", 1700000000),
    (SentimentScore, {"score": "high"}, "score", "high"),
    (SentimentScore, {"confidence": False}, "confidence", False),
    (SentimentScore, {"article": "1"}, "article", "1"),
    (SentimentScore, {"article": 0}, "article", 0),
    (Event, {"severity": 3.5}, "severity", 3.5),
    (Event, {"severity": "3"}, "severity", "3"),
    (Event, {"severity": True}, "severity", True),
    (Event, {"symbols": "AAPL"}, "symbols", "AAPL"),
    (SentimentScore, {"keywords_positive": "good"}, "keywords_positive", "good"),
    (SentimentScore, {"keywords_negative": ["ok", 3]}, "keywords_negative[1]", 3),
    (Article, {"url": 5}, "url", 5),
    (Article, {"published_at": dt.date(2024, 1, 1)}, "published_at", dt.date(2024, 1, 1)),
    (Order, {"quantity": "ten"}, "quantity", "ten"),
    # unknown and missing fields
    (Price, {"colour": "red"}, "colour", "red"),
    (Order, {"stop_loss": 5}, "stop_loss", 5),
    (Price, {"close": MISSING}, "close", None),
    (Price, {"symbol": None}, "symbol", None),
    (Article, {"title": MISSING}, "title", None),
    (Event, {"severity": MISSING}, "severity", None),
    (Order, {"side": MISSING}, "side", None),
    (BacktestResult, {"config": MISSING}, "config", None),
]


def apply(row: dict, changes: dict) -> dict:
    row = dict(row)
    for key, value in changes.items():
        if value is MISSING:
            del row[key]
        else:
            row[key] = value
    return row


@pytest.fixture
def pool(database_url):
    """The pool without the per-test TRUNCATE of ``db``: for tests that assert
    row-count deltas only (the validation table runs ~100 cases)."""
    connection = marketstore.initialize_database(database_url, pool_timeout=5)
    yield connection
    marketstore.close_database()


@pytest.fixture
def queries(caplog):
    """Statements peewee sent to the server since the test started."""
    caplog.set_level(logging.DEBUG, logger="peewee")
    return lambda: [r.getMessage() for r in caplog.records if r.name == "peewee"]


@pytest.mark.parametrize("model", list(REPOSITORIES), ids=lambda m: m.__name__)
def test_valid_rows_pass_validation(model):
    # Guards the table below: each case must fail because of its change alone.
    assert model.validate(valid_row(model))


# An omitted price must be refused like an explicit None (it once slipped through).
LIMIT_ORDER_WITHOUT_PRICE = pytest.param(Order, {"price": MISSING}, "price", None, id="Order.price:omitted")


@pytest.mark.parametrize("model, changes, field, value", [
    pytest.param(*case, id=f"{case[0].__name__}.{case[2]}:{i}") for i, case in enumerate(BAD_INPUTS)
] + [LIMIT_ORDER_WITHOUT_PRICE])
def test_bad_input_is_refused_before_reaching_the_database(pool, raw, queries, model, changes, field, value):
    repo = REPOSITORIES[model]()
    before = count_rows(raw, model._meta.table_name)
    with pytest.raises(DataValidationError) as info:
        repo.create(**apply(valid_row(model), changes))
    error = info.value
    assert error.field == field
    message = str(error)
    assert message.startswith(f"{field}=")
    assert repr(value)[:60] in message
    assert "expected" in message
    assert isinstance(error, ValueError)
    assert queries() == []
    assert count_rows(raw, model._meta.table_name) == before


@pytest.mark.parametrize("model, changes, field", [
    (Price, {"high": Decimal("8")}, "high"),
    (SentimentScore, {"score": 3.0}, "score"),
    (Event, {"severity": 6}, "severity"),
    (Order, {"side": "short"}, "side"),
    (BacktestResult, {"metrics": {"x": NAN}}, "metrics"),
], ids=lambda v: getattr(v, "__name__", None))
def test_model_save_validates_too(db, raw, queries, model, changes, field):
    # Code that uses the models directly (Model.create / save) gets the same guard.
    with pytest.raises(DataValidationError) as info:
        with get_db_session():
            model.create(**apply(valid_row(model), changes))
    assert info.value.field == field
    assert not [q for q in queries() if "INSERT" in q]
    assert count_rows(raw, model._meta.table_name) == 0


# -- the database's CHECK constraints: the second line ------------------------

@pytest.fixture
def parents(db, raw) -> dict:
    """An article and an order for rows that reference them."""
    with raw.cursor() as cur:
        cur.execute("INSERT INTO articles (title) VALUES ('t') RETURNING id")
        article = cur.fetchone()[0]
        cur.execute("INSERT INTO orders (order_id, symbol, order_type, side, quantity, price) "
                    "VALUES ('p-1', 'AAPL', 'limit', 'buy', 10, 100) RETURNING id")
        order = cur.fetchone()[0]
    return {"article": article, "order": order}


PRICE_SQL = ("INSERT INTO prices (symbol, timestamp, open, high, low, close, volume) "
             "VALUES ('AAPL', '2024-01-01T00:00Z', %s, %s, %s, %s, %s)")
ORDER_SQL = ("INSERT INTO orders (order_id, symbol, order_type, side, quantity, price, filled_quantity, status) "
             "VALUES ('o-9', 'AAPL', %s, 'buy', %s, %s, %s, %s)")


@pytest.mark.parametrize("sql, params, constraint", [
    (PRICE_SQL, (10, 8, 9, 9, 1), "prices_ohlc_check"),  # high < low
    (PRICE_SQL, (13, 12, 9, 11, 1), "prices_ohlc_check"),  # open > high
    (PRICE_SQL, (0, 0, 0, 0, 1), "prices_ohlc_check"),  # low not > 0
    (PRICE_SQL, (10, 12, 9, 11, -1), "prices_volume_check"),
    # NaN sorts above every number, so only an explicit check refuses an all-NaN bar.
    (PRICE_SQL, ("NaN", "NaN", "NaN", "NaN", 1), "prices_nan_check"),
    (PRICE_SQL, (10, 12, 9, 11, "NaN"), "prices_nan_check"),
    ("INSERT INTO prices (symbol, timestamp, open, high, low, close, volume) "
     "VALUES ('AA PL', '2024-01-01T00:00Z', 1, 1, 1, 1, 1)", None, "prices_symbol_check"),
    ("INSERT INTO prices (symbol, timestamp, open, high, low, close, volume, interval) "
     "VALUES ('AAPL', '2024-01-01T00:00Z', 1, 1, 1, 1, 1, '1x')", None, "prices_interval_check"),
    # A bar a Python datetime cannot hold would make every read that returns it fail.
    pytest.param("INSERT INTO prices (symbol, timestamp, open, high, low, close, volume) "
                 "VALUES ('AAPL', 'infinity', 1, 1, 1, 1, 1)", None, "prices_timestamp_check", id="infinity"),
    # Five digits fit the column but not INTERVAL_PATTERN: the repositories could never query it.
    pytest.param("INSERT INTO prices (symbol, timestamp, open, high, low, close, volume, interval) "
                 "VALUES ('AAPL', '2024-01-01T00:00Z', 1, 1, 1, 1, 1, '12345m')", None, "prices_interval_check",
                 id="five-digit-interval"),
    pytest.param("INSERT INTO prices (symbol, timestamp, open, high, low, close, volume) "
                 "VALUES ('AAPL', '10000-01-01T00:00Z', 1, 1, 1, 1, 1)", None, "prices_timestamp_check",
                 id="year-10000"),
    pytest.param("INSERT INTO prices (symbol, timestamp, open, high, low, close, volume) "
                 "VALUES ('AAPL', '0001-01-01T00:00Z'::timestamptz - interval '1 second', 1, 1, 1, 1, 1)", None,
                 "prices_timestamp_check", id="before-year-1"),
    (ORDER_SQL, ("market", "NaN", None, 0, "pending"), "orders_nan_check"),
    ("INSERT INTO sentiment_scores (article_id, score, confidence, model) VALUES (%(article)s, 2, 0.5, 'm')",
     None, "sentiment_scores_score_check"),
    ("INSERT INTO sentiment_scores (article_id, score, confidence, model) VALUES (%(article)s, 0, 1.5, 'm')",
     None, "sentiment_scores_confidence_check"),
    ("INSERT INTO events (event_type, severity) VALUES ('e', 6)", None, "events_severity_check"),
    ("INSERT INTO events (event_type, severity) VALUES ('e', 0)", None, "events_severity_check"),
    ("INSERT INTO trading_signals (symbol, signal_type, cms_score) VALUES ('A', 'strong_buy', 0)", None,
     "trading_signals_signal_type_check"),
    ("INSERT INTO trading_signals (symbol, signal_type, cms_score) VALUES ('A', 'buy', -1.5)", None,
     "trading_signals_cms_score_check"),
    (ORDER_SQL, ("limit", 10, 100, 11, "pending"), "orders_fill_check"),  # filled > quantity
    # NULL price on a limit order: a CHECK written as "price > 0 OR ..." evaluates to NULL and passes.
    pytest.param(ORDER_SQL, ("limit", 10, None, 0, "pending"), "orders_price_check", id="limit-without-price"),
    (ORDER_SQL, ("market", 0, None, 0, "pending"), "orders_quantity_check"),
    (ORDER_SQL, ("iceberg", 10, 100, 0, "pending"), "orders_order_type_check"),
    (ORDER_SQL, ("limit", 10, 100, 0, "done"), "orders_status_check"),
    ("INSERT INTO order_events (order_id, to_status) VALUES (%(order)s, 'done')", None,
     "order_events_to_status_check"),
    ("INSERT INTO backtest_results (name, config, config_hash) VALUES ('n', '{}', 'abc')", None,
     "backtest_results_config_hash_check"),
], ids=lambda v: v if isinstance(v, str) and v.islower() and " " not in v else None)
def test_database_check_constraints_refuse_rows_that_bypass_validation(raw, parents, sql, params, constraint):
    table = sql.split()[2]
    before = count_rows(raw, table)
    with raw.cursor() as cur, pytest.raises(psycopg2.errors.CheckViolation) as info:
        cur.execute(sql, params if params is not None else parents)
    assert info.value.diag.constraint_name == constraint
    assert count_rows(raw, table) == before


@pytest.mark.parametrize("sql, error", [
    (PRICE_SQL, psycopg2.errors.UniqueViolation),
    ("INSERT INTO sentiment_scores (article_id, score, confidence, model) VALUES (999999, 0, 0, 'm')",
     psycopg2.errors.ForeignKeyViolation),
    ("INSERT INTO orders (order_id, symbol, order_type, side, quantity, price) "
     "VALUES ('p-1', 'AAPL', 'market', 'buy', 1, NULL)", psycopg2.errors.UniqueViolation),
    ("INSERT INTO articles (title, url) VALUES ('t', 'u'), ('t2', 'u')", psycopg2.errors.UniqueViolation),
], ids=["price-bar", "sentiment-article", "order-id", "article-url"])
def test_database_unique_and_foreign_keys(raw, parents, sql, error):
    with raw.cursor() as cur:
        cur.execute(PRICE_SQL, (10, 12, 9, 11, 1))
        with pytest.raises(error):
            cur.execute(sql, (10, 12, 9, 11, 1) if sql is PRICE_SQL else None)


# -- Decimal round trips --------------------------------------------------------

def _stored_text(raw, table: str, column: str, id: int) -> str:
    with raw.cursor() as cur:
        cur.execute(f"SELECT {column}::text FROM {table} WHERE id = %s", (id,))
        return cur.fetchone()[0]


_bar = itertools.count()


def _flat_bar(value) -> dict:
    # All four prices equal keeps low <= open, close <= high for any value.
    minute = next(_bar)
    return dict(symbol=f"D{minute}", timestamp=dt.datetime(2024, 1, 1, tzinfo=UTC) + dt.timedelta(minutes=minute),
                open=value, high=value, low=value, close=value, volume=value)


@pytest.mark.parametrize("given_value, expected, stored", [
    (Decimal("123.45678901"), Decimal("123.45678901"), "123.45678901"),
    (0.1, Decimal("0.1"), "0.10000000"),
    (1.005, Decimal("1.005"), "1.00500000"),
    ("42.5", Decimal("42.5"), "42.50000000"),
    (7, Decimal("7"), "7.00000000"),
    (Decimal("0.00000001"), Decimal("0.00000001"), "0.00000001"),
    (Decimal("9999999999999999.99999999"), Decimal("9999999999999999.99999999"), "9999999999999999.99999999"),
], ids=["decimal", "float-0.1", "float-1.005", "str", "int", "smallest", "largest"])
def test_prices_round_trip_as_exact_decimals(db, raw, given_value, expected, stored):
    repo = PriceRepository()
    created = repo.create(**_flat_bar(given_value))
    for bar in (created, repo.get(created.id)):
        for column in ("open", "high", "low", "close", "volume"):
            value = getattr(bar, column)
            assert type(value) is Decimal
            assert value == expected
    assert _stored_text(raw, "prices", "open", created.id) == stored


def test_order_money_fields_are_decimal(db, raw):
    order = OrderRepository().create(**{**valid_row(Order), "quantity": 0.3, "price": Decimal("101.12345678")})
    assert (order.quantity, order.price, order.filled_quantity) == (
        Decimal("0.3"), Decimal("101.12345678"), Decimal("0"))
    assert all(type(v) is Decimal for v in (order.quantity, order.price, order.filled_quantity))
    assert _stored_text(raw, "orders", "quantity", order.id) == "0.30000000"


money = st.decimals(min_value=Decimal("0.00000001"), max_value=Decimal("9999999999999999.99999999"),
                    places=8, allow_nan=False, allow_infinity=False)


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=money)
def test_any_numeric_24_8_price_round_trips_exactly(db, raw, value):
    repo = PriceRepository()
    created = repo.create(**_flat_bar(value))
    assert created.open == value and type(created.open) is Decimal
    assert repo.get(created.id).close == value
    assert Decimal(_stored_text(raw, "prices", "high", created.id)) == value


# -- timezone round trips --------------------------------------------------------

NEW_YORK = zoneinfo.ZoneInfo("America/New_York")


@pytest.mark.parametrize("given_value, expected", [
    (dt.datetime(2024, 3, 10, 12, 30, 15, 123456), dt.datetime(2024, 3, 10, 12, 30, 15, 123456, tzinfo=UTC)),
    (dt.datetime(2024, 3, 10, 17, 30, tzinfo=dt.timezone(dt.timedelta(hours=5))),
     dt.datetime(2024, 3, 10, 12, 30, tzinfo=UTC)),
    (dt.datetime(2024, 3, 10, 4, 30, tzinfo=dt.timezone(dt.timedelta(hours=-8))),
     dt.datetime(2024, 3, 10, 12, 30, tzinfo=UTC)),
    (dt.datetime(2024, 7, 1, 8, 30, tzinfo=NEW_YORK), dt.datetime(2024, 7, 1, 12, 30, tzinfo=UTC)),
    ("2024-03-10T17:30:00+05:00", dt.datetime(2024, 3, 10, 12, 30, tzinfo=UTC)),
    ("2024-03-10T12:30:00Z", dt.datetime(2024, 3, 10, 12, 30, tzinfo=UTC)),
    ("2024-03-10 12:30", dt.datetime(2024, 3, 10, 12, 30, tzinfo=UTC)),
], ids=["naive", "plus-05", "minus-08", "new-york-dst", "iso-offset", "iso-z", "iso-naive"])
def test_datetimes_are_stored_and_read_as_utc(db, raw, given_value, expected):
    repo = PriceRepository()
    created = repo.create(**{**valid_row(Price), "timestamp": given_value})
    for bar in (created, repo.get(created.id), repo.list()[0]):
        assert bar.timestamp == expected
        assert bar.timestamp.tzinfo == UTC
        assert bar.timestamp.utcoffset() == dt.timedelta(0)
    with raw.cursor() as cur:
        cur.execute("SELECT timestamp AT TIME ZONE 'UTC' FROM prices WHERE id = %s", (created.id,))
        assert cur.fetchone()[0] == expected.replace(tzinfo=None)


def test_naive_datetime_is_utc_whatever_the_session_timezone(db, raw):
    # The UTC session setting is one guard; the field's own conversion is the other.
    naive = dt.datetime(2024, 3, 10, 12, 30)
    with get_db_session() as session:
        session.execute_sql("SET LOCAL timezone = 'Asia/Kolkata'")
        created = PriceRepository().create(**{**valid_row(Price), "timestamp": naive})
        assert created.timestamp == naive.replace(tzinfo=UTC)
        assert created.timestamp.tzinfo == UTC
        # Filters bypass validation: the field itself must send the naive value as UTC.
        assert PriceRepository().count(timestamp=naive) == 1
    with raw.cursor() as cur:
        cur.execute("SELECT timestamp AT TIME ZONE 'UTC' FROM prices WHERE id = %s", (created.id,))
        assert cur.fetchone()[0] == naive


def test_naive_datetime_filters_mean_utc(db):
    repo = PriceRepository()
    repo.create(**{**valid_row(Price), "timestamp": dt.datetime(2024, 3, 10, 12, 30, tzinfo=UTC)})
    assert repo.count(timestamp=dt.datetime(2024, 3, 10, 12, 30)) == 1
    assert repo.count(timestamp=dt.datetime(2024, 3, 10, 17, 30, tzinfo=dt.timezone(dt.timedelta(hours=5)))) == 1
    assert repo.count(timestamp=dt.datetime(2024, 3, 10, 13, 30)) == 0


offsets = st.integers(min_value=-(23 * 60 + 59), max_value=23 * 60 + 59).map(
    lambda minutes: dt.timezone(dt.timedelta(minutes=minutes)))


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=st.datetimes(min_value=dt.datetime(1900, 1, 1), max_value=dt.datetime(2200, 12, 31, 23, 59, 59),
                          timezones=st.none() | offsets))
def test_any_datetime_round_trips_as_the_same_utc_instant(db, raw, value):
    expected = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    repo = ArticleRepository()
    created = repo.create(title="t", published_at=value)
    fetched = repo.get(created.id)
    assert created.published_at == fetched.published_at == expected
    assert fetched.published_at.utcoffset() == dt.timedelta(0)
    with raw.cursor() as cur:
        cur.execute("SELECT published_at AT TIME ZONE 'UTC' FROM articles WHERE id = %s", (created.id,))
        assert cur.fetchone()[0] == expected.replace(tzinfo=None)


def test_server_defaults_are_aware_utc_and_current(db):
    before = dt.datetime.now(UTC)
    article = ArticleRepository().create(title="t")
    after = dt.datetime.now(UTC)
    assert article.ingested_at.tzinfo == UTC
    # Allow for clock differences between client and server on the same host.
    assert before - dt.timedelta(seconds=5) <= article.ingested_at <= after + dt.timedelta(seconds=5)


# -- arrays and documents ----------------------------------------------------------

@pytest.mark.parametrize("symbols", [
    [], ["AAPL"], ["A,B", 'say "hi"', "{x}", "back\\slash", "ü€😀", "", "NULL", " spaced "],
], ids=["empty", "one", "awkward"])
def test_text_arrays_round_trip(db, raw, symbols):
    repo = ArticleRepository()
    created = repo.create(title="t", symbols=symbols)
    assert repo.get(created.id).symbols == symbols
    with raw.cursor() as cur:
        cur.execute("SELECT symbols FROM articles WHERE id = %s", (created.id,))
        assert cur.fetchone()[0] == symbols


@pytest.mark.parametrize("document", [
    {}, {"nested": {"list": [1, 2.5, None, True, "ü"]}}, {"big": 2 ** 62, "neg": -3, "tiny": 1e-7},
    {"quote": "it's \"quoted\"", "uni": "😀"},
], ids=["empty", "nested", "numbers", "strings"])
def test_json_documents_round_trip(db, raw, document):
    repo = BacktestResultRepository()
    created = repo.create(name="r", config=document, config_hash=config_hash(document), metrics=document)
    fetched = repo.get(created.id)
    assert fetched.config == document and fetched.metrics == document
    assert fetched.config_hash == config_hash(document)
    with raw.cursor() as cur:
        cur.execute("SELECT config, config_hash FROM backtest_results WHERE id = %s", (created.id,))
        assert cur.fetchone() == (document, config_hash(document))


def test_config_hash_is_sha256_of_canonical_json():
    assert config_hash({"b": 1, "a": [1, 2]}) == hashlib.sha256(b'{"a":[1,2],"b":1}').hexdigest()


def test_config_hash_is_derived_from_config(db, raw):
    config = {"b": 1, "a": [1, 2]}
    created = BacktestResultRepository().create(name="r", config=config)
    assert created.config_hash == hashlib.sha256(b'{"a":[1,2],"b":1}').hexdigest()
