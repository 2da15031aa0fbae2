"""Overhead of the utilization sampler as a fraction of a training-like step.

A fixed TensorFlow workload (a convolution + LSTM + dense forward and backward pass, the shape of
one small ``asr`` training step) is timed in blocks of steps with no sampler, with the sampler at
the default interval (1 s) and at a fast one (0.03 s, the paper's ``top`` period). The three
settings are interleaved block by block, several repetitions, so machine noise hits all of them
alike; the mean step time of each setting (median over rounds) is compared with the baseline's, side by side.

    .venv/bin/python tools/bench_sampler.py [--repeats 7] [--steps 30]
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf

from asr.config import Bound, OneLineParser, option_type
from asr.events import EventLog
from asr.sampler import UtilizationSampler


def make_step(batch: int, frames: int, features: int, units: int):
    """A compiled training-like step and its inputs: (x, labels) -> loss, with an Adam update."""
    tf.random.set_seed(0)
    model = tf.keras.Sequential(
        [
            tf.keras.Input((frames, features)),
            tf.keras.layers.Conv1D(units, 11, strides=2, activation="relu"),
            tf.keras.layers.LSTM(units, return_sequences=True),
            tf.keras.layers.Dense(30),
        ]
    )
    optimizer = tf.keras.optimizers.Adam(1e-3)
    x = tf.random.normal((batch, frames, features))
    y = tf.random.uniform((batch, (frames - 11) // 2 + 1), maxval=30, dtype=tf.int32)

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            logits = model(x, training=True)
            loss = tf.reduce_mean(
                tf.keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True)
            )
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
        return loss

    return step


def time_block(step, seconds: float) -> float:
    """Mean seconds per step over a block of steps lasting about ``seconds``."""
    began = time.perf_counter()
    steps = 0
    while time.perf_counter() - began < seconds:
        step().numpy()
        steps += 1
    return (time.perf_counter() - began) / steps


def sample_cost(log: EventLog, calls: int = 300) -> float:
    """Seconds one ``UtilizationSampler.sample()`` takes (psutil reading + event write)."""
    sampler = UtilizationSampler(log, interval_seconds=1.0)
    sampler.process.cpu_percent(interval=None)
    began = time.perf_counter()
    for _ in range(calls):
        sampler.sample()
    return (time.perf_counter() - began) / calls


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(prog="tools/bench_sampler.py", description=__doc__.splitlines()[0])
    count = option_type(int, Bound(1))
    parser.add_argument("--repeats", type=count, default=7, help="interleaved rounds (default 7)")
    parser.add_argument(
        "--block-seconds",
        type=option_type(float, Bound(0, low_open=True)),
        default=8.0,
        help="seconds per timed block (default 8)",
    )
    parser.add_argument("--batch", type=count, default=8)
    parser.add_argument("--frames", type=count, default=400, help="10 ms frames per utterance (default 400)")
    parser.add_argument("--units", type=count, default=128)
    args = parser.parse_args(argv)

    step = make_step(args.batch, args.frames, 93, args.units)
    for _ in range(5):  # trace and warm up
        step()
    settings = {"no sampler": None, "sampler 1 s": 1.0, "sampler 0.03 s": 0.03}
    results: dict[str, list[float]] = {name: [] for name in settings}
    samples: dict[str, int] = {name: 0 for name in settings}
    with tempfile.TemporaryDirectory() as run_dir, EventLog(run_dir) as log:
        cost = sample_cost(log)
        for round_ in range(args.repeats):
            order = list(settings.items())
            if round_ % 2:
                order.reverse()
            for name, interval in order:
                if interval is None:
                    results[name].append(time_block(step, args.block_seconds))
                    continue
                with UtilizationSampler(log, interval_seconds=interval) as sampler:
                    results[name].append(time_block(step, args.block_seconds))
                samples[name] += sampler.samples_written
            print(f"round {round_ + 1}/{args.repeats} done", file=sys.stderr)

    base = statistics.median(results["no sampler"])
    print(
        f"workload: batch {args.batch} x {args.frames} frames x 93, conv+LSTM({args.units}) fwd+bwd, "
        f"{args.repeats} interleaved rounds of {args.block_seconds:g} s blocks"
    )
    print(f"{'setting':<16} {'mean step ms':>15} {'ratio to none':>14} {'overhead %':>11} {'samples':>8}")
    for name, values in results.items():
        median = statistics.median(values)
        overhead = 100 * (median / base - 1)
        print(
            f"{name:<16} {1000 * median:>15.2f} {median / base:>14.4f} {overhead:>+11.2f} {samples[name]:>8}"
        )
    print(
        f"one sample costs {1000 * cost:.3f} ms: {100 * cost / 1.0:.3f} % of a core at 1 s, "
        f"{100 * cost / 0.03:.2f} % at 0.03 s"
    )
    spread = 100 * (max(results["no sampler"]) - min(results["no sampler"])) / base
    print(f"run-to-run spread of the baseline blocks: {spread:.1f} % (noise floor of this comparison)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
