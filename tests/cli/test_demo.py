"""``marketstore demo``: loads the synthetic market once, reports it, and starts over on --reset."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import psycopg2
import pytest
from cli_helpers import fails, succeeds

from marketstore.cli import demo
from marketstore.models import MODELS

TABLES = [model._meta.table_name for model in MODELS]


def _counts(url: str) -> dict[str, int]:
    conn = psycopg2.connect(url)
    try:
        with conn.cursor() as cur:
            counts = {}
            for table in TABLES:
                cur.execute(f"SELECT count(*) FROM {table}")
                counts[table] = cur.fetchone()[0]
            return counts
    finally:
        conn.close()


def _scalar(url: str, statement: str):
    conn = psycopg2.connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute(statement)
            return cur.fetchone()[0]
    finally:
        conn.close()


def test_generated_market_is_seeded_and_valid():
    market = demo.generate(7)
    assert demo.generate(7).bars[:50] == market.bars[:50]
    assert demo.generate(8).bars[:50] != market.bars[:50]
    assert len(market.symbols) >= 20
    assert len({bar["timestamp"].date() for bar in market.bars}) >= 5
    assert len(market.bars) == len(market.symbols) * 5 * 390
    for bar in market.bars:
        assert 0 < bar["low"] <= min(bar["open"], bar["close"]) <= max(bar["open"], bar["close"]) <= bar["high"]
    assert len({e["event_type"] for e in market.events}) >= 4
    assert len({e["severity"] for e in market.events}) >= 3
    assert {s["signal_type"] for s in market.signals} == {"buy", "sell", "hold"}


def test_demo_loads_once_reports_and_resets(create_database):
    url = create_database()  # not migrated: the demo migrates
    first = succeeds("demo", "--database", url)
    counts = _counts(url)
    assert counts["prices"] >= 20 * 5 * 390
    assert 200 <= counts["articles"] == counts["sentiment_scores"]
    assert counts["events"] > 0 and counts["trading_signals"] > 0 and counts["order_events"] > counts["orders"] > 0
    assert counts["backtest_results"] >= 1
    for heading in ("Rows", "Latest price per symbol", "Hourly bars, AAPL", "Daily news sentiment, AAPL",
                    "Open orders", "Best backtests by Sharpe"):
        assert heading in first.stdout
    assert f"{counts['prices']:,}" in first.stdout
    assert "Loaded the demo market" in first.stderr

    second = succeeds("demo", "--database", url)
    assert _counts(url) == counts  # idempotent: nothing duplicated
    assert "already loaded" in second.stderr
    assert second.stdout == first.stdout  # the same report

    # --reset replaces the demo rows and leaves other data alone.
    conn = psycopg2.connect(url)
    with conn, conn.cursor() as cur:
        cur.execute("INSERT INTO prices (symbol, timestamp, open, high, low, close, volume, interval) "
                    "VALUES ('AAPL', '2024-03-05 15:00+00', 1, 1, 1, 1, 1, '5m')")
        cur.execute("INSERT INTO articles (title, url) VALUES ('mine', 'https://example.org/mine')")
    conn.close()
    first_article = _scalar(url, "SELECT min(id) FROM articles")
    succeeds("demo", "--reset", "--database", url)
    after = _counts(url)
    assert after == {**counts, "prices": counts["prices"] + 1, "articles": counts["articles"] + 1}
    assert _scalar(url, "SELECT count(*) FROM articles WHERE url = 'https://example.org/mine'") == 1
    assert _scalar(url, "SELECT count(*) FROM prices WHERE interval = '5m'") == 1
    assert _scalar(url, f"SELECT min(id) FROM articles WHERE url LIKE '{demo.URL_PREFIX}%'") > first_article

    assert "add --reset" in fails("demo", "--seed", "7", "--database", url)
    assert _counts(url) == after


@pytest.fixture
def fresh_home():
    """A new HOME directly under the temp dir. Not pytest's tmp_path: another pytest
    session resets its 0700 parent, which the (non-root) embedded server must traverse."""
    home = Path(tempfile.mkdtemp(prefix="marketstore-home-"))
    yield home
    shutil.rmtree(home, ignore_errors=True)


@pytest.mark.slow
def test_demo_on_the_embedded_server_in_a_fresh_home(fresh_home):
    env = {k: v for k, v in os.environ.items()
           if k not in ("MARKETSTORE_DATABASE_URL", "MARKETSTORE_EMBEDDED_DIR", "XDG_DATA_HOME")
           and not k.startswith("PG")}
    env["HOME"] = str(fresh_home)
    script = Path(sys.executable).with_name("marketstore")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "marketstore.cli"]
    try:
        first = subprocess.run(command + ["demo"], env=env, capture_output=True, text=True, timeout=300)
        assert first.returncode == 0, first.stderr
        assert f"data in {fresh_home}" in first.stderr
        assert "Latest price per symbol" in first.stdout and "Best backtests by Sharpe" in first.stdout
        second = subprocess.run(command + ["demo"], env=env, capture_output=True, text=True, timeout=300)
        assert second.returncode == 0, second.stderr
        assert "already loaded" in second.stderr and second.stdout == first.stdout
    finally:
        _stop_embedded(env, fresh_home / ".local" / "share" / "marketstore" / "pgdata")


def _stop_embedded(env: dict, pgdata: Path) -> None:
    """Stop the server this test started; by its pid if ``embedded.stop()`` did not."""
    try:
        pid = int((pgdata / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return  # never started
    stop = subprocess.run([sys.executable, "-c", "import marketstore.embedded as e; e.stop()"],
                          env=env, capture_output=True, text=True, timeout=120)
    for _ in range(300):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    warnings.warn(f"embedded.stop() left the server running (exit {stop.returncode}: {stop.stderr[-500:]}); "
                  f"stopping pid {pid}")
    os.kill(pid, signal.SIGINT)  # PostgreSQL's fast shutdown
