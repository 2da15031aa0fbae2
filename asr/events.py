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
  ``downtime`` (seconds between the previous stop and this start; 0 for a fresh run),
  ``restart_elapsed`` (the run clock saved with the checkpoint it resumed from: events of the stopped
  session later than this were lost work),
  ``damaged_shards`` = [{``file``, ``readable``, ``listed``, ``reason``}] (training shards read only
  up to their damage, or missing).
- ``step``: ``phase`` = "train", ``loss`` (mean CTC loss per utterance), ``batch_size`` (global
  utterances), ``replicas``, ``step_seconds``, ``elements_per_second`` (batch_size / step_seconds),
  ``elements_per_second_per_replica``, ``audio_seconds`` (unpadded audio in the batch),
  ``learning_rate`` (the update's: ``train.warmup_steps`` and the per-epoch decay).
- ``sample``: ``pairs`` = [[reference, hypothesis], ...] from a greedy decode of a training batch.
- ``phase``: ``phase`` in {"checkpoint", "swap_out", "evaluate", "swap_in"}, ``seconds``.
- ``off_clock``: ``name`` (``eval:<set>`` for an ``eval.extra_sets`` entry), ``seconds``: work the run
  clock stood still for (its ``elapsed`` is the same before and after).
- ``checkpoint``: ``path``, ``seconds``.
- ``eval``: ``split``, ``loss``, ``wer``, ``cer``, ``cer_maxlen`` (percent), ``substitutions``,
  ``deletions``, ``insertions``, ``words``, ``decoder``, ``beam_width``, ``utterances``,
  ``seconds``, ``source`` ("swap" | "resident" | "external"); ``skipped_utterances`` only when
  damaged or missing shards left utterances of the set out; ``extra`` (true) for an ``eval.extra_sets``
  set, whose ``split`` is its name in the recipe (never used for time to accuracy).
- ``epoch_end``: ``train_seconds`` of that epoch (this session's share if it was resumed midway),
  ``learning_rate``.
- ``target``: ``metric``, ``target``, ``rule`` ("median" | "first"), ``value``.
- ``util``: ``cpu_percent`` (training process, 100 = one core), ``gpus`` = [{``index``,
  ``utilization``, ``memory_used_mb``, ``power_w``}].
- ``skipped_step``: ``reason`` (non-finite loss), ``consecutive``.
- ``run_end``: ``reason`` ("epochs" | "time_budget" | "targets" | "signal" | "nan" | "error"),
  ``phases`` and ``off_clock`` (seconds per name, this run's totals).

Lines are whole or skipped: a line cut by a kill or a full disk is left as it is, the next event starts
on a fresh line, and :func:`read_events` returns one warning per unreadable line.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from pathlib import Path
from typing import Any, TextIO

from asr import failpoints
from asr.files import WriteError

EVENT_LOG_NAME = "events.jsonl"


class EventLog:
    """Appends events to ``RUN_DIR/events.jsonl``; each line is flushed as it is written.

    Every line starts on a fresh line: a log whose last line was cut (a kill or a full disk mid-write)
    gets a newline before the first new event, so the cut line stays one unreadable line that readers
    skip and count, and no new event is glued to it. A failed write raises :class:`asr.files.WriteError`
    naming the log.
    """

    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir) / EVENT_LOG_NAME
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file: TextIO | None = self.path.open("a", encoding="utf-8")
        except OSError as error:
            raise WriteError(self.path, error) from None
        self._lock = threading.Lock()  # the utilization sampler writes from its own thread
        self._line_open = _ends_mid_line(self.path)

    def write(self, event: str, **fields: Any) -> dict[str, Any]:
        record = {"event": event, "wall_time": time.time(), **fields}
        line = json.dumps(record, separators=(",", ":"), default=_jsonable) + "\n"
        with self._lock:
            if self._file is not None:
                failpoints.hit("events.write")
                try:
                    self._file.write("\n" + line if self._line_open else line)
                    self._file.flush()
                    self._line_open = False
                except OSError as error:
                    self._line_open = True  # part of the line may be on disk
                    self._drop_buffer()
                    raise WriteError(self.path, error) from None
        return record

    def _drop_buffer(self) -> None:
        """After a failed write, reopen so that Python's buffer does not retry the same bytes at close."""
        with contextlib.suppress(OSError):
            self._file.close()
        try:
            self._file = self.path.open("a", encoding="utf-8")
        except OSError:
            self._file = None

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                with contextlib.suppress(OSError):
                    self._file.close()
                self._file = None

    def __enter__(self) -> EventLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _ends_mid_line(path: Path) -> bool:
    """True when the file's last byte is not a newline (its last line was cut)."""
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            if handle.tell() == 0:
                return False
            handle.seek(-1, os.SEEK_END)
            return handle.read(1) != b"\n"
    except OSError:
        return False


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def read_events(path: str | Path) -> tuple[list[dict[str, Any]], list[str]]:
    """All readable events, and one warning per line that is not (e.g. a run killed mid-write).

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
                warnings.append(f"{path}:{number}: unreadable line skipped (cut by a kill or a full disk?)")
                continue
            if isinstance(record, dict) and "event" in record:
                events.append(record)
            else:
                warnings.append(f"{path}:{number}: not an event object, skipped")
    return events, warnings
