"""Keras' LSTM and GRU layers with a CPU training step built from large matrix products.

Keras runs a recurrent layer without cuDNN as a loop over time steps in which every step multiplies its
``[batch, features]`` input by the input kernel and, going backward, adds a full ``[features, 4 units]``
gradient into the kernel's and the recurrent kernel's accumulators. At the paper's sizes (batch 4 per
replica, 800 units, 830 steps) those are matrix products of 4 rows, which run far below the machine's
matmul rate, and the accumulations move 20 MB per step.

Here only what must be sequential stays in the loop: each step multiplies the previous state by the
recurrent kernel (forward) or the gate gradients by its transpose (backward). The input projection of
all steps is one matrix product before the loop, and the kernel, recurrent kernel, bias and input
gradients are one product each after the backward loop (``tf.custom_gradient``). Same weights, same
variables, same arithmetic as Keras' layer (tests compare outputs and gradients), so checkpoints move
freely between this path and cuDNN.

:class:`LSTM` and :class:`GRU` subclass Keras' layers and change only their inner loop, and only where
Keras would not use cuDNN: on a GPU the cuDNN kernel still runs. Masks follow Keras: a masked step
carries the state over, and its output is zero or the carried output per ``zero_output_for_mask``.
"""

from __future__ import annotations

import functools


def _zeros_if_none(gradient, like):
    import tensorflow as tf

    return tf.zeros_like(like) if gradient is None else gradient


def _time_major(x):
    """``[B, T, ...]`` <-> ``[T, B, ...]``."""
    import tensorflow as tf

    return tf.transpose(x, [1, 0, *range(2, x.shape.rank)])


def _per_step(dtype, steps, element_shape=None):
    """A TensorArray of one tensor per time step, readable more than once (forward and backward).
    ``element_shape`` (static where known) lets converters such as TFLite's lower it to plain tensors."""
    import tensorflow as tf

    return tf.TensorArray(dtype, size=steps, clear_after_read=False, element_shape=element_shape)


def _step_masks(inputs, mask, zero_output_for_mask: bool):
    """``[T, B, 2]`` per step and utterance: 1 where the step is real, and 1 where a masked step outputs
    the carried state. Keras outputs zeros at masked steps before an utterance's first real one (a
    backward layer's padding), then the last real output, or zeros throughout with
    ``zero_output_for_mask``."""
    import tensorflow as tf

    if mask is None:
        mask = tf.ones(tf.shape(inputs)[:2], tf.bool)
    real = tf.cast(_time_major(mask), inputs.dtype)
    started = tf.cast(tf.cumsum(real, axis=0) > 0, inputs.dtype)
    carry = tf.zeros_like(real) if zero_output_for_mask else (1 - real) * started
    return tf.stack([real, carry], axis=2)


def _rows(x):
    """``[T, B, F]`` -> ``[T * B, F]``: all steps of all utterances as rows of one matrix."""
    import tensorflow as tf

    return tf.reshape(x, [-1, tf.shape(x)[2]])


def _project(x, kernel, bias):
    """``[T, B, D] @ [D, G] + bias`` as one matrix product: ``[T, B, G]``."""
    import tensorflow as tf

    return tf.reshape(tf.matmul(_rows(x), kernel) + bias, [tf.shape(x)[0], tf.shape(x)[1], -1])


def _weight_gradient(inputs, gate_gradients):
    """``sum_t inputs[t]^T @ gate_gradients[t]``: a weight used at every step; its gradient in one product."""
    import tensorflow as tf

    return tf.matmul(_rows(inputs), _rows(gate_gradients), transpose_a=True)


def _input_gradient(gate_gradients, kernel):
    """``gate_gradients [T, B, G] @ kernel^T`` back to batch-major ``[B, T, D]``."""
    import tensorflow as tf

    steps, batch = tf.shape(gate_gradients)[0], tf.shape(gate_gradients)[1]
    flat = tf.matmul(_rows(gate_gradients), kernel, transpose_b=True)
    return _time_major(tf.reshape(flat, [steps, batch, -1]))


def lstm_sequence(
    inputs, mask, initial_h, initial_c, kernel, recurrent_kernel, bias, zero_output_for_mask: bool = False
):
    """Runs an LSTM (Keras' gate order i, f, c, o; sigmoid gates, tanh) over ``inputs [B, T, D]``.

    ``mask`` is ``[B, T]`` (True where a step is real) or None. Returns ``(outputs [B, T, U], h [B, U],
    c [B, U])``; gradients flow to ``inputs``, the initial states and the three weights.
    """
    import tensorflow as tf

    step_masks = _step_masks(inputs, mask, zero_output_for_mask)

    @tf.custom_gradient
    def run(inputs, initial_h, initial_c, kernel, recurrent_kernel, bias):
        x = _time_major(inputs)
        steps = tf.shape(x)[0]
        projected = _per_step(x.dtype, steps).unstack(_project(x, kernel, bias))
        masks = _per_step(x.dtype, steps).unstack(step_masks)

        def forward(t, h, c, gates_out, h_out, c_out, y_out):
            h_next, c_next, y, gates = _lstm_step(projected.read(t), h, c, recurrent_kernel, masks.read(t))
            return (t + 1, h_next, c_next, gates_out.write(t, gates),
                    h_out.write(t, h), c_out.write(t, c), y_out.write(t, y))  # fmt: skip

        arrays = tuple(_per_step(x.dtype, steps) for _ in range(4))
        _, h, c, gates, h_prev, c_prev, ys = tf.while_loop(
            lambda t, *_: t < steps, forward, (0, initial_h, initial_c, *arrays)
        )
        outputs = _time_major(ys.stack())

        def gradient(d_outputs, d_h, d_c):
            dy = _per_step(x.dtype, steps).unstack(_time_major(_zeros_if_none(d_outputs, outputs)))

            def backward(t, dh, dc, dz_out):
                t = t - 1
                i, f, g, o = tf.split(gates.read(t), 4, axis=1)
                (m, carry), c_before = tf.split(masks.read(t), 2, axis=1), c_prev.read(t)
                tanh_c = tf.tanh(f * c_before + i * g)
                dy_t = dy.read(t)
                dh_new = m * (dh + dy_t)
                dh_carried = (1 - m) * dh + carry * dy_t
                dc_new = m * dc + dh_new * o * (1 - tf.square(tanh_c))
                dz = tf.concat(
                    [dc_new * g * i * (1 - i), dc_new * c_before * f * (1 - f),
                     dc_new * i * (1 - tf.square(g)), dh_new * tanh_c * o * (1 - o)], 1
                )  # fmt: skip
                dh_prev = tf.matmul(dz, recurrent_kernel, transpose_b=True) + dh_carried
                dc_prev = dc_new * f + (1 - m) * dc
                return t, dh_prev, dc_prev, dz_out.write(t, dz)

            _, d_initial_h, d_initial_c, dz = tf.while_loop(
                lambda t, *_: t > 0,
                backward,
                (steps, _zeros_if_none(d_h, h), _zeros_if_none(d_c, c), _per_step(x.dtype, steps)),
            )
            dz = dz.stack()
            return (_input_gradient(dz, kernel), d_initial_h, d_initial_c, _weight_gradient(x, dz),
                    _weight_gradient(h_prev.stack(), dz), tf.reduce_sum(dz, [0, 1]))  # fmt: skip

        return (outputs, h, c), gradient

    return run(inputs, initial_h, initial_c, kernel, recurrent_kernel, bias)


def gru_sequence(inputs, mask, initial_h, kernel, recurrent_kernel, bias, zero_output_for_mask: bool = False):
    """Runs a GRU as Keras' ``reset_after=True`` (gate order z, r, h; ``bias [2, 3U]``: input and
    recurrent biases) over ``inputs [B, T, D]``; ``mask`` as for :func:`lstm_sequence`. Returns
    ``(outputs [B, T, U], h [B, U])``.
    """
    import tensorflow as tf

    step_masks = _step_masks(inputs, mask, zero_output_for_mask)

    @tf.custom_gradient
    def run(inputs, initial_h, kernel, recurrent_kernel, bias):
        x = _time_major(inputs)
        steps = tf.shape(x)[0]
        projected = _per_step(x.dtype, steps).unstack(_project(x, kernel, bias[0]))
        masks = _per_step(x.dtype, steps).unstack(step_masks)

        def forward(t, h, gates_out, h_out, y_out):
            h_next, y, gates = _gru_step(projected.read(t), h, recurrent_kernel, bias[1], masks.read(t))
            return t + 1, h_next, gates_out.write(t, gates), h_out.write(t, h), y_out.write(t, y)

        arrays = tuple(_per_step(x.dtype, steps) for _ in range(3))
        _, h, gates, h_prev, ys = tf.while_loop(lambda t, *_: t < steps, forward, (0, initial_h, *arrays))
        outputs = _time_major(ys.stack())

        def gradient(d_outputs, d_h):
            dy = _per_step(x.dtype, steps).unstack(_time_major(_zeros_if_none(d_outputs, outputs)))

            def backward(t, dh, dx_out, da_out):
                t = t - 1
                z, r, hh, a_h = tf.split(gates.read(t), 4, axis=1)
                (m, carry), dy_t = tf.split(masks.read(t), 2, axis=1), dy.read(t)
                dh_new = m * (dh + dy_t)
                dh_carried = (1 - m) * dh + carry * dy_t
                dz = dh_new * (h_prev.read(t) - hh) * z * (1 - z)
                dhh = dh_new * (1 - z) * (1 - tf.square(hh))
                dr = dhh * a_h * r * (1 - r)
                da = tf.concat([dz, dr, dhh * r], 1)
                dh_prev = tf.matmul(da, recurrent_kernel, transpose_b=True) + dh_new * z + dh_carried
                return t, dh_prev, dx_out.write(t, tf.concat([dz, dr, dhh], 1)), da_out.write(t, da)

            _, d_initial_h, dx, da = tf.while_loop(
                lambda t, *_: t > 0,
                backward,
                (steps, _zeros_if_none(d_h, h), _per_step(x.dtype, steps),
                 _per_step(x.dtype, steps)),
            )  # fmt: skip
            dx, da = dx.stack(), da.stack()
            d_bias = tf.stack([tf.reduce_sum(dx, [0, 1]), tf.reduce_sum(da, [0, 1])])
            return (_input_gradient(dx, kernel), d_initial_h, _weight_gradient(x, dx),
                    _weight_gradient(h_prev.stack(), da), d_bias)  # fmt: skip

        return (outputs, h), gradient

    return run(inputs, initial_h, kernel, recurrent_kernel, bias)


def _lstm_step(projected, h, c, recurrent_kernel, step_mask):
    """One LSTM step: ``(h_next, c_next, output, gates [B, 4U])`` from the step's input projection."""
    import tensorflow as tf

    i, f, g, o = tf.split(projected + tf.matmul(h, recurrent_kernel), 4, axis=1)
    i, f, g, o = tf.sigmoid(i), tf.sigmoid(f), tf.tanh(g), tf.sigmoid(o)
    c_new = f * c + i * g
    h_new = o * tf.tanh(c_new)
    m, carry = tf.split(step_mask, 2, axis=1)
    return h + m * (h_new - h), c + m * (c_new - c), m * h_new + carry * h, tf.concat([i, f, g, o], 1)


def _gru_step(projected, h, recurrent_kernel, recurrent_bias, step_mask):
    """One GRU step (``reset_after``): ``(h_next, output, [z, r, hh, a_h] [B, 4U])``."""
    import tensorflow as tf

    x_z, x_r, x_h = tf.split(projected, 3, axis=1)
    a_z, a_r, a_h = tf.split(tf.matmul(h, recurrent_kernel) + recurrent_bias, 3, axis=1)
    z, r = tf.sigmoid(x_z + a_z), tf.sigmoid(x_r + a_r)
    hh = tf.tanh(x_h + r * a_h)
    h_new = z * h + (1 - z) * hh
    m, carry = tf.split(step_mask, 2, axis=1)
    return h + m * (h_new - h), m * h_new + carry * h, tf.concat([z, r, hh, a_h], 1)


def forward_only(cell: str, inputs, mask, states, kernel, recurrent_kernel, bias, zero_output_for_mask=False):
    """Inference: the same steps as :func:`lstm_sequence` / :func:`gru_sequence` (``cell`` "lstm" or "gru"),
    without what the backward pass keeps (gates, previous states) and without a custom gradient, so that a
    SavedModel and the TFLite converter take it. Returns ``(outputs [B, T, U], *final states)``."""
    import tensorflow as tf

    x = _time_major(inputs)
    steps = tf.shape(x)[0]
    step_masks = _step_masks(inputs, mask, zero_output_for_mask)
    input_bias = bias if cell == "lstm" else bias[0]
    gate_shape = x.shape[1:2] + kernel.shape[1:]
    projected = _per_step(x.dtype, steps, gate_shape).unstack(_project(x, kernel, input_bias))
    masks = _per_step(x.dtype, steps, step_masks.shape[1:]).unstack(step_masks)
    output_shape = x.shape[1:2] + recurrent_kernel.shape[:1]

    def forward(t, y_out, *states):
        if cell == "lstm":
            h, c, y, _ = _lstm_step(projected.read(t), *states, recurrent_kernel, masks.read(t))
            return t + 1, y_out.write(t, y), h, c
        h, y, _ = _gru_step(projected.read(t), *states, recurrent_kernel, bias[1], masks.read(t))
        return t + 1, y_out.write(t, y), h

    _, ys, *final = tf.while_loop(
        lambda t, *_: t < steps,
        forward,
        (0, _per_step(x.dtype, steps, output_shape), *states),
        maximum_iterations=steps,
    )
    return (_time_major(ys.stack()), *final)


@functools.cache
def layers():
    """``(LSTM, GRU)``: Keras' layers whose inner loop off cuDNN is :func:`lstm_sequence` /
    :func:`gru_sequence`; defined on first use so that importing this module needs no Keras."""
    import keras
    import tensorflow as tf

    def reverse_time(x):
        return None if x is None else tf.reverse(x, [1])

    class FusedLoop:
        """Replaces a Keras recurrent layer's inner loop where cuDNN does not run and the layer is the
        plain configuration the fused loop implements (otherwise Keras' own loop runs)."""

        def inner_loop(self, sequences, initial_state, mask, training=False):
            if _uses_cudnn() or not self._fusable():
                return super().inner_loop(sequences, initial_state, mask, training=training)
            states = list(initial_state) if isinstance(initial_state, (list, tuple)) else [initial_state]
            if isinstance(mask, (list, tuple)):
                mask = mask[0]
            if self.go_backwards:
                sequences, mask = reverse_time(sequences), reverse_time(mask)
            weights = (*_weights(self.cell, sequences.dtype), self.zero_output_for_mask)
            if training:
                outputs, *states = self._sequence(sequences, mask, *states, *weights)
            else:
                outputs, *states = forward_only(self._cell_kind, sequences, mask, states, *weights)
            return states[0], outputs, states

        def _fusable(self) -> bool:
            cell = self.cell
            return (
                cell.use_bias and getattr(cell, "reset_after", True) and not self.unroll
                and not self.stateful and cell.dropout == 0 and cell.recurrent_dropout == 0
                and cell.activation is keras.activations.tanh
                and cell.recurrent_activation is keras.activations.sigmoid
            )  # fmt: skip

    @keras.saving.register_keras_serializable(package="asr")
    class LSTM(FusedLoop, keras.layers.LSTM):
        """Keras' LSTM; off cuDNN, its loop is :func:`lstm_sequence`."""

        _cell_kind = "lstm"

        def _sequence(self, *args):
            return lstm_sequence(*args)

    @keras.saving.register_keras_serializable(package="asr")
    class GRU(FusedLoop, keras.layers.GRU):
        """Keras' GRU (``reset_after``); off cuDNN, its loop is :func:`gru_sequence`."""

        _cell_kind = "gru"

        def _sequence(self, *args):
            return gru_sequence(*args)

    return LSTM, GRU


def _weights(cell, dtype):
    """The cell's kernel, recurrent kernel and bias in the compute dtype (float16/bfloat16 under mixed
    precision, as Keras' own loop uses them)."""
    import tensorflow as tf

    return tuple(tf.cast(w.value, dtype) for w in (cell.kernel, cell.recurrent_kernel, cell.bias))


def _uses_cudnn() -> bool:
    """True where Keras would run cuDNN: a GPU is visible (Keras decides per layer from there)."""
    import tensorflow as tf

    return bool(tf.config.list_logical_devices("GPU"))
