"""Bars given as Python rows to ``copy_from`` and ``upsert_many``: what is stored, what is
refused and where, streaming, and the fast row check against the full validation."""
from __future__ import annotations

import datetime as dt
from decimal import Decimal


import pytest
from hypothesis import strategies as st

import marketstore
from marketstore import DataValidationError, DuplicateKeyError, IntegrityViolation
from marketstore.models import validate_price_row as price_row
from marketstore.repositories._rows import copy_line, line_formatter


from helpers import MINUTE, T0, UTC, as_tuple, bar, count_rows, stored_prices, wait_for_copy_progress


# -- upsert_many --------------------------------------------------------------------

def test_upsert_many_inserts_then_updates(prices, raw):
    rows = [bar("AAA", m) for m in range(5)]
    assert prices.upsert_many(rows) == 5
    changed = [dict(r, close=r["high"], volume=Decimal(7)) for r in rows[:3]] + [bar("AAA", 5)]
    assert prices.upsert_many(changed) == 4
    expected = sorted(as_tuple(r) for r in changed + rows[3:])
    assert stored_prices(raw) == expected
    assert count_rows(raw, "prices") == 6


def test_upsert_many_repeated_key_last_wins(prices, raw):
    rows = [bar("AAA", 0, volume=1), bar("AAA", 1), bar("AAA", 0, volume=3)]
    written = prices.upsert_many(rows, batch_size=10)
    assert (written, written.inserted, written.updated) == (2, 2, 0)  # two bars: the repeated key counts once
    assert [r[-1] for r in stored_prices(raw)] == [Decimal(3), Decimal(1000)]


def test_upsert_many_is_all_or_nothing_across_batches(prices, raw):
    rows = [bar("AAA", m) for m in range(2_500)]
    rows[2_100] = dict(rows[2_100], high=rows[2_100]["low"] - 1)  # the third batch
    with pytest.raises(DataValidationError) as info:
        prices.upsert_many(rows, batch_size=1_000)
    assert (info.value.row, info.value.field, info.value.source) == (2101, "high", None)
    assert count_rows(raw, "prices") == 0


@pytest.mark.parametrize("row, field", [
    ({"symbol": "AAA", "timestamp": T0, "open": 1, "high": 2, "low": 1, "close": 2}, "volume"),
    (dict(bar("AAA", 0), id=5), "id"),
    (dict(bar("AAA", 0), close=Decimal("-1")), "close"),
    (dict(bar("AAA", 0), symbol="bad symbol!"), "symbol"),
    (dict(bar("AAA", 0), timestamp="tomorrow"), "timestamp"),
])
def test_upsert_many_refuses_bad_rows(prices, raw, row, field):
    with pytest.raises(DataValidationError) as info:
        prices.upsert_many([bar("AAA", 10), row])
    assert (info.value.row, info.value.field) == (2, field)
    assert count_rows(raw, "prices") == 0


# -- copy_from ------------------------------------------------------------------------


def test_copy_from_rows_dicts_and_sequences(prices, raw):
    rows = [bar("AAA", m) for m in range(10)]
    sequences = [tuple(r[c] for c in ("symbol", "timestamp", "open", "high", "low", "close", "volume"))
                 for r in (bar("BBB", m) for m in range(3))]
    assert prices.copy_from(iter(rows + sequences)) == 13
    expected = sorted([as_tuple(r) for r in rows] + [as_tuple(bar("BBB", m)) for m in range(3)])
    assert stored_prices(raw) == expected


def test_copy_from_lets_ctrl_c_through_and_keeps_the_pool_clean(prices, raw):
    def rows():
        yield bar("AAA", 0)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        prices.copy_from(rows())
    assert count_rows(raw, "prices") == 0
    assert marketstore.db_connection.pool_status()["in_use"] == 0


def test_copy_from_bad_row_in_iterable_names_row(prices, raw):
    rows = [bar("AAA", m) for m in range(100)] + [{"symbol": "AAA"}]
    with pytest.raises(DataValidationError) as info:
        prices.copy_from(rows)
    assert (info.value.row, info.value.field) == (101, "timestamp")
    assert count_rows(raw, "prices") == 0


def test_copy_from_existing_bar_is_integrity_violation_and_loads_nothing(prices, raw):
    prices.upsert_many([bar("AAA", 5)])
    with pytest.raises(IntegrityViolation):
        prices.copy_from([bar("AAA", m) for m in range(10)])
    assert count_rows(raw, "prices") == 1


def test_copy_from_streams_rows_to_the_server_while_reading(prices, raw):
    """The server has processed rows before the iterable is exhausted: nothing is buffered whole."""
    seen = []

    def rows():
        for m in range(6_000):
            if m == 5_000:
                seen.append(wait_for_copy_progress(raw.dsn))
            yield bar("AAA", m)

    assert prices.copy_from(rows(), interval="1m") == 6_000  # given: straight into prices, no staging
    assert seen and seen[0] is not None and 0 < seen[0] <= 5_000
    assert count_rows(raw, "prices") == 6_000


def test_writes_compose_in_one_session(prices, raw):
    with pytest.raises(RuntimeError):
        with marketstore.get_db_session():
            prices.copy_from([bar("AAA", 0)])
            prices.upsert_many([bar("AAA", 1)])
            raise RuntimeError("caller fails after both writes")
    assert count_rows(raw, "prices") == 0
    with marketstore.get_db_session():
        prices.copy_from([bar("AAA", 0)])
        prices.upsert_many([bar("AAA", 0, volume=9), bar("AAA", 1)])
    assert [r[-1] for r in stored_prices(raw)] == [Decimal(9), Decimal(1000)]


# -- the fast row check of copy_from/upsert_many against the full validation ----------

def _copy_values(line: str) -> tuple:
    """The values a COPY text line sends, parsed back (None for a refused row)."""
    symbol, ts, o, h, lo, c, v, interval, adj_close = line.rstrip("\n").split("\t")
    assert adj_close == "\\N"
    stamp = dt.datetime.fromisoformat(ts)
    assert stamp.utcoffset() == dt.timedelta(0)
    return (symbol, stamp, *(Decimal(x) for x in (o, h, lo, c, v)), interval)


def _full_line(row):
    try:
        return copy_line(price_row(row))
    except DataValidationError:
        return None


_EDGE_NUMBERS = [Decimal("1E-9"), Decimal("5E-9"), Decimal("4.9E-9"), Decimal("0.00000001"), Decimal("-0"),
                 Decimal("0"), Decimal("1.000000000"), Decimal("1.000000005"), Decimal("1E+3"),
                 Decimal("9999999999999999.99999999"), Decimal("9999999999999999.999999999"), Decimal("1E+16"),
                 Decimal("99999999999999999999.99999999"), Decimal("1E+20"), Decimal("NaN"), Decimal("-NaN"),
                 Decimal("sNaN"), Decimal("Infinity"), Decimal("-Infinity"), 0, 1, 10**16, True, 1.5,
                 float("nan"), float("inf"), "12.5", " 3 ", "NaN", "abc", None, [], b"1"]


def _numbers():
    scaled = st.integers(0, 11).flatmap(
        lambda places: st.decimals(min_value=0, max_value=Decimal(10) ** 17, places=places))
    return st.one_of(scaled, st.sampled_from(_EDGE_NUMBERS), st.decimals(), st.integers(-5, 10**21),
                     st.floats(), scaled.map(str))


_OFFSETS = st.timedeltas(min_value=-dt.timedelta(hours=23, minutes=59),
                         max_value=dt.timedelta(hours=23, minutes=59)).map(dt.timezone)
_STAMPS = st.one_of(st.datetimes(timezones=st.one_of(st.none(), st.just(UTC), _OFFSETS)),
                    st.sampled_from([dt.datetime.min, dt.datetime.max,
                                     dt.datetime.max.replace(tzinfo=dt.timezone(-dt.timedelta(hours=5))),
                                     dt.datetime.min.replace(tzinfo=dt.timezone(dt.timedelta(hours=5)))]),
                    st.datetimes().map(lambda d: d.isoformat()), st.just(dt.date(2024, 1, 2)))
_SYMBOLS = st.one_of(st.from_regex(r"[A-Za-z0-9.^][A-Za-z0-9._\-/=^:]{0,33}", fullmatch=True), st.text(max_size=40),
                     st.sampled_from(["AAPL", "BRK.B", "^GSPC", "EUR/USD", "a\tb", "a\\b", "AAA\n", 7, None]))
_INTERVALS = st.one_of(st.sampled_from(["1m", "5m", "1h", "1d", "1w", "1mo", "9999mo", "10000m", "0m", "1x",
                                        "1M", " 1m", "1m\n", 1, None]), st.text(max_size=8))
_FIELD_VALUES = {"symbol": _SYMBOLS, "timestamp": _STAMPS, "interval": _INTERVALS,
                 **{name: _numbers() for name in ("open", "high", "low", "close", "volume")}}


@st.composite
def price_inputs(draw):
    """Mostly valid bars (ordered Decimals of any scale), some fields then replaced, removed or added."""
    values = sorted(draw(st.lists(st.integers(0, 11).flatmap(
        lambda p: st.decimals(min_value=0, max_value=Decimal(10) ** 16, places=p)), min_size=5, max_size=5)))
    low, a, b, high = values[1:]
    row = {"symbol": draw(st.sampled_from(["AAA", "BRK.B", "^GSPC"])),
           "timestamp": draw(st.datetimes(timezones=st.one_of(st.none(), st.just(UTC), _OFFSETS))),
           "open": a, "high": high, "low": low, "close": b, "volume": values[0] * draw(st.sampled_from([1, 10**4])),
           "interval": draw(st.sampled_from(["1m", "1h", "1mo"]))}
    if draw(st.booleans()):
        del row["interval"]
    for name in draw(st.sets(st.sampled_from(sorted(_FIELD_VALUES)), max_size=3)):
        row[name] = draw(_FIELD_VALUES[name])
    for name in draw(st.sets(st.sampled_from(sorted(_FIELD_VALUES)), max_size=1)):
        row.pop(name, None)
    if draw(st.integers(0, 20)) == 0:
        row[draw(st.sampled_from(["id", "Symbol", "extra"]))] = 1
    return draw(st.sampled_from([row, row, row, tuple(row.values())]))


def test_fast_row_check_takes_the_common_row():
    """The fast path is really taken for the rows callers pass (else the test above proves little)."""
    for row in (bar("AAA", 0), {k: v for k, v in bar("AAA", 1).items() if k != "interval"},
                dict(bar("AAA", 2), timestamp=(T0 + MINUTE).replace(tzinfo=None))):
        assert line_formatter()(row) == _full_line(row)



# -- rows: the 1-based position as ``row`` -------------------------------------------

def _bar(minute: int, **changes) -> dict:
    row = {"symbol": "AAA", "timestamp": T0 + dt.timedelta(minutes=minute), "open": Decimal(1),
           "high": Decimal(2), "low": Decimal(1), "close": Decimal(2), "volume": Decimal(3)}
    return {**row, **changes}


@pytest.mark.parametrize("method", ["copy_from", "upsert_many", "bulk_create"])
def test_rows_given_as_lists_name_their_row(prices, raw, method):
    rows = [list(_bar(m).values()) for m in range(5)]
    rows[3][5] = "x"  # close
    if method == "bulk_create":  # bulk_create takes mappings
        rows = [dict(zip(_bar(0), r)) for r in rows]
    with pytest.raises(DataValidationError) as info:
        getattr(prices, method)(rows)
    assert (info.value.row, info.value.field, info.value.value) == (4, "close", "x")
    assert (info.value.source, info.value.line) == (None, None)
    assert str(info.value).startswith("row 4: close='x'")
    assert count_rows(raw, "prices") == 0


def test_a_row_of_the_wrong_shape_names_its_row(prices):
    with pytest.raises(DataValidationError) as info:
        prices.copy_from([_bar(0), ["AAA", T0]])
    assert (info.value.row, info.value.field) == (2, "row")


def test_a_duplicate_row_names_its_row(prices, raw):
    with pytest.raises(DuplicateKeyError) as info:
        prices.copy_from([_bar(0), _bar(1), _bar(0)])
    assert (info.value.row, info.value.source, info.value.line) == (3, None, None)
    assert info.value.key["symbol"] == "AAA"
    assert count_rows(raw, "prices") == 0


@pytest.mark.parametrize("method", ["copy_from", "upsert_many"])
def test_a_query_is_refused_up_front_by_either(prices, raw, method):
    from marketstore import Price

    prices.copy_from([_bar(0)])
    with pytest.raises(DataValidationError) as info:
        getattr(prices, method)(Price.select())  # iterated inside the COPY, it would need the busy connection
    assert info.value.field == "rows_or_csv_path"
    assert count_rows(raw, "prices") == 1

