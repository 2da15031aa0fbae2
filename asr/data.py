"""The training input pipeline: shards written by ``asr.extract`` -> ``tf.data`` batches (paper 4.4.1).

``readers`` shard files are read in parallel, utterances shuffled, normalized with the training
manifest's per-dimension mean and standard deviation, optionally tempo-perturbed and SpecAugment-masked,
padded either to a fixed ``max_frames`` (the paper's 1670) or, with ``padding: bucket``, to the longest
utterance of a batch of similar lengths, batched to the global batch and prefetched ``buffer`` batches
ahead.

Utterances whose transcript cannot fit the model's output (CTC needs one output frame per label) or, with
fixed padding, that are longer than ``max_frames`` are dropped before batching and counted per reason, so
no step ever sees an infinite CTC loss. The counts come from the per-utterance lengths ``asr.extract``
records in its shard sidecars, without reading features.

Each epoch's order is a pure function of ``(train.seed, epoch)``, so a resumed run skips exactly the
batches it had already trained on and sees the rest in the same order.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from asr.config import DataConfig, ModelConfig
from asr.features import FEATURE_DIM
from asr.model import output_frames
from asr.shards import MANIFEST, TF_COMPRESSION_TYPE, ShardDirectoryError, compression_of, read_manifest

SIDECARS = "sidecars"

DROP_LABELS_TOO_LONG = "transcript longer than the model output (CTC cannot align it)"
DROP_TOO_MANY_FRAMES = "longer than data.max_frames"


class DataError(Exception):
    """Shards the pipeline cannot use; the message names the directory, file or key."""


@dataclass(frozen=True)
class ShardSet:
    """Shard directory and manifest; ``lengths``: ``(utt_id, frames, labels)`` per utterance."""

    path: Path
    files: tuple[str, ...]
    manifest: dict
    mean: np.ndarray
    std: np.ndarray
    lengths: tuple[tuple[str, int, int], ...]

    @property
    def utterances(self) -> int:
        return len(self.lengths)

    @property
    def compression_type(self) -> str:
        """``tf.data.TFRecordDataset``'s ``compression_type`` for these shards (``asr.extract
        --compression`` shows in the file suffix; one directory, one compression)."""
        return TF_COMPRESSION_TYPE[compression_of(Path(self.files[0]))]


def open_shards(path: str | Path, key: str = "data.train") -> ShardSet:
    """Read and check a shard directory's manifest; raise :class:`DataError` naming ``key`` and the path."""
    path = Path(path)
    try:
        manifest, files = read_manifest(path, key)
    except ShardDirectoryError as error:
        raise DataError(str(error)) from None
    mean = np.asarray(manifest.get("feature_mean", []), dtype=np.float32)
    std = np.asarray(manifest.get("feature_std", []), dtype=np.float32)
    if mean.shape != (FEATURE_DIM,) or std.shape != (FEATURE_DIM,):
        raise DataError(
            f"{key}: {path / MANIFEST}: feature_mean/feature_std have {mean.size} values; "
            f"the model reads {FEATURE_DIM} features per frame"
        )
    return ShardSet(
        path, tuple(map(str, files)), manifest, mean, np.where(std > 0, std, 1.0), _lengths(path, manifest)
    )


def _lengths(path: Path, manifest: dict) -> tuple[tuple[str, int, int], ...]:
    found: list[tuple[str, int, int]] = []
    for shard in manifest.get("shards", []):
        sidecar = path / SIDECARS / (shard["file"].split(".", 1)[0] + ".json")
        try:
            lengths = json.loads(sidecar.read_text())["lengths"]
        except (OSError, ValueError, KeyError):
            return _scan_lengths(path, manifest)
        found.extend((str(u), int(f), int(n)) for u, f, n in lengths)
    return tuple(found)


def _scan_lengths(path: Path, manifest: dict) -> tuple[tuple[str, int, int], ...]:
    """Lengths read from the shards themselves (outputs of an extractor that kept no sidecar lengths)."""
    from asr.shards import read_utterances

    found = []
    for shard in manifest.get("shards", []):
        for utterance in read_utterances(path / shard["file"]):
            found.append((utterance["utt_id"], int(utterance["num_frames"]), len(utterance["labels"])))
    return tuple(found)


def drop_reason(frames: int, label_length: int, data: DataConfig, model: ModelConfig) -> str | None:
    """Why an utterance of ``frames`` input frames and ``label_length`` labels is not trainable, or None."""
    if data.padding == "fixed" and frames > data.max_frames:
        return DROP_TOO_MANY_FRAMES
    if label_length < 1 or output_frames(frames, model) < label_length:
        return DROP_LABELS_TOO_LONG
    return None


@dataclass(frozen=True)
class EpochPlan:
    """What one epoch over a shard set feeds: utterances kept, dropped per reason, and steps."""

    kept: int
    dropped: dict[str, int]
    steps: int
    """Global batches per epoch (partial batches are not trained: every replica needs a full share).
    With tempo perturbation and length buckets an epoch's utterances change buckets, so its batch count
    may differ from this by a few."""
    audio_seconds: float
    """Audio in the kept utterances (10 ms per frame)."""


def plan_epoch(shards: ShardSet, data: DataConfig, model: ModelConfig, global_batch: int) -> EpochPlan:
    """Count what :func:`training_dataset` keeps and how many full global batches it yields."""
    dropped: Counter[str] = Counter()
    kept_frames = []
    for _, frames, labels in shards.lengths:
        reason = drop_reason(frames, labels, data, model)
        if reason:
            dropped[reason] += 1
        else:
            kept_frames.append(frames)
    if data.padding == "bucket":
        buckets = np.searchsorted(np.asarray(data.bucket_boundaries), np.asarray(kept_frames), side="right")
        steps = sum(int(n) // global_batch for n in np.bincount(buckets)) if kept_frames else 0
    else:
        steps = len(kept_frames) // global_batch
    return EpochPlan(len(kept_frames), dict(dropped), steps, float(np.sum(kept_frames)) * 0.01)


def parse_example(serialized):
    """One serialized Example -> ``(features float32 [T, 93], frames int32, labels int32 [L], L int32)``."""
    import tensorflow as tf

    parsed = tf.io.parse_single_example(
        serialized,
        {
            "features": tf.io.FixedLenSequenceFeature([], tf.float32, allow_missing=True),
            "num_frames": tf.io.FixedLenFeature([], tf.int64),
            "labels": tf.io.FixedLenSequenceFeature([], tf.int64, allow_missing=True),
        },
    )
    features = tf.reshape(parsed["features"], [-1, FEATURE_DIM])
    labels = tf.cast(parsed["labels"], tf.int32)
    return features, tf.cast(parsed["num_frames"], tf.int32), labels, tf.size(labels, out_type=tf.int32)


def stretch_time(features, frames, factor):
    """Resample ``features [frames, 93]`` in time by ``factor`` (> 1: faster, fewer frames).

    Output frame ``i`` interpolates linearly between the input frames around ``i * factor``; returns
    ``(features [floor(frames / factor), 93], that frame count)``. A tempo change of the log-Mel/MFCC
    sequence: durations scale, spectra (and so pitch) stay.
    """
    import tensorflow as tf

    stretched = tf.maximum(tf.cast(tf.floor(tf.cast(frames, tf.float32) / factor), tf.int32), 1)
    positions = tf.cast(tf.range(stretched), tf.float32) * factor
    lower = tf.minimum(tf.cast(tf.floor(positions), tf.int32), frames - 1)
    upper = tf.minimum(lower + 1, frames - 1)
    weight = (positions - tf.cast(lower, tf.float32))[:, None]
    features = tf.gather(features, lower) * (1.0 - weight) + tf.gather(features, upper) * weight
    return features, stretched


def perturb_tempo(features, frames, label_length, data: DataConfig, model: ModelConfig, seed):
    """:func:`stretch_time` by a factor drawn from ``data.tempo_range`` with stateless ``seed`` (int32
    ``[2]``), unless the result could not hold the transcript or, with fixed padding, would exceed
    ``data.max_frames``: then the utterance is left as it is, so perturbation never drops one."""
    import tensorflow as tf

    low, high = data.tempo_range
    factor = low + (high - low) * tf.random.stateless_uniform([], seed=seed)
    stretched, count = stretch_time(features, frames, factor)
    fits = output_frames(count, model) >= label_length
    if data.padding == "fixed":
        fits &= count <= data.max_frames
    return tf.cond(fits, lambda: (stretched, count), lambda: (features, frames))


def spec_augment(features, frames, data: DataConfig, seed):
    """Zero ``freq_masks`` bands of up to ``freq_mask_width`` features and ``time_masks`` spans of up to
    ``time_mask_width`` frames (at most a fifth of the utterance each), after normalization (0 = the mean).

    ``seed``: int32 ``[2]`` for stateless random numbers, so an epoch's masks are reproducible.
    """
    import tensorflow as tf

    steps = tf.shape(features)[0]
    draws = tf.random.stateless_uniform([data.freq_masks + data.time_masks, 2], seed=seed)
    keep = tf.ones_like(features)
    feature_index = tf.range(FEATURE_DIM)[None, :]
    frame_index = tf.range(steps)[:, None]
    for i in range(data.freq_masks):
        width = tf.cast(draws[i, 0] * (data.freq_mask_width + 1), tf.int32)
        start = tf.cast(draws[i, 1] * tf.cast(FEATURE_DIM - width, tf.float32), tf.int32)
        band = (feature_index >= start) & (feature_index < start + width)
        keep *= 1.0 - tf.cast(band, features.dtype)
    longest = tf.minimum(data.time_mask_width, frames // 5)
    for i in range(data.freq_masks, data.freq_masks + data.time_masks):
        width = tf.cast(draws[i, 0] * tf.cast(longest + 1, tf.float32), tf.int32)
        start = tf.cast(draws[i, 1] * tf.cast(tf.maximum(frames - width, 0), tf.float32), tf.int32)
        span = (frame_index >= start) & (frame_index < start + width)
        keep *= 1.0 - tf.cast(span, features.dtype)
    return features * keep


def training_dataset(
    shards: ShardSet,
    data: DataConfig,
    model: ModelConfig,
    global_batch: int,
    epoch: int,
    seed: int,
    skip_batches: int = 0,
    training: bool = True,
    tag_epoch: bool = False,
):
    """Batches ``(features [B, T, 93], frames [B], labels [B, L], label_lengths [B])`` for one epoch.

    ``tag_epoch`` appends ``epoch int32 [B]`` to each batch, so that a stream of several epochs
    (:func:`training_stream`) shows where each one ends.

    ``B`` is the global batch (``tf.distribute`` splits it over replicas). ``training=False`` keeps file
    and utterance order and applies no masking (validation loss).
    """
    import tensorflow as tf

    epoch_seed = seed * 100_003 + epoch
    files = tf.data.Dataset.from_tensor_slices(list(shards.files))
    if training:
        files = files.shuffle(len(shards.files), seed=epoch_seed, reshuffle_each_iteration=False)
    records = files.interleave(
        lambda f: tf.data.TFRecordDataset(f, compression_type=shards.compression_type),
        cycle_length=min(data.readers, len(shards.files)),
        block_length=1,
        num_parallel_calls=min(data.readers, len(shards.files)),
        deterministic=True,
    )
    if training:
        records = records.shuffle(data.shuffle_buffer, seed=epoch_seed, reshuffle_each_iteration=False)
    utterances = records.map(parse_example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

    def trainable(features, frames, labels, label_length):
        fits = output_frames(frames, model) >= label_length
        fits &= label_length > 0
        if data.padding == "fixed":
            fits &= frames <= data.max_frames
        return fits

    utterances = utterances.filter(trainable)
    mean = tf.constant(shards.mean)
    std = tf.constant(shards.std)

    def prepare(index, utterance):
        features, frames, labels, label_length = utterance
        features = (features - mean) / std
        if training and data.tempo_range != (1.0, 1.0):
            seed = tf.stack([(epoch_seed + 1) % (2**31 - 1), index])
            features, frames = perturb_tempo(features, frames, label_length, data, model, seed)
        if training and data.spec_augment:
            features = spec_augment(features, frames, data, tf.stack([epoch_seed % (2**31 - 1), index]))
        if tag_epoch:
            return features, frames, labels, label_length, tf.constant(epoch, tf.int32)
        return features, frames, labels, label_length

    utterances = utterances.enumerate().map(
        lambda i, u: prepare(tf.cast(i, tf.int32), u), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
    )
    tag_shape = ([],) if tag_epoch else ()
    if data.padding == "bucket":
        batches = utterances.bucket_by_sequence_length(
            element_length_func=lambda features, frames, *rest: frames,
            bucket_boundaries=list(data.bucket_boundaries),
            bucket_batch_sizes=[global_batch] * (len(data.bucket_boundaries) + 1),
            padded_shapes=([None, FEATURE_DIM], [], [None], [], *tag_shape),
            drop_remainder=True,
        )
    else:
        batches = utterances.padded_batch(
            global_batch,
            padded_shapes=([data.max_frames, FEATURE_DIM], [], [None], [], *tag_shape),
            drop_remainder=True,
        )
    if skip_batches:
        batches = batches.skip(skip_batches)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    options.deterministic = True
    return batches.prefetch(data.buffer).with_options(options)


def training_stream(
    shards: ShardSet,
    data: DataConfig,
    model: ModelConfig,
    global_batch: int,
    first_epoch: int,
    epochs: int,
    seed: int,
    skip_batches: int = 0,
):
    """Epochs ``first_epoch .. epochs - 1`` as one dataset of epoch-tagged batches (see ``tag_epoch``).

    One iterator for the whole run: on this machine tearing down a finished ``tf.data`` iterator at each
    epoch end idled 10-40 s. ``skip_batches`` applies to the first epoch (a resumed run's data position).
    """
    stream = None
    for epoch in range(first_epoch, epochs):
        batches = training_dataset(
            shards,
            data,
            model,
            global_batch,
            epoch,
            seed,
            skip_batches=skip_batches if epoch == first_epoch else 0,
            tag_epoch=True,
        )
        stream = batches if stream is None else stream.concatenate(batches)
    return stream
