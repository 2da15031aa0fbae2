"""asr.augment: VTLP and additive noise on feature matrices of synthetic waveforms (asr.features)."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from asr import augment
from asr.features import (
    LOG_OFFSET,
    N_MELS,
    SAMPLE_RATE,
    compute_features,
    dct_matrix,
    mel_center_frequencies,
    mel_filterbank,
)


def voiced_wave(seconds: float = 2.0, pitch: float = 120.0, formant: float = 1500.0, seed: int = 0):
    """A synthetic vowel: harmonics of ``pitch`` shaped by one resonance at ``formant`` Hz, plus a little
    white noise (so no band is digital silence); float32 samples at 16 kHz."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    harmonics = np.arange(pitch, SAMPLE_RATE / 2, pitch)
    gains = 1.0 / (1.0 + ((harmonics - formant) / 150.0) ** 2)
    wave = (gains[:, None] * np.sin(2 * np.pi * harmonics[:, None] * t[None, :])).sum(axis=0)
    return (0.3 * wave / np.abs(wave).max() + 1e-3 * rng.normal(size=t.size)).astype(np.float32)


def voiced(seconds: float = 2.0, pitch: float = 120.0, formant: float = 1500.0, seed: int = 0) -> np.ndarray:
    """Features of :func:`voiced_wave`."""
    return compute_features(voiced_wave(seconds, pitch, formant, seed))


def peak_frequency(log_mel: np.ndarray) -> float:
    """Centre frequency (Hz) of the band with the most power on average over the frames."""
    return float(mel_center_frequencies()[np.argmax(log_mel.mean(axis=0))])


def test_vtlp_warp_fixes_zero_and_nyquist_is_increasing_and_alpha_one_is_identity():
    grid = np.linspace(0.0, SAMPLE_RATE / 2, 2001)
    np.testing.assert_array_equal(augment.vtlp_warp(grid, 1.0).numpy(), grid)
    for alpha in (0.8, 0.9, 1.1, 1.25):
        warped = augment.vtlp_warp(grid, alpha).numpy()
        assert warped[0] == 0.0 and warped[-1] == pytest.approx(SAMPLE_RATE / 2, abs=1e-9)
        assert np.all(np.diff(warped) > 0)
        low = grid < augment.VTLP_BOUNDARY_HZ * min(alpha, 1.0) / alpha
        np.testing.assert_allclose(warped[low], grid[low] * alpha, rtol=1e-12)
        assert np.abs(np.diff(warped)).max() < 2 * max(alpha, 1.0) * (grid[1] - grid[0])  # continuous


def test_vtlp_at_one_returns_the_features():
    features = voiced()
    same = augment.vtlp(tf.constant(features), 1.0).numpy()
    np.testing.assert_array_equal(same[:, :N_MELS], features[:, :N_MELS])
    # the MFCCs are the same float32 product recomputed by TensorFlow's kernel
    np.testing.assert_allclose(same[:, N_MELS:], features[:, N_MELS:], rtol=1e-6, atol=2e-5)


@pytest.mark.parametrize("alpha", [0.9, 1.1])
def test_vtlp_moves_the_formant_by_the_factor_and_keeps_mfccs_consistent(alpha):
    features = voiced(formant=1500.0)
    warped = augment.vtlp(tf.constant(features), alpha).numpy()
    assert warped.shape == features.shape and np.isfinite(warped).all()
    before, after = peak_frequency(features[:, :N_MELS]), peak_frequency(warped[:, :N_MELS])
    spacing = np.diff(mel_center_frequencies()).max()
    assert abs(after - before / alpha) <= spacing  # a band at f now reads the input at alpha * f
    assert abs(after - before) > 0.05 * before
    np.testing.assert_allclose(warped[:, N_MELS:], warped[:, :N_MELS] @ dct_matrix(), rtol=1e-5, atol=1e-4)
    assert warped[:, :N_MELS].min() >= features[:, :N_MELS].min()  # interpolation stays within the values
    assert warped[:, :N_MELS].max() <= features[:, :N_MELS].max()


def test_perturb_vtlp_is_reproducible_per_seed_inside_dataset_map():
    features = tf.constant(voiced(seconds=0.5))

    def run(seeds):
        dataset = tf.data.Dataset.from_tensor_slices(seeds)
        return list(dataset.map(lambda s: augment.perturb_vtlp(features, (0.9, 1.1), s)).as_numpy_iterator())

    seeds = np.array([[1, 2], [1, 2], [1, 3]], np.int32)
    first, second = run(seeds), run(seeds)
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(first[0], first[1])
    assert not np.array_equal(first[0], first[2])


@pytest.mark.parametrize("color", augment.NOISE_COLORS)
def test_noise_spectrum_is_relative_and_its_fluctuation_has_a_gamma_shape(color):
    shape, dof = augment.noise_mel_spectrum(color)
    assert shape.shape == dof.shape == (N_MELS,)
    assert shape.mean() == pytest.approx(1.0, rel=1e-6) and (shape > 0).all()
    assert (dof >= 1).all() and dof[-1] > dof[0]  # high bands span more FFT bins


def test_pink_noise_puts_more_of_its_power_in_low_bands_than_white():
    white, _ = augment.noise_mel_spectrum("white")
    pink, _ = augment.noise_mel_spectrum("pink")
    ratio = pink / white
    assert ratio[0] > 10 * ratio[-1]
    assert np.all(np.diff(ratio[1:]) < 0)  # (bin 0 takes bin 1's density, so bands 0/1 may tie)


def mel_power(features: np.ndarray) -> np.ndarray:
    return np.exp(features[:, :N_MELS].astype(np.float64)) - LOG_OFFSET


def waveform_power(features: np.ndarray) -> float:
    """The power estimate add_noise's SNR uses (proportional to the waveform's power per sample)."""
    return float(mel_power(features).mean(axis=0) @ augment.power_weights())


def test_power_weights_read_white_noise_exactly():
    """A flat power spectrum of density 1 has Mel power sum_k M[b, k] per band: the weights give back 1."""
    flat = mel_filterbank().astype(np.float64).sum(axis=1)
    assert float(flat @ augment.power_weights()) == pytest.approx(1.0, rel=1e-5)
    assert (augment.power_weights() > 0).all()


@pytest.mark.parametrize(("formant", "snr_db"), [(500.0, 10.0), (1500.0, 20.0), (3000.0, 0.0)])
def test_noise_in_the_features_matches_noise_added_to_the_waveform_at_the_same_snr(formant, snr_db):
    """The SNR is the waveform's: white noise added to the audio at ``snr_db`` (power per sample) raises the
    mean log-Mel as much as add_noise does to the clean features: within 0.12 (natural log) on average over
    the bands, 0.5 in any band (bands where harmonics and noise are comparable are the most sensitive).
    Defining the SNR by the mean Mel power instead puts ~0.6 more noise (in log-Mel) into every band."""
    wave = voiced_wave(seconds=3.0, formant=formant)
    rng = np.random.default_rng(1)
    noise = rng.normal(0.0, np.sqrt(np.mean(wave.astype(np.float64) ** 2) / 10 ** (snr_db / 10)), wave.size)
    clean = compute_features(wave)
    in_audio = compute_features((wave + noise).astype(np.float32))
    in_features = augment.add_noise(tf.constant(clean), snr_db, "white", [3, 4]).numpy()
    rise_audio = (in_audio - clean)[:, :N_MELS].mean(axis=0)
    rise_features = (in_features - clean)[:, :N_MELS].mean(axis=0)
    difference = np.abs(rise_features - rise_audio)
    assert difference.mean() < 0.12 and difference.max() < 0.5


@pytest.mark.parametrize("color", augment.NOISE_COLORS)
def test_noise_at_zero_db_doubles_the_power_and_at_a_very_high_snr_changes_nothing(color):
    features = voiced(seconds=3.0)
    noisy = augment.add_noise(tf.constant(features), 0.0, color, [4, 5]).numpy()
    assert noisy.shape == features.shape and np.isfinite(noisy).all()
    assert waveform_power(noisy) / waveform_power(features) == pytest.approx(2.0, rel=0.05)
    assert (noisy[:, :N_MELS] >= features[:, :N_MELS]).all()  # noise power is never negative
    np.testing.assert_allclose(noisy[:, N_MELS:], noisy[:, :N_MELS] @ dct_matrix(), rtol=1e-5, atol=1e-4)
    # the SNR is the utterance's: the log of a band far under the mean power rises by ~noise / its power
    power = mel_power(features)
    shape, _ = augment.noise_mel_spectrum(color)
    bound = 1e-10 * power.mean() * shape.max() * 20 / power.min()  # 20: beyond the Gamma's tail (mean 1)
    change = (augment.add_noise(tf.constant(features), 100.0, color, [4, 5]).numpy() - features)[:, :N_MELS]
    assert 0 < change.max() < bound < 0.05
    same = augment.add_noise(tf.constant(features), 200.0, color, [4, 5]).numpy()
    np.testing.assert_allclose(same[:, :N_MELS], features[:, :N_MELS], atol=1e-6)
    np.testing.assert_allclose(same[:, N_MELS:], features[:, N_MELS:], rtol=1e-6, atol=2e-5)


def test_noise_fills_the_quiet_bands_most():
    """At 10 dB the loud formant bands hardly change in log power while the quiet high bands rise."""
    features = voiced(seconds=2.0, formant=500.0)
    noisy = augment.add_noise(tf.constant(features), 10.0, "white", [1, 1]).numpy()
    rise = (noisy - features)[:, :N_MELS].mean(axis=0)
    loudest = np.argsort(features[:, :N_MELS].mean(axis=0))
    assert rise[loudest[-5:]].max() < 0.5 and rise[loudest[:5]].min() > 2.0


def test_noise_is_deterministic_per_seed_and_silence_stays_silent():
    features = tf.constant(voiced(seconds=0.5))
    a = augment.perturb_noise(features, (0.0, 20.0), "white", tf.constant([7, 8])).numpy()
    b = augment.perturb_noise(features, (0.0, 20.0), "white", tf.constant([7, 8])).numpy()
    c = augment.perturb_noise(features, (0.0, 20.0), "white", tf.constant([7, 9])).numpy()
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    silence = compute_features(np.zeros(8000, np.float32))
    same = augment.add_noise(tf.constant(silence), 0.0, "pink", [1, 2]).numpy()
    np.testing.assert_array_equal(same[:, :N_MELS], silence[:, :N_MELS])


def test_noise_probability_chooses_utterances_per_seed():
    """0: never (the features come back unchanged), 1: always, 0.5: about half of 200 seeds, the same ones
    each time."""
    features = tf.constant(voiced(seconds=0.3))
    seeds = [tf.constant([7, i]) for i in range(200)]

    def noisy(probability):
        changed = [augment.perturb_noise(features, (10.0, 30.0), "white", s, probability) for s in seeds]
        return [not np.array_equal(c, features) for c in changed]

    assert not any(noisy(0.0)) and all(noisy(1.0))
    half = noisy(0.5)
    assert 70 < sum(half) < 130 and half == noisy(0.5)
