"""export-kill and compress-kill: SIGKILL ``asr.export`` or ``asr.compress`` while it writes its output
directory, rerun it: the rerun completes, no temporary is left beside or inside the output, and the run
directory it read is unchanged."""

from __future__ import annotations

import dataclasses
import random
import shutil
import time
from pathlib import Path

from tools.faults.checks import Checks, Trial
from tools.faults.fixtures import Context
from tools.faults.outputs import copy_run, output_leftovers, snapshot
from tools.faults.process import Process, module, run

CLUSTERS = 4
"""``asr.compress --clusters``: k-means centroids per weight matrix (any count the tiny model's matrices
exceed)."""


def plan_output_kill(rng: random.Random, quick: bool) -> list[dict]:
    """A new output, then ``--force`` over an existing one (the old one is moved aside while the new one is
    renamed into place); the kill at a random moment of the write. Full mode only (two exports per trial)."""
    trials = [
        {"corpus": "tiny", "force": force, "at": rng.random(), "gap": rng.uniform(0.5, 2.0)}
        for force in (False, True)
    ]
    return [] if quick else trials


plan_export_kill = plan_compress_kill = plan_output_kill


def export_kill(ctx: Context, specs: list[dict]) -> list[Trial]:
    return [
        ctx.attempt("export-kill", s["corpus"], lambda s=s: output_kill_trial(ctx, "export-kill", s))
        for s in specs
    ]


def compress_kill(ctx: Context, specs: list[dict]) -> list[Trial]:
    return [
        ctx.attempt("compress-kill", s["corpus"], lambda s=s: output_kill_trial(ctx, "compress-kill", s))
        for s in specs
    ]


def output_command(fault: str, run_dir: Path, out: Path, force: bool) -> list[str]:
    """``asr.export --run RUN --out OUT`` or ``asr.compress --run RUN --clusters 4 --out OUT``."""
    if fault == "export-kill":
        command = module("asr.export", "--run", run_dir, "--out", out)
    else:
        command = module("asr.compress", "--run", run_dir, "--clusters", CLUSTERS, "--out", out)
    return command + (["--force"] if force else [])


@dataclasses.dataclass(frozen=True)
class Uninterrupted:
    """An uninterrupted run of the command: its output, and how long its write took (from the first
    temporary's appearance beside the output to its rename into place), which aims the kills."""

    out: Path
    write_seconds: float
    files: list[str]


POLL = 0.002
"""Seconds between looks for the output's temporary (a compression writes for about 0.1 s here)."""


def write_began(process: Process, out: Path, patience: float = 600) -> float | None:
    """Wait until a temporary appears beside ``out``; when (``time.monotonic()``), or None if the process
    ended (or ``patience`` seconds passed) first."""
    deadline = time.monotonic() + patience
    while process.code is None and time.monotonic() < deadline:
        if output_leftovers(out):
            return time.monotonic()
        time.sleep(POLL)
    return None


def uninterrupted(ctx: Context, fault: str, corpus: str) -> Uninterrupted:
    """Made once per fault kind: the write's duration, and the files a whole output holds."""
    folder = ctx.work / fault / f"uninterrupted-{corpus}"
    folder.mkdir(parents=True, exist_ok=True)
    run_dir = copy_run(ctx.reference(corpus).run, folder / "run")
    out = folder / "out"
    process = Process(output_command(fault, run_dir, out, force=False), folder / "command")
    began = write_began(process, out)
    ended = began
    while began is not None and process.code is None and output_leftovers(out):
        time.sleep(POLL)
        ended = time.monotonic()
    process.wait(600)
    process.end_group()
    result = process.finish()
    if result.code != 0:
        raise RuntimeError(f"uninterrupted {fault.split('-')[0]}: {result.describe()}")
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    return Uninterrupted(out, 0.0 if began is None else ended - began, files)


def output_kill_trial(ctx: Context, fault: str, spec: dict) -> Trial:
    """Kill the command at a random moment of its write: once its temporary appears beside the output, after
    a random fraction of an uninterrupted write's duration (a new output, or ``--force`` over the
    uninterrupted output's copy); wait 0.5-2 s and rerun the same command (with ``--force`` when the kill
    came after the output was complete: without it the command refuses to replace it).

    Checks: the rerun exits 0; its output holds the files an uninterrupted run writes; nothing matching
    ``OUT.tmp-*``/``OUT.old-*`` beside the output or ``*.tmp-*`` inside it; every file of the run directory
    byte for byte as before.
    """
    corpus, force = spec["corpus"], spec["force"]
    whole = ctx.shared(f"{fault}:{corpus}", lambda: uninterrupted(ctx, fault, corpus))
    folder = ctx.folder(fault, spec["index"], corpus)
    run_dir = copy_run(ctx.reference(corpus).run, folder / "run")
    before = snapshot(run_dir)
    out = folder / "out"
    if force:
        shutil.copytree(whole.out, out)
    command = output_command(fault, run_dir, out, force)
    checks = Checks()
    delay = spec["at"] * whole.write_seconds
    process = Process(command, folder / "killed")
    began = write_began(process, out)
    if began is not None:
        process.wait_more(began + delay - time.monotonic())
    ended = process.code is not None
    if not ended:
        process.kill()
    process.end_group()
    left = output_leftovers(out)
    what = "over an existing output (--force)" if force else "a new output"
    where = f"{what}: SIGKILL {delay:.2f} s into its write (uninterrupted: {whole.write_seconds:.2f} s)"
    where += f"; left: {', '.join(left[:3])}" if left else "; nothing left beside the output"
    if ended:
        where = f"{what}: not struck, the command ended (exit {process.code}) before its write was seen"
    time.sleep(spec["gap"])
    again = force or (out.exists() and not left)
    rerun = run(output_command(fault, run_dir, out, again), folder / "rerun", timeout=600)
    checks.note(f"rerun{' with --force' if again and not force else ''}: {rerun.describe()}")
    checks.expect(rerun.code == 0, f"rerun {rerun.describe()}")
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()) if out.is_dir() else []
    checks.expect(
        files == whole.files, f"the output holds {len(files)} files, a whole one {len(whole.files)}"
    )
    remaining = output_leftovers(out)
    checks.expect(not remaining, f"left after the rerun: {', '.join(remaining[:3])}")
    after = snapshot(run_dir)
    changed = sorted(name for name in before.keys() | after.keys() if before.get(name) != after.get(name))
    checks.expect(not changed, f"the run directory changed: {', '.join(changed[:3])}")
    return checks.row(fault, corpus, where, "the output being written (redone)")
