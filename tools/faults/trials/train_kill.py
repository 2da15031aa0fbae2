"""train-kill: SIGKILL a training run, rerun it: it resumes exactly."""

from __future__ import annotations

import random
import signal
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from asr.tta import active_events
from tools.faults.checks import Checks, Trial, plural
from tools.faults.fixtures import Context, Reference, kill_spec
from tools.faults.outputs import (
    Saved,
    checkpoints,
    leftovers,
    lock_files,
    lock_holder,
    read_event_log,
    step_losses,
)
from tools.faults.process import Finished, Process, failpoint, run


def plan_train_kill(rng: random.Random, quick: bool) -> list[dict]:
    """Kinds in turn: a random time, a checkpoint write (before its weights, or between weights and state),
    an evaluation; full: 10 on tiny, 4 on minilibri; quick: 2 on tiny. One full-mode trial kills the first
    save (no checkpoint exists yet: the rerun starts afresh in a run directory that has a log)."""
    cycle = ("time", "checkpoint.state", "time", "evaluate", "checkpoint.weights")
    trials = [kill_spec(rng, "tiny", cycle[i % len(cycle)]) for i in range(10)]
    trials += [
        kill_spec(rng, "minilibri", ("time", "checkpoint.state", "evaluate", "time")[i]) for i in range(4)
    ]
    trials[4]["k"] = 0.0  # checkpoint.weights=kill@1
    if quick:
        return [
            trials[0],
            {**trials[1], "how": rng.choice(("checkpoint.state", "checkpoint.weights", "evaluate"))},
        ]
    return trials


def train_kill(ctx: Context, specs: list[dict]) -> list[Trial]:
    """SIGKILL training and rerun the same command: it must resume exactly (see :func:`train_kill_trial`)."""
    return [
        ctx.attempt("train-kill", s["corpus"], lambda s=s: train_kill_trial(ctx, s["index"], s))
        for s in specs
    ]


def train_kill_trial(ctx: Context, index: int, spec: dict) -> Trial:
    """Kill a training run at a random time or at a fail point, wait 0.5-2 s, rerun the same command.

    Checks: the rerun's ``run_start`` resumes (``resumed``) at the newest complete checkpoint's step, counts
    the gap as downtime and restarts the run clock at that checkpoint's ``clock.elapsed`` (``restart_elapsed``
    exactly; the clock runs on from there while the model is restored, so ``elapsed`` is never before it); the
    active ``step`` losses equal the uninterrupted reference's exactly (same batches in the same order), each
    epoch is evaluated exactly once (no TTA gap), the final weights equal the reference's bit for bit (one
    CPU process computes deterministically), and no temporary checkpoint file is left.
    """
    corpus, how = spec["corpus"], spec["how"]
    shards, reference, config = ctx.shards(corpus), ctx.reference(corpus), ctx.configs[corpus]
    folder = ctx.folder("train-kill", index, corpus)
    run_dir = folder / "run"
    command = config.command(shards, run_dir)
    checks = Checks()
    at = spec["at"] * reference.seconds
    ended = False
    if how == "time":
        process = Process(command, folder / "killed")
        ended = process.wait(at)
        if not ended:
            process.kill()
        when = f"SIGKILL at {at:.1f} s of the reference's {reference.seconds:.0f} s"
    else:
        count = len(reference.saves) if how.startswith("checkpoint") else reference.epochs
        k = 1 + int(spec["k"] * count)
        rule = f"{how}=kill@{k}"
        process = Process(command, folder / "killed", failpoint(rule))
        process.wait(reference.seconds * 3 + 120)
        checks.expect(
            process.code == -signal.SIGKILL, f"fail point {rule} did not kill the run (exit {process.code})"
        )
        when = f"fail point {rule}"
        if how.startswith("checkpoint"):
            when += f" ({reference.saves[k - 1]})"
    process.end_group()
    events, cut = read_event_log(run_dir)
    where = f"{strike_point(events, how, spec, reference)}{' (its line cut)' if cut else ''}; {when}"
    if ended:
        where = f"not struck: the run ended (exit {process.code}) before the kill time {at:.1f} s"
    saved = checkpoints(run_dir)
    newest = saved[-1] if saved else None
    holder = lock_holder(run_dir)
    time.sleep(spec["gap"])
    rerun = run(command, folder / "rerun", timeout=reference.seconds * 4 + 120)
    checks.expect(rerun.code == 0, f"rerun {rerun.describe()}")
    after, _ = read_event_log(run_dir)
    check_resume(checks, after[len(events) :], newest, spec["gap"], rerun)
    check_lock_taken_over(checks, run_dir, holder, process.popen.pid, rerun)
    equal = check_same_as_reference(ctx, checks, run_dir, after, reference)
    return checks.row("train-kill", corpus, where, lost_work(events, newest), equal)


def check_lock_taken_over(
    checks: Checks, run_dir: Path, holder: dict | None, killed: int, rerun: Finished
) -> None:
    """The run directory's lock after a kill: a holder record left behind names the killed process, the
    rerun took the lock over (and said so, naming it) instead of refusing, and released it at its end."""
    checks.expect("in use by" not in rerun.stderr, "the rerun found the run directory in use")
    if holder is not None:
        checks.expect(
            holder.get("pid") == killed,
            f"the lock's holder record names pid {holder.get('pid')}, not {killed}",
        )
        said = f"held by pid {killed} " in rerun.stderr and "taken over" in rerun.stderr
        if checks.expect(said, f"the rerun did not say it took over the lock of the killed pid {killed}"):
            checks.note(f"the killed run's lock (pid {killed}) taken over")
    left = lock_files(run_dir)
    checks.expect(not left, f"left after the rerun: {', '.join(left)}")


def strike_point(events: Sequence[dict], how: str, spec: dict, reference: Reference) -> str:
    """The last thing the killed run logged, in words ("step 7", "evaluating epoch 2", ...)."""
    if how == "evaluate":
        return f"evaluating epoch {1 + int(spec['k'] * reference.epochs)}"
    last = next((e for e in reversed(events) if e.get("event") not in ("util", "sample")), None)
    if last is None:
        return "start-up (nothing logged yet)"
    kind, step, epoch = last["event"], last.get("step"), int(last.get("epoch", 0)) + 1
    if how.startswith("checkpoint"):
        return f"checkpoint write after step {step}"
    phase = last.get("phase")
    described = {
        "run_start": "start-up (run_start logged, no step yet)",
        "step": f"step {step} (epoch {epoch})",
        "checkpoint": f"just after checkpoint ckpt-{step}",
        "epoch_end": f"evaluating epoch {int(last.get('epoch', 0)) + 1} (just begun)",
        "eval": f"after evaluating epoch {epoch} (TTA update)",
        "target": f"after evaluating epoch {epoch} (TTA update)",
        "skipped_step": f"after a skipped step {step}",
        "run_end": "after run_end (exiting)",
    }.get(kind, f"{kind} at step {step}")
    if kind == "phase":  # an epoch-end phase carries the next epoch (0-based): the finished one, from 1
        finished = int(last.get("epoch", 0))
        described = {
            "checkpoint": f"just after checkpoint ckpt-{step}",
            "swap_out": f"evaluating epoch {finished} (training model swapped out)",
            "evaluate": f"epoch {finished} evaluated, before its results were logged",
            "swap_in": f"epoch {finished} evaluated and swapped back in, before its results were logged",
        }.get(phase, f"phase {phase}")
    return described


def check_resume(
    checks: Checks, new: Sequence[dict], newest: Saved | None, gap: float, rerun: Finished
) -> None:
    """The rerun's ``run_start``: resumed at ``newest`` (step, run clock) with the gap counted as downtime;
    a fresh start when no checkpoint was complete; nothing when the run had already ended."""
    start = next((e for e in new if e.get("event") == "run_start"), None)
    if "is complete" in rerun.stderr and start is None:
        checks.note(f"rerun: already complete ({newest.name if newest else '?'})")
        return
    if not checks.expect(start is not None, "the rerun logged no run_start"):
        return
    if newest is None:
        checks.note("no checkpoint yet: rerun started afresh")
        checks.expect(start.get("resumed") is False, "run_start.resumed is true without a checkpoint")
        return
    clock = newest.elapsed
    checks.note(
        f"rerun resumed from {newest.name} (clock {start.get('elapsed', 0):.1f} s, downtime "
        f"{start.get('downtime', 0):.1f} s ≥ gap {gap:.1f} s)"
    )
    checks.expect(start.get("resumed") is True, "run_start.resumed is not true")
    checks.expect(start.get("step") == newest.step, f"resumed at step {start.get('step')}, not {newest.step}")
    checks.expect(
        float(start.get("downtime", 0)) >= gap, f"downtime {start.get('downtime')} < gap {gap:.2f} s"
    )
    restart = start.get("restart_elapsed")
    checks.expect(
        isinstance(restart, (int, float)) and abs(float(restart) - clock) <= 1e-6,
        f"run_start.restart_elapsed {restart} is not the checkpoint's clock {clock:.6f}",
    )
    checks.expect(
        float(start.get("elapsed", -99)) >= clock,
        f"run_start.elapsed {start.get('elapsed')} is before the checkpoint's clock {clock:.2f}",
    )


def check_same_as_reference(
    ctx: Context, checks: Checks, run_dir: Path, events: list[dict], reference: Reference
) -> str:
    """Active step losses, evaluated epochs, final checkpoint and weights against the reference run."""
    active = active_events(events)
    losses = step_losses(active)
    same_losses = checks.expect(losses == reference.steps, differing_steps(losses, reference.steps))
    evaluated = Counter(e.get("epoch") for e in active if e.get("event") == "eval")
    checks.expect(
        evaluated == Counter(reference.evaluated),
        f"epochs evaluated (active events) {dict(sorted(evaluated.items()))}, expected each of "
        f"{reference.evaluated} once",
    )
    saved = checkpoints(run_dir)
    final = saved[-1] if saved else None
    same_weights = False
    if checks.expect(
        final is not None and final.name == reference.final,
        f"final checkpoint {final.name if final else None}, not {reference.final}",
    ):
        mine, theirs = ctx.weights(final.prefix), ctx.weights(reference.run / "checkpoints" / reference.final)
        differ = sorted(k for k in theirs if mine.get(k) != theirs[k])
        same_weights = checks.expect(
            mine.keys() == theirs.keys() and not differ,
            f"final weights differ from the reference's in {len(differ)} tensors",
        )
    left = leftovers(run_dir / "checkpoints")
    checks.expect(not left, f"left in checkpoints/: {', '.join(left[:3])}")
    if same_losses and same_weights:
        return "yes: same step losses, weights bit-identical (one CPU process is deterministic)"
    return "no"


def differing_steps(losses: list[tuple[int, float]], expected: list[tuple[int, float]]) -> str:
    for i, (mine, theirs) in enumerate(zip(losses, expected, strict=False)):
        if mine != theirs:
            return f"step losses differ from the reference's at active step event {i + 1}: {mine} vs {theirs}"
    return f"{len(losses)} active step events, the reference has {len(expected)}"


def lost_work(events: Sequence[dict], newest: Saved | None) -> str:
    """Steps and run-clock seconds the killed session did after the checkpoint the rerun resumed from."""
    steps = [e for e in events if e.get("event") == "step"]
    timed = [e for e in events if isinstance(e.get("elapsed"), (int, float))]
    if not steps and not timed:
        return "nothing trained yet"
    base_step = newest.step if newest else 0
    base_clock = newest.elapsed if newest else 0.0
    last_step = steps[-1]["step"] if steps else 0
    seconds = max(0.0, (timed[-1]["elapsed"] if timed else 0.0) - base_clock)
    redo = " + its pending evaluation" if newest and newest.state.get("evaluation_pending") else ""
    return f"{plural(max(0, last_step - base_step), 'step')}, {seconds:.1f} s of run clock{redo}"
