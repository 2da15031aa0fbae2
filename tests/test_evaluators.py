"""Per-epoch evaluators other than swap (which tests/test_train.py checks bit for bit), and evaluation
of a run's checkpoints from outside: ``asr.evaluate --watch`` and a checkpoint that does not fit."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from test_train import events, train


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


def test_watch_evaluates_new_checkpoints_of_a_run(tiny_run, tiny_shards, tmp_path, capsys):
    """``--watch`` on a copy of a finished run (as on an ``eval.mode: external`` one: it reads only the run
    directory): its one checkpoint decoded by beam search, one ``external`` event appended."""
    from asr.evaluate import main

    run = shutil.copytree(tiny_run, tmp_path / "run")
    assert not any(e["event"] == "eval" and e["source"] == "external" for e in events(run))
    watch = ["--watch", str(run), "--data", str(tiny_shards / "dev"), "--beam", "4", "--workers", "1",
             "--poll", "0.2", "--stop-after", "0.5"]  # fmt: skip
    with pytest.warns(UserWarning, match="without a language model"):
        assert main(watch) == 0
    assert "stopping" in capsys.readouterr().out
    evals = [e for e in events(run) if e["event"] == "eval" and e["source"] == "external"]
    assert len(evals) == 1 and evals[0]["split"] == "dev" and evals[0]["beam_width"] == 4
    last_step = max(e["step"] for e in events(run) if e["event"] == "checkpoint")
    assert evals[0]["step"] == last_step and 0 <= evals[0]["cer"] <= 100
    assert json.loads((run / "eval" / "watched.json").read_text()) == [f"ckpt-{last_step}"]


def test_checkpoint_that_does_not_fit_the_recipe_is_one_line_exit_2(tiny_run, tiny_shards, tmp_path, capsys):
    from asr.evaluate import main

    run = shutil.copytree(tiny_run, tmp_path / "run")
    recipe = (run / "recipe.yaml").read_text()
    assert "rnn_units: 16\n" in recipe
    (run / "recipe.yaml").write_text(recipe.replace("rnn_units: 16\n", "rnn_units: 12\n"))
    assert main(["--run", str(run), "--data", str(tiny_shards / "dev"), "--beam", "1"]) == 2
    (checkpoint,) = (run / "checkpoints").glob("ckpt-*.index")
    err = capsys.readouterr().err
    assert err.startswith(
        f"asr.evaluate: error: {run / 'checkpoints' / checkpoint.stem}: does not fit the recipe's"
    )
    assert err.endswith(f"; recipe {run / 'recipe.yaml'}\n") and err.count("\n") == 1
