"""asr.features against an independent librosa + scipy computation of the feature definition."""

from __future__ import annotations

import librosa
import numpy as np
import pytest
import scipy.fft
import scipy.signal
import soundfile
import soxr

from asr import features
from asr.extract import _load_audio


def reference_features(waveform: np.ndarray) -> np.ndarray:
    """features.md computed in float64 with scipy's STFT (no centering or padding; its ``spectrum`` scaling
    undone), librosa's Mel filters and scipy's DCT. (librosa.stft would compile numba kernels, ~15 s in a
    new environment, for the same magnitudes.)"""
    window = scipy.signal.get_window("hann", 512)
    _, _, spectrum = scipy.signal.stft(
        waveform.astype(np.float64), window=window, nperseg=512, noverlap=512 - 160, nfft=512,
        detrend=False, return_onesided=True, boundary=None, padded=False, scaling="spectrum",
    )  # fmt: skip
    spectrum = spectrum * window.sum()
    mel = librosa.filters.mel(sr=16000, n_fft=512, n_mels=80, fmin=0.0, fmax=8000.0).astype(np.float64)
    log_mel = np.log(mel @ np.abs(spectrum) ** 2 + 1e-6).T
    mfcc = scipy.fft.dct(log_mel, type=2, norm="ortho", axis=-1)[:, :13]
    return np.concatenate([log_mel, mfcc], axis=1)


REFERENCE_TOLERANCE = 1e-3
"""Largest difference between our float32 features and the float64 reference. Two parts. The float32 FFT
rounds ~log2(512) = 9 times relative to the frame's spectral norm; a quiet band sees that amplified by its
amplitude ratio to the loud ones (~2000 in speech): measured at most 7e-5 on these bundled or seeded inputs,
and the same on every CPU (windowing and pocketfft have no per-CPU kernels). What the CPU changes: the Mel
product (OpenBLAS picks a kernel per CPU) sums 257 non-negative terms, within 257 x 2^-24 = 1.5e-5 of the
energy, plus numpy's float32 log (4 ulps of |x| < 16, 4e-6): 2e-5 in a log-Mel and sqrt(80) times that,
1.7e-4, in an MFCC (orthonormal DCT). Together below 2.5e-4."""


@pytest.fixture(scope="module")
def tiny_waveforms(tiny_corpus):
    paths = sorted(tiny_corpus.glob("*/*/*/*.flac"))[:6]
    return [soundfile.read(path, dtype="float32")[0] for path in paths]


@pytest.mark.parametrize(
    ("samples", "frames"), [(0, 0), (511, 0), (512, 1), (671, 1), (672, 2), (16000, 97), (16000 * 16.7, 1667)]
)
def test_num_frames_counts_full_windows_only(samples, frames):
    assert features.num_frames(int(samples)) == frames


def test_constants_are_the_papers():
    assert features.FEATURE_DIM == 93
    assert pytest.approx(0.01) == features.FRAME_SECONDS  # 160 / 16000: a Python float division, any CPU
    assert features.mel_filterbank().shape == (80, 257)


def test_features_match_reference_on_tiny_audio(tiny_waveforms):
    for waveform in tiny_waveforms:
        ours = features.compute_features(waveform)
        expected = reference_features(waveform)
        assert ours.dtype == np.float32
        assert ours.shape == (features.num_frames(len(waveform)), 93) == expected.shape
        assert np.abs(ours - expected).max() < REFERENCE_TOLERANCE


@pytest.mark.parametrize("scale", [1.0, 1e-3])
def test_features_match_reference_on_noise(scale):
    noise = (np.random.default_rng(7).uniform(-0.9, 0.9, 3 * 16000) * scale).astype(np.float32)
    assert np.abs(features.compute_features(noise) - reference_features(noise)).max() < REFERENCE_TOLERANCE


def test_silence_is_log_of_offset_and_short_input_has_no_frames():
    silent = features.compute_features(np.zeros(16000, dtype=np.float32))
    # power 0 + 1e-6 is exact, but numpy may take ln of a strided column and of a scalar by different loops,
    # each within 4 ulps: 8 ulps of 13.8 = 5.5e-7 relative < 1e-6
    np.testing.assert_allclose(silent[:, :80], np.log(np.float32(1e-6)), rtol=1e-6)
    assert features.compute_features(np.zeros(300, dtype=np.float32)).shape == (0, 93)
    with pytest.raises(ValueError, match="mono"):
        features.compute_features(np.zeros((2, 1000), dtype=np.float32))


@pytest.mark.parametrize("rate", [8000, 22050])
def test_other_rates_are_resampled_to_16k(tmp_path, tiny_waveforms, rate):
    original = tiny_waveforms[0]
    at_rate = soxr.resample(original, 16000, rate).astype(np.float32)
    path = tmp_path / f"clip-{rate}.flac"
    soundfile.write(path, at_rate, rate)
    stored = soundfile.read(path, dtype="float32")[0]

    loaded = _load_audio(str(path), resample=True)
    expected = soxr.resample(stored, rate, 16000, quality="HQ")  # librosa's "soxr_hq", without its numba
    assert isinstance(loaded, np.ndarray)
    assert abs(len(loaded) - len(original)) <= 1
    # loaded and expected: the same soxr call on the same samples in this process, so identical waveforms
    difference = features.compute_features(loaded) - reference_features(expected)
    assert np.abs(difference).max() < REFERENCE_TOLERANCE
    assert _load_audio(str(path), resample=False) == "wrong sample rate"


def test_window_is_scipys_periodic_hann():
    import scipy.signal

    expected = scipy.signal.get_window("hann", 512, fftbins=True)
    # ours is the float64 window rounded to float32: at most half an ulp of values <= 1, 2^-25 = 3e-8
    np.testing.assert_allclose(features._window(), expected, atol=1e-7)


def test_dct_matrix_is_scipys_orthonormal_dct():
    log_mel = np.random.default_rng(1).normal(size=(7, 80)).astype(np.float32)
    expected = scipy.fft.dct(log_mel.astype(np.float64), type=2, norm="ortho", axis=-1)[:, :13]
    np.testing.assert_allclose(log_mel @ features.dct_matrix(), expected, atol=1e-5)  # 80 float32 terms


def test_graph_features_of_a_padded_batch_are_the_numpy_features(tiny_waveforms):
    """The exported model's front end (TensorFlow graph) against asr.extract's (numpy): each is within
    REFERENCE_TOLERANCE of the float64 reference, so they agree within twice that."""
    import tensorflow as tf

    waveforms = [*tiny_waveforms[:3], np.zeros(300, np.float32)]
    longest = max(len(w) for w in waveforms)
    batch = np.stack([np.pad(w, (0, longest - len(w))) for w in waveforms])
    values, frames = features.graph_features(tf.constant(batch), tf.constant([len(w) for w in waveforms]))
    for row, waveform in enumerate(waveforms):
        expected = features.compute_features(waveform)
        assert int(frames[row]) == len(expected) == features.num_frames(len(waveform))
        difference = np.abs(values.numpy()[row, : len(expected)] - expected)
        assert difference.max(initial=0) < 2 * REFERENCE_TOLERANCE
