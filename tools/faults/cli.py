"""The command line: plan, run the trials side by side, print the table."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from asr.config import Bound, OneLineParser, option_type
from tools.faults.checks import Trial
from tools.faults.damage import MOUNTS, disk_full_method, unmount
from tools.faults.fixtures import MINILIBRI, Context
from tools.faults.kinds import EXCLUSIVE, FAULTS, KINDS, NO_REFERENCE, plan
from tools.faults.process import STOPPING, kill_everything


def schedule(selected: dict[str, list[dict]]) -> tuple[list[tuple[str, dict]], list[tuple[str, dict]]]:
    """Trials in the order the pool starts them, and those that run alone afterwards (:data:`EXCLUSIVE`).

    First one train-kill trial per corpus (it makes that corpus's shards and reference run), then the trials
    that need no reference run, then the rest: no thread waits idle for a reference run another is making.
    """
    first, free, rest, alone = [], [], [], []
    for fault, specs in selected.items():
        for spec in specs:
            if fault in EXCLUSIVE:
                alone.append((fault, spec))
            elif fault == "train-kill" and all(s["corpus"] != spec["corpus"] for _, s in first):
                first.append((fault, spec))
            else:
                (free if fault in NO_REFERENCE else rest).append((fault, spec))
    return first + free + rest, alone


def cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def markdown_table(rows: Sequence[Trial]) -> str:
    lines = [
        "| # | fault | where it struck | what the program did | lost | equals uninterrupted | passed |",
        "|---:|---|---|---|---|---|---|",
    ]
    for number, row in enumerate(rows, start=1):
        lines.append(
            f"| {number} | {cell(row.fault)} ({cell(row.corpus)}) | {cell(row.where)} | {cell(row.did)} | "
            f"{cell(row.lost)} | {cell(row.equal)} | {'yes' if row.passed else '**NO**'} |"
        )
    return "\n".join(lines)


def summary_table(rows: Sequence[Trial]) -> str:
    lines = ["| fault | trials | passed |", "|---|---:|---:|"]
    for fault in FAULTS:
        mine = [r for r in rows if r.fault == fault]
        if mine:
            lines.append(f"| {fault} | {len(mine)} | {sum(r.passed for r in mine)} |")
    lines.append(f"| all | {len(rows)} | {sum(r.passed for r in rows)} |")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    import tools.faults

    parser = OneLineParser(prog="tools/faults", description=tools.faults.__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few trials on data/tiny (CI, ~2.5 min)")
    parser.add_argument(
        "--seed", type=option_type(int, Bound(0)), default=0, help="seed of every random choice (default 0)"
    )
    parser.add_argument("--only", metavar="FAULT[,FAULT]", help=f"run these faults only: {', '.join(FAULTS)}")
    parser.add_argument(
        "--work", type=Path, help="work directory, kept (default: a temporary one, removed at the end)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the rows as JSON")
    parser.add_argument(
        "--jobs", type=option_type(int, Bound(1)), default=2, help="trials run side by side (default 2)"
    )
    parser.add_argument(
        "--disk-full",
        choices=("auto", "tmpfs", "rlimit"),
        default="auto",
        help="how disk-full fails writes: a full tmpfs (root) or RLIMIT_FSIZE (default: tmpfs if it mounts)",
    )
    parser.add_argument(
        "--minilibri", type=Path, default=MINILIBRI, help="LibriSpeech-layout corpus for full mode"
    )
    args = parser.parse_args(argv)
    only = [f.strip() for f in (args.only or "").split(",") if f.strip()]
    unknown = [f for f in only if f not in FAULTS]
    if unknown:
        parser.error(f"--only: unknown fault(s) {', '.join(unknown)}; choose from {', '.join(FAULTS)}")
    if args.work and args.work.exists() and any(args.work.iterdir()):
        parser.error(f"--work {args.work}: not empty (the trials need fresh directories)")
    args.only = only or list(FAULTS)
    return args


def run_trials(ctx: Context, selected: dict[str, list[dict]], jobs: int) -> dict[tuple[str, int], Trial]:
    """Every selected trial, ``jobs`` at a time in :func:`schedule`'s order, then the exclusive ones alone;
    on Ctrl-C every process is killed and no new one starts (KeyboardInterrupt is raised again)."""
    together, alone = schedule(selected)
    pool = ThreadPoolExecutor(jobs)
    try:
        futures = [(fault, spec, pool.submit(KINDS[fault].run, ctx, [spec])) for fault, spec in together]
        done = {(fault, spec["index"]): future.result()[0] for fault, spec, future in futures}
        for fault, spec in alone:
            done[(fault, spec["index"])] = KINDS[fault].run(ctx, [spec])[0]
    except KeyboardInterrupt:
        STOPPING.set()
        kill_everything()
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown()
    return done


@contextlib.contextmanager
def work_directory(path: Path | None, keep: bool) -> Iterator[Path]:
    """The given directory (created if missing, kept), or a temporary one removed unless ``keep``; every
    tmpfs mounted under it is unmounted and every process still running is killed first."""
    work = path or Path(tempfile.mkdtemp(prefix="asr-faults-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        yield work.resolve()
    finally:
        kill_everything()
        for mount in list(MOUNTS):
            unmount(mount)
        if path is None and not keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"work directory kept: {work}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    from tqdm import tqdm

    args = parse_args(argv)
    began = time.monotonic()
    specs = plan(args.seed, args.quick)
    selected = {fault: specs[fault] for fault in FAULTS if fault in args.only and specs[fault]}
    with work_directory(args.work, args.keep) as work:
        method = disk_full_method(work) if args.disk_full == "auto" else args.disk_full
        total = sum(len(s) for s in selected.values())
        with tqdm(total=total, desc="fault trials", unit="trial", file=sys.stderr, dynamic_ncols=True) as bar:
            ctx = Context(work, args.quick, method, args.minilibri, bar)
            try:
                done = run_trials(ctx, selected, args.jobs)
            except KeyboardInterrupt:
                print("\ntools/faults: interrupted", file=sys.stderr)
                return 130
        rows = [done[(fault, spec["index"])] for fault, specs in selected.items() for spec in specs]
        wall = time.monotonic() - began
        mode = "quick" if args.quick else "full"
        print(f"## Fault trials ({mode}, seed {args.seed}, disk-full via {method}, {args.jobs} jobs)\n")
        print(markdown_table(rows))
        print()
        print(summary_table(rows))
        print(f"\ntotal wall time: {wall:.1f} s")
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(
                json.dumps(
                    {
                        "mode": mode,
                        "seed": args.seed,
                        "disk_full": method,
                        "wall_seconds": wall,
                        "rows": [dataclasses.asdict(r) for r in rows],
                    },
                    indent=1,
                )
                + "\n"
            )
    return 0 if rows and all(row.passed for row in rows) else 1
