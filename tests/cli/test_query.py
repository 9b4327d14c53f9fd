"""``marketstore query`` and ``plot`` on a database loaded by ``marketstore demo``.

Every output is parsed back (CSV, JSON) and compared with raw SQL; images are
opened with PIL.
"""
from __future__ import annotations

import csv
import io
import json
import sys
from datetime import datetime
from decimal import Decimal

import psycopg2
import pytest
from cli_helpers import count, fails, run, succeeds

DAY = ["--start", "2024-03-08", "--end", "2024-03-09"]


@pytest.fixture(scope="module")
def demo_url(create_database):
    url = create_database()
    succeeds("demo", "--database", url)
    return url


@pytest.fixture
def sql(demo_url):
    conn = psycopg2.connect(demo_url)
    conn.autocommit = True

    def query(statement, *params):
        with conn.cursor() as cur:
            cur.execute(statement, params)
            return cur.fetchall()

    yield query
    conn.close()


def _csv(text: str) -> list[dict]:
    return list(csv.DictReader(io.StringIO(text)))


def test_query_prices_csv_is_the_stored_bars_and_reloads_with_ingest(demo_url, sql, db, raw, database_url, tmp_path):
    out = succeeds("query", "prices", "AAPL", "--start", "2024-03-08T14:30", "--end", "2024-03-08T15:30",
                   "--format", "csv", "--database", demo_url).stdout
    rows = _csv(out)
    stored = sql("SELECT timestamp, open, high, low, close, volume FROM prices WHERE symbol = 'AAPL' "
                 "AND timestamp >= '2024-03-08 14:30+00' AND timestamp < '2024-03-08 15:30+00' ORDER BY timestamp")
    assert len(rows) == len(stored) == 60
    for row, (ts, o, h, lo, c, v) in zip(rows, stored):
        assert datetime.fromisoformat(row["timestamp"]) == ts
        assert [Decimal(row[k]) for k in ("open", "high", "low", "close", "volume")] == [o, h, lo, c, v]
        assert row["symbol"] == "AAPL" and row["interval"] == "1m"
    # The CSV is what `ingest prices` reads: load it into the (empty) session database.
    path = tmp_path / "aapl.csv"
    path.write_text(out)
    succeeds("ingest", "prices", path, "--database", database_url)
    assert count(raw, "prices", "symbol = 'AAPL'") == 60


def test_query_prices_bucket_json_is_resampled_in_sql(demo_url, sql):
    out = succeeds("query", "prices", "AAPL", *DAY, "--bucket", "1h", "--format", "json",
                   "--database", demo_url).stdout
    bars = json.loads(out)
    assert [datetime.fromisoformat(b["timestamp"]).hour for b in bars] == \
        [14, 15, 16, 17, 18, 19, 20]
    first_hour = sql("SELECT min(low), max(high), sum(volume), count(*) FROM prices WHERE symbol = 'AAPL' "
                     "AND timestamp >= '2024-03-08 14:00+00' AND timestamp < '2024-03-08 15:00+00'")[0]
    assert (Decimal(bars[0]["low"]), Decimal(bars[0]["high"]), Decimal(bars[0]["volume"]), bars[0]["bars"]) == \
        first_hour
    (first_open,), = sql("SELECT open FROM prices WHERE symbol = 'AAPL' AND timestamp = '2024-03-08 14:30+00'")
    assert Decimal(bars[0]["open"]) == first_open


def test_query_prices_table_is_aligned_for_a_person(demo_url):
    out = succeeds("query", "prices", "AAPL", *DAY, "--bucket", "1h", "--database", demo_url).stdout
    lines = out.splitlines()
    assert lines[0].split() == ["timestamp", "open", "high", "low", "close", "volume", "bars"]
    assert len({len(line) for line in lines}) == 1  # every row as wide as the header
    assert len(lines) == 8


def test_query_prices_with_nothing_in_range(demo_url):
    assert succeeds("query", "prices", "AAPL", "--start", "2020-01-01", "--end", "2020-01-02",
                    "--format", "json", "--database", demo_url).stdout.strip() == "[]"


def test_query_articles_by_symbol_newest_first(demo_url, sql):
    rows = json.loads(succeeds("query", "articles", "--symbol", "NVDA", "--limit", "500", "--format", "json",
                               "--database", demo_url).stdout)
    (expected,), = sql("SELECT count(*) FROM articles WHERE symbols @> ARRAY['NVDA']")
    assert len(rows) == expected > 5
    assert all("NVDA" in row["symbols"] for row in rows)
    published = [row["published_at"] for row in rows]
    assert published == sorted(published, reverse=True)


def test_query_articles_search(demo_url):
    rows = _csv(succeeds("query", "articles", "--search", "guidance", "--format", "csv",
                         "--database", demo_url).stdout)
    assert rows and all("guidance" in row["title"].lower() for row in rows)


def test_query_articles_symbol_and_search_together_is_a_usage_error(demo_url):
    result = run("query", "articles", "--symbol", "AAPL", "--search", "x", "--database", demo_url)
    assert result.exit_code == 2 and "not both" in result.stderr


def test_query_signals_for_a_symbol(demo_url, sql):
    rows = _csv(succeeds("query", "signals", "--symbol", "AAPL", "--format", "csv", "--database", demo_url).stdout)
    (expected,), = sql("SELECT count(*) FROM trading_signals WHERE symbol = 'AAPL'")
    assert len(rows) == expected == 15
    assert {row["symbol"] for row in rows} == {"AAPL"}
    assert {row["signal_type"] for row in rows} <= {"buy", "sell", "hold"}
    assert all(-1 <= float(row["cms_score"]) <= 1 for row in rows)


def test_query_signals_by_type_most_recent(demo_url, sql):
    rows = json.loads(succeeds("query", "signals", "--type", "buy", "--limit", "5", "--format", "json",
                               "--database", demo_url).stdout)
    newest = sql("SELECT id FROM trading_signals WHERE signal_type = 'buy' ORDER BY timestamp DESC, id DESC LIMIT 5")
    assert sorted(row["id"] for row in rows) == sorted(i for (i,) in newest)
    assert {row["signal_type"] for row in rows} == {"buy"}
    assert rows[0]["explanation"]["demo"] is True


def test_query_signals_needs_a_symbol_or_a_type(demo_url):
    assert run("query", "signals", "--database", demo_url).exit_code == 2


@pytest.mark.parametrize("status, where", [
    ("open", "status IN ('pending', 'submitted', 'partially_filled')"),
    ("filled", "status = 'filled'"),
    ("cancelled", "status = 'cancelled'"),
])
def test_query_orders_by_status(demo_url, sql, status, where):
    rows = json.loads(succeeds("query", "orders", "--status", status, "--format", "json",
                               "--database", demo_url).stdout)
    expected = sql(f"SELECT order_id FROM orders WHERE {where} ORDER BY timestamp, id")
    assert [row["order_id"] for row in rows] == [o for (o,) in expected]
    assert rows, "the demo leaves orders in this status"


def test_query_backtests_best_sharpe(demo_url, sql):
    rows = json.loads(succeeds("query", "backtests", "--best", "sharpe", "--format", "json",
                               "--database", demo_url).stdout)
    sharpes = [row["metrics"]["sharpe"] for row in rows]
    assert sharpes == sorted(sharpes, reverse=True)
    (best,), = sql("SELECT max((metrics->>'sharpe')::numeric) FROM backtest_results")
    assert Decimal(str(sharpes[0])) == best
    table = succeeds("query", "backtests", "--best", "sharpe", "--database", demo_url).stdout
    assert table.splitlines()[0].split()[:4] == ["id", "name", "created_at", "sharpe"]


# -- plot ----------------------------------------------------------------------

def _image_size(path) -> tuple[int, int]:
    from PIL import Image

    assert path.stat().st_size > 10_000
    with Image.open(path) as image:
        image.verify()
        assert image.format == "PNG"
        return image.size


@pytest.mark.parametrize("extra", [["--bucket", "5m"], []], ids=["candles", "close line"])
def test_plot_prices_writes_a_png(demo_url, tmp_path, extra):
    out = tmp_path / "aapl.png"
    result = succeeds("plot", "prices", "AAPL", "--start", "2024-03-07", "--end", "2024-03-09", *extra,
                      "--out", out, "--database", demo_url)
    assert str(out) in result.stdout
    assert _image_size(out) == (1100, 650)


def test_plot_backtest_writes_a_png(demo_url, sql, tmp_path):
    (best,), = sql("SELECT id FROM backtest_results ORDER BY (metrics->>'sharpe')::numeric DESC LIMIT 1")
    out = tmp_path / "equity.png"
    succeeds("plot", "backtest", best, "--out", out, "--database", demo_url)
    assert _image_size(out) == (1100, 650)


def test_plot_errors_are_one_line(demo_url, tmp_path):
    assert "no bars for NOPE" in fails("plot", "prices", "NOPE", *DAY, "--out", tmp_path / "x.png",
                                          "--database", demo_url)
    assert "not found" in fails("plot", "backtest", "999999", "--out", tmp_path / "x.png", "--database", demo_url)
    assert "cannot write" in fails("plot", "prices", "AAPL", *DAY, "--out", tmp_path / "no" / "dir.png",
                                   "--database", demo_url)
    assert "cannot write" in fails("plot", "prices", "AAPL", *DAY, "--out", tmp_path / "x.unknown",
                                   "--database", demo_url)


def test_plot_without_matplotlib_gives_the_install_hint(demo_url, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # what `import matplotlib` sees when it is missing
    line = fails("plot", "backtest", "1", "--out", tmp_path / "x.png", "--database", demo_url)
    assert "pip install 'marketstore[plot]'" in line
    assert not (tmp_path / "x.png").exists()
