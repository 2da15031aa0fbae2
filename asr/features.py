"""The 93 feature values per 10 ms step, exactly as the design note ``features.md`` defines them.

The definition is restated in ``docs/extract.md``.

80 log-Mel energies followed by 13 MFCCs, from 512-sample periodic-Hann windows every 160
samples of 16 kHz audio, without centering or padding. Pure numpy/scipy (pocketfft) so that
extraction workers start in well under a second: importing TensorFlow alone takes ~5 s.
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
"""Mel filters (Slaney scale and area normalization, 0 Hz to the Nyquist frequency)."""
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

    matrix = librosa.filters.mel(sr=SAMPLE_RATE, n_fft=N_FFT, n_mels=N_MELS, fmin=0.0, fmax=SAMPLE_RATE / 2)
    return np.ascontiguousarray(matrix.astype(np.float32))


@functools.cache
def _window() -> np.ndarray:
    """Periodic Hann window, ``0.5 - 0.5 cos(2 pi n / 512)`` (scipy ``get_window('hann', 512)``)."""
    return (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(WINDOW) / WINDOW)).astype(np.float32)


@functools.cache
def _mel_transposed() -> np.ndarray:
    return np.ascontiguousarray(mel_filterbank().T)


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
    frames = np.lib.stride_tricks.as_strided(
        samples,
        shape=(frame_count, WINDOW),
        strides=(HOP * samples.strides[0], samples.strides[0]),
        writeable=False,
    )
    spectrum = scipy.fft.rfft(frames * _window(), n=N_FFT, axis=-1)
    power = np.square(spectrum.real)
    power += np.square(spectrum.imag)
    output = np.empty((frame_count, FEATURE_DIM), dtype=np.float32)
    log_mel = output[:, :N_MELS]
    np.matmul(power, _mel_transposed(), out=log_mel)
    log_mel += np.float32(LOG_OFFSET)
    np.log(log_mel, out=log_mel)
    output[:, N_MELS:] = scipy.fft.dct(log_mel, type=2, norm="ortho", axis=-1)[:, :N_MFCC]
    return output
