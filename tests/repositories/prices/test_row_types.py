"""Rows of every natural type on ``copy_from``/``upsert_many``'s fast path.

The fast path formats any row into a COPY line and lets the table's CHECKs
judge it; a refusal is turned back into validation's own error. So the
oracle here is full validation (``price_row``, i.e. ``Price.validate``) row
by row: the same verdict, the same field and row, and, for a good load, the
same stored values as the validated rows' lines copied by raw psycopg2.
"""
from __future__ import annotations

import datetime as dt
import zoneinfo
from decimal import Decimal

import psycopg2
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from marketstore import DataValidationError, DuplicateKeyError, get_db_session
from marketstore.models import PRICE_COLUMNS
from marketstore.models import validate_price_row as price_row
from marketstore.repositories._copy import COPY_COLUMNS
from marketstore.repositories._rows import copy_line, line_formatter

from helpers import UTC, count_rows

np = pytest.importorskip("numpy")
pd = pytest.importorskip("pandas")

T0 = dt.datetime(2024, 3, 1, 9, 30)
STORED = f"SELECT {COPY_COLUMNS} FROM prices ORDER BY symbol, \"interval\", \"timestamp\""


def stored(raw) -> list[tuple]:
    with raw.cursor() as cur:
        cur.execute(STORED)
        return cur.fetchall()


def truncate(raw) -> None:
    with raw.cursor() as cur:
        cur.execute("TRUNCATE prices")


# The interval given to rows without one: these tests are about types, not spacing (stamps jitter by up to 1 s).
GIVEN = "1s"


def validated(rows) -> tuple[list[dict] | None, DataValidationError | None]:
    """Full validation row by row: the validated rows, or the first row's error (located)."""
    out = []
    for number, row in enumerate(rows, 1):
        try:
            out.append(price_row(row, GIVEN))
        except DataValidationError as exc:
            return None, exc.at(row=number)
    return out, None


def reference_values(raw, good: list[dict]) -> list[tuple]:
    """What the validated rows store, copied by raw psycopg2 (then removed again)."""
    with raw.cursor() as cur:
        cur.copy_expert(f"COPY prices ({COPY_COLUMNS}) FROM STDIN",
                        _Lines([copy_line(row) for row in good]))
    values = stored(raw)
    truncate(raw)
    return values


class _Lines:
    def __init__(self, lines):
        self._text = "".join(lines)

    def read(self, size=-1):
        text, self._text = self._text, ""
        return text


# -- generated rows: every natural type, good and bad values --------------------------------
NUMPY_NUMBERS = (np.float64, np.float32, np.float16, np.int64, np.int32, np.uint16)
_ZONES = st.sampled_from([UTC, dt.timezone(dt.timedelta(hours=-5)), dt.timezone(dt.timedelta(hours=5, minutes=30)),
                          zoneinfo.ZoneInfo("America/New_York"), zoneinfo.ZoneInfo("Asia/Tokyo")])


def _as(kind: str, value: Decimal):
    """``value`` (a Decimal) in one of the natural representations of a number."""
    if kind == "int":
        return int(value)
    if kind == "float":
        return float(value)
    if kind == "str":
        return str(value)
    if kind == "decimal":
        return value
    with np.errstate(over="ignore"):  # a float16 beyond 65504 is inf: one more bad value
        return getattr(np, kind)(value if kind.startswith(("int", "uint")) else float(value))


def _number_kind(value: Decimal):
    kinds = ["decimal", "float", "str", "float64", "float32", "float16"]
    if value == value.to_integral_value():
        kinds += ["int", "int64"] + (["int32"] if value < 2**31 else []) + (["uint16"] if value < 2**16 else [])
    return st.sampled_from(kinds).map(lambda kind: _as(kind, value))


BAD_NUMBERS = [0, -1, -0.5, float("nan"), float("inf"), float("-inf"), Decimal("NaN"), Decimal("sNaN"),
               Decimal("Infinity"), Decimal("1E-20000"), Decimal("1E-9"), Decimal("5E-9"), 10**16, 10**20,
               1e16, Decimal("9999999999999999.999999999"), 0.000000004, 0.000000005, True, False, None,
               "NaN", "1e5", " 7 ", "1_0", "abc", "", "\t5", np.bool_(True), np.float64("nan"),
               np.float32("inf"), np.int64(-3), np.float64(1e300), np.timedelta64(5, "s"), np.complex128(1), [], b"1",
               Decimal("-0"), -0.0]
BAD_STAMPS = [None, dt.date(2024, 1, 2), pd.NaT, np.datetime64("NaT"), 1_700_000_000, "yesterday",
              dt.datetime.max.replace(tzinfo=dt.timezone(-dt.timedelta(hours=5))),
              dt.datetime.min.replace(tzinfo=dt.timezone(dt.timedelta(hours=5))), np.datetime64("12000-01-01")]
BAD_SYMBOLS = ["a\tb", "a\\b", "AAA\n", "", "X" * 33, "é", "-AB", "A B", 7, None, "A\x00"]
BAD_INTERVALS = ["0m", "1x", "12345m", "1m\n", "", 1, None, "1m\t"]


@st.composite
def timestamps(draw, minute: int):
    moment = T0 + dt.timedelta(minutes=minute, microseconds=draw(st.sampled_from([0, 0, 1, 123456, 999999])))
    kind = draw(st.sampled_from(["naive", "aware", "pd-naive", "pd-aware", "pd-nanos", "dt64", "dt64ns", "iso"]))
    zone = draw(_ZONES)
    if kind == "naive":
        return moment
    if kind == "aware":
        return moment.replace(tzinfo=UTC).astimezone(zone)
    if kind == "pd-naive":
        return pd.Timestamp(moment)
    if kind == "pd-aware":
        return pd.Timestamp(moment).tz_localize("UTC").tz_convert(zone)
    if kind == "pd-nanos":
        return pd.Timestamp(moment) + pd.Timedelta(nanoseconds=draw(st.integers(0, 999)))
    if kind == "dt64":
        return np.datetime64(moment)
    if kind == "dt64ns":
        return np.datetime64(moment, "ns") + np.timedelta64(draw(st.integers(0, 999)), "ns")
    return moment.isoformat()


@st.composite
def price_rows(draw, minute: int):
    """A bar (mostly good, any mix of types), sometimes a field made bad, in any shape."""
    cents = sorted(draw(st.lists(st.integers(1, 10**9), min_size=4, max_size=4)))
    places = draw(st.sampled_from([0, 2, 4, 8, 10]))
    low, a, b, high = (Decimal(c).scaleb(-places) for c in cents)
    open_, close = (a, b) if draw(st.booleans()) else (b, a)
    volume = Decimal(draw(st.integers(0, 10**12))).scaleb(-draw(st.sampled_from([0, 0, 3, 9])))
    row = {"symbol": draw(st.sampled_from(["AAA", "BRK.B", "^GSPC", "EUR/USD", "es=f"])),
           "timestamp": draw(timestamps(minute)),
           **{name: draw(_number_kind(value)) for name, value in
              (("open", open_), ("high", high), ("low", low), ("close", close), ("volume", volume))},
           "interval": draw(st.sampled_from(["1m", "5m", "1h", "1mo"]))}
    if draw(st.integers(0, 3)) == 0:  # one field made bad (or swapped: high < low)
        name = draw(st.sampled_from(["open", "high", "low", "close", "volume", "timestamp", "symbol",
                                     "interval", "swap"]))
        if name == "swap":
            row["high"], row["low"] = row["low"], row["high"]
        else:
            row[name] = draw(st.sampled_from({"timestamp": BAD_STAMPS, "symbol": BAD_SYMBOLS,
                                               "interval": BAD_INTERVALS}.get(name, BAD_NUMBERS)))
    if draw(st.integers(0, 5)) == 0:
        del row["interval"]
    if draw(st.integers(0, 30)) == 0:
        row["extra"] = 1
    shape = draw(st.sampled_from(["dict", "dict", "tuple", "list"]))
    if shape == "dict" or "extra" in row:
        return row
    values = [row[name] for name in PRICE_COLUMNS if name in row]
    return tuple(values) if shape == "tuple" else values


@st.composite
def row_lists(draw):
    count = draw(st.integers(1, 4))
    return [draw(price_rows(minute)) for minute in range(count)]


def _keys_unique(good):
    keys = [(r["symbol"], r["interval"], r["timestamp"]) for r in good]
    return len(set(keys)) == len(keys)


def _check_same_as_validation(load, raw, rows):
    truncate(raw)
    good, error = validated(rows)
    if good is not None:
        assume(_keys_unique(good))
        expected = reference_values(raw, good)
        assert load(rows) == len(rows)
        assert stored(raw) == expected
    else:
        with pytest.raises(DataValidationError) as info:
            load(rows)
        got = info.value
        assert (got.row, got.field) == (error.row, error.field), (rows, got, error)
        assert str(got) == str(error)
        assert count_rows(raw, "prices") == 0


SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                           HealthCheck.too_slow])


@SETTINGS
@given(rows=row_lists())
def test_copy_from_rows_of_any_type_same_verdict_and_values_as_validation(prices, raw, rows):
    _check_same_as_validation(lambda rows: prices.copy_from(rows, interval=GIVEN), raw, rows)


@SETTINGS
@given(rows=row_lists())
def test_upsert_many_rows_of_any_type_same_verdict_and_values_as_validation(prices, raw, rows):
    _check_same_as_validation(lambda rows: prices.upsert_many(rows, interval=GIVEN), raw, rows)


@SETTINGS
@given(rows=row_lists())
def test_copy_from_a_generator_same_verdict_as_validation(prices, raw, rows):
    _check_same_as_validation(lambda rows: prices.copy_from(iter(rows), interval=GIVEN), raw, rows)


# -- the natural types stored exactly ----------------------------------------------------
def _bar(minute: int, **values) -> dict:
    row = {"symbol": "NAT", "timestamp": T0 + dt.timedelta(minutes=minute), "open": Decimal("10.5"),
           "high": Decimal("11.25"), "low": Decimal("10"), "close": Decimal("11"), "volume": Decimal(1200)}
    row.update(values)
    return row


EXACT = [
    (_bar(0, volume=1200), Decimal("1200")),
    (_bar(1, open=10.5, high=11.25, low=10.0, close=11.0, volume=1200.0), Decimal("1200")),
    (_bar(2, open=np.float64(10.5), high=np.float32(11.25), low=np.int64(10), close=np.float16(11),
          volume=np.uint32(1200)), Decimal("1200")),
    (_bar(3, open="10.5", high="11.25", low="10", close="11.00", volume="1200"), Decimal("1200")),
    (_bar(4, timestamp=pd.Timestamp(T0 + dt.timedelta(minutes=4)), volume=np.int64(1200)), Decimal("1200")),
    (_bar(5, timestamp=pd.Timestamp(T0 + dt.timedelta(minutes=5)).tz_localize("UTC").tz_convert("America/New_York"),
          volume=1200), Decimal("1200")),
    (_bar(6, timestamp=np.datetime64(T0 + dt.timedelta(minutes=6), "ns"), volume=1200), Decimal("1200")),
]


def test_natural_types_are_stored_exactly(prices, raw):
    rows = [row for row, _ in EXACT]
    rows.append(("NAT", T0 + dt.timedelta(minutes=7), 10.5, 11.25, 10, 11, 1200))  # a tuple, no interval
    rows.append(["NAT", T0 + dt.timedelta(minutes=8), np.float32(0.1), np.float32(0.1), np.float32(0.1),
                 np.float32(0.1), np.float32(0.1), "1m"])  # float32 0.1 is 0.1, not 0.10000000149011612
    assert prices.copy_from(rows) == len(rows)
    got = stored(raw)
    assert len(got) == len(rows)
    for minute, (symbol, stamp, o, h, lo, c, v, interval, _) in enumerate(got):
        assert (symbol, interval) == ("NAT", "1m")
        assert stamp == (T0 + dt.timedelta(minutes=minute)).replace(tzinfo=UTC)
        if minute < 8:
            assert (o, h, lo, c, v) == (Decimal("10.5"), Decimal("11.25"), Decimal("10"), Decimal("11"),
                                        Decimal("1200")), minute
        else:
            assert (o, h, lo, c, v) == (Decimal("0.1"),) * 5


def test_the_natural_types_take_the_fast_path():
    """The formatter really takes them (else the server-side design would be a slow path in disguise)."""
    line = line_formatter()
    for row, _ in EXACT:
        assert line(row) is not None, row
    assert line(("NAT", T0, 10.5, 11.25, 10, 11, 1200)) is not None
    # What it must leave to validation: bool, unknown types, text the server reads otherwise.
    for bad in (True, np.bool_(False), np.timedelta64(1, "s"), "1_0", " 7", "\t5", object(), Decimal("1E-20000")):
        assert line(_bar(0, volume=bad)) is None, bad


@pytest.mark.parametrize("value, stored_as", [
    (0.000000005, Decimal("0.00000001")), (1.000000015, Decimal("1.00000002")),
    ("2.123456785", Decimal("2.12345679")), (Decimal("3.999999995"), Decimal("4.00000000")),
    (np.float32(0.1), Decimal("0.1")), (np.float64(1e-05), Decimal("0.00001")),
])
def test_more_than_8_decimals_round_half_away_from_zero_as_validation(prices, raw, value, stored_as):
    row = _bar(0, low=value, open=value, close=value, high=Decimal(5))
    assert price_row(row)["low"] == stored_as
    assert prices.copy_from([row]) == 1
    assert stored(raw)[0][4] == stored_as


@pytest.mark.parametrize("value, field", [
    (float("nan"), "open"), (float("inf"), "high"), (np.float64("nan"), "volume"), (-1, "volume"),
    (0, "low"), (10**16, "high"), (Decimal("NaN"), "close"), (True, "volume"), (None, "open"),
])
def test_a_bad_value_of_any_type_is_validations_error_naming_row_and_field(prices, raw, value, field):
    rows = [_bar(m) for m in range(5)]
    rows[3] = dict(rows[3], **{field: value})
    with pytest.raises(DataValidationError) as info:
        prices.copy_from(rows)
    with pytest.raises(DataValidationError) as expected:
        price_row(rows[3])
    assert (info.value.row, info.value.field) == (4, expected.value.field)
    assert str(info.value) == str(expected.value.at(row=4))
    assert count_rows(raw, "prices") == 0


def test_the_first_bad_row_is_named_whichever_side_refuses_it(prices, raw):
    """Row 2 is refused by the server (high < low), row 3 in Python (a bool): row 2 is named."""
    rows = [_bar(m) for m in range(4)]
    rows[1] = dict(rows[1], high=9.0)
    rows[2] = dict(rows[2], volume=True)
    for load in (prices.copy_from, prices.upsert_many):
        with pytest.raises(DataValidationError) as info:
            load(rows)
        assert (info.value.row, info.value.field) == (2, "high")
    assert count_rows(raw, "prices") == 0


def test_a_generator_refused_far_past_its_first_copy_names_the_row(prices, raw):
    """Past the first COPY statement of a generator (20,000 rows), the refused row is still found."""
    bad = 23_457

    def rows():
        for m in range(25_000):
            yield _bar(m, volume=-5 if m + 1 == bad else m)

    with pytest.raises(DataValidationError) as info:
        prices.copy_from(rows())
    assert (info.value.row, info.value.field, info.value.value) == (bad, "volume", -5)
    assert count_rows(raw, "prices") == 0


def test_a_generator_loads_across_copy_statements_and_duplicates_name_their_row(prices, raw):
    assert prices.copy_from(_bar(m, volume=m) for m in range(20_001)) == 20_001
    assert count_rows(raw, "prices") == 20_001
    with pytest.raises(DuplicateKeyError) as info:
        prices.copy_from(_bar(m) for m in range(20_000, 20_010))
    assert info.value.row == 1
    assert count_rows(raw, "prices") == 20_001


def test_a_refused_row_rolls_back_with_the_callers_session(prices, raw):
    with pytest.raises(DataValidationError):
        with get_db_session():
            prices.copy_from([_bar(0)])
            prices.copy_from([_bar(1), _bar(2, low=float("nan"))])
    assert count_rows(raw, "prices") == 0


def test_validation_takes_numpy_numbers_and_datetime64_and_refuses_nat():
    row = price_row(_bar(0, open=np.float32(10.5), volume=np.int64(3), timestamp=np.datetime64("2024-01-02T03:04")))
    assert (row["open"], row["volume"]) == (Decimal("10.5"), Decimal(3))
    assert row["timestamp"] == dt.datetime(2024, 1, 2, 3, 4, tzinfo=UTC)
    for stamp in (pd.NaT, np.datetime64("NaT")):
        with pytest.raises(DataValidationError) as info:
            price_row(_bar(0, timestamp=stamp))
        assert info.value.field == "timestamp"
    for number in (np.bool_(True), np.timedelta64(5, "s"), np.complex64(1)):
        with pytest.raises(DataValidationError) as info:
            price_row(_bar(0, volume=number))
        assert info.value.field == "volume"


def test_server_refusals_of_other_kinds_stay_driver_errors_translated(prices, raw):
    """A refusal that is no row's fault is not turned into a DataValidationError."""
    with pytest.raises(Exception) as info:
        with get_db_session() as db:
            db.execute_sql("SET LOCAL statement_timeout = 1")
            prices.copy_from(_bar(m) for m in range(200_000))
    assert not isinstance(info.value, (DataValidationError, psycopg2.Error))
