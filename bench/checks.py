"""Checks of what a contender loaded or returned: results normalised, then compared."""
from __future__ import annotations

from decimal import Decimal


def expect(actual, expected, what: str) -> None:
    assert actual == expected, f"{what}: got {_short(actual)}, expected {_short(expected)}"


def _short(value) -> str:
    text = repr(value)
    return text if len(text) < 300 else text[:300] + "..."


BAR_FIELDS = ("timestamp", "open", "high", "low", "close", "volume")


def bars_of(result) -> list[tuple]:
    """(timestamp, open, high, low, close, volume) of models, dicts or full-row tuples."""
    out = []
    for row in result:
        if isinstance(row, dict):
            out.append(tuple(row[f] for f in BAR_FIELDS))
        elif isinstance(row, tuple) and len(row) in (9, 10):  # id, symbol, timestamp, ..., interval[, adj_close]
            out.append(tuple(row[2:8]))
        elif isinstance(row, tuple):
            out.append(tuple(row))
        else:
            out.append(tuple(getattr(row, f) for f in BAR_FIELDS))
    return out


def latest_of(result: dict) -> dict[str, tuple]:
    """symbol -> (timestamp, close) of a latest-price result (models or raw rows)."""
    out = {}
    for symbol, row in result.items():
        out[symbol] = (row[2], row[6]) if isinstance(row, tuple) else (row.timestamp, row.close)
    return out


def resampled_of(result) -> list[tuple]:
    """(bucket, open, high, low, close, volume) of tuples, dicts or objects."""
    fields = ("bucket", "open", "high", "low", "close", "volume")
    out = []
    for row in result:
        if isinstance(row, dict):
            out.append(tuple(row[f] for f in fields))
        elif isinstance(row, tuple) and not hasattr(row, "_fields"):  # a plain tuple, not a named one
            out.append(tuple(row))
        else:
            out.append(tuple(getattr(row, f) for f in fields))
    return out


def frame_close_to(frame, expected: list[tuple], tolerance=Decimal("0.0001")) -> None:
    """A pandas OHLCV frame (float64) equals ``expected`` bars to ``tolerance``."""
    got = [(ts.to_pydatetime(), *values) for ts, values in zip(frame.index, frame.itertuples(index=False))]
    expect(len(got), len(expected), "hourly bars from pandas")
    for mine, theirs in zip(got, expected):
        assert mine[0] == theirs[0], f"pandas bucket {mine[0]} != {theirs[0]}"
        assert all(abs(Decimal(repr(a)) - b) < tolerance for a, b in zip(mine[1:], theirs[1:])), \
            f"pandas bar {mine} != {theirs}"
