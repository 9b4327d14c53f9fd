"""Value rules are declared once (``Meta.rules``): the table, validation, frames, rows and CSV obey the same ones."""
from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pandas as pd
import polars as pl
import pytest

from marketstore import DataValidationError, Price, PriceRepository
from marketstore.migrations import DatabaseMigration
from marketstore.models import MODELS
from marketstore.repositories import _frame_chunks
from marketstore.rules import Bound, Choice
from helpers import UTC

T0 = dt.datetime(2024, 3, 8, 14, 30, tzinfo=UTC)


def bar(i: int, **changes) -> dict:
    row = {"symbol": "TOY", "timestamp": T0 + dt.timedelta(minutes=i), "open": 10, "high": 11, "low": 9,
           "close": 10.5, "volume": 100}
    row.update(changes)
    return row


def stored(raw) -> int:
    with raw.cursor() as cur:
        cur.execute("SELECT count(*) FROM prices")
        return cur.fetchone()[0]


def test_the_checks_derived_from_the_declarations_are_those_the_migrations_created(db, raw):
    # PostgreSQL prints both sides (a scratch copy holding the derived text, and the live table) alike.
    with raw.cursor() as cur:
        for model in MODELS:
            table, derived = model._meta.table_name, model._meta.rules.constraints()
            cur.execute(f'CREATE TEMP TABLE "scratch_{table}" (LIKE "{table}")')
            for name, condition in derived.items():
                cur.execute(f'ALTER TABLE "scratch_{table}" ADD CONSTRAINT "{name}" CHECK ({condition})')
            query = ("SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint "
                     "WHERE conrelid = %s::regclass AND contype = 'c' ORDER BY conname")
            cur.execute(query, (f"scratch_{table}",))
            expected = cur.fetchall()
            cur.execute(query, (table,))
            assert cur.fetchall() == expected, table
            assert len(expected) == len(derived)
    assert DatabaseMigration(db).verify_schema() == []


@pytest.fixture
def toy_rule(db, raw, monkeypatch):
    """A rule added the way a contributor adds one: one declaration (on a copy) plus its CHECK."""
    def add(name: str, rule) -> None:
        rules = Price._meta.rules.with_rule(name, rule)
        monkeypatch.setattr(Price._meta, "rules", rules)
        with raw.cursor() as cur:
            cur.execute(f"ALTER TABLE prices ADD CONSTRAINT prices_{name} CHECK ({rules.condition(name)})")
        added.append(name)

    added: list[str] = []
    yield add
    with raw.cursor() as cur:
        for name in added:
            cur.execute(f"ALTER TABLE prices DROP CONSTRAINT prices_{name}")


def test_a_new_rule_is_enforced_by_validation_rows_frames_and_csv_alike(toy_rule, raw, tmp_path):
    toy_rule("toy_check", Bound("volume", "<", 1000))
    repo = PriceRepository()
    good = [bar(i) for i in range(5)]
    bad = good[:3] + [bar(3, volume=5000)] + good[4:]

    with pytest.raises(DataValidationError) as caught:
        repo.create(**bad[3])
    assert (caught.value.field, caught.value.value, caught.value.expected) == ("volume", 5000, "a number < 1000")

    with pytest.raises(DataValidationError) as caught:
        repo.copy_from(bad)  # the fast formatter sends it; the server's CHECK refuses; validation names it
    assert (caught.value.field, caught.value.row, caught.value.expected) == ("volume", 4, "a number < 1000")

    with pytest.raises(DataValidationError) as caught:
        repo.copy_from(pd.DataFrame(bad))  # the vectorised mask catches it before COPY
    assert (caught.value.field, caught.value.row, caught.value.expected) == ("volume", 4, "a number < 1000")

    path = tmp_path / "bars.csv"
    lines = ["symbol,timestamp,open,high,low,close,volume"]
    lines += [f"{r['symbol']},{r['timestamp'].isoformat()},{r['open']},{r['high']},{r['low']},{r['close']},"
              f"{r['volume']}" for r in bad]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataValidationError) as caught:
        repo.upsert_many(path)
    assert (caught.value.field, caught.value.line, caught.value.value) == ("volume", 5, "5000")

    assert stored(raw) == 0
    assert repo.copy_from(good) == 5


def test_a_server_refusal_at_a_chunk_s_last_row_names_that_row(toy_rule, raw, monkeypatch):
    # A rule frames do not check vectorised (a choice of symbols): the server refuses, the row is found again.
    toy_rule("toy_symbols", Choice("symbol", ("TOY",)))
    monkeypatch.setattr(_frame_chunks, "CHUNK_ROWS", 64)
    rows = [bar(i) for i in range(200)]
    rows[63] = bar(63, symbol="OTHER")  # the last row of the first chunk
    with pytest.raises(DataValidationError) as caught:
        PriceRepository().copy_from(pl.DataFrame(rows))
    assert (caught.value.field, caught.value.row, caught.value.value) == ("symbol", 64, "OTHER")
    assert stored(raw) == 0


def test_a_server_refusal_after_unchanged_rows_were_left_out_names_its_own_row(toy_rule, raw, monkeypatch):
    # A re-upsert sends only new or changed bars: the COPY's line 1 here is the frame's row 70.
    monkeypatch.setattr(_frame_chunks, "CHUNK_ROWS", 64)
    rows = [bar(i) for i in range(100)]
    PriceRepository().upsert_many(pl.DataFrame(rows))
    toy_rule("toy_symbols", Choice("symbol", ("TOY",)))
    rows[69] = bar(69, symbol="OTHER")
    with pytest.raises(DataValidationError) as caught:
        PriceRepository().upsert_many(pl.DataFrame(rows))
    assert (caught.value.field, caught.value.row, caught.value.value) == ("symbol", 70, "OTHER")
    assert stored(raw) == 100


@pytest.mark.parametrize("make", [pl.DataFrame, lambda rows: pl.DataFrame(rows).to_arrow()], ids=["polars", "arrow"])
def test_a_frame_longer_than_one_chunk_loads_each_row_once(db, raw, monkeypatch, make):
    monkeypatch.setattr(_frame_chunks, "CHUNK_ROWS", 64)
    assert PriceRepository().copy_from(make([bar(i) for i in range(200)])) == 200
    assert stored(raw) == 200


def test_the_numeric_bound_is_exclusive(db, raw):
    # numeric(24, 8) holds |x| < 10**16: validation must refuse 10**16 itself, before the server.
    with pytest.raises(DataValidationError) as caught:
        PriceRepository().create(**bar(0, high=10**16, close=10**16 - 1))
    assert (caught.value.field, caught.value.value) == ("high", 10**16)
    bar_ok = PriceRepository().create(**bar(1, high=Decimal("9999999999999999.99999999")))
    assert bar_ok.high == Decimal("9999999999999999.99999999")


def test_more_than_8_decimals_round_half_away_from_zero_as_the_server_does(db, raw):
    created = PriceRepository().create(**bar(0, low=Decimal("1.000000005"), open=Decimal("1.000000015")))
    with raw.cursor() as cur:
        cur.execute("SELECT low, open FROM prices WHERE id = %s", (created.id,))
        assert cur.fetchone() == (Decimal("1.00000001"), Decimal("1.00000002"))


def test_an_error_shows_the_value_given_not_the_rounded_one(db):
    with pytest.raises(DataValidationError) as caught:
        PriceRepository().create(**bar(0, low=4e-9, open=1, close=1, high=2))
    assert caught.value.field == "low" and caught.value.value == 4e-9
    assert "4e-09" in str(caught.value)
