"""asr.normalization: the numpy and TensorFlow rules agree, per-utterance statistics ignore padding."""

from __future__ import annotations

import numpy as np
import pytest

from asr.features import FEATURE_DIM, compute_features
from asr.normalization import UTTERANCE_STD_FLOOR, normalize, normalize_graph


def padded_batch(seed: int = 0):
    """Features of two noisy chirps of 1.0 s and 0.6 s, padded with garbage past the shorter one's end."""
    rng = np.random.default_rng(seed)
    rows = []
    for seconds in (1.0, 0.6):
        t = np.arange(int(seconds * 16000)) / 16000
        wave = 0.3 * np.sin(2 * np.pi * (200 + 1500 * t) * t) + 0.01 * rng.normal(size=t.size)
        rows.append(compute_features(wave.astype(np.float32)))
    frames = np.array([len(r) for r in rows])
    batch = np.full((2, frames.max(), FEATURE_DIM), 1e4, np.float32)  # padding that would ruin statistics
    for i, r in enumerate(rows):
        batch[i, : len(r)] = r
    return batch, frames, rows


def test_utterance_mode_gives_zero_mean_unit_std_per_utterance_over_real_frames():
    batch, frames, rows = padded_batch()
    normalized = normalize(batch, frames, None, None, "utterance")
    assert normalized.dtype == np.float32 and normalized.shape == batch.shape
    for i, n in enumerate(frames):
        real = normalized[i, :n]
        np.testing.assert_allclose(real.mean(axis=0), 0.0, atol=1e-5)
        np.testing.assert_allclose(real.std(axis=0), 1.0, rtol=1e-4)
        assert not normalized[i, n:].any()
        alone = normalize(rows[i][None], np.array([n]), None, None, "utterance")[0]
        np.testing.assert_allclose(real, alone, rtol=1e-5, atol=1e-5)  # padding changed nothing


def test_utterance_mode_floors_the_spread_of_a_constant_feature():
    features = np.zeros((1, 30, FEATURE_DIM), np.float32)
    features[0, :, 0] = np.log(1e-6)  # digital silence in band 0
    features[0, :, 1] = np.linspace(0, 1e-3, 30)  # a tiny spread: divided by the floor, not by itself
    normalized = normalize(features, np.array([30]), None, None, "utterance")
    assert np.abs(normalized[0, :, 0]).max() < 1e-3  # float32 rounding of the mean, divided by the floor
    spread = 1e-3 * np.std(np.linspace(0, 1, 30))
    assert normalized[0, :, 1].std() == pytest.approx(spread / UTTERANCE_STD_FLOOR, rel=1e-3)


def test_global_mode_uses_the_statistics_and_zeroes_padding():
    batch, frames, _ = padded_batch()
    mean = batch[0].mean(axis=0)
    std = batch[0].std(axis=0)
    std[3] = 0.0  # a constant feature in the training set: divided by 1
    normalized = normalize(batch, frames, mean, std)
    np.testing.assert_array_equal(normalized[0, :, 3], batch[0, :, 3] - mean[3])
    short = frames[1]
    np.testing.assert_array_equal(normalized[1, :short, :3], (batch[1, :short, :3] - mean[:3]) / std[:3])
    assert not normalized[1, frames[1] :].any()
    np.testing.assert_array_equal(normalize(batch, frames, None, None), batch)  # no statistics: as given


@pytest.mark.parametrize("mode", ["global", "utterance"])
def test_the_graph_rule_equals_the_numpy_rule(mode):
    import tensorflow as tf

    batch, frames, _ = padded_batch(seed=1)
    mean, std = batch[0].mean(axis=0), batch[0].std(axis=0)
    expected = normalize(batch, frames, mean, std, mode)
    graph = tf.function(lambda x, n: normalize_graph(x, n, mean, std, mode))
    got = graph(tf.constant(batch), tf.constant(frames, tf.int32)).numpy()
    eager = normalize_graph(tf.constant(batch), tf.constant(frames, tf.int32), mean, std, mode).numpy()
    # global: a few float32 ulps (a graph may divide by a constant as a product with its reciprocal, and
    # kernels differ between CPUs); utterance: sums over frames in another order
    tolerance = 1e-6 if mode == "global" else 1e-5
    for result in (got, eager):
        assert result.dtype == np.float32 and not result[1, frames[1] :].any()  # padding: exactly 0
        np.testing.assert_allclose(result, expected, rtol=tolerance, atol=tolerance)


def test_an_unknown_mode_is_refused():
    batch, frames, _ = padded_batch()
    with pytest.raises(ValueError, match="expected one of global, utterance"):
        normalize(batch, frames, None, None, "speaker")
