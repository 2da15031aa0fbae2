"""What every in-process evaluator shares: the validation set, the extra sets and their decoder.

The evaluation model and the code that runs it are :mod:`asr.inference`'s (the same for ``asr.evaluate``
and ``asr.transcribe``); decoding and scoring a set are :mod:`asr.evaluate`'s.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from asr.config import Recipe


class Validation:
    """The validation set and ``eval.extra_sets`` (kept in memory for the whole run, read at the start so
    that a bad one stops the run before it trains) and their decoder (process pool kept too)."""

    def __init__(self, recipe: Recipe, decode: bool = True, strict: bool = False):
        from asr.evaluate import load_eval_set

        self.recipe = recipe
        name = Path(recipe.data.dev).resolve().name
        self.eval_set = load_eval_set(recipe.data.dev, name=name, key="data.dev", strict=strict)
        self.extra_sets = {
            name: load_eval_set(path, name=name, key=f"eval.extra_sets.{name}", strict=strict)
            for name, path in recipe.eval.extra_sets.items()
        }
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

    def run(self, logits_fn, source: str, eval_set=None) -> list[dict[str, Any]]:
        """Decode and score the set (``data.dev`` unless ``eval_set`` is given); fields of its ``eval``
        event."""
        from asr.evaluate import run_set

        result = run_set(eval_set or self.eval_set, logits_fn, self.decoder, self.batch_size)
        return [result.event_fields(source)]

    def loss_only(self, logits_fn, source: str, eval_set=None) -> list[dict[str, Any]]:
        """Mean CTC loss per utterance, no decoding (``eval.mode: loss``)."""
        import time

        from asr.evaluate import padded_batches

        eval_set = eval_set or self.eval_set
        started = time.perf_counter()
        losses = []
        for _, batch, frames, labels in padded_batches(eval_set, self.batch_size):
            losses.extend(np.asarray(logits_fn(batch, frames, labels)[2], np.float64).tolist())
        finite = [value for value in losses if np.isfinite(value)]
        return [
            {
                "split": eval_set.name,
                "loss": float(np.mean(finite)) if finite else float("nan"),
                "utterances": len(eval_set),
                "seconds": time.perf_counter() - started,
                "source": source,
            }
        ]

    def run_extra(self, logits_fn, source: str, log) -> list[dict[str, Any]]:
        """Each of ``eval.extra_sets``, decoded (or its loss only, without a decoder) like ``data.dev``, off
        the run clock (``log.off_clock``); fields of their ``eval`` events, marked ``extra: true``."""
        results = []
        for name, eval_set in self.extra_sets.items():
            with log.off_clock(f"eval:{name}"):
                if self.decoder is None:
                    fields = self.loss_only(logits_fn, source, eval_set)
                else:
                    fields = self.run(logits_fn, source, eval_set)
            results += [{**f, "extra": True} for f in fields]
        return results

    def close(self) -> None:
        if self.decoder is not None:
            self.decoder.close()
            self.decoder = None
