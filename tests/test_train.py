"""``asr.train`` through its command line, as real processes on real shards of the tiny corpus.

Synchronous data parallelism (1, 2 and 4 replicas on logical CPUs; 2 worker processes on localhost),
stop and resume, swap evaluation leaving training untouched, non-finite steps, and bad input.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
TINY_MODEL = [
    "model.conv_filters=16", "model.rnn_layers=2", "model.rnn_units=16", "train.global_batch=4",
    "eval.lm=", "eval.beam_width=4", "eval.decode_workers=1", "train.sample_every_steps=3",
]  # fmt: skip


@pytest.fixture(scope="module")
def shards(tiny_shards):
    return tiny_shards


def train_command(shards: Path, run_dir: Path, *sets: str) -> list[str]:
    command = [sys.executable, "-m", "asr.train", "recipes/cpu.yaml", "--run-dir", str(run_dir)]
    for item in (f"data.train={shards / 'train'}", f"data.dev={shards / 'dev'}", *TINY_MODEL, *sets):
        command += ["--set", item]
    return command


def train(shards: Path, run_dir: Path, *sets: str, env: dict | None = None, timeout: float = 300):
    return subprocess.run(
        train_command(shards, run_dir, *sets),
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout, env=env,
    )  # fmt: skip


def events(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines() if line.strip()]


def model_weights(prefix: Path) -> dict[str, np.ndarray]:
    """Every model weight of a checkpoint (trainable ones are saved under the optimizer's references;
    batch-norm statistics under the model's), by checkpoint key; optimizer slots excluded."""
    import tensorflow as tf

    reader = tf.train.load_checkpoint(str(prefix))
    return {
        key: reader.get_tensor(key)
        for key in reader.get_variable_to_shape_map()
        if key.startswith(("model/", "optimizer/_trainable_variables/"))
    }


def latest(run_dir: Path) -> Path:
    states = sorted((run_dir / "checkpoints").glob("ckpt-*.json"), key=lambda p: int(p.stem.split("-")[1]))
    return states[-1].with_suffix("")


def assert_same_weights(a: dict, b: dict, exact: bool = True) -> None:
    """Equal weights; ``exact=False`` allows float reduction-order noise, which Adam's normalized update
    can turn into at most a fraction of one step (learning rate 1e-3) on an element whose gradient is ~0."""
    assert a.keys() == b.keys() and len(a) > 10
    for key in a:
        if exact:
            assert np.array_equal(a[key], b[key]), key
        else:
            difference = np.abs(a[key] - b[key])
            assert difference.max() < 5e-4, key
            assert difference.mean() < 1e-6, key


def test_replicas_give_the_weights_of_one_replica_with_the_same_global_batch(shards, tmp_path):
    """2 and 4 replicas (logical CPUs, MirroredStrategy, synchronized batch norm, dropout off) = 1 replica."""
    common = ["model.dropout=0", "data.spec_augment=false", "runtime.sync_batch_norm=true",
              "train.max_steps=3", "eval.mode=external"]  # fmt: skip
    weights = {}
    for replicas in (1, 2, 4):
        strategy = "one_device" if replicas == 1 else "mirrored"
        run = tmp_path / f"r{replicas}"
        result = train(shards, run, *common, f"runtime.replicas={replicas}", f"runtime.strategy={strategy}")
        assert result.returncode == 0, result.stderr[-3000:]
        start = events(run)[0]
        assert start["replicas"] == replicas
        assert ("MirroredStrategy" if replicas > 1 else "OneDeviceStrategy") in start["strategy"]
        weights[replicas] = model_weights(latest(run))
    initial_moved = any(not np.allclose(v, 0) for v in weights[1].values())
    assert initial_moved
    assert_same_weights(weights[1], weights[2], exact=False)
    assert_same_weights(weights[1], weights[4], exact=False)


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def test_two_worker_processes_end_with_identical_weights(shards, tmp_path):
    """MultiWorkerMirroredStrategy across 2 processes on localhost: both hold the same weights."""
    workers = [f"localhost:{port}" for port in _free_ports(2)]
    run = tmp_path / "run"
    processes = []
    for index in range(2):
        scratch = tmp_path / f"tmp{index}"
        scratch.mkdir()
        env = {
            **os.environ,
            "TMPDIR": str(scratch),
            "TF_CONFIG": json.dumps(
                {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
            ),
        }
        command = train_command(shards, run, "runtime.strategy=multi_worker", "train.max_steps=3",
                                "eval.mode=external", "runtime.sync_batch_norm=true")  # fmt: skip
        processes.append(
            subprocess.Popen(
                command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
        )
    outputs = []
    try:
        for process in processes:
            outputs.append(process.communicate(timeout=300))
    finally:
        for process in processes:
            process.kill()
    for process, (_, err) in zip(processes, outputs, strict=True):
        assert process.returncode == 0, err[-3000:]
    start = events(run)[0]
    assert start["workers"] == 2 and start["replicas"] == 2
    chief = model_weights(latest(run))
    (worker_checkpoint,) = sorted((tmp_path / "tmp1").glob("asr-worker-*/checkpoints/ckpt-3.index"))
    assert_same_weights(chief, model_weights(worker_checkpoint.with_suffix("")))
    assert not list((tmp_path / "tmp0").glob("asr-worker-*")), "the chief wrote a scratch checkpoint"


def test_swap_evaluation_leaves_training_bit_for_bit_unchanged(shards, tmp_path):
    """2 epochs with swap-in evaluation after each = 2 epochs without in-process evaluation."""
    swap, external = tmp_path / "swap", tmp_path / "external"
    for run, mode in ((swap, "swap"), (external, "external")):
        result = train(shards, run, "train.epochs=2", f"eval.mode={mode}")
        assert result.returncode == 0, result.stderr[-3000:]
    phases = [e["phase"] for e in events(swap) if e["event"] == "phase" and e["phase"] != "checkpoint"]
    assert phases == ["swap_out", "evaluate", "swap_in"] * 2
    assert sum(e["event"] == "eval" for e in events(swap)) == 2
    assert not any(e["event"] == "eval" for e in events(external))
    assert latest(swap).name == latest(external).name
    assert_same_weights(model_weights(latest(swap)), model_weights(latest(external)))


def test_sigterm_saves_and_a_rerun_resumes_where_training_stopped(shards, tmp_path):
    """SIGTERM mid-epoch: checkpoint and exit 143; re-running resumes (data position, clock, downtime)
    and ends with the weights of an uninterrupted run."""
    sets = ("train.epochs=3", "eval.mode=loss")
    straight = tmp_path / "straight"
    assert train(shards, straight, *sets).returncode == 0

    run = tmp_path / "run"
    process = subprocess.Popen(train_command(shards, run, *sets), cwd=REPO_ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        log = run / "events.jsonl"
        if log.is_file() and sum(e["event"] == "step" for e in events(run)) >= 6:
            break
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM, err[-3000:]
    stopped = events(run)
    assert stopped[-1]["event"] == "run_end" and stopped[-1]["reason"] == "signal"
    stop_step, stop_elapsed = stopped[-1]["step"], stopped[-1]["elapsed"]
    assert 6 <= stop_step < 12
    assert int(latest(run).name.split("-")[1]) == stop_step

    time.sleep(1.0)
    resumed = train(shards, run, *sets)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed at epoch" in resumed.stderr
    after = events(run)[len(stopped) :]
    start = after[0]
    assert start["event"] == "run_start" and start["resumed"] is True and start["downtime"] >= 1.0
    steps = [e for e in after if e["event"] == "step"]
    assert steps[0]["step"] == stop_step + 1 and steps[0]["elapsed"] > stop_elapsed
    assert after[-1]["reason"] == "epochs"
    assert latest(run).name == latest(straight).name
    assert_same_weights(model_weights(latest(run)), model_weights(latest(straight)))


def test_non_finite_loss_step_is_skipped_and_weights_untouched(shards, tmp_path):
    """A batch with a NaN feature gives a NaN loss: no update, batch-norm statistics put back."""
    import tensorflow as tf

    from asr.config import load_recipe
    from asr.strategy import make_strategy
    from asr.train import TrainingSession

    recipe = load_recipe(REPO_ROOT / "recipes" / "cpu.yaml", [*TINY_MODEL, "runtime.strategy=one_device"])
    strategy = make_strategy(recipe.runtime, env={})
    session = TrainingSession(strategy, recipe, tmp_path, is_chief=True)
    before = [np.array(w) for w in session.model.get_weights()]
    features = np.random.default_rng(0).normal(size=(4, 40, 93)).astype(np.float32)
    poisoned = features.copy()
    poisoned[1, 7, 3] = np.nan
    frames = tf.constant([40, 40, 40, 40], tf.int32)
    labels, lengths = tf.ones([4, 5], tf.int32), tf.constant([5, 5, 5, 5], tf.int32)
    loss, applied, _ = session.train_step((tf.constant(poisoned), frames, labels, lengths))
    assert not applied and not np.isfinite(loss)
    for old, new in zip(before, session.model.get_weights(), strict=True):
        assert np.array_equal(old, np.asarray(new))
    loss, applied, _ = session.train_step((tf.constant(features), frames, labels, lengths))
    assert applied and np.isfinite(loss)
    after = session.model.get_weights()
    assert any(not np.array_equal(o, np.asarray(n)) for o, n in zip(before, after, strict=True))


def test_repeated_non_finite_steps_stop_with_a_checkpoint(shards, tmp_path):
    run = tmp_path / "run"
    result = train(shards, run, "train.learning_rate=1e30", "train.optimizer=adadelta", "train.clip_norm=0",
                   "train.max_consecutive_nan_steps=2", "train.epochs=5")  # fmt: skip
    kinds = [e["event"] for e in events(run)]
    if result.returncode == 0:
        pytest.skip("a learning rate of 1e30 did not make the loss non-finite here")
    assert result.returncode == 2
    assert "non-finite steps in a row" in result.stderr.strip().splitlines()[-1]
    assert kinds.count("skipped_step") == 2 and events(run)[-1]["reason"] == "nan"
    assert list((run / "checkpoints").glob("ckpt-*.index"))


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (["train.global_bach=4"], "train.global_bach: unknown key"),
        (["train.global_batch=many"], "train.global_batch: expected an integer"),
        (["runtime.replicas=3"], "cannot be split evenly over runtime.replicas=3"),
        (["data.train=/nonexistent/shards"], "data.train: /nonexistent/shards: no such shard directory"),
    ],
)
def test_bad_recipe_or_data_is_one_line_and_exit_2(shards, tmp_path, sets, message):
    result = train(shards, tmp_path / "run", *sets)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr[-2000:]


def test_manifest_with_another_alphabet_is_refused(shards, tmp_path):
    import shutil

    other = tmp_path / "train"
    shutil.copytree(shards / "train", other)
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["alphabet"] = manifest["alphabet"][:-2]
    (other / "manifest.json").write_text(json.dumps(manifest))
    result = train(shards, tmp_path / "run", f"data.train={other}")
    assert result.returncode == 2
    assert f"{other / 'manifest.json'}: alphabet" in result.stderr.strip().splitlines()[-1]


def test_corrupted_shard_is_named(shards, tmp_path):
    import shutil

    other = tmp_path / "train"
    shutil.copytree(shards / "train", other)
    (shard,) = sorted(other.glob("*.tfrecord.gz"))
    data = bytearray(shard.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 64] = bytes(64)
    shard.write_bytes(bytes(data))
    result = train(shards, tmp_path / "run", f"data.train={other}")
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert str(shard) in last and "corrupted shard" in last


def test_summary_prints_the_paper_model():
    result = subprocess.run([sys.executable, "-m", "asr.train", "--summary", "recipes/base.yaml"],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert result.returncode == 0
    assert "total parameters: 25,632,830 (25.6 M)" in result.stdout
    assert "floor((T - 11) / 2) + 1 = 830 for T = 1670" in result.stdout
