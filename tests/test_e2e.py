"""The main job end to end through the README's entry point (``tools/demo.sh``, which ``make demo`` runs).

A short version on the tiny corpus: extract -> LM -> train (a tiny model for 2 epochs, resident evaluation
with beam search + LM, TTA tracker) -> final evaluation -> report. It checks the artefacts each stage
promises, not accuracy, and that a second run skips the finished stages.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.e2e


def demo(*args, timeout=900) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", "tools/demo.sh", *map(str, args)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHON": sys.executable},
    )


def test_main_job_end_to_end(tmp_path, tiny_corpus):
    work, run = tmp_path / "work", tmp_path / "run"
    args = [
        "--corpus", tiny_corpus, "--work", work, "--run-dir", run, "--final-beam", "16",
        "--set", "model.conv_filters=32", "--set", "model.rnn_layers=1", "--set", "model.rnn_units=32",
        "--set", "train.global_batch=4", "--set", "train.epochs=2", "--set", "train.time_budget_minutes=0",
        "--set", "eval.beam_width=8", "--set", "tta.targets=[{metric: cer, value: 100}]",
        "--set", "tta.window=1", "--set", "train.sample_every_steps=2",
    ]  # fmt: skip
    result = demo(*args)
    assert result.returncode == 0, f"{result.stdout[-3000:]}\n{result.stderr[-4000:]}"
    for stage in range(6):
        assert f"=== stage {stage}:" in result.stdout

    for split in ("train", "dev", "test"):
        manifest = json.loads((work / split / "manifest.json").read_text())
        assert manifest["counts"]["kept"] > 0
        assert all((work / split / shard["file"]).is_file() for shard in manifest["shards"])
    assert (work / "lm" / "lm.binary").is_file() and (work / "lm" / "unigrams.txt").is_file()

    events = [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()]
    kinds = [e["event"] for e in events]
    for kind in ("run_start", "step", "sample", "phase", "checkpoint", "eval", "epoch_end", "target", "util"):
        assert kind in kinds, f"no {kind} event"
    evals = [e for e in events if e["event"] == "eval"]
    assert len(evals) == 2 and all(0 <= e["cer"] <= 100 and e["beam_width"] == 8 for e in evals)
    phases = [e["phase"] for e in events if e["event"] == "phase" and e["phase"] != "checkpoint"]
    assert phases == ["evaluate", "evaluate"]  # the cpu recipe evaluates resident (no swap on a CPU)
    assert events[-1]["event"] == "run_end" and events[-1]["reason"] == "epochs"
    assert (run / "recipe.yaml").is_file() and list((run / "checkpoints").glob("ckpt-*.index"))
    assert list((run / "tensorboard").iterdir())

    rows = json.loads((run / "eval" / "results.json").read_text())
    assert {r["split"] for r in rows if r["beam_width"] == 16} == {"test", "dev"}
    assert (run / "report" / "report.md").is_file() and (run / "report" / "report.html").is_file()
    assert list((run / "report").glob("**/*.png"))
    assert "final test (beam 16 + LM): WER" in result.stdout
    assert "TTA CER 100 %" in result.stdout

    again = demo(*args, "--stage", "1", "--stop-stage", "4")
    assert again.returncode == 0, again.stderr[-3000:]
    for line in (
        f"{work}/train: done already, skipped",
        f"{work}/lm: done already, skipped",
        f"{run}: trained already, skipped",
        f"{run}/eval: done already, skipped",
    ):
        assert line in again.stdout
    assert "asr.train:" not in again.stderr


def test_demo_rejects_bad_stage():
    result = demo("--stage", "9")
    assert result.returncode == 2
    assert result.stderr.strip() == "demo.sh: error: --stage: expected 0-5, got '9'"
