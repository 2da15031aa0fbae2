"""output-is-input: an output that is, lies inside or contains the command's input (``--force`` given) is
refused before any work: exit 2 with one line, the input byte for byte as it was, nothing left beside it."""

from __future__ import annotations

import random
from pathlib import Path

from tools.faults.checks import Checks, Trial
from tools.faults.fixtures import Context
from tools.faults.outputs import copy_run, output_leftovers, snapshot
from tools.faults.process import module, run
from tools.faults.trials.output_kill import CLUSTERS

ROWS = ("export:is", "compress:is", "transcribe:is", "export:inside", "compress:contains")
"""``COMMAND:HOW`` the output relates to the input: ``is`` it (``--out RUN``, ``--output a.wav``), lies
``inside`` it (``--out RUN/exported``), ``contains`` it (``--out`` the directory holding the run)."""
QUICK_ROWS = 3
"""Quick mode: the three ``is`` rows (a refusal costs one start-up each)."""


def plan_output_is_input(rng: random.Random, quick: bool) -> list[dict]:
    """No random choice: every row, in :data:`ROWS` order."""
    trials = [{"corpus": "tiny", "row": row} for row in ROWS]
    return trials[:QUICK_ROWS] if quick else trials


def output_is_input(ctx: Context, specs: list[dict]) -> list[Trial]:
    return [
        ctx.attempt("output-is-input", s["corpus"], lambda s=s: output_is_input_trial(ctx, s["index"], s))
        for s in specs
    ]


def output_is_input_trial(ctx: Context, index: int, spec: dict) -> Trial:
    """Run the command on a copy of the reference run (and, for ``asr.transcribe``, a WAV file made from a
    development utterance). Checks: exit status 2, exactly one stderr line, naming the output, no traceback;
    every file under the input (the run directory, or the WAV file) byte for byte as before; no
    ``OUT.tmp-*``/``OUT.old-*`` beside the output."""
    corpus = spec["corpus"]
    command_name, how = spec["row"].split(":")
    folder = ctx.folder("output-is-input", index, corpus)
    run_dir = copy_run(ctx.reference(corpus).run, folder / "inputs" / "run")
    if command_name == "transcribe":
        audio = wav_from_dev(ctx, corpus, folder / "a.wav")
        watched, out = audio, audio
        command = module("asr.transcribe", audio, "--run", run_dir, "--output", audio)
    else:
        watched = run_dir
        out = {"is": run_dir, "inside": run_dir / "exported", "contains": run_dir.parent}[how]
        if command_name == "export":
            command = module("asr.export", "--run", run_dir, "--out", out, "--force")
        else:
            command = module(
                "asr.compress", "--run", run_dir, "--clusters", CLUSTERS, "--out", out, "--force"
            )
    before = files_of(watched)
    result = run(command, folder / command_name, timeout=600)
    checks = Checks()
    checks.note(result.describe())
    checks.expect(
        result.code == 2 and len(result.lines) == 1,
        f"expected exit 2 with one line, got {result.describe()} ({len(result.lines)} lines)",
    )
    checks.expect(out.name in result.last_line, f"the line does not name {out.name}")
    checks.expect(not result.traceback, "a traceback")
    after = files_of(watched) if watched.exists() else {}
    changed = sorted(name for name in before.keys() | after.keys() if before.get(name) != after.get(name))
    checks.expect(not changed, f"the input changed: {', '.join(changed[:3]) or watched.name + ' removed'}")
    left = output_leftovers(out)
    checks.expect(not left, f"left: {', '.join(left[:3])}")
    where = " ".join(str(part) for part in command[2:]).replace(str(folder) + "/", "")
    return checks.row("output-is-input", corpus, where, "nothing" if not changed else "the input")


def files_of(path: Path) -> dict[str, tuple[int, str]]:
    """:func:`~tools.faults.outputs.snapshot` of a directory, or of one file (keyed by its name)."""
    if path.is_dir():
        return snapshot(path)
    return {name: value for name, value in snapshot(path.parent).items() if name == path.name}


def wav_from_dev(ctx: Context, corpus: str, path: Path) -> Path:
    """The first development FLAC of the corpus, written as 16-bit PCM WAV."""
    import soundfile

    flac = sorted((ctx.corpora[corpus].directory / ctx.corpora[corpus].dev).rglob("*.flac"))[0]
    samples, rate = soundfile.read(flac, dtype="int16")
    soundfile.write(path, samples, rate, subtype="PCM_16")
    return path
