"""disk-full: one kind of file on a full filesystem: one line, nothing damaged, a rerun completes."""

from __future__ import annotations

import random
import shutil

from tools.faults.checks import Checks, Trial
from tools.faults.damage import FullDisk
from tools.faults.fixtures import FAST_RERUN, Context, evaluate_command
from tools.faults.outputs import changed_since, checkpoints, compare_extraction, copy_run, leftovers, snapshot
from tools.faults.process import run

DISK_TARGETS = ("shards", "checkpoints", "events", "eval-results")


def plan_disk_full(rng: random.Random, quick: bool) -> list[dict]:
    trials = [{"corpus": "tiny", "target": target} for target in DISK_TARGETS]
    return [rng.choice(trials)] if quick else trials


def disk_full(ctx: Context, specs: list[dict]) -> list[Trial]:
    """A write fails for lack of space (see :func:`disk_full_trial`)."""
    return [
        ctx.attempt("disk-full", s["corpus"], lambda s=s: disk_full_trial(ctx, s["index"], s)) for s in specs
    ]


def disk_full_trial(ctx: Context, index: int, spec: dict) -> Trial:
    """Put exactly one kind of file on a full filesystem and run the command that writes it.

    Targeting: with tmpfs only that kind of file lives on it (the extraction's ``--out``; or a symlink from
    the run directory's ``checkpoints/``, ``events.jsonl`` or ``eval/`` into the tmpfs), filled to leave
    less than the next write needs. With RLIMIT_FSIZE the limit lies between the sizes of the files written
    before and the size of the target's next file (see each target's description in its row).

    Checks: exit status non-zero, the last stderr line is one line naming the target's path, no traceback,
    the files present before are unchanged (an appended log keeps its old bytes, pruned old checkpoints may
    go), no ``*.tmp-*`` left; once the filler is deleted (the limit dropped) the same command completes.
    """
    corpus, target = spec["corpus"], spec["target"]
    shards, reference, config = ctx.shards(corpus), ctx.reference(corpus), ctx.configs[corpus]
    folder = ctx.folder("disk-full", index, f"{corpus}-{target}")
    mount = folder / "full"
    checks = Checks()
    setup = {
        "shards": (256 << 10, 200_000),
        "checkpoints": (64 << 10, 200_000),
        "events": (0, 0),
        "eval-results": (0, 64),
    }[target]
    with FullDisk(ctx.disk_method, mount, *setup) as disk:
        if target == "shards":
            out = mount / "train" if disk.method == "tmpfs" else folder / "train"
            (out / "sidecars").mkdir(parents=True)
            shutil.copy2(shards.train / "shard-00000.tfrecord.gz", out)
            shutil.copy2(shards.train / "sidecars" / "shard-00000.json", out / "sidecars")
            command = shards.corpus.extract_command(shards.corpus.train, out)
            watched, path, appended, prunable = out, out, (), None
            what = "asr.extract --out (shard 0 already there; a shard is ~1 MB)"
            lost = "the shards being written"
        else:
            run_dir = copy_run(reference.run, folder / "run")
            watched, appended, prunable = run_dir, ("events.jsonl",), r"checkpoints/ckpt-"
            moved = {"checkpoints": "checkpoints", "events": "events.jsonl", "eval-results": "eval"}[target]
            if target == "eval-results":  # results of an earlier evaluation must survive the failed one
                first = run(evaluate_command(run_dir, shards.dev), folder / "evaluate-before", timeout=300)
                checks.expect(first.code == 0, f"evaluation before the fault {first.describe()}")
            if target == "events" and disk.method == "rlimit":
                disk.limit = (run_dir / "events.jsonl").stat().st_size + 1
            if disk.method == "tmpfs":
                shutil.move(run_dir / moved, mount / moved)
                (run_dir / moved).symlink_to(mount / moved)
            path = run_dir / moved
            if target == "eval-results":
                command = evaluate_command(run_dir, shards.dev)
                what = "RUN/eval/ (an earlier evaluation's results inside)"
                lost = "the evaluation (redone)"
            else:
                epochs = reference.epochs + (1 if target == "checkpoints" else 2)
                command = config.command(shards, run_dir, f"train.epochs={epochs}", *FAST_RERUN)
                what = {
                    "checkpoints": "RUN/checkpoints/ (a checkpoint is ~320 KB)",
                    "events": "RUN/events.jsonl",
                }[target]
                lost = f"the steps after {checkpoints(run_dir)[-1].name} (redone)"
        before = snapshot(watched)
        disk.fill()
        where = disk.describe(what)
        failed = run(disk.command(command), folder / "full-run", timeout=reference.seconds * 3 + 180)
        checks.note(f"{failed.describe()}")
        checks.expect(failed.code not in (0, None), f"exit status {failed.code} (expected non-zero)")
        checks.expect(str(path) in failed.last_line, f"last line does not name {path}")
        checks.expect(not failed.traceback, "a traceback on stderr")
        changed = changed_since(before, watched, appended, prunable, rewritten=("recipe.yaml",))
        checks.expect(not changed, "damaged before the fault: " + ", ".join(changed[:3]))
        left = leftovers(watched)
        checks.expect(not left, f"left: {', '.join(left[:3])}")
        disk.lift()
        rerun = run(disk.command(command), folder / "rerun", timeout=reference.seconds * 3 + 180)
        checks.note(f"space back: rerun exit {rerun.code}")
        checks.expect(rerun.code == 0, f"rerun with space {rerun.describe()}")
        equal = "—"
        if target == "shards":
            differences = compare_extraction(out, shards.train)
            equal = "yes: shards byte-identical" if not differences else "no: " + "; ".join(differences[:2])
            checks.expect(not differences, "after the rerun: " + "; ".join(differences[:2]))
    return checks.row("disk-full", corpus, where, lost, equal)
