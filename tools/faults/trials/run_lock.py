"""run-lock: one owner per run directory. A second ``asr.train`` on a run directory a live run holds exits 2
with one line naming the holder and changes nothing (the first ends exactly like an uninterrupted run); a
run SIGKILLed and rerun: the rerun takes its lock over."""

from __future__ import annotations

import os
import random
import signal
import time
from collections.abc import Callable

from tools.faults.checks import Checks, Trial, plural
from tools.faults.fixtures import Context, Reference, kill_spec
from tools.faults.outputs import (
    checkpoints,
    lock_files,
    lock_holder,
    read_event_log,
    snapshot,
    step_losses,
)
from tools.faults.process import Process, run
from tools.faults.trials.train_kill import (
    check_lock_taken_over,
    check_resume,
    check_same_as_reference,
    differing_steps,
    lost_work,
)

EVAL_FIELDS = ("wer", "cer", "loss")


def plan_run_lock(rng: random.Random, quick: bool) -> list[dict]:
    """``second``: a second run started while the first is paused (SIGSTOP, so that it surely holds the run
    directory) after its ``k``-th step event, k in 1-4 (a tiny epoch has 5 steps); ``killed``: a run
    SIGKILLed at a random time once it holds the run directory, then rerun. Quick: ``second`` only (train-kill
    checks the takeover after its kills too)."""
    trials = [
        {"corpus": "tiny", "row": "second", "k": rng.randint(1, 4)},
        {**kill_spec(rng, "tiny", "time"), "row": "killed"},
    ]
    return trials[:1] if quick else trials


def run_lock(ctx: Context, specs: list[dict]) -> list[Trial]:
    """See :func:`second_run_trial` and :func:`killed_run_trial`."""
    trial = {"second": second_run_trial, "killed": killed_run_trial}
    return [
        ctx.attempt("run-lock", s["corpus"], lambda s=s: trial[s["row"]](ctx, s["index"], s)) for s in specs
    ]


def wait_until(condition: Callable[[], bool], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def second_run_trial(ctx: Context, index: int, spec: dict) -> Trial:
    """One epoch of the reference configuration; after its ``k``-th step event the run is paused (SIGSTOP)
    and the same command started again; then the first is resumed (SIGCONT) and runs to its end.

    Checks: the second exits 2 with one stderr line naming the first (``pid N``), no traceback, and every
    file of the run directory is byte for byte what it was before it started; the first exits 0 with one
    ``run_start``, step events numbered 1, 2, ... once each with the reference's losses for its first epoch,
    one evaluation of epoch 1 with the reference's WER, CER and loss, and no lock file left at its end.
    """
    corpus = spec["corpus"]
    shards, reference, config = ctx.shards(corpus), ctx.reference(corpus), ctx.configs[corpus]
    folder = ctx.folder("run-lock", index, corpus)
    run_dir = folder / "run"
    command = config.command(shards, run_dir, "train.epochs=1")
    checks = Checks()
    k = spec["k"]
    first = Process(command, folder / "first")
    patience = reference.seconds * 3 + 120
    stepped = wait_until(lambda: steps_logged(run_dir) >= k or first.code is not None, patience)
    where = f"a second asr.train while the first is paused (SIGSTOP) after its step {k}"
    if not checks.expect(stepped and first.code is None, f"the first run never reached step {k} alive"):
        first.end_group()
        checks.note(first.finish().describe())
        return checks.row("run-lock", corpus, where)
    os.kill(first.popen.pid, signal.SIGSTOP)
    try:
        before = snapshot(run_dir)
        second = run(command, folder / "second", timeout=300)
        after = snapshot(run_dir)
    finally:
        os.kill(first.popen.pid, signal.SIGCONT)
    checks.note(f"second: {second.describe()} after {second.seconds:.1f} s")
    checks.expect(
        second.code == 2 and len(second.lines) == 1,
        f"second: expected exit 2 with one line, got {second.describe()} ({len(second.lines)} lines)",
    )
    checks.expect(f"pid {first.popen.pid} " in second.last_line, "the second's line does not name the first")
    checks.expect(not second.traceback, "a traceback from the second")
    changed = sorted(name for name in before.keys() | after.keys() if before.get(name) != after.get(name))
    checks.expect(not changed, f"the second changed {', '.join(changed[:3])}")
    ended = first.wait(patience)
    first.end_group()
    result = first.finish()
    checks.note(f"first: {result.describe()}")
    checks.expect(ended and result.code == 0, f"first {result.describe()}")
    events, _ = read_event_log(run_dir)
    equal = check_first_epoch(checks, events, reference)
    left = lock_files(run_dir)
    checks.expect(not left, f"left after the first ended: {', '.join(left)}")
    return checks.row("run-lock", corpus, where, "nothing (the second did no work)", equal)


def steps_logged(run_dir) -> int:
    return sum(e.get("event") == "step" for e in read_event_log(run_dir)[0])


def check_first_epoch(checks: Checks, events: list[dict], reference: Reference) -> str:
    """Every event (not only the active ones: nothing may have been logged twice) against the reference's
    first epoch."""
    starts = sum(e.get("event") == "run_start" for e in events)
    checks.expect(starts == 1, f"{plural(starts, 'run_start event')} in the log, expected 1")
    losses = step_losses(events)
    expected = reference.steps[: len(losses)]
    numbered = [step for step, _ in losses] == list(range(1, len(losses) + 1))
    checks.expect(numbered, f"step events {[s for s, _ in losses]}, expected 1..{len(losses)} once each")
    same_losses = checks.expect(losses and losses == expected, differing_steps(losses, expected))
    evaluations = [e for e in events if e.get("event") == "eval"]
    first = [e for e in reference.evaluations if e.get("epoch") == 0]
    scores = lambda found: [(e.get("epoch"), *(e.get(f) for f in EVAL_FIELDS)) for e in found]  # noqa: E731
    same_eval = checks.expect(
        len(evaluations) == len(first) == 1 and scores(evaluations) == scores(first),
        f"eval events (epoch, WER, CER, loss) {scores(evaluations)}, expected the reference's epoch 1 once: "
        f"{scores(first)}",
    )
    if same_losses and same_eval:
        return f"yes: the reference's first epoch ({len(losses)} step losses, its evaluation)"
    return "no"


def killed_run_trial(ctx: Context, index: int, spec: dict) -> Trial:
    """The reference configuration, SIGKILLed at a random time of the reference's duration (not before it
    holds the run directory), rerun after 0.5-2 s.

    Checks: the lock's holder record left behind names the killed process; the rerun takes the lock over
    and says so, resumes (as train-kill checks) and ends exactly like the reference; no lock file is left.
    """
    corpus = spec["corpus"]
    shards, reference, config = ctx.shards(corpus), ctx.reference(corpus), ctx.configs[corpus]
    folder = ctx.folder("run-lock", index, corpus)
    run_dir = folder / "run"
    command = config.command(shards, run_dir)
    checks = Checks()
    at = spec["at"] * reference.seconds
    process = Process(command, folder / "killed")
    held = wait_until(lambda: lock_holder(run_dir) is not None or process.code is not None, 120)
    ended = process.wait(at)
    if not ended:
        process.kill()
    process.end_group()
    holder = lock_holder(run_dir)
    where = f"SIGKILL at {at:.1f} s of the reference's {reference.seconds:.0f} s, holding the run directory"
    checks.expect(held and not ended, f"not struck: the run ended (exit {process.code}) before the kill")
    checks.expect(holder is not None, "no holder record beside the killed run's lock")
    if holder:
        checks.note(f"left: {', '.join(lock_files(run_dir))} naming pid {holder.get('pid')}")
    events, _ = read_event_log(run_dir)
    saved = checkpoints(run_dir)
    newest = saved[-1] if saved else None
    time.sleep(spec["gap"])
    rerun = run(command, folder / "rerun", timeout=reference.seconds * 4 + 120)
    checks.expect(rerun.code == 0, f"rerun {rerun.describe()}")
    after, _ = read_event_log(run_dir)
    check_lock_taken_over(checks, run_dir, holder, process.popen.pid, rerun)
    check_resume(checks, after[len(events) :], newest, spec["gap"], rerun)
    equal = check_same_as_reference(ctx, checks, run_dir, after, reference)
    return checks.row("run-lock", corpus, where, lost_work(events, newest), equal)
