"""Peak memory of one ``PriceRepository.copy_from(CSV)`` in a fresh interpreter.

``python -m bench.memprobe URL CSV`` prints one JSON line: rows loaded, seconds,
the resident set before the load (after imports and a first connection) and
the peak resident set of the process, in MB. Run by the scaling case.
"""
from __future__ import annotations

import json
import sys
import time


def status_mb(key: str) -> float:
    """``VmRSS`` (now) or ``VmHWM`` (peak) of this process, in MB.

    Not ``getrusage().ru_maxrss``: Linux carries it across exec, so a child of
    the (large) bench process would report the parent's size.
    """
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"{key} not in /proc/self/status")


def reset_peak() -> None:
    """Restart ``VmHWM`` from the current RSS (Linux >= 4.0), so the peak is the load's own."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:  # not permitted here: the peak then also covers the imports
        pass


def peak_of(load) -> dict:
    """Run ``load()`` and measure it: ``{count, seconds, baseline_mb, peak_mb}`` (RSS before, peak during)."""
    baseline = status_mb("VmRSS")
    reset_peak()
    started = time.perf_counter()
    count = load()
    elapsed = time.perf_counter() - started
    return {"count": count, "seconds": elapsed, "baseline_mb": baseline, "peak_mb": status_mb("VmHWM")}


def main(url: str, path: str) -> None:
    import marketstore

    marketstore.initialize_database(url)
    repo = marketstore.PriceRepository()
    with marketstore.get_db_session() as db:
        db.execute_sql("SELECT 1").fetchone()
    measured = peak_of(lambda: repo.copy_from(path))
    marketstore.close_database()
    print(json.dumps(measured))


if __name__ == "__main__":
    main(*sys.argv[1:3])
