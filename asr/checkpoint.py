"""Checkpoints of a run: weights, optimizer state, and the run state (step, epoch, data position, clock).

Layout in ``RUN_DIR/checkpoints/``: ``ckpt-<step>.index`` + ``ckpt-<step>.data-*`` (a ``tf.train.Checkpoint``
of the model and optimizer) and ``ckpt-<step>.json`` (the run state). The JSON is written last, to a temporary
name then renamed, so a checkpoint exists only once all of it is on disk: a run killed mid-save leaves
the previous checkpoint as the latest. Only the chief worker writes here; other workers of a multi-worker
run write the same collective save to a private scratch directory.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CHECKPOINT_DIR = "checkpoints"
PREFIX = "ckpt-"


class CheckpointMismatchError(ValueError):
    """A checkpoint that does not fit the model being restored; the message names both."""


@dataclass(frozen=True)
class CheckpointInfo:
    """One complete checkpoint: ``path`` is the TF prefix, ``state`` the run state saved with it."""

    name: str
    path: Path
    step: int
    state: dict[str, Any]

    @property
    def epoch(self) -> int:
        return int(self.state.get("epoch", 0))


def checkpoint_dir(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / CHECKPOINT_DIR


def list_checkpoints(run_dir: str | os.PathLike) -> list[CheckpointInfo]:
    """Complete checkpoints of a run, oldest (lowest step) first."""
    found = []
    directory = checkpoint_dir(run_dir)
    if not directory.is_dir():
        return []
    for state_file in directory.glob(f"{PREFIX}*.json"):
        name = state_file.stem
        try:
            step = int(name[len(PREFIX) :])
            state = json.loads(state_file.read_text())
        except (ValueError, OSError):
            continue
        prefix = directory / name
        if not Path(f"{prefix}.index").is_file():
            continue
        found.append(CheckpointInfo(name, prefix, step, state))
    return sorted(found, key=lambda c: c.step)


def latest_checkpoint(run_dir: str | os.PathLike) -> CheckpointInfo | None:
    checkpoints = list_checkpoints(run_dir)
    return checkpoints[-1] if checkpoints else None


def _write_json_atomic(path: Path, value: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(value, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)


class Checkpointer:
    """Saves and restores ``model`` and ``optimizer`` with the run state, keeping the last ``keep``.

    Checkpoints named by an epoch end (``state["epoch_end"]``) are what evaluation reads; they are
    pruned like the others.
    """

    def __init__(self, run_dir: str | os.PathLike, keep: int, is_chief: bool = True, **trackables: Any):
        import tensorflow as tf

        self.keep = max(int(keep), 1)
        self.is_chief = is_chief
        self.checkpoint = tf.train.Checkpoint(**trackables)
        if is_chief:
            self.directory = checkpoint_dir(run_dir)
        else:  # every worker takes part in the collective save; only the chief's copy is the run's
            self.directory = Path(tempfile.mkdtemp(prefix="asr-worker-")) / CHECKPOINT_DIR
        self.directory.mkdir(parents=True, exist_ok=True)

    def save(self, step: int, state: dict[str, Any]) -> CheckpointInfo:
        """Write checkpoint ``ckpt-<step>`` (weights, optimizer, then the run state); returns it.

        Non-chief workers write the same checkpoint into a private scratch directory, which is what a
        swap evaluation on that worker restores from.
        """
        name = f"{PREFIX}{step}"
        prefix = self.directory / name
        self.checkpoint.write(str(prefix))
        state = dict(state, step=step)
        _write_json_atomic(self.directory / f"{name}.json", state)
        self._prune()
        return CheckpointInfo(name, prefix, step, state)

    def update_state(self, info: CheckpointInfo, state: dict[str, Any]) -> CheckpointInfo:
        """Replace the run state saved with ``info`` (e.g. TTA results known after its evaluation)."""
        state = dict(state, step=info.step)
        _write_json_atomic(self.directory / f"{info.name}.json", state)
        return CheckpointInfo(info.name, info.path, info.step, state)

    def restore(self, info: CheckpointInfo) -> dict[str, Any]:
        """Load weights and optimizer state from ``info``; returns its run state."""
        import tensorflow as tf

        try:
            self.checkpoint.read(str(info.path)).assert_existing_objects_matched()
        except (AssertionError, ValueError, tf.errors.NotFoundError, tf.errors.InvalidArgumentError) as error:
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            _silence_unrestored_value_warnings()
            raise CheckpointMismatchError(f"{info.path}: does not match this model ({first})") from None
        return dict(info.state)

    def _prune(self) -> None:
        for old in list_checkpoints(self.directory.parent)[: -self.keep]:
            (self.directory / f"{old.name}.json").unlink(missing_ok=True)
            for file in self.directory.glob(f"{old.name}.*"):
                file.unlink(missing_ok=True)


def restore_weights(model, path: str | os.PathLike) -> None:
    """Load only the model's weights from a training checkpoint (evaluation models have no optimizer).

    Raises :class:`CheckpointMismatchError` naming the checkpoint when layers or shapes differ.
    """
    import tensorflow as tf

    try:
        status = tf.train.Checkpoint(model=model).read(str(path))
        status.expect_partial()
        status.assert_existing_objects_matched()
    except (AssertionError, ValueError, tf.errors.NotFoundError, tf.errors.InvalidArgumentError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        _silence_unrestored_value_warnings()
        raise CheckpointMismatchError(f"{path}: does not fit the recipe's model ({first})") from None


def _silence_unrestored_value_warnings() -> None:
    """After a failed restore TF logs one warning per unmatched value when the half-done restore is
    garbage collected, often at interpreter exit, burying the one-line error; the caller is about to
    stop, so TF's Python warnings are turned off for the rest of the process."""
    import logging

    import tensorflow as tf

    tf.get_logger().setLevel(logging.ERROR)
