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
from ._frames import need

LIBRARIES = ("pandas", "polars", "arrow")
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


def build_frame(values: dict, index: list[str], symbols: list[str] | None, kind: str):
    """The frame of ``values`` for ``kind``.

    ``symbols``: a ``symbol`` column holds 1-based positions in this list.
    pandas: indexed by ``index`` (``timestamp`` UTC, with ``symbol`` first
    for a list); polars and arrow: those as leading columns.
    """
    np = need("numpy")
    if symbols is not None:
        codes = values["symbol"].astype(np.int64) - 1
        values["symbol"] = np.asarray(symbols, dtype=object)[codes] if len(codes) else np.array([], dtype=object)
    if kind == "pandas":
        pd = need("pandas")
        stamps = pd.DatetimeIndex(values.pop("timestamp"), name="timestamp").tz_localize("UTC")
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
    arrays["timestamp"] = pa.array(values.pop("timestamp"), pa.timestamp("us", tz="UTC"))
    arrays.update((name, pa.array(column)) for name, column in values.items())
    table = pa.table(arrays)
    return table if kind == "arrow" else need("polars").from_arrow(table)
