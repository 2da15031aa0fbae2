"""Per-epoch evaluators, picked by ``eval.mode`` in the recipe (paper 4.4.2).

Each is a small module with one class; the training loop calls ``evaluate(session, checkpoint, log)`` at
an epoch end, right after saving ``checkpoint``, and writes one ``eval`` event per returned dict: first
``data.dev``'s, then one per ``eval.extra_sets`` entry (``extra: true``, evaluated off the run clock with the
same model and decoder; ``external`` mode evaluates none):

- ``swap`` (:mod:`asr.evaluators.swap`, the paper's): release the training model, build the evaluation model
  from the checkpoint, decode the validation set, rebuild training from the checkpoint.
- ``resident`` (:mod:`asr.evaluators.resident`, Mozilla DeepSpeech's): a second model stays in memory and
  takes the training weights by copy.
- ``external`` (:mod:`asr.evaluators.external`): nothing in-process; ``asr.evaluate --watch RUN_DIR``
  evaluates the checkpoints, possibly on another machine, and appends to the same event log.
- ``loss`` (:mod:`asr.evaluators.loss`): validation CTC loss only, no decoding.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from asr.config import Recipe


class Evaluator(Protocol):
    def evaluate(self, session: Any, checkpoint: Any, log: Any) -> list[dict[str, Any]]:
        """Fields of one ``eval`` event per validation set (see :mod:`asr.events`)."""
        ...

    def close(self) -> None:
        """Release decoding processes and models."""
        ...


def make_evaluator(recipe: Recipe, strategy: Any, run_dir: Path, strict: bool = False) -> Evaluator:
    """The evaluator ``recipe.eval.mode`` names, ready to run on ``strategy``; it reads ``data.dev`` now,
    so a missing or damaged validation set stops the run before it trains (``strict``: any damage)."""
    mode = recipe.eval.mode
    if mode == "swap":
        from asr.evaluators.swap import SwapEvaluator

        return SwapEvaluator(recipe, strategy, strict)
    if mode == "resident":
        from asr.evaluators.resident import ResidentEvaluator

        return ResidentEvaluator(recipe, strategy, strict)
    if mode == "external":
        from asr.evaluators.external import ExternalEvaluator

        return ExternalEvaluator(recipe, run_dir)
    from asr.evaluators.loss import LossEvaluator

    return LossEvaluator(recipe, strategy, strict)
