"""The ORM layer: seven models plus the order audit trail, their value rules and validation.

Each model declares its value rules once, in ``Meta.rules`` (see
:mod:`marketstore.rules`): :meth:`BaseModel.validate` refuses bad input in
Python with a :class:`DataValidationError` naming field and value, before any
query, and the table's CHECK constraints -- derived from the same declarations
and created by the migrations -- hold every writer, COPY and raw SQL included.
"""
from __future__ import annotations

import decimal
import hashlib
import json
from typing import Any, Mapping

from peewee import SQL, BigAutoField, CharField, DecimalField, DoubleField, ForeignKeyField, Model, SmallIntegerField, TextField

from .database import database_proxy  # re-exported: the models' database
from .errors import DataValidationError
from .fields import (GeneratedTSVectorField, RuledMetadata, UTCDateTimeField, default_sql, document, enum_column,
                     money, server_now, symbol_column, text_array)
from .rules import (SYMBOL_PATTERN, AtMost, Bound, Choice, IntervalText, Length, Matches, NotNaN,
                    Ordered, RequiredUnless, Span, between)
from .intervals import interval as canonical_interval
from .validation import MAX_TEXT_CHARS, field_value

SIGNAL_TYPES = ("buy", "sell", "hold")
ORDER_TYPES = ("market", "limit", "stop", "stop_limit")
ORDER_SIDES = ("buy", "sell")
ORDER_STATUSES = ("pending", "submitted", "partially_filled", "filled", "cancelled", "rejected")


def _symbol_rule(field: str = "symbol") -> Matches:
    return Matches(field, SYMBOL_PATTERN)


def canonical_json(document: Any) -> str:
    """The canonical JSON text SPEC hashes: keys sorted, no whitespace."""
    return json.dumps(document, sort_keys=True, separators=(",", ":"))


def config_hash(config: Any) -> str:
    """sha256 hex of :func:`canonical_json` of ``config``."""
    return hashlib.sha256(canonical_json(config).encode()).hexdigest()


# -- validation (the type checks: marketstore.validation; the value rules: Meta.rules) ----------
def _fail(field: str, value, expected: str):
    raise DataValidationError(field, value, expected)


class BaseModel(Model):
    """Abstract base: binds to :data:`database_proxy` and validates every write.

    A model's value rules are declared once in ``Meta.rules`` (CHECK name ->
    rules, see :mod:`marketstore.rules`): the table's CHECK constraints,
    :meth:`validate`, the frame checks and the COPY paths all derive from them.
    """

    class Meta:
        database = database_proxy
        legacy_table_names = False
        model_metadata_class = RuledMetadata

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
        # Before the required-field check: derive() may fill fields in (config_hash).
        cls.derive(row, partial=partial)
        broken = cls._meta.rules.violation(row, partial)
        if broken is not None:
            # The value as given, not as normalised: 4e-9 is what the caller wrote, not 0E-8.
            raise DataValidationError(broken.field, data.get(broken.field, broken.value), broken.expected)
        if not partial:
            for name, field in fields.items():
                if (name not in row and not field.null and not field.primary_key
                        and field.default is None and not getattr(field, "server_default", False)):
                    _fail(name, None, "a value (the field is required)")
        return row

    @classmethod
    def derive(cls, row: dict, partial: bool = False) -> None:
        """Fill in fields computed from others (before the rules are judged)."""

    def save(self, *args, **kwargs):
        self.__data__.update(type(self).validate(self.__data__, partial=self._pk is not None))
        return super().save(*args, **kwargs)


class Price(BaseModel):
    """One OHLCV bar of ``symbol`` at ``timestamp`` for bar ``interval``."""

    id = BigAutoField()  # bars run into billions of rows
    symbol = symbol_column()
    timestamp = UTCDateTimeField()
    open = money()
    high = money()
    low = money()
    close = money()
    volume = DecimalField(max_digits=28, decimal_places=8, auto_round=False)
    interval = CharField(max_length=8, default="1m", constraints=default_sql("'1m'"))
    adj_close = money(null=True)  # a vendor's adjusted close (splits, dividends), when it gives one

    class Meta:
        table_name = "prices"
        indexes = ((("symbol", "interval", "timestamp"), True),)
        rules = {
            "ohlc_check": tuple(Bound(name, ">", 0) for name in ("open", "high", "low", "close"))
            + (Ordered("low", ("open", "close"), "high"),),
            "volume_check": (Bound("volume", ">=", 0),),
            # NaN passes the checks above (it sorts above every number); a finite high bounds the others.
            "nan_check": (NotNaN("high", "volume"),),
            # COPY streams rows straight to the server: these hold them as validation holds a row.
            "symbol_check": (_symbol_rule(),),
            "interval_check": (IntervalText("interval"),),
            # The years a Python datetime holds (no 'infinity'), so every stored bar can be read.
            "timestamp_check": (Span("timestamp"),),
            "adj_close_check": (Bound("adj_close", ">", 0), NotNaN("adj_close")),
        }

    @classmethod
    def derive(cls, row, partial=False):
        if isinstance(row.get("interval"), str):  # one grammar: '1D', '1 day' and '1d' are one interval
            row["interval"] = canonical_interval(row["interval"])


PRICE_COLUMNS = ("symbol", "timestamp", "open", "high", "low", "close", "volume", "interval")
"""The columns of a price row as given by position (``interval`` optional)."""
PRICE_INPUT_COLUMNS = PRICE_COLUMNS + ("adj_close",)
"""Every column a price row may have by name: rows, CSV headers, frames."""


def price_column(name) -> str | None:
    """The price column a vendor's column name means, in any case (``Adj Close`` -> ``adj_close``), or ``None``."""
    if not isinstance(name, str):
        return None
    canonical = "_".join(name.strip().lower().replace("_", " ").split())
    return canonical if canonical in PRICE_INPUT_COLUMNS else None


def validate_price_row(data, interval: str | None = Price.interval.default) -> dict:
    """One input row of prices (a mapping, or a sequence in :data:`PRICE_COLUMNS` order), validated.

    A row without an interval gets ``interval`` (``None``: left out, to be
    inferred from the bars' spacing). Every bulk path (rows, CSV, frames)
    asks this for the verdict on a row it doubts or the server refused, so a
    row gets one verdict whichever path carries it. ``DataValidationError``
    names the bare field (``row`` for a row of the wrong shape).
    """
    if isinstance(data, Mapping):
        row = dict(data)
    elif isinstance(data, (list, tuple)) and len(data) in (len(PRICE_COLUMNS) - 1, len(PRICE_COLUMNS)):
        row = dict(zip(PRICE_COLUMNS, data))
    else:
        raise DataValidationError("row", data, f"a mapping or a sequence of {', '.join(PRICE_COLUMNS)} "
                                               "(interval optional)")
    for name in row:
        if name not in PRICE_INPUT_COLUMNS:
            raise DataValidationError(name, row[name], f"one of the columns {', '.join(PRICE_INPUT_COLUMNS)}")
    if isinstance(row.get("interval"), str):
        row["interval"] = canonical_interval(row["interval"])
    adjusted = row.get("adj_close")
    if adjusted is not None and not isinstance(adjusted, str) and adjusted != adjusted:
        row["adj_close"] = None  # NaN: the vendor has no adjusted close for that bar
    if row.get("interval") is None and interval is not None:
        row["interval"] = interval
    if row.get("interval") is None:
        row.pop("interval", None)
    return Price.validate(row)


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

    title = TextField()
    content = TextField(null=True)
    source = CharField(max_length=128, null=True)
    url = TextField(null=True, unique=True)
    published_at = UTCDateTimeField(null=True, index=True)
    ingested_at = server_now()
    symbols = text_array(index=True)  # GIN: for_symbol
    metadata = document(default=dict)
    # Full-text search (ArticleRepository.search): a generated column PostgreSQL keeps in step with the text.
    search_vector = GeneratedTSVectorField(null=True, index=True, constraints=[SQL(ARTICLE_SEARCH_VECTOR)])

    class Meta:
        table_name = "articles"
        rules = {
            "title_length": (Length("title", 1000),),
            "content_length": (Length("content", MAX_TEXT_CHARS),),
            "url_length": (Length("url", 2048),),
        }


class SentimentScore(BaseModel):
    """A scorer's sentiment for one article, in [-1, 1]."""

    article = ForeignKeyField(Article, backref="sentiment_scores", on_delete="CASCADE", index=True)
    score = DoubleField()
    confidence = DoubleField()
    keywords_positive = text_array()
    keywords_negative = text_array()
    model = CharField(max_length=64)
    timestamp = server_now(index=True)

    class Meta:
        table_name = "sentiment_scores"
        rules = {
            "score_check": between("score", -1, 1),
            "confidence_check": between("confidence", 0, 1),
        }


class Event(BaseModel):
    """A detected market event, optionally tied to the article it came from."""

    article = ForeignKeyField(Article, backref="events", null=True, on_delete="SET NULL", index=True)
    symbols = text_array()
    event_type = CharField(max_length=64, index=True)
    severity = SmallIntegerField(index=True)
    keywords = text_array()
    details = document(default=dict)
    timestamp = server_now(index=True)

    class Meta:
        table_name = "events"
        rules = {"severity_check": between("severity", 1, 5)}


class TradingSignal(BaseModel):
    """A buy/sell/hold signal with its composite market score and components."""

    symbol = symbol_column()
    signal_type = enum_column(index=True)
    cms_score = DoubleField()
    sentiment_component = DoubleField(null=True)
    technical_component = DoubleField(null=True)
    regime_component = DoubleField(null=True)
    explanation = document(default=dict)
    timestamp = server_now(index=True)

    class Meta:
        table_name = "trading_signals"
        indexes = ((("symbol", "timestamp"), False),)
        rules = {
            "signal_type_check": (Choice("signal_type", SIGNAL_TYPES),),
            "cms_score_check": between("cms_score", -1, 1),
            "symbol_check": (_symbol_rule(),),
        }


class Order(BaseModel):
    """An order and its fill state; status moves only as the state machine allows."""

    order_id = CharField(max_length=64, unique=True)
    symbol = symbol_column()
    order_type = enum_column()
    side = enum_column()
    quantity = money()
    price = money(null=True)
    status = enum_column(default="pending", index=True, constraints=default_sql("'pending'"))
    signal = ForeignKeyField(TradingSignal, backref="orders", null=True, on_delete="SET NULL", index=True)
    filled_quantity = money(default=decimal.Decimal(0), constraints=default_sql("0"))
    average_fill_price = money(null=True)
    timestamp = server_now(index=True)
    updated_at = server_now()

    class Meta:
        table_name = "orders"
        rules = {
            "order_type_check": (Choice("order_type", ORDER_TYPES),),
            "side_check": (Choice("side", ORDER_SIDES),),
            "status_check": (Choice("status", ORDER_STATUSES),),
            "symbol_check": (_symbol_rule(),),
            "quantity_check": (Bound("quantity", ">", 0),),
            "price_check": (RequiredUnless("price", "order_type", "market"), Bound("price", ">", 0)),
            "fill_check": (Bound("filled_quantity", ">=", 0), AtMost("filled_quantity", "quantity")),
            "fill_price_check": (Bound("average_fill_price", ">", 0),),
            "nan_check": (NotNaN("quantity", "filled_quantity", "price", "average_fill_price"),),
        }


class OrderEvent(BaseModel):
    """Append-only audit trail: one row per status move of an order.

    ``ON DELETE RESTRICT``: an order with history cannot be deleted silently.
    """

    order = ForeignKeyField(Order, backref="events", on_delete="RESTRICT", index=False)
    from_status = enum_column(null=True)
    to_status = enum_column()
    filled_quantity = money(null=True)
    fill_price = money(null=True)
    timestamp = server_now()
    note = TextField(null=True)

    class Meta:
        table_name = "order_events"
        indexes = ((("order", "timestamp"), False),)
        rules = {
            "from_status_check": (Choice("from_status", ORDER_STATUSES),),
            "to_status_check": (Choice("to_status", ORDER_STATUSES),),
            "fill_check": (Bound("filled_quantity", ">=", 0), Bound("fill_price", ">", 0)),
            "nan_check": (NotNaN("filled_quantity", "fill_price"),),
            "note_length": (Length("note", 10_000),),
        }


class BacktestResult(BaseModel):
    """A stored backtest: its config (hashed for lookup), metrics, trades and equity curve."""

    name = CharField(max_length=200)
    config = document()
    config_hash = CharField(max_length=64, index=True)
    metrics = document(default=dict, index=True)  # GIN: metric lookups
    trades = document(default=list)
    equity_curve = document(default=list)
    created_at = server_now(index=True)

    class Meta:
        table_name = "backtest_results"
        rules = {"config_hash_check": (Matches("config_hash", "[0-9a-f]{64}"),)}

    @classmethod
    def derive(cls, row, partial=False):
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
