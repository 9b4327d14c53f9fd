"""``marketstore ingest prices FILE.parquet`` and ``query prices --format parquet``: a frame file in, and out."""
from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
from cli_helpers import count, fails, run, succeeds
from helpers import UTC

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

T0 = dt.datetime(2024, 3, 8, 14, 30, tzinfo=UTC)


def write(path, n: int = 120, volume_delta: int = 0, **override) -> None:
    columns = {
        "symbol": ["PQT"] * n,
        "timestamp": pa.array([T0 + dt.timedelta(minutes=i) for i in range(n)], pa.timestamp("us", tz="UTC")),
        "open": [100.0 + i / 100 for i in range(n)],
        "high": [101.0 + i / 100 for i in range(n)],
        "low": [99.5 + i / 100 for i in range(n)],
        "close": [100.5 + i / 100 for i in range(n)],
        "volume": [1000 + i + volume_delta for i in range(n)],
    }
    columns.update(override)
    pq.write_table(pa.table(columns), path, row_group_size=50)


@pytest.fixture
def url(database_url, db, monkeypatch):
    monkeypatch.setenv("MARKETSTORE_DATABASE_URL", database_url)
    return database_url


def test_ingest_parquet_then_query_it_back_as_parquet(url, raw, tmp_path):
    source = tmp_path / "bars.parquet"
    write(source)
    assert "Loaded 120 price bars" in succeeds("ingest", "prices", source).stdout
    assert count(raw, "prices", "symbol = 'PQT'") == 120
    with raw.cursor() as cur:
        cur.execute("SELECT open, volume FROM prices ORDER BY timestamp LIMIT 1 OFFSET 7")
        assert cur.fetchone() == (Decimal("100.07"), Decimal(1007))
    out = tmp_path / "out.parquet"
    succeeds("query", "prices", "PQT", "--start", "2024-03-08", "--end", "2024-03-09", "--format", "parquet",
             "--out", out)
    table = pq.read_table(out)
    assert table.column_names == ["symbol", "timestamp", "open", "high", "low", "close", "volume"]
    assert table.num_rows == 120 and b"pandas" not in (table.schema.metadata or {})  # no index stored
    assert table.column("close").to_pylist()[:2] == pytest.approx([100.5, 100.51], abs=1e-8)
    assert table.column("timestamp").to_pylist()[0] == T0
    # what query writes, ingest reads: the same bars again are refused as stored, and --upsert updates them
    assert "row 1" in fails("ingest", "prices", out)
    write(source, volume_delta=5)
    assert "Inserted 0 and updated 120" in succeeds("ingest", "prices", source, "--upsert").stdout
    assert count(raw, "prices", "volume = 1005") == 1 and count(raw, "prices") == 120


def test_query_parquet_with_bucket_has_bars(url, tmp_path):
    write(tmp_path / "bars.parquet")
    succeeds("ingest", "prices", tmp_path / "bars.parquet")
    out = tmp_path / "hourly.parquet"
    succeeds("query", "prices", "PQT", "--start", "2024-03-08", "--end", "2024-03-09", "--bucket", "1h",
             "--format", "parquet", "--out", out)
    table = pq.read_table(out)
    assert table.column_names == ["symbol", "timestamp", "open", "high", "low", "close", "volume", "bars"]
    assert table.column("bars").to_pylist() == [30, 60, 30]


def test_query_parquet_needs_out(url):
    outcome = run("query", "prices", "PQT", "--start", "2024-03-08", "--end", "2024-03-09", "--format", "parquet")
    assert outcome.exit_code == 2 and "--out" in outcome.stderr


@pytest.mark.parametrize("override, field, row", [
    ({"close": [100.5] * 76 + [float("nan")] + [100.5] * 43}, "close", 77),
    ({"low": [99.5] * 100 + [102.0] + [99.5] * 19}, "open", 101),  # the row rules: open >= low
    ({"symbol": ["PQT"] * 60 + ["bad symbol"] * 60}, "symbol", 61),
], ids=["nan", "low-above-high", "symbol"])
@pytest.mark.parametrize("upsert", [False, True], ids=["copy", "upsert"])
def test_a_bad_row_is_one_line_naming_file_row_and_field_and_loads_nothing(url, raw, tmp_path, override,
                                                                           field, row, upsert):
    source = tmp_path / "bad.parquet"
    write(source, **override)
    line = fails("ingest", "prices", source, *(["--upsert"] if upsert else []))
    assert str(source) in line and f"row {row}" in line and f"'{field}'" in line
    assert count(raw, "prices") == 0


def test_an_unreadable_parquet_file_is_one_line(url, tmp_path):
    source = tmp_path / "broken.parquet"
    source.write_bytes(b"not parquet at all")
    line = fails("ingest", "prices", source)
    assert str(source) in line and "Parquet" in line


def test_query_csv_out_writes_the_file_ingest_reads(url, raw, tmp_path):
    write(tmp_path / "bars.parquet", n=10)
    succeeds("ingest", "prices", tmp_path / "bars.parquet")
    out = tmp_path / "bars.csv"
    result = succeeds("query", "prices", "PQT", "--start", "2024-03-08", "--end", "2024-03-09", "--format", "csv",
                      "--out", out)
    assert result.stdout == "" and out.read_text().splitlines()[0] == \
        "symbol,timestamp,open,high,low,close,volume,interval"
    with raw.cursor() as cur:
        cur.execute("DELETE FROM prices")
    succeeds("ingest", "prices", out)
    assert count(raw, "prices", "symbol = 'PQT'") == 10
