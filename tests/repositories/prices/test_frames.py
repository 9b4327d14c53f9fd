"""Frames in and out: pandas, polars and Arrow against a real PostgreSQL.

Every write is checked from a raw connection; every frame read back is compared
with what was written, value by value.
"""
from __future__ import annotations

import datetime as dt
import subprocess
import sys
import textwrap
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import marketstore
from marketstore import DataValidationError, DuplicateKeyError, MissingExtraError, PriceRepository
from helpers import T0, UTC

pd = pytest.importorskip("pandas")
pa = pytest.importorskip("pyarrow")
np = pytest.importorskip("numpy")



def bars(n: int = 50, seed: int = 7):
    """A one-symbol frame indexed by ``timestamp`` (float prices, int volume) with 6-decimal prices."""
    rng = np.random.default_rng(seed)
    opens = np.round(100 + rng.random(n) * 10, 6)
    closes = np.round(opens + rng.random(n) - 0.5, 6)
    frame = pd.DataFrame({
        "open": opens, "high": np.maximum(opens, closes) + 0.25, "low": np.minimum(opens, closes) - 0.25,
        "close": closes, "volume": rng.integers(0, 10_000, n),
    }, index=pd.DatetimeIndex(pd.date_range(T0, periods=n, freq="min"), name="timestamp"))
    return frame


def stored(raw, where: str = "TRUE") -> list[tuple]:
    with raw.cursor() as cur:
        cur.execute(f'SELECT symbol, "timestamp", open, high, low, close, volume, "interval" FROM prices '
                    f'WHERE {where} ORDER BY symbol, "timestamp"')
        return cur.fetchall()


def assert_close(got, expected) -> None:
    """Two pandas frames of bars equal to 1e-8 per value, with the same index."""
    assert list(got.index) == list(expected.index)
    assert got.index.names == expected.index.names
    for name in ("open", "high", "low", "close", "volume"):
        assert got[name].dtype == np.float64
        assert np.allclose(got[name].to_numpy(), expected[name].to_numpy(dtype=float), rtol=0, atol=1e-8), name


def test_round_trip_one_symbol_by_index(db, raw):
    frame = bars()
    assert PriceRepository().copy_from(frame, symbol="AAPL") == len(frame)
    rows = stored(raw)
    assert len(rows) == len(frame) and {r[0] for r in rows} == {"AAPL"} and {r[7] for r in rows} == {"1m"}
    assert rows[3][2] == Decimal(repr(float(frame["open"].iloc[3]))) and rows[3][6] == int(frame["volume"].iloc[3])
    back = PriceRepository().frame("AAPL", T0, T0 + dt.timedelta(days=1))
    assert str(back.index.tz) == "UTC" and back.index.name == "timestamp"
    assert_close(back, frame)


def test_round_trip_several_symbols_by_column_and_half_open_range(db):
    one, two = bars(30, 1).assign(symbol="AAA"), bars(30, 2).assign(symbol="BBB")
    frame = pd.concat([one, two]).reset_index()
    assert PriceRepository().copy_from(frame) == 60
    back = PriceRepository().frame(["BBB", "AAA", "ZZZ"], T0, T0 + dt.timedelta(minutes=20))
    assert back.index.names == ["symbol", "timestamp"]
    expected = pd.concat([one.iloc[:20], two.iloc[:20]]).set_index("symbol", append=True).swaplevel()
    assert_close(back, expected)
    # the frame read back is itself a valid input (its MultiIndex carries symbol and timestamp)
    PriceRepository().copy_from(back, interval="30s")
    assert_close(PriceRepository().frame(["AAA", "BBB"], T0, T0 + dt.timedelta(days=1), interval="30s"), expected)


def test_bucket_resamples_like_resample(db):
    PriceRepository().copy_from(bars(150), symbol="AAPL")
    end = T0 + dt.timedelta(days=1)
    frame = PriceRepository().frame("AAPL", T0, end, bucket="1h")
    expected = PriceRepository().resample("AAPL", T0, end, bucket="1 hour")
    assert len(frame) == len(expected) == 3
    for (ts, row), bar in zip(frame.iterrows(), expected):
        assert ts.to_pydatetime() == bar.bucket and row["bars"] == bar.count
        assert [row[n] for n in ("open", "high", "low", "close", "volume")] == \
            pytest.approx([float(getattr(bar, n)) for n in ("open", "high", "low", "close", "volume")], abs=1e-8)
    many = PriceRepository().frame(["AAPL"], T0, end, bucket="1h")
    assert list(many["bars"]) == [b.count for b in expected] and many.index.names == ["symbol", "timestamp"]


def test_polars_and_arrow_in_and_out(db):
    pl = pytest.importorskip("polars")
    frame = bars(40)
    table = pa.Table.from_pandas(frame.reset_index().assign(symbol="ARW"), preserve_index=False)
    assert PriceRepository().copy_from(table) == 40
    assert PriceRepository().copy_from(pl.from_pandas(frame.reset_index()), symbol="PLR") == 40
    end = T0 + dt.timedelta(days=1)
    out = PriceRepository().frame("PLR", T0, end, library="polars")
    assert isinstance(out, pl.DataFrame) and out.columns == ["timestamp", "open", "high", "low", "close", "volume"]
    assert_close(out.to_pandas().set_index("timestamp"), frame)
    out = PriceRepository().frame(["PLR", "ARW"], T0, end, library="arrow")
    assert isinstance(out, pa.Table) and out.column_names[:2] == ["symbol", "timestamp"]
    assert str(out.schema.field("timestamp").type) == "timestamp[us, tz=UTC]"
    assert out.column("symbol").to_pylist() == ["ARW"] * 40 + ["PLR"] * 40  # by symbol, then time


def test_naive_aware_and_other_zone_timestamps_are_the_same_instants(db, raw):
    naive = bars(3)
    naive.index = naive.index.tz_localize(None).rename("timestamp")
    zoned = bars(3)
    zoned.index = zoned.index.tz_convert("America/New_York").rename("timestamp")
    repo = PriceRepository()
    repo.copy_from(naive, symbol="NAIVE")
    repo.copy_from(zoned, symbol="ZONED")
    repo.copy_from(bars(3), symbol="UTC")
    instants = {}
    for symbol, ts, *_ in stored(raw):
        instants.setdefault(symbol, []).append(ts)
    assert instants["NAIVE"] == instants["ZONED"] == instants["UTC"] == [T0 + dt.timedelta(minutes=i) for i in range(3)]


def test_values_beyond_8_decimals_round_half_away_from_zero(db, raw):
    frame = bars(2)
    frame["open"] = frame["open"].astype(object)
    frame = frame.reset_index().assign(symbol="RND")
    frame["low"], frame["open"], frame["high"], frame["close"] = "1.000000005", "1.000000015", "2.5", "1.5"
    PriceRepository().copy_from(frame)
    assert {(r[2], r[4]) for r in stored(raw)} == {(Decimal("1.00000002"), Decimal("1.00000001"))}


def _bad(frame, column, row, value):
    frame = frame.copy()
    if frame[column].dtype.kind in "iu" or not isinstance(value, float):
        frame[column] = frame[column].astype(object)
    frame.iloc[row - 1, frame.columns.get_loc(column)] = value
    return frame


@pytest.mark.parametrize("column, row, value, field", [
    ("close", 4, float("nan"), "close"),
    ("high", 2, float("inf"), "high"),
    ("open", 5, None, "open"),
    ("volume", 3, -1, "volume"),
    ("low", 6, -2.0, "low"),
    ("high", 7, 1.0, "high"),  # high < low
    ("volume", 2, "many", "volume"),  # a string in a numeric column
    ("open", 3, "101.5x", "open"),
    ("symbol", 4, "BAD SYMBOL", "symbol"),
    ("symbol", 5, 42, "symbol"),  # an object column of mixed types
], ids=["nan", "inf", "none", "negative-volume", "negative-low", "high-below-low", "string-volume",
        "bad-number-text", "bad-symbol", "mixed-object"])
def test_a_bad_value_names_field_and_row_and_loads_nothing(db, raw, column, row, value, field):
    frame = _bad(bars(10).reset_index().assign(symbol="AAA"), column, row, value)
    with pytest.raises(DataValidationError) as caught:
        PriceRepository().copy_from(frame)
    assert (caught.value.field, caught.value.row) == (field, row), caught.value
    assert stored(raw) == []


def test_a_bad_row_deep_in_a_large_frame_is_named(db, raw, monkeypatch):
    from marketstore.repositories import _frame_chunks

    monkeypatch.setattr(_frame_chunks, "CHUNK_ROWS", 64)  # several chunks: the row is counted across them
    frame = _bad(bars(300).reset_index().assign(symbol="AAA"), "low", 250, 0.0)
    with pytest.raises(DataValidationError) as caught:
        PriceRepository().upsert_many(frame)
    assert (caught.value.field, caught.value.row) == ("low", 250)
    assert stored(raw) == []


@pytest.mark.parametrize("change, expected", [
    (lambda f: f.assign(timestamp=f["timestamp"].astype(str)), "timestamp"),
    (lambda f: f.assign(extra=1), "extra"),
    (lambda f: f.drop(columns=["close"]), "close"),
    (lambda f: f.assign(volume=True), "volume"),
])
def test_wrong_columns_and_dtypes_are_refused(db, raw, change, expected):
    with pytest.raises(DataValidationError) as caught:
        PriceRepository().copy_from(change(bars(5).reset_index().assign(symbol="AAA")))
    assert caught.value.field == expected
    assert stored(raw) == []


def test_duplicates_within_the_frame_and_against_the_table_name_the_row(db, raw):
    frame = bars(10).reset_index().assign(symbol="DUP")
    twice = pd.concat([frame, frame.iloc[[4]]], ignore_index=True)
    with pytest.raises(DuplicateKeyError) as caught:
        PriceRepository().copy_from(twice)
    assert caught.value.row == 11 and caught.value.key["symbol"] == "DUP"
    assert stored(raw) == []
    PriceRepository().copy_from(frame.iloc[6:])
    with pytest.raises(DuplicateKeyError) as caught:
        PriceRepository().copy_from(frame)
    assert caught.value.row == 7
    assert len(stored(raw)) == 4


def test_upsert_many_frame_updates_and_the_last_duplicate_wins(db, raw):
    frame = bars(10).reset_index().assign(symbol="UPS")
    PriceRepository().copy_from(frame.iloc[:5])
    changed = frame.assign(volume=frame["volume"] + 1)
    last = changed.iloc[[2]].assign(volume=777)
    written = PriceRepository().upsert_many(pd.concat([changed, last], ignore_index=True))
    assert (written, written.inserted, written.updated, written.unchanged) == (10, 5, 5, 0)
    rows = stored(raw)
    assert len(rows) == 10 and rows[2][6] == 777
    assert [r[6] for r in rows[3:]] == [Decimal(int(v)) for v in changed["volume"].iloc[3:]]


def test_an_empty_frame_loads_nothing(db, raw):
    assert PriceRepository().copy_from(bars(0), symbol="AAA") == 0
    assert PriceRepository().upsert_many(bars(0).reset_index().assign(symbol="AAA")) == 0
    assert stored(raw) == []


def test_frame_writes_roll_back_with_the_caller_s_session(db, raw):
    with pytest.raises(RuntimeError):
        with marketstore.get_db_session():
            PriceRepository().copy_from(bars(20), symbol="RBK")
            PriceRepository().upsert_many(bars(20), symbol="RBK2")
            raise RuntimeError("the caller changes its mind")
    assert stored(raw) == []


def test_sentiment_frame_matches_timeseries(db):
    articles, scores = marketstore.ArticleRepository(), marketstore.SentimentScoreRepository()
    for i, (symbols, score) in enumerate([(["AAA"], 0.5), (["AAA", "BBB"], -0.25), (["BBB"], 1.0)]):
        article = articles.create(title=f"news {i}", symbols=symbols, url=f"https://x/{i}")
        scores.create(article=article.id, score=score, confidence=0.5, model="m",
                      timestamp=T0 + dt.timedelta(minutes=20 * i))
    end = T0 + dt.timedelta(days=1)
    one = scores.frame("AAA", T0, end, bucket="1h")
    expected = scores.timeseries("AAA", T0, end, bucket="1 hour")
    assert [(t.to_pydatetime(), r["average"], r["count"]) for t, r in one.iterrows()] == \
        [(b.bucket, pytest.approx(b.average), b.count) for b in expected]
    many = scores.frame(["BBB", "AAA"], T0, end, bucket="1h", library="arrow")
    assert many.column("symbol").to_pylist() == ["AAA", "BBB"]  # by symbol, then time
    assert many.column("count").to_pylist() == [2, 2]
    assert many.column("average").to_pylist() == pytest.approx([0.125, 0.375])
    # point in time: nothing was ingested before the start of 2024
    before = dt.datetime(2024, 1, 1, tzinfo=UTC)
    assert len(scores.frame(["AAA", "BBB"], T0, end, as_of=before)) == len(scores.frame("AAA", T0, end, as_of=before)) == 0


def test_without_the_extra_a_frame_method_names_it_and_the_rest_works(database_url):
    code = textwrap.dedent(f"""
        import sys
        for name in ("pandas", "polars", "pyarrow"):
            sys.modules[name] = None  # import of any of them fails
        import datetime as dt
        import marketstore
        marketstore.initialize_database({database_url!r})
        repo = marketstore.PriceRepository()
        try:
            repo.frame("AAA", "2024-01-01", "2024-01-02")
        except marketstore.MissingExtraError as exc:
            assert "marketstore[frames]" in str(exc), exc
        else:
            raise AssertionError("no error")
        try:
            repo.copy_from("bars.parquet")
        except marketstore.MarketstoreError as exc:
            assert "marketstore[frames]" in str(exc), exc
        row = dict(symbol="NOX", timestamp=dt.datetime(2024, 1, 1), open=1, high=2, low=1, close=2, volume=5)
        assert repo.copy_from([row]) == 1
        assert len(repo.get_range("NOX", "2024-01-01", "2024-01-02")) == 1
        assert "pandas" not in sys.modules or sys.modules["pandas"] is None
        print("ok")
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "ok", result.stderr
    assert issubclass(MissingExtraError, marketstore.MarketstoreError)


def test_bad_parameters_of_frame(db):
    with pytest.raises(DataValidationError) as caught:
        PriceRepository().frame("AAA", T0, T0, library="excel")
    assert caught.value.field == "library"
    with pytest.raises(DataValidationError) as caught:
        PriceRepository().copy_from([{"symbol": "A"}], symbol="AAA")
    assert caught.value.field == "symbol"


def test_polars_columns_and_arrow_decimals_load_exactly(db, raw):
    pl = pytest.importorskip("polars")
    frame = pl.DataFrame({
        "symbol": ["PL1", "PL2"], "timestamp": [dt.datetime(2024, 1, 2), dt.datetime(2024, 1, 2)],
        "open": ["10.5", " 11.25 "], "high": [12.0, 12.0], "low": [10, 11], "close": [11.0, 11.5],
        "volume": [5, 6], "interval": ["1d", "1d"]})
    assert PriceRepository().copy_from(frame) == 2
    table = pa.table({
        "symbol": pa.array(["DEC"], pa.string()).dictionary_encode(),
        "timestamp": pa.array([T0], pa.timestamp("ns", tz="Europe/Paris")),
        **{n: pa.array([Decimal("123456789012.12345678")], pa.decimal128(20, 8)) for n in ("open", "high", "low",
                                                                                          "close")},
        "volume": pa.array([Decimal("0.00000001")], pa.decimal128(20, 8))})
    assert PriceRepository().copy_from(table, interval="1h") == 1
    rows = stored(raw)
    assert [(r[0], r[2], r[4], r[7]) for r in rows] == [
        ("DEC", Decimal("123456789012.12345678"), Decimal("123456789012.12345678"), "1h"),
        ("PL1", Decimal("10.5"), Decimal("10"), "1d"), ("PL2", Decimal("11.25"), Decimal("11"), "1d")]
    assert rows[0][1] == T0 and rows[0][6] == Decimal("0.00000001")


class _Undo(Exception):
    """Ends a session so that it rolls back."""


def _verdict(load):
    """What ``load()`` did inside a session that is then rolled back: the error's (type, field, row), or the
    bars it stored."""
    try:
        with marketstore.get_db_session():
            try:
                load()
            except (DataValidationError, DuplicateKeyError) as exc:
                return type(exc).__name__, getattr(exc, "field", None), exc.row
            stored_now = PriceRepository().get_range("HYP", T0, T0 + dt.timedelta(days=1), as_tuples=True)
            raise _Undo(stored_now)
    except _Undo as undo:
        return [row[2:8] for row in undo.args[0]]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_a_frame_gets_the_verdict_of_its_rows(db, data):
    hypothesis_values = st.one_of(
        st.floats(min_value=0, max_value=50, allow_nan=False).map(lambda x: round(x, 9)),
        st.sampled_from([float("nan"), float("inf"), -1.0, 0.0, 1e-9, 5e-9, 1e12, 10.000000005]),
        st.sampled_from([float("nan"), -1.0]))
    n = data.draw(st.integers(1, 6))
    rows = []
    for i in range(n):
        low = data.draw(st.floats(min_value=0.01, max_value=100).map(lambda x: round(x, 4)))
        o, c = low + data.draw(st.floats(0, 5)), low + data.draw(st.floats(0, 5))
        rows.append({"symbol": "HYP", "timestamp": T0 + dt.timedelta(minutes=i), "open": o,
                     "high": max(o, c) + data.draw(st.floats(0, 1)), "low": low, "close": c,
                     "volume": data.draw(st.floats(0, 1e6))})
    for _ in range(data.draw(st.integers(0, 3))):  # a few cells made doubtful
        row, name = data.draw(st.integers(0, n - 1)), data.draw(st.sampled_from(["open", "high", "low", "close",
                                                                                  "volume"]))
        rows[row][name] = data.draw(hypothesis_values)
    repeat = data.draw(st.sampled_from([None] + list(range(n))))
    if repeat is not None:
        rows.append(dict(rows[repeat]))
    frame = pd.DataFrame(rows)
    assert _verdict(lambda: PriceRepository().copy_from(frame)) == \
        _verdict(lambda: PriceRepository().copy_from([dict(r) for r in rows]))


def test_importing_marketstore_imports_no_frame_library():
    code = ("import sys, marketstore, marketstore.cli\n"
            "print(sorted(m for m in ('pandas', 'polars', 'pyarrow', 'numpy') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "[]", result.stderr
