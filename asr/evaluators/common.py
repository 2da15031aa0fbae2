"""What every in-process evaluator shares: the validation set, the decoder, the evaluation model.

The evaluation model is the training architecture called with ``training=False``: dropout off, batch
normalization with its moving statistics. Features are normalized with the training split's mean and
standard deviation, which ``asr.train`` copies into ``RUN_DIR/normalization.json`` so that evaluation needs
only the run directory and the shards it decodes.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from asr.config import Recipe
from asr.files import read_json, write_json

NORMALIZATION_FILE = "normalization.json"


def write_normalization(run_dir: Path, mean: np.ndarray, std: np.ndarray, source: str) -> None:
    """Save the training features' per-dimension mean/std (atomically: :func:`asr.files.write_json`)."""
    write_json(run_dir / NORMALIZATION_FILE, {"source": source, "mean": mean.tolist(), "std": std.tolist()},
               indent=None)  # fmt: skip


def read_normalization(run_dir: Path, recipe: Recipe) -> tuple[np.ndarray, np.ndarray]:
    """Mean/std saved in the run directory, else from the recipe's training manifest."""
    values = read_json(Path(run_dir) / NORMALIZATION_FILE)
    if isinstance(values, dict) and "mean" in values and "std" in values:
        return np.asarray(values["mean"], np.float32), np.asarray(values["std"], np.float32)
    from asr.data import open_shards

    shards = open_shards(recipe.data.train, "data.train")
    return shards.mean, shards.std


def build_eval_model(recipe: Recipe, strategy: Any):
    """The evaluation model (same layers, no optimizer) with variables on every replica."""
    from asr.model import build_model

    with strategy.scope():
        return build_model(recipe.model, sync_batch_norm=False, name="evaluation_model")


def model_logits_fn(recipe: Recipe, strategy: Any, model: Any, mean: np.ndarray, std: np.ndarray):
    """:data:`asr.evaluate.LogitsFn` running ``model`` in inference mode on all replicas."""
    from asr.evaluators.swap import conv_output_frames, replica_logits_fn

    frames = conv_output_frames(recipe.model.conv_kernel, recipe.model.conv_stride)
    return replica_logits_fn(strategy, model, frames, mean, std)


class Validation:
    """The validation set (kept in memory for the whole run) and its decoder (process pool kept too)."""

    def __init__(self, recipe: Recipe, decode: bool = True, strict: bool = False):
        from asr.evaluate import load_eval_set

        self.recipe = recipe
        name = Path(recipe.data.dev).resolve().name
        self.eval_set = load_eval_set(recipe.data.dev, name=name, key="data.dev", strict=strict)
        self.batch_size = recipe.eval.batch_size or recipe.train.global_batch
        self.decoder = None
        if decode:
            from asr.decoding import make_decoder

            width = 1 if recipe.eval.decoder == "greedy" else recipe.eval.beam_width
            self.decoder = make_decoder(
                width,
                recipe.eval.lm or None,
                recipe.eval.lm_alpha,
                recipe.eval.lm_beta,
                recipe.eval.decode_workers,
            )

    def run(self, logits_fn, source: str) -> list[dict[str, Any]]:
        """Decode and score the set; fields of its ``eval`` event."""
        from asr.evaluate import run_set

        result = run_set(self.eval_set, logits_fn, self.decoder, self.batch_size)
        return [result.event_fields(source)]

    def loss_only(self, logits_fn, source: str) -> list[dict[str, Any]]:
        """Mean CTC loss per utterance, no decoding (``eval.mode: loss``)."""
        import time

        from asr.evaluate import padded_batches

        started = time.perf_counter()
        losses = []
        for _, batch, frames, labels in padded_batches(self.eval_set, self.batch_size):
            losses.extend(np.asarray(logits_fn(batch, frames, labels)[2], np.float64).tolist())
        finite = [value for value in losses if np.isfinite(value)]
        return [
            {
                "split": self.eval_set.name,
                "loss": float(np.mean(finite)) if finite else float("nan"),
                "utterances": len(self.eval_set),
                "seconds": time.perf_counter() - started,
                "source": source,
            }
        ]

    def close(self) -> None:
        if self.decoder is not None:
            self.decoder.close()
            self.decoder = None


def local_runtime(recipe: Recipe) -> Recipe:
    """The recipe with a strategy for one machine: evaluation outside training never joins a cluster."""
    runtime = recipe.runtime
    if runtime.strategy == "multi_worker":
        runtime = dataclasses.replace(runtime, strategy="auto")
    return dataclasses.replace(recipe, runtime=runtime)
