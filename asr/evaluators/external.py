"""``eval.mode: external``: training only saves the epoch-end checkpoint; another process evaluates it.

``python -m asr.evaluate --watch RUN_DIR`` (on this machine or another that sees the run directory) decodes
each new checkpoint and appends ``eval`` events with ``source: "external"`` to the run's event log, where
the time-to-accuracy report reads them. Evaluation then costs the training run no time at all, which is
the point of the mode; the report's TTA uses the evaluated checkpoint's run-clock time.
"""

from __future__ import annotations


class ExternalEvaluator:
    def __init__(self, recipe, run_dir):
        self.run_dir = run_dir

    def evaluate(self, session, checkpoint, log) -> list[dict]:
        return []

    def close(self) -> None:
        pass
