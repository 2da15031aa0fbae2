"""The 93 feature values per 10 ms step, exactly as the design note ``features.md`` defines them.

The definition is restated in ``docs/extract.md``.

80 log-Mel energies followed by 13 MFCCs, from 512-sample periodic-Hann windows every 160
samples of 16 kHz audio, without centering or padding. Pure numpy/scipy (pocketfft) so that
extraction workers start in well under a second: importing TensorFlow alone takes ~5 s. The same
pipeline runs in a TensorFlow graph (:func:`graph_features`, the front end of an exported model).
"""

from __future__ import annotations

import functools

import numpy as np
import scipy.fft

SAMPLE_RATE = 16_000
"""Samples per second of the waveform the features are computed from (Hz)."""
WINDOW = 512
"""Analysis window length in samples (32 ms)."""
HOP = 160
"""Step between windows in samples (10 ms): one feature frame per hop."""
N_FFT = 512
"""FFT size in samples; gives ``N_FFT // 2 + 1`` power-spectrum bins."""
N_BINS = N_FFT // 2 + 1
N_MELS = 80
"""Mel filters (Slaney scale and area normalization, ``MEL_FMIN`` to ``MEL_FMAX``)."""
MEL_FMIN = 0.0
"""Lowest edge of the first Mel filter (Hz)."""
MEL_FMAX = SAMPLE_RATE / 2
"""Highest edge of the last Mel filter (Hz): the Nyquist frequency."""
N_MFCC = 13
"""Leading orthonormal DCT-II coefficients of the log-Mel vector kept as MFCCs."""
FEATURE_DIM = N_MELS + N_MFCC
"""Values per frame: ``[log-Mel (80), MFCC (13)]``."""
MIN_FRAMES = 11
"""Shortest utterance kept, in frames (the model's first convolution needs 11)."""
LOG_OFFSET = 1e-6
"""Added to the Mel energies before the natural logarithm, so silence gives ln(1e-6)."""
FRAME_SECONDS = HOP / SAMPLE_RATE
"""Seconds per feature frame (0.01)."""


def num_frames(num_samples: int) -> int:
    """Feature frames for ``num_samples`` samples at 16 kHz: ``1 + (N - 512) // 160``, 0 if N < 512."""
    if num_samples < WINDOW:
        return 0
    return 1 + (num_samples - WINDOW) // HOP


@functools.cache
def mel_filterbank() -> np.ndarray:
    """The 80 × 257 Slaney Mel matrix (librosa's defaults), float32, computed once per process."""
    import librosa.filters  # ~1 s to import; only the first call pays it

    matrix = librosa.filters.mel(sr=SAMPLE_RATE, n_fft=N_FFT, n_mels=N_MELS, fmin=MEL_FMIN, fmax=MEL_FMAX)
    return np.ascontiguousarray(matrix.astype(np.float32))


@functools.cache
def mel_center_frequencies() -> np.ndarray:
    """``float64 [80]``: the centre (peak) frequency in Hz of each filter of :func:`mel_filterbank`.

    The filters' edges are ``N_MELS + 2`` points equally spaced on the Slaney Mel scale from ``MEL_FMIN`` to
    ``MEL_FMAX`` (librosa's construction); filter ``i`` rises from point ``i`` to its peak at point ``i + 1``.
    """
    import librosa

    return librosa.mel_frequencies(N_MELS + 2, fmin=MEL_FMIN, fmax=MEL_FMAX)[1:-1].astype(np.float64)


def fft_frequencies() -> np.ndarray:
    """``float64 [257]``: the frequency of each power-spectrum bin (Hz), ``k * SAMPLE_RATE / N_FFT``."""
    return np.arange(N_BINS) * (SAMPLE_RATE / N_FFT)


@functools.cache
def _window() -> np.ndarray:
    """Periodic Hann window, ``0.5 - 0.5 cos(2 pi n / 512)`` (scipy ``get_window('hann', 512)``)."""
    return (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(WINDOW) / WINDOW)).astype(np.float32)


@functools.cache
def _mel_transposed() -> np.ndarray:
    return np.ascontiguousarray(mel_filterbank().T)


@functools.cache
def dct_matrix() -> np.ndarray:
    """``float32 [80, 13]``: the first 13 orthonormal DCT-II basis vectors, so ``log_mel @ dct_matrix()``
    equals ``scipy.fft.dct(log_mel, type=2, norm="ortho")[..., :13]`` (a product also runs in a graph)."""
    n = np.arange(N_MELS)[:, None]
    k = np.arange(N_MFCC)[None, :]
    basis = np.cos(np.pi * k * (2 * n + 1) / (2 * N_MELS)) * np.sqrt(2.0 / N_MELS)
    basis[:, 0] /= np.sqrt(2.0)
    return np.ascontiguousarray(basis.astype(np.float32))


class _NumpyOps:
    """The feature pipeline's array operations on one numpy waveform ``[N]``."""

    @staticmethod
    def frames(samples, frame_count: int):
        return np.lib.stride_tricks.as_strided(
            samples,
            shape=(frame_count, WINDOW),
            strides=(HOP * samples.strides[0], samples.strides[0]),
            writeable=False,
        )

    @staticmethod
    def power(windowed):
        spectrum = scipy.fft.rfft(windowed, n=N_FFT, axis=-1)
        power = np.square(spectrum.real)
        power += np.square(spectrum.imag)
        return power

    matmul = staticmethod(np.matmul)

    @staticmethod
    def log(values):
        return np.log(values)

    @staticmethod
    def concat(parts):
        return np.concatenate(parts, axis=-1)


class _TensorFlowOps:
    """The same operations on a TensorFlow waveform batch ``[B, N]`` (inside a graph: ``asr.export``)."""

    @staticmethod
    def frames(samples, frame_count):
        import tensorflow as tf

        return tf.signal.frame(samples, WINDOW, HOP, pad_end=False)[:, :frame_count]

    @staticmethod
    def power(windowed):
        import tensorflow as tf

        spectrum = tf.signal.rfft(windowed, fft_length=[N_FFT])
        return tf.square(tf.math.real(spectrum)) + tf.square(tf.math.imag(spectrum))

    @staticmethod
    def matmul(a, b):
        import tensorflow as tf

        return tf.matmul(a, b)

    @staticmethod
    def log(values):
        import tensorflow as tf

        return tf.math.log(values)

    @staticmethod
    def concat(parts):
        import tensorflow as tf

        return tf.concat(parts, axis=-1)


def _feature_pipeline(samples, frame_count, ops):
    """THE feature definition, written once for both array libraries: frames of 512 samples every 160,
    periodic Hann window, power spectrum, Slaney Mel, ``ln(energy + 1e-6)``, orthonormal DCT-II."""
    power = ops.power(ops.frames(samples, frame_count) * _window())
    log_mel = ops.log(ops.matmul(power, _mel_transposed()) + np.float32(LOG_OFFSET))
    return _with_mfcc(log_mel, ops)


def _with_mfcc(log_mel, ops):
    """``[..., 80]`` log-Mel -> ``[..., 93]``: the log-Mel, then its 13 MFCCs (``log_mel @ dct_matrix()``)."""
    return ops.concat([log_mel, ops.matmul(log_mel, dct_matrix())])


def graph_with_mfcc(log_mel):
    """The 93 features of a TensorFlow log-Mel tensor ``[..., 80]`` (the same product as extraction): for
    augmentations that change the log-Mel part of stored features (``asr.augment``) and must keep the MFCCs
    consistent with it."""
    return _with_mfcc(log_mel, _TensorFlowOps)


def compute_features(waveform: np.ndarray) -> np.ndarray:
    """Features of a mono 16 kHz waveform in [-1, 1): float32 array of shape (T, 93).

    ``T = num_frames(len(waveform))``; a waveform shorter than one window gives shape (0, 93).
    Spectra are computed in float32 (agrees with a float64 computation to ~1e-4).
    """
    samples = np.asarray(waveform, dtype=np.float32)
    if samples.ndim != 1:
        raise ValueError(f"expected a mono waveform (1-D), got shape {samples.shape}")
    frame_count = num_frames(samples.shape[0])
    if frame_count == 0:
        return np.zeros((0, FEATURE_DIM), dtype=np.float32)
    return _feature_pipeline(samples, frame_count, _NumpyOps)


def graph_features(waveforms, lengths):
    """:func:`compute_features` of a padded TensorFlow batch, in a graph (the exported model's front end).

    ``waveforms``: ``float32 [B, N]`` 16 kHz mono samples, each row valid up to ``lengths`` (``int32 [B]``
    samples). Returns ``(features float32 [B, T, 93], frames int32 [B])`` with ``T = num_frames(N)`` and
    ``frames = num_frames(lengths)``; a row's frames past its own count overlap its padding (the model
    ignores them). Same pipeline as :func:`compute_features` (``tests/test_features.py`` compares them).
    """
    import tensorflow as tf

    waveforms = tf.convert_to_tensor(waveforms, tf.float32)
    lengths = tf.cast(lengths, tf.int32)
    frame_count = tf.maximum(0, 1 + (tf.shape(waveforms)[1] - WINDOW) // HOP)
    frames = tf.where(lengths < WINDOW, 0, 1 + (lengths - WINDOW) // HOP)
    padded = tf.pad(waveforms, [[0, 0], [0, tf.maximum(0, WINDOW - tf.shape(waveforms)[1])]])
    return _feature_pipeline(padded, frame_count, _TensorFlowOps), frames
