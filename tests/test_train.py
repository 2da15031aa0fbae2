"""``asr.train`` through its command line, as real processes on real shards of the tiny corpus.

Synchronous data parallelism (1, 2 and 4 replicas on logical CPUs; 2 worker processes on localhost),
stop and resume, swap evaluation leaving training untouched, non-finite steps, and bad input.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
TINY = REPO_ROOT / "recipes" / "tiny.yaml"
"""The tests' recipe (the tiny model); each test states what it changes."""


@pytest.fixture(scope="module")
def shards(tiny_shards):
    return tiny_shards


def train_command(shards: Path, run_dir: Path, *sets: str) -> list[str]:
    command = [sys.executable, "-m", "asr.train", "recipes/tiny.yaml", "--run-dir", str(run_dir)]
    for item in (f"data.train={shards / 'train'}", f"data.dev={shards / 'dev'}", *sets):
        command += ["--set", item]
    return command


def train(shards: Path, run_dir: Path, *sets: str, env: dict | None = None, timeout: float = 300):
    return subprocess.run(
        train_command(shards, run_dir, *sets),
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout, env=env,
    )  # fmt: skip


def wait_for(condition, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def events(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines() if line.strip()]


def model_weights(prefix: Path) -> dict[str, np.ndarray]:
    """Every model weight of a checkpoint (trainable ones are saved under the optimizer's references;
    batch-norm statistics under the model's) and their moving averages (``train.ema_decay``), by checkpoint
    key; optimizer slots excluded."""
    import tensorflow as tf

    reader = tf.train.load_checkpoint(str(prefix))
    return {
        key: reader.get_tensor(key)
        for key in reader.get_variable_to_shape_map()
        if key.startswith(("model/", "optimizer/_trainable_variables/", "weight_average/"))
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
              "train.max_steps=3", "train.epochs=1", "eval.mode=external"]  # fmt: skip
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
    initial = initial_weights(tmp_path / "initial", *common)  # exact: the same seeded initialization
    moved = [key for key in initial if not np.array_equal(initial[key], weights[1][key])]
    assert len(moved) > len(initial) // 2, "training did not move the weights from their initial values"
    assert_same_weights(weights[1], weights[2], exact=False)
    assert_same_weights(weights[1], weights[4], exact=False)


def initial_weights(run_dir: Path, *sets: str) -> dict[str, np.ndarray]:
    """The weights a run of these settings starts from (the seeded initialization, built in this process
    on one device and saved as ckpt-0)."""
    from asr.config import load_recipe
    from asr.session import TrainingSession
    from asr.strategy import make_strategy

    recipe = load_recipe(TINY, [*sets, "runtime.strategy=one_device", "runtime.replicas=1"])
    session = TrainingSession(make_strategy(recipe.runtime, env={}), recipe, run_dir, is_chief=True)
    return model_weights(session.save(0, {}).path)


def start_workers(shards: Path, run: Path, tmp_path: Path, *sets: str) -> list[subprocess.Popen]:
    """Two ``asr.train`` processes on localhost forming one MultiWorkerMirroredStrategy cluster."""
    from tools.faults.process import free_ports  # the harness's helper: one copy

    workers = [f"localhost:{port}" for port in free_ports(2)]
    processes = []
    for index in range(2):
        scratch = tmp_path / f"tmp{index}"
        scratch.mkdir(exist_ok=True)
        env = {
            **os.environ,
            "TMPDIR": str(scratch),
            "TF_CONFIG": json.dumps(
                {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
            ),
        }
        command = train_command(shards, run, "runtime.strategy=multi_worker", *sets)
        processes.append(subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE, text=True))  # fmt: skip
    return processes


def finish(processes: list[subprocess.Popen], timeout: float = 300) -> list[str]:
    """Each process's stderr once all have exited (killed if still running after ``timeout``). The pipes
    are read side by side, one thread each: read one after the other, a worker blocked on a full pipe
    would never exit while the other's is being read."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(len(processes)) as pool:
        outputs = [pool.submit(process.communicate, timeout=timeout) for process in processes]
        try:
            return [output.result()[1] for output in outputs]
        finally:
            for process in processes:
                process.kill()


def test_two_worker_processes_equal_one_process_with_the_same_global_batch(shards, tmp_path):
    """MultiWorkerMirroredStrategy across 2 processes on localhost: both workers end with the same weights,
    which equal a one-process run of the same global batch up to reduction order, and so do the weights'
    moving averages (``train.ema_decay``); no scratch is left."""
    sets = ("train.max_steps=3", "train.epochs=1", "eval.mode=external", "runtime.sync_batch_norm=true",
            "model.dropout=0", "data.spec_augment=false", "train.ema_decay=0.9")  # fmt: skip
    run = tmp_path / "run"
    errors = finish(start_workers(shards, run, tmp_path, *sets))
    for process_error in errors:
        assert "stopped (max_steps) at step 3" in process_error, process_error[-3000:]
    start = events(run)[0]
    assert start["workers"] == 2 and start["replicas"] == 2
    digests = [re.search(r"weights crc32c (\w+)", e).group(1) for e in errors]
    assert digests[0] == digests[1]  # exact: synchronous all-reduce gives every worker the same update
    single = tmp_path / "single"
    assert train(shards, single, *sets, "runtime.strategy=one_device").returncode == 0
    weights = model_weights(latest(run))
    averaged = sum(key.startswith("weight_average/") for key in weights)
    assert averaged == sum(key.startswith("optimizer/_trainable_variables/") for key in weights) > 0
    assert_same_weights(weights, model_weights(latest(single)), exact=False)
    for index in range(2):
        assert not list((tmp_path / f"tmp{index}").glob("asr-worker-*")), "scratch directory left behind"


def test_a_killed_worker_stops_the_other_with_one_line_and_both_resume(shards, tmp_path):
    """SIGKILL of worker 1 mid-run: worker 0 stops within a bounded time (the collective's heartbeat
    timeout) with one line naming the lost worker; restarting both resumes from the last checkpoint."""
    sets = ("train.epochs=30", "eval.mode=external", "train.checkpoint_every_steps=2")
    run = tmp_path / "run"
    processes = start_workers(shards, run, tmp_path, *sets)
    wait_for(lambda: (run / "checkpoints" / "ckpt-4.json").is_file(), 240)
    processes[1].kill()
    killed_at = time.monotonic()
    (error,) = finish(processes[:1], timeout=120)
    assert time.monotonic() - killed_at < 90
    assert processes[0].returncode == 2
    last = error.strip().splitlines()[-1]
    assert last.startswith("asr.train: error: worker 1 of this multi-worker run was lost"), error[-3000:]
    assert "Traceback" not in error
    assert not (run / "train.lock").exists()  # the chief released the run directory on its way out
    saved = max(int(p.stem.split("-")[1]) for p in (run / "checkpoints").glob("ckpt-*.json"))
    errors = finish(start_workers(shards, run, tmp_path, "train.epochs=6", *sets[1:]))
    assert f"step {saved} from ckpt-{saved}" in errors[0], errors[0][-3000:]
    ending = re.compile(r"worker \d: stopped \(epochs\) at step (\d+); weights crc32c (\w+)")
    ends = [ending.search(e) for e in errors]
    assert all(ends), errors[0][-3000:]
    assert ends[0].groups() == ends[1].groups()  # exact: the same step and weights on both workers


def test_swap_evaluation_leaves_training_bit_for_bit_unchanged(shards, tmp_path):
    """2 epochs with swap-in evaluation after each = 2 epochs without in-process evaluation, the weights'
    moving average included (rebuilt and restored with the training state at each swap-in)."""
    swap, external = tmp_path / "swap", tmp_path / "external"
    for run, mode in ((swap, "swap"), (external, "external")):
        result = train(shards, run, "train.epochs=2", f"eval.mode={mode}", "train.ema_decay=0.99")
        assert result.returncode == 0, result.stderr[-3000:]
    phases = [e["phase"] for e in events(swap) if e["event"] == "phase" and e["phase"] != "checkpoint"]
    assert phases == ["swap_out", "evaluate", "swap_in"] * 2
    assert sum(e["event"] == "eval" for e in events(swap)) == 2
    assert not any(e["event"] == "eval" for e in events(external))
    assert latest(swap).name == latest(external).name
    weights = model_weights(latest(swap))
    assert any(key.startswith("weight_average/") for key in weights)
    assert_same_weights(weights, model_weights(latest(external)))


@pytest.mark.parametrize("mode", ["resident", "swap"])
def test_extra_sets_are_logged_under_their_names_off_the_run_clock_and_not_for_tta(shards, tmp_path, mode):
    run = tmp_path / "run"
    result = train(
        shards, run, "train.epochs=1", f"eval.mode={mode}", f"eval.extra_sets.dev-seen={shards / 'dev'}"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    log = events(run)
    evals = [e for e in log if e["event"] == "eval"]
    assert [(e["split"], e.get("extra", False)) for e in evals] == [("dev", False), ("dev-seen", True)]
    main, extra = evals
    for key in ("wer", "cer", "loss", "utterances", "beam_width"):  # the same set, model and decoder
        assert extra[key] == main[key], key
    assert "epoch 1: dev-seen" in result.stderr
    off = [e for e in log if e["event"] == "off_clock"]
    assert [e["name"] for e in off] == ["eval:dev-seen"] and off[0]["seconds"] > 0
    evaluated = [e for e in log if e["event"] == "phase" and e["phase"] == "evaluate"][-1]
    swap_in = [e for e in log if e["event"] == "phase" and e["phase"] == "swap_in"]
    resumed = swap_in[-1]["elapsed"] - swap_in[-1]["seconds"] if swap_in else main["elapsed"]
    assert resumed - evaluated["elapsed"] < off[0]["seconds"] / 2  # the extra set's time is not on the clock
    state = json.loads(latest(run).with_suffix(".json").read_text())
    assert state["tta"]["split"] == "dev" and len(state["tta"]["history"]["wer"]) == 1
    assert state["clock"]["off_clock"]["eval:dev-seen"] == pytest.approx(off[0]["seconds"], abs=0.01)
    assert next(e["off_clock"] for e in log if e["event"] == "run_end")["eval:dev-seen"] > 0


def test_sigterm_saves_and_a_rerun_resumes_where_training_stopped(shards, tmp_path):
    """SIGTERM mid-epoch: checkpoint and exit 143; re-running resumes (data position, clock, downtime)
    and ends with the weights of an uninterrupted run, their moving average included."""
    sets = ("train.epochs=3", "eval.mode=loss", "train.ema_decay=0.99")
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
    weights = model_weights(latest(run))
    assert any(key.startswith("weight_average/") for key in weights)
    assert_same_weights(weights, model_weights(latest(straight)))


def test_non_finite_loss_step_is_skipped_and_weights_untouched(shards, tmp_path):
    """A batch with a NaN feature gives a NaN loss: no update, batch-norm statistics put back."""
    import tensorflow as tf

    from asr.config import load_recipe
    from asr.session import TrainingSession
    from asr.strategy import make_strategy

    recipe = load_recipe(TINY, ["runtime.strategy=one_device"])
    strategy = make_strategy(recipe.runtime, env={})
    session = TrainingSession(strategy, recipe, tmp_path, is_chief=True)
    before = [np.array(w) for w in session.model.get_weights()]
    features = np.random.default_rng(0).normal(size=(4, 40, 93)).astype(np.float32)
    poisoned = features.copy()
    poisoned[1, 7, 3] = np.nan
    frames = tf.constant([40, 40, 40, 40], tf.int32)
    labels, lengths = tf.ones([4, 5], tf.int32), tf.constant([5, 5, 5, 5], tf.int32)
    loss, applied, _, _ = session.train_step((tf.constant(poisoned), frames, labels, lengths))
    assert not applied and not np.isfinite(loss)
    for old, new in zip(before, session.model.get_weights(), strict=True):
        assert np.array_equal(old, np.asarray(new))
    loss, applied, _, utterances = session.train_step((tf.constant(features), frames, labels, lengths))
    assert applied and np.isfinite(loss) and utterances == 4
    after = session.model.get_weights()
    assert any(not np.array_equal(o, np.asarray(n)) for o, n in zip(before, after, strict=True))


def with_faults(spec: str) -> dict:
    """The environment for a run with fail points (:mod:`asr.failpoints`)."""
    return {**os.environ, "ASR_FAILPOINTS": spec}


def test_injected_non_finite_steps_are_counted_and_stop_the_run_at_the_limit_with_the_last_good_weights(
    shards, tmp_path
):
    """train.step=inf@1+2 poisons the first two batches: the real skip path runs (no update, a count), and
    two in a row stop the run with the last good weights (the initial ones) saved and exit status 2. (One
    skipped step that the run trains past: tools/faults --quick, nan-inject; a kill inside a checkpoint
    write: its train-kill trials.)"""
    run = tmp_path / "run"
    sets = ("train.max_consecutive_nan_steps=2", "train.epochs=5", "eval.mode=external")
    result = train(shards, run, *sets, env=with_faults("train.step=inf@1+2"))
    assert result.returncode == 2, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("asr.train: error: 2 non-finite steps in a row"), result.stderr[-3000:]
    skipped = [e for e in events(run) if e["event"] == "skipped_step"]
    assert [(e["step"], e["consecutive"]) for e in skipped] == [(0, 1), (0, 2)]
    assert events(run)[-1]["reason"] == "nan" and events(run)[-1]["skipped_steps"] == 2
    assert latest(run).name == "ckpt-0"
    # exact: skipped steps change no weight, so the saved weights are the seeded initial ones
    assert_same_weights(model_weights(latest(run)), initial_weights(tmp_path / "initial", *sets))


FINISHED = ("train.epochs=2", "eval.mode=external")


@pytest.fixture(scope="module")
def finished_run(shards, tmp_path_factory) -> Path:
    """A run of two epochs (checkpoints ckpt-4 and ckpt-8), finished; tests work on copies of it."""
    run = tmp_path_factory.mktemp("finished") / "run"
    result = train(shards, run, *FINISHED)
    assert result.returncode == 0, result.stderr[-3000:]
    return run


def copy_run(run: Path, tmp_path: Path) -> Path:
    import shutil

    return Path(shutil.copytree(run, tmp_path / "run"))


def test_rerunning_a_finished_run_says_it_is_complete_and_changes_nothing(shards, finished_run, tmp_path):
    stopped = tmp_path / "stopped"
    limited = ("train.max_steps=3", "train.epochs=1")  # one epoch's input pipeline, not the recipe's 40
    assert train(shards, stopped, *limited, "eval.mode=external").returncode == 0
    for run, sets in ((copy_run(finished_run, tmp_path), FINISHED), (stopped, limited)):
        log, checkpoints = (run / "events.jsonl").read_bytes(), sorted((run / "checkpoints").iterdir())
        again = train(shards, run, *sets, "eval.mode=external")
        assert again.returncode == 0, again.stderr[-3000:]
        assert again.stderr.strip().splitlines()[-1].startswith(f"asr.train: {run} is complete")
        assert (run / "events.jsonl").read_bytes() == log
        assert sorted((run / "checkpoints").iterdir()) == checkpoints


HOLDER = """
import sys, time
from asr.runlock import RunLock
with RunLock(sys.argv[1], "the holder's command"):
    print("held", flush=True)
    time.sleep(600)
"""


def hold(run: Path) -> subprocess.Popen:
    """A live process holding ``run`` through :class:`asr.runlock.RunLock`, once it says so."""
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(run)], cwd=REPO_ROOT, stdout=subprocess.PIPE,
                              text=True)  # fmt: skip
    assert holder.stdout.readline() == "held\n"
    return holder


def files(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


def test_a_held_run_directory_refuses_a_second_run_readers_still_read_it_and_a_killed_holder_is_taken_over(
    shards, finished_run, tmp_path
):
    """A second ``asr.train`` on a run directory a live process holds exits 2 with one line naming the
    holder, before anything is written; ``asr.report`` and ``asr.evaluate --watch`` read it meanwhile (they
    take no lock); once the holder is SIGKILLed (its lock file and holder record stay behind) the next
    ``asr.train`` takes the lock over, says so, and releases it at its end."""
    from asr import evaluate, report

    run = copy_run(finished_run, tmp_path)
    holder = hold(run)
    try:
        before = files(run)
        assert set(before) - set(files(finished_run)) == {"train.lock", "train.lock.json"}
        second = train(shards, run, *FINISHED)
        assert second.returncode == 2, second.stderr[-3000:]
        (line,) = second.stderr.strip().splitlines()
        assert line.startswith(
            f"asr.train: error: {run}: in use by pid {holder.pid} on {socket.gethostname()} since "
        )
        assert "(the holder's command); wait for it to end" in line
        assert files(run) == before  # nothing touched
        assert report.main([str(run), "--out", str(tmp_path / "report"), "--no-plots"]) == 0
        watch = ["--watch", str(run), "--beam", "1", "--lm", "", "--poll", "0.05", "--stop-after", "0.1"]
        assert evaluate.main(watch) == 0
        evaluated = [e["checkpoint"] for e in events(run) if e["event"] == "eval"]
        assert evaluated == ["ckpt-4", "ckpt-8"]
    finally:
        holder.kill()
        holder.wait()
    assert {"train.lock", "train.lock.json"} <= set(files(run))  # a killed holder releases nothing itself
    again = train(shards, run, *FINISHED)
    assert again.returncode == 0, again.stderr[-3000:]
    took, complete = again.stderr.strip().splitlines()
    assert took.startswith(f"asr.train: {run} was held by pid {holder.pid} ")
    assert took.endswith("; taken over")
    assert complete.startswith(f"asr.train: {run} is complete")
    assert not {"train.lock", "train.lock.json"} & set(files(run))


def test_the_run_lock_excludes_this_process_too_and_leaves_nothing_behind(tmp_path):
    """The lock API in one process: a second holder is refused (a record lock never conflicts within its own
    process, so the module keeps count), and a run directory the lock created is removed again when nothing
    was written into it (a run that failed before writing leaves no trace)."""
    from asr.runlock import RunInUseError, RunLock

    run = tmp_path / "runs" / "new"
    with RunLock(run, "first") as lock:
        assert lock.locked and lock.taken_over is None
        assert json.loads((run / "train.lock.json").read_text())["command"] == "first"
        with pytest.raises(RunInUseError, match=f"{run}: in use by pid {os.getpid()} .*\\(first\\)"):
            RunLock(run, "second").acquire()
    assert not (tmp_path / "runs").exists()
    run.mkdir(parents=True)
    (run / "events.jsonl").write_text("")
    with RunLock(run, "third"):
        pass
    assert sorted(p.name for p in run.iterdir()) == ["events.jsonl"]


def test_kill_during_evaluation_redoes_it_on_resume(shards, tmp_path):
    """SIGKILL inside the epoch-end evaluation: the epoch-end checkpoint says its evaluation is pending, and
    the resumed run evaluates it before training on; the TTA series has no gap."""
    from asr.events import read_events
    from asr.tta import active_events

    sets = ("train.epochs=2", "eval.mode=loss")
    run = tmp_path / "run"
    killed = train(shards, run, *sets, env=with_faults("evaluate=kill@2"))
    assert killed.returncode == -signal.SIGKILL
    assert json.loads((run / "checkpoints" / "ckpt-8.json").read_text())["evaluation_pending"] is True
    resumed = train(shards, run, *sets)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "redoing the interrupted evaluation of epoch 2" in resumed.stderr
    evaluated = [e["epoch"] for e in active_events(read_events(run)[0]) if e["event"] == "eval"]
    assert evaluated == [0, 1]
    assert json.loads((run / "checkpoints" / "ckpt-8.json").read_text())["evaluation_pending"] is False
    assert "is complete" in train(shards, run, *sets).stderr


def test_sigterm_to_the_trainer_and_its_decoding_workers_stops_and_the_rerun_redoes_the_evaluation(
    shards, tmp_path
):
    """What ``pkill -f asr.train`` or a scheduler cancelling the job does: SIGTERM to every process, the
    beam-search workers included, during an evaluation. The run stops as for the signal alone (before,
    it waited forever for the dead workers' results), and the rerun redoes the evaluation."""
    sets = ("train.epochs=2", "eval.mode=resident", "eval.decode_workers=2")
    run = tmp_path / "run"
    stopped = train(shards, run, *sets, env=with_faults("evaluate=term-all@2"), timeout=240)
    assert stopped.returncode == 128 + signal.SIGTERM, stopped.stderr[-3000:]
    assert "evaluation of epoch 2 interrupted" in stopped.stderr and "Traceback" not in stopped.stderr
    assert [e["reason"] for e in events(run) if e["event"] == "run_end"] == ["signal"]
    assert json.loads((run / "checkpoints" / "ckpt-8.json").read_text())["evaluation_pending"] is True
    resumed = train(shards, run, *sets)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "redoing the interrupted evaluation of epoch 2" in resumed.stderr
    assert [e["epoch"] for e in events(run) if e["event"] == "eval"] == [0, 1]


def test_damaged_latest_checkpoint_falls_back_with_one_warning_and_none_valid_is_exit_2(
    shards, finished_run, tmp_path
):
    run = copy_run(finished_run, tmp_path)
    (data,) = (run / "checkpoints").glob("ckpt-8.data-*")
    data.write_bytes(data.read_bytes()[:100])
    resumed = train(shards, run, *FINISHED)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    warnings = [line for line in resumed.stderr.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "ckpt-8 (" in warnings[0] and "using the older ckpt-4" in warnings[0]
    assert "step 4 from ckpt-4" in resumed.stderr
    # exact: epoch 2 trained again from ckpt-4 gives the bytes the damaged checkpoint held
    assert_same_weights(model_weights(latest(run)), model_weights(latest(finished_run)))
    for data in (run / "checkpoints").glob("ckpt-*.data-*"):
        data.write_bytes(b"")
    failed = train(shards, run, *FINISHED)
    lines = failed.stderr.strip().splitlines()
    assert failed.returncode == 2 and len(lines) == 1 and "no usable checkpoint" in lines[0], failed.stderr


def test_a_cut_event_log_line_is_skipped_and_the_resumed_session_starts_a_fresh_line(
    shards, finished_run, tmp_path
):
    from asr.events import read_events
    from asr.report import load_run

    run = copy_run(finished_run, tmp_path)
    with (run / "events.jsonl").open("a") as log:
        log.write('{"event":"step","wall_time":17')
    assert train(shards, run, "train.epochs=3", "eval.mode=external").returncode == 0
    found, warnings = read_events(run)
    assert len(warnings) == 1
    starts = [e for e in found if e["event"] == "run_start"]
    assert [s["resumed"] for s in starts] == [False, True]
    assert load_run(run).sessions == 2


def test_a_write_limit_during_checkpointing_is_one_line_and_a_rerun_completes(shards, tmp_path):
    """A file-size limit (EFBIG, like ENOSPC on a full disk) when the first checkpoint is written: one line
    naming it, exit 2, nothing half-written left; once lifted, the same command trains to the end."""
    import resource

    sets = ("train.epochs=2", "eval.mode=external")
    run = tmp_path / "run"
    limit = 200_000  # bytes per file: above the recipe and event log, below the checkpoint's weights
    limited = subprocess.run(train_command(shards, run, *sets), cwd=REPO_ROOT, capture_output=True, text=True,
                             timeout=300, preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE,
                                                                                (limit, limit)))  # fmt: skip
    lines = limited.stderr.strip().splitlines()
    assert limited.returncode == 2, limited.stderr[-3000:]
    assert lines[-1] == (f"asr.train: error: {run / 'checkpoints' / 'ckpt-4'}: cannot write (File too "
                         "large); what was written before is intact, rerun when fixed")  # fmt: skip
    assert "Traceback" not in limited.stderr and list((run / "checkpoints").iterdir()) == []
    assert events(run)[-1]["event"] == "run_end"
    assert train(shards, run, *sets).returncode == 0
    assert latest(run).name == "ckpt-8"


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (["train.global_bach=4"], "train.global_bach: unknown key"),
        (["train.global_batch=many"], "train.global_batch: expected an integer"),
        (["runtime.replicas=3"], "cannot be split evenly over runtime.replicas=3"),
        (["data.train=/nonexistent/shards"], "data.train: /nonexistent/shards: no such shard directory"),
        (["data.dev=/nonexistent/dev"], "data.dev: /nonexistent/dev: no such shard directory"),
        (["eval.extra_sets.seen=/nonexistent/x"], "eval.extra_sets.seen: /nonexistent/x: no such shard"),
        (["eval.extra_sets.dev=/nonexistent/x"], "eval.extra_sets.dev: the name is data.dev's (dev)"),
        (["eval.extra_sets.a/b=/x"], "eval.extra_sets.a/b: a set name is letters"),
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


def test_damaged_training_shard_is_trained_around_with_a_warning_unless_strict(shards, tmp_path):
    """64 zeroed bytes in the middle of the GZIP shard: by default the records before the damage are
    trained on, with one warning naming the shard and the count; --strict stops with one line instead."""
    import shutil

    other = tmp_path / "train"
    shutil.copytree(shards / "train", other)
    (shard,) = sorted(other.glob("*.tfrecord.gz"))
    data = bytearray(shard.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 64] = bytes(64)
    shard.write_bytes(bytes(data))
    sets = (f"data.train={other}", "train.epochs=1", "eval.mode=external", "train.global_batch=2")
    result = train(shards, tmp_path / "run", *sets)
    assert result.returncode == 0, result.stderr[-3000:]
    (warning,) = [line for line in result.stderr.splitlines() if "warning" in line]
    used = int(re.search(r"(\d+) of its utterances used, (\d+) lost", warning).group(1))
    assert str(shard) in warning and 0 < used < 20
    start = events(tmp_path / "run")[0]
    assert start["utterances"] == used and start["damaged_shards"][0]["used"] == used
    strict = subprocess.run([*train_command(shards, tmp_path / "strict", *sets), "--strict"], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=300)  # fmt: skip
    lines = strict.stderr.strip().splitlines()
    assert strict.returncode == 2 and len(lines) == 1 and str(shard) in lines[0], strict.stderr[-3000:]


def test_run_dir_that_is_a_file_is_one_line(shards, tmp_path):
    path = tmp_path / "file"
    path.write_text("")
    result = train(shards, path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"asr.train: error: --run-dir {path}: exists and is not a directory"
    ]


def test_summary_prints_the_paper_model():
    result = subprocess.run([sys.executable, "-m", "asr.train", "--summary", "recipes/base.yaml"],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert result.returncode == 0
    assert "total parameters: 25,632,830 (25.6 M)" in result.stdout
    assert "floor((T - 11) / 2) + 1 = 830 for T = 1670" in result.stdout


def test_dynamic_batching_trains_batches_of_several_sizes_within_the_budget(shards, tmp_path):
    run = tmp_path / "dynamic"
    result = train(shards, run, "data.bucket_boundaries=[400,700]", "data.batch_by=audio_seconds",
                   "data.batch_audio_seconds=20", "train.epochs=1", "eval.mode=loss")  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    steps = [e for e in events(run) if e["event"] == "step"]
    sizes = {e["batch_size"] for e in steps}
    assert len(sizes) > 1 and sizes <= {2000 // 399, 2000 // 699, 2000 // 1670}
    assert all(math.isfinite(e["loss"]) for e in steps)


def test_accumulation_dynamic_batches_and_warm_up_count_updates_and_a_resumed_run_continues_them_alike(
    shards, tmp_path
):
    settings = ["data.bucket_boundaries=[400,700]", "data.batch_by=audio_seconds",
                "data.batch_audio_seconds=20", "train.accumulate_steps=2", "train.epochs=1",
                "train.warmup_steps=3", "eval.mode=loss"]  # fmt: skip
    whole = tmp_path / "whole"
    result = train(shards, whole, *settings)
    assert result.returncode == 0, result.stderr[-3000:]
    updates = [e for e in events(whole) if e["event"] == "step"]
    batches = next(e for e in events(whole) if e["event"] == "run_start")["steps_per_epoch"]
    assert len(updates) == -(-batches // 2) >= 3  # two micro-batches per update, the last one maybe alone
    parted = tmp_path / "parted"
    assert train(shards, parted, *settings, "train.max_steps=2").returncode == 0
    result = train(shards, parted, *settings, "train.max_steps=0")
    assert result.returncode == 0, result.stderr[-3000:]
    resumed = [e for e in events(parted) if e["event"] == "step"]
    assert [e["batch_size"] for e in resumed] == [e["batch_size"] for e in updates]
    # one CPU process is deterministic and the resume restores weights, optimizer, data position and RNG
    assert [e["loss"] for e in resumed] == [e["loss"] for e in updates]
    rates = [e["learning_rate"] for e in updates]
    np.testing.assert_allclose(rates, [rates[-1] * min(1, (i + 1) / 3) for i in range(len(rates))], rtol=1e-6)
    assert [e["learning_rate"] for e in resumed] == rates  # the warm-up counts updates across the resume
