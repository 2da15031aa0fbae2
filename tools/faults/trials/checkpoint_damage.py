"""checkpoint-damage: the newest (or every) checkpoint damaged: fall back with one warning, or exit 2."""

from __future__ import annotations

import random

from tools.faults.checks import Checks, Trial, plural
from tools.faults.damage import damage_checkpoint
from tools.faults.fixtures import FAST_RERUN, Context, evaluate_command
from tools.faults.outputs import checkpoints, copy_run
from tools.faults.process import Finished, run, shorten

DAMAGE_KINDS = ("truncate-data", "empty-index", "flip-data", "delete-data")


def plan_checkpoint_damage(rng: random.Random, quick: bool) -> list[dict]:
    """Each damage kind on the newest checkpoint, then every checkpoint damaged; quick: one kind."""
    trials = [
        {"corpus": "tiny", "kind": kind, "fractions": [rng.random() for _ in range(3)]}
        for kind in DAMAGE_KINDS
    ]
    every = {
        "corpus": "tiny",
        "kind": "all",
        "kinds": [rng.choice(DAMAGE_KINDS) for _ in range(3)],
        "fractions": [rng.random() for _ in range(3)],
    }
    return [rng.choice(trials)] if quick else [*trials, every]


def checkpoint_damage(ctx: Context, specs: list[dict]) -> list[Trial]:
    """Damage checkpoints of a finished run (see :func:`checkpoint_damage_trial`)."""
    return [
        ctx.attempt("checkpoint-damage", s["corpus"], lambda s=s: checkpoint_damage_trial(ctx, s["index"], s))
        for s in specs
    ]


def checkpoint_damage_trial(ctx: Context, index: int, spec: dict) -> Trial:
    """Damage the newest checkpoint of a copy of the finished reference run (or every checkpoint).

    ``asr.evaluate --run RUN --data DEV --beam 1 --lm ''`` runs first (training would overwrite the damaged
    checkpoint), then training with one more epoch. Newest damaged: each must print exactly one warning
    naming the damaged checkpoint and the older one it uses, and complete (training from the older one,
    evaluation writing the older one's results). Every checkpoint damaged: both exit 2 with one line.
    """
    corpus = spec["corpus"]
    shards, reference, config = ctx.shards(corpus), ctx.reference(corpus), ctx.configs[corpus]
    folder = ctx.folder("checkpoint-damage", index, corpus)
    run_dir = copy_run(reference.run, folder / "run")
    saved = checkpoints(run_dir)
    checks = Checks()
    if spec["kind"] == "all":
        done = [
            damage_checkpoint(s, kind, spec["fractions"])
            for s, kind in zip(saved, spec["kinds"], strict=False)
        ]
        where = "every checkpoint: " + "; ".join(done)
    else:
        where = f"newest {saved[-1].name}: " + damage_checkpoint(saved[-1], spec["kind"], spec["fractions"])
    evaluation = run(evaluate_command(run_dir, shards.dev), folder / "evaluate", timeout=300)
    training = run(
        config.command(shards, run_dir, f"train.epochs={reference.epochs + 1}", *FAST_RERUN),
        folder / "train",
        timeout=reference.seconds * 3 + 120,
    )
    if spec["kind"] == "all":
        for name, result in (("asr.train", training), ("asr.evaluate", evaluation)):
            checks.note(f"{name} {result.describe()}")
            checks.expect(
                result.code == 2 and len(result.lines) == 1,
                f"{name}: expected exit 2 with one line, got {result.describe()} "
                f"({len(result.lines)} lines{', a traceback' if result.traceback else ''})",
            )
        checks.expect(
            "no usable checkpoint" in training.last_line,
            "asr.train's line does not say 'no usable checkpoint'",
        )
        return checks.row("checkpoint-damage", corpus, where, "every checkpoint (the run cannot go on)")
    newest, older = saved[-1], saved[-2]
    for name, result in (("asr.evaluate", evaluation), ("asr.train", training)):
        fell_back = fallback_warning(result, newest.name, older.name)
        checks.note(
            f"{name} exit {result.code}" + (f", warned: {shorten(fell_back, 90)}" if fell_back else "")
        )
        if checks.expect(result.code == 0, f"{name} did not complete: {result.describe()}"):
            checks.expect(
                len(result.warnings) == 1 and fell_back,
                f"{name}: {len(result.warnings)} warning lines, expected one naming {newest.name} and "
                f"the older {older.name}",
            )
    checks.expect(f"from {older.name}" in training.stderr, f"asr.train did not resume from {older.name}")
    checks.expect(
        (run_dir / "eval" / older.name / "results.json").is_file(),
        f"no eval/{older.name}/results.json from asr.evaluate",
    )
    return checks.row(
        "checkpoint-damage",
        corpus,
        where,
        f"{plural(newest.step - older.step, 'step')} redone from {older.name}",
    )


def fallback_warning(result: Finished, damaged: str, used: str) -> str:
    """The warning line naming both the damaged checkpoint and the older one used, or ''."""
    return next((w for w in result.warnings if f"{damaged} (" in w and used in w), "")
