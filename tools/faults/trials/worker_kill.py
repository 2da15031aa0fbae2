"""worker-kill: SIGKILL one of two multi-worker training processes."""

from __future__ import annotations

import json
import random
import re
import time
from pathlib import Path

from tools.faults.checks import Checks, Trial
from tools.faults.fixtures import TINY_RECIPE, TINY_SETS, WORKER_SETS, Context, Shards, TrainConfig
from tools.faults.outputs import checkpoints
from tools.faults.process import Process, free_ports, shorten


def plan_worker_kill(rng: random.Random, quick: bool) -> list[dict]:
    """Worker 1, then worker 0 (the chief), after a random 2nd-4th checkpoint; skipped by --quick (two
    multi-worker starts take longer than the quick mode's budget)."""
    trials = [
        {"corpus": "tiny", "victim": victim, "after": rng.randint(2, 4), "gap": rng.uniform(0.5, 2.0)}
        for victim in (1, 0)
    ]
    return [] if quick else trials


def worker_kill(ctx: Context, specs: list[dict]) -> list[Trial]:
    """Kill one of two training workers (see :func:`worker_kill_trial`)."""
    return [
        ctx.attempt("worker-kill", s["corpus"], lambda s=s: worker_kill_trial(ctx, s["index"], s))
        for s in specs
    ]


def start_workers(ctx: Context, shards: Shards, run_dir: Path, folder: Path, name: str) -> list[Process]:
    """Two ``asr.train`` processes on localhost forming one MultiWorkerMirroredStrategy cluster
    (tests/test_train.py ``start_workers``), each with its own TMPDIR."""
    workers = [f"localhost:{port}" for port in free_ports(2)]
    processes = []
    for index in range(2):
        scratch = folder / f"tmp{index}"
        scratch.mkdir(exist_ok=True)
        config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        command = TrainConfig(TINY_SETS + WORKER_SETS, TINY_RECIPE).command(shards, run_dir)
        processes.append(
            Process(
                command,
                folder / f"{name}-worker{index}",
                {"TMPDIR": str(scratch), "TF_CONFIG": json.dumps(config)},
            )
        )
    return processes


def worker_kill_trial(ctx: Context, index: int, spec: dict) -> Trial:
    """Two workers train; after the ``after``-th checkpoint one is SIGKILLed.

    Checks: the other exits within 90 s with a non-zero status, its last stderr line naming the lost worker,
    no traceback; restarting both with the same command resumes from the newest checkpoint and completes,
    both workers printing the same final ``weights crc32c``.
    """
    corpus, victim = spec["corpus"], spec["victim"]
    shards = ctx.shards(corpus)
    folder = ctx.folder("worker-kill", index, corpus)
    run_dir = folder / "run"
    checks = Checks()
    processes = start_workers(ctx, shards, run_dir, folder, "first")
    step = 2 * spec["after"]
    deadline = time.monotonic() + 300
    while not (run_dir / "checkpoints" / f"ckpt-{step}.json").is_file():
        if time.monotonic() > deadline or any(p.code is not None for p in processes):
            break
        time.sleep(0.1)
    where = f"worker {victim}{' (the chief)' if victim == 0 else ''} SIGKILLed once ckpt-{step} existed"
    processes[victim].kill()
    killed_at = time.monotonic()
    survivor = processes[1 - victim]
    ended = survivor.wait_more(120)
    waited = time.monotonic() - killed_at
    for p in processes:
        p.end_group()
    other = survivor.finish()
    checks.note(f"worker {1 - victim}: {other.describe()} after {waited:.0f} s")
    checks.expect(ended and waited <= 90, f"worker {1 - victim} still running {waited:.0f} s after the kill")
    checks.expect(other.code not in (0, None), f"worker {1 - victim} exit {other.code}")
    said = next((line for line in reversed(other.lines) if "multi-worker run was lost" in line), "")
    if checks.expect(said, f"worker {1 - victim} did not say a worker was lost"):
        checks.expect(f"worker {victim} " in said, f"its line names the wrong worker: {shorten(said, 70)}")
        checks.expect(
            said == other.last_line, f"its line is not the last one (last: {shorten(other.last_line, 80)})"
        )
    checks.expect(not other.traceback, "a traceback on stderr")
    saved = checkpoints(run_dir)
    newest = saved[-1] if saved else None
    time.sleep(spec["gap"])
    restarted = start_workers(ctx, shards, run_dir, folder, "restart")
    for p in restarted:
        p.wait(600)
        p.end_group()
    results = [p.finish() for p in restarted]
    ending = re.compile(r"worker \d: stopped \(epochs\) at step (\d+); weights crc32c (\w+)")
    ends = [ending.search(r.stderr) for r in results]
    checks.note(
        f"restart: exits {[r.code for r in results]}, resumed from {newest.name if newest else 'nothing'}"
    )
    checks.expect(all(r.code == 0 for r in results), "restart: " + "; ".join(r.describe() for r in results))
    checks.expect(
        newest is not None and f"from {newest.name}" in results[0].stderr,
        f"the restart did not resume from {newest.name if newest else 'a checkpoint'}",
    )
    same = all(ends) and ends[0].groups() == ends[1].groups()
    checks.expect(same, "the workers did not end with the same step and weights crc32c")
    lost = f"the steps after {newest.name}" if newest else "everything"
    equal = f"both workers end with crc32c {ends[0].group(2)}" if same else "no"
    return checks.row("worker-kill", corpus, where, lost, equal)
