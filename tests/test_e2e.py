"""The whole pipeline through the README's entry points (``python -m asr STAGE``) on the tiny corpus.

A short version of the main job: extract -> LM -> train (2 epochs of a tiny model, swap-in evaluation
with beam search + LM, TTA tracker) -> final evaluation -> report. It checks the artefacts each stage
promises, not accuracy.
"""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.e2e


def _ok(result, stage):
    assert result.returncode == 0, f"{stage} failed:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
    return result


def test_main_job_end_to_end(tmp_path, tiny_corpus, run_module):
    features, lm, run, report = (tmp_path / name for name in ("features", "lm", "run", "report"))
    for subset, split in (("train-clean", "train"), ("dev-clean", "dev")):
        _ok(
            run_module(
                "asr",
                "extract",
                "--corpus",
                tiny_corpus,
                "--subsets",
                subset,
                "--out",
                features / split,
                "--workers",
                "2",
            ),
            f"extract {split}",
        )
        manifest = json.loads((features / split / "manifest.json").read_text())
        assert manifest["counts"]["kept"] > 0 and manifest["shards"]
        assert all((features / split / shard["file"]).is_file() for shard in manifest["shards"])

    _ok(run_module("asr", "lm", "--manifest", features / "train", "--order", "3", "--out", lm), "lm")
    assert (lm / "lm.binary").is_file() and (lm / "unigrams.txt").is_file()

    _ok(
        run_module(
            "asr",
            "train",
            "recipes/cpu.yaml",
            "--run-dir",
            run,
            "--set",
            f"data.train={features / 'train'}",
            "--set",
            f"data.dev={features / 'dev'}",
            "--set",
            f"eval.lm={lm}",
            "--set",
            "eval.beam_width=8",
            "--set",
            "eval.decode_workers=2",
            "--set",
            "model.conv_filters=32",
            "--set",
            "model.lstm_layers=1",
            "--set",
            "model.lstm_units=32",
            "--set",
            "train.global_batch=4",
            "--set",
            "train.epochs=2",
            "--set",
            "train.time_budget_minutes=0",
            "--set",
            "tta.targets=[{metric: cer, value: 100}]",
            "--set",
            "tta.window=1",
            timeout=600,
        ),
        "train",
    )
    events = [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()]
    kinds = [e["event"] for e in events]
    for kind in ("run_start", "step", "phase", "checkpoint", "eval", "epoch_end", "target", "run_end"):
        assert kind in kinds, f"no {kind} event"
    evals = [e for e in events if e["event"] == "eval"]
    assert len(evals) == 2 and all(0 <= e["cer"] <= 100 and e["beam_width"] == 8 for e in evals)
    assert [e["phase"] for e in events if e["event"] == "phase" and e["phase"] != "checkpoint"][:3] == [
        "swap_out",
        "evaluate",
        "swap_in",
    ]
    assert events[-1]["event"] == "run_end" and events[-1]["reason"] == "epochs"
    assert (run / "recipe.yaml").is_file() and list((run / "checkpoints").glob("ckpt-*.index"))
    assert list((run / "tensorboard").iterdir())

    _ok(
        run_module(
            "asr",
            "evaluate",
            "--run",
            run,
            "--data",
            features / "dev",
            "--beam",
            "16",
            "--lm",
            lm,
            "--workers",
            "2",
            timeout=300,
        ),
        "evaluate",
    )
    rows = json.loads((run / "eval" / "results.json").read_text())
    assert any(r["split"] == "dev" and r["beam_width"] == 16 for r in rows)

    printed = _ok(run_module("asr", "report", run, "--out", report, timeout=300), "report").stdout
    assert (report / "report.md").is_file() and (report / "report.html").is_file()
    assert list(report.glob("**/*.png"))
    text = (report / "report.md").read_text()
    assert "cer" in text.lower() and run.name in text
    assert printed.strip()
