"""What every in-process evaluator shares: the validation set and its decoder.

The evaluation model and the code that runs it are :mod:`asr.inference`'s (the same for ``asr.evaluate``
and ``asr.transcribe``); decoding and scoring a set are :mod:`asr.evaluate`'s.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from asr.config import Recipe


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
