"""The SQL of the price reads: stored intervals, series, bars in a range, buckets in a zone and their grid.

Every statement is served by the unique (symbol, interval, timestamp) index:
intervals and series by loose index scans (one probe per distinct value), a
range by one index range scan per symbol.
"""
from __future__ import annotations

from ..intervals import Timeframe, bucket_sql, step_sql, zone_name

# Per symbol: its first stored interval and the next one, if any (two probes): a second means
# the symbol has several and a read must be told which.
INTERVAL_PROBE = (
    'SELECT s.symbol, f.iv, (SELECT "interval" FROM prices WHERE symbol = s.symbol AND "interval" > f.iv '
    'ORDER BY "interval" LIMIT 1) FROM unnest(%s::text[]) AS s(symbol) '
    'CROSS JOIN LATERAL (SELECT "interval" AS iv FROM prices WHERE symbol = s.symbol ORDER BY "interval" LIMIT 1) AS f'
)
STORED_INTERVALS = (
    'WITH RECURSIVE i(iv) AS ((SELECT "interval" FROM prices WHERE symbol = %s ORDER BY "interval" LIMIT 1) '
    'UNION ALL SELECT (SELECT "interval" FROM prices WHERE symbol = %s AND "interval" > i.iv ORDER BY "interval" '
    'LIMIT 1) FROM i WHERE i.iv IS NOT NULL) SELECT iv FROM i WHERE iv IS NOT NULL'
)
# Every (symbol, interval) stored, with its first and last bar: a loose scan, then two probes each.
SERIES = (
    'WITH RECURSIVE k(symbol, iv) AS ('
    '  (SELECT symbol, "interval" FROM prices WHERE {first} ORDER BY symbol, "interval" LIMIT 1)'
    '  UNION ALL SELECT n.symbol, n.iv FROM k CROSS JOIN LATERAL (SELECT symbol, "interval" AS iv FROM prices '
    '    WHERE (symbol, "interval") > (k.symbol, k.iv) AND {next} ORDER BY symbol, "interval" LIMIT 1) AS n'
    ') SELECT k.symbol, k.iv, '
    '  (SELECT "timestamp" FROM prices WHERE symbol = k.symbol AND "interval" = k.iv ORDER BY "timestamp" LIMIT 1),'
    '  (SELECT "timestamp" FROM prices WHERE symbol = k.symbol AND "interval" = k.iv '
    '   ORDER BY "timestamp" DESC LIMIT 1) FROM k ORDER BY k.symbol, k.iv'
)
# The symbols wanted and each one's interval: joined to prices, it selects their bars.
WANTED = 'unnest(%s::text[], %s::text[]) WITH ORDINALITY AS w(symbol, iv, position)'


def in_range(start, end, column: str = '"timestamp"') -> tuple[str, list]:
    """``[start, end)`` as SQL; ``None`` leaves that side open."""
    parts, params = [], []
    if start is not None:
        parts.append(f"{column} >= %s")
        params.append(start)
    if end is not None:
        parts.append(f"{column} < %s")
        params.append(end)
    return (" AND " + " AND ".join(parts)) if parts else "", params


def buckets(frame: Timeframe, tz: str | None, start, end, wanted: list, *, adj_close: bool = False) -> tuple[str, list]:
    """Bars of the ``wanted`` symbols (``[symbols, intervals]``, :data:`WANTED`) in buckets of ``frame`` in ``tz``.

    Columns ``position, bucket, open, high, low, close, volume, bars`` (and
    ``adj_close``, the last one given): first open, max high, min low, last
    close, summed volume, the source bars counted; ordered by position
    (the symbol's place in the list), then bucket.
    """
    label, label_params = bucket_sql(frame, tz, 'p."timestamp"')
    where, where_params = in_range(start, end, 'p."timestamp"')
    adjusted = (', (array_agg(p.adj_close ORDER BY p."timestamp" DESC) FILTER (WHERE p.adj_close IS NOT NULL))[1]'
                ' AS adj_close') if adj_close else ""
    sql = (f'SELECT w.position, {label} AS bucket, (array_agg(p.open ORDER BY p."timestamp"))[1] AS open, '
           'max(p.high) AS high, min(p.low) AS low, (array_agg(p.close ORDER BY p."timestamp" DESC))[1] AS close, '
           f'sum(p.volume) AS volume, count(*) AS bars{adjusted} FROM {WANTED} '
           f'JOIN prices AS p ON p.symbol = w.symbol AND p."interval" = w.iv{where} '
           'GROUP BY w.position, bucket ORDER BY w.position, bucket')
    return sql, label_params + wanted + where_params


def grid(frame: Timeframe, tz: str | None, start, end, wanted: list, aggregated: str, params: list, *,
         carry: bool, adj_close: bool = False) -> tuple[str, list]:
    """Every bucket of ``[start, end)`` for each wanted symbol, left-joined to ``aggregated``.

    An empty bucket has no open/high/low/close (NULL), volume 0 and 0 bars;
    with ``carry`` its prices are the previous close (before ``start``: the
    last close stored before it).
    """
    name = zone_name(tz)
    first, first_params = bucket_sql(frame, tz, "%s::timestamptz", [start])  # the bucket holding start
    if frame.calendar:  # stepped on the zone's calendar: days of 23 or 25 hours, months of their length
        series = (f"SELECT g AT TIME ZONE %s AS bucket FROM generate_series({first} AT TIME ZONE %s, "
                  f"(%s::timestamptz AT TIME ZONE %s) - interval '1 microsecond', {step_sql(frame)}) AS g")
        series_params = [name] + first_params + [name, end, name]
    else:
        series = (f"SELECT g AS bucket FROM generate_series({first}, %s::timestamptz - interval '1 microsecond', "
                  f"{step_sql(frame)}) AS g")
        series_params = first_params + [end]
    extra = ", adj_close" if adj_close else ""  # the outer selects name the joined row's column
    joined = (f"SELECT w.position, w.symbol, w.iv, t.bucket, r.open, r.high, r.low, r.close, "
              f"coalesce(r.volume, 0) AS volume, coalesce(r.bars, 0) AS bars{extra and ', r.adj_close'} "
              f"FROM {WANTED} CROSS JOIN ({series}) AS t "
              f"LEFT JOIN ({aggregated}) AS r ON r.position = w.position AND r.bucket = t.bucket")
    joined_params = wanted + series_params + params
    if not carry:
        return (f"SELECT position, bucket, open, high, low, close, volume, bars{extra} FROM ({joined}) AS j "
                "ORDER BY position, bucket"), joined_params
    # The last close so far: a group per bucket with a close, its first row holding it.
    carried = ("coalesce(first_value(close) OVER (PARTITION BY position, seen ORDER BY bucket), "
               '(SELECT q.close FROM prices AS q WHERE q.symbol = c.symbol AND q."interval" = c.iv '
               'AND q."timestamp" < %s ORDER BY q."timestamp" DESC LIMIT 1))')
    filled = ", ".join(f"coalesce({n}, last_close) AS {n}" for n in ("open", "high", "low", "close"))
    return (f"SELECT position, bucket, {filled}, volume, bars{extra} FROM ("
            f"  SELECT *, {carried} AS last_close FROM ("
            f"    SELECT *, count(close) OVER (PARTITION BY position ORDER BY bucket) AS seen FROM ({joined}) AS j"
            f"  ) AS c) AS d ORDER BY position, bucket"), [start] + joined_params
