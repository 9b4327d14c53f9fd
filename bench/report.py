"""The printed table and the JSON document of one run (the same numbers in both)."""
from __future__ import annotations

import json
import os
import platform
import time

from .harness import Comparison


def machine(admin_conn, rows: int, repeat: int, large: bool) -> dict:
    """Where and how the numbers were taken."""
    import peewee
    import psycopg2
    import sqlalchemy

    with admin_conn.cursor() as cur:
        cur.execute("SHOW server_version")
        server = cur.fetchone()[0]
        cur.execute("SELECT inet_server_addr()::text")
        address = cur.fetchone()[0] or "unix socket"
    try:
        import pandas

        pandas_version = pandas.__version__
    except ImportError:
        pandas_version = None
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "cores": os.cpu_count(),
        "load_average": os.getloadavg(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "postgresql": server,
        "server_address": address,
        "peewee": peewee.__version__,
        "psycopg2": psycopg2.__version__.split()[0],
        "sqlalchemy": sqlalchemy.__version__,
        "pandas": pandas_version,
        "rows": rows,
        "repeat": repeat,
        "large": large,
    }


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds >= 1:
        return f"{seconds:.3f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.3f} ms"
    return f"{seconds * 1e6:.1f} us"


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def format_comparison(comparison: Comparison) -> str:
    doc = comparison.to_dict()
    width = max(len(c["name"]) for c in doc["contenders"]) + 2
    lines = [f"== {doc['title']}  (baseline: {doc['baseline']})",
             f"   {'contender':<{width}}{'median':>12}{doc['unit'] + '/s':>16}{'time/ref':>10}{'speed x':>9}"
             f"{'samples':>9}"]
    for c in doc["contenders"]:
        ratio = c["time_ratio"]
        time_ratio = "-" if ratio is None else f"{ratio:.3f}"
        speed = "-" if not ratio else f"{1 / ratio:.3f}"
        samples = f"{len(c['times'])}x{c['inner']}"
        lines.append(f"   {c['name']:<{width}}{duration(c['median']):>12}{_rate(c['per_second']):>16}"
                     f"{time_ratio:>10}{speed:>9}{samples:>9}")
    for t in doc["targets"]:
        lines.append("   " + format_target(t))
    for f in doc["findings"]:
        lines.append(f"   {'met    ' if f['met'] else 'NOT MET'}  {f['label']}: {f['value']} (goal {f['goal']})")
    return "\n".join(lines)


def format_target(t: dict) -> str:
    status = {True: "met    ", False: "NOT MET", None: "n/a    "}[t["met"]]
    ratio = "-" if t["ratio"] is None else f"{t['ratio']:.3f}"
    if t["kind"] == "speed>=":
        what = f"speed {ratio}x of {t['reference']} (goal >= {t['value']:g}x)"
    else:
        what = f"time {ratio}x of {t['reference']} (goal <= {t['value']:g}x)"
    label = f" [{t['label']}]" if t["label"] else ""
    return f"{status}  {t['contender']}: {what}{label}"


def document(info: dict, comparisons: list[Comparison], errors: list[dict]) -> dict:
    return {"machine": info, "comparisons": [c.to_dict() for c in comparisons], "errors": errors}


def write_json(path: str, doc: dict) -> None:
    with open(path, "w") as handle:
        json.dump(doc, handle, indent=2, default=str)
        handle.write("\n")
