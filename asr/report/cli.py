"""The command line of :mod:`asr.report`: read the runs, compare them, write and print the report."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from asr.config import FINITE, Bound, OneLineParser, option_type
from asr.files import WriteError
from asr.report.grouping import compare, unique_labels
from asr.report.loading import load_run, warn
from asr.report.plots import UTIL_WINDOW_SECONDS
from asr.report.render import build_report, print_tables, write_report


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = OneLineParser(
        prog="asr.report",
        description="Compare training runs by time, cost and energy to accuracy (reads run directories).",
    )
    parser.add_argument(
        "runs", nargs="+", metavar="RUN_DIR", help="run directories (events.jsonl, recipe.yaml)"
    )
    parser.add_argument(
        "--baseline",
        metavar="NAME",
        help="run directory name, recipe name or rig label to compare against (default: first run)",
    )
    parser.add_argument("--out", metavar="DIR", default="report", help="output directory (default: ./report)")
    parser.add_argument(
        "--price-per-hour",
        type=option_type(float, Bound(0)),
        metavar="X",
        help="price per hour of use for every run, instead of the rig's amortized price",
    )
    parser.add_argument(
        "--window",
        type=option_type(float, FINITE),
        metavar="SECONDS_START",
        dest="window_start",
        help=f"start (run-clock seconds) of the {UTIL_WINDOW_SECONDS:g} s utilization plot window",
    )
    parser.add_argument("--no-plots", action="store_true", help="tables only (faster)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Exit status: 0, or 2 when no run could be read or the report could not be written (a usage error
    exits with 2 too, as ``SystemExit``)."""
    args = parse_args(argv)
    runs = [run for run in (load_run(path) for path in args.runs) if run is not None]
    if not runs:
        warn("no run could be read; nothing to report")
        return 2
    unique_labels(runs)
    comparison = compare(runs, args.baseline, args.price_per_hour)
    report = build_report(comparison, args.window_start, plots=not args.no_plots)
    out = Path(args.out)
    try:
        written = write_report(report, out)
    except WriteError as error:  # names the file (disk full, file-size limit)
        warn(str(error))
        return 2
    except OSError as error:
        warn(f"{out}: cannot write the report: {error.strerror or error}")
        return 2
    print_tables(report)
    print(
        f"\nwrote {', '.join(str(p) for p in written if p.suffix in ('.md', '.html'))} and {out / 'plots'}/"
    )
    return 0
