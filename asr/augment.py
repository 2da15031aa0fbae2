"""Speaker- and channel-robustness augmentations of stored features, in a TensorFlow graph (``tf.data``).

Both work on the un-normalized log-Mel part of the 93 features ``asr.extract`` stores (natural-log Mel
power, :mod:`asr.features`) and recompute the 13 MFCCs from the changed log-Mel with the extraction's DCT
(:func:`asr.features.graph_with_mfcc`), so the two parts stay consistent. :mod:`asr.data` applies them to
training utterances before normalization, with stateless seeds (reproducible epochs, exact resume).

- **VTLP** (vocal-tract-length perturbation, Jaitly & Hinton 2013): the Mel frequency axis is warped by a
  factor ``alpha`` with the paper's piecewise-linear warp (:func:`vtlp_warp`), realized by interpolating
  between neighbouring Mel bands (:func:`warp_log_mel`): each band reads the input at its warped centre
  frequency, so ``alpha > 1`` moves the spectral envelope down, as a longer vocal tract does.
- **Additive noise** at a signal-to-noise ratio (:func:`add_noise`): the expected Mel power spectrum of
  white or pink Gaussian noise, scaled to the SNR, with per-frame, per-band fluctuation, added to the
  utterance's Mel power. The SNR is the waveform's (power per sample of the utterance over the noise's, as
  adding noise to the audio would mean it), estimated from the Mel powers by :func:`power_weights`.
"""

from __future__ import annotations

import functools

import numpy as np

from asr.features import (
    LOG_OFFSET,
    N_MELS,
    SAMPLE_RATE,
    fft_frequencies,
    graph_with_mfcc,
    mel_center_frequencies,
    mel_filterbank,
)

VTLP_BOUNDARY_HZ = 4800.0
"""Jaitly & Hinton's ``F_hi``: below it (scaled by ``min(alpha, 1) / alpha``) the warp is ``f * alpha``; above
it a second line joins that to the Nyquist frequency, which maps to itself, so no band leaves the range."""
NOISE_COLORS = ("white", "pink")


# --------------------------------------------------------------------------- VTLP


def vtlp_warp(frequencies, alpha):
    """Warped frequencies (Hz, float64) of ``frequencies`` (Hz) for warp factor ``alpha`` (Jaitly & Hinton
    2013, eq. 1; Kaldi's VTLN warp without its lower knee)::

        f' = f * alpha                                          if f <= F_hi * min(alpha, 1) / alpha
        f' = S/2 - (S/2 - F_hi * min(alpha, 1)) / (S/2 - F_hi * min(alpha, 1) / alpha) * (S/2 - f)   else

    with ``F_hi = 4800 Hz`` and ``S/2 = 8000 Hz``: continuous, increasing, 0 and ``S/2`` fixed; ``alpha = 1``
    is the identity (exactly, in float64)."""
    import tensorflow as tf

    f = tf.cast(tf.convert_to_tensor(frequencies, dtype_hint=tf.float64), tf.float64)
    alpha = tf.cast(tf.convert_to_tensor(alpha, dtype_hint=tf.float64), tf.float64)  # (0.8 not via float32)
    nyquist = SAMPLE_RATE / 2
    knee_in = VTLP_BOUNDARY_HZ * tf.minimum(alpha, 1.0) / alpha
    knee_out = VTLP_BOUNDARY_HZ * tf.minimum(alpha, 1.0)
    upper = nyquist - (nyquist - knee_out) / (nyquist - knee_in) * (nyquist - f)
    return tf.where(f <= knee_in, f * alpha, upper)


def vtlp_positions(alpha):
    """Where each output Mel band reads the input: ``(lower int32 [80], upper int32 [80], weight float32
    [80])``, band ``i`` = ``(1 - weight) * band[lower] + weight * band[upper]``.

    Band ``i`` (centre ``c_i``, :func:`asr.features.mel_center_frequencies`) takes the input's value at
    ``vtlp_warp(c_i, alpha)``, interpolated linearly in Hz between the two input bands whose centres
    surround it; beyond the first or last centre, that band's value. ``alpha = 1``: ``weight`` 0 (1 for the
    last band, read from ``upper``), so the bands are returned exactly."""
    import tensorflow as tf

    centres = tf.constant(mel_center_frequencies(), tf.float64)
    warped = vtlp_warp(centres, alpha)
    upper = tf.clip_by_value(tf.searchsorted(centres, warped, side="right"), 1, N_MELS - 1)
    lower = upper - 1
    low, high = tf.gather(centres, lower), tf.gather(centres, upper)
    weight = tf.clip_by_value((warped - low) / (high - low), 0.0, 1.0)
    return tf.cast(lower, tf.int32), tf.cast(upper, tf.int32), tf.cast(weight, tf.float32)


def warp_log_mel(log_mel, alpha):
    """``log_mel [..., 80]`` with its Mel axis warped by ``alpha`` (:func:`vtlp_positions`), interpolated in
    the log domain (the stored features hold log power; the interpolation is between neighbouring bands,
    whose powers differ little). ``alpha > 1`` reads each band from a higher frequency, shifting the
    spectral envelope (formants) down, as a longer vocal tract does."""
    import tensorflow as tf

    lower, upper, weight = vtlp_positions(alpha)
    return tf.gather(log_mel, lower, axis=-1) * (1.0 - weight) + tf.gather(log_mel, upper, axis=-1) * weight


def vtlp(features, alpha):
    """93 features ``[..., 93]`` (un-normalized) with the log-Mel warped by ``alpha`` and the MFCCs recomputed
    from it."""
    return graph_with_mfcc(warp_log_mel(features[..., :N_MELS], alpha))


def perturb_vtlp(features, vtlp_range: tuple[float, float], seed):
    """:func:`vtlp` by a factor drawn uniformly from ``vtlp_range``, stateless ``seed`` (int32 ``[2]``)."""
    import tensorflow as tf

    low, high = vtlp_range
    return vtlp(features, low + (high - low) * tf.random.stateless_uniform([], seed=seed, dtype=tf.float64))


# --------------------------------------------------------------------------- additive noise


@functools.cache
def noise_mel_spectrum(color: str) -> tuple[np.ndarray, np.ndarray]:
    """``(shape float32 [80], dof float32 [80])`` of Gaussian noise of ``color`` seen through the Mel filters.

    ``shape``: the noise's expected Mel power per band, relative (mean 1 over the bands). The expected
    periodogram of stationary Gaussian noise through a window ``w`` is ``sum(w^2) * S(f_k)`` per FFT bin ``k``
    (``S``: its power density; window leakage ignored, exact for white noise), so a band's expected power is
    ``sum(w^2) * sum_k M[b, k] S(f_k)``; ``sum(w^2)`` is common to all bands and cancels in the SNR. ``S`` is
    1 for white noise and ``1 / f`` for pink (the 0 Hz bin takes the first bin's value).

    ``dof``: the shape parameter of the Gamma distribution that matches a band's power fluctuation: each
    bin's periodogram is exponential (chi-square with 2 degrees of freedom), so a weighted sum of
    independent bins has ``(sum m_k)^2 / sum m_k^2`` (``m_k = M[b, k] S(f_k)``) as Gamma shape.
    Simplification: Hann-windowed neighbouring bins are correlated, so real fluctuations are somewhat
    larger for wide bands, and overlapping frames are correlated in time; here each frame and band is drawn
    independently.
    """
    if color not in NOISE_COLORS:
        raise ValueError(f"noise color {color!r}: expected one of {', '.join(NOISE_COLORS)}")
    density = np.ones_like(fft_frequencies())
    if color == "pink":
        frequencies = fft_frequencies()
        frequencies[0] = frequencies[1]
        density = 1.0 / frequencies
    weighted = mel_filterbank().astype(np.float64) * density[None, :]
    power = weighted.sum(axis=1)
    dof = np.square(power) / np.maximum(np.square(weighted).sum(axis=1), np.finfo(np.float64).tiny)
    return (power / power.mean()).astype(np.float32), np.maximum(dof, 1.0).astype(np.float32)


@functools.cache
def power_weights() -> np.ndarray:
    """``float32 [80]``: weights ``a`` such that ``sum_b a_b * MelPower_b`` estimates the mean power spectrum
    over the FFT bins, which is proportional to the waveform's power per sample (Parseval), so that two such
    sums give a waveform SNR.

    Each band's power spectrum density is taken as flat across the band (``MelPower_b / sum_k M[b, k]``, exact
    for white noise) and the bins are shared between overlapping bands in proportion to their filter
    weights (band ``b`` owns ``c_b = sum_k M[b, k] / sum_b' M[b', k]`` bins): the mean density is
    ``sum_b c_b * density_b / sum_b c_b``. Bins no filter covers are left out of the mean.
    """
    matrix = mel_filterbank().astype(np.float64)
    coverage = matrix.sum(axis=0)
    shares = np.divide(matrix, coverage[None, :], out=np.zeros_like(matrix), where=coverage[None, :] > 0)
    owned = shares.sum(axis=1)
    return (owned / matrix.sum(axis=1) / owned.sum()).astype(np.float32)


def add_noise(features, snr_db, color: str, seed):
    """93 features ``[T, 93]`` (un-normalized) with Gaussian noise of ``color`` added at ``snr_db`` (dB).

    The noise's Mel power is :func:`noise_mel_spectrum`'s ``shape`` scaled so that the utterance's power over
    the noise's is ``10^(snr_db / 10)``, both as :func:`power_weights` estimates them from the mean Mel power
    over the frames (``exp(log_mel) - 1e-6``): the SNR of the same noise added to the waveform; times a
    Gamma fluctuation of mean 1 per frame and band (stateless ``seed``, int32 ``[2]``). It is added to the
    Mel power and the log taken again as extraction does:
    ``ln(P_tf + N_tf + 1e-6) = log_mel + log1p(N_tf / exp(log_mel))`` (exact for noise 0, so a very high
    SNR changes nothing); the MFCCs are recomputed. A silent utterance (``P = 0``) gets no noise."""
    import tensorflow as tf

    shape, dof = noise_mel_spectrum(color)
    weights = power_weights()
    noise_power_per_unit = float(np.dot(weights, shape))  # the noise's power estimate per unit of ``shape``
    log_mel = features[..., :N_MELS]
    mean_power = tf.reduce_mean(tf.maximum(tf.exp(log_mel) - LOG_OFFSET, 0.0), axis=-2, keepdims=True)
    signal = tf.reduce_sum(mean_power * weights, axis=-1, keepdims=True)
    noise_mean = signal / tf.pow(10.0, tf.cast(snr_db, tf.float32) / 10.0) / noise_power_per_unit
    fluctuation = tf.random.stateless_gamma(tf.shape(log_mel), seed=seed, alpha=dof) / dof
    noise = noise_mean * shape * fluctuation
    return graph_with_mfcc(log_mel + tf.math.log1p(noise * tf.exp(-log_mel)))


def perturb_noise(features, snr_range: tuple[float, ...], color: str, seed, probability: float = 1.0):
    """:func:`add_noise` at an SNR drawn uniformly (in dB) from ``snr_range`` ``[low, high]``, to this
    utterance with ``probability`` (else the features unchanged); ``seed`` (int32 ``[2]``) is split into one
    seed for the choice, one for the SNR and one for the fluctuation."""
    import tensorflow as tf

    pick_seed, snr_seed, noise_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 3))
    low, high = snr_range

    def noisy():
        snr_db = low + (high - low) * tf.random.stateless_uniform([], seed=snr_seed)
        return add_noise(features, snr_db, color, noise_seed)

    if probability >= 1.0:
        return noisy()
    chosen = tf.random.stateless_uniform([], seed=pick_seed) < probability
    return tf.cond(chosen, noisy, lambda: tf.identity(features))
