"""The Deep-Speech-2-style acoustic model (paper Figure 4) and its CTC loss.

``features [B, T, 93] -> Conv1D(kernel, filters, stride, valid) -> n x LSTM(units) -> Dense(30) -> logits``,
with batch normalization and dropout between every pair of layers and Glorot-uniform weights.
The convolution shortens time: :func:`output_frames` gives the logit frames per input frame count,
which the CTC loss needs (padded frames past it are ignored).

The LSTM layers keep Keras' defaults (tanh/sigmoid, no recurrent dropout, not unrolled) so that on a GPU
they run the fused cuDNN kernel. With mixed precision the last layer still produces float32 logits.
"""

from __future__ import annotations

import numpy as np

from asr.config import ModelConfig
from asr.features import FEATURE_DIM
from asr.text import BLANK_ID, NUM_SYMBOLS


def output_frames(frames, config: ModelConfig):
    """Logit frames for ``frames`` input frames: ``floor((frames - kernel) / stride) + 1`` (valid conv).

    Works on Python ints, numpy arrays and tensors; inputs shorter than the kernel give 0 or less.
    """
    return (frames - config.conv_kernel) // config.conv_stride + 1


def min_input_frames(label_length: int, config: ModelConfig) -> int:
    """Fewest input frames (10 ms each) whose output can hold ``label_length`` CTC labels.

    Labels from :func:`asr.text.encode` never repeat a symbol back to back (the separator sits between
    equal letters), so CTC needs one output frame per label.
    """
    return max(config.conv_kernel, (label_length - 1) * config.conv_stride + config.conv_kernel)


def build_model(config: ModelConfig, sync_batch_norm: bool = False, name: str = "acoustic_model"):
    """A Keras model ``float [B, T, 93] -> logits float32 [B, T_out, 30]``.

    ``sync_batch_norm`` makes batch-norm statistics cover the global batch across replicas, so that
    data-parallel training equals one-replica training on the same global batch.
    Built under the caller's ``strategy.scope()`` so variables are mirrored.
    """
    import keras

    init = "glorot_uniform"

    def norm_and_drop(x, index):
        x = keras.layers.BatchNormalization(synchronized=sync_batch_norm, name=f"bn_{index}")(x)
        if config.dropout > 0:
            x = keras.layers.Dropout(config.dropout, name=f"dropout_{index}")(x)
        return x

    inputs = keras.Input(shape=(None, FEATURE_DIM), name="features")
    x = keras.layers.Conv1D(
        config.conv_filters,
        config.conv_kernel,
        strides=config.conv_stride,
        padding="valid",
        activation="relu",
        kernel_initializer=init,
        name="conv",
    )(inputs)
    x = norm_and_drop(x, 0)
    for layer in range(config.lstm_layers):
        x = keras.layers.LSTM(
            config.lstm_units,
            return_sequences=True,
            kernel_initializer=init,
            name=f"lstm_{layer + 1}",
        )(x)
        x = norm_and_drop(x, layer + 1)
    logits = keras.layers.Dense(NUM_SYMBOLS, kernel_initializer=init, dtype="float32", name="logits")(x)
    return keras.Model(inputs, logits, name=name)


def parameter_count(config: ModelConfig) -> int:
    """Parameters (trainable and batch-norm statistics) of :func:`build_model`, computed, not built."""
    conv = FEATURE_DIM * config.conv_kernel * config.conv_filters + config.conv_filters
    lstm, width = 0, config.conv_filters
    for _ in range(config.lstm_layers):
        lstm += 4 * (width * config.lstm_units + config.lstm_units * config.lstm_units + config.lstm_units)
        width = config.lstm_units
    norms = 4 * config.conv_filters + 4 * config.lstm_units * config.lstm_layers
    dense = width * NUM_SYMBOLS + NUM_SYMBOLS
    return conv + lstm + norms + dense


def flops_per_frame(config: ModelConfig) -> float:
    """Multiply-adds x 2 of one forward pass per *input* frame (matmuls only), for FLOP/s figures.

    The convolution and the layers after it run once per output frame, i.e. every ``stride`` input frames.
    A training step costs about 3x the forward pass (forward + two matmuls per weight backward).
    """
    conv = 2 * FEATURE_DIM * config.conv_kernel * config.conv_filters
    lstm, width = 0, config.conv_filters
    for _ in range(config.lstm_layers):
        lstm += 2 * 4 * (width + config.lstm_units) * config.lstm_units
        width = config.lstm_units
    dense = 2 * width * NUM_SYMBOLS
    return (conv + lstm + dense) / config.conv_stride


def sparse_labels(labels, label_lengths):
    """``tf.SparseTensor`` of the first ``label_lengths[i]`` ids of each row of dense ``labels [B, L]``.

    Not ``tf.sparse.from_dense``: id 0 (space) is a real label, so padding is found by length.
    """
    import tensorflow as tf

    mask = tf.sequence_mask(label_lengths, tf.shape(labels)[1])
    indices = tf.where(mask)
    values = tf.gather_nd(tf.cast(labels, tf.int32), indices)
    return tf.SparseTensor(indices, values, tf.cast(tf.shape(labels, out_type=tf.int64), tf.int64))


def ctc_loss(labels, label_lengths, logits, logit_lengths):
    """CTC loss per utterance ``float32 [B]`` (nats) with ``tf.nn.ctc_loss`` on sparse labels.

    The sparse path is TF's fused CTC kernel: on this machine the dense ``keras.ops.ctc_loss`` made a whole
    training step 2.4x slower on a small model.
    """
    import tensorflow as tf

    return tf.nn.ctc_loss(
        labels=sparse_labels(labels, label_lengths),
        logits=tf.cast(logits, tf.float32),
        label_length=None,
        logit_length=tf.cast(logit_lengths, tf.int32),
        logits_time_major=False,
        blank_index=BLANK_ID,
    )


def summary(config: ModelConfig, max_frames: int) -> str:
    """Layers, output shapes for ``max_frames`` input frames, and the parameter count."""
    out = int(output_frames(max_frames, config))
    lines = [
        f"{'layer':<24}{'output (per utterance)':<28}{'parameters':>14}",
        f"{'features':<24}{f'{max_frames} x {FEATURE_DIM}':<28}{0:>14,}",
    ]
    conv = FEATURE_DIM * config.conv_kernel * config.conv_filters + config.conv_filters
    lines.append(
        f"{f'conv1d k{config.conv_kernel} s{config.conv_stride}':<24}{f'{out} x {config.conv_filters}':<28}"
        f"{conv:>14,}"
    )
    lines.append(
        f"{'batchnorm + dropout':<24}{f'{out} x {config.conv_filters}':<28}{4 * config.conv_filters:>14,}"
    )
    width = config.conv_filters
    for layer in range(config.lstm_layers):
        params = 4 * (width * config.lstm_units + config.lstm_units**2 + config.lstm_units)
        lines.append(f"{f'lstm_{layer + 1}':<24}{f'{out} x {config.lstm_units}':<28}{params:>14,}")
        lines.append(
            f"{'batchnorm + dropout':<24}{f'{out} x {config.lstm_units}':<28}{4 * config.lstm_units:>14,}"
        )
        width = config.lstm_units
    lines.append(
        f"{'dense (logits)':<24}{f'{out} x {NUM_SYMBOLS}':<28}{width * NUM_SYMBOLS + NUM_SYMBOLS:>14,}"
    )
    total = parameter_count(config)
    lines.append(f"total parameters: {total:,} ({total / 1e6:.1f} M)")
    lines.append(
        f"output frames: floor((T - {config.conv_kernel}) / {config.conv_stride}) + 1 = {out}"
        f" for T = {max_frames}"
        f"; longest transcript that fits: {out} labels; dropout {config.dropout:g}"
    )
    lines.append(f"forward matmul FLOPs per input frame: {flops_per_frame(config):,.0f}")
    return "\n".join(lines)


def as_numpy_weights(model) -> list[np.ndarray]:
    """Every weight of ``model`` (trainable and not) as numpy arrays, in layer order, for comparisons."""
    return [np.asarray(w) for w in model.get_weights()]
