"""The training input pipeline: shards written by ``asr.extract`` -> ``tf.data`` batches (paper 4.4.1).

``readers`` shard files are read in parallel, utterances shuffled, optionally VTLP-warped and given
additive noise (:mod:`asr.augment`, on the stored log-Mel scale), normalized (:mod:`asr.normalization`:
with the training manifest's per-dimension mean and standard deviation, or per utterance), optionally
tempo-perturbed and SpecAugment-masked, padded either to a fixed ``max_frames`` (the paper's 1670) or,
with ``padding: bucket``, to the longest utterance of a batch of similar lengths, batched to the global
batch and prefetched ``buffer`` batches ahead.

Utterances whose transcript cannot fit the model's output (CTC needs one output frame per label) or, with
fixed padding, that are longer than ``max_frames`` are dropped before batching and counted per reason, so
no step ever sees an infinite CTC loss. The counts come from the per-utterance lengths ``asr.extract``
records in its shard sidecars, without reading features.

Each epoch's order is a pure function of ``(train.seed, epoch)``, so a resumed run skips exactly the
batches it had already trained on and sees the rest in the same order.
"""

from __future__ import annotations

import os
import re
import sys
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from asr.config import DataConfig, ModelConfig
from asr.features import FEATURE_DIM
from asr.files import read_json, write_json
from asr.model import output_frames
from asr.shards import (
    MANIFEST,
    TF_COMPRESSION_TYPE,
    ShardDamage,
    ShardDirectoryError,
    compression_of,
    listed_utterances,
    missing_shards,
    read_manifest,
)

SIDECARS = "sidecars"

DROP_LABELS_TOO_LONG = "transcript longer than the model output (CTC cannot align it)"
DROP_TOO_MANY_FRAMES = "longer than data.max_frames"


class DataError(Exception):
    """Shards the pipeline cannot use; the message names the directory, file or key."""


Lengths = tuple[tuple[str, int, int], ...]
"""``(utt_id, frames, labels)`` per utterance of a shard file, in record order."""


@dataclass(frozen=True)
class ShardSet:
    """Shard directory and manifest, the files to read and how many records of each (after a check)."""

    path: Path
    files: tuple[str, ...]
    manifest: dict
    mean: np.ndarray
    std: np.ndarray
    file_lengths: tuple[Lengths, ...]
    """Per file of ``files``: the lengths its sidecar (or its records) list."""
    file_bytes: tuple[int | None, ...]
    """Per file: its size as written by ``asr.extract`` (None when no sidecar records it)."""
    readable: tuple[int, ...] | None = None
    """Per file: whole records the pipeline reads, once :func:`check_shards` has looked (None: all)."""
    damage: tuple[ShardDamage, ...] = ()

    @property
    def lengths(self) -> Lengths:
        """``(utt_id, frames, labels)`` of every utterance the pipeline reads."""
        counts = self.readable or [len(lengths) for lengths in self.file_lengths]
        return tuple(u for lengths, n in zip(self.file_lengths, counts, strict=True) for u in lengths[:n])

    @property
    def utterances(self) -> int:
        return len(self.lengths)

    @property
    def compression_type(self) -> str:
        """``tf.data.TFRecordDataset``'s ``compression_type`` for these shards (``asr.extract
        --compression`` shows in the file suffix; one directory, one compression)."""
        return TF_COMPRESSION_TYPE[compression_of(Path(self.files[0]))]


def _without_autograph(function):
    """``function`` for a ``tf.data`` transformation, traced as written: the pipeline's functions branch
    only on Python values (recipe settings), never on tensors, so AutoGraph's source rewriting has nothing
    to do and only costs start-up (about a second of CPU per process, for every run)."""
    import tensorflow as tf

    return tf.autograph.experimental.do_not_convert(function)


def open_shards(path: str | Path, key: str = "data.train", allow_missing: bool = False) -> ShardSet:
    """Read and check a shard directory's manifest; raise :class:`DataError` naming ``key`` and the path.

    ``allow_missing``: shards the manifest lists but that are gone are left out and recorded as damage.
    """
    path = Path(path)
    try:
        manifest, files = read_manifest(path, key, allow_missing)
    except ShardDirectoryError as error:
        raise DataError(str(error)) from None
    mean = np.asarray(manifest.get("feature_mean", []), dtype=np.float32)
    std = np.asarray(manifest.get("feature_std", []), dtype=np.float32)
    if mean.shape != (FEATURE_DIM,) or std.shape != (FEATURE_DIM,):
        raise DataError(
            f"{key}: {path / MANIFEST}: feature_mean/feature_std have {mean.size} values; "
            f"the model reads {FEATURE_DIM} features per frame"
        )
    sidecars = [read_json(path / SIDECARS / (f.name.split(".", 1)[0] + ".json"), {}) for f in files]
    lengths = [_sidecar_lengths(sidecar) for sidecar in sidecars]
    if any(n is None for n in lengths):
        lengths = [_scan_lengths(f) for f in files]
    listed = listed_utterances(manifest)
    missing = tuple(
        ShardDamage(str(f), f"missing (listed in {MANIFEST})", 0, listed.get(f.name))
        for f in missing_shards(path, manifest)
    )
    return ShardSet(
        path,
        tuple(map(str, files)),
        manifest,
        mean,
        np.where(std > 0, std, 1.0),
        tuple(lengths),  # type: ignore[arg-type]
        tuple(s.get("bytes") if isinstance(s, dict) else None for s in sidecars),
        damage=missing,
    )


def _sidecar_lengths(sidecar: object) -> Lengths | None:
    try:
        return tuple((str(u), int(f), int(n)) for u, f, n in sidecar["lengths"])  # type: ignore[index]
    except (TypeError, KeyError, ValueError):
        return None


def _scan_lengths(file: Path) -> Lengths:
    """Lengths read from a shard itself (output of an extractor that kept no sidecar lengths); a damaged
    shard gives those of its records before the damage."""
    from asr.shards import ShardError, read_utterances

    found = []
    try:
        for utterance in read_utterances(file):
            found.append((utterance["utt_id"], int(utterance["num_frames"]), len(utterance["labels"])))
    except ShardError:
        pass
    return tuple(found)


# --------------------------------------------------------------------------- checking shards


CHECK_CACHE_VERSION = 1


def check_shards(
    shards: ShardSet, mode: str = "full", cache: Path | None = None, workers: int = 1, progress: bool = False
) -> ShardSet:
    """The set with each file's readable record count and its damage, as TensorFlow's reader sees it.

    ``mode="size"`` compares each file's size with the one ``asr.extract`` recorded (instant; finds cut
    files). ``mode="full"`` reads every record with the same reader training uses (checking CRCs and the
    compressed stream), so a damaged file is cut to the records before its damage and training never
    meets a read error; results are kept in ``cache`` (a JSON file) by file size and modification time,
    so a resumed run does not read the shards again.
    """
    known = read_json(cache, {}) if cache else {}
    known = known.get("files", {}) if known.get("version") == CHECK_CACHE_VERSION else {}
    results: dict[str, dict] = {}
    todo = []
    for file, expected in zip(shards.files, shards.file_bytes, strict=True):
        stat = os.stat(file)
        entry = {"bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}
        if mode == "size":
            cut = expected is not None and stat.st_size != expected
            reason = f"{stat.st_size} bytes, {expected} were written (cut?)" if cut else None
            results[file] = {**entry, "readable": None, "reason": reason}
        elif {k: known.get(file, {}).get(k) for k in entry} == entry:
            results[file] = known[file]
        else:
            todo.append((file, entry))
    for (file, entry), (count, reason) in zip(todo, _count_records(shards, [f for f, _ in todo], workers,
                                                                    progress), strict=True):  # fmt: skip
        results[file] = {**entry, "readable": count, "reason": reason}
    if cache and todo:
        write_json(cache, {"version": CHECK_CACHE_VERSION, "files": results})
    return _with_damage(shards, results)


def _count_records(
    shards: ShardSet, files: list[str], workers: int, progress: bool
) -> list[tuple[int, str | None]]:
    from concurrent.futures import ThreadPoolExecutor

    from tqdm import tqdm

    if not files:
        return []
    # TF's first dataset ops started from several threads at once segfaulted now and then, even after
    # a tf.constant, so the first file is counted here, before the reader threads exist.
    first = count_readable_records(files[0], shards.compression_type)
    with ThreadPoolExecutor(max(1, workers)) as pool:
        counted = pool.map(lambda f: count_readable_records(f, shards.compression_type), files[1:])
        quiet = not progress or len(files) < 2 or not sys.stderr.isatty()
        bar = tqdm(counted, total=len(files), initial=1, desc="checking shards", unit="shard", leave=False,
                   disable=quiet, file=sys.stderr)  # fmt: skip
        return [first, *bar]


def count_readable_records(file: str, compression_type: str) -> tuple[int, str | None]:
    """Whole records TensorFlow's TFRecord reader yields before an error, and the error's first line."""
    import tensorflow as tf

    dataset = tf.data.TFRecordDataset(file, compression_type=compression_type)
    try:
        return int(dataset.reduce(np.int64(0), _without_autograph(lambda count, _: count + 1))), None
    except tf.errors.OpError:
        pass
    count = 0
    try:
        for _ in dataset:
            count += 1
    except tf.errors.OpError as error:
        return count, f"unreadable after record {count} ({_first_line(error.message)})"
    return count, None


def _first_line(message: str) -> str:
    """TensorFlow's reason without its op decorations (``{{function_node ...}}``, ``[Op:...]``)."""
    line = (message.strip().splitlines() or [""])[0]
    return re.sub(r"\{\{[^}]*\}\}\s*|\s*\[Op:.*$", "", line)[:200]


def _with_damage(shards: ShardSet, results: dict[str, dict]) -> ShardSet:
    readable, damage = [], list(shards.damage)
    for file, lengths in zip(shards.files, shards.file_lengths, strict=True):
        result = results[file]
        count = len(lengths) if result["readable"] is None else min(result["readable"], len(lengths))
        if result["reason"] and result["readable"] is None:
            count = 0  # a cut file found by its size alone: nothing in it is trusted
        readable.append(count)
        if result["reason"] or count < len(lengths):
            reason = result["reason"] or "fewer records than listed"
            damage.append(ShardDamage(file, reason, count, len(lengths)))
    kept = [i for i, n in enumerate(readable) if n > 0]
    return replace(
        shards,
        files=tuple(shards.files[i] for i in kept),
        file_lengths=tuple(shards.file_lengths[i] for i in kept),
        file_bytes=tuple(shards.file_bytes[i] for i in kept),
        readable=tuple(readable[i] for i in kept),
        damage=tuple(damage),
    )


def length_capped(data: DataConfig) -> bool:
    """Whether utterances longer than ``data.max_frames`` are dropped: with fixed padding, with
    dynamic batching (a batch must hold at least one utterance of its bucket's longest length), and with
    static shapes (the last bucket is padded to ``max_frames``)."""
    return data.padding == "fixed" or data.batch_by == "audio_seconds" or data.static_shapes


def bucket_batch_sizes(data: DataConfig, global_batch: int, replicas: int = 1) -> list[int]:
    """Global batch size of each length bucket (``len(bucket_boundaries) + 1`` of them).

    By utterances: ``global_batch`` everywhere. By audio seconds: per replica, as many utterances as fit in
    ``batch_audio_seconds`` at the bucket's longest padded length (``boundary - 1`` frames; the last
    bucket: ``max_frames``), times ``replicas`` so that every replica gets an equal share.
    """
    buckets = len(data.bucket_boundaries) + 1
    if data.batch_by != "audio_seconds":
        return [global_batch] * buckets
    budget = round(data.batch_audio_seconds * 100)  # frames of 10 ms
    longest = [b - 1 for b in data.bucket_boundaries] + [data.max_frames]
    return [max(1, budget // max(1, n)) * replicas for n in longest]


def within_max_frames(frames, data: DataConfig):
    """Whether an utterance of ``frames`` input frames is short enough to train on: at most
    ``data.max_frames`` (exactly ``max_frames`` is kept) where lengths are capped (:func:`length_capped`),
    any length elsewhere. On Python ints and on int32 tensors (the pipeline's filter and tempo)."""
    return frames <= data.max_frames if length_capped(data) else True


def labels_fit(frames, label_length, model: ModelConfig):
    """Whether a transcript of ``label_length`` labels (at least one) fits the model's output for ``frames``
    input frames: CTC needs one output frame per label. On Python ints and on int32 tensors."""
    return (output_frames(frames, model) >= label_length) & (label_length > 0)


def drop_reason(frames: int, label_length: int, data: DataConfig, model: ModelConfig) -> str | None:
    """Why an utterance of ``frames`` input frames and ``label_length`` labels is not trainable, or None:
    the rules :func:`training_dataset` filters by (:func:`within_max_frames`, :func:`labels_fit`)."""
    if not within_max_frames(frames, data):
        return DROP_TOO_MANY_FRAMES
    if not labels_fit(frames, label_length, model):
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


def plan_epoch(
    shards: ShardSet, data: DataConfig, model: ModelConfig, global_batch: int, replicas: int = 1
) -> EpochPlan:
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
        sizes = bucket_batch_sizes(data, global_batch, replicas)
        counts = np.bincount(buckets, minlength=len(sizes)) if kept_frames else []
        steps = sum(int(n) // size for n, size in zip(counts, sizes, strict=False))
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
    ``[2]``), unless the result could not hold the transcript or, with a length cap, would exceed
    ``data.max_frames``: then the utterance is left as it is, so perturbation never drops one."""
    import tensorflow as tf

    low, high = data.tempo_range
    factor = low + (high - low) * tf.random.stateless_uniform([], seed=seed)
    stretched, count = stretch_time(features, frames, factor)
    fits = labels_fit(count, label_length, model) & within_max_frames(count, data)
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
    replicas: int = 1,
):
    """Batches ``(features [B, T, 93], frames [B], labels [B, L], label_lengths [B])`` for one epoch.

    ``tag_epoch`` appends ``epoch int32 [B]`` to each batch, so that a stream of several epochs
    (:func:`training_stream`) shows where each one ends.

    ``B`` is the global batch (``tf.distribute`` splits it over replicas), per length bucket
    :func:`bucket_batch_sizes` (``replicas``: for dynamic batching). ``training=False`` keeps file and
    utterance order and applies no augmentation, only the normalization (validation loss).

    Per utterance, in this order: VTLP and additive noise (on the stored log-Mel scale they need),
    normalization (``data.normalization``), tempo, SpecAugment; each augmentation draws from its own
    stateless seed ``(epoch seed + k, utterance index)``, so an epoch is the same whatever reads it.
    """
    import tensorflow as tf

    from asr import augment
    from asr.normalization import normalize_graph

    statistics = (shards.mean, shards.std)
    epoch_seed = seed * 100_003 + epoch
    readable = shards.readable or [-1] * len(shards.files)  # -1: every record (take(-1) takes all)
    files = tf.data.Dataset.from_tensor_slices((list(shards.files), tf.constant(readable, tf.int64)))
    if training:
        files = files.shuffle(len(shards.files), seed=epoch_seed, reshuffle_each_iteration=False)
    records = files.interleave(
        _without_autograph(
            lambda f, n: tf.data.TFRecordDataset(f, compression_type=shards.compression_type).take(n)
        ),
        cycle_length=min(data.readers, len(shards.files)),
        block_length=1,
        num_parallel_calls=min(data.readers, len(shards.files)),
        deterministic=True,
    )
    if training:
        records = records.shuffle(data.shuffle_buffer, seed=epoch_seed, reshuffle_each_iteration=False)
    utterances = records.map(
        _without_autograph(parse_example), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
    )

    def trainable(features, frames, labels, label_length):  # drop_reason's rules
        return labels_fit(frames, label_length, model) & within_max_frames(frames, data)

    utterances = utterances.filter(_without_autograph(trainable))

    def prepare(index, utterance):
        features, frames, labels, label_length = utterance

        def seed(offset):  # one stateless stream per augmentation: (epoch seed + offset, utterance)
            return tf.stack([(epoch_seed + offset) % (2**31 - 1), index])

        if training and data.vtlp_range != (1.0, 1.0):
            features = augment.perturb_vtlp(features, data.vtlp_range, seed(2))
        if training and data.noise_snr_db:
            features = augment.perturb_noise(
                features, data.noise_snr_db, data.noise_color, seed(3), data.noise_probability
            )
        features = normalize_graph(features[None], frames[None], *statistics, data.normalization)[0]
        if training and data.tempo_range != (1.0, 1.0):
            features, frames = perturb_tempo(features, frames, label_length, data, model, seed(1))
        if training and data.spec_augment and epoch >= data.spec_augment_from_epoch:
            features = spec_augment(features, frames, data, seed(0))
        if tag_epoch:
            return features, frames, labels, label_length, tf.constant(epoch, tf.int32)
        return features, frames, labels, label_length

    utterances = utterances.enumerate().map(
        _without_autograph(lambda i, u: prepare(tf.cast(i, tf.int32), u)),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )
    batches = _batch(utterances, data, model, global_batch, replicas, tag_epoch)
    if skip_batches:
        batches = batches.skip(skip_batches)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    options.deterministic = True
    return batches.prefetch(data.buffer).with_options(options)


def _batch(utterances, data: DataConfig, model: ModelConfig, batch: int, replicas: int, tag_epoch: bool):
    """Padded batches of one epoch's utterances: per length bucket or to ``max_frames``; with
    ``data.static_shapes`` each bucket's batches share one shape (:func:`pad_labels_to_output`)."""
    tag_shape = ([],) if tag_epoch else ()
    if data.padding == "fixed":
        labels_shape = [output_frames(data.max_frames, model)] if data.static_shapes else [None]
        return utterances.padded_batch(
            batch,
            padded_shapes=([data.max_frames, FEATURE_DIM], [], labels_shape, [], *tag_shape),
            drop_remainder=True,
        )
    boundaries = list(data.bucket_boundaries)
    sizes = bucket_batch_sizes(data, batch, replicas)
    if data.static_shapes and boundaries[-1] <= data.max_frames:
        boundaries.append(data.max_frames + 1)  # the open last bucket padded to max_frames (never longer)
        sizes.append(sizes[-1])
    batches = utterances.bucket_by_sequence_length(
        element_length_func=_without_autograph(lambda features, frames, *rest: frames),
        bucket_boundaries=boundaries,
        bucket_batch_sizes=sizes,
        padded_shapes=([None, FEATURE_DIM], [], [None], [], *tag_shape),
        pad_to_bucket_boundary=data.static_shapes,
        drop_remainder=True,
    )
    if data.static_shapes:
        batches = batches.map(_without_autograph(lambda *elements: pad_labels_to_output(elements, model)))
    return batches


def pad_labels_to_output(batch, model: ModelConfig):
    """``batch`` with its labels ``[B, L]`` padded or cut to ``[B, output_frames(T)]`` (``T``: the batch's
    padded frames): the most labels any utterance of that length can have (so only padding is cut), and
    labels' shape follows features'."""
    import tensorflow as tf

    features, frames, labels, *rest = batch
    width = output_frames(tf.shape(features)[1], model)
    labels = tf.pad(labels, [[0, 0], [0, tf.maximum(0, width - tf.shape(labels)[1])]])
    return (features, frames, labels[:, :width], *rest)  # bucketing padded them to the bound: all zeros there


def training_stream(
    shards: ShardSet,
    data: DataConfig,
    model: ModelConfig,
    global_batch: int,
    first_epoch: int,
    epochs: int,
    seed: int,
    skip_batches: int = 0,
    replicas: int = 1,
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
            replicas=replicas,
        )
        stream = batches if stream is None else stream.concatenate(batches)
    return stream
