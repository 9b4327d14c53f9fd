"""``python -m bench.partitioning --rows N --database URL``: ``prices`` partitioned by month vs not.

The numbers of docs/SCALING.md (time partitioning of prices). Not part of the test run (nothing
imports it). On the server of ``URL`` it creates two databases named after
URL's database, ``<db>_flat`` and ``<db>_part``, migrates both with the
package's migrations, turns ``prices`` of ``<db>_part`` into a table
partitioned by RANGE on "timestamp", one partition per month (pg_partman if the
server has it, else plain DDL), loads the same N bars into both (in SQL, one
trading day per statement, the two databases alternating), then times, the two
tables alternating in every round (A, B, B, A, ...), medians of ``--repeat``:

- the package's own reads, called through ``PriceRepository`` on a
  ``DatabaseConnection`` per database: ``get_range`` (one symbol, a day; a
  calendar month; 30 days across a month boundary), ``latest_for_symbols`` (10
  and all symbols), ``resample`` (a month into 1-hour bars); every result is
  compared between the two tables, so a wrong one stops the run;
- retention: ``delete_before``'s ``DELETE`` of the oldest month on each table,
  and ``DETACH PARTITION`` + ``DROP TABLE`` of it, each in a transaction rolled
  back (so it can be repeated); then once for real, with the ``VACUUM`` the
  ``DELETE`` leaves to do;
- bulk ingest: ``COPY`` of one CSV file (the package's ``copy_from(path)``
  sends the file's body as is) into an empty flat and an empty partitioned
  table of the same schema, each truncated and checkpointed first.

``EXPLAIN (ANALYZE, BUFFERS)`` of every read on both tables is printed (and
written with ``--plans FILE``). The databases are dropped at the end unless
``--keep``; ``--reuse`` measures databases a ``--keep`` run left.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import statistics
import sys
import tempfile
import time
from urllib.parse import urlsplit

import psycopg2

from marketstore import DatabaseConnection, run_migrations
from marketstore.repositories import PRICE_ROW_COLUMNS, PriceRepository

from .context import with_database

UTC = dt.timezone.utc
SYMBOLS = 200
BARS_PER_DAY = 390  # a US equity session of 1-minute bars, 14:30-21:00 UTC
FIRST_DAY = dt.date(2026, 6, 1)  # a Monday; N = 10M ends late November
MIN_SAMPLE = 0.2  # seconds: a light read repeats inside one sample at least this long

# The package's statements (marketstore/repositories/prices.py), for EXPLAIN only:
# the timings call the repository itself.
_COLS = ", ".join(f'"{c}"' for c in PRICE_ROW_COLUMNS)
SQL_RANGE = (f'SELECT {_COLS} FROM prices WHERE symbol = %s AND "interval" = %s '
             'AND "timestamp" >= %s AND "timestamp" < %s ORDER BY "timestamp"')
SQL_LATEST = (f'SELECT p.* FROM unnest(%s::text[]) AS s(symbol) '
              f'CROSS JOIN LATERAL (SELECT {_COLS} FROM prices '
              '  WHERE prices.symbol = s.symbol AND prices."interval" = %s '
              '  ORDER BY prices."timestamp" DESC LIMIT 1) AS p')
SQL_RESAMPLE = ('SELECT date_bin(%s, "timestamp", %s) AS bucket, '
                '(array_agg(open ORDER BY "timestamp"))[1], max(high), min(low), '
                '(array_agg(close ORDER BY "timestamp" DESC))[1], sum(volume), count(*) '
                'FROM prices WHERE symbol = %s AND "interval" = %s AND "timestamp" >= %s AND "timestamp" < %s '
                'GROUP BY 1 ORDER BY 1')
SQL_DELETE = 'DELETE FROM prices WHERE "timestamp" < %s'  # delete_before's statement

# One trading day of bars for every symbol, in time order (all symbols of a
# minute, then the next minute), as a feed appends them. Deterministic, so
# both databases get the same rows; every value passes the table's CHECKs.
GENERATE = """
SELECT 'S' || lpad(s::text, 3, '0') AS symbol, ts AS "timestamp", o AS open,
       greatest(o, c) + 0.05 AS high, least(o, c) - 0.05 AS low, c AS close, v AS volume, '1m' AS "interval"
FROM generate_series(0, %(minutes)s - 1) AS m
CROSS JOIN generate_series(0, %(symbols)s - 1) AS s
CROSS JOIN LATERAL (SELECT %(day)s::timestamptz + interval '14 hours 30 minutes' + m * interval '1 minute' AS ts,
                           round((50 + s + 5 * sin((%(n)s * 390 + m) / 500.0 + s))::numeric, 2) AS o,
                           round((50 + s + 5 * sin((%(n)s * 390 + m + 1) / 500.0 + s))::numeric, 2) AS c,
                           ((m * 7919 + s * 104729) %% 5000 + 100)::numeric AS v) AS g
ORDER BY m, s
"""
INSERT = f'INSERT INTO prices (symbol, "timestamp", open, high, low, close, volume, "interval") {GENERATE}'

# The partitioned table: the same columns, defaults (the same sequence) and
# CHECKs, the same unique key; the primary key must contain the partition key.
PARTITIONED = """
ALTER TABLE {t} RENAME TO {t}_unpartitioned;
ALTER INDEX {t}_pkey RENAME TO {t}_unpartitioned_pkey;
ALTER INDEX {t}_symbol_interval_timestamp RENAME TO {t}_unpartitioned_key;
CREATE TABLE {t} (LIKE {t}_unpartitioned INCLUDING DEFAULTS INCLUDING CONSTRAINTS)
    PARTITION BY RANGE ("timestamp");
ALTER TABLE {t} ADD CONSTRAINT {t}_pkey PRIMARY KEY (id, "timestamp");
CREATE UNIQUE INDEX {t}_symbol_interval_timestamp ON {t} (symbol, "interval", "timestamp");
ALTER SEQUENCE {seq} OWNED BY {t}.id;
DROP TABLE {t}_unpartitioned;
"""


def trading_days(rows: int) -> tuple[list[dt.date], int]:
    """Weekdays from FIRST_DAY holding at least ``rows`` bars over SYMBOLS symbols; and the row count."""
    days, day = [], FIRST_DAY
    while len(days) * BARS_PER_DAY * SYMBOLS < rows:
        if day.weekday() < 5:
            days.append(day)
        day += dt.timedelta(days=1)
    return days, len(days) * BARS_PER_DAY * SYMBOLS


def months(days: list[dt.date]) -> list[dt.date]:
    first, last = days[0].replace(day=1), days[-1].replace(day=1)
    out = [first]
    while out[-1] < last:
        out.append(next_month(out[-1]))
    return out


def next_month(d: dt.date) -> dt.date:
    return (d.replace(day=28) + dt.timedelta(days=4)).replace(day=1)


def at(d: dt.date) -> dt.datetime:
    return dt.datetime(d.year, d.month, d.day, tzinfo=UTC)


class Bench:
    def __init__(self, server: str, rows: int, repeat: int, log):
        base = urlsplit(server).path.lstrip("/") or "bench_partitioning"
        self.server = server
        self.names = {"flat": f"{base}_flat", "part": f"{base}_part"}
        self.urls = {k: with_database(server, v) for k, v in self.names.items()}
        self.rows, self.repeat, self.log = rows, repeat, log
        self.days, self.total = trading_days(rows)
        self.months = months(self.days)
        self.results: dict = {"rows": self.total, "days": len(self.days), "symbols": SYMBOLS,
                              "first_day": str(self.days[0]), "last_day": str(self.days[-1])}
        self.plans: dict[str, str] = {}
        self.raw: dict = {}
        self.conns: dict = {}

    # -- setup ------------------------------------------------------------------
    def admin(self, sql: str) -> None:
        conn = psycopg2.connect(with_database(self.server, "postgres"))
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                cur.execute(sql)
        finally:
            conn.close()

    def create(self) -> None:
        for name in self.names.values():
            self.admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            self.admin(f'CREATE DATABASE "{name}"')
        for url in self.urls.values():
            run_migrations(url)
        self.connect()
        cur = self.raw["part"].cursor()
        cur.execute(PARTITIONED.format(t="prices", seq="prices_id_seq"))
        cur.execute("SELECT count(*) FROM pg_available_extensions WHERE name = 'pg_partman'")
        if cur.fetchone()[0]:
            # pg_partman 4.x: monthly native partitions from the first month, plus
            # p_premake months ahead of today, plus prices_default.
            cur.execute("CREATE SCHEMA partman; CREATE EXTENSION pg_partman SCHEMA partman")
            cur.execute("SELECT partman.create_parent('public.prices', 'timestamp', 'native', 'monthly', "
                        "p_premake := 2, p_start_partition := %s)", (str(self.months[0]),))
            self.results["partitions_by"] = "pg_partman " + self.one("part", "SELECT extversion FROM pg_extension "
                                                                              "WHERE extname = 'pg_partman'")
        else:
            for m in self.months:
                cur.execute(f"CREATE TABLE prices_p{m:%Y_%m} PARTITION OF prices "
                            "FOR VALUES FROM (%s) TO (%s)", (at(m), at(next_month(m))))
            cur.execute("CREATE TABLE prices_default PARTITION OF prices DEFAULT")
            self.results["partitions_by"] = "plain DDL"
        self.load()

    def connect(self) -> None:
        for key, url in self.urls.items():
            self.raw[key] = psycopg2.connect(url, options="-c timezone=UTC", application_name="bench-partitioning")
            self.raw[key].autocommit = True
            self.conns[key] = DatabaseConnection().initialize(url)

    def one(self, key: str, sql: str, params=None):
        with self.raw[key].cursor() as cur:
            cur.execute(sql, params)
            return cur.fetchone()[0]

    def timed(self, key: str, sql: str, params=None) -> float:
        with self.raw[key].cursor() as cur:
            start = time.perf_counter()
            cur.execute(sql, params)
            return time.perf_counter() - start

    def load(self) -> None:
        """The N bars into both tables, a day per statement, the two alternating (a timed comparison too)."""
        times = {"flat": [], "part": []}
        for n, day in enumerate(self.days):
            params = {"day": at(day), "n": n, "minutes": BARS_PER_DAY, "symbols": SYMBOLS}
            for key in (("flat", "part") if n % 2 == 0 else ("part", "flat")):
                times[key].append(self.timed(key, INSERT, params))
            if n % 20 == 19:
                self.log(f"  loaded {n + 1}/{len(self.days)} days")
        start = {}
        for key in ("flat", "part"):
            start[key] = time.perf_counter()
            self.timed(key, "VACUUM (ANALYZE) prices")
            start[key] = time.perf_counter() - start[key]
        self.results["load"] = {
            key: {"seconds_total": round(sum(t), 1), "day_median_s": round(statistics.median(t), 3),
                  "vacuum_analyze_s": round(start[key], 1)} for key, t in times.items()}
        self.results["load"]["day_ratio_part_over_flat"] = round(
            statistics.median(p / f for p, f in zip(times["part"], times["flat"])), 3)

    def describe(self) -> None:
        # A partitioned table has no storage of its own: sum its tree (pg_partition_tree
        # lists nothing for a plain table, hence the UNION with the relation itself).
        tree = "(SELECT '{0}'::regclass AS r UNION SELECT relid FROM pg_partition_tree('{0}')) AS t"
        self.results["sizes"] = {key: self.one(key, (
            "SELECT pg_size_pretty(sum(pg_total_relation_size(r))) || ' total, ' || "
            f"(SELECT pg_size_pretty(sum(pg_relation_size(r))) FROM {tree.format('prices_symbol_interval_timestamp')})"
            f" || ' unique index' FROM {tree.format('prices')}")) for key in ("flat", "part")}
        with self.raw["part"].cursor() as cur:
            cur.execute("SELECT c.relname, pg_get_expr(c.relpartbound, c.oid), c.reltuples::bigint, "
                        "pg_size_pretty(pg_total_relation_size(c.oid)) FROM pg_inherits i "
                        "JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = 'prices'::regclass "
                        "ORDER BY 1")
            self.results["partitions"] = [list(r) for r in cur.fetchall()]
        self.results["server"] = {
            "version": self.one("flat", "SHOW server_version"),
            "shared_buffers": self.one("flat", "SHOW shared_buffers"),
            "work_mem": self.one("flat", "SHOW work_mem"),
            "count_flat": self.one("flat", "SELECT count(*) FROM prices"),
            "count_part": self.one("part", "SELECT count(*) FROM prices"),
        }
        if self.results["server"]["count_flat"] != self.results["server"]["count_part"]:
            raise AssertionError(f"row counts differ: {self.results['server']}")

    # -- reads ------------------------------------------------------------------
    def reads(self) -> list[tuple]:
        """(name, repository call, SQL, params) of each read measured."""
        mid = self.days[len(self.days) // 2]
        month = self.months[len(self.months) // 2]
        m_start, m_end = at(month), at(next_month(month))
        across = m_start - dt.timedelta(days=15)
        day = (at(mid), at(mid) + dt.timedelta(days=1))
        sym = "S042"
        some = [f"S{i:03d}" for i in range(0, SYMBOLS, SYMBOLS // 10)]
        every = [f"S{i:03d}" for i in range(SYMBOLS)]
        hour = dt.timedelta(hours=1)
        origin = dt.datetime(2000, 1, 3, tzinfo=UTC)  # marketstore.repositories._sql.BUCKET_ORIGIN
        return [
            ("get_range, 1 symbol, 1 day", lambda r: r.get_range(sym, *day, as_tuples=True),
             SQL_RANGE, (sym, "1m", *day)),
            (f"get_range, 1 symbol, {month:%B}", lambda r: r.get_range(sym, m_start, m_end, as_tuples=True),
             SQL_RANGE, (sym, "1m", m_start, m_end)),
            ("get_range, 1 symbol, 30 days across 2 months",
             lambda r: r.get_range(sym, across, across + dt.timedelta(days=30), as_tuples=True),
             SQL_RANGE, (sym, "1m", across, across + dt.timedelta(days=30))),
            (f"latest_for_symbols, {len(some)} symbols", lambda r: r.latest_for_symbols(some),
             SQL_LATEST, (some, "1m")),
            (f"latest_for_symbols, {len(every)} symbols", lambda r: r.latest_for_symbols(every),
             SQL_LATEST, (every, "1m")),
            (f"resample, 1 symbol, {month:%B}, 1 hour", lambda r: r.resample(sym, m_start, m_end, "1 hour"),
             SQL_RESAMPLE, (hour, origin, sym, "1m", m_start, m_end)),
        ]

    @staticmethod
    def comparable(result):
        if isinstance(result, dict):
            return sorted((k, v.timestamp, v.close) for k, v in result.items())
        return [tuple(row[1:]) if len(row) == len(PRICE_ROW_COLUMNS) else tuple(row) for row in result]

    def measure_reads(self, only=None, label: str = "reads") -> None:
        """Each read (those named ``only``, else all), flat vs partitioned; results under ``label``."""
        repos = {key: PriceRepository(conn) for key, conn in self.conns.items()}
        out = []
        for name, call, sql, params in self.reads():
            if only is not None and not name.startswith(only):
                continue
            # warm-up, check, and how many calls make a sample last MIN_SAMPLE
            first = {key: call(repo) for key, repo in repos.items()}
            if not first["flat"] or self.comparable(first["flat"]) != self.comparable(first["part"]):
                raise AssertionError(f"{name}: the two tables disagree (or found nothing)")
            start = time.perf_counter()
            call(repos["flat"])
            inner = max(1, math.ceil(MIN_SAMPLE / max(time.perf_counter() - start, 1e-6)))
            times = {"flat": [], "part": []}
            for i in range(self.repeat):
                for key in (("flat", "part") if i % 2 == 0 else ("part", "flat")):
                    start = time.perf_counter()
                    for _ in range(inner):
                        call(repos[key])
                    times[key].append((time.perf_counter() - start) / inner)
            entry = self.summarise(name, times)
            entry.update(rows=len(first["flat"]), inner=inner)
            for key in ("flat", "part"):
                entry[f"plan_{key}"] = self.explain(key, name if label == "reads" else f"{name} ({label})",
                                                    sql, params)
            out.append(entry)
            self.log(f"  {name}: flat {entry['flat_ms']} ms, part {entry['part_ms']} ms, "
                     f"ratio {entry['ratio']}")
        self.results[label] = out

    def cluster(self) -> None:
        """CLUSTER the closed months the range reads touch, then measure those reads again.

        A feed appends every symbol's bar of a minute together, so one symbol's
        month is spread over as many heap pages as it has bars. A month that is
        over is never written again: rewriting its partition in (symbol,
        interval, timestamp) order locks only that partition. The same on the
        unpartitioned table would lock and rewrite all of it.
        """
        month = self.months[len(self.months) // 2]
        names = {f"prices_p{m:%Y_%m}" for m in (month, (month - dt.timedelta(days=1)).replace(day=1))}
        timings = {}
        with self.raw["part"].cursor() as cur:
            for name in sorted(names):
                start = time.perf_counter()
                cur.execute(f"CLUSTER {name} USING {name}_symbol_interval_timestamp_idx")
                cur.execute(f"ANALYZE {name}")
                timings[name] = round(time.perf_counter() - start, 1)
        self.results["cluster_seconds"] = timings
        self.log(f"  clustered {timings}")
        self.measure_reads(only="get_range, 1 symbol, " + f"{month:%B}", label="reads_clustered")
        first = self.results["reads_clustered"]
        self.measure_reads(only="get_range, 1 symbol, 30 days", label="reads_clustered_across")
        self.measure_reads(only="resample", label="reads_clustered_resample")
        self.results["reads_clustered"] = (first + self.results.pop("reads_clustered_across")
                                           + self.results.pop("reads_clustered_resample"))

    @staticmethod
    def summarise(name: str, times: dict) -> dict:
        med = {k: statistics.median(v) for k, v in times.items()}
        pair = [p / f for p, f in zip(times["part"], times["flat"])]
        return {"name": name, "flat_ms": round(med["flat"] * 1e3, 3), "part_ms": round(med["part"] * 1e3, 3),
                "ratio": round(med["part"] / med["flat"], 3),
                "pair_ratio_min_max": [round(min(pair), 2), round(max(pair), 2)],
                "spread_flat": round(max(times["flat"]) / min(times["flat"]), 2),
                "spread_part": round(max(times["part"]) / min(times["part"]), 2),
                "samples_ms": {k: [round(t * 1e3, 3) for t in v] for k, v in times.items()}}

    def explain(self, key: str, name: str, sql: str, params) -> dict:
        with self.raw[key].cursor() as cur:
            docs = []
            for _ in range(3):  # the median execution time of three; buffers are the same each time
                cur.execute("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + sql, params)
                docs.append(cur.fetchone()[0][0])
            doc = sorted(docs, key=lambda d: d["Execution Time"])[1]
            cur.execute("EXPLAIN (ANALYZE, BUFFERS, COSTS OFF, TIMING OFF) " + sql, params)
            self.plans[f"{name} [{key}]"] = "\n".join(r[0] for r in cur.fetchall())
        nodes, scans = [], {"partitions": set(), "executed": set(), "index_probes": 0}

        def walk(node):
            nodes.append(node["Node Type"])
            rel = node.get("Relation Name")
            if rel:
                scans["partitions"].add(rel)
                scans["index_probes"] += node.get("Actual Loops", 0)
                if node.get("Actual Loops", 0):
                    scans["executed"].add(rel)
            for child in node.get("Plans", []):
                walk(child)

        walk(doc["Plan"])
        plan = doc["Plan"]
        return {"top": " > ".join(dict.fromkeys(nodes))[:160],
                "relations_in_plan": len(scans["partitions"]), "relations_executed": len(scans["executed"]),
                "scan_loops": scans["index_probes"],
                "shared_hit": plan.get("Shared Hit Blocks"), "shared_read": plan.get("Shared Read Blocks"),
                "planning_ms": round(doc["Planning Time"], 3), "execution_ms": round(doc["Execution Time"], 3)}

    # -- retention --------------------------------------------------------------
    def oldest_partition(self) -> str:
        return self.one("part", "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                                "WHERE i.inhparent = 'prices'::regclass AND pg_get_expr(c.relpartbound, c.oid) "
                                "LIKE %s", (f"%FROM ('{self.months[0]}%",))

    def measure_retention(self) -> None:
        cutoff = at(self.months[1])
        part = self.oldest_partition()
        expected = self.one("flat", 'SELECT count(*) FROM prices WHERE "timestamp" < %s', (cutoff,))
        steps = {
            "flat: DELETE (delete_before)": ("flat", [(SQL_DELETE, (cutoff,))]),
            "part: DELETE (delete_before, pruned)": ("part", [(SQL_DELETE, (cutoff,))]),
            "part: DETACH PARTITION + DROP TABLE": ("part", [(f"ALTER TABLE prices DETACH PARTITION {part}", None),
                                                            (f"DROP TABLE {part}", None)]),
        }
        times = {k: [] for k in steps}
        rounds = max(3, min(self.repeat, 5))
        for i in range(rounds):
            order = list(steps) if i % 2 == 0 else list(reversed(steps))
            for label in order:
                key, statements = steps[label]
                conn = self.raw[key]
                conn.autocommit = False
                try:
                    with conn.cursor() as cur:
                        start = time.perf_counter()
                        for sql, params in statements:
                            cur.execute(sql, params)
                            if sql is SQL_DELETE and cur.rowcount != expected:
                                raise AssertionError(f"{label}: deleted {cur.rowcount}, expected {expected}")
                        times[label].append(time.perf_counter() - start)
                finally:
                    conn.rollback()
                    conn.autocommit = True
            self.log(f"  retention round {i + 1}/{rounds}")
        out = {label: {"median_s": round(statistics.median(t), 4), "samples_s": [round(x, 4) for x in t]}
               for label, t in times.items()}
        # Once for real: the DELETE's cost includes the VACUUM it leaves to do.
        flat_delete = self.timed("flat", SQL_DELETE, (cutoff,))
        flat_vacuum = self.timed("flat", "VACUUM prices")
        start = time.perf_counter()
        with self.raw["part"].cursor() as cur:
            cur.execute(f"ALTER TABLE prices DETACH PARTITION {part}")
            cur.execute(f"DROP TABLE {part}")
        part_drop = time.perf_counter() - start
        out["committed"] = {"flat DELETE": round(flat_delete, 2), "flat VACUUM after it": round(flat_vacuum, 2),
                            "part DETACH + DROP": round(part_drop, 4), "rows": expected,
                            "partition": part, "cutoff": str(cutoff)}
        self.results["retention"] = out

    # -- ingest -----------------------------------------------------------------
    def measure_ingest(self, copy_rows: int) -> None:
        """COPY one CSV (spanning every month) into an empty flat and an empty partitioned table."""
        minutes = max(1, min(BARS_PER_DAY, round(copy_rows / len(self.days) / SYMBOLS)))
        cur = self.raw["part"].cursor()
        cur.execute("DROP TABLE IF EXISTS ingest_flat, ingest_part")
        cur.execute("CREATE TABLE ingest_flat (LIKE prices INCLUDING DEFAULTS INCLUDING CONSTRAINTS)")
        cur.execute('ALTER TABLE ingest_flat ADD PRIMARY KEY (id); CREATE UNIQUE INDEX ON ingest_flat '
                    '(symbol, "interval", "timestamp")')
        cur.execute("CREATE TABLE ingest_part (LIKE prices INCLUDING DEFAULTS INCLUDING CONSTRAINTS) "
                    'PARTITION BY RANGE ("timestamp")')
        cur.execute('ALTER TABLE ingest_part ADD PRIMARY KEY (id, "timestamp"); CREATE UNIQUE INDEX ON ingest_part '
                    '(symbol, "interval", "timestamp")')
        for m in self.months:
            cur.execute(f"CREATE TABLE ingest_part_p{m:%Y_%m} PARTITION OF ingest_part "
                        "FOR VALUES FROM (%s) TO (%s)", (at(m), at(next_month(m))))
        cur.execute("CREATE TABLE ingest_part_default PARTITION OF ingest_part DEFAULT")
        columns = 'symbol, "timestamp", open, high, low, close, volume, "interval"'
        with tempfile.TemporaryDirectory(prefix="bench-partitioning-") as tmp:
            path = os.path.join(tmp, "prices.csv")
            with open(path, "w") as out:
                for n, day in enumerate(self.days):
                    sql = cur.mogrify(GENERATE, {"day": at(day), "n": n, "minutes": minutes, "symbols": SYMBOLS})
                    cur.copy_expert(f"COPY ({sql.decode()}) TO STDOUT WITH (FORMAT csv, HEADER {n == 0})", out)
            expected = len(self.days) * minutes * SYMBOLS
            times = {"flat": [], "part": []}
            for i in range(max(3, min(self.repeat, 5))):
                for key in (("flat", "part") if i % 2 == 0 else ("part", "flat")):
                    cur.execute(f"TRUNCATE ingest_{key}")
                    cur.execute("CHECKPOINT")
                    with open(path) as source:
                        start = time.perf_counter()
                        cur.copy_expert(f"COPY ingest_{key} ({columns}) FROM STDIN WITH (FORMAT csv, HEADER true)",
                                        source)
                        times[key].append(time.perf_counter() - start)
                    cur.execute(f"SELECT count(*) FROM ingest_{key}")
                    if cur.fetchone()[0] != expected:
                        raise AssertionError(f"ingest_{key}: wrong row count after COPY")
            size = os.path.getsize(path)
        cur.execute("DROP TABLE ingest_flat, ingest_part")
        entry = self.summarise("COPY", times)
        entry.update(rows=expected, csv_mb=round(size / 2**20, 1),
                     rows_per_s={k: round(expected / statistics.median(v)) for k, v in times.items()})
        self.results["ingest"] = entry
        self.log(f"  COPY {expected} rows: flat {entry['flat_ms']} ms, part {entry['part_ms']} ms")

    def latest_without_default(self) -> None:
        """latest_for_symbols on flat, partitioned, and partitioned with its DEFAULT partition detached.

        A DEFAULT partition makes PostgreSQL give up the ordered Append (newest
        partition first, stop at the first row) for a Merge Append that probes
        every partition. The DEFAULT is detached and attached again around each
        sample of the third contender (attaching an empty one is instant).
        """
        has_default = self.one("part", "SELECT count(*) FROM pg_class WHERE relname = 'prices_default'")
        if not has_default:
            return
        repos = {key: PriceRepository(conn) for key, conn in self.conns.items()}
        cur = self.raw["part"].cursor()
        out = []
        for count in (10, SYMBOLS):
            symbols = [f"S{i:03d}" for i in range(0, SYMBOLS, SYMBOLS // count)]
            expected = self.comparable(repos["flat"].latest_for_symbols(symbols))
            times = {"flat": [], "part": [], "part_no_default": []}
            inner = None
            for i in range(self.repeat):
                order = list(times) if i % 2 == 0 else list(reversed(times))
                for key in order:
                    repo = repos["flat" if key == "flat" else "part"]
                    if key == "part_no_default":
                        cur.execute("ALTER TABLE prices DETACH PARTITION prices_default")
                    try:
                        if self.comparable(repo.latest_for_symbols(symbols)) != expected:  # warm-up and check
                            raise AssertionError(f"latest_for_symbols ({key}) disagrees with the flat table")
                        if inner is None:
                            start = time.perf_counter()
                            repo.latest_for_symbols(symbols)
                            inner = max(1, math.ceil(MIN_SAMPLE / max(time.perf_counter() - start, 1e-6)))
                        start = time.perf_counter()
                        for _ in range(inner):
                            repo.latest_for_symbols(symbols)
                        times[key].append((time.perf_counter() - start) / inner)
                        if key == "part_no_default" and i == 0:
                            plan = self.explain("part", f"latest_for_symbols, {count} symbols, no DEFAULT partition",
                                                SQL_LATEST, (symbols, "1m"))
                    finally:
                        if key == "part_no_default":
                            cur.execute("ALTER TABLE prices ATTACH PARTITION prices_default DEFAULT")
            med = {k: statistics.median(v) for k, v in times.items()}
            entry = {"name": f"latest_for_symbols, {count} symbols", "inner": inner,
                     **{f"{k}_ms": round(v * 1e3, 3) for k, v in med.items()},
                     "part_over_flat": round(med["part"] / med["flat"], 3),
                     "no_default_over_flat": round(med["part_no_default"] / med["flat"], 3),
                     "samples_ms": {k: [round(t * 1e3, 3) for t in v] for k, v in times.items()},
                     "plan_no_default": plan}
            out.append(entry)
            self.log(f"  {entry['name']}: flat {entry['flat_ms']} ms, part {entry['part_ms']} ms, "
                     f"part without DEFAULT {entry['part_no_default_ms']} ms")
        self.results["latest_default_partition"] = out

    def close(self, keep: bool) -> None:
        for conn in self.conns.values():
            conn.close()
        for conn in self.raw.values():
            conn.close()
        if not keep:
            for name in self.names.values():
                self.admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.partitioning", description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=10_000_000, metavar="N",
                        help="bars to load (rounded up to whole trading days of 200 symbols; default 10M)")
    parser.add_argument("--database", metavar="URL", default=os.environ.get("MARKETSTORE_DATABASE_URL"),
                        help="server and name prefix: creates <db>_flat and <db>_part there "
                             "(default MARKETSTORE_DATABASE_URL)")
    parser.add_argument("--repeat", type=int, default=7, metavar="R", help="alternated samples (default 7)")
    parser.add_argument("--copy-rows", type=int, default=1_000_000, help="rows of the COPY ingest file")
    parser.add_argument("--json", metavar="FILE", help="write the numbers as JSON")
    parser.add_argument("--plans", metavar="FILE", help="write every EXPLAIN (ANALYZE, BUFFERS) as text")
    parser.add_argument("--keep", action="store_true", help="keep the two databases")
    parser.add_argument("--reuse", action="store_true", help="measure the databases a --keep run left")
    parser.add_argument("--skip", default="", help="comma-separated: reads, cluster, ingest, retention")
    args = parser.parse_args(argv)
    if not args.database:
        parser.error("--database URL (or MARKETSTORE_DATABASE_URL) is required")

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    bench = Bench(args.database, args.rows, args.repeat, log)
    if len(bench.months) < 2 or args.repeat < 1:
        # retention drops the oldest month and the reads need a month boundary to cross
        first_month = sum(1 for n in range(31) if (FIRST_DAY + dt.timedelta(days=n)).month == FIRST_DAY.month
                          and (FIRST_DAY + dt.timedelta(days=n)).weekday() < 5)
        parser.error(f"--rows {args.rows} covers {len(bench.months)} month(s): at least two are needed "
                     f"(> {first_month * BARS_PER_DAY * SYMBOLS:,} rows); --repeat must be >= 1")
    started = time.monotonic()
    bench.results["load_average_start"] = os.getloadavg()
    try:
        if args.reuse:
            bench.connect()
        else:
            log(f"creating {', '.join(bench.names.values())} and loading {bench.total} rows into each")
            bench.create()
        bench.describe()
        for step in ("reads", "ingest", "retention"):
            if step in skip:
                continue
            log(f"-- {step}")
            if step == "reads":
                bench.measure_reads()
                bench.latest_without_default()
                if "cluster" not in skip:
                    log("-- cluster")
                    bench.cluster()
            elif step == "ingest":
                bench.measure_ingest(args.copy_rows)
            else:
                bench.measure_retention()  # last: it drops the oldest month
    finally:
        bench.close(args.keep)
    bench.results["load_average_end"] = os.getloadavg()
    bench.results["seconds"] = round(time.monotonic() - started, 1)
    text = json.dumps(bench.results, indent=1, default=str)
    print(text)
    if args.json:
        with open(args.json, "w") as out:
            out.write(text + "\n")
    if args.plans:
        with open(args.plans, "w") as out:
            for name, plan in bench.plans.items():
                out.write(f"== {name}\n{plan}\n\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
