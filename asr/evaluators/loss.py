"""``eval.mode: loss``: validation CTC loss per utterance only, no decoding (the cheapest signal).

The evaluation model runs from the epoch-end checkpoint like ``swap`` but the training state stays in
memory; no WER/CER is measured, so no accuracy target can be reached in this mode.
"""

from __future__ import annotations


class LossEvaluator:
    def __init__(self, recipe, strategy):
        from asr.evaluators.common import Validation, build_eval_model

        self.recipe = recipe
        self.strategy = strategy
        self.validation = Validation(recipe, decode=False)
        self.model = build_eval_model(recipe, strategy)
        self._logits_fn = None

    def evaluate(self, session, checkpoint, log) -> list[dict]:
        from asr.evaluators.common import model_logits_fn, read_normalization

        with log.phase("evaluate"):
            self.model.set_weights(session.model.get_weights())
            if self._logits_fn is None:
                mean, std = read_normalization(session.run_dir, self.recipe)
                self._logits_fn = model_logits_fn(self.recipe, self.strategy, self.model, mean, std)
            return self.validation.loss_only(self._logits_fn, "loss")

    def close(self) -> None:
        self.validation.close()
