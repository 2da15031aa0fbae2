"""events-cut: the event log's last line cut: resuming and the report cope."""

from __future__ import annotations

import contextlib
import json
import random
from pathlib import Path

from tools.faults.checks import Checks, Trial
from tools.faults.fixtures import FAST_RERUN, Context
from tools.faults.outputs import copy_run
from tools.faults.process import module, run, shorten


def plan_events_cut(rng: random.Random, quick: bool) -> list[dict]:
    trials = [{"corpus": "tiny", "at": rng.random()} for _ in range(2)]
    return trials[:1] if quick else trials


def events_cut(ctx: Context, specs: list[dict]) -> list[Trial]:
    """Cut the event log's last line (see :func:`events_cut_trial`)."""
    return [
        ctx.attempt("events-cut", s["corpus"], lambda s=s: events_cut_trial(ctx, s["index"], s))
        for s in specs
    ]


def events_cut_trial(ctx: Context, index: int, spec: dict) -> Trial:
    """Cut ``events.jsonl`` of a copy of the finished reference run at a random byte inside its last line
    (what a kill mid-write leaves), resume training one more epoch, then ``asr.report``.

    Checks: training completes; the report exits 0, warns about exactly one unreadable line, the cut one
    (so every complete line was read), and counts 2 sessions.
    """
    corpus = spec["corpus"]
    shards, reference, config = ctx.shards(corpus), ctx.reference(corpus), ctx.configs[corpus]
    folder = ctx.folder("events-cut", index, corpus)
    run_dir = copy_run(reference.run, folder / "run")
    log = run_dir / "events.jsonl"
    data = log.read_bytes()
    start = data.rstrip(b"\n").rfind(b"\n") + 1
    length = len(data) - 1 - start
    cut = start + 1 + int(spec["at"] * (length - 1))
    number = data[:start].count(b"\n") + 1
    kind = json.loads(data[start:]).get("event")
    log.write_bytes(data[:cut])
    where = f"line {number} (the {kind} event) cut after {cut - start} of its {length} bytes"
    checks = Checks()
    training = run(
        config.command(shards, run_dir, f"train.epochs={reference.epochs + 1}", *FAST_RERUN),
        folder / "train",
        timeout=reference.seconds * 3 + 120,
    )
    checks.expect(training.code == 0, f"resumed training {training.describe()}")
    report = run(
        module("asr.report", run_dir, "--out", folder / "report", "--no-plots"),
        folder / "report",
        timeout=300,
    )
    checks.expect(report.code == 0, f"asr.report {report.describe()}")
    skipped = [line for line in report.lines if "unreadable line skipped" in line]
    checks.expect(
        len(skipped) == 1 and f":{number}:" in skipped[0],
        f"asr.report warned about {len(skipped)} unreadable lines, expected one: line {number}",
    )
    sessions = report_sessions(folder / "report" / "report.md")
    checks.expect(sessions == 2, f"report counts {sessions} sessions, expected 2")
    checks.note(
        f"training exit {training.code}; asr.report exit {report.code}, {len(skipped)} line skipped "
        f"({shorten(skipped[0], 70) if skipped else '-'}), {sessions} sessions"
    )
    return checks.row("events-cut", corpus, where, f"the {kind} event's line")


def report_sessions(report: Path) -> int | None:
    """The ``sessions`` cell of the first run row in ``report.md``."""
    if not report.is_file():
        return None
    lines = report.read_text().splitlines()
    for i, line in enumerate(lines[:-2]):
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if "sessions" in cells:
            row = [c.strip() for c in lines[i + 2].strip().strip("|").split("|")]
            with contextlib.suppress(ValueError, IndexError):
                return int(row[cells.index("sessions")])
    return None
