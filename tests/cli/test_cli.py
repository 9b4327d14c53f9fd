"""The ``marketstore`` command: help, error lines, and ``ingest`` against the test database."""
from __future__ import annotations

import datetime as dt

import json
import os
import pty
import socket
import struct
import subprocess
import sys
import threading
from decimal import Decimal

import click
import pytest
from cli_helpers import count, fails, succeeds

from marketstore import DataValidationError
from marketstore.cli import main

from helpers import HEADER, count_rows



def _commands(group: click.Group, path=()):
    for name, cmd in group.commands.items():
        yield path + (name,), cmd
        if isinstance(cmd, click.Group):
            yield from _commands(cmd, path + (name,))


COMMANDS = [((), main)] + list(_commands(main))


@pytest.mark.parametrize("path, cmd", COMMANDS, ids=[" ".join(p) or "marketstore" for p, _ in COMMANDS])
def test_every_command_has_help_with_an_example(path, cmd):
    result = succeeds(*path, "--help")
    assert "Example" in result.stdout
    if not isinstance(cmd, click.Group):
        assert "--database URL" in result.stdout


def test_every_command_of_the_spec_exists():
    names = {" ".join(path) for path, _ in COMMANDS}
    assert {"migrate", "verify", "health", "grant", "demo", "ingest prices", "ingest articles", "query prices",
            "query articles", "query signals", "query orders", "query backtests", "plot prices",
            "plot backtest"} <= names


# -- errors: one line, exit 1, never a password --------------------------------

@pytest.fixture(scope="module")
def empty_url(create_database) -> str:
    """A database that was never migrated."""
    return create_database()


@pytest.mark.parametrize("args", [
    ["query", "prices", "AAPL", "--start", "2024-03-08", "--end", "2024-03-09"],
    ["query", "orders"],
    ["query", "backtests", "--best", "sharpe"],
    ["plot", "backtest", "1", "--out", "never.png"],
    ["verify"],
], ids=lambda a: " ".join(a[:2]))
def test_missing_tables_say_run_migrate(empty_url, args):
    line = fails(*args, "--database", empty_url)
    if args != ["verify"]:
        assert "run `marketstore migrate`" in line
    assert "Traceback" not in line


@pytest.mark.parametrize("kind, text", [("prices", f"{HEADER}\nAAPL,2024-01-02T14:30:00Z,1,1,1,1,1\n"),
                                        ("articles", '{"title": "x", "url": "https://example.org/x"}\n')])
def test_ingest_into_an_unmigrated_database_says_run_migrate(empty_url, tmp_path, kind, text):
    path = tmp_path / "input"
    path.write_text(text)
    assert "run `marketstore migrate`" in fails("ingest", kind, path, "--database", empty_url)


def test_unreachable_server_is_one_line_without_the_password():
    line = fails("health", "--database", "postgresql://bob:s3cret-pw@127.0.0.1:1/market")
    assert "cannot connect to postgresql://bob:***@127.0.0.1:1/market" in line
    assert "s3cret-pw" not in line


def test_unknown_host_is_one_line():
    line = fails("query", "orders", "--database", "postgresql://bob:s3cret-pw@no-such-host.invalid/market")
    assert "no-such-host.invalid" in line and "s3cret-pw" not in line


def test_bad_url_is_one_line():
    assert "postgresql://" in fails("health", "--database", "mysql://bob:s3cret-pw@localhost/market")


def _read_exactly(conn, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            raise OSError("closed")
        data += chunk
    return data


@pytest.fixture
def password_refusing_server():
    """A TCP server speaking just enough of the PostgreSQL wire protocol to ask for a
    password and refuse it, as a server with password authentication does (the test
    server trusts every local connection). Yields (port, passwords received)."""
    listener = socket.create_server(("127.0.0.1", 0))
    received: list[bytes] = []

    def serve():
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                try:
                    while True:  # SSLRequest / GSSENCRequest get "N", then the StartupMessage
                        length, code = struct.unpack("!ii", _read_exactly(conn, 8))
                        _read_exactly(conn, length - 8)
                        if code not in (80877103, 80877104):
                            break
                        conn.sendall(b"N")
                    conn.sendall(b"R" + struct.pack("!ii", 8, 3))  # AuthenticationCleartextPassword
                    _read_exactly(conn, 1)
                    (length,) = struct.unpack("!i", _read_exactly(conn, 4))
                    received.append(_read_exactly(conn, length - 4))
                    fields = b'SFATAL\0VFATAL\0C28P01\0Mpassword authentication failed for user "bob"\0\0'
                    conn.sendall(b"E" + struct.pack("!i", len(fields) + 4) + fields)
                except OSError:
                    pass

    threading.Thread(target=serve, daemon=True).start()
    yield listener.getsockname()[1], received
    listener.close()


def test_wrong_password_is_one_line_without_the_password(password_refusing_server):
    port, received = password_refusing_server
    line = fails("query", "orders", "--database", f"postgresql://bob:s3cret-pw@127.0.0.1:{port}/market")
    assert received and received[0] == b"s3cret-pw\0"  # the password was sent and refused...
    assert "password authentication failed" in line
    assert "s3cret-pw" not in line  # ...and never shown
    assert "postgresql://bob:***@" in line


def test_embedded_server_that_cannot_start_is_one_line(tmp_path, monkeypatch):
    for name in ("MARKETSTORE_DATABASE_URL", "PGHOST", "PGHOSTADDR", "PGDATABASE", "PGSERVICE"):
        monkeypatch.delenv(name, raising=False)
    data = tmp_path / "pgdata"
    data.mkdir()
    (data / "not-a-cluster").write_text("initdb refuses a non-empty directory")
    monkeypatch.setenv("MARKETSTORE_EMBEDDED_DIR", str(data))
    line = fails("health")
    assert "embedded PostgreSQL" in line and "MARKETSTORE_DATABASE_URL" in line


def test_bad_query_input_is_one_line(database_url):
    line = fails("query", "prices", "AAPL", "--start", "yesterday", "--end", "2024-01-01", "--database", database_url)
    assert "start='yesterday'" in line


# -- ingest prices -------------------------------------------------------------

def _bars(n: int, symbol: str = "TEST", day: int = 2, minutes: int = 1) -> list[str]:
    """``n`` bars ``minutes`` apart from 14:30 UTC."""
    stamps = [dt.datetime(2024, 1, day, 14, 30) + dt.timedelta(minutes=i * minutes) for i in range(n)]
    return [f"{symbol},{t:%Y-%m-%dT%H:%M:%S}Z,10.0{i % 10},10.5,9.5,10.25,{100 + i}" for i, t in enumerate(stamps)]


def test_ingest_prices_loads_a_good_csv(db, raw, tmp_path, database_url):
    path = tmp_path / "bars.csv"
    path.write_text("\n".join([HEADER + ",interval"] + [line + ",1m" for line in _bars(40)]) + "\n")
    result = succeeds("ingest", "prices", path, "--database", database_url)
    assert "Loaded 40 price bars" in result.stdout
    assert result.stderr == ""  # no progress bar when not on a terminal
    assert count(raw, "prices", "symbol = 'TEST'") == 40
    with raw.cursor() as cur:
        cur.execute("SELECT open, volume, interval FROM prices WHERE symbol = 'TEST' ORDER BY timestamp LIMIT 1")
        assert cur.fetchone() == (Decimal("10.00"), Decimal(100), "1m")


def test_ingest_prices_twice_is_refused_and_upsert_updates(db, raw, tmp_path, database_url):
    path = tmp_path / "bars.csv"
    path.write_text("\n".join([HEADER] + _bars(3)) + "\n")
    succeeds("ingest", "prices", path, "--database", database_url)
    line = fails("ingest", "prices", path, "--database", database_url)
    assert "--upsert" in line and "TEST, 1m, 2024-01-02 14:30:00+00" in line
    path.write_text("\n".join([HEADER] + [b.replace(",10.25,", ",10.4,") for b in _bars(4)]) + "\n")
    assert "Inserted 1 and updated 3 price bars" in succeeds("ingest", "prices", path, "--upsert",
                                                             "--database", database_url).stdout
    assert count(raw, "prices") == 4
    assert count(raw, "prices", "close = 10.4") == 4


def test_ingest_prices_interval_option_fills_a_file_without_the_column(db, raw, tmp_path, database_url):
    path = tmp_path / "hourly.csv"
    hourly = _bars(3, minutes=60)
    path.write_bytes(("\r\n".join([HEADER] + hourly[:2] + [""] + hourly[2:]) + "\r\n").encode())
    assert "Loaded 3 price bars" in succeeds("ingest", "prices", path, "--interval", "1h",
                                             "--database", database_url).stdout
    assert count(raw, "prices", "interval = '1h'") == 3
    # The appended interval does not shift what an error names.
    path.write_text("\n".join([HEADER] + _bars(2, day=5, minutes=60) + ["TEST,2024-01-05T16:30:00Z,10,11,9,12,5"])
                    + "\n")
    message = fails("ingest", "prices", path, "--interval", "1h", "--database", database_url)
    assert "line 4" in message and "field 'close'" in message and "<= high" in message
    assert count(raw, "prices") == 3


def test_ingest_prices_upsert_keeps_the_last_of_a_bar_repeated_in_the_file(db, raw, tmp_path, database_url):
    path = tmp_path / "corrections.csv"
    first, second = _bars(1)[0], _bars(1)[0].replace(",10.25,", ",10.4,")
    path.write_text("\n".join([HEADER, first, second]) + "\n")
    assert "Inserted 1 and updated 0 price bars" in succeeds("ingest", "prices", path, "--upsert",
                                                             "--database", database_url).stdout
    with raw.cursor() as cur:
        cur.execute("SELECT close FROM prices")
        assert cur.fetchall() == [(Decimal("10.4"),)]


def test_ingest_prices_upsert_names_the_header_column_and_line_like_the_copy_path(db, raw, tmp_path, database_url):
    path = tmp_path / "bad.csv"
    path.write_text(f"{HEADER},vwap\nTEST,2024-01-03T14:30:00Z,10,11,9,10,5,10\n")
    message = fails("ingest", "prices", path, "--upsert", "--database", database_url)
    assert "line 1, field 'vwap'" in message and "expected a column of the header" in message
    path.write_bytes(f"\ufeff{HEADER}\n\nTEST,2024-01-03T14:30:00Z,10,11,9,10,x\n".encode())
    assert "line 3, field 'volume'" in fails("ingest", "prices", path, "--upsert", "--database", database_url)
    assert count(raw, "prices") == 0


BAD_PRICE_FILES = [
    # (name, file text, line, field or None, words in the message)
    ("non-numeric price on line 7", "\n".join([HEADER] + _bars(5) + ["TEST,2024-01-03T14:30:00Z,ten,11,9,10,1"]),
     7, "open", "decimal number"),
    ("missing column", "symbol,timestamp,open,high,low,volume\nTEST,2024-01-03T14:30:00Z,10,11,9,1", 1, "close",
     "expected a column of the header"),
    ("high below low", f"{HEADER}\nTEST,2024-01-03T14:30:00Z,10,11,9,10,1\nTEST,2024-01-03T14:31:00Z,10,9,11,10,1",
     3, "high", "high >= low"),
    ("bad timestamp", f"{HEADER}\nTEST,03/01/2024 14:30,10,11,9,10,1", 2, "timestamp", "ISO-8601"),
    # PostgreSQL would read it as 2003-04-25: only ISO 8601 reaches the server.
    ("two-digit year", f"{HEADER}\nTEST,03/04/25,10,11,9,10,1", 2, "timestamp", "ISO-8601"),
    ("negative volume", f"{HEADER}\nTEST,2024-01-03T14:30:00Z,10,11,9,10,-5", 2, "volume", ">= 0"),
    ("empty value", f"{HEADER}\nTEST,2024-01-03T14:30:00Z,10,,9,10,5", 2, "high", "the field is required"),
    ("bad symbol", f"{HEADER}\nTE ST,2024-01-03T14:30:00Z,10,11,9,10,5", 2, "symbol", "matching"),
    ("bad interval", f"{HEADER},interval\nTEST,2024-01-03T14:30:00Z,10,11,9,10,5,1 fortnight", 2, "interval",
     "a count and a unit"),
    ("ambiguous interval", f"{HEADER},interval\nTEST,2024-01-03T14:30:00Z,10,11,9,10,5,1M", 2, "interval",
     "'mo' for months"),
    ("unknown column", f"{HEADER},vwap\nTEST,2024-01-03T14:30:00Z,10,11,9,10,5,10", 1, "vwap",
     "expected a column of the header"),
    ("column twice", f"{HEADER},open\nTEST,2024-01-03T14:30:00Z,10,11,9,10,5,10", 1, "open", "each column once"),
    ("too few fields", f"{HEADER}\nTEST,2024-01-03T14:30:00Z,10,11,9", 2, None, "expected 7 fields"),
    ("too many fields", f"{HEADER}\nTEST,2024-01-03T14:30:00Z,10,11,9,10,5,6", 2, None, "expected 7 fields"),
    ("bar repeated in the file", "\n".join([HEADER] + _bars(2) + _bars(1)), 4, None,
     "appears earlier in the file"),
    ("relative timestamp", f"{HEADER}\nTEST,now,10,11,9,10,5", 2, "timestamp", "expected an ISO-8601 timestamp"),
    ("empty file", "", 1, "header", "the file is empty"),
]


@pytest.mark.parametrize("name, text, line, field, words", BAD_PRICE_FILES, ids=[c[0] for c in BAD_PRICE_FILES])
def test_ingest_prices_refuses_a_bad_file_and_loads_nothing(db, raw, tmp_path, database_url,
                                                            name, text, line, field, words):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    message = fails("ingest", "prices", path, "--database", database_url)
    assert str(path) in message
    if line is not None:
        assert f"line {line}" in message
    if field is not None:
        assert f"field '{field}'" in message
    assert words in message
    assert count(raw, "prices") == 0


def test_ingest_prices_with_a_bad_last_line_after_several_chunks_loads_nothing(db, raw, tmp_path, database_url):
    good = [f"TEST,{_minute(i)},1,1,1,1,1" for i in range(12_010)]  # several 64 KiB reads
    path = tmp_path / "big.csv"
    path.write_text("\n".join([HEADER] + good + ["TEST,2030-01-01T00:00:00Z,1,1,1,1,lots"]) + "\n")
    message = fails("ingest", "prices", path, "--database", database_url)
    assert f"line {len(good) + 2}" in message and "field 'volume'" in message
    assert count(raw, "prices") == 0


def _minute(i: int) -> str:
    from datetime import datetime, timedelta, timezone

    return (datetime(2024, 1, 1, tzinfo=timezone.utc) + timedelta(minutes=i)).isoformat()


def test_ingest_prices_refuses_a_file_that_is_not_utf8(db, raw, tmp_path, database_url):
    path = tmp_path / "latin1.csv"
    path.write_bytes(f"{HEADER}\nTEST,2024-01-03T14:30:00Z,10,11,9,10,5\nTÉST,x,1,1,1,1,1\n".encode("latin-1"))
    assert "line 3" in fails("ingest", "prices", path, "--database", database_url)
    assert count(raw, "prices") == 0


def test_ingest_prices_missing_file(database_url, tmp_path):
    line = fails("ingest", "prices", tmp_path / "nope.csv", "--database", database_url)
    assert line == f"Error: {tmp_path / 'nope.csv'}: field 'path': expected a readable file (No such file or directory)"


@pytest.mark.skipif(sys.platform == "win32", reason="needs a pseudo-terminal")
def test_ingest_shows_a_progress_bar_on_a_terminal(db, raw, tmp_path, database_url):
    path = tmp_path / "bars.csv"
    path.write_text("\n".join([HEADER] + _bars(50)) + "\n")
    leader, follower = pty.openpty()
    proc = subprocess.run([sys.executable, "-m", "marketstore.cli", "ingest", "prices", str(path),
                           "--database", database_url],
                          stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=follower, timeout=60)
    os.close(follower)
    shown = b""
    try:
        while chunk := os.read(leader, 4096):
            shown += chunk
    except OSError:  # EIO once the terminal is drained
        pass
    os.close(leader)
    assert proc.returncode == 0, shown
    assert b"prices" in shown and b"100%" in shown
    assert count(raw, "prices") == 50


# -- ingest articles -----------------------------------------------------------

def _article(i: int, **extra) -> str:
    return json.dumps({"title": f"Story {i} about widgets", "url": f"https://news.example.org/{i}",
                       "symbols": ["TEST"], "published_at": f"2024-01-02T10:{i:02d}:00Z",
                       "metadata": {"n": i}, **extra})


def test_ingest_articles_loads_json_lines_and_skips_known_urls(db, raw, tmp_path, database_url):
    path = tmp_path / "news.jsonl"
    path.write_text("\n".join([_article(i) for i in range(5)] + ["", json.dumps({"title": "No url"})]) + "\n")
    assert "Loaded 6 articles" in succeeds("ingest", "articles", path, "--database", database_url).stdout
    assert count(raw, "articles") == 6
    again = succeeds("ingest", "articles", path, "--database", database_url).stdout
    assert "5 already stored, skipped" in again
    assert count(raw, "articles") == 7  # only the article without a url is new


BAD_ARTICLE_LINES = [
    ("invalid JSON", '{"title": "x",', None, "expected valid JSON"),
    ("not an object", '["title"]', None, "expected a JSON object"),
    ("symbols not a list", json.dumps({"title": "x", "symbols": "TEST"}), "symbols", "a list of strings"),
    ("missing title", json.dumps({"content": "x"}), "title", "the field is required"),
    ("bad published_at", json.dumps({"title": "x", "published_at": "soon"}), "published_at", "ISO-8601"),
    ("ingested_at is the database's", json.dumps({"title": "x", "ingested_at": "2020-01-01"}), "ingested_at",
     "set by the database"),
    ("unknown field", json.dumps({"title": "x", "author": "me"}), "author", "expected a known field"),
]


@pytest.mark.parametrize("name, bad, field, words", BAD_ARTICLE_LINES, ids=[c[0] for c in BAD_ARTICLE_LINES])
def test_ingest_articles_refuses_a_bad_line_and_loads_nothing(db, raw, tmp_path, database_url,
                                                              name, bad, field, words):
    path = tmp_path / "news.jsonl"
    path.write_text("\n".join([_article(1), _article(2), bad, _article(3)]) + "\n")
    message = fails("ingest", "articles", path, "--database", database_url)
    assert str(path) in message and "line 3" in message and words in message
    if field:
        assert f"field '{field}'" in message
    assert count(raw, "articles") == 0


# -- the command line builds its line from the attributes ------------------------------

@pytest.mark.parametrize("text", [
    f"{HEADER}\nAAA,2024-01-02,1,2,1,2,3\n,,,,,,\n",
    f"{HEADER}\nAAA,2024-01-02,1,2,1,2,lots\n",
    f"{HEADER}\nAAA,2024-01-02T25:00,1,2,1,2,3\n",
    f"{HEADER},vwap\n",
])
@pytest.mark.parametrize("upsert", [False, True])
def test_the_cli_line_for_a_bad_file_is_built_from_the_error(prices, raw, tmp_path, database_url, text, upsert):
    path = tmp_path / "bad.csv"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(DataValidationError) as info:
        (prices.upsert_many if upsert else prices.copy_from)(path)
    error = info.value
    line = fails("ingest", "prices", path, *(["--upsert"] if upsert else []), "--database", database_url)
    assert line == (f"Error: {error.source}: line {error.line}, field '{error.field}': got {error.value!r}, "
                    f"expected {error.expected}")
    assert count_rows(raw, "prices") == 0


def test_the_cli_line_for_a_duplicate_bar_names_the_line_and_the_key(prices, tmp_path, database_url):
    path = tmp_path / "twice.csv"
    path.write_text(f"{HEADER}\nAAA,2024-01-02,1,2,1,2,3\nAAA,2024-01-02,1,2,1,2,3\n", encoding="utf-8")
    line = fails("ingest", "prices", path, "--database", database_url)
    assert line.startswith(f"Error: {path}: line 3: the bar (AAA, 1m, 2024-01-02 00:00:00+00) is already stored")

