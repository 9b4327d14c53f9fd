"""Re-upserting a frame: the bars it gives exactly as stored are found before anything is sent.

``upsert_many`` of a frame whose first bar is stored already (a re-run of a
daily load, a vendor's overlapping history) reads, chunk by chunk, the stored
bars in each symbol's time range of the chunk (an index range scan, as binary
``COPY``) and compares them with the chunk in numpy. Only new or changed bars
go on to the staging table and the merge; the rest count as unchanged.

Exact, not approximate: the server sends each stored ``NUMERIC`` value as one
int8 (its units of 1e-8, or a large integer as itself; see :data:`_ENCODED`),
and the client encodes the value the frame's would be stored as -- its text
rounded half away from zero to 8 decimals -- only where that is certain: the
float ``x`` the frame holds is an integer (below 2**53), or the float nearest
to a number of 8 decimals below 2**24 (where floats are closer together than
1e-8, so the text written for ``x`` rounds to that number and no other). Any
other value (more decimals, larger; read from text or a decimal column, beyond
2**20) counts as changed, and the server compares it exactly, as before.

Equal rows are left out only when no key appears twice in the frame (the last
of a repeated key wins, which a row-by-row filter cannot know) and when most of
each chunk is stored unchanged (else reading the stored bars would cost more
than it saves): otherwise the frame is staged whole.
"""
from __future__ import annotations

from ._frames_out import fetch_columns
from ._frame_chunks import need

_VALUES = ("open", "high", "low", "close", "volume", "adj_close")
_EXACT_FLOAT = 2.0**24  # below it, values of 8 decimals have distinct float8s (spacing < 1e-8 / 2)
_EXACT_READ = 2.0**20  # the same for a float read from text or a decimal, a few spacings off at worst
_WHOLE = 2.0**53  # integers below it are floats exactly
_WORTH_IT = 0.5  # a chunk with more changed rows than this share is staged whole
_UNITS, _SMALL, _LARGE = 10**8, 9 * 10**10, 9 * 10**18
_NULL, _OTHER = -(2**63), -(2**63) + 1
# Each stored value as one int8, exactly (arithmetic, no text): below 9e10, its units of 1e-8; a
# larger integer (a volume: NUMERIC(24, 8) stays under 1e16) as 9e18 + itself, signed; _NULL for
# none, _OTHER for a large value with decimals (never equal: the frame's is uncertain there).
_ENCODED = ("CASE WHEN {v} IS NULL THEN {null} WHEN abs({v}) < {small} THEN ({v} * {units})::int8 "
            "WHEN {v} = trunc({v}) THEN (sign({v}) * ({large} + abs({v})))::int8 ELSE {other} END")
_STORED = (
    "SELECT r.n::int4, p.\"timestamp\", "
    + ", ".join(_ENCODED.format(v=f"p.{c}", null=_NULL, small=_SMALL, units=_UNITS, large=_LARGE, other=_OTHER)
                for c in _VALUES)
    + " FROM unnest(%s::text[], %s::text[], %s::timestamptz[], %s::timestamptz[]) WITH ORDINALITY "
    "AS r(symbol, iv, lo, hi, n) CROSS JOIN LATERAL (SELECT * FROM prices AS p WHERE p.symbol = r.symbol "
    "AND p.\"interval\" = r.iv AND p.\"timestamp\" BETWEEN r.lo AND r.hi OFFSET 0) AS p"
)
_COLUMNS = [("range", "int4"), ("timestamp", "timestamptz")] + [(c, "int8") for c in _VALUES]


def without_unchanged(db, stream):
    """``(a stream of the changed and new rows only, the number of rows left out)``, or ``None``.

    ``None``: nothing left out (a key given twice, or chunks mostly changed):
    stage ``stream`` whole.
    """
    np, pa, pc = need("numpy"), need("pyarrow"), need("pyarrow.compute")
    keep, skipped, codes, stamps, pairs = {}, 0, [], [], {}
    for offset, facts in stream.checked():
        table = facts.table
        text = [pc.cast(table[name], "large_string") for name in ("symbol", "interval")]
        key = pc.binary_join_element_wise(*text, pa.scalar("\x1f", pa.large_string()))
        key = key.combine_chunks().dictionary_encode()
        local = key.indices.to_numpy(zero_copy_only=False).astype(np.int64)
        names = key.dictionary.to_pylist()
        codes.append(np.array([pairs.setdefault(n, len(pairs)) for n in names], dtype=np.int64)[local])
        stamps.append(facts.micros)
        equal = _stored_equal(db, names, local, facts, np)
        if (~equal).mean() > _WORTH_IT:
            return None
        skipped += int(equal.sum())
        if not equal.all():
            keep[offset] = ~equal
    if not stamps or _repeated(np.concatenate(codes), np.concatenate(stamps), np):
        return None
    return stream.filtered(keep), skipped


def _stored_equal(db, names: list[str], local, facts, np):
    """Whether each row of the chunk is stored with exactly these values."""
    micros = facts.micros
    lo = np.full(len(names), np.iinfo(np.int64).max)
    hi = np.full(len(names), np.iinfo(np.int64).min)
    np.minimum.at(lo, local, micros)
    np.maximum.at(hi, local, micros)
    symbols, intervals = zip(*(n.split("\x1f") for n in names))
    stamps = [np.datetime_as_string(t.astype("datetime64[us]")).tolist() for t in (lo, hi)]
    stamps = [[f"{t}+00" for t in side] for side in stamps]
    stored = fetch_columns(db, _STORED, [list(symbols), list(intervals), *stamps], _COLUMNS)
    found = _match(local, micros, stored["range"].astype(np.int64) - 1,
                   stored["timestamp"].astype(np.int64), np)
    hit = found >= 0
    equal = hit.copy()
    for name in _VALUES:
        units, certain = _units(facts.floats[name][hit], facts.exact[name], np)
        equal[hit] &= certain & (units == stored[name][found[hit]])
    return equal


def _units(x, exact: bool, np):
    """``(codes, certain)``: each float of ``x`` encoded as :data:`_STORED` encodes the value the server
    would store for it, and whether that is certain; an uncertain one is compared by the server."""
    codes = np.zeros(len(x), dtype=np.int64)
    with np.errstate(invalid="ignore", over="ignore"):
        size = np.abs(x)
        scaled = np.round(x * 1e8)
        eighths = (size < (_EXACT_FLOAT if exact else _EXACT_READ)) & (scaled / 1e8 == x)
        whole = (x == np.trunc(x)) & (size < (_WHOLE if exact else _EXACT_READ))
        large = whole & (size >= _SMALL)
    codes[eighths] = scaled[eighths].astype(np.int64)
    codes[whole & ~large] = x[whole & ~large].astype(np.int64) * _UNITS
    codes[large] = np.sign(x[large]).astype(np.int64) * (_LARGE + size[large].astype(np.int64))
    missing = np.isnan(x)
    codes[missing] = _NULL
    return codes, eighths | whole | missing


def _match(codes, micros, stored_codes, stored_micros, np):
    """For each ``(codes, micros)`` key, the index of the same key among the stored ones, else -1."""
    m = len(stored_codes)
    found = np.full(len(codes), -1, dtype=np.int64)
    if m == 0:
        return found
    allc, allt = np.concatenate([stored_codes, codes]), np.concatenate([stored_micros, micros])
    tag = np.concatenate([np.zeros(m, dtype=np.int8), np.ones(len(codes), dtype=np.int8)])
    order = np.lexsort((tag, allt, allc))  # by key, the stored one first
    same = (allc[order][1:] == allc[order][:-1]) & (allt[order][1:] == allt[order][:-1])
    pair = same & (order[:-1] < m) & (order[1:] >= m)
    found[order[1:][pair] - m] = order[:-1][pair]
    return found


def _repeated(codes, micros, np) -> bool:
    """Whether a key ``(codes, micros)`` appears twice."""
    order = np.lexsort((micros, codes))
    return bool(((codes[order][1:] == codes[order][:-1]) & (micros[order][1:] == micros[order][:-1])).any())
