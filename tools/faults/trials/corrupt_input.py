"""corrupt-input: damaged or missing shards, garbage audio: warnings, or exit 2 with --strict."""

from __future__ import annotations

import json
import random
import re
import shutil
from pathlib import Path

from tools.faults.checks import Checks, Trial
from tools.faults.damage import cut_file, flac_audio_start, flip_bytes
from tools.faults.fixtures import FAST_RERUN, Context, evaluate_command
from tools.faults.outputs import copy_run, json_or_none, read_event_log
from tools.faults.process import module, run

CORRUPT_ROWS = ("bad-shards:train", "bad-shards:evaluate", "bad-shards:lm", "missing-shard:train",
                "missing-shard:evaluate", "missing-shard:lm", "bad-flac:extract")  # fmt: skip


def plan_corrupt_input(rng: random.Random, quick: bool) -> list[dict]:
    """The damage is drawn once (the same damaged shards serve training, evaluation and the LM build)."""
    damage = {
        "flip": rng.random(),
        "cut": rng.random(),
        "shards": rng.sample(range(3), 2),
        "missing": rng.randrange(3),
        "flac": rng.random(),
        "flac_how": rng.choice(("flip", "cut")),
        "flac_at": [rng.random() for _ in range(8)],
    }
    trials = [{"corpus": "tiny", "row": row, **damage} for row in CORRUPT_ROWS]
    return trials[:1] if quick else trials


def corrupt_input(ctx: Context, specs: list[dict]) -> list[Trial]:
    """Damaged and missing shards, garbage audio (see :func:`corrupt_input_trial`)."""
    return [
        ctx.attempt("corrupt-input", s["corpus"], lambda s=s: corrupt_input_trial(ctx, s["index"], s))
        for s in specs
    ]


def damaged_shards(ctx: Context, spec: dict, kind: str) -> tuple[Path, list[Path], str]:
    """A copy of the tiny training shards with one shard's byte flipped and another cut in the middle
    (``bad-shards``) or one shard deleted (``missing-shard``): the directory, the damaged files, what.
    Made once; the rows of training, evaluation and the LM build read the same damage."""
    return ctx.shared(f"corrupt-input:{kind}", lambda: _damage_shards(ctx, spec, kind))


def _damage_shards(ctx: Context, spec: dict, kind: str) -> tuple[Path, list[Path], str]:
    shards = ctx.shards(spec["corpus"])
    copy = ctx.work / "corrupt-input" / kind
    shutil.copytree(shards.train, copy)
    files = sorted(copy.glob("shard-*.tfrecord.gz"))
    if kind == "bad-shards":
        flipped, cut = (files[i] for i in spec["shards"])
        what = flip_bytes(flipped, [0.2 + 0.6 * spec["flip"]]) + "; " + cut_file(cut, 0.3 + 0.4 * spec["cut"])
        damaged = [flipped, cut]
    else:
        damaged = [files[spec["missing"]]]
        damaged[0].unlink()
        what = f"{damaged[0].name} deleted (manifest.json lists it)"
    return copy, damaged, what


def corrupt_input_trial(ctx: Context, index: int, spec: dict) -> Trial:
    """Damaged input for one command, with and without ``--strict``.

    Shards (a flipped byte: bad CRC; a shard cut in the middle; a shard deleted although listed): the
    command completes with one warning per damaged file naming it, using the readable records and no
    traceback; with ``--strict`` it exits 2 with one line. A FLAC file that decodes to garbage: extraction
    completes and counts it in ``manifest.json``'s ``skipped_by_reason``.
    """
    kind, command_name = spec["row"].split(":")
    corpus = spec["corpus"]
    folder = ctx.folder("corrupt-input", index, corpus)
    if kind == "bad-flac":
        return bad_flac_trial(ctx, folder, spec)
    directory, damaged, what = damaged_shards(ctx, spec, kind)
    shards = ctx.shards(corpus)
    checks = Checks()

    def command(strict: bool, name: str) -> list[str]:
        flag = ["--strict"] if strict else []
        if command_name == "train":
            config = ctx.configs[corpus]
            return [
                *config.command(
                    shards, folder / f"run-{name}", f"data.train={directory}", "train.epochs=1", *FAST_RERUN
                ),
                *flag,
            ]
        if command_name == "evaluate":
            run_dir = folder / "run"
            if not run_dir.exists():
                copy_run(ctx.reference(corpus).run, run_dir)
            return [*evaluate_command(run_dir, directory), *flag]
        return [*module("asr.lm", "--manifest", directory, "--out", folder / f"lm-{name}"), *flag]

    lenient = run(command(False, "lenient"), folder / "lenient", timeout=600)
    strict = run(command(True, "strict"), folder / "strict", timeout=600)
    named = {f: [w for w in lenient.warnings if str(f) in w] for f in damaged}
    checks.note(
        f"lenient exit {lenient.code}, {len(lenient.warnings)} warning(s); --strict {strict.describe()}"
    )
    checks.expect(lenient.code == 0, f"lenient run {lenient.describe()}")
    checks.expect(not lenient.traceback, "a traceback")
    checks.expect(
        all(len(w) == 1 for w in named.values()) and len(lenient.warnings) == len(damaged),
        f"{len(lenient.warnings)} warning lines, expected one naming each of "
        f"{', '.join(f.name for f in damaged)}",
    )
    checks.expect(
        strict.code == 2 and len(strict.lines) == 1 and any(str(f) in strict.last_line for f in damaged),
        f"--strict: expected exit 2 with one line naming a damaged shard, got {strict.describe()} "
        f"({len(strict.lines)} lines)",
    )
    counts = [int(n) for n in re.findall(r"(\d+) lost", " ".join(lenient.warnings))]
    lost = f"{sum(counts)} utterances" if counts else "—"
    if command_name == "train":
        start = next(
            (e for e in read_event_log(folder / "run-lenient")[0] if e.get("event") == "run_start"), {}
        )
        total = json.loads((shards.train / "manifest.json").read_text())["counts"]["kept"]
        lost = f"{total - start.get('utterances', total)} of {total} utterances"
        checks.expect(
            0 < start.get("utterances", 0) < total,
            f"trained on {start.get('utterances')} utterances, expected the readable part of {total}",
        )
    return checks.row("corrupt-input", corpus, f"{kind} → asr.{command_name}: {what}", lost)


def bad_flac_trial(ctx: Context, folder: Path, spec: dict) -> Trial:
    """A copy of data/tiny with one dev-clean FLAC damaged in its audio frames (bytes inverted, or cut):
    ``asr.extract`` must complete and count the utterance in ``skipped_by_reason``."""
    corpus = ctx.corpora[spec["corpus"]]
    copy = folder / "corpus"
    shutil.copytree(corpus.directory, copy)
    flacs = sorted((copy / corpus.dev).rglob("*.flac"))
    victim = flacs[int(spec["flac"] * len(flacs))]
    start = flac_audio_start(victim)
    if spec["flac_how"] == "flip":
        what = flip_bytes(victim, spec["flac_at"], start=start + 16)
    else:
        what = cut_file(victim, 0.2 + 0.6 * spec["flac_at"][0], start=start)
    checks = Checks()
    out = folder / "dev"
    result = run(
        module("asr.extract", "--corpus", copy, "--subsets", corpus.dev, "--out", out, "--workers", 2),
        folder / "extract",
        timeout=300,
    )
    checks.expect(result.code == 0, f"asr.extract {result.describe()}")
    checks.expect(not result.traceback, "a traceback")
    manifest = json_or_none(out / "manifest.json") or {}
    counts = manifest.get("counts", {})
    skipped = [s for s in manifest.get("skipped", []) if s.get("utt_id") == victim.stem]
    reasons = counts.get("skipped_by_reason", {})
    checks.note(f"exit {result.code}; skipped_by_reason {reasons}")
    checks.expect(
        len(skipped) == 1 and reasons.get(skipped[0]["reason"].split(":", 1)[0], 0) >= 1,
        f"{victim.stem} is not counted in skipped_by_reason ({reasons})",
    )
    return checks.row(
        "corrupt-input",
        spec["corpus"],
        f"bad-flac → asr.extract: {what}",
        f"1 utterance ({victim.stem})",
    )
