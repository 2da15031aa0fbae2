"""Checkpoints of a run: weights, optimizer state, and the run state (step, epoch, data position, clock).

Layout in ``RUN_DIR/checkpoints/``: ``ckpt-<step>.index`` + ``ckpt-<step>.data-*`` (a ``tf.train.Checkpoint``
of the model and optimizer) and ``ckpt-<step>.json`` (the run state, with the size and CRC32C of each TF
file). A checkpoint is written in three moves: the TF files under a temporary prefix, renamed into place,
then the JSON (temporary name, fsync, rename). So:

- a checkpoint exists (is listed) only once its JSON is on disk: a run killed mid-save leaves the previous
  checkpoint as the latest, and the next start removes the leftovers (``*.tmp-*``, ``*_temp/``);
- a checkpoint whose files no longer match its JSON (truncated, emptied, bytes flipped on disk) is
  *damaged*: :func:`restore_newest` skips it with a warning naming it and the older one used instead.

Only the chief worker writes here; other workers of a multi-worker run write the same collective save to
a private scratch directory that is removed when the process ends.
"""

from __future__ import annotations

import atexit
import errno
import functools
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from asr import failpoints
from asr.files import WriteError, file_crc32c, read_json, remove_temporaries, temporary_name, write_json

CHECKPOINT_DIR = "checkpoints"
PREFIX = "ckpt-"
T = TypeVar("T")


class CheckpointMismatchError(ValueError):
    """A checkpoint that does not fit the model being restored; the message names both."""


class CheckpointDamagedError(ValueError):
    """A checkpoint whose files are missing, cut or corrupted; the message names the file."""


class NoValidCheckpointError(ValueError):
    """Every checkpoint of a run is damaged; the message names each and why."""


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
    """Complete checkpoints of a run (their JSON state is readable), oldest (lowest step) first."""
    found = []
    directory = checkpoint_dir(run_dir)
    if not directory.is_dir():
        return []
    for state_file in directory.glob(f"{PREFIX}*.json"):
        name = state_file.stem
        try:
            step = int(name[len(PREFIX) :])
        except ValueError:
            continue
        state = read_json(state_file)
        if not isinstance(state, dict) or not Path(f"{directory / name}.index").is_file():
            continue
        found.append(CheckpointInfo(name, directory / name, step, state))
    return sorted(found, key=lambda c: c.step)


def latest_checkpoint(run_dir: str | os.PathLike) -> CheckpointInfo | None:
    checkpoints = list_checkpoints(run_dir)
    return checkpoints[-1] if checkpoints else None


# --------------------------------------------------------------------------- integrity


def _tf_files(prefix: Path) -> list[Path]:
    return [Path(f"{prefix}.index"), *sorted(prefix.parent.glob(f"{prefix.name}.data-*"))]


def describe_files(prefix: Path) -> dict[str, dict[str, int]]:
    """``{file name: {"bytes", "crc32c"}}`` of a TF checkpoint's files, recorded in its JSON state."""
    return {f.name: {"bytes": f.stat().st_size, "crc32c": file_crc32c(f)} for f in _tf_files(prefix)}


def damage(info: CheckpointInfo) -> str | None:
    """Why ``info``'s files are not the ones its state recorded (missing, cut, corrupted), or None.

    Checkpoints written before sizes and checksums were recorded are checked for their files' presence
    only; TensorFlow's own per-tensor checksums catch the rest when they are read.
    """
    recorded = info.state.get("files")
    if not isinstance(recorded, dict):
        present = [f for f in _tf_files(info.path) if f.is_file()]
        return None if len(present) >= 2 else f"{info.name}: weight files missing"
    for name, expected in sorted(recorded.items()):
        path = info.path.parent / name
        if not path.is_file():
            return f"{name} is missing"
        size = path.stat().st_size
        if size != expected.get("bytes"):
            return f"{name} has {size} bytes, {expected.get('bytes')} were written"
        if file_crc32c(path) != expected.get("crc32c"):
            return f"{name} does not match its checksum (corrupted)"
    return None


def restore_newest(
    checkpoints: list[CheckpointInfo], restore: Callable[[CheckpointInfo], T], warn: Callable[[str], None]
) -> tuple[CheckpointInfo, T]:
    """``restore`` the newest undamaged checkpoint; returns it and what ``restore`` returned.

    A damaged checkpoint (by :func:`damage`, or :class:`CheckpointDamagedError` from ``restore``) is
    skipped; once one restores, one warning names what was skipped and what was used. Raises
    :class:`NoValidCheckpointError` when none is usable.
    """
    skipped: list[str] = []
    for info in reversed(checkpoints):
        problem = damage(info)
        if problem is None:
            try:
                result = restore(info)
            except CheckpointDamagedError as error:
                problem = str(error)
            else:
                if skipped:
                    warn(f"{'; '.join(skipped)}: damaged, using the older {info.name} ({info.path})")
                return info, result
        skipped.append(f"{info.name} ({problem})")
    where = checkpoints[0].path.parent if checkpoints else "the run directory"
    raise NoValidCheckpointError(f"{where}: no usable checkpoint: {'; '.join(skipped) or 'none saved'}")


def _restore_error(error: BaseException, path: Path, what: str) -> ValueError:
    """A failed TF restore as damage (the files cannot be read) or a mismatch (another model)."""
    import tensorflow as tf

    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    _silence_unrestored_value_warnings()
    damaged = isinstance(error, (tf.errors.DataLossError, tf.errors.OutOfRangeError, IndexError)) or any(
        word in first.lower() for word in ("sstable", "corrupt", "truncated", "checksum", "unable to open")
    )
    if damaged:
        return CheckpointDamagedError(f"{path}: unreadable ({first})")
    return CheckpointMismatchError(f"{path}: {what} ({first})")


_RESTORE_ERRORS = (AssertionError, ValueError, IndexError)


def _tf_restore_errors() -> tuple[type[BaseException], ...]:
    import tensorflow as tf

    return (*_RESTORE_ERRORS, tf.errors.OpError)


# --------------------------------------------------------------------------- saving and restoring


@functools.cache
def worker_scratch() -> Path:
    """A non-chief worker's private checkpoint directory: one per process, removed when it ends."""
    scratch = Path(tempfile.mkdtemp(prefix="asr-worker-"))
    atexit.register(shutil.rmtree, scratch, ignore_errors=True)
    return scratch / CHECKPOINT_DIR


def tf_write_error(prefix: Path, error: Exception) -> Exception:
    """A failed save as :class:`WriteError` naming the checkpoint (TF reports ENOSPC/EFBIG as OpErrors whose
    message ends with the system's reason); other errors are returned unchanged."""
    import tensorflow as tf

    if isinstance(error, OSError):
        return WriteError(prefix, error)
    if isinstance(error, tf.errors.OpError):
        reason = error.message.split(" [Op:")[0].split("; ")[-1].strip()
        return WriteError(prefix, OSError(errno.EIO, reason or type(error).__name__))
    return error


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
        self.directory = checkpoint_dir(run_dir) if is_chief else worker_scratch()
        self.directory.mkdir(parents=True, exist_ok=True)

    def remove_leftovers(self) -> None:
        """Delete what a save killed midway left (temporary TF files, ``*_temp/`` shards, JSON temps)."""
        remove_temporaries(self.directory, f"{PREFIX}*")
        for leftover in self.directory.glob(f"{PREFIX}*_temp"):
            shutil.rmtree(leftover, ignore_errors=True)

    def save(self, step: int, state: dict[str, Any]) -> CheckpointInfo:
        """Write checkpoint ``ckpt-<step>`` (weights and optimizer, then the run state); returns it.

        The TF files go to a temporary prefix first, so overwriting a checkpoint of the same step (an
        epoch end right after a periodic save) never leaves it half old, half new for longer than two
        renames. Non-chief workers write the same checkpoint into their scratch directory.
        """
        name = f"{PREFIX}{step}"
        prefix = self.directory / name
        temporary = temporary_name(prefix)
        failpoints.hit("checkpoint.weights")
        try:
            self.checkpoint.write(str(temporary))
            failpoints.hit("checkpoint.state")
            written = _tf_files(temporary)
            for file in written:
                os.replace(file, self.directory / file.name.replace(temporary.name, name, 1))
        except Exception as error:
            self._discard(temporary)
            raise tf_write_error(prefix, error) from None
        except BaseException:
            self._discard(temporary)
            raise
        state = dict(state, step=step, files=describe_files(prefix))
        write_json(self.directory / f"{name}.json", state, sort_keys=True, fsync=True)
        self._prune()
        return CheckpointInfo(name, prefix, step, state)

    def _discard(self, temporary: Path) -> None:
        """Remove a save's temporary files (after a failure: nothing half-written is left)."""
        for file in self.directory.glob(f"{temporary.name}*"):
            shutil.rmtree(file, ignore_errors=True) if file.is_dir() else file.unlink(missing_ok=True)

    def update_state(self, info: CheckpointInfo, state: dict[str, Any]) -> CheckpointInfo:
        """Replace the run state saved with ``info`` (e.g. TTA results known after its evaluation)."""
        state = dict(state, step=info.step, files=info.state.get("files"))
        write_json(self.directory / f"{info.name}.json", state, sort_keys=True, fsync=True)
        return CheckpointInfo(info.name, info.path, info.step, state)

    def restore(self, info: CheckpointInfo) -> dict[str, Any]:
        """Load weights and optimizer state from ``info``; returns its run state.

        Raises :class:`CheckpointDamagedError` when TF cannot read the files, and
        :class:`CheckpointMismatchError` when they hold another model.
        """
        try:
            self.checkpoint.read(str(info.path)).assert_existing_objects_matched()
        except _tf_restore_errors() as error:
            raise _restore_error(error, info.path, "does not match this model") from None
        return dict(info.state)

    def _prune(self) -> None:
        for old in list_checkpoints(self.directory.parent)[: -self.keep]:
            (self.directory / f"{old.name}.json").unlink(missing_ok=True)
            for file in self.directory.glob(f"{old.name}.*"):
                file.unlink(missing_ok=True)


WEIGHT_AVERAGE_KEY = "weight_average"
"""The checkpoint key of the trainable weights' moving average (``train.ema_decay``, :class:`asr.session.
WeightAverage`): a list in ``model.trainable_weights`` order."""


def restore_weights(model, path: str | os.PathLike) -> None:
    """Load only the model's weights from a training checkpoint (evaluation models have no optimizer).

    When the checkpoint holds a moving average of the weights (``train.ema_decay``), the trainable weights
    are the average's, batch-norm statistics the model's: the weights the run's evaluations measured, so that
    ``asr.evaluate``, export and transcription agree with the TTA series.

    Raises :class:`CheckpointMismatchError` naming the checkpoint when layers or shapes differ, and
    :class:`CheckpointDamagedError` when its files cannot be read.
    """
    import tensorflow as tf

    try:
        status = tf.train.Checkpoint(model=model).read(str(path))
        status.expect_partial()
        status.assert_existing_objects_matched()
        first_average = f"{WEIGHT_AVERAGE_KEY}/0/.ATTRIBUTES/VARIABLE_VALUE"
        if tf.train.load_checkpoint(str(path)).has_tensor(first_average):
            trainable = [w.value for w in model.trainable_weights]
            status = tf.train.Checkpoint(**{WEIGHT_AVERAGE_KEY: trainable}).read(str(path))
            status.expect_partial()
            status.assert_existing_objects_matched()
    except _tf_restore_errors() as error:
        raise _restore_error(error, Path(path), "does not fit the recipe's model") from None


def _silence_unrestored_value_warnings() -> None:
    """After a failed restore TF logs one warning per unmatched value when the half-done restore is
    garbage collected, often at interpreter exit, burying the one-line error; the caller is about to
    stop, so TF's Python warnings are turned off for the rest of the process."""
    import logging

    import tensorflow as tf

    tf.get_logger().setLevel(logging.ERROR)
