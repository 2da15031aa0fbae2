"""Training step time per precision (``runtime.mixed_precision``) and with XLA (``runtime.xla``), side by
side in one process.

    python tools/bench_precision.py [--recipe recipes/cpu.yaml] [--frames 600] [--steps 3]

Builds the recipe's model, optimizer and compiled step (``asr.session.make_train_step``) for float32,
float32 XLA-compiled (one program for the batch's fixed shape; the dense CTC loss), bfloat16 and float16 in
turn (float32 again at the end, to show the drift of the machine), and times
``--steps`` steps on one fixed random batch of ``train.global_batch`` utterances of ``--frames`` frames after
two warm-up steps; prints the median step and its ratio to the first float32 median. bfloat16 is fast only
on CPUs with AVX-512 BF16 or AMX (oneDNN) and on GPUs; float16 needs a GPU's tensor cores.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def median_step(recipe_path: str, precision: str, frames: int, steps: int, xla: bool = False) -> float:
    import keras
    import tensorflow as tf

    from asr.config import load_recipe
    from asr.model import build_model
    from asr.session import make_optimizer, make_train_step

    xla_sets = ["runtime.xla=true", "data.static_shapes=true"] if xla else []
    recipe = load_recipe(recipe_path, [f"runtime.mixed_precision={precision}", *xla_sets])
    batch = recipe.train.global_batch
    rng = np.random.default_rng(0)
    data = (
        tf.constant(rng.normal(size=(batch, frames, 93)).astype(np.float32)),
        tf.constant(np.full(batch, frames, np.int32)),
        tf.constant(rng.integers(1, 27, size=(batch, frames // 10)).astype(np.int32)),
        tf.constant(np.full(batch, frames // 10, np.int32)),
    )
    keras.mixed_precision.set_global_policy("float32" if precision == "float32" else f"mixed_{precision}")
    try:
        model = build_model(recipe.model)
        step = make_train_step(tf.distribute.get_strategy(), model, make_optimizer(recipe), recipe)
        for _ in range(2):
            step(data)
        times = []
        for _ in range(steps):
            began = time.perf_counter()
            float(step(data)[0])
            times.append(time.perf_counter() - began)
        return statistics.median(times)
    finally:
        keras.mixed_precision.set_global_policy("float32")


def main() -> None:
    from asr.config import Bound, OneLineParser, option_type

    parser = OneLineParser(prog="tools/bench_precision.py", description=__doc__.split("\n\n")[0])
    count = option_type(int, Bound(1))
    parser.add_argument("--recipe", default=str(REPO / "recipes" / "cpu.yaml"))
    parser.add_argument("--frames", type=count, default=600)
    parser.add_argument("--steps", type=count, default=3)
    args = parser.parse_args()
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    native = [f for f in ("avx512_bf16", "amx_bf16", "avx512_fp16") if f in flags]
    print(f"CPU flags for reduced precision: {', '.join(native) or 'none'}")
    print("| step | median step s | vs float32 |\n|---|---:|---:|")
    first = None
    for precision, xla in (("float32", False), ("float32", True), ("bfloat16", False), ("float16", False),
                           ("float32", False)):  # fmt: skip
        seconds = median_step(args.recipe, precision, args.frames, args.steps, xla)
        first = first or seconds
        name = f"{precision} + XLA" if xla else precision
        print(f"| {name} | {seconds:.3f} | {seconds / first:.2f}× |", flush=True)


if __name__ == "__main__":
    main()
