"""``eval.mode: loss``: validation CTC loss per utterance only, no decoding (the cheapest signal).

Runs like ``resident`` (a second model takes the training weights by copy) but decodes nothing, so no
WER/CER is measured and no accuracy target can be reached in this mode.
"""

from __future__ import annotations

from asr.evaluators.resident import ResidentEvaluator


class LossEvaluator(ResidentEvaluator):
    source = "loss"
    decode = False
