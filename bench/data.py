"""Seeded OHLCV data: N one-minute bars over 50 symbols, and what they must load as.

The stream is in time order (each minute, every symbol that has a bar then), as a
live feed or a merged history delivers it. ``SYM00`` is heavy (N/10 bars: the
100,000-row range read and the month of resampling at N = 1,000,000); the other
49 share the rest. The read cases add 450 short "tail" symbols so that latest
price can be asked for 500 symbols that all exist.
"""
from __future__ import annotations

import csv
import datetime as dt
import random
from dataclasses import dataclass
from decimal import Decimal
from typing import Iterable, Iterator

UTC = dt.timezone.utc
T0 = dt.datetime(2024, 1, 1, tzinfo=UTC)
MINUTE = dt.timedelta(minutes=1)
SYMBOLS = [f"SYM{i:02d}" for i in range(50)]
HEAVY = SYMBOLS[0]
TAIL_SYMBOLS = [f"TL{i:03d}" for i in range(450)]
COLUMNS = ("symbol", "timestamp", "open", "high", "low", "close", "volume", "interval")
INTERVAL = "1m"


def counts(n: int) -> dict[str, int]:
    """Bars per symbol for an N-row data set (``HEAVY`` gets N/10)."""
    heavy = n // 10
    base, extra = divmod(n - heavy, len(SYMBOLS) - 1)
    return {HEAVY: heavy, **{s: base + (i < extra) for i, s in enumerate(SYMBOLS[1:])}}


def tail_counts(n: int) -> dict[str, int]:
    """Bars per tail symbol added for the read cases (100 each at N = 1,000,000)."""
    return dict.fromkeys(TAIL_SYMBOLS, max(2, n // 10_000))


def iter_rows(per_symbol: dict[str, int], seed: int = 42) -> Iterator[dict]:
    """One dict per bar (keys ``COLUMNS``; Decimal prices, aware UTC timestamps), in time order."""
    rng = random.Random(seed)
    cents = {s: 10_000 + 137 * i for i, s in enumerate(per_symbol)}
    ready = sorted(per_symbol.items(), key=lambda item: -item[1])
    hundredth = Decimal("0.01")
    for minute in range(ready[0][1] if ready else 0):
        while ready and ready[-1][1] <= minute:
            ready.pop()
        ts = T0 + minute * MINUTE
        for symbol, _ in sorted(ready):
            open_ = cents[symbol]
            close = max(100, open_ + int(rng.gauss(0, 8)))
            high = max(open_, close) + int(rng.random() * 6)
            low = max(1, min(open_, close) - int(rng.random() * 6))
            cents[symbol] = close
            yield {
                "symbol": symbol,
                "timestamp": ts,
                "open": Decimal(open_) * hundredth,
                "high": Decimal(high) * hundredth,
                "low": Decimal(low) * hundredth,
                "close": Decimal(close) * hundredth,
                "volume": Decimal(int(rng.random() * 100_000) + 1),
                "interval": INTERVAL,
            }


def rows(n: int, seed: int = 42) -> list[dict]:
    """The N-row ingest data set, materialised (so generating it is never timed)."""
    return list(iter_rows(counts(n), seed))


def tail_rows(n: int, seed: int = 43) -> list[dict]:
    """The 450 tail symbols the read cases add to the N ingest rows."""
    return list(iter_rows(tail_counts(n), seed))


@dataclass(frozen=True)
class Summary:
    """What a table must hold after a load: compared with the same figures in SQL."""

    count: int
    symbols: int
    sum_open: Decimal
    sum_close: Decimal
    sum_volume: Decimal
    first: dt.datetime | None
    last: dt.datetime | None


class Tally:
    """Accumulates a :class:`Summary` row by row (so a streamed CSV needs no list)."""

    def __init__(self) -> None:
        self.count = 0
        self.symbols: set[str] = set()
        self.sum_open = self.sum_close = self.sum_volume = Decimal(0)
        self.first = self.last = None

    def add(self, row: dict) -> dict:
        self.count += 1
        self.symbols.add(row["symbol"])
        self.sum_open += row["open"]
        self.sum_close += row["close"]
        self.sum_volume += row["volume"]
        ts = row["timestamp"]
        if self.first is None or ts < self.first:
            self.first = ts
        if self.last is None or ts > self.last:
            self.last = ts
        return row

    def summary(self) -> Summary:
        return Summary(self.count, len(self.symbols), self.sum_open, self.sum_close,
                       self.sum_volume, self.first, self.last)


def summarize(data: Iterable[dict]) -> Summary:
    tally = Tally()
    for row in data:
        tally.add(row)
    return tally.summary()


SUMMARY_SQL = (
    "SELECT count(*), count(DISTINCT symbol), coalesce(sum(open), 0), coalesce(sum(close), 0), "
    "coalesce(sum(volume), 0), min(timestamp), max(timestamp) FROM prices"
)


def csv_fields(row: dict) -> tuple:
    return (row["symbol"], row["timestamp"].isoformat(), row["open"], row["high"], row["low"],
            row["close"], row["volume"], row["interval"])


def write_csv(data: Iterable[dict], path) -> Summary:
    """Write ``data`` as CSV with a header line (``COLUMNS``), streaming; returns its summary."""
    tally = Tally()
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(COLUMNS)
        writer.writerows(csv_fields(tally.add(row)) for row in data)
    return tally.summary()


def latest(data: Iterable[dict], symbols: Iterable[str]) -> dict[str, tuple]:
    """symbol -> (timestamp, close) of its last bar, for the wanted symbols."""
    wanted = set(symbols)
    found: dict[str, tuple] = {}
    for row in data:
        if row["symbol"] in wanted:
            ts = row["timestamp"]
            if row["symbol"] not in found or ts > found[row["symbol"]][0]:
                found[row["symbol"]] = (ts, row["close"])
    return found


def resample(data: Iterable[dict], symbol: str, start, end) -> list[tuple]:
    """Hourly bars (bucket, open, high, low, close, volume) of ``symbol`` in [start, end)."""
    bars: dict[dt.datetime, list] = {}
    for row in data:
        ts = row["timestamp"]
        if row["symbol"] != symbol or not start <= ts < end:
            continue
        bucket = ts.replace(minute=0, second=0, microsecond=0)
        bar = bars.get(bucket)
        if bar is None:
            bars[bucket] = [ts, row["open"], row["high"], row["low"], ts, row["close"], row["volume"]]
            continue
        if ts < bar[0]:
            bar[0], bar[1] = ts, row["open"]
        if ts > bar[4]:
            bar[4], bar[5] = ts, row["close"]
        bar[2] = max(bar[2], row["high"])
        bar[3] = min(bar[3], row["low"])
        bar[6] += row["volume"]
    return [(b, v[1], v[2], v[3], v[5], v[6]) for b, v in sorted(bars.items())]
