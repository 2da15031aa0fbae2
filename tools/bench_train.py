"""Training speed, side by side in one run: the project's step fed by its tf.data pipeline, the same step
fed from in-memory tensors, a plain Keras ``model.fit`` of the same architecture, and the machine's dense
float32 matmul FLOP/s.

    python tools/bench_train.py [--shards work/minilibri/train] [--steps 4] [--warmup 2] [--rounds 3]
                                [--skip-paper]

Models: the paper's (recipes/base.yaml sizes, every utterance padded to 1670 frames, batch --paper-batch)
and the ``cpu`` recipe (its length buckets, batch --cpu-batch). Shards: ``asr.extract`` output of
minilibri train-clean (made with ``python -m asr.extract --corpus ../shared/minilibri --subsets
train-clean --out work/minilibri/train`` if missing).

Figures: utterances/s and audio seconds/s (unpadded audio) per timed step; the input pipeline's cost
(pipeline vs in-memory, same batches); project step vs ``model.fit`` (same padded tensors, same loss
``tf.nn.ctc_loss``, same optimizer); achieved model FLOP/s = 3 x forward matmul FLOPs per padded frame x
padded frames / step seconds, as a share of the measured matmul FLOP/s. Timings only, never asserted.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

import numpy as np  # noqa: E402


def matmul_flops(size: int = 2048, repeats: int = 10) -> float:
    import tensorflow as tf

    a = tf.random.normal([size, size])
    b = tf.random.normal([size, size])
    tf.matmul(a, b).numpy()
    began = time.perf_counter()
    for _ in range(repeats):
        c = tf.matmul(a, b)
    c.numpy()
    return 2 * size**3 * repeats / (time.perf_counter() - began)


def collect(recipe, shards, count: int) -> list[tuple]:
    from asr import data

    stream = data.training_stream(shards, recipe.data, recipe.model, recipe.train.global_batch, 0, 1, 1234)
    return [tuple(t.numpy() for t in batch[:-1]) for batch, _ in zip(stream, range(count), strict=False)]


def project_runner(recipe, strategy, batches, shards=None, warmup: int = 2):
    """A function timing one pass of the project's step over ``batches`` (seconds per step after
    ``warmup``); with ``shards`` each pass reads the same batches from a fresh tf.data pipeline."""
    import tensorflow as tf

    from asr import data
    from asr.session import TrainingSession
    from asr.train import distributed_batches

    session = TrainingSession(strategy, recipe, Path(tempfile.mkdtemp()), is_chief=True)
    if shards is None:
        # batch and time vary (length buckets); only the feature width is fixed
        spec = tuple(tf.TensorSpec([None] * min(b.ndim, 2) + list(b.shape[2:]), tf.as_dtype(b.dtype))
                     for b in batches[0])  # fmt: skip
        session.set_input_spec(spec)

    def run() -> list[float]:
        if shards is not None:
            stream = data.training_stream(
                shards, recipe.data, recipe.model, recipe.train.global_batch, 0, 1, 1234
            )
            source = distributed_batches(strategy, stream, session)
        else:
            source = iter([(*map(tf.constant, b), None) for b in batches])
        times = []
        for index in range(len(batches)):
            began = time.perf_counter()
            *batch, _ = next(source)
            session.train_step(tuple(batch))
            if index >= warmup:
                times.append(time.perf_counter() - began)
        return times

    return run


def fit_runner(recipe, batches, warmup: int = 2):
    """A function timing one plain Keras 3 ``model.fit`` epoch over the same tensors (labels and lengths
    packed into ``y``), with Keras' own recurrent loop: seconds per step after ``warmup``."""
    import keras
    import tensorflow as tf

    from asr.model import build_model, output_frames
    from asr.session import make_optimizer
    from asr.text import BLANK_ID

    features = np.concatenate([b[0] for b in batches])
    frames = np.concatenate([b[1] for b in batches])
    width = max(b[2].shape[1] for b in batches)
    labels = np.concatenate([np.pad(b[2], ((0, 0), (0, width - b[2].shape[1]))) for b in batches])
    lengths = np.concatenate([b[3] for b in batches])
    packed = np.concatenate([lengths[:, None], frames[:, None], labels], axis=1).astype(np.int32)

    def loss(y_true, y_pred):
        y_true = tf.cast(y_true, tf.int32)
        label_length, input_frames, dense = y_true[:, 0], y_true[:, 1], y_true[:, 2:]
        mask = tf.sequence_mask(label_length, tf.shape(dense)[1])
        sparse = tf.SparseTensor(
            tf.where(mask), tf.gather_nd(dense, tf.where(mask)), tf.shape(dense, tf.int64)
        )
        return tf.nn.ctc_loss(sparse, y_pred, None, output_frames(input_frames, recipe.model),
                              logits_time_major=False, blank_index=BLANK_ID)  # fmt: skip

    model = build_model(dataclasses.replace(recipe.model, rnn_loop="keras"))
    model.compile(optimizer=make_optimizer(recipe), loss=loss)
    ends: list[float] = []

    class Timer(keras.callbacks.Callback):
        """Step time = time between consecutive batch ends: all ``fit`` does per step (time between a
        batch's begin and end hooks leaves out part of it: on this machine 0.96 s of 1.1-1.3 s)."""

        def on_train_batch_end(self, batch, logs=None):
            ends.append(time.perf_counter())

    def run() -> list[float]:
        ends.clear()
        model.fit([features, frames], packed, batch_size=recipe.train.global_batch, epochs=1,
                  shuffle=False, verbose=0, callbacks=[Timer()])  # fmt: skip
        return np.diff(ends)[max(warmup - 1, 0) :].tolist()

    return run


def pad_to_common_length(batches: list[tuple]) -> list[tuple]:
    longest = max(b[0].shape[1] for b in batches)
    return [(np.pad(b[0], ((0, 0), (0, longest - b[0].shape[1]), (0, 0))), *b[1:]) for b in batches]


def bench(
    name: str, recipe, shards, strategy, steps: int, warmup: int, rounds: int, peak: float
) -> list[str]:
    """Each variant times ``steps`` steps per round; the rounds alternate the variants, so that load from
    elsewhere on the machine falls on all of them alike. Figures are means over all rounds."""
    from asr.model import flops_per_frame

    batches = collect(recipe, shards, steps + warmup)
    common = pad_to_common_length(batches)
    runners = {
        "pipeline": project_runner(recipe, strategy, batches, shards=shards, warmup=warmup),
        "memory": project_runner(recipe, strategy, batches, warmup=warmup),
        "project_common": project_runner(recipe, strategy, common, warmup=warmup),
        "fit": fit_runner(recipe, common, warmup=warmup),
    }
    times: dict[str, list[float]] = {key: [] for key in runners}
    for _ in range(rounds):
        for key, run in runners.items():
            times[key].extend(run())
    # the same batches in every variant, of very different lengths: compare means, not medians
    pipeline, memory, project_common, fit = (float(np.mean(times[key])) for key in runners)
    utterances = recipe.train.global_batch
    audio = np.mean([b[1].sum() * 0.01 for b in batches[warmup:]])
    padded_frames = np.mean([b[0].shape[0] * b[0].shape[1] for b in batches[warmup:]])
    achieved = 3 * flops_per_frame(recipe.model) * padded_frames / memory
    return [
        f"{name}: batch {utterances}, {padded_frames / utterances:.0f} padded frames per utterance, "
        f"{rounds} rounds x {steps} steps per variant",
        f"  project step, tf.data pipeline : {pipeline:7.2f} s/step  {utterances / pipeline:6.2f} utt/s  "
        f"{audio / pipeline:7.1f} audio-s/s",
        f"  project step, in-memory        : {memory:7.2f} s/step  {utterances / memory:6.2f} utt/s  "
        f"-> input pipeline costs {100 * (pipeline / memory - 1):+.1f} % (goal < 5 %)",
        f"  same padded tensors: project {project_common:.2f} s/step vs Keras model.fit {fit:.2f} s/step "
        f"-> project/fit speed {fit / project_common:.2f}x (goal >= 1)",
        f"  model FLOP/s {achieved / 1e9:.1f} G = {achieved / peak:.2f} of matmul FLOP/s",
    ]


def main() -> int:
    from asr.config import Bound, OneLineParser, option_type

    parser = OneLineParser(
        prog="tools/bench_train.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    count = option_type(int, Bound(1))
    parser.add_argument("--shards", default=str(REPO_ROOT / "work" / "minilibri" / "train"))
    parser.add_argument("--corpus", default=str(REPO_ROOT.parent / "shared" / "minilibri"))
    parser.add_argument("--steps", type=count, default=4)
    parser.add_argument("--warmup", type=option_type(int, Bound(0)), default=2)
    parser.add_argument("--rounds", type=count, default=3, help="alternating rounds per variant")
    parser.add_argument("--paper-batch", type=count, default=4)
    parser.add_argument("--cpu-batch", type=count, default=16)
    parser.add_argument("--skip-paper", action="store_true")
    args = parser.parse_args()
    if not (Path(args.shards) / "manifest.json").is_file():
        extract = [sys.executable, "-m", "asr.extract", "--corpus", args.corpus]
        extract += ["--subsets", "train-clean", "--out", args.shards]
        subprocess.run(extract, check=True, cwd=REPO_ROOT)
    from asr import data
    from asr.config import load_recipe
    from asr.strategy import make_strategy

    shards = data.open_shards(args.shards)
    cpu = load_recipe(REPO_ROOT / "recipes" / "cpu.yaml", [f"train.global_batch={args.cpu_batch}"])
    strategy = make_strategy(cpu.runtime, env={})
    peak = matmul_flops()
    print(f"dense float32 matmul (2048^2): {peak / 1e9:.1f} GFLOP/s on {os.cpu_count()} cores "
          "(other work on the machine lowers every figure alike)")  # fmt: skip
    lines = bench("cpu recipe", cpu, shards, strategy, args.steps, args.warmup, args.rounds, peak)
    print("\n".join(lines), flush=True)
    if not args.skip_paper:
        paper = load_recipe(REPO_ROOT / "recipes" / "base.yaml", [f"train.global_batch={args.paper_batch}",
                            "train.optimizer=adadelta"])  # fmt: skip
        lines = bench("paper model", paper, shards, strategy, args.steps, args.warmup, args.rounds, peak)
        print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
