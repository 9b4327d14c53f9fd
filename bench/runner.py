"""``python -m bench``: pick the database, run the cases, print the table, write JSON."""
from __future__ import annotations

import argparse
import os
import sys
import time
import traceback

from . import frames as _frames_case  # noqa: F401 - registers the frames case
from . import report, scaleout  # noqa: F401 - scaleout registers its case
from . import telemetry as _telemetry_case  # noqa: F401 - registers the telemetry case
from .cases import CASES
from .context import Context, dedicated_database
from .harness import Comparison, measure

ORDER = ("ingest", "upsert", "types", "scaling", "range", "latest", "resample", "sessions", "telemetry", "frames",
         "scaleout", "service")


def run(ctx: Context, names=ORDER, strict: bool = True, verbose: bool = False,
        on_result=lambda comparison: None) -> tuple[list[Comparison], list[dict]]:
    """Measure every comparison of the named cases; returns them and any case errors.

    ``strict`` re-raises the first failure (a wrong result is never a number);
    otherwise the case is recorded as an error and the run goes on.
    """
    done, errors = [], []
    for name in names:
        measured = []
        try:
            for comparison in CASES[name](ctx):
                ctx.log(f"-- {comparison.title}")
                repeat = ctx.repeat if ctx.quick else max(ctx.repeat, comparison.min_repeat)
                measure(comparison, repeat, ctx.log if verbose else lambda _: None, quick=ctx.quick)
                measured.append(comparison)
        except Exception as exc:
            if strict:
                raise
            ctx.log(traceback.format_exc())
            errors.append({"case": name, "error": f"{type(exc).__name__}: {exc}"})
        # Reported once the case is over: its last findings need all its numbers.
        for comparison in measured:
            on_result(comparison)
        done += measured
    return done, errors


def default_server() -> str:
    url = os.environ.get("MARKETSTORE_DATABASE_URL")
    if url:
        return url
    from marketstore.embedded import embedded_url

    return embedded_url()


def parse(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="marketstore against raw psycopg2 and SQLAlchemy 2, side by side, medians and ratios.")
    parser.add_argument("--rows", type=int, default=1_000_000, metavar="N",
                        help="rows ingested (default 1,000,000; 50 symbols of 1-minute bars)")
    parser.add_argument("--repeat", type=int, default=3, metavar="R",
                        help="alternated samples per contender (default 3); light operations "
                             "repeat inside a sample for at least 0.25 s")
    parser.add_argument("--only", metavar="NAME[,NAME]",
                        help=f"run only these cases: {', '.join(ORDER)}")
    parser.add_argument("--json", metavar="FILE", help="also write the numbers as JSON")
    parser.add_argument("--large", action="store_true", help="add the 5N-row step to the scaling case")
    parser.add_argument("--database", metavar="URL",
                        help="server to use (default MARKETSTORE_DATABASE_URL, else the embedded one); "
                             "the bench creates, migrates and drops its own database there")
    parser.add_argument("--keep-database", action="store_true", help="do not drop the bench database")
    parser.add_argument("-v", "--verbose", action="store_true", help="print every sample")
    args = parser.parse_args(argv)
    names = ORDER if not args.only else [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in CASES]
    if unknown:
        parser.error(f"unknown case(s) {', '.join(unknown)}: choose from {', '.join(ORDER)}")
    if args.rows < 1000 or args.repeat < 1:
        parser.error("--rows must be >= 1000 and --repeat >= 1")
    args.names = [n for n in ORDER if n in names]
    return args


def main(argv=None) -> int:
    args = parse(argv)

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    started = time.monotonic()
    with dedicated_database(args.database or default_server(), keep=args.keep_database) as url:
        ctx = Context(url, args.rows, args.repeat, large=args.large, log=log)
        try:
            info = report.machine(ctx.admin, args.rows, args.repeat, args.large)
            done, errors = run(ctx, args.names, strict=False, verbose=args.verbose,
                               on_result=lambda c: print(report.format_comparison(c) + "\n", flush=True))
        finally:
            ctx.close()
    info["load_average_end"] = os.getloadavg()
    info["seconds"] = round(time.monotonic() - started, 1)
    for error in errors:
        print(f"!! case {error['case']} failed: {error['error']}")
    if args.json:
        report.write_json(args.json, report.document(info, done, errors))
    return 1 if errors else 0
