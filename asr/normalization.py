"""Feature standardization before the model: one numpy and one TensorFlow function, the same rule.

Every place features enter a model goes through here: the training input pipeline (:mod:`asr.data`, TF),
evaluation and transcription (:func:`asr.inference.normalize`, numpy) and exported models
(:mod:`asr.export`, TF inside the SavedModel and TFLite graphs), so a model sees the same inputs in
training and in use. ``mode`` is the recipe's ``data.normalization``:

- ``global``: ``(x - mean) / std`` per feature with the training manifest's statistics (``std`` of 0
  taken as 1);
- ``utterance``: each utterance's own per-feature mean and standard deviation over its real frames
  (padding excluded), the standard deviation floored at :data:`UTTERANCE_STD_FLOOR`.

Padded frames (index ``>= frames`` of their row) are zero after either.

The per-utterance mean is taken in two passes (the mean, then the mean of what is left): a float32 sum of
~1000 frames of values near -90 (the first MFCC) is off by ~1e-5 in an order-dependent way, so numpy and
TensorFlow would disagree by that much; the second pass sums small residuals.
"""

from __future__ import annotations

import numpy as np

MODES = ("global", "utterance")
UTTERANCE_STD_FLOOR = 0.1
"""Smallest per-utterance standard deviation divided by (feature units: natural-log Mel power, or MFCC).
A feature that barely changes over an utterance (digital silence: every frame ``ln(1e-6)``; a
one-frame utterance) would otherwise be blown up from rounding noise to unit variance; 0.1 in log power
is a 10 % power fluctuation, well under speech's (log-Mel std over an utterance is ~2-4)."""


def normalize(
    features: np.ndarray,
    frames: np.ndarray,
    mean: np.ndarray | None,
    std: np.ndarray | None,
    mode: str = "global",
) -> np.ndarray:
    """Standardized ``float32 [B, T, 93]`` features of a padded batch (``frames [B]`` real frames per row).

    ``global`` with ``mean``/``std`` (None: features returned as they are); ``utterance`` ignores them."""
    features = np.asarray(features, dtype=np.float32)
    valid = np.arange(features.shape[1])[None, :] < np.asarray(frames)[:, None]
    if mode == "utterance":
        weights = valid[..., None].astype(np.float32)
        count = np.maximum(weights.sum(axis=1, keepdims=True), 1.0)
        centre = (features * weights).sum(axis=1, keepdims=True) / count
        centre += ((features - centre) * weights).sum(axis=1, keepdims=True) / count  # second pass
        spread = np.sqrt((np.square(features - centre) * weights).sum(axis=1, keepdims=True) / count)
        features = (features - centre) / np.maximum(spread, np.float32(UTTERANCE_STD_FLOOR))
    elif mode == "global":
        if mean is None or std is None:
            return features
        features = (features - mean) / np.where(std > 0, std, 1.0)
    else:
        raise ValueError(f"normalization mode {mode!r}: expected one of {', '.join(MODES)}")
    features[~valid] = 0.0
    return features.astype(np.float32, copy=False)


def normalize_graph(features, frames, mean: np.ndarray | None, std: np.ndarray | None, mode: str = "global"):
    """:func:`normalize` in a TensorFlow graph: ``features float32 [B, T, 93]``, ``frames int32 [B]``.

    ``mean``/``std`` become graph constants (ONNX keeps captured tensors as inputs)."""
    import tensorflow as tf

    valid = tf.sequence_mask(frames, tf.shape(features)[1])[..., None]
    if mode == "utterance":
        weights = tf.cast(valid, features.dtype)
        count = tf.maximum(tf.reduce_sum(weights, axis=1, keepdims=True), 1.0)
        centre = tf.reduce_sum(features * weights, axis=1, keepdims=True) / count
        centre += tf.reduce_sum((features - centre) * weights, axis=1, keepdims=True) / count  # second pass
        spread = tf.sqrt(tf.reduce_sum(tf.square(features - centre) * weights, axis=1, keepdims=True) / count)
        normalized = (features - centre) / tf.maximum(spread, UTTERANCE_STD_FLOOR)
    elif mode == "global":
        if mean is None or std is None:
            return features
        mean_values = np.asarray(mean, np.float32)
        std_values = np.where(np.asarray(std) > 0, std, 1.0).astype(np.float32)
        normalized = (features - mean_values) / std_values
    else:
        raise ValueError(f"normalization mode {mode!r}: expected one of {', '.join(MODES)}")
    return tf.where(valid, normalized, 0.0)
