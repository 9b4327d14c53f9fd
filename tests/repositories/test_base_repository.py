"""BaseRepository: the one CRUD implementation, exercised on several models.

Writes are checked from the raw connection; batching is checked through the
statements peewee logs.
"""
from __future__ import annotations

import datetime as dt
import logging
from decimal import Decimal

import peewee
import psycopg2
import pytest

from marketstore import (
    ArticleRepository,
    BaseRepository,
    DataValidationError,
    EventRepository,
    IntegrityViolation,
    NotFoundError,
    OrderRepository,
    PriceRepository,
    QueryError,
    SentimentScoreRepository,
    TradingSignalRepository,
    get_db_session,
)
from marketstore.models import OrderEvent
from helpers import UTC, count_rows

DRIVER_ERRORS = (psycopg2.Error, peewee.PeeweeException)
T0 = dt.datetime(2024, 1, 1, tzinfo=UTC)




def bar(n: int, symbol: str = "AAPL", **changes) -> dict:
    return {"symbol": symbol, "timestamp": T0 + dt.timedelta(minutes=n), "open": Decimal("10"),
            "high": Decimal("12"), "low": Decimal("9"), "close": Decimal("11"), "volume": Decimal(n), **changes}


def order(n: int, **changes) -> dict:
    return {"order_id": f"o-{n}", "symbol": "AAPL", "order_type": "limit", "side": "buy",
            "quantity": Decimal("10"), "price": Decimal("100"), **changes}


@pytest.fixture
def inserts(caplog):
    """How many INSERT statements peewee has sent since the test started."""
    caplog.set_level(logging.DEBUG, logger="peewee")
    return lambda: sum(1 for r in caplog.records if r.name == "peewee" and "INSERT" in r.getMessage())


def raw_row(raw, table: str, id: int) -> dict | None:
    with raw.cursor() as cur:
        cur.execute(f"SELECT * FROM {table} WHERE id = %s", (id,))
        row = cur.fetchone()
        return None if row is None else dict(zip([c.name for c in cur.description], row))


# -- create and database defaults ----------------------------------------------

def test_create_returns_the_row_with_database_defaults(db, raw):
    before = dt.datetime.now(UTC) - dt.timedelta(seconds=5)
    article = ArticleRepository().create(title="Apple beats")
    assert isinstance(article.id, int) and article.id > 0
    assert article.ingested_at >= before and article.ingested_at.tzinfo == UTC
    assert (article.symbols, article.metadata, article.url) == ([], {}, None)
    stored = raw_row(raw, "articles", article.id)
    assert stored["title"] == "Apple beats" and stored["ingested_at"] == article.ingested_at

    placed = OrderRepository().create(**order(1))
    assert (placed.status, placed.filled_quantity, placed.average_fill_price) == ("pending", Decimal("0"), None)
    assert placed.timestamp.tzinfo == UTC and placed.updated_at.tzinfo == UTC
    assert raw_row(raw, "orders", placed.id)["status"] == "pending"

    price = PriceRepository().create(**{k: v for k, v in bar(1).items()})
    assert price.interval == "1m"
    assert raw_row(raw, "prices", price.id)["interval"] == "1m"


def test_create_with_foreign_keys(db, raw):
    article = ArticleRepository().create(title="t")
    score = SentimentScoreRepository().create(article=article, score=-0.25, confidence=1, model="finbert")
    assert score.article_id == article.id
    assert raw_row(raw, "sentiment_scores", score.id)["article_id"] == article.id
    with pytest.raises(IntegrityViolation) as info:
        SentimentScoreRepository().create(article=article.id + 1000, score=0, confidence=0, model="m")
    assert isinstance(info.value.__cause__, DRIVER_ERRORS)
    assert count_rows(raw, "sentiment_scores") == 1


def test_create_duplicate_is_an_integrity_violation(db, raw):
    repo = PriceRepository()
    repo.create(**bar(1))
    with pytest.raises(IntegrityViolation) as info:
        repo.create(**bar(1))
    assert isinstance(info.value.__cause__, DRIVER_ERRORS)
    assert "prices_symbol_interval_timestamp" in str(info.value)
    assert count_rows(raw, "prices") == 1


# -- get / get_by_id ------------------------------------------------------------

def test_get_and_get_by_id(db):
    repo = TradingSignalRepository()
    signal = repo.create(symbol="AAPL", signal_type="sell", cms_score=-0.7)
    assert repo.get_by_id(signal.id).signal_type == "sell"
    assert repo.get(signal.id).cms_score == -0.7
    assert repo.get_by_id(signal.id + 1) is None
    with pytest.raises(NotFoundError) as info:
        repo.get(signal.id + 1)
    assert isinstance(info.value, QueryError)
    assert "TradingSignal" in str(info.value) and str(signal.id + 1) in str(info.value)


@pytest.mark.parametrize("bad_id", [0, -1, "1", 1.0, True, None])
def test_bad_ids_are_refused(db, bad_id):
    repo = PriceRepository()
    for call in (repo.get_by_id, repo.get, repo.delete, lambda i: repo.update(i, volume=1)):
        with pytest.raises(DataValidationError, match="id"):
            call(bad_id)


# -- list: keyset pagination and filters -------------------------------------------

def test_list_pages_through_every_row_once_in_id_order(db):
    repo = PriceRepository()
    created = [repo.create(**bar(n)).id for n in range(25)]
    pages, after = [], None
    for _ in range(5):  # bounded: a cursor that does not advance must fail, not hang
        page = repo.list(limit=10, after_id=after)
        if not page:
            break
        pages.append([p.id for p in page])
        after = page[-1].id
    assert [len(p) for p in pages] == [10, 10, 5]
    ids = [i for page in pages for i in page]
    assert ids == sorted(created)
    assert len(set(ids)) == 25


def test_list_pagination_is_keyset_not_offset(db):
    # Rows deleted before the cursor must not shift the next page.
    repo = PriceRepository()
    ids = [repo.create(**bar(n)).id for n in range(6)]
    first = repo.list(limit=3)
    repo.delete(ids[0])
    second = repo.list(limit=3, after_id=first[-1].id)
    assert [p.id for p in second] == ids[3:]


def test_list_filters(db):
    repo = PriceRepository()
    for n in range(5):
        repo.create(**bar(n, "AAPL"))
    for n in range(3):
        repo.create(**bar(n, "MSFT", interval="1d"))
    assert {p.symbol for p in repo.list(symbol="MSFT")} == {"MSFT"}
    assert len(repo.list(symbol="MSFT")) == 3
    assert len(repo.list(symbol="AAPL", interval="1m", limit=2)) == 2
    assert repo.list(symbol="AAPL", interval="1d") == []
    events = EventRepository()
    events.create(event_type="a", severity=1)
    article = ArticleRepository().create(title="t")
    events.create(event_type="b", severity=2, article=article)
    assert [e.event_type for e in events.list(article=None)] == ["a"]


@pytest.mark.parametrize("kwargs, field", [
    ({"limit": 0}, "limit"), ({"limit": 10_001}, "limit"), ({"limit": "5"}, "limit"),
    ({"after_id": 0}, "after_id"), ({"colour": "red"}, "colour"),
])
def test_list_refuses_bad_arguments(db, kwargs, field):
    with pytest.raises(DataValidationError) as info:
        PriceRepository().list(**kwargs)
    assert info.value.field == field


# -- update ------------------------------------------------------------------------

def test_update_changes_fields_and_returns_the_row(db, raw):
    repo = PriceRepository()
    price = repo.create(**bar(1))
    updated = repo.update(price.id, high=Decimal("15"), close=Decimal("14.5"))
    assert (updated.high, updated.close, updated.low) == (Decimal("15"), Decimal("14.5"), Decimal("9"))
    stored = raw_row(raw, "prices", price.id)
    assert (stored["high"], stored["close"]) == (Decimal("15"), Decimal("14.5"))


@pytest.mark.parametrize("changes, field", [
    ({"high": Decimal("8")}, "high"),  # below the stored low of 9
    ({"low": Decimal("11.5")}, "open"),  # above the stored open of 10
    ({"close": Decimal("20")}, "close"),  # above the stored high of 12
    ({"volume": Decimal("-1")}, "volume"),
    ({"symbol": None}, "symbol"),
    ({"colour": "red"}, "colour"),
])
def test_update_is_validated_against_the_merged_row(db, raw, changes, field):
    repo = PriceRepository()
    price = repo.create(**bar(1))
    before = raw_row(raw, "prices", price.id)
    with pytest.raises(DataValidationError) as info:
        repo.update(price.id, **changes)
    assert info.value.field == field
    assert raw_row(raw, "prices", price.id) == before


def test_update_of_a_missing_row_is_not_found(db):
    with pytest.raises(NotFoundError):
        OrderRepository().update(12345, status="submitted")


def test_update_with_no_changes_returns_the_row(db):
    repo = OrderRepository()
    placed = repo.create(**order(1))
    assert repo.update(placed.id).order_id == "o-1"


def test_update_market_order_to_limit_needs_a_price(db, raw):
    repo = OrderRepository()
    placed = repo.create(**order(1, order_type="market", price=None))
    with pytest.raises(DataValidationError) as info:
        repo.update(placed.id, order_type="limit")
    assert info.value.field == "price"
    assert raw_row(raw, "orders", placed.id)["order_type"] == "market"


# -- delete, count, exists ------------------------------------------------------------

def test_delete_count_exists(db, raw):
    repo = PriceRepository()
    ids = [repo.create(**bar(n, "AAPL" if n % 2 else "MSFT")).id for n in range(6)]
    assert repo.count() == 6
    assert repo.count(symbol="AAPL") == 3
    assert repo.exists(symbol="MSFT") is True
    assert repo.exists(symbol="TSLA") is False
    assert repo.delete(ids[0]) is True
    assert repo.delete(ids[0]) is False
    assert count_rows(raw, "prices") == 5
    assert repo.count(symbol="MSFT") == 2


def test_delete_article_cascades_to_scores_and_nulls_events(db, raw):
    article = ArticleRepository().create(title="t")
    SentimentScoreRepository().create(article=article, score=0.1, confidence=0.5, model="m")
    event = EventRepository().create(event_type="e", severity=2, article=article)
    assert ArticleRepository().delete(article.id) is True
    assert count_rows(raw, "sentiment_scores") == 0
    assert EventRepository().get(event.id).article_id is None


def test_delete_order_with_history_is_refused(db, raw):
    placed = OrderRepository().create(**order(1))
    with get_db_session():
        OrderEvent.create(order=placed.id, from_status=None, to_status="pending")
    with pytest.raises(IntegrityViolation):
        OrderRepository().delete(placed.id)
    assert count_rows(raw, "orders") == 1


# -- bulk_create -------------------------------------------------------------------------

def test_bulk_create_inserts_all_rows_in_batches(db, raw, inserts):
    written = PriceRepository().bulk_create((bar(n) for n in range(2500)), batch_size=1000)
    assert written == 2500
    assert count_rows(raw, "prices") == 2500
    assert inserts() == 3


def test_bulk_create_with_rows_setting_different_fields(db, raw):
    # One row relies on the default interval: its column list differs from the rest.
    rows = [bar(0)] + [bar(n, interval="1m") for n in range(1, 5)] + [bar(n, interval="1d") for n in range(5)]
    assert PriceRepository().bulk_create(rows) == 10
    with raw.cursor() as cur:
        cur.execute("SELECT interval, count(*) FROM prices GROUP BY interval")
        assert dict(cur.fetchall()) == {"1m": 5, "1d": 5}


def test_bulk_create_of_nothing(db, inserts):
    assert PriceRepository().bulk_create([]) == 0
    assert inserts() == 0


def test_bulk_create_with_one_bad_row_writes_nothing(db, raw, inserts):
    rows = [bar(n) for n in range(2500)]
    rows[1699]["high"] = Decimal("1")  # row 1,700: high below low
    with pytest.raises(DataValidationError) as info:
        PriceRepository().bulk_create(rows)
    assert "row 1700" in str(info.value)
    assert "high" in str(info.value)
    assert inserts() == 0
    assert count_rows(raw, "prices") == 0


def test_bulk_create_database_failure_in_a_late_batch_writes_nothing(db, raw, inserts):
    rows = [bar(n) for n in range(2500)]
    rows[2200] = bar(0)  # duplicates row 1's unique key, in the 3rd batch
    with pytest.raises(IntegrityViolation):
        PriceRepository().bulk_create(rows, batch_size=1000)
    # The first two batches really were sent, and then rolled back.
    assert inserts() == 3
    assert count_rows(raw, "prices") == 0


def test_bulk_create_joins_an_outer_session(db, raw):
    with pytest.raises(RuntimeError):
        with get_db_session():
            PriceRepository().bulk_create([bar(n) for n in range(10)])
            raise RuntimeError("caller changes its mind")
    assert count_rows(raw, "prices") == 0


@pytest.mark.parametrize("batch_size", [0, -1, "10", 10_001])
def test_bulk_create_refuses_bad_batch_size(db, batch_size):
    with pytest.raises(DataValidationError, match="batch_size"):
        PriceRepository().bulk_create([bar(1)], batch_size=batch_size)


# -- several models through the same generic code ------------------------------------

def _article(n):
    return {"title": f"t{n}", "url": f"https://news/{n}", "symbols": ["AAPL"], "metadata": {"n": n}}


CRUD_CASES = [
    (PriceRepository, lambda n: bar(n), {"volume": Decimal("5")}, "prices"),
    (ArticleRepository, _article, {"title": "changed"}, "articles"),
    (EventRepository, lambda n: {"event_type": f"e{n}", "severity": 1 + n % 5, "details": {"n": n}},
     {"severity": 5}, "events"),
    (TradingSignalRepository, lambda n: {"symbol": "AAPL", "signal_type": "hold", "cms_score": 0},
     {"signal_type": "buy"}, "trading_signals"),
    (OrderRepository, lambda n: order(n), {"status": "submitted"}, "orders"),
]


@pytest.mark.parametrize("repo_class, make, change, table", CRUD_CASES, ids=[c[3] for c in CRUD_CASES])
def test_crud_round_trip(db, raw, repo_class, make, change, table):
    repo = repo_class()
    assert isinstance(repo, BaseRepository)
    rows = [repo.create(**make(n)) for n in range(3)]
    assert repo.count() == 3 and count_rows(raw, table) == 3
    target = rows[1].id
    updated = repo.update(target, **change)
    for field, value in change.items():
        assert getattr(updated, field) == value
        assert getattr(repo.get(target), field) == value
        assert raw_row(raw, table, target)[field] == value
    assert [r.id for r in repo.list()] == [r.id for r in rows]
    assert repo.delete(target) is True
    assert repo.get_by_id(target) is None
    assert count_rows(raw, table) == 2


def test_repository_calls_in_one_session_are_atomic(db, raw):
    with pytest.raises(IntegrityViolation):
        with get_db_session():
            OrderRepository().create(**order(1))
            PriceRepository().create(**bar(1))
            OrderRepository().create(**order(1))  # duplicate order_id
    assert count_rows(raw, "orders") == 0
    assert count_rows(raw, "prices") == 0


def test_bulk_create_names_the_row_and_the_bare_field(db):
    with pytest.raises(DataValidationError) as info:
        ArticleRepository().bulk_create([{"title": "a"}, {"title": "b", "symbols": "AAPL"}])
    assert (info.value.row, info.value.field) == (2, "symbols")

