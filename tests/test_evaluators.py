"""Per-epoch evaluators other than swap (which tests/test_train.py checks bit for bit), and evaluation
of a run's checkpoints from outside: ``asr.evaluate --watch`` and a checkpoint that does not fit."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))
from test_train import events, train  # noqa: E402


@pytest.mark.parametrize(("mode", "decoded"), [("resident", True), ("loss", False)])
def test_resident_and_loss_modes_write_eval_events(tiny_shards, tmp_path, mode, decoded):
    run = tmp_path / mode
    result = train(tiny_shards, run, "train.epochs=2", f"eval.mode={mode}")
    assert result.returncode == 0, result.stderr[-3000:]
    evals = [e for e in events(run) if e["event"] == "eval"]
    assert [e["epoch"] for e in evals] == [0, 1] and all(e["source"] == mode for e in evals)
    assert all(("cer" in e) == decoded and e["loss"] > 0 for e in evals)
    phases = {e["phase"] for e in events(run) if e["event"] == "phase"}
    assert "evaluate" in phases and "swap_out" not in phases


def test_watch_evaluates_new_checkpoints_of_an_external_run(tiny_shards, tmp_path):
    run = tmp_path / "run"
    result = train(tiny_shards, run, "train.epochs=1", "eval.mode=external")
    assert result.returncode == 0, result.stderr[-3000:]
    assert not any(e["event"] == "eval" for e in events(run))
    watch = subprocess.run(
        [sys.executable, "-m", "asr.evaluate", "--watch", str(run), "--data", str(tiny_shards / "dev"),
         "--beam", "4", "--workers", "1", "--poll", "0.5", "--stop-after", "2"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert watch.returncode == 0, watch.stderr[-3000:]
    evals = [e for e in events(run) if e["event"] == "eval"]
    assert len(evals) == 1 and evals[0]["source"] == "external" and evals[0]["split"] == "dev"
    last_step = max(e["step"] for e in events(run) if e["event"] == "checkpoint")
    assert evals[0]["step"] == last_step and 0 <= evals[0]["cer"] <= 100
    assert json.loads((run / "eval" / "watched.json").read_text()) == [f"ckpt-{last_step}"]


def test_checkpoint_that_does_not_fit_the_recipe_is_one_line_exit_2(tiny_shards, tmp_path):
    run = tmp_path / "run"
    assert train(tiny_shards, run, "train.max_steps=2", "eval.mode=external").returncode == 0
    recipe = (run / "recipe.yaml").read_text()
    (run / "recipe.yaml").write_text(recipe.replace("rnn_units: 16", "rnn_units: 24"))
    result = subprocess.run(
        [sys.executable, "-m", "asr.evaluate", "--run", str(run), "--data", str(tiny_shards / "dev"),
         "--beam", "1"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert "ckpt-2" in last and "does not fit the recipe's model" in last
