"""The run's event log: one JSON object per line in ``RUN_DIR/events.jsonl``.

Training appends; evaluation (in-process or an external ``asr.evaluate --watch``) appends; the
time-to-accuracy report only reads. Every event has:

- ``event``: its kind (below); ``wall_time``: Unix seconds when written;
- ``elapsed``: seconds on the run clock (:mod:`asr.clock`): active time since the model was
  created, counting training, evaluation, swapping and checkpointing, not downtime between a
  stop and a resume. This is the time-to-accuracy clock.
- ``epoch`` (0-based epoch in progress or just finished) and ``step`` (optimizer steps applied).

Kinds and their own fields:

- ``run_start``: ``recipe``, ``rig``, ``replicas``, ``workers``, ``resumed`` (bool),
  ``downtime`` (seconds between the previous stop and this start; 0 for a fresh run).
- ``step``: ``phase`` = "train", ``loss`` (mean CTC loss per utterance), ``batch_size`` (global
  utterances), ``replicas``, ``step_seconds``, ``elements_per_second`` (batch_size / step_seconds),
  ``elements_per_second_per_replica``, ``audio_seconds`` (unpadded audio in the batch).
- ``sample``: ``pairs`` = [[reference, hypothesis], ...] from a greedy decode of a training batch.
- ``phase``: ``phase`` in {"checkpoint", "swap_out", "evaluate", "swap_in"}, ``seconds``.
- ``checkpoint``: ``path``, ``seconds``.
- ``eval``: ``split``, ``loss``, ``wer``, ``cer``, ``cer_maxlen`` (percent), ``substitutions``,
  ``deletions``, ``insertions``, ``words``, ``decoder``, ``beam_width``, ``utterances``,
  ``seconds``, ``source`` ("swap" | "resident" | "external").
- ``epoch_end``: ``train_seconds`` of that epoch.
- ``target``: ``metric``, ``target``, ``rule`` ("median" | "first"), ``value``.
- ``util``: ``cpu_percent`` (training process, 100 = one core), ``gpus`` = [{``index``,
  ``utilization``, ``memory_used_mb``, ``power_w``}].
- ``skipped_step``: ``reason`` (non-finite loss), ``consecutive``.
- ``run_end``: ``reason`` ("epochs" | "time_budget" | "targets" | "signal" | "nan" | "error").
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any, TextIO

EVENT_LOG_NAME = "events.jsonl"


class EventLog:
    """Appends events to ``RUN_DIR/events.jsonl``; each line is flushed as it is written."""

    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir) / EVENT_LOG_NAME
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file: TextIO | None = self.path.open("a", encoding="utf-8")
        self._lock = threading.Lock()  # the utilization sampler writes from its own thread

    def write(self, event: str, **fields: Any) -> dict[str, Any]:
        record = {"event": event, "wall_time": time.time(), **fields}
        line = json.dumps(record, separators=(",", ":"), default=_jsonable) + "\n"
        with self._lock:
            if self._file is not None:
                self._file.write(line)
                self._file.flush()
        return record

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None

    def __enter__(self) -> EventLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def read_events(path: str | Path) -> tuple[list[dict[str, Any]], list[str]]:
    """All readable events, and a warning for each line that is not (e.g. a run killed mid-write).

    ``path`` is the log itself or its run directory. A missing log raises ``FileNotFoundError``.
    """
    path = Path(path)
    if path.is_dir():
        path = path / EVENT_LOG_NAME
    events: list[dict[str, Any]] = []
    warnings: list[str] = []
    with path.open(encoding="utf-8", errors="replace") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                warnings.append(f"{path}:{number}: unreadable line skipped (truncated write?)")
                continue
            if isinstance(record, dict) and "event" in record:
                events.append(record)
            else:
                warnings.append(f"{path}:{number}: not an event object, skipped")
    return events, warnings
