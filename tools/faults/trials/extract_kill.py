"""extract-kill: SIGKILL feature extraction, rerun it: byte-identical output."""

from __future__ import annotations

import json
import os
import random
import signal
import time
from pathlib import Path

from tools.faults.checks import Checks, Trial, plural
from tools.faults.fixtures import Context, kill_spec
from tools.faults.outputs import compare_extraction, json_or_none, leftovers
from tools.faults.process import Process, failpoint, run


def plan_extract_kill(rng: random.Random, quick: bool) -> list[dict]:
    """Full: 10 on minilibri train-clean (8 at a random time, 2 through the worker fail point); quick: 2 on
    tiny (one of each)."""
    full = [kill_spec(rng, "minilibri", "extract.shard" if i in (3, 7) else "time") for i in range(10)]
    tiny = [kill_spec(rng, "tiny", how) for how in ("time", "extract.shard")]
    return tiny if quick else full


def extract_kill(ctx: Context, specs: list[dict]) -> list[Trial]:
    """SIGKILL feature extraction and rerun it (see :func:`extract_kill_trial`)."""
    return [
        ctx.attempt("extract-kill", s["corpus"], lambda s=s: extract_kill_trial(ctx, s["index"], s))
        for s in specs
    ]


def extract_kill_trial(ctx: Context, index: int, spec: dict) -> Trial:
    """Kill ``asr.extract`` of the training split, wait 0.5-2 s and rerun it (orphaned workers of a killed
    main process may still be finishing their shard meanwhile, as after a real kill -9).

    A random-time kill SIGKILLs the main process. The ``extract.shard=kill@N`` fail point SIGKILLs the worker
    writing shard N: the command must then end by itself (not wait forever for the lost shard). Checks
    after the rerun: exit 0, every shard byte-identical to the reference extraction, sidecars and manifest
    equal without their timing fields, no ``*.tmp-*`` left.
    """
    corpus = spec["corpus"]
    shards = ctx.shards(corpus)
    folder = ctx.folder("extract-kill", index, corpus)
    out = folder / shards.train.name
    command = shards.corpus.extract_command(shards.corpus.train, out)
    checks = Checks()
    planned = len(list(shards.train.glob("shard-*")))
    if spec["how"] == "time":
        at = spec["at"] * shards.train_seconds
        process = Process(command, folder / "killed")
        ended = process.wait(at)
        if not ended:
            process.kill()
        complete, writing = extraction_progress(out)
        where = (
            f"main process SIGKILLed at {at:.1f} s of {shards.train_seconds:.1f} s: {complete} of {planned} "
            f"shards complete, {writing} being written"
        )
        if ended:
            where = f"not struck: extraction ended (exit {process.code}) before {at:.1f} s"
    else:
        shard = int(spec["k"] * planned)
        rule = f"extract.shard=kill@{shard}"
        process = Process(command, folder / "killed", failpoint(rule))
        patience = 20 if ctx.quick else 60
        ended = process.wait(shards.train_seconds + patience)
        complete, writing = extraction_progress(out)
        where = f"{rule}: the worker writing shard {shard} SIGKILLed; {complete} of {planned} shards complete"
        if checks.expect(
            ended,
            f"the run never ended after its worker was killed (still waiting after "
            f"{shards.train_seconds + patience:.0f} s)",
        ):
            checks.note(f"killed run: {process.finish().describe()}")
        else:
            os.kill(process.popen.pid, signal.SIGTERM)  # what a user's Ctrl-C or `kill` would do next
            stopped = process.wait_more(10)
            checks.note(
                "killed run hung; SIGTERM "
                + ("stopped it" if stopped else "did not stop it either (SIGKILLed)")
            )
            if not stopped:
                process.kill()
    time.sleep(spec["gap"])
    rerun = run(command, folder / "rerun", timeout=shards.train_seconds * 4 + 120)
    if process.end_group(grace=5):  # orphaned workers finishing their shard may take a moment
        checks.note("the killed run's workers were still alive after the rerun (the harness SIGKILLed them)")
    checks.expect(rerun.code == 0, f"rerun {rerun.describe()}")
    differences = compare_extraction(out, shards.train)
    checks.expect(not differences, "; ".join(differences[:3]))
    left = leftovers(out)
    checks.expect(not left, f"left: {', '.join(left[:3])}")
    timing = (
        json.loads((out / "timing-task0.json").read_text()) if (out / "timing-task0.json").is_file() else {}
    )
    written = timing.get("shards_written")
    checks.note(f"rerun exit {rerun.code}, wrote {'?' if written is None else plural(written, 'shard')}")
    equal = (
        "yes: shards byte-identical, sidecars and manifest equal but for timing" if not differences else "no"
    )
    return checks.row(
        "extract-kill", corpus, where, f"{'?' if written is None else plural(written, 'shard')} redone", equal
    )


def extraction_progress(out: Path) -> tuple[int, int]:
    """Shards with a readable sidecar, and temporary files being written."""
    complete = sum(1 for sidecar in (out / "sidecars").glob("shard-*.json") if json_or_none(sidecar))
    return complete, len([p for p in out.rglob("*") if ".tmp-" in p.name]) if out.is_dir() else 0
