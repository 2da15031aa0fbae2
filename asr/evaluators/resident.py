"""``eval.mode: resident``: a second, evaluation-only model stays in memory (the Mozilla DeepSpeech way).

At an epoch end it takes the training model's weights by copy (no checkpoint read, no rebuild of the
training state; their moving average under ``train.ema_decay``), so evaluation costs memory for one more set
of weights instead of swap time.
"""

from __future__ import annotations


class ResidentEvaluator:
    source = "resident"
    decode = True

    def __init__(self, recipe, strategy, strict: bool = False):
        from asr.evaluators.common import Validation
        from asr.inference import build_eval_model

        self.recipe = recipe
        self.strategy = strategy
        self.validation = Validation(recipe, decode=self.decode, strict=strict)
        self.model = build_eval_model(recipe, strategy)
        self._logits_fn = None

    def evaluate(self, session, checkpoint, log) -> list[dict]:
        from asr.inference import model_logits_fn, read_normalization

        with log.phase("evaluate"):
            self.model.set_weights(session.evaluation_weights())
            if self._logits_fn is None:
                mean, std = read_normalization(session.run_dir, self.recipe)
                self._logits_fn = model_logits_fn(self.recipe, self.strategy, self.model, mean, std)
            if self.decode:
                results = self.validation.run(self._logits_fn, self.source)
            else:
                results = self.validation.loss_only(self._logits_fn, self.source)
        return results + self.validation.run_extra(self._logits_fn, self.source, log)

    def close(self) -> None:
        self.validation.close()
