"""Frames out: a query's rows as a pandas or polars DataFrame or a pyarrow Table, via binary ``COPY``.

The query casts every number to ``float8`` (and a symbol to its position in
the list asked for, ``int4``) on the server, so each row of ``COPY ... TO
STDOUT (FORMAT binary)`` has the same size: NumPy reads the whole answer as
one structured array with no parsing at all, and each column is one
byte-swapping copy. Columns are never NULL here (the table's columns are NOT
NULL), which the fixed row size relies on; a size that does not divide is
refused rather than misread.
"""
from __future__ import annotations

import io

from ..errors import DataValidationError, QueryError
from ..intervals import Timeframe, step_sql, zone_name
from ._frame_chunks import need
from ._price_sql import WANTED, buckets, grid, in_range

LIBRARIES = ("pandas", "polars", "arrow")
FILLS = ("nan", "locf")
_PRICES = ("open", "high", "low", "close")
_SIGNATURE = b"PGCOPY\n\xff\r\n\x00"
_HEADER = len(_SIGNATURE) + 8  # flags and header-extension length (0)
_EPOCH_2000_US = 946_684_800 * 1_000_000  # PostgreSQL's binary timestamps count from 2000-01-01 UTC
_SIZES = {"int4": 4, "int8": 8, "float8": 8, "timestamptz": 8}


def check_library(value) -> str:
    """``value`` when it is one of :data:`LIBRARIES` and installed (checked before any query runs)."""
    if value not in LIBRARIES:
        raise DataValidationError("library", value, f"one of {', '.join(LIBRARIES)}")
    need("numpy")
    need("pyarrow" if value == "arrow" else value)
    return value


def frame_query(frame: Timeframe | None, tz: str | None, start, end, wanted: list, fill: str | None,
                widths: list[str], wrap=None) -> tuple[str, list, list[tuple[str, str]]]:
    """``(sql, params, columns)`` of the bars of ``wanted`` (``[symbols, intervals]``) for :func:`fetch_columns`.

    ``widths`` are the symbols' bar widths as PostgreSQL intervals (for raw
    bars). The inner query has ``position, symbol, bar_start, bar_end`` (the
    bar's close: start + width, or the next bucket's start) and the values;
    the outer one casts every number to ``float8`` (a NULL to NaN: an empty
    bucket's prices, a bar without an adjusted close) so each row of the
    binary answer has the same size. ``wrap(inner, params, names)``, when
    given (``names``: the inner query's columns), returns ``(sql, params,
    columns)``: a query of those columns plus ``columns`` (``(name, type)``,
    never NULL), which are selected after the rest.
    """
    def number(name: str) -> str:
        return f"coalesce({name}::float8, 'NaN')"

    columns = [("position", "int4"), ("timestamp", "timestamptz")] + [(n, "float8") for n in _PRICES + ("volume",)]
    if frame is None:
        where, params = in_range(start, end, 'p."timestamp"')
        inner = (f'SELECT w.position, w.symbol, p."timestamp" AS bar_start, '
                 f'p."timestamp" + (%s::interval[])[w.position] AS bar_end, '
                 f'p.open, p.high, p.low, p.close, p.volume, p.adj_close FROM {WANTED} '
                 f'JOIN prices AS p ON p.symbol = w.symbol AND p."interval" = w.iv{where}')
        params = [widths] + wanted + params
        counted = ""
    else:
        inner, params = buckets(frame, tz, start, end, wanted, adj_close=True)
        if fill is not None:
            inner, params = grid(frame, tz, start, end, wanted, inner, params, carry=fill == "locf", adj_close=True)
        name = zone_name(tz)
        end_of = (f"((bucket AT TIME ZONE %s) + {step_sql(frame)}) AT TIME ZONE %s" if frame.calendar
                  else f"bucket + {step_sql(frame)}")
        inner = (f"SELECT b.position, w.symbol, b.bucket AS bar_start, {end_of} AS bar_end, b.open, b.high, b.low, "
                 f"b.close, b.volume, b.bars, b.adj_close FROM ({inner}) AS b JOIN {WANTED} ON w.position = b.position")
        params = ([name, name] if frame.calendar else []) + params + wanted
        counted, columns = ", bars::int8", columns + [("bars", "int8")]
    extra = []
    if wrap is not None:
        names = ["position", "symbol", "bar_start", "bar_end", *_PRICES, "volume"] + (["bars"] if counted else [])
        inner, params, extra = wrap(inner, params, names + ["adj_close"])
    added = "".join(f", {name}" for name, _ in extra)
    sql = (f"SELECT position::int4, bar_start, {', '.join(number(n) for n in _PRICES)}, volume::float8{counted}, "
           f"{number('adj_close')}{added} FROM ({inner}) AS q ORDER BY symbol, bar_start")
    return sql, params, columns + [("adj_close", "float8")] + extra


def fetch_columns(db, sql: str, params, columns: list[tuple[str, str]]) -> dict:
    """``{name: numpy array}`` of ``sql``'s rows; ``columns`` are ``(name, type)`` in its select order.

    Types are ``int4``, ``int8``, ``float8`` and ``timestamptz`` (read as
    ``datetime64[us]``, UTC). Runs on the session's connection ``db``.
    """
    np = need("numpy")
    fields = [(" fields", ">i2")]
    for name, kind in columns:
        fields += [(f" {name} size", ">i4"), (name, f">{'f' if kind == 'float8' else 'i'}{_SIZES[kind]}")]
    layout = np.dtype(fields)
    cursor = db.connection().cursor()
    try:
        query = cursor.mogrify(sql, params).decode()
        buffer = io.BytesIO()
        cursor.copy_expert(f"COPY ({query}) TO STDOUT WITH (FORMAT binary)", buffer)
    finally:
        cursor.close()
    data = buffer.getbuffer()
    body = data[_HEADER:len(data) - 2]
    if bytes(data[:len(_SIGNATURE)]) != _SIGNATURE or len(body) % layout.itemsize:
        raise QueryError(f"unexpected binary COPY answer ({len(data)} bytes, rows of {layout.itemsize})")
    rows = np.frombuffer(body, layout)
    if len(rows) and (rows[" fields"] != len(columns)).any():
        raise QueryError("unexpected binary COPY answer (a row with another number of columns)")
    out = {}
    for name, kind in columns:
        values = rows[name]
        if kind == "timestamptz":
            out[name] = (values.astype("<i8") + _EPOCH_2000_US).view("datetime64[us]")
        else:
            out[name] = values.astype(values.dtype.newbyteorder("<"))
    del rows, body
    data.release()
    return out


def build_frame(values: dict, symbols: list[str] | None, kind: str, tz: str | None = None):
    """The frame of ``values`` (from :func:`frame_query`) for ``kind``.

    ``position`` holds 1-based positions in ``symbols``: a ``symbol`` level
    (or column) for a list, dropped for one symbol. ``adj_close`` is kept
    only when a bar has one. Timestamps are shown in ``tz`` (``None``: UTC).
    pandas: indexed by ``timestamp`` (with ``symbol`` first for a list);
    polars and arrow: those as leading columns.
    """
    np = need("numpy")
    codes = values.pop("position").astype(np.int64) - 1
    if "adj_close" in values and np.isnan(values["adj_close"]).all():
        del values["adj_close"]
    if symbols is not None:
        values["symbol"] = np.asarray(symbols, dtype=object)[codes] if len(codes) else np.array([], dtype=object)
    zone = tz or "UTC"
    if kind == "pandas":
        pd = need("pandas")
        stamps = pd.DatetimeIndex(values.pop("timestamp"), name="timestamp").tz_localize("UTC").tz_convert(zone)
        if symbols is None:
            return pd.DataFrame(values, index=stamps, copy=False)
        names = values.pop("symbol")
        frame = pd.DataFrame(values, copy=False)
        frame.index = pd.MultiIndex.from_arrays([pd.Index(names, name="symbol", dtype=object), stamps])
        return frame
    pa = need("pyarrow")
    arrays = {}
    if symbols is not None:
        arrays["symbol"] = pa.array(values.pop("symbol"), pa.string())
    arrays["timestamp"] = pa.array(values.pop("timestamp"), pa.timestamp("us", tz=zone))
    arrays.update((name, pa.array(column)) for name, column in values.items())
    table = pa.table(arrays)
    return table if kind == "arrow" else need("polars").from_arrow(table)
