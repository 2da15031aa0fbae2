"""The Deep-Speech-2-style acoustic model (paper Figure 4) and its CTC loss.

``features [B, T, 93] -> Conv1D(kernel, filters, stride, valid) -> n x LSTM(units) -> Dense(30) -> logits``,
with batch normalization and dropout between every pair of layers and Glorot-uniform weights; each
utterance's frame count comes in beside its features, so padding never changes its logits. Recipes
may swap the LSTM for a GRU and run each recurrent layer in both directions (``model.rnn``,
``model.bidirectional``); the paper's model is forward LSTMs.
The convolution shortens time: :func:`output_frames` gives the logit frames per input frame count,
which the CTC loss needs (padded frames past it are ignored).

The recurrent layers keep Keras' defaults (tanh/sigmoid, no recurrent dropout, not unrolled, GRU
``reset_after``, right-padded masks) so that on a GPU they run the fused cuDNN kernel; elsewhere they
run :mod:`asr.recurrent`'s loop (``model.rnn_loop``). With mixed precision the last layer still
produces float32 logits.
"""

from __future__ import annotations

import functools

import numpy as np

from asr.config import ModelConfig
from asr.features import FEATURE_DIM
from asr.text import BLANK_ID, NUM_SYMBOLS


def output_frames(frames, config: ModelConfig):
    """Logit frames for ``frames`` input frames (:func:`valid_conv_frames` with the model's convolution)."""
    return valid_conv_frames(frames, config.conv_kernel, config.conv_stride)


def valid_conv_frames(frames, kernel: int, stride: int):
    """``floor((frames - kernel) / stride) + 1``: a ``valid`` convolution's output length, the one copy of
    the formula. Works on Python ints, numpy arrays and tensors; inputs shorter than the kernel give 0 or
    less."""
    return (frames - kernel) // stride + 1


def min_input_frames(label_length: int, config: ModelConfig) -> int:
    """Fewest input frames (10 ms each) whose output can hold ``label_length`` CTC labels.

    Labels from :func:`asr.text.encode` never repeat a symbol back to back (the separator sits between
    equal letters), so CTC needs one output frame per label.
    """
    return max(config.conv_kernel, (label_length - 1) * config.conv_stride + config.conv_kernel)


@functools.cache
def _layers():
    """The model's custom layers; defined on first use so that importing this module needs no Keras."""
    import keras
    import tensorflow as tf

    class ValidFrames(keras.layers.Layer):
        """``bool [B, T_out]``: True where an output frame was computed from real (unpadded) input."""

        def __init__(self, kernel: int, stride: int, **kwargs):
            super().__init__(**kwargs)
            self.kernel, self.stride = kernel, stride

        def call(self, outputs, frames):
            valid = valid_conv_frames(keras.ops.cast(frames, "int32"), self.kernel, self.stride)
            return keras.ops.arange(keras.ops.shape(outputs)[1])[None, :] < valid[:, None]

        def compute_output_shape(self, outputs_shape, frames_shape):
            return outputs_shape[:2]

    class MaskedBatchNormalization(keras.layers.BatchNormalization):
        """Batch normalization whose training statistics cover valid frames only, and with
        ``synchronized=True`` the valid frames of every replica (Keras' masked path ignores
        ``synchronized``): sums, sums of squares and counts are all-reduced, as Keras' own synchronized
        moments are."""

        def _moments(self, inputs, mask):
            if mask is None:
                return super()._moments(inputs, mask)
            weights = tf.cast(mask, inputs.dtype)[..., None]
            axes = self._reduction_axes
            sums = [
                tf.reduce_sum(inputs * weights, axes),
                tf.reduce_sum(tf.square(inputs) * weights, axes),
                tf.reduce_sum(weights, axes),
            ]
            context = tf.distribute.get_replica_context()
            if self.synchronized and context is not None and context.num_replicas_in_sync > 1:
                sums = context.all_reduce(tf.distribute.ReduceOp.SUM, sums)
            total, squares, count = sums
            count = tf.maximum(count, 1.0)
            mean = total / count
            return mean, tf.maximum(squares / count - tf.square(mean), 0.0)

    class DropMask(keras.layers.Layer):
        """Passes its input on without the Keras mask, so that the logits carry none: losses receive the
        output lengths explicitly, and ``model.fit`` would otherwise weight per-utterance losses by it."""

        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.supports_masking = True

        def call(self, inputs):
            return keras.ops.copy(inputs)  # a new tensor: the input's runtime mask stays with the input

        def compute_mask(self, inputs, mask=None):
            return None

    return ValidFrames, MaskedBatchNormalization, DropMask


def build_model(config: ModelConfig, sync_batch_norm: bool = False, name: str = "acoustic_model"):
    """A Keras model ``(features float [B, T, 93], frames int [B]) -> logits float32 [B, T_out, 30]``.

    ``frames`` are each utterance's real input frames: what lies past them (batch padding) changes
    nothing, because batch-norm statistics cover valid frames only and the recurrent layers skip padded
    steps (a backward layer starts at an utterance's last real frame). An utterance's logits therefore do
    not depend on the batch it was padded in, and fixed padding to 1670 frames does not dilute the
    batch-norm statistics. ``sync_batch_norm`` makes those statistics cover the global batch across
    replicas, so that data-parallel training equals one-replica training on the same global batch.
    Built under the caller's ``strategy.scope()`` so variables are mirrored.
    """
    import keras

    valid_frames, masked_batch_norm, drop_mask = _layers()
    init = "glorot_uniform"

    def norm_and_drop(x, mask, index):
        x = masked_batch_norm(synchronized=sync_batch_norm, name=f"bn_{index}")(x, mask=mask)
        if config.dropout > 0:
            x = keras.layers.Dropout(config.dropout, name=f"dropout_{index}")(x)
        return x

    features = keras.Input(shape=(None, FEATURE_DIM), name="features")
    frames = keras.Input(shape=(), dtype="int32", name="frames")
    x = keras.layers.Conv1D(
        config.conv_filters,
        config.conv_kernel,
        strides=config.conv_stride,
        padding="valid",
        activation="relu",
        kernel_initializer=init,
        name="conv",
    )(features)
    mask = valid_frames(config.conv_kernel, config.conv_stride, name="valid_frames")(x, frames)
    x = norm_and_drop(x, mask, 0)
    from asr.recurrent import layers as recurrent_layers

    lstm, gru = recurrent_layers() if config.rnn_loop == "fused" else (keras.layers.LSTM, keras.layers.GRU)
    cell = lstm if config.rnn == "lstm" else gru
    for layer in range(config.rnn_layers):
        layer_name = f"{config.rnn}_{layer + 1}"
        recurrent = cell(config.rnn_units, return_sequences=True, kernel_initializer=init, name=layer_name)
        if config.bidirectional:
            recurrent = keras.layers.Bidirectional(recurrent, name=f"bi{layer_name}")
        x = recurrent(x, mask=mask)
        x = norm_and_drop(x, mask, layer + 1)
    logits = keras.layers.Dense(NUM_SYMBOLS, kernel_initializer=init, dtype="float32", name="dense")(x)
    logits = drop_mask(dtype="float32", name="logits")(logits)
    return keras.Model([features, frames], logits, name=name)


GATES = {"lstm": 4, "gru": 3}
"""Weight matrices per recurrent cell (input, forget, cell, output / update, reset, new)."""


def rnn_width(config: ModelConfig) -> int:
    """Features per frame out of each recurrent layer (both directions concatenated)."""
    return config.rnn_units * (2 if config.bidirectional else 1)


def _rnn_parameters(config: ModelConfig, width: int) -> int:
    """Weights of one recurrent layer fed ``width`` features; Keras' GRU (``reset_after``) has two biases."""
    units, gates = config.rnn_units, GATES[config.rnn]
    biases = 2 * units if config.rnn == "gru" else units
    return gates * (width * units + units * units + biases) * (2 if config.bidirectional else 1)


def parameter_count(config: ModelConfig) -> int:
    """Parameters (trainable and batch-norm statistics) of :func:`build_model`, computed, not built."""
    conv = FEATURE_DIM * config.conv_kernel * config.conv_filters + config.conv_filters
    rnn, width = 0, config.conv_filters
    for _ in range(config.rnn_layers):
        rnn += _rnn_parameters(config, width)
        width = rnn_width(config)
    norms = 4 * config.conv_filters + 4 * width * config.rnn_layers
    dense = width * NUM_SYMBOLS + NUM_SYMBOLS
    return conv + rnn + norms + dense


def flops_per_frame(config: ModelConfig) -> float:
    """Multiply-adds x 2 of one forward pass per *input* frame (matmuls only), for FLOP/s figures.

    The convolution and the layers after it run once per output frame, i.e. every ``stride`` input frames.
    A training step costs about 3x the forward pass (forward + two matmuls per weight backward).
    """
    conv = 2 * FEATURE_DIM * config.conv_kernel * config.conv_filters
    directions = 2 if config.bidirectional else 1
    rnn, width = 0, config.conv_filters
    for _ in range(config.rnn_layers):
        rnn += 2 * GATES[config.rnn] * (width + config.rnn_units) * config.rnn_units * directions
        width = rnn_width(config)
    dense = 2 * width * NUM_SYMBOLS
    return (conv + rnn + dense) / config.conv_stride


def sparse_labels(labels, label_lengths):
    """``tf.SparseTensor`` of the first ``label_lengths[i]`` ids of each row of dense ``labels [B, L]``.

    Not ``tf.sparse.from_dense``: id 0 (space) is a real label, so padding is found by length.
    """
    import tensorflow as tf

    mask = tf.sequence_mask(label_lengths, tf.shape(labels)[1])
    indices = tf.where(mask)
    values = tf.gather_nd(tf.cast(labels, tf.int32), indices)
    return tf.SparseTensor(indices, values, tf.cast(tf.shape(labels, out_type=tf.int64), tf.int64))


def ctc_loss(labels, label_lengths, logits, logit_lengths, xla: bool = False):
    """CTC loss per utterance ``float32 [B]`` (nats) with ``tf.nn.ctc_loss``.

    On sparse labels it is TF's fused CTC kernel: on this machine the dense ``keras.ops.ctc_loss`` made a
    whole training step 2.4x slower on a small model. That kernel has no XLA version, so under ``xla`` the
    loss is TF's dense formulation (plain tensor ops, which XLA compiles).
    """
    import tensorflow as tf

    if xla:
        labels, label_length = tf.cast(labels, tf.int32), tf.cast(label_lengths, tf.int32)
    else:
        labels, label_length = sparse_labels(labels, label_lengths), None
    return tf.nn.ctc_loss(
        labels=labels,
        logits=tf.cast(logits, tf.float32),
        label_length=label_length,
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
    kind = ("bi" if config.bidirectional else "") + config.rnn
    out_width = rnn_width(config)
    for layer in range(config.rnn_layers):
        params = _rnn_parameters(config, width)
        lines.append(f"{f'{kind}_{layer + 1}':<24}{f'{out} x {out_width}':<28}{params:>14,}")
        lines.append(f"{'batchnorm + dropout':<24}{f'{out} x {out_width}':<28}{4 * out_width:>14,}")
        width = out_width
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
