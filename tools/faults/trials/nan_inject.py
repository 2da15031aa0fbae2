"""nan-inject: non-finite steps through the train.step fail point."""

from __future__ import annotations

import random

from tools.faults.checks import Checks, Trial, plural
from tools.faults.fixtures import FAST_RERUN, Context
from tools.faults.outputs import checkpoints, read_event_log
from tools.faults.process import failpoint, run


def plan_nan_inject(rng: random.Random, quick: bool) -> list[dict]:
    """One poisoned batch (of the first 4 of one tiny epoch), then two in a row (after at least one good
    step) against a limit of 2; quick: one of the two."""
    trials = [
        {"corpus": "tiny", "row": "one", "k": rng.randint(1, 4)},
        {"corpus": "tiny", "row": "two", "k": rng.randint(2, 3)},
    ]
    return [rng.choice(trials)] if quick else trials


def nan_inject(ctx: Context, specs: list[dict]) -> list[Trial]:
    """Non-finite steps through the ``train.step`` fail point (see :func:`nan_inject_trial`)."""
    return [
        ctx.attempt("nan-inject", s["corpus"], lambda s=s: nan_inject_trial(ctx, s["index"], s))
        for s in specs
    ]


def nan_inject_trial(ctx: Context, index: int, spec: dict) -> Trial:
    """``train.step=nan@k`` (one epoch): the run completes with exactly one ``skipped_step`` event and
    ``run_end.skipped_steps == 1``. ``train.step=nan@k+(k+1)`` with ``train.max_consecutive_nan_steps=2``:
    exit 2, the last line says "non-finite steps in a row", and a checkpoint exists at the last good step
    (k - 1: skipped steps change no weight)."""
    corpus, k = spec["corpus"], spec["k"]
    shards, config = ctx.shards(corpus), ctx.configs[corpus]
    folder = ctx.folder("nan-inject", index, corpus)
    run_dir = folder / "run"
    checks = Checks()
    rule = f"train.step=nan@{k}" if spec["row"] == "one" else f"train.step=nan@{k}+{k + 1}"
    extra = ("train.epochs=1", *FAST_RERUN)
    if spec["row"] == "two":
        extra += ("train.max_consecutive_nan_steps=2",)
    result = run(config.command(shards, run_dir, *extra), folder / "train", failpoint(rule), timeout=600)
    events, _ = read_event_log(run_dir)
    skipped = [e for e in events if e.get("event") == "skipped_step"]
    end = next((e for e in reversed(events) if e.get("event") == "run_end"), {})
    checks.note(
        f"{result.describe()}; {plural(len(skipped), 'skipped_step event')}, run_end {end.get('reason')} "
        f"skipped_steps={end.get('skipped_steps')}"
    )
    if spec["row"] == "one":
        checks.expect(result.code == 0, f"exit {result.code}")
        checks.expect(len(skipped) == 1, f"{len(skipped)} skipped_step events, expected 1")
        checks.expect(
            end.get("skipped_steps") == 1, f"run_end.skipped_steps {end.get('skipped_steps')}, expected 1"
        )
        return checks.row("nan-inject", corpus, f"{rule}: batch {k} poisoned", f"batch {k} not applied")
    saved = checkpoints(run_dir)
    checks.expect(result.code == 2, f"exit {result.code}, expected 2")
    checks.expect(
        "non-finite steps in a row" in result.last_line,
        "the last line does not say 'non-finite steps in a row'",
    )
    checks.expect(
        saved and saved[-1].step == k - 1,
        f"newest checkpoint {saved[-1].name if saved else None}, expected ckpt-{k - 1} (the last good step)",
    )
    return checks.row(
        "nan-inject",
        corpus,
        f"{rule}: batches {k} and {k + 1} poisoned, limit 2",
        f"batches {k}-{k + 1}; the run stopped (ckpt-{k - 1} kept)",
    )
