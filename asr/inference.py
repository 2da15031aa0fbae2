"""Run a trained acoustic model: features (or waveforms) in, logits and output frames out.

Every consumer runs the model through here: evaluation during training (:mod:`asr.evaluators`),
``asr.evaluate``, ``asr.transcribe`` and ``asr.export``. The model is the training architecture called
with ``training=False`` (dropout off, batch normalization with its moving statistics); features are
normalized as the recipe's ``data.normalization`` says (:func:`normalize`): with the training split's mean
and standard deviation, which ``asr.train`` copies into ``RUN_DIR/normalization.json`` so that a run
directory alone is enough to use the model, or per utterance.

:func:`replica_logits_fn` turns any Keras model ``features [B, T, 93] -> logits [B, T_out, 30]`` into a
:data:`LogitsFn` that runs it on every replica of a ``tf.distribute`` strategy; :func:`load_checkpoint`
builds one from a run directory's checkpoint (:func:`compiled_logits_fn`: XLA on one device instead).
Every stage that restores a run's checkpoint goes one way: :func:`restore_run` chooses it (the newest
undamaged one, falling back with one warning, or the one at a step), :func:`load_checkpoint` (evaluation
model) or :func:`restore_model` (training graph, for export and compression) load it, both through
:func:`asr.checkpoint.restore_weights` (the weights' moving average when the run kept one).
:func:`open_run` and :func:`open_export` give an :class:`AcousticModel` from a run directory or from an
``asr.export`` directory (SavedModel, TFLite float32/int8, ONNX), the same interface for every backend;
:func:`open_export` first checks ``export.json`` and the size and CRC32C of every file the backend loads
(:class:`ExportDamagedError`, one line naming the file).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from asr.config import ModelConfig, Recipe
from asr.features import FEATURE_DIM
from asr.files import JsonError, load_json, read_json, write_json
from asr.model import output_frames
from asr.normalization import normalize

NORMALIZATION_FILE = "normalization.json"
T = TypeVar("T")

LogitsFn = Callable[
    [np.ndarray, np.ndarray, Sequence[Sequence[int]]], tuple[np.ndarray, np.ndarray, np.ndarray]
]
"""``(features [B, T, 93], frames [B], labels) -> (logits [B, T_out, 30], output frames [B], loss [B])``:
what evaluation needs from a model. ``loss`` is the CTC loss per utterance (nan where undefined)."""


# --------------------------------------------------------------------------- normalization


def write_normalization(run_dir: Path, mean: np.ndarray, std: np.ndarray, source: str) -> None:
    """Save the training features' per-dimension mean/std (atomically: :func:`asr.files.write_json`)."""
    write_json(run_dir / NORMALIZATION_FILE, {"source": source, "mean": mean.tolist(), "std": std.tolist()},
               indent=None)  # fmt: skip


class NormalizationError(ValueError):
    """A run directory whose ``normalization.json`` is missing or unusable; the message names the file."""


def read_normalization(run_dir: str | Path, recipe: Recipe | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The training features' per-dimension mean and std (float32 ``[93]`` each) saved in
    ``RUN_DIR/normalization.json``; :class:`NormalizationError` (one line naming the file) when it is
    missing, not JSON, or not 93 finite values each (std not negative).

    There is no fallback to the training shards' manifest: ``asr.train`` writes the file before the first
    step of every run, and the recipe's ``data.train`` may be relative to a directory the run does not
    record, or hold shards extracted again since, whose mean/std would silently differ. ``recipe`` only
    names ``data.train`` in the message, where the values can be found again.
    """
    path = Path(run_dir) / NORMALIZATION_FILE
    try:
        values = load_json(path)
    except JsonError as error:
        shards = f" (data.train: {recipe.data.train})" if recipe else ""
        raise NormalizationError(
            f"{error}; it holds the training features' mean/std, which asr.train writes when a run starts: "
            f"restore it from a copy of the run, or from feature_mean/feature_std in the manifest.json of "
            f"the shards the run trained on{shards}"
        ) from None
    stats = []
    for key in ("mean", "std"):
        value = values.get(key) if isinstance(values, dict) else None
        try:
            array = np.asarray(value, np.float64)
        except (TypeError, ValueError):
            array = np.zeros(0)
        if (
            array.shape != (FEATURE_DIM,)
            or not np.isfinite(array).all()
            or (key == "std" and array.min() < 0)
        ):
            raise NormalizationError(f"{path}: {key!r} must be {FEATURE_DIM} finite numbers"
                                     f"{', none negative' if key == 'std' else ''}")  # fmt: skip
        stats.append(array.astype(np.float32))
    return stats[0], stats[1]


# --------------------------------------------------------------------------- the evaluation model


def build_eval_model(recipe: Recipe, strategy: Any):
    """The evaluation model (same layers, no optimizer) with variables on every replica."""
    from asr.model import build_model

    with strategy.scope():
        return build_model(recipe.model, sync_batch_norm=False, name="evaluation_model")


def local_runtime(recipe: Recipe) -> Recipe:
    """The recipe with a strategy for one machine: inference outside training never joins a cluster."""
    runtime = recipe.runtime
    if runtime.strategy == "multi_worker":
        runtime = dataclasses.replace(runtime, strategy="auto")
    return dataclasses.replace(recipe, runtime=runtime)


def replica_logits_fn(
    strategy,
    model,
    config: ModelConfig,
    mean: np.ndarray | None = None,
    std: np.ndarray | None = None,
    mode: str = "global",
) -> LogitsFn:
    """A :data:`LogitsFn` that runs ``model`` in inference mode on every replica.

    Each batch ``[B, T, 93]`` is normalized (:func:`normalize` in ``mode``: with the training set's
    ``mean``/``std``, or per utterance; padded frames zero), padded with empty utterances to a multiple
    of the replica count, split evenly (replica r gets rows ``r*B/R .. (r+1)*B/R``), and the replicas'
    logits and CTC losses are gathered back in row order. Returns ``(logits float32 [B, T_out, 30],
    output frames int [B], CTC loss per utterance float [B])``; the loss is ``nan`` where the transcript
    (separators included) is longer than the output.
    """
    step = _replica_step(strategy, model)
    replicas = strategy.num_replicas_in_sync

    def logits_fn(features: np.ndarray, frames: np.ndarray, labels: Sequence[Sequence[int]]):
        import tensorflow as tf

        features = normalize(features, np.asarray(frames), mean, std, mode)
        frames = np.asarray(frames, dtype=np.int64)
        batch = features.shape[0]
        out = np.asarray(output_frames(frames, config))
        padded = -(-batch // replicas) * replicas
        label_lengths = np.array([len(label) for label in labels] + [0] * (padded - batch), np.int32)
        dense_labels = np.zeros((padded, max(1, int(label_lengths.max()))), np.int32)
        for row, label in enumerate(labels):
            dense_labels[row, : len(label)] = label
        if padded > batch:  # empty utterances, so that every replica gets an equal share
            features = np.concatenate([features, np.zeros((padded - batch, *features.shape[1:]), np.float32)])
            frames = np.concatenate([frames, np.zeros(padded - batch, np.int64)])
            out = np.concatenate([out, np.ones(padded - batch, np.int64)])
        logit_steps = int(output_frames(features.shape[1], config))
        # TF's CTC kernel refuses empty and too-long transcripts (padding rows, short utterances): those
        # are scored against one label instead, and their loss reported as nan
        unfit = (label_lengths > out) | (label_lengths == 0)
        logits, loss = step(
            tf.constant(features),
            tf.constant(frames, tf.int32),
            tf.constant(np.maximum(out, 1), tf.int32),
            tf.constant(dense_labels),
            tf.constant(np.where(unfit, 1, label_lengths).astype(np.int32)),
        )
        loss = loss.numpy()[:batch].astype(np.float64)
        loss[~np.isfinite(loss) | unfit[:batch]] = np.nan
        return logits.numpy()[:batch, :logit_steps], out[:batch], loss

    return logits_fn


def _replica_step(strategy, model):
    """The compiled step: each replica's rows through the model, logits and CTC loss gathered back."""
    import tensorflow as tf

    from asr.model import ctc_loss

    replicas = strategy.num_replicas_in_sync
    signature = [
        tf.TensorSpec([None, None, None], tf.float32),  # features
        tf.TensorSpec([None], tf.int32),  # input frames
        tf.TensorSpec([None], tf.int32),  # output frames
        tf.TensorSpec([None, None], tf.int32),  # labels
        tf.TensorSpec([None], tf.int32),  # label lengths
    ]

    @tf.function(input_signature=signature, autograph=False)
    def step(*batch):
        def on_replica(features, frames, out_frames, labels, label_lengths):
            logits = tf.cast(model((features, frames), training=False), tf.float32)
            return logits, ctc_loss(labels, label_lengths, logits, out_frames)

        per_replica = strategy.experimental_distribute_values_from_function(
            lambda ctx: _replica_slice(batch, ctx, replicas)
        )
        logits, loss = strategy.run(on_replica, args=per_replica)
        return strategy.gather(logits, axis=0), strategy.gather(loss, axis=0)

    return step


def _replica_slice(tensors, ctx, replicas: int):
    """Rows of the batch that replica ``ctx.replica_id_in_sync_group`` computes."""
    import tensorflow as tf

    index = ctx.replica_id_in_sync_group
    out = []
    for tensor in tensors:
        share = tf.shape(tensor)[0] // replicas
        out.append(tensor[index * share : (index + 1) * share])
    return tuple(out)


def model_logits_fn(recipe: Recipe, strategy: Any, model: Any, mean: np.ndarray, std: np.ndarray) -> LogitsFn:
    """:func:`replica_logits_fn` for a model of ``recipe`` (its ``data.normalization``)."""
    return replica_logits_fn(strategy, model, recipe.model, mean, std, recipe.data.normalization)


# --------------------------------------------------------------------------- from a run directory


def checkpoint_info(state: dict) -> dict[str, Any]:
    """``epoch``/``step``/``elapsed`` of a checkpoint's run state, for the event log."""
    progress = state.get("progress", {})
    info = {
        "epoch": int(state.get("epoch_end", progress.get("epoch", 0))),
        "step": int(state.get("step", progress.get("step", 0))),
    }
    if "clock" in state:
        info["elapsed"] = float(state["clock"].get("elapsed", 0.0))
    return info


def saved_checkpoint_info(checkpoint_path: str | Path) -> dict[str, Any]:
    """:func:`checkpoint_info` of the run state saved beside a checkpoint (``ckpt-N.json``; empty if none)."""
    return checkpoint_info(read_json(Path(f"{checkpoint_path}.json"), {}))


def restore_model(recipe: Recipe, checkpoint) -> tuple[Any, dict[str, Any]]:
    """The model of ``recipe`` (no distribution strategy, training graph) with a checkpoint's weights, and
    the checkpoint's ``epoch``/``step``/``elapsed``: for stages that rewrite the weights (export,
    compress); a ``restore`` for :func:`restore_run`."""
    from asr.checkpoint import restore_weights
    from asr.model import build_model

    model = build_model(recipe.model, name="acoustic_model")
    restore_weights(model, checkpoint.path)
    return model, saved_checkpoint_info(checkpoint.path)


def load_checkpoint(
    run_dir: Path, checkpoint_path: str | Path, recipe: Recipe, xla: bool = False, strategy: Any = None
) -> tuple[LogitsFn, dict]:
    """The evaluation model of ``recipe`` with a checkpoint's weights (their moving average when the run kept
    one: :func:`asr.checkpoint.restore_weights`) and the run's normalization: the one way every evaluation
    (``asr.evaluate``, the swap evaluator, :func:`open_run`) turns a checkpoint into a :data:`LogitsFn`.

    The model runs on every replica of ``strategy`` (the swap evaluator passes training's), by default of a
    new strategy for this machine (:func:`local_runtime`); with ``xla``, XLA-compiled on one device instead
    (:func:`compiled_logits_fn`). Returns the :data:`LogitsFn` and the checkpoint's ``epoch``/``step``/
    ``elapsed``; raises :class:`asr.checkpoint.CheckpointMismatchError` when the checkpoint does not fit the
    recipe and :class:`asr.checkpoint.CheckpointDamagedError` when its files cannot be read.
    """
    from asr.checkpoint import restore_weights
    from asr.strategy import make_strategy

    recipe = local_runtime(recipe)
    if xla:
        import tensorflow as tf

        strategy = tf.distribute.get_strategy()
    elif strategy is None:
        strategy = make_strategy(recipe.runtime, env={})
    model = build_eval_model(recipe, strategy)
    restore_weights(model, checkpoint_path)
    mean, std = read_normalization(Path(run_dir), recipe)
    info = saved_checkpoint_info(checkpoint_path)
    if xla:
        return compiled_logits_fn(model, recipe.model, mean, std, mode=recipe.data.normalization), info
    return model_logits_fn(recipe, strategy, model, mean, std), info


def compiled_logits_fn(
    model, config: ModelConfig, mean: np.ndarray, std: np.ndarray, pad_frames: int = 100, mode: str = "global"
) -> LogitsFn:
    """A :data:`LogitsFn` running ``model`` XLA-compiled (``jit_compile``) on one device; features normalized
    by :func:`normalize` in ``mode``.

    On a CPU at batch 1 the recurrent loop's per-step overhead dominates (the cpu model: 3 × 2 loops of
    ~530 steps for 16 s); XLA compiles each loop into one kernel, ~3× faster (``tools/bench_infer.py``).
    Each new input shape compiles once (~1 s), so inputs are padded to a multiple of ``pad_frames``
    (10 ms frames): padding changes no logits (the model masks it).
    """
    import tensorflow as tf

    infer = tf.function(lambda x, n: model((x, n), training=False), jit_compile=True, autograph=False)

    def logits_fn(features: np.ndarray, frames: np.ndarray, labels: Sequence[Sequence[int]]):
        features = normalize(features, np.asarray(frames), mean, std, mode)
        steps = features.shape[1]
        padded = -(-steps // pad_frames) * pad_frames
        features = np.pad(features, ((0, 0), (0, padded - steps), (0, 0)))
        logits = infer(tf.constant(features), tf.constant(np.asarray(frames), tf.int32)).numpy()
        out = np.asarray(output_frames(np.asarray(frames, np.int64), config))
        return logits[:, : int(output_frames(steps, config))], out, np.full(len(frames), np.nan)

    return logits_fn


# --------------------------------------------------------------------------- a model ready to use


@dataclasses.dataclass
class AcousticModel:
    """A trained model ready to run on audio, whatever it was loaded from (a checkpoint or an export).

    ``run`` takes utterances of any lengths, batches them by length and returns each one's logits
    ``float32 [T_out, 30]`` trimmed to its output frames; ``run_waveforms`` computes the features of 16 kHz
    mono waveforms first (:func:`asr.features.compute_features`, the definition ``asr.extract`` uses).
    """

    logits_fn: LogitsFn
    recipe: Recipe
    source: str
    """Where the weights come from (``RUN_DIR/checkpoints/ckpt-N`` or an export directory)."""
    info: dict[str, Any] = dataclasses.field(default_factory=dict)
    batch_size: int = 16

    @property
    def max_frames(self) -> int:
        """The longest input (10 ms frames) the model was trained on (``data.max_frames``)."""
        return self.recipe.data.max_frames

    def run(self, features: Sequence[np.ndarray]) -> list[np.ndarray]:
        order = sorted(range(len(features)), key=lambda i: len(features[i]), reverse=True)
        results: list[np.ndarray] = [np.zeros((0, 0), np.float32)] * len(features)
        for start in range(0, len(order), self.batch_size):
            rows = order[start : start + self.batch_size]
            frames = np.array([len(features[i]) for i in rows], np.int64)
            batch = np.zeros((len(rows), int(frames.max()), features[rows[0]].shape[1]), np.float32)
            for row, i in enumerate(rows):
                batch[row, : frames[row]] = features[i]
            logits, out, _ = self.logits_fn(batch, frames, [[] for _ in rows])
            for row, i in enumerate(rows):
                results[i] = logits[row, : max(int(out[row]), 0)]
        return results

    def run_waveforms(self, waveforms: Sequence[np.ndarray]) -> list[np.ndarray]:
        from asr.features import compute_features

        return self.run([compute_features(w) for w in waveforms])


def restore_run(
    run_dir: str | Path,
    step: int | None,
    restore: Callable[[Recipe, Any], T],
    warn: Callable[[str], None] = print,
    recipe: Recipe | None = None,
) -> tuple[Recipe, Any, T]:
    """``restore(recipe, checkpoint)`` on the newest undamaged checkpoint of a run directory (or the one at
    ``step``): the one way a checkpoint of a run is chosen, for every stage that restores one (evaluation,
    transcription, export, compression). A damaged newer one is skipped with one ``warn`` naming it and the
    one used; the one at ``step`` must be whole. ``restore`` is :func:`load_checkpoint` (the evaluation model)
    or :func:`restore_model` (the training graph). ``recipe``: the run's, when the caller has read it already
    (default: ``RUN_DIR/recipe.yaml``). Returns the recipe, the checkpoint's
    :class:`asr.checkpoint.CheckpointInfo` and what ``restore`` returned.

    Raises ``ValueError`` subclasses with one-line messages: :class:`asr.checkpoint.NoValidCheckpointError`
    (no recipe, no checkpoint at ``step``, no usable checkpoint), :class:`asr.checkpoint.
    CheckpointMismatchError` (a checkpoint of another model), :class:`asr.config.ConfigError`.
    """
    from asr.checkpoint import (
        CheckpointDamagedError,
        NoValidCheckpointError,
        damage,
        list_checkpoints,
        restore_newest,
    )
    from asr.config import load_recipe

    run_dir = Path(run_dir)
    if recipe is None:
        if not (run_dir / "recipe.yaml").is_file():
            raise NoValidCheckpointError(f"{run_dir}: no recipe.yaml (is it a run directory of asr.train?)")
        recipe = load_recipe(run_dir / "recipe.yaml")
    checkpoints = list_checkpoints(run_dir)
    if step is None:
        if not checkpoints:
            raise NoValidCheckpointError(f"{run_dir}: no checkpoints yet")
        checkpoint, result = restore_newest(checkpoints, lambda c: restore(recipe, c), warn)
        return recipe, checkpoint, result
    chosen = [c for c in checkpoints if c.step == step]
    if not chosen:
        steps = ", ".join(str(c.step) for c in checkpoints) or "none"
        raise NoValidCheckpointError(f"{run_dir}: no checkpoint at step {step} (steps: {steps})")
    problem = damage(chosen[0])
    if problem:
        raise NoValidCheckpointError(f"{chosen[0].path}: damaged ({problem})")
    try:
        return recipe, chosen[0], restore(recipe, chosen[0])
    except CheckpointDamagedError as error:
        raise NoValidCheckpointError(str(error)) from None


def open_run(
    run_dir: str | Path, step: int | None = None, warn: Callable[[str], None] = print, xla: bool = False
) -> AcousticModel:
    """The newest undamaged checkpoint of a run directory (or the one at ``step``) as an
    :class:`AcousticModel` (:func:`restore_run`); ``xla``: :func:`compiled_logits_fn` instead."""
    recipe, checkpoint, (logits_fn, info) = restore_run(
        run_dir, step, lambda recipe, c: load_checkpoint(Path(run_dir), c.path, recipe, xla), warn
    )
    return AcousticModel(logits_fn, recipe, str(checkpoint.path), info)


# --------------------------------------------------------------------------- from an export


TFLITE_BACKENDS = {"tflite": "model.tflite", "tflite-int8": "model-int8.tflite"}
ONNX_FILE = "model.onnx"
EXPORT_BACKENDS = ("savedmodel", *TFLITE_BACKENDS, "onnx")
EXPORT_FILE = "export.json"
EXPORT_FORMAT_VERSION = 2
"""``export.json``'s format: 1 had no checksums; 2 records every file's size and CRC32C (``checksums``)."""


class ExportNotFoundError(ValueError):
    """An export directory that is missing, incomplete or lacks the requested backend."""


class ExportDamagedError(ValueError):
    """An export whose ``export.json`` is malformed or whose files differ from what it recorded (cut,
    overwritten, flipped bits); the message is ``PATH: reason``."""


def export_checksums(export_dir: Path) -> dict[str, dict[str, int]]:
    """``{path relative to export_dir: {"bytes", "crc32c"}}`` of every file of an export (``export.json``
    aside), recorded in ``export.json`` and checked by :func:`open_export`."""
    from asr.files import file_crc32c

    files = sorted(p for p in export_dir.rglob("*") if p.is_file() and p.name != EXPORT_FILE)
    return {p.relative_to(export_dir).as_posix(): {"bytes": p.stat().st_size, "crc32c": file_crc32c(p)}
            for p in files}  # fmt: skip


_REQUIRED_KEYS = {"format_version": int, "alphabet": list, "sample_rate": int, "normalization": dict}
_OPTIONAL_KEYS = {"epoch": int, "step": int, "elapsed": (int, float), "files": dict, "checksums": dict}


def read_export_metadata(export_dir: str | Path) -> dict[str, Any]:
    """``export.json`` of an export directory, checked: an object with the keys and types ``asr.export``
    writes, a format this version reads, this alphabet, and (format 2) a checksum per file.
    Raises :class:`ExportDamagedError` with ``PATH: reason``."""
    from asr.text import SYMBOLS

    path = Path(export_dir) / EXPORT_FILE
    try:
        metadata = load_json(path)
    except JsonError as error:
        raise ExportDamagedError(str(error)) from None
    if not isinstance(metadata, dict):
        raise ExportDamagedError(f"{path}: expected a JSON object, got {json_kind(metadata)}")
    for key, kind in (*_REQUIRED_KEYS.items(), *_OPTIONAL_KEYS.items()):
        if key not in metadata:
            if key in _REQUIRED_KEYS:
                raise ExportDamagedError(f"{path}: {key!r} is missing")
            continue
        value = metadata[key]
        if isinstance(value, bool) or not isinstance(value, kind):
            expected = {int: "a whole number", list: "a list", dict: "an object"}.get(kind, "a number")
            raise ExportDamagedError(f"{path}: {key!r} must be {expected}, got {json_kind(value)}")
    version = metadata["format_version"]
    if not 1 <= version <= EXPORT_FORMAT_VERSION:
        raise ExportDamagedError(f"{path}: format_version {version}: this version of asr reads 1 to "
                                 f"{EXPORT_FORMAT_VERSION} (export again with this version)")  # fmt: skip
    if metadata["alphabet"] != list(SYMBOLS):
        raise ExportDamagedError(f"{path}: 'alphabet' is not this version's {len(SYMBOLS)} symbols")
    if version >= 2:
        checksums = metadata.get("checksums")
        if not isinstance(checksums, dict) or not all(_is_checksum(c) for c in checksums.values()):
            raise ExportDamagedError(f"{path}: 'checksums' must map each file to its bytes and crc32c")
    return metadata


def json_kind(value: Any) -> str:
    """The JSON name of a value's type, for messages."""
    names = {dict: "an object", list: "a list", str: "a string", bool: "true/false", type(None): "null"}
    return names.get(type(value), "a number")


def _is_checksum(entry: Any) -> bool:
    return isinstance(entry, dict) and all(
        isinstance(entry.get(key), int) and not isinstance(entry.get(key), bool)
        for key in ("bytes", "crc32c")
    )


def check_export_files(export_dir: Path, metadata: dict[str, Any], names: Sequence[str], warn) -> None:
    """Check ``names`` (paths relative to the export) against the sizes and CRC32C ``export.json``
    recorded: :class:`ExportDamagedError` naming the first that differs. An export of format 1 (before
    checksums) is not checked: one ``warn`` line says so."""
    from asr.files import file_crc32c

    checksums = metadata.get("checksums")
    if checksums is None:
        warn(f"{export_dir / EXPORT_FILE}: format {metadata['format_version']} records no checksums, so the "
             "files cannot be checked; export again to have them checked")  # fmt: skip
        return
    for name in names:
        path = export_dir / name
        expected = checksums.get(name)
        if expected is None:
            raise ExportDamagedError(f"{path}: not among the files {EXPORT_FILE} records")
        size = path.stat().st_size
        if size != expected["bytes"]:
            raise ExportDamagedError(f"{path}: {size} bytes, {expected['bytes']} were exported; export again")
        if file_crc32c(path) != expected["crc32c"]:
            raise ExportDamagedError(f"{path}: does not match its checksum in {EXPORT_FILE} (corrupted); "
                                     "export again")  # fmt: skip


def _backend_files(export_dir: Path, metadata: dict[str, Any], backend: str) -> list[str]:
    """What ``backend`` loads, relative to the export: its model file(s) and ``recipe.yaml``."""
    if backend == "savedmodel":
        others = {*TFLITE_BACKENDS.values(), ONNX_FILE}
        recorded = metadata.get("checksums") or {}
        present = [p.relative_to(export_dir).as_posix() for p in export_dir.rglob("*") if p.is_file()]
        return sorted({*recorded, *present} - others - {EXPORT_FILE})
    model = ONNX_FILE if backend == "onnx" else TFLITE_BACKENDS[backend]
    return [model, "recipe.yaml"]


def _warning(message: str) -> None:
    import sys

    print(f"warning: {message}", file=sys.stderr, flush=True)


def open_export(
    export_dir: str | Path,
    backend: str = "tflite",
    threads: int | None = None,
    warn: Callable[[str], None] = _warning,
) -> AcousticModel:
    """An ``asr.export`` directory as an :class:`AcousticModel` running ``backend``: ``savedmodel``
    (TensorFlow, batches of utterances), ``tflite`` or ``tflite-int8`` (one utterance per call; the small
    ``ai-edge-litert`` interpreter when installed, else TensorFlow's). ``threads``: interpreter threads
    (TFLite; default: its own choice).

    ``export.json`` is checked (:func:`read_export_metadata`) and the files the backend loads are compared
    with the sizes and CRC32C it recorded (:func:`check_export_files`; ~1 ms per MB). Raises
    :class:`ExportNotFoundError` (no export, no such backend) or :class:`ExportDamagedError` (malformed
    ``export.json``, a file that differs), both ``ValueError`` with a one-line message naming the file;
    ``warn`` gets one line for an export written before checksums (format 1), which opens unchecked.
    """
    from asr.config import load_recipe

    export_dir = Path(export_dir)
    if not (export_dir / EXPORT_FILE).is_file() or not (export_dir / "recipe.yaml").is_file():
        raise ExportNotFoundError(f"{export_dir}: not an export directory of asr.export (no export.json)")
    if backend not in EXPORT_BACKENDS:
        raise ExportNotFoundError(f"backend {backend!r}: choose from {', '.join(EXPORT_BACKENDS)}")
    metadata = read_export_metadata(export_dir)
    if backend == "savedmodel" and not (export_dir / "saved_model.pb").is_file():
        raise ExportNotFoundError(f"{export_dir}: no saved_model.pb (exported with --formats without it)")
    if backend == "onnx" and not (export_dir / ONNX_FILE).is_file():
        raise ExportNotFoundError(f"{export_dir / ONNX_FILE}: missing (export with --formats ... onnx)")
    tflite = export_dir / TFLITE_BACKENDS.get(backend, "")
    if backend in TFLITE_BACKENDS and not tflite.is_file():
        raise ExportNotFoundError(f"{tflite}: missing (exported with --formats without {backend})")
    check_export_files(export_dir, metadata, _backend_files(export_dir, metadata, backend), warn)
    recipe = load_recipe(export_dir / "recipe.yaml")
    info = {key: metadata[key] for key in ("epoch", "step", "elapsed") if key in metadata}
    if backend == "savedmodel":
        return AcousticModel(_saved_model_logits_fn(export_dir), recipe, str(export_dir), info)
    if backend == "onnx":
        path = export_dir / ONNX_FILE
        return AcousticModel(onnx_logits_fn(path, threads), recipe, str(path), info)
    path = export_dir / TFLITE_BACKENDS[backend]
    return AcousticModel(tflite_logits_fn(path, threads), recipe, str(path), info, batch_size=1)


def _saved_model_logits_fn(export_dir: Path) -> LogitsFn:
    """A :data:`LogitsFn` calling the SavedModel's ``features`` signature (normalization inside)."""
    import tensorflow as tf

    signature = tf.saved_model.load(str(export_dir)).signatures["features"]

    def logits_fn(features, frames, labels):
        out = signature(features=tf.constant(features, tf.float32), frames=tf.constant(frames, tf.int32))
        loss = np.full(len(frames), np.nan)
        return out["logits"].numpy(), out["output_frames"].numpy().astype(np.int64), loss

    return logits_fn


def onnx_logits_fn(path: Path, threads: int | None = None) -> LogitsFn:
    """A :data:`LogitsFn` through ONNX Runtime (optional: ``onnxruntime``; see ``docs/inference.md``)."""
    try:
        import onnxruntime
    except ImportError:
        raise ExportNotFoundError(f"{path}: onnxruntime is not installed (see docs/inference.md)") from None
    options = onnxruntime.SessionOptions()
    if threads:
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def logits_fn(features, frames, labels):
        inputs = {"features": np.asarray(features, np.float32), "frames": np.asarray(frames, np.int32)}
        logits, out = session.run(["logits", "output_frames"], inputs)
        return logits, out.astype(np.int64), np.full(len(frames), np.nan)

    return logits_fn


def tflite_interpreter(path: str | Path, threads: int | None = None):
    """A TFLite interpreter for ``path``: ``ai_edge_litert`` (starts in ~0.1 s) or TensorFlow's."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:  # pragma: no cover - installed with the package
        from tensorflow.lite.python.interpreter import Interpreter
    return Interpreter(model_path=str(path), num_threads=threads)


def _tflite_input(details: list[dict], name: str, path: str | Path) -> int:
    """The index of input ``name`` (as the converter may decorate it: ``serving_default_features:0``)."""
    exact = [d["index"] for d in details if d["name"] == name]
    loose = [d["index"] for d in details if name in d["name"].split(":")[0].split("_")]
    found = exact or loose
    if len(found) != 1:
        names = ", ".join(d["name"] for d in details)
        raise ExportDamagedError(f"{path}: no single TFLite input named {name!r} (inputs: {names})")
    return found[0]


def tflite_logits_fn(path: str | Path, threads: int | None = None) -> LogitsFn:
    """A :data:`LogitsFn` through an exported TFLite model (raw features ``[1, T, 93]`` and frames ``[1]`` in,
    normalization inside): one interpreter call per utterance, each cut to its own frames. The inputs are
    found by name (``features``, ``frames``), whatever order the converter gave them."""
    interpreter = tflite_interpreter(path, threads)
    inputs = interpreter.get_input_details()
    features_input, frames_input = (_tflite_input(inputs, name, path) for name in ("features", "frames"))
    outputs = {len(d["shape_signature"]): d["index"] for d in interpreter.get_output_details()}
    shape: list[tuple[int, ...]] = [()]

    def one(features: np.ndarray) -> np.ndarray:
        if features.shape != shape[0]:
            interpreter.resize_tensor_input(features_input, features.shape)
            interpreter.allocate_tensors()
            shape[0] = features.shape
        interpreter.set_tensor(features_input, features)
        interpreter.set_tensor(frames_input, np.array([features.shape[1]], np.int32))
        interpreter.invoke()
        return interpreter.get_tensor(outputs[3])[0].copy()

    def logits_fn(features, frames, labels):
        rows = [one(np.ascontiguousarray(features[row : row + 1, : int(n)], np.float32))
                for row, n in enumerate(frames)]  # fmt: skip
        steps = max(len(r) for r in rows)
        logits = np.zeros((len(rows), steps, rows[0].shape[1]), np.float32)
        for row, values in enumerate(rows):
            logits[row, : len(values)] = values
        return logits, np.array([len(r) for r in rows], np.int64), np.full(len(rows), np.nan)

    return logits_fn
