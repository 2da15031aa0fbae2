"""``eval.mode: swap`` (the paper's default): training state out, evaluation model in, decode, and back.

At an epoch end the training loop saves a checkpoint and releases the training model and optimizer;
:class:`SwapEvaluator` then builds the *evaluation* model from that checkpoint on every replica of the
strategy (:func:`asr.inference.load_checkpoint`, as ``asr.evaluate`` does), decodes the validation set, and
drops the evaluation model again before the training state is rebuilt.
"""

from __future__ import annotations


class SwapEvaluator:
    """``eval.mode: swap``: training state out, evaluation model in, decode, and back (paper Figure 6).

    Phases on the run clock and in the event log: ``swap_out`` (release training model and optimizer),
    ``evaluate`` (build the evaluation model from the epoch-end checkpoint, decode the validation set),
    ``swap_in`` (rebuild model, optimizer and compiled step from the same checkpoint). Between ``evaluate``
    and ``swap_in`` the extra sets (``eval.extra_sets``) are decoded with the same evaluation model, off the
    run clock. Because the checkpoint holds every weight, optimizer slot and dropout random state, training
    continues exactly where it would have without evaluation.
    """

    def __init__(self, recipe, strategy, strict: bool = False):
        from asr.evaluators.common import Validation

        self.recipe = recipe
        self.strategy = strategy
        self.validation = Validation(recipe, strict=strict)

    def evaluate(self, session, checkpoint, log) -> list[dict]:
        from asr.inference import load_checkpoint

        with log.phase("swap_out"):
            session.release()
        with log.phase("evaluate"):
            logits_fn, _ = load_checkpoint(
                session.run_dir, checkpoint.path, self.recipe, strategy=self.strategy
            )
            results = self.validation.run(logits_fn, "swap")
        results += self.validation.run_extra(logits_fn, "swap", log)
        del logits_fn
        with log.phase("swap_in"):
            session.restore(checkpoint)
        return results

    def close(self) -> None:
        self.validation.close()
