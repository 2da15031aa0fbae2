"""The tf.data input pipeline: augmentation functions (eagerly and inside Dataset.map), epoch plans,
batches read from real shards of the tiny corpus."""

import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from asr import data
from asr.config import ConfigError, DataConfig, ModelConfig, load_recipe
from asr.model import output_frames

MODEL = ModelConfig(conv_kernel=11, conv_stride=2)


def ramp(frames: int) -> tf.Tensor:
    """Features whose value is the frame index, in every dimension."""
    return tf.tile(tf.range(frames, dtype=tf.float32)[:, None], [1, 93])


def test_stretch_time_by_one_is_identity_and_by_two_takes_every_other_frame():
    same, count = data.stretch_time(ramp(10), tf.constant(10), 1.0)
    assert int(count) == 10
    # exact: positions i x 1.0 have weight 0, and frame x 1 + next x 0 is the frame on any CPU
    np.testing.assert_array_equal(same.numpy(), ramp(10).numpy())
    faster, count = data.stretch_time(ramp(10), tf.constant(10), 2.0)
    assert int(count) == 5
    assert faster.numpy()[:, 0].tolist() == [0, 2, 4, 6, 8]  # exact: integer positions, weight 0


def test_stretch_time_slower_interpolates_between_frames():
    slower, count = data.stretch_time(ramp(4), tf.constant(4), 0.5)
    assert int(count) == 8
    # positions 0, .5, 1, ... 3.5; the last one clamps to the last frame. Exact: halves of small integers
    # and their products with weights 0 or 0.5 are exactly representable, so no rounding happens
    assert slower.numpy()[:, 5].tolist() == [0, 0.5, 1, 1.5, 2, 2.5, 3, 3]


def test_tempo_never_makes_a_transcript_unfit():
    config = DataConfig(tempo_range=(2.0, 2.0))
    frames = 200
    fitting = int(output_frames(frames // 2, MODEL))
    for labels, expected in ((fitting, frames // 2), (fitting + 1, frames)):
        _, count = data.perturb_tempo(ramp(frames), tf.constant(frames), labels, config, MODEL, [1, 2])
        assert int(count) == expected


def test_tempo_draws_are_reproducible_and_within_range_inside_dataset_map():
    config = DataConfig(tempo_range=(0.9, 1.1))

    def draw(index):
        _, count = data.perturb_tempo(ramp(300), tf.constant(300), 10, config, MODEL, tf.stack([7, index]))
        return count

    def draw_all():
        return list(tf.data.Dataset.range(50).map(lambda i: draw(tf.cast(i, tf.int32))).as_numpy_iterator())

    counts, again = draw_all(), draw_all()
    assert counts == again
    assert min(counts) >= int(300 / 1.1) and max(counts) <= int(300 / 0.9)
    assert len(set(counts)) > 10


def test_spec_augment_masks_bands_and_spans_with_zeros():
    config = DataConfig(freq_masks=1, freq_mask_width=20, time_masks=1, time_mask_width=30)
    features = tf.ones([200, 93])
    masked = data.spec_augment(features, tf.constant(200), config, tf.constant([3, 4])).numpy()
    zero_columns = np.flatnonzero((masked == 0).all(axis=0))
    zero_rows = np.flatnonzero((masked == 0).all(axis=1))
    assert zero_columns.size <= 20 and zero_rows.size <= 30
    assert np.all(np.diff(zero_columns) == 1) and np.all(np.diff(zero_rows) == 1)  # contiguous
    untouched = np.delete(np.delete(masked, zero_rows, axis=0), zero_columns, axis=1)
    assert (untouched == 1).all()  # exact: 1 x 1 and 1 x 0 (the keep masks) involve no rounding


def test_bad_tempo_range_is_named(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("data: {tempo_range: [1.2, 0.8]}\n")
    with pytest.raises(ConfigError, match=r"data\.tempo_range"):
        load_recipe(recipe)


def test_epoch_plan_counts_what_the_dataset_yields(tiny_shards):
    shards = data.open_shards(tiny_shards / "train")
    config = DataConfig(padding="bucket", bucket_boundaries=(400, 700), readers=2, buffer=2)
    plan = data.plan_epoch(shards, config, MODEL, 2)
    batches = list(data.training_dataset(shards, config, MODEL, 2, epoch=0, seed=1).as_numpy_iterator())
    assert len(batches) == plan.steps > 0
    for features, frames, _, label_lengths in batches:
        assert features.shape[0] == 2 and features.shape[2] == 93
        assert features.shape[1] == frames.max()
        assert (output_frames(frames, MODEL) >= label_lengths).all()
    too_short = dataclasses.replace(MODEL, conv_stride=40)
    dropped = data.plan_epoch(shards, config, too_short, 2).dropped
    assert dropped.get(data.DROP_LABELS_TOO_LONG, 0) == shards.utterances


def test_an_epoch_is_the_same_batches_whatever_reads_it_and_tempo_changes_lengths(tiny_shards):
    shards = data.open_shards(tiny_shards / "train")
    plain = DataConfig(padding="bucket", bucket_boundaries=(10_000,), readers=2, buffer=2)
    tempo = dataclasses.replace(plain, tempo_range=(0.8, 1.25))

    def frames_of(config, epoch):
        batches = data.training_dataset(shards, config, MODEL, 4, epoch=epoch, seed=5)
        return np.sort(np.concatenate([b[1] for b in batches.as_numpy_iterator()]))

    assert frames_of(tempo, 0).tolist() == frames_of(tempo, 0).tolist()
    assert frames_of(tempo, 0).tolist() != frames_of(plain, 0).tolist()
    assert frames_of(tempo, 0).tolist() != frames_of(tempo, 1).tolist()


def damaged_copy(tiny_shards, tmp_path, shard_size_bytes=None):
    """A copy of the tiny training shards whose (single) shard is cut at two thirds."""
    import shutil

    copy = tmp_path / "train"
    shutil.copytree(tiny_shards / "train", copy)
    (shard,) = sorted(copy.glob("*.tfrecord.gz"))
    raw = shard.read_bytes()
    shard.write_bytes(raw[: 2 * len(raw) // 3])
    return copy, shard


def test_check_finds_a_cut_shard_by_its_size_and_full_mode_keeps_its_readable_records(tiny_shards, tmp_path):
    copy, shard = damaged_copy(tiny_shards, tmp_path)
    opened = data.open_shards(copy)
    by_size = data.check_shards(opened, "size")
    assert by_size.files == () and by_size.damage[0].used == 0
    assert "were written (cut?)" in by_size.damage[0].reason
    checked = data.check_shards(opened, "full", cache=tmp_path / "check.json")
    (damage,) = checked.damage
    assert damage.file == str(shard) and 0 < damage.used < damage.listed == 20
    assert checked.readable == (damage.used,) and checked.utterances == damage.used
    assert damage.describe("data.train").startswith(f"data.train: {shard}: unreadable after record")
    config = DataConfig(padding="bucket", bucket_boundaries=(10_000,), readers=2, buffer=2)
    batches = list(data.training_dataset(checked, config, MODEL, 1, epoch=0, seed=1).as_numpy_iterator())
    assert len(batches) == damage.used  # exact: every readable record, and no read error


def test_check_results_are_cached_by_size_and_time(tiny_shards, tmp_path):
    copy, shard = damaged_copy(tiny_shards, tmp_path)
    cache = tmp_path / "check.json"
    first = data.check_shards(data.open_shards(copy), "full", cache=cache)
    recorded = data.read_json(cache)["files"][str(shard)]
    recorded["readable"] = 1  # what a second look would not find: proves the cache was used
    data.write_json(cache, {"version": data.CHECK_CACHE_VERSION, "files": {str(shard): recorded}})
    assert data.check_shards(data.open_shards(copy), "full", cache=cache).readable == (1,)
    shard.write_bytes(shard.read_bytes())  # a new modification time: read again
    import os

    os.utime(shard, ns=(recorded["mtime_ns"] + 10**9, recorded["mtime_ns"] + 10**9))
    assert data.check_shards(data.open_shards(copy), "full", cache=cache).readable == first.readable


def test_a_listed_shard_that_is_missing_is_damage_when_allowed(tiny_shards, tmp_path):
    copy, shard = damaged_copy(tiny_shards, tmp_path)
    import shutil

    shutil.copy(tiny_shards / "train" / shard.name, copy / "extra.tfrecord.gz")
    manifest = data.read_json(copy / "manifest.json")
    manifest["shards"].append({"file": "gone.tfrecord.gz", "utterances": 5})
    data.write_json(copy / "manifest.json", manifest)
    with pytest.raises(data.DataError, match="lists shards that are missing"):
        data.open_shards(copy)
    opened = data.open_shards(copy, allow_missing=True)
    (missing,) = opened.damage
    assert missing.file.endswith("gone.tfrecord.gz") and missing.lost == 5
    assert missing.reason.startswith("missing")


def write_lengths_shard(directory, frame_counts, transcript="the cat"):
    """A shard directory of asr's own writer: one utterance per frame count, one shard file, no sidecars
    (the epoch plan reads the lengths from the records)."""
    import json

    from asr.shards import utterance_example, write_shard
    from asr.text import SYMBOLS, encode

    directory.mkdir()
    records = [utterance_example(np.full((n, 93), i, np.float32), encode(transcript), transcript, f"utt-{i}",
                                 n / 100) for i, n in enumerate(frame_counts)]  # fmt: skip
    write_shard(directory / "train-00000.tfrecord.gz", records)
    manifest = {"alphabet": list(SYMBOLS), "feature_mean": [0.0] * 93, "feature_std": [1.0] * 93,
                "shards": [{"file": "train-00000.tfrecord.gz", "utterances": len(records)}]}  # fmt: skip
    (directory / "manifest.json").write_text(json.dumps(manifest))
    return directory


def test_an_utterance_exactly_max_frames_long_is_planned_and_trained_alike(tmp_path):
    """The epoch plan (the steps training expects) and the pipeline (the steps it trains) keep the same
    utterances: with fixed padding to max_frames, one exactly max_frames long is kept by both, one frame
    more is dropped by both; without a length cap (buckets) all are kept."""
    shards = data.open_shards(write_lengths_shard(tmp_path / "train", [59, 60, 61]))
    fixed = DataConfig(padding="fixed", max_frames=60, readers=1, shuffle_buffer=1, buffer=1)
    bucket = dataclasses.replace(fixed, padding="bucket", bucket_boundaries=(100,))
    for config, kept in ((fixed, [59, 60]), (bucket, [59, 60, 61])):
        plan = data.plan_epoch(shards, config, MODEL, 1)
        trained = [int(b[1][0]) for b in data.training_dataset(shards, config, MODEL, 1, epoch=0, seed=0)]
        assert sorted(trained) == kept and plan.kept == plan.steps == len(kept)
        assert plan.dropped == ({data.DROP_TOO_MANY_FRAMES: 1} if len(kept) == 2 else {})


DYNAMIC = DataConfig(padding="bucket", bucket_boundaries=(400, 700), batch_by="audio_seconds",
                     batch_audio_seconds=20.0, readers=2, buffer=2)  # fmt: skip


def test_bucket_batch_sizes_fill_the_audio_budget_per_replica():
    assert data.bucket_batch_sizes(DYNAMIC, 16) == [2000 // 399, 2000 // 699, 2000 // 1670]
    assert data.bucket_batch_sizes(DYNAMIC, 16, replicas=2) == [10, 4, 2]
    assert data.bucket_batch_sizes(dataclasses.replace(DYNAMIC, batch_by="utterances"), 16) == [16, 16, 16]


@pytest.mark.parametrize("replicas", [1, 2])
def test_dynamic_batches_never_exceed_the_budget_and_account_for_every_utterance(tiny_shards, replicas):
    shards = data.open_shards(tiny_shards / "train")
    config = dataclasses.replace(DYNAMIC, tempo_range=(0.8, 1.25))
    plan = data.plan_epoch(shards, DYNAMIC, MODEL, 16, replicas)
    batches = list(data.training_dataset(shards, config, MODEL, 16, epoch=0, seed=1, replicas=replicas)
                   .as_numpy_iterator())  # fmt: skip
    sizes = data.bucket_batch_sizes(DYNAMIC, 16, replicas)
    assert len({b[0].shape[0] for b in batches}) > 1, "several batch sizes for the test to mean much"
    for features, frames, _, _ in batches:
        assert features.shape[0] * features.shape[1] <= 2000 * replicas  # padded frames within the budget
        assert features.shape[0] % replicas == 0 and features.shape[0] in sizes
        assert frames.max() <= DYNAMIC.max_frames
    lengths = [n for _, n, labels in shards.lengths if data.drop_reason(n, labels, DYNAMIC, MODEL) is None]
    per_bucket = np.bincount(np.searchsorted([400, 700], lengths, side="right"), minlength=3)
    remainders = sum(int(n) % size for n, size in zip(per_bucket, sizes, strict=True))
    untempo = list(data.training_dataset(shards, DYNAMIC, MODEL, 16, epoch=0, seed=1, replicas=replicas))
    assert sum(int(b[0].shape[0]) for b in untempo) == plan.kept - remainders  # only partial batches left out
    assert len(untempo) == plan.steps


def test_a_resumed_epoch_continues_with_the_same_dynamic_batches(tiny_shards):
    shards = data.open_shards(tiny_shards / "train")
    config = dataclasses.replace(DYNAMIC, tempo_range=(0.8, 1.25))
    whole = [
        b[1].tolist() for b in data.training_dataset(shards, config, MODEL, 16, 0, 3).as_numpy_iterator()
    ]
    resumed = data.training_dataset(shards, config, MODEL, 16, 0, 3, skip_batches=2).as_numpy_iterator()
    assert [b[1].tolist() for b in resumed] == whole[2:]


@pytest.mark.parametrize("config", [DYNAMIC, dataclasses.replace(DYNAMIC, batch_by="utterances")])
def test_static_shapes_give_each_bucket_one_shape_and_the_same_batches(tiny_shards, config):
    """Features padded to the bucket's bound (399, 699 or max_frames), labels to that length's output
    frames; the batches hold the same utterances in the same order as with padding to the longest."""
    shards = data.open_shards(tiny_shards / "train")
    static = dataclasses.replace(config, static_shapes=True)
    batches = list(data.training_dataset(shards, static, MODEL, 8, epoch=0, seed=5).as_numpy_iterator())
    plain = list(data.training_dataset(shards, config, MODEL, 8, epoch=0, seed=5).as_numpy_iterator())
    assert [b[1].tolist() for b in batches] == [b[1].tolist() for b in plain]
    shapes = set()
    for (features, frames, labels, _), (_, _, plain_labels, _) in zip(batches, plain, strict=True):
        assert features.shape[1] in (399, 699, config.max_frames)
        assert frames.max() <= features.shape[1]
        assert labels.shape[1] == output_frames(features.shape[1], MODEL)
        np.testing.assert_array_equal(labels[:, : plain_labels.shape[1]], plain_labels)
        assert not labels[:, plain_labels.shape[1] :].any()
        shapes.add((features.shape, labels.shape))
    assert len(shapes) == len({b[0].shape[1] for b in batches}) <= 3


def test_xla_needs_static_shapes(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("runtime: {xla: true}\n")
    with pytest.raises(ConfigError, match=r"runtime\.xla: true needs data\.static_shapes: true"):
        load_recipe(recipe)
    recipe.write_text("runtime: {xla: true}\ndata: {static_shapes: true}\n")
    assert load_recipe(recipe).runtime.xla


@pytest.mark.parametrize(
    ("values", "message"),
    [("{batch_by: audio_seconds, batch_audio_seconds: 20}", "needs data.padding: bucket"),
     ("{padding: bucket, batch_by: audio_seconds, batch_audio_seconds: 10}", "cannot hold one utterance")],
)  # fmt: skip
def test_dynamic_batching_settings_are_checked(tmp_path, values, message):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"data: {values}\n")
    with pytest.raises(ConfigError, match=message):
        load_recipe(recipe)


ONE_BY_ONE = DataConfig(padding="bucket", bucket_boundaries=(10_000,), readers=2, buffer=2)
"""Batches of one utterance, unpadded: each batch is one utterance's features as the model gets them."""


def expected_by_labels(shards, config, mode):
    """The evaluation path's normalization (:func:`asr.inference.normalize`) of every trainable utterance of
    the shards, read with the shard reader (not ``tf.data``), by its label sequence."""
    from asr.inference import normalize
    from asr.shards import read_utterances

    expected = {}
    for file in shards.files:
        for utterance in read_utterances(file):
            features, labels = utterance["features"], utterance["labels"]
            if data.drop_reason(len(features), len(labels), config, MODEL) is None:
                normalized = normalize(
                    features[None], np.array([len(features)]), shards.mean, shards.std, mode
                )
                expected[tuple(labels.tolist())] = normalized[0]
    return expected


@pytest.mark.parametrize("mode", ["global", "utterance"])
@pytest.mark.parametrize("training", [False, True])
def test_training_and_evaluation_normalize_an_utterance_alike_and_the_default_is_unchanged(
    tiny_shards, mode, training
):
    """With no augmentation (the default), training and validation batches hold each utterance's features
    exactly as evaluation normalizes them: in global mode ``(x - mean) / std`` as before this option (to the
    float32 ulp: TF's graph divides by a constant as a product with its reciprocal)."""
    shards = data.open_shards(tiny_shards / "train")
    config = dataclasses.replace(ONE_BY_ONE, normalization=mode)
    expected = expected_by_labels(shards, config, mode)
    batches = list(
        data.training_dataset(shards, config, MODEL, 1, 0, 7, training=training).as_numpy_iterator()
    )
    assert len(batches) == len(expected) > 10
    for features, frames, labels, label_lengths in batches:
        want = expected[tuple(labels[0, : label_lengths[0]].tolist())]
        assert features.shape == (1, *want.shape) and frames[0] == len(want)
        if mode == "global":
            np.testing.assert_allclose(features[0], want, rtol=3e-7, atol=2e-6)
        else:  # float32 sums over ~1000 frames in another order
            np.testing.assert_allclose(features[0], want, rtol=1e-5, atol=2e-5)
        if mode == "utterance":
            np.testing.assert_allclose(features[0].mean(axis=0), 0.0, atol=1e-4)


def test_augmentations_change_training_batches_reproducibly_and_never_validation(tiny_shards):
    shards = data.open_shards(tiny_shards / "train")
    augmented = dataclasses.replace(
        ONE_BY_ONE, vtlp_range=(0.9, 1.1), noise_snr_db=(5.0, 20.0), noise_color="pink"
    )

    def features_of(config, training, epoch=0):
        batches = data.training_dataset(shards, config, MODEL, 1, epoch, 3, training=training)
        return [b[0] for b in batches.as_numpy_iterator()]

    for a, b in zip(features_of(augmented, False), features_of(ONE_BY_ONE, False), strict=True):
        np.testing.assert_array_equal(a, b)
    plain, first, again = (
        features_of(ONE_BY_ONE, True),
        features_of(augmented, True),
        features_of(augmented, True),
    )
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(first, plain, strict=True):
        assert a.shape == b.shape and np.isfinite(a).all() and not np.array_equal(a, b)
    other_epoch = features_of(augmented, True, epoch=1)
    assert not all(
        a.shape == b.shape and np.array_equal(a, b) for a, b in zip(first, other_epoch, strict=True)
    )


def test_spec_augment_starts_at_its_epoch(tiny_shards):
    shards = data.open_shards(tiny_shards / "train")
    masked_from_2 = dataclasses.replace(ONE_BY_ONE, spec_augment=True, spec_augment_from_epoch=2)

    def features_of(config, epoch):
        batches = data.training_dataset(shards, config, MODEL, 1, epoch, 3)
        return [b[0] for b in batches.as_numpy_iterator()]

    for epoch in (0, 1):
        for a, b in zip(features_of(masked_from_2, epoch), features_of(ONE_BY_ONE, epoch), strict=True):
            np.testing.assert_array_equal(a, b)
    always = dataclasses.replace(masked_from_2, spec_augment_from_epoch=0)
    for epoch in (2, 3):
        late, plain = features_of(masked_from_2, epoch), features_of(ONE_BY_ONE, epoch)
        for a, c in zip(late, features_of(always, epoch), strict=True):
            np.testing.assert_array_equal(a, c)
        masked_frames = [
            ((a == 0).all(axis=-1).sum(), (b == 0).all(axis=-1).sum())
            for a, b in zip(late, plain, strict=True)
        ]
        assert any(late_count > plain_count for late_count, plain_count in masked_frames)


@pytest.mark.parametrize(
    ("values", "message"),
    [("{spec_augment_from_epoch: -1}", r"data\.spec_augment_from_epoch: must be"),
     ("{vtlp_range: [1.1, 0.9]}", r"data\.vtlp_range: expected \[low, high\]"),
     ("{vtlp_range: [0.9]}", r"data\.vtlp_range"),
     ("{noise_snr_db: [10]}", r"data\.noise_snr_db: expected \[\] \(off\) or \[low, high\]"),
     ("{noise_snr_db: [20, 10]}", r"data\.noise_snr_db"),
     ("{noise_snr_db: [0, .nan]}", r"data\.noise_snr_db"),
     ("{noise_color: brown}", r"data\.noise_color: 'brown' is not one of"),
     ("{noise_probability: 1.5}", r"data\.noise_probability: must be in \[0, 1\]"),
     ("{normalization: speaker}", r"data\.normalization: 'speaker' is not one of"),
     ("{freq_mask_width: 94}", r"data\.freq_mask_width: must be in \[0, 93\]")],
)  # fmt: skip
def test_augmentation_settings_are_checked(tmp_path, values, message):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"data: {values}\n")
    with pytest.raises(ConfigError, match=message):
        load_recipe(recipe)
    recipe.write_text("data: {vtlp_range: [0.9, 1.1], noise_snr_db: [0, 20], normalization: utterance}\n")
    loaded = load_recipe(recipe).data
    assert loaded.vtlp_range == (0.9, 1.1) and loaded.noise_snr_db == (0.0, 20.0)
    assert loaded.noise_probability == 0.5  # the default: half the utterances, so clean speech stays
