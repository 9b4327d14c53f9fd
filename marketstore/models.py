"""The ORM layer: seven models plus the order audit trail, and their validation.

Every constraint is enforced twice. :meth:`BaseModel.validate` refuses bad input
in Python with a :class:`DataValidationError` naming field and value, before any
query; the CHECK/UNIQUE/FOREIGN KEY constraints declared here (and created by
the migrations) are the second line of defence for writers that bypass us.
"""
from __future__ import annotations

import datetime as dt
import decimal
import hashlib
import json
import re
from typing import Any, Mapping

from peewee import (
    SQL,
    BigAutoField,
    CharField,
    DecimalField,
    DoubleField,
    Field,
    ForeignKeyField,
    Model,
    SmallIntegerField,
    TextField,
)
from playhouse.postgres_ext import ArrayField, BinaryJSONField, DateTimeTZField, TSVectorField

from .database import database_proxy  # re-exported: the models' database
from .errors import DataValidationError
from .validation import (
    INTERVAL_PATTERN,
    MAX_TEXT_CHARS,
    SYMBOL_PATTERN,
    UTC,
    field_value,
)



SIGNAL_TYPES = ("buy", "sell", "hold")
ORDER_TYPES = ("market", "limit", "stop", "stop_limit")
ORDER_SIDES = ("buy", "sell")
ORDER_STATUSES = ("pending", "submitted", "partially_filled", "filled", "cancelled", "rejected")


def checked(field: Field, *, ge=None, gt=None, le=None, choices=None, pattern=None,
            max_length=None, server_default=False) -> Field:
    """Attach Python-side rules to ``field`` (read by :meth:`BaseModel.validate`)."""
    field.rules = {"ge": ge, "gt": gt, "le": le, "choices": choices,
                   "pattern": re.compile(pattern) if pattern else None,
                   "max_length": max_length}
    field.server_default = server_default
    return field


class UTCDateTimeField(DateTimeTZField):
    """``timestamptz``: naive datetimes are taken as UTC; reads are aware UTC."""

    def db_value(self, value):
        if isinstance(value, dt.datetime):
            value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
        return super().db_value(value)

    def python_value(self, value):
        if isinstance(value, dt.datetime):
            return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
        return value


class GeneratedTSVectorField(TSVectorField):
    """A ``tsvector GENERATED ALWAYS AS (...) STORED`` column: PostgreSQL computes it.

    A generated column accepts no value but ``DEFAULT``, so every write of this
    field sends ``DEFAULT``: saving a fetched instance keeps working, and the
    stored vector can never drift from the text it indexes.
    """

    def db_value(self, value):
        return SQL("DEFAULT")


def _server_now(**kwargs) -> UTCDateTimeField:
    return checked(UTCDateTimeField(constraints=[SQL("DEFAULT now()")], **kwargs), server_default=True)


def _money(**kwargs) -> DecimalField:
    # NUMERIC(24, 8): 16 integer digits, 8 decimals; never float.
    return DecimalField(max_digits=24, decimal_places=8, auto_round=False, **kwargs)


def _default(sql: str) -> list:
    # Database defaults too, so COPY and raw SQL writers get the same values.
    return [SQL(f"DEFAULT {sql}")]


def _text_array(index: bool = False) -> ArrayField:
    return ArrayField(TextField, default=list, index=index, constraints=_default("'{}'"))


def _document(default=None, index: bool = False) -> BinaryJSONField:
    if default is None:
        return BinaryJSONField(index=index)
    return BinaryJSONField(default=default, index=index, constraints=_default(f"'{json.dumps(default())}'"))


def _symbol(**kwargs) -> CharField:
    return checked(CharField(max_length=32, **kwargs), pattern=SYMBOL_PATTERN)


def _enum(values, **kwargs) -> CharField:
    return checked(CharField(max_length=16, **kwargs), choices=values)


def _in(column: str, values) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


def _check(table: str, name: str, condition: str) -> SQL:
    return SQL(f"CONSTRAINT {table}_{name} CHECK ({condition})")


def canonical_json(document: Any) -> str:
    """The canonical JSON text SPEC hashes: keys sorted, no whitespace."""
    return json.dumps(document, sort_keys=True, separators=(",", ":"))


def config_hash(config: Any) -> str:
    """sha256 hex of :func:`canonical_json` of ``config``."""
    return hashlib.sha256(canonical_json(config).encode()).hexdigest()


# -- validation (the checks themselves: marketstore.validation) ----------------
def _fail(field: str, value, expected: str):
    raise DataValidationError(field, value, expected)


class BaseModel(Model):
    """Abstract base: binds to :data:`database_proxy` and validates every write."""

    class Meta:
        database = database_proxy
        legacy_table_names = False

    @classmethod
    def validate(cls, data: Mapping[str, Any], *, partial: bool = False) -> dict:
        """Return ``data`` type-checked and normalised (Decimal, UTC datetimes...).

        ``partial`` (updates) skips the check for missing required fields.
        Raises :class:`DataValidationError` naming the first bad field and value.
        """
        if not isinstance(data, Mapping):
            _fail(cls.__name__, data, "a mapping of field names to values")
        fields = cls._meta.fields
        row: dict[str, Any] = {}
        for name, value in data.items():
            field = fields.get(name)
            if field is None:
                _fail(name, value, f"a field of {cls.__name__} ({', '.join(fields)})")
            if value is None:
                if not field.null and not field.primary_key:
                    _fail(name, value, "a value (the field is required)")
                row[name] = None
            else:
                row[name] = field_value(name, field, value)
        # Before the required-field check: check_row may derive fields (config_hash).
        cls.check_row(row, partial=partial)
        if not partial:
            for name, field in fields.items():
                if (name not in row and not field.null and not field.primary_key
                        and field.default is None and not getattr(field, "server_default", False)):
                    _fail(name, None, "a value (the field is required)")
        return row

    @classmethod
    def check_row(cls, row: dict, partial: bool = False) -> None:
        """Cross-field rules on normalised values; with ``partial``, fields may be absent."""

    def save(self, *args, **kwargs):
        self.__data__.update(type(self).validate(self.__data__, partial=self._pk is not None))
        return super().save(*args, **kwargs)


class Price(BaseModel):
    """One OHLCV bar of ``symbol`` at ``timestamp`` for bar ``interval``."""

    id = BigAutoField()  # bars run into billions of rows
    symbol = _symbol()
    timestamp = UTCDateTimeField()
    open = checked(_money(), gt=0)
    high = checked(_money(), gt=0)
    low = checked(_money(), gt=0)
    close = checked(_money(), gt=0)
    volume = checked(DecimalField(max_digits=28, decimal_places=8, auto_round=False), ge=0)
    interval = checked(CharField(max_length=8, default="1m", constraints=_default("'1m'")),
                       pattern=INTERVAL_PATTERN)

    class Meta:
        table_name = "prices"
        indexes = ((("symbol", "interval", "timestamp"), True),)
        constraints = [
            _check("prices", "ohlc_check",
                   "low > 0 AND low <= open AND low <= close AND open <= high AND close <= high"),
            _check("prices", "volume_check", "volume >= 0"),
            # Migration 003: NaN passes the checks above (it sorts above every number);
            # the patterns hold rows that COPY streams straight to the server.
            _check("prices", "nan_check", "high <> 'NaN' AND volume <> 'NaN'"),
            _check("prices", "symbol_check", r"symbol ~ '^[A-Za-z0-9.^][A-Za-z0-9._\-/=^:]*$'"),
            # Migration 004: at most four digits, as INTERVAL_PATTERN; the years a Python
            # datetime holds (no 'infinity'), so every stored bar can be read.
            _check("prices", "interval_check",
                   "\"interval\" ~ '^[1-9][0-9]*(s|m|h|d|w|mo)$' AND length(rtrim(\"interval\", 'smhdwo')) <= 4"),
            _check("prices", "timestamp_check",
                   "\"timestamp\" >= '0001-01-01 00:00:00+00' AND \"timestamp\" < '10000-01-01 00:00:00+00'"),
        ]

    @classmethod
    def check_row(cls, row, partial=False):
        low, high = row.get("low"), row.get("high")
        if low is not None and high is not None and high < low:
            _fail("high", high, f"high >= low ({low})")
        for name in ("open", "close"):
            value = row.get(name)
            if value is not None and low is not None and value < low:
                _fail(name, value, f"{name} >= low ({low})")
            if value is not None and high is not None and value > high:
                _fail(name, value, f"{name} <= high ({high})")


# Title weighted A, content B. Only the first 100,000 characters of content are
# indexed: a tsvector is capped at 1 MB, which a 1,000,000-character content of
# distinct words exceeds (the INSERT would fail); 100,000 stays far below it.
ARTICLE_SEARCH_VECTOR = (
    "GENERATED ALWAYS AS ("
    "setweight(to_tsvector('english'::regconfig, coalesce(title, '')), 'A') || "
    "setweight(to_tsvector('english'::regconfig, left(coalesce(content, ''), 100000)), 'B')"
    ") STORED"
)


class Article(BaseModel):
    """A news article; ``ingested_at`` (when we learnt of it) is set by the database."""

    title = checked(TextField(), max_length=1000)
    content = checked(TextField(null=True), max_length=MAX_TEXT_CHARS)
    source = CharField(max_length=128, null=True)
    url = checked(TextField(null=True, unique=True), max_length=2048)
    published_at = UTCDateTimeField(null=True, index=True)
    ingested_at = _server_now()
    symbols = _text_array(index=True)  # GIN: for_symbol
    metadata = _document(default=dict)
    # Full-text search (ArticleRepository.search); created by migration 002_article_search.
    search_vector = GeneratedTSVectorField(null=True, index=True, constraints=[SQL(ARTICLE_SEARCH_VECTOR)])

    class Meta:
        table_name = "articles"


class SentimentScore(BaseModel):
    """A scorer's sentiment for one article, in [-1, 1]."""

    article = ForeignKeyField(Article, backref="sentiment_scores", on_delete="CASCADE", index=True)
    score = checked(DoubleField(), ge=-1, le=1)
    confidence = checked(DoubleField(), ge=0, le=1)
    keywords_positive = _text_array()
    keywords_negative = _text_array()
    model = checked(CharField(max_length=64), max_length=64)
    timestamp = _server_now(index=True)

    class Meta:
        table_name = "sentiment_scores"
        constraints = [
            _check("sentiment_scores", "score_check", "score BETWEEN -1 AND 1"),
            _check("sentiment_scores", "confidence_check", "confidence BETWEEN 0 AND 1"),
        ]


class Event(BaseModel):
    """A detected market event, optionally tied to the article it came from."""

    article = ForeignKeyField(Article, backref="events", null=True, on_delete="SET NULL", index=True)
    symbols = _text_array()
    event_type = CharField(max_length=64, index=True)
    severity = checked(SmallIntegerField(index=True), ge=1, le=5)
    keywords = _text_array()
    details = _document(default=dict)
    timestamp = _server_now(index=True)

    class Meta:
        table_name = "events"
        constraints = [_check("events", "severity_check", "severity BETWEEN 1 AND 5")]


class TradingSignal(BaseModel):
    """A buy/sell/hold signal with its composite market score and components."""

    symbol = _symbol()
    signal_type = _enum(SIGNAL_TYPES, index=True)
    cms_score = checked(DoubleField(), ge=-1, le=1)
    sentiment_component = DoubleField(null=True)
    technical_component = DoubleField(null=True)
    regime_component = DoubleField(null=True)
    explanation = _document(default=dict)
    timestamp = _server_now(index=True)

    class Meta:
        table_name = "trading_signals"
        indexes = ((("symbol", "timestamp"), False),)
        constraints = [
            _check("trading_signals", "signal_type_check", _in("signal_type", SIGNAL_TYPES)),
            _check("trading_signals", "cms_score_check", "cms_score BETWEEN -1 AND 1"),
        ]


class Order(BaseModel):
    """An order and its fill state; status moves only as the state machine allows."""

    order_id = CharField(max_length=64, unique=True)
    symbol = _symbol()
    order_type = _enum(ORDER_TYPES)
    side = _enum(ORDER_SIDES)
    quantity = checked(_money(), gt=0)
    price = checked(_money(null=True), gt=0)
    status = _enum(ORDER_STATUSES, default="pending", index=True, constraints=_default("'pending'"))
    signal = ForeignKeyField(TradingSignal, backref="orders", null=True, on_delete="SET NULL", index=True)
    filled_quantity = checked(_money(default=decimal.Decimal(0), constraints=_default("0")), ge=0)
    average_fill_price = checked(_money(null=True), gt=0)
    timestamp = _server_now(index=True)
    updated_at = _server_now()

    class Meta:
        table_name = "orders"
        constraints = [
            _check("orders", "order_type_check", _in("order_type", ORDER_TYPES)),
            _check("orders", "side_check", _in("side", ORDER_SIDES)),
            _check("orders", "status_check", _in("status", ORDER_STATUSES)),
            _check("orders", "quantity_check", "quantity > 0"),
            _check("orders", "price_check",
                   # Not "price > 0 OR (price IS NULL AND ...)": NULL OR FALSE is NULL, which a CHECK accepts.
                   "CASE WHEN price IS NULL THEN order_type = 'market' ELSE price > 0 END"),
            _check("orders", "fill_check", "filled_quantity >= 0 AND filled_quantity <= quantity"),
            _check("orders", "fill_price_check", "average_fill_price IS NULL OR average_fill_price > 0"),
            _check("orders", "nan_check", "quantity <> 'NaN' AND filled_quantity <> 'NaN' "
                                          "AND price <> 'NaN' AND average_fill_price <> 'NaN'"),
        ]

    @classmethod
    def check_row(cls, row, partial=False):
        # An insert that omits price has none; an update that omits it keeps the stored one.
        if (row.get("order_type") not in (None, "market") and row.get("price") is None
                and (not partial or "price" in row)):
            _fail("price", None, f"a price for a {row['order_type']} order")
        qty, filled = row.get("quantity"), row.get("filled_quantity")
        if qty is not None and filled is not None and filled > qty:
            _fail("filled_quantity", filled, f"at most quantity ({qty})")


class OrderEvent(BaseModel):
    """Append-only audit trail: one row per status move of an order.

    ``ON DELETE RESTRICT``: an order with history cannot be deleted silently.
    """

    order = ForeignKeyField(Order, backref="events", on_delete="RESTRICT", index=False)
    from_status = _enum(ORDER_STATUSES, null=True)
    to_status = _enum(ORDER_STATUSES)
    filled_quantity = checked(_money(null=True), ge=0)
    fill_price = checked(_money(null=True), gt=0)
    timestamp = _server_now()
    note = checked(TextField(null=True), max_length=10_000)

    class Meta:
        table_name = "order_events"
        indexes = ((("order", "timestamp"), False),)
        constraints = [
            _check("order_events", "to_status_check", _in("to_status", ORDER_STATUSES)),
            _check("order_events", "nan_check", "filled_quantity <> 'NaN' AND fill_price <> 'NaN'"),
        ]


class BacktestResult(BaseModel):
    """A stored backtest: its config (hashed for lookup), metrics, trades and equity curve."""

    name = checked(CharField(max_length=200), max_length=200)
    config = _document()
    config_hash = CharField(max_length=64, index=True)
    metrics = _document(default=dict, index=True)  # GIN: metric lookups
    trades = _document(default=list)
    equity_curve = _document(default=list)
    created_at = _server_now(index=True)

    class Meta:
        table_name = "backtest_results"
        constraints = [_check("backtest_results", "config_hash_check", "config_hash ~ '^[0-9a-f]{64}$'")]

    @classmethod
    def check_row(cls, row, partial=False):
        if "config" in row:
            try:
                expected = config_hash(row["config"])
            except TypeError as exc:  # sort_keys cannot order keys of mixed types: {1: .., "a": ..}
                _fail("config", row["config"], f"a document whose keys can be sorted ({exc})")
            if row.get("config_hash") not in (None, expected):
                _fail("config_hash", row["config_hash"], f"sha256 of the canonical config ({expected})")
            row["config_hash"] = expected
        elif "config_hash" in row and partial:  # an insert without config fails on config itself
            _fail("config_hash", row["config_hash"], "to be derived from config (pass config instead)")


MODELS = (Price, Article, SentimentScore, Event, TradingSignal, Order, OrderEvent, BacktestResult)
"""Every table, in dependency order (create forwards, drop backwards)."""
