"""Hostile and bad input: every repository write method, arbitrary arguments.

The property (hypothesis): whatever the arguments - wrong types, NaN, huge
numbers, huge strings, NUL bytes, lone surrogates, naive and far-future
datetimes, nested non-JSON objects - a write method either succeeds or raises
``DataValidationError`` / ``IntegrityViolation`` (``NotFoundError`` only when
the row it targets really does not exist), never a raw psycopg2/peewee error or
a stray Python one, and a call that failed changed nothing (every table's
content digest, read on a separate connection, is unchanged) and returned its
connection. Valid rows are the starting point, with a few fields made hostile,
so most examples get past the first check and reach the server.

Also: injection through every string parameter, including the JSONB metric
name and full-text query syntax, and the stated size limits.
"""
from __future__ import annotations

import datetime as dt
import decimal
import fractions
import itertools
import math
import os
import uuid
from dataclasses import dataclass
from typing import Callable
from decimal import Decimal

import peewee
import pytest
from peewee import SQL
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
    EventRepository,
    IntegrityViolation,
    NotFoundError,
    Order,
    OrderEvent,
    OrderRepository,
    Price,
    PriceRepository,
    QueryError,
    SentimentScore,
    SentimentScoreRepository,
    TradingSignal,
    TradingSignalRepository,
)
from marketstore.models import config_hash
from marketstore.validation import MAX_JSON_BYTES, MAX_TEXT_CHARS

from helpers import REPOSITORIES, UTC
from reliability_helpers import count_rows, pgcodes, query, snapshot

_unique = itertools.count(1)




# -- valid rows (unique on every call), then made hostile --------------------------------

def valid_row(model, seeds: dict) -> dict:
    n = next(_unique)
    ts = dt.datetime(2024, 1, 1, tzinfo=UTC) + dt.timedelta(minutes=n)
    return {
        Price: lambda: dict(symbol="HOST", timestamp=ts, open=Decimal("10"), high=Decimal("12"), low=Decimal("9"),
                            close=Decimal("11"), volume=Decimal("100"), interval="1m"),
        Article: lambda: dict(title=f"title {n}", content="body", source="wire", url=f"https://h/{n}",
                              published_at=ts, symbols=["AAPL"], metadata={"n": n}),
        SentimentScore: lambda: dict(article=seeds["article"], score=0.5, confidence=0.9, keywords_positive=["up"],
                                     keywords_negative=[], model="finbert"),
        Event: lambda: dict(article=seeds["article"], symbols=["AAPL"], event_type="earnings", severity=3,
                            keywords=["beat"], details={"n": n}),
        TradingSignal: lambda: dict(symbol="AAPL", signal_type="buy", cms_score=0.4, sentiment_component=0.1,
                                    technical_component=0.2, regime_component=None, explanation={"n": n}),
        Order: lambda: dict(order_id=f"h-{n}", symbol="AAPL", order_type="limit", side="buy",
                            quantity=Decimal("10"), price=Decimal("100"), signal=seeds["signal"]),
        OrderEvent: lambda: dict(order=seeds["order"], from_status="pending", to_status="submitted", note="n"),
        # config_hash given: deriving it when absent is tests/test_models.py's concern.
        BacktestResult: lambda: dict(name=f"run {n}", config={"n": n}, config_hash=config_hash({"n": n}),
                                     metrics={"sharpe": 1.0}, trades=[], equity_curve=[1, 2]),
    }[model]()


class Opaque:
    def __repr__(self):
        return "<Opaque>"


class Deep(list):
    """A list nested ``depth`` deep; its repr stays short (reports print it)."""

    def __init__(self, depth: int):
        super().__init__()
        inner: list = []
        for _ in range(depth - 1):
            inner = [inner]
        self.append(inner)
        self.depth = depth

    def __repr__(self):
        return f"Deep({self.depth})"


def deep(depth: int):
    return Deep(depth)


def cyclic():
    value: list = []
    value.append(value)
    return value


NASTY_STRINGS = [
    "", " ", "\x00", "a\x00b", "\ud800", "\udc00", "x\udfffy", "\ud83d\ude00", "'; DROP TABLE prices; --",
    "\\", "%s", "%(x)s", "{}", "$1", "\u202e", "🙂" * 40, "NaN", "Infinity", "-1", "1e400", "1e-400",
    "0.000000001", "9" * 30, "1_000", "  12  ", "sNaN", "1E-1001", "2024-01-01", "2024-01-01T00:00:00Z",
    "9999-12-31T23:59:59-05:00", "0001-01-01T00:00:00+05:00", "9999-12-31T23:59:59.999999",
    "x" * 2049, "x" * (MAX_TEXT_CHARS + 1),
]
NASTY_NUMBERS = [
    0, -1, 2 ** 31, -(2 ** 31) - 1, 2 ** 63, -(2 ** 63) - 1, 10 ** 20, 10 ** 400, 10 ** 5000,
    1e308, -1e308, 1e-320, math.nan, math.inf, -math.inf, -0.0,
    Decimal("NaN"), Decimal("sNaN"), Decimal("Infinity"), Decimal("1E+400"), Decimal("1E-400"), Decimal("1E-1001"),
    Decimal("0." + "1" * 20000), Decimal("-0"), 1 + 2j, fractions.Fraction(1, 3),
]
NASTY_DATETIMES = [
    dt.datetime.max, dt.datetime.min, dt.datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC),
    dt.datetime.max.replace(tzinfo=dt.timezone(dt.timedelta(hours=-5))),
    dt.datetime.min.replace(tzinfo=dt.timezone(dt.timedelta(hours=5))),
    dt.datetime(1, 1, 1), dt.datetime(2024, 3, 10, 2, 30), dt.date(2024, 1, 1), dt.time(12, 0),
    dt.timedelta(days=1),
]
NASTY_OBJECTS = [
    None, True, False, b"bytes", bytearray(b"x"), object(), Opaque(), {1, 2}, frozenset(), (1, 2), [1, [2]],
    {"a": {1, 2}}, {"k": Decimal("1")}, {"k": math.nan}, {"k": b"x"}, {("t",): 1}, {"\x00": 1}, {"k": "\x00"},
    {"k": "\udc00"}, {"\ud800": 1}, ["\ud800"], deep(5000), deep(900), cyclic(), {"k": 10 ** 5000},
    {"k": [1e308, -1e308]}, uuid.uuid4(), Article, print,
    {"big": "x" * (MAX_JSON_BYTES + 1)}, ["a"] * 3, ["a", 1], [None], ["x" * 300], [["nested"]],
]

fixed_offsets = st.builds(dt.timezone, st.timedeltas(min_value=-dt.timedelta(hours=23, minutes=59),
                                                     max_value=dt.timedelta(hours=23, minutes=59)))
any_text = st.text(st.characters(), max_size=40)  # includes NUL and lone surrogates
json_leaves = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), any_text, st.binary(max_size=4),
                        st.decimals(), st.sampled_from([object(), {1}, Opaque()]))
nested = st.recursive(json_leaves, lambda kids: st.one_of(
    st.lists(kids, max_size=4),
    st.dictionaries(st.one_of(any_text, st.integers(), st.floats(), st.booleans(), st.none()), kids, max_size=4)),
    max_leaves=12)

hostile = st.one_of(
    st.sampled_from(NASTY_STRINGS), st.sampled_from(NASTY_NUMBERS), st.sampled_from(NASTY_DATETIMES),
    st.sampled_from(NASTY_OBJECTS), any_text, st.integers(), st.floats(), st.decimals(),
    st.datetimes(min_value=dt.datetime(1, 1, 2), max_value=dt.datetime(9999, 12, 30)),
    st.datetimes(min_value=dt.datetime(1, 1, 2), max_value=dt.datetime(9999, 12, 30), timezones=fixed_offsets),
    st.lists(any_text, max_size=4), nested,
)


@st.composite
def hostile_row(draw, model, seeds):
    """A valid row of ``model`` with 1-3 fields (or unknown names) replaced by hostile values."""
    row = valid_row(model, seeds)
    names = list(model._meta.fields) + ["no_such_field", "id", "__class__"]
    for name in draw(st.lists(st.sampled_from(names), min_size=1, max_size=3, unique=True)):
        if draw(st.booleans()) and name in row and name != "id":
            del row[name]
        else:
            row[name] = draw(hostile)
    return row


def rows_argument(model, seeds):
    """What a bulk method may be handed: lists of valid and hostile rows, or not a list at all."""
    def valid():
        return st.builds(lambda: valid_row(model, seeds))

    def as_sequence(row):
        return tuple(row.get(c) for c in ("symbol", "timestamp", "open", "high", "low", "close", "volume", "interval"))

    rows = st.lists(st.one_of(valid(), hostile_row(model, seeds)), min_size=0, max_size=4)
    if model is Price:  # copy_from also takes sequences in PRICE_COLUMNS order
        rows = st.one_of(rows, st.lists(st.one_of(valid(), hostile_row(model, seeds)).map(as_sequence), max_size=3))
    duplicate = valid().map(lambda row: [row, dict(row)])  # same unique key twice in one call
    return st.one_of(rows, duplicate, hostile)


# -- known bugs: each a strict xfail until fixed at its root ------------------------------

def _raised_in(exc: BaseException) -> tuple[str, str] | None:
    """(file, function) of the innermost marketstore frame the exception passed through."""
    found, tb = None, exc.__traceback__
    while tb is not None:
        code = tb.tb_frame.f_code
        if f"{os.sep}marketstore{os.sep}" in code.co_filename:
            found = (os.path.basename(code.co_filename), code.co_name)
        tb = tb.tb_next
    return found


def _query_error(code: str, text: str):
    return lambda exc: isinstance(exc, QueryError) and code in pgcodes(exc) and text in str(exc)


@dataclass(frozen=True)
class Bug:
    key: str
    reason: str  # root cause, shown by the xfail
    raises: type  # what the buggy code raises today
    matches: Callable[[BaseException], bool]  # the signature the property tolerates
    reproduce: Callable[[dict], object]  # one deterministic call that shows it
    refused: bool = True  # fixed means: refused with DataValidationError (else: the call succeeds)
    fixed: bool = True  # a new bug goes in with fixed=False (a strict xfail) until its fix lands


def _row(model, seeds, **changes):
    return {**valid_row(model, seeds), **changes}


BEYOND_UTC = dt.datetime.max.replace(tzinfo=dt.timezone(-dt.timedelta(hours=5)))

KNOWN_BUGS = [
    Bug("repr-of-a-huge-int",
        "errors._short: repr(value) raises ValueError for an int over 4300 digits, so building the "
        "DataValidationError itself fails and a raw ValueError escapes",
        ValueError, lambda e: isinstance(e, ValueError) and _raised_in(e) == ("errors.py", "_short"),
        lambda seeds: EventRepository().create(**_row(Event, seeds, severity=10 ** 5000))),
    Bug("decimal-field-huge-int",
        "models._number: str(value) of an int over 4300 digits raises ValueError before the range check",
        ValueError, lambda e: isinstance(e, ValueError) and _raised_in(e) == ("models.py", "_number"),
        lambda seeds: PriceRepository().create(**_row(Price, seeds, volume=10 ** 5000))),
    Bug("double-field-huge-int",
        "models._number: float(value) of an int beyond 1.8e308 raises OverflowError; only ValueError is caught",
        OverflowError, lambda e: isinstance(e, OverflowError) and _raised_in(e) == ("models.py", "_number"),
        lambda seeds: SentimentScoreRepository().create(**_row(SentimentScore, seeds, score=10 ** 400))),
    Bug("decimal-beyond-numeric-scale",
        "models._number: a Decimal is range-checked but not quantized to decimal_places, so one with "
        "more than 16383 fractional digits (1E-20000) reaches the server: 22003 'value overflows numeric "
        "format', a QueryError",
        QueryError, _query_error("22003", "value overflows numeric format"),
        # Rounded to the column's 8 places, as the server would, this low is 0: not > 0.
        lambda seeds: PriceRepository().create(**_row(Price, seeds, low=Decimal("1E-20000")))),
    Bug("foreign-key-beyond-integer",
        "models._coerce: a ForeignKeyField id is checked > 0 but not against the integer column's range, "
        "so article=2**31 reaches the server: 22003 'integer out of range', a QueryError",
        QueryError, _query_error("22003", "integer out of range"),
        lambda seeds: SentimentScoreRepository().create(**_row(SentimentScore, seeds, article=2 ** 31))),
    Bug("id-beyond-bigint",
        "repository._positive_int: ids have no upper bound, so update/delete/get_by_id(10**5000) hand "
        "psycopg2 an int it cannot print: raw ValueError",
        ValueError, lambda e: (isinstance(e, ValueError) and "integer string conversion" in str(e)
                               and _raised_in(e) is not None and _raised_in(e)[0] == "repository.py"),
        lambda seeds: PriceRepository().update(10 ** 5000, close=Decimal("11"))),
    Bug("aware-datetime-beyond-utc-range",
        "models._timestamp: value.astimezone(UTC) of datetime.max at UTC-5 (or datetime.min at UTC+5) "
        "overflows: raw OverflowError",
        OverflowError, lambda e: isinstance(e, OverflowError) and _raised_in(e) == ("models.py", "_timestamp"),
        lambda seeds: PriceRepository().create(**_row(Price, seeds, timestamp=BEYOND_UTC))),
    Bug("json-lone-low-surrogate",
        "models._json: the lone-surrogate regex only finds high surrogates (\\ud800-\\udbff) not followed "
        "by a low one; a lone low surrogate (\\udc00) reaches the server: 22P02 invalid json, a QueryError",
        QueryError, _query_error("22P02", "json"),
        lambda seeds: EventRepository().create(**_row(Event, seeds, details={"k": "\udc00"}))),
    Bug("json-nested-too-deep",
        "models._json: json.dumps of a document nested ~1000 deep raises RecursionError, which is not caught",
        RecursionError, lambda e: isinstance(e, RecursionError),
        lambda seeds: EventRepository().create(**_row(Event, seeds, details=deep(5000)))),
    Bug("bulk-rows-not-iterable",
        "repository.bulk_create: enumerate(rows) of a non-iterable (an int, None) raises TypeError",
        TypeError, lambda e: isinstance(e, TypeError) and _raised_in(e) == ("repository.py", "bulk_create"),
        lambda seeds: PriceRepository().bulk_create(5)),
    Bug("copy-from-unusable-path",
        "repositories.PriceRepository.copy_from: the path is checked with repositories._text (NUL refused), "
        "but a lone surrogate passes, and os.stat() then raises UnicodeEncodeError (a ValueError), neither "
        "the documented OSError nor a DataValidationError",
        ValueError, lambda e: isinstance(e, ValueError) and _raised_in(e) == ("repositories.py", "copy_from"),
        lambda seeds: PriceRepository().copy_from("prices\ud800.csv")),
    Bug("config-keys-not-sortable",
        "models.BacktestResult.check_row: config_hash() sorts the config's keys (json.dumps(sort_keys=True)); "
        "keys of mixed types ({1: .., 'a': ..}) pass _json() (which does not sort) and then raise TypeError",
        TypeError, lambda e: isinstance(e, TypeError) and _raised_in(e) == ("models.py", "canonical_json"),
        lambda seeds: BacktestResultRepository().create(name="mixed keys", config={1: "one", "a": "two"})),
    Bug("bulk-create-rows-from-a-query",
        "repository.bulk_create iterates (validates) rows before opening its session, so rows that come from "
        "the database - a peewee query, or a model class, which iterates its table - are fetched with no "
        "connection checked out: raw peewee.InterfaceError 'database connection not opened'",
        peewee.InterfaceError,
        lambda e: isinstance(e, peewee.InterfaceError) and _raised_in(e) == ("repository.py", "bulk_create"),
        lambda seeds: ArticleRepository().bulk_create(Article.select(Article.title, Article.symbols).dicts()),
        refused=False),
    Bug("copy-from-rows-from-a-query",
        "repositories.PriceRepository.copy_from: `((f'row {n}', data) for n, data in enumerate(rows, 1))` calls "
        "iter(rows) at once, before the session, so rows given as a query (or a model class) run it with no "
        "connection: raw peewee.InterfaceError. Read lazily inside the session instead, the query would run "
        "on the connection in the middle of its own COPY; so a query must be refused up front",
        peewee.InterfaceError,
        lambda e: isinstance(e, peewee.InterfaceError) and _raised_in(e) == ("repositories.py", "copy_from"),
        lambda seeds: PriceRepository().copy_from(
            Price.select(SQL("'COPIED'"), Price.timestamp, Price.open, Price.high, Price.low, Price.close,
                         Price.volume, Price.interval).tuples())),
]


def known_bug(exc: BaseException) -> Bug | None:
    return next((bug for bug in KNOWN_BUGS if not bug.fixed and bug.matches(exc)), None)


@pytest.mark.parametrize("bug", [
    pytest.param(bug, id=bug.key, marks=[] if bug.fixed else
                 pytest.mark.xfail(strict=True, raises=bug.raises, reason=bug.reason))
    for bug in KNOWN_BUGS])
def test_hostile_value_is_refused_with_data_validation_error(store, admin, seeds, bug):
    """Each known bug, reproduced. When one passes (XPASS, strict), set ``fixed=True`` on its entry:
    the property tests stop tolerating it, and this case stays as its regression test."""
    before = snapshot(admin)
    try:
        if bug.refused:
            with pytest.raises(DataValidationError):
                bug.reproduce(seeds)
        else:
            bug.reproduce(seeds)
            before = snapshot(admin)  # it wrote, as it should
    finally:
        assert snapshot(admin) == before, "even the failing call must not write"
        assert store.pool_status()["in_use"] == 0


# -- the property ----------------------------------------------------------------------

# 40 examples per method and model keeps the default run short; hunt harder with
# MARKETSTORE_HOSTILE_EXAMPLES=1000.
PROPERTY = settings(max_examples=int(os.environ.get("MARKETSTORE_HOSTILE_EXAMPLES", "40")), deadline=None, derandomize=False, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                           HealthCheck.data_too_large, HealthCheck.large_base_example,
                                           HealthCheck.filter_too_much])


@pytest.fixture
def seeds(store):
    article = ArticleRepository().create(title="seed", url="https://seed", symbols=["AAPL"])
    signal = TradingSignalRepository().create(symbol="AAPL", signal_type="buy", cms_score=0.1)
    order = OrderRepository().create(order_id="seed-order", symbol="AAPL", order_type="limit", side="buy",
                                     quantity=Decimal("10"), price=Decimal("100"))
    found = {"article": article.id, "signal": signal.id, "order": order.id, "order_id": order.order_id}
    for model, repo in REPOSITORIES.items():
        found[model] = repo().create(**valid_row(model, found)).id
    return found


def check_call(admin, store, call, *, may_not_find=None, may_also_raise=()):
    """Run ``call``; it may only succeed or raise the allowed errors, and a failure writes nothing.

    An error matching a :data:`KNOWN_BUGS` signature is tolerated here (each has
    its own strict xfail below), so that this property keeps hunting new bugs.
    """
    before = snapshot(admin)
    try:
        call()
        outcome: BaseException | None = None
    except (DataValidationError, IntegrityViolation) as exc:
        outcome = exc
        assert str(exc), "an error must say what is wrong"
    except NotFoundError as exc:
        assert may_not_find is not None and may_not_find(), f"NotFoundError for a row that exists: {exc}"
        outcome = exc
    except Exception as exc:  # noqa: BLE001 - anything else is a bug, known or new
        if not isinstance(exc, may_also_raise) and known_bug(exc) is None:
            raise
        outcome = exc
    assert store.pool_status()["in_use"] == 0, "a connection leaked"
    if outcome is not None:
        assert snapshot(admin) == before, f"a failed call ({type(outcome).__name__}: {outcome}) wrote"
    return outcome


def exists(admin, table: str, column: str, value) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        return False
    if isinstance(value, str) and ("\x00" in value or not value.isprintable() and any(
            0xD800 <= ord(c) <= 0xDFFF for c in value)):
        return False
    if isinstance(value, int) and not -(2 ** 63) <= value < 2 ** 63:
        return False
    return bool(query(admin, f"SELECT count(*) FROM {table} WHERE {column}::text = %s", (str(value),))[0][0])


MODELS = list(REPOSITORIES)
model_ids = [m.__name__ for m in MODELS]


@pytest.mark.parametrize("model", MODELS, ids=model_ids)
def test_create_with_hostile_fields(store, admin, seeds, model):
    repo = REPOSITORIES[model]()

    @PROPERTY
    @given(row=hostile_row(model, seeds))
    def run(row):
        check_call(admin, store, lambda: repo.create(**row))

    run()


@pytest.mark.parametrize("model", MODELS, ids=model_ids)
def test_update_with_hostile_id_and_fields(store, admin, seeds, model):
    repo = REPOSITORIES[model]()
    table = model._meta.table_name

    @PROPERTY
    @given(data=st.data())
    def run(data):
        target = data.draw(st.one_of(st.just(seeds[model]), hostile), label="id")
        changes = data.draw(hostile_row(model, seeds), label="row")
        changes = {k: v for k, v in changes.items() if data.draw(st.booleans())} or changes
        changes.pop("id", None)
        check_call(admin, store, lambda: repo.update(target, **changes),
                   may_not_find=lambda: not exists(admin, table, "id", target))

    run()


@pytest.mark.parametrize("model", MODELS, ids=model_ids)
def test_bulk_create_with_hostile_rows(store, admin, seeds, model):
    repo = REPOSITORIES[model]()

    @PROPERTY
    @given(rows=rows_argument(model, seeds), batch_size=st.one_of(st.just(1000), st.just(1), hostile))
    def run(rows, batch_size):
        check_call(admin, store, lambda: repo.bulk_create(rows, batch_size=batch_size))

    run()


@pytest.mark.parametrize("model", MODELS, ids=model_ids)
def test_delete_with_hostile_id(store, admin, seeds, model):
    repo = REPOSITORIES[model]()

    @PROPERTY
    @given(target=hostile)
    def run(target):
        check_call(admin, store, lambda: repo.delete(target))

    run()


def specialised(name: str):
    """Skip (with a reason) a specialised write method that is not implemented (yet)."""
    owner, method = name.split(".")
    present = hasattr(getattr(marketstore, owner), method)
    return pytest.mark.skipif(not present, reason=f"{name} is not implemented")


@specialised("PriceRepository.upsert_many")
def test_upsert_many_with_hostile_rows(store, admin, seeds):
    @PROPERTY
    @given(rows=rows_argument(Price, seeds), batch_size=st.one_of(st.just(1000), st.just(2), hostile))
    def run(rows, batch_size):
        check_call(admin, store, lambda: PriceRepository().upsert_many(rows, batch_size=batch_size))

    run()


@specialised("PriceRepository.copy_from")
def test_copy_from_with_hostile_rows(store, admin, seeds):
    @PROPERTY
    @given(rows=rows_argument(Price, seeds))
    def run(rows):
        # A str is the path of a CSV file: OSError when it cannot be read is documented.
        check_call(admin, store, lambda: PriceRepository().copy_from(rows),
                   may_also_raise=OSError if isinstance(rows, str) else ())

    run()


@specialised("PriceRepository.delete_before")
def test_delete_before_with_hostile_timestamps(store, admin, seeds):
    @PROPERTY
    @given(ts=hostile.filter(lambda v: not (isinstance(v, dt.datetime) and v.year > 2000)))
    def run(ts):
        check_call(admin, store, lambda: PriceRepository().delete_before(ts))

    run()


@specialised("ArticleRepository.create_if_new")
def test_create_if_new_with_hostile_url_and_fields(store, admin, seeds):
    @PROPERTY
    @given(data=st.data())
    def run(data):
        row = data.draw(hostile_row(Article, seeds), label="row")
        url = row.pop("url", None)
        if data.draw(st.booleans()):
            url = data.draw(hostile, label="url")
        check_call(admin, store, lambda: ArticleRepository().create_if_new(url, **row))

    run()


@specialised("OrderRepository.transition")
def test_transition_with_hostile_arguments(store, admin, seeds):
    statuses = st.sampled_from(["pending", "submitted", "partially_filled", "filled", "cancelled", "rejected"])

    @PROPERTY
    @given(data=st.data())
    def run(data):
        order_id = data.draw(st.one_of(st.just(seeds["order_id"]), hostile), label="order_id")
        status = data.draw(st.one_of(statuses, hostile), label="new_status")
        kwargs = {name: data.draw(st.one_of(st.none(), st.just(Decimal("5")), st.just(Decimal("10")),
                                            st.just(Decimal("100")), hostile), label=name)
                  for name in ("filled_quantity", "average_fill_price", "note")}
        check_call(admin, store, lambda: OrderRepository().transition(order_id, status, **kwargs),
                   may_not_find=lambda: not exists(admin, "orders", "order_id", order_id))

    run()


# -- injection through string parameters ----------------------------------------------

PAYLOADS = [
    "'; DROP TABLE prices; --", "x' OR '1'='1", "\\'; DELETE FROM orders; --", "$$; DROP TABLE orders; $$",
    "); TRUNCATE articles; --", "%s", "%(id)s", "{}", "' UNION SELECT * FROM pg_authid --", '" OR 1=1 --',
    "1; SELECT pg_terminate_backend(pg_backend_pid())", "E'\\x27'", "/* comment */", "::text",
]


def tables_intact(admin, expected_counts: dict[str, int] | None = None) -> None:
    names = {name for (name,) in query(admin, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
    assert {m._meta.table_name for m in REPOSITORIES} <= names
    if expected_counts is not None:
        assert {t: count_rows(admin, t) for t in expected_counts} == expected_counts


@pytest.mark.parametrize("payload", PAYLOADS)
def test_injection_through_write_parameters_is_stored_as_data(store, admin, seeds, payload):
    symbol_safe = "INJ"  # symbols have a pattern: a payload is refused there (tested below)
    article = ArticleRepository().create(title=payload, content=payload, source=payload[:128], url=payload,
                                         symbols=[payload], metadata={payload: payload})
    event = EventRepository().create(article=article.id, symbols=[payload], event_type=payload[:64], severity=2,
                                     keywords=[payload], details={"q": payload})
    score = SentimentScoreRepository().create(article=article.id, score=0, confidence=0, model=payload[:64],
                                              keywords_positive=[payload])
    order = OrderRepository().create(order_id=payload[:64], symbol=symbol_safe, order_type="market", side="buy",
                                     quantity=1)
    result = BacktestResultRepository().create(name=payload, config={payload: 1}, config_hash=config_hash({payload: 1}),
                                               metrics={payload: 1.0})
    # Stored verbatim: read back on a separate connection.
    assert query(admin, "SELECT title, content, url, symbols, metadata FROM articles WHERE id = %s", (article.id,)) \
        == [(payload, payload, payload, [payload], {payload: payload})]
    assert query(admin, "SELECT event_type, details FROM events WHERE id = %s", (event.id,)) \
        == [(payload[:64], {"q": payload})]
    assert query(admin, "SELECT model FROM sentiment_scores WHERE id = %s", (score.id,)) == [(payload[:64],)]
    assert query(admin, "SELECT order_id FROM orders WHERE id = %s", (order.id,)) == [(payload[:64],)]
    assert query(admin, "SELECT name, metrics FROM backtest_results WHERE id = %s", (result.id,)) \
        == [(payload, {payload: 1.0})]
    with pytest.raises(DataValidationError, match="symbol"):
        PriceRepository().create(**{**valid_row(Price, seeds), "symbol": payload})
    tables_intact(admin)


def read_calls(payload: str) -> list:
    """Every read method that takes a string, handed ``payload`` (those that exist)."""
    ts = dt.datetime(2024, 1, 1, tzinfo=UTC)
    calls = [
        lambda: PriceRepository().list(symbol=payload),
        lambda: PriceRepository().count(interval=payload),
        lambda: PriceRepository().exists(symbol=payload),
        lambda: ArticleRepository().list(url=payload, title=payload),
        lambda: OrderRepository().list(order_id=payload),
        lambda: EventRepository().count(event_type=payload),
    ]
    optional = {
        (PriceRepository, "get_range"): lambda r: r.get_range(payload, ts, ts + dt.timedelta(days=1)),
        (PriceRepository, "latest"): lambda r: r.latest(payload),
        (PriceRepository, "latest_for_symbols"): lambda r: r.latest_for_symbols([payload, "AAPL"]),
        (PriceRepository, "resample"): lambda r: r.resample(payload, ts, ts + dt.timedelta(days=1)),
        (ArticleRepository, "for_symbol"): lambda r: r.for_symbol(payload),
        (ArticleRepository, "search"): lambda r: r.search(payload),
        (SentimentScoreRepository, "average_for_symbol"):
            lambda r: r.average_for_symbol(payload, ts, ts + dt.timedelta(days=1)),
        (SentimentScoreRepository, "timeseries"): lambda r: r.timeseries(payload, ts, ts + dt.timedelta(days=1)),
        (EventRepository, "by_type"): lambda r: r.by_type(payload),
        (EventRepository, "for_symbol"): lambda r: r.for_symbol(payload),
        (TradingSignalRepository, "latest"): lambda r: r.latest(payload),
        (TradingSignalRepository, "in_range"): lambda r: r.in_range(payload, ts, ts + dt.timedelta(days=1)),
        (OrderRepository, "get_by_order_id"): lambda r: r.get_by_order_id(payload),
        (OrderRepository, "open_orders"): lambda r: r.open_orders(payload),
        (OrderRepository, "history"): lambda r: r.history(payload),
        # Results without the metric follow the ranked ones (documented): none may have it.
        (BacktestResultRepository, "best_by_metric"):
            lambda r: [x for x in r.best_by_metric(payload) if payload in x.metrics],
        (BacktestResultRepository, "find_by_config"): lambda r: r.find_by_config({payload: payload}),
    }
    for (repo, method), call in optional.items():
        if hasattr(repo, method):
            calls.append(lambda call=call, repo=repo: call(repo()))
    return calls


@pytest.mark.parametrize("payload", PAYLOADS)
def test_injection_through_read_parameters_matches_nothing_and_harms_nothing(store, admin, seeds, payload):
    before = snapshot(admin)
    for call in read_calls(payload):
        try:
            found = call()
        except DataValidationError:  # refused up front (a symbol pattern, a status choice): also safe
            continue
        assert not found or found == {} or isinstance(found, (int, bool)) and not found, (call, found)
    assert snapshot(admin) == before
    tables_intact(admin)


@specialised("BacktestResultRepository.best_by_metric")
@pytest.mark.parametrize("metric", ["weird'key", "a->b", "{a,b}", "$.sharpe", "sharpe') DESC; DROP TABLE x; --",
                                    "a\\b", "ключ", " "])
def test_jsonb_metric_name_is_a_literal_key(store, admin, metric):
    repo = BacktestResultRepository()
    low = repo.create(name="low", config={"r": 1}, config_hash=config_hash({"r": 1}), metrics={metric: 1, "sharpe": 9})
    high = repo.create(name="high", config={"r": 2}, config_hash=config_hash({"r": 2}), metrics={metric: 10})
    other = repo.create(name="other", config={"r": 3}, config_hash=config_hash({"r": 3}), metrics={"sharpe": 5})
    assert [r.id for r in repo.best_by_metric(metric)] == [high.id, low.id, other.id]
    assert [r.id for r in repo.best_by_metric(metric, descending=False)][:2] == [low.id, high.id]
    tables_intact(admin, {"backtest_results": 3})


@specialised("ArticleRepository.search")
@pytest.mark.parametrize("text", ["apple & | banana", "!!!", "(((", "apple:*", "'", "\\", "&", "<->", "a <2> b",
                                  "AND OR NOT", "-", '"unterminated', "apple or", "or or or", "*", ":", "()",
                                  "apple') OR 1=1 --", "😀", "x" * 1000])
def test_full_text_query_syntax_never_errors(store, admin, text):
    repo = ArticleRepository()
    repo.create(title="Apple and banana", content="apple pie with banana", url="https://fts/1")
    found = repo.search(text)
    assert isinstance(found, list)
    assert [a.url for a in repo.search("apple")] == ["https://fts/1"]
    tables_intact(admin, {"articles": 1})


# -- stated size limits ---------------------------------------------------------------

@pytest.mark.parametrize("model, field, limit, make", [
    (Article, "content", MAX_TEXT_CHARS, lambda n: "x" * n),
    (Article, "title", 1000, lambda n: "t" * n),
    (Article, "url", 2048, lambda n: "u" * n),
    (Article, "symbols", 256, lambda n: ["s" * n]),
    (Article, "metadata", MAX_JSON_BYTES, lambda n: {"k": "j" * (n - len('{"k": ""}'))}),
    (Event, "details", MAX_JSON_BYTES, lambda n: ["d" * (n - len('[""]'))]),
    (BacktestResult, "equity_curve", MAX_JSON_BYTES, lambda n: ["e" * (n - len('[""]'))]),
    (OrderEvent, "note", 10_000, lambda n: "n" * n),
], ids=lambda v: v if isinstance(v, str) else None)
def test_oversized_input_is_refused_at_the_stated_limit_with_a_clear_error(store, admin, seeds, model, field,
                                                                           limit, make):
    repo = REPOSITORIES[model]()
    row = valid_row(model, seeds)
    if model is BacktestResult:
        row.pop("config_hash")
        row["config_hash"] = config_hash(row["config"])
    repo.create(**{**row, field: make(limit)})  # exactly at the limit: accepted
    before = snapshot(admin)
    with pytest.raises(DataValidationError) as info:
        repo.create(**{**valid_row(model, seeds), field: make(limit + 1)})
    message = str(info.value)
    assert field in message and f"{limit}" in message, message  # names the field and the limit
    assert len(message) < 400, "the error must not echo the oversized value"
    assert info.value.field.split("[")[0] == field
    assert snapshot(admin) == before

    # In a bulk load, the error names the row, and nothing of the load is written.
    rows = [valid_row(model, seeds), valid_row(model, seeds), {**valid_row(model, seeds), field: make(limit + 1)}]
    with pytest.raises(DataValidationError, match=f"row 3: {field}"):
        repo.bulk_create(rows)
    assert snapshot(admin) == before


# -- hostile values through read parameters --------------------------------------------

def base_reads(bad) -> list:
    """The generic reads: filters, ids and keyset pagination."""
    return [
        lambda: PriceRepository().list(symbol=bad), lambda: PriceRepository().count(symbol=bad),
        lambda: PriceRepository().exists(interval=bad), lambda: OrderRepository().list(order_id=bad),
        lambda: ArticleRepository().count(url=bad), lambda: PriceRepository().get_by_id(bad),
        lambda: PriceRepository().list(after_id=bad),
    ]


def specialised_reads(bad) -> list:
    ts = dt.datetime(2024, 1, 1, tzinfo=UTC)
    optional = [
        (PriceRepository, "get_range", lambda r: r.get_range(bad, ts, ts)),
        (PriceRepository, "latest_for_symbols", lambda r: r.latest_for_symbols([bad])),
        (ArticleRepository, "search", lambda r: r.search(bad)),
        (ArticleRepository, "for_symbol", lambda r: r.for_symbol(bad)),
        (SentimentScoreRepository, "for_article", lambda r: r.for_article(bad)),
        (EventRepository, "by_type", lambda r: r.by_type(bad)),
        (OrderRepository, "get_by_order_id", lambda r: r.get_by_order_id(bad)),
        (OrderRepository, "history", lambda r: r.history(bad)),
        (BacktestResultRepository, "best_by_metric", lambda r: r.best_by_metric(bad)),
        (BacktestResultRepository, "find_by_config", lambda r: r.find_by_config({"k": bad})),
    ]
    return [lambda r=repo, call=call: call(r()) for repo, method, call in optional if hasattr(repo, method)]


HOSTILE_READ_VALUES = {"nul": "ab\x00c", "lone-surrogate": "ab\ud800c", "huge-int": 10 ** 5000}
READ_BUGS: dict = {}  # (value, group) -> root cause of a known, unfixed bug (strict xfail)


@pytest.mark.parametrize("kind, group", [
    pytest.param(kind, group, id=f"{kind}-{group}", marks=[pytest.mark.xfail(strict=True, raises=ValueError, reason=READ_BUGS[kind, group])]
                 if (kind, group) in READ_BUGS else [])
    for kind in HOSTILE_READ_VALUES for group in ("base", "specialised")])
def test_hostile_read_parameters_are_refused_or_match_nothing(store, admin, seeds, kind, group):
    bad = HOSTILE_READ_VALUES[kind]
    calls = base_reads(bad) if group == "base" else specialised_reads(bad)
    for call in calls:
        try:
            found = call()
        except DataValidationError:
            continue
        assert not found, found  # nothing can match a value no write could store
    assert store.pool_status()["in_use"] == 0
