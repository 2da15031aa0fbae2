"""The fused recurrent loops give Keras' outputs and gradients, and the model uses them off cuDNN."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import asr.recurrent
from asr.config import ModelConfig
from asr.model import build_model, ctc_loss, output_frames
from asr.recurrent import layers

BATCH, STEPS, FEATURES, UNITS = 3, 9, 5, 4
LENGTHS = [9, 6, 1]  # the last utterance has a single real step


def inputs_and_mask(seed: int = 0):
    rng = np.random.default_rng(seed)
    x = tf.constant(rng.normal(size=(BATCH, STEPS, FEATURES)).astype("float32"))
    mask = tf.constant(np.arange(STEPS)[None, :] < np.array(LENGTHS)[:, None])
    return x, mask


@pytest.fixture
def fused_calls(monkeypatch):
    """Counts calls of the fused loops (the real functions still run)."""
    calls = []
    for name in ("lstm_sequence", "gru_sequence"):
        original = getattr(asr.recurrent, name)

        def spy(*args, _original=original, _name=name, **kwargs):
            calls.append(_name)
            return _original(*args, **kwargs)

        monkeypatch.setattr(asr.recurrent, name, spy)
    return calls


def outputs_and_gradients(layer, x, mask, initial_state):
    """Sequence outputs, final states and the gradients of a loss over all of them."""
    rng = np.random.default_rng(1)
    with tf.GradientTape() as tape:
        tape.watch([x, *initial_state])
        outputs = layer(x, mask=mask, initial_state=initial_state, training=True)
        loss = sum(
            tf.reduce_sum(o * rng.normal(size=o.shape).astype("float32")) for o in tf.nest.flatten(outputs)
        )
    sources = [x, *initial_state, *layer.trainable_variables]
    return [np.asarray(o) for o in tf.nest.flatten(outputs)], [
        np.asarray(g) for g in tape.gradient(loss, sources)
    ]


def keras_and_fused_layers(cell: str, options: dict):
    """Keras' layer and ours with the same random weights, returning sequences and states."""
    fused_class = dict(zip(("LSTM", "GRU"), layers(), strict=True))[cell]
    kwargs = {"return_sequences": True, "return_state": True, **options}
    reference, fused = getattr(keras.layers, cell)(UNITS, **kwargs), fused_class(UNITS, **kwargs)
    for layer in (reference, fused):
        layer.build((None, None, FEATURES))
    reference.set_weights([np.random.default_rng(2).normal(size=w.shape) for w in reference.get_weights()])
    fused.set_weights(reference.get_weights())
    return reference, fused


@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
@pytest.mark.parametrize(
    "options",
    [{}, {"go_backwards": True}, {"zero_output_for_mask": True}],
    ids=["forward", "backward", "zero"],
)
def test_fused_layer_gives_keras_outputs_and_gradients(cell, options, fused_calls):
    x, mask = inputs_and_mask()
    reference, fused = keras_and_fused_layers(cell, options)
    states = 2 if cell == "LSTM" else 1
    initial_state = [tf.constant(np.random.default_rng(3 + i).normal(size=(BATCH, UNITS)), tf.float32)
                     for i in range(states)]  # fmt: skip

    expected_outputs, expected_gradients = outputs_and_gradients(reference, x, mask, initial_state)
    assert not fused_calls
    actual_outputs, actual_gradients = outputs_and_gradients(fused, x, mask, initial_state)

    assert fused_calls == [f"{cell.lower()}_sequence"]
    for expected, actual in zip(expected_outputs, actual_outputs, strict=True):
        # not bit-exact (the fused loop projects all steps in one matrix product): 9 steps of 10-term gate
        # sums, 90 roundoffs on each side of values of order 1: 2 x 90 x 2^-24 = 1.1e-5 (rtol: cell states ~3)
        np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5)
    assert len(expected_gradients) == 1 + states + 3
    for expected, actual in zip(expected_gradients, actual_gradients, strict=True):
        assert np.abs(expected).max() > 0
        assert_same_layer_gradient(actual, expected)


@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
@pytest.mark.parametrize("options", [{}, {"go_backwards": True}, {"zero_output_for_mask": True}])
def test_inference_runs_the_forward_only_loop_with_keras_outputs(cell, options, fused_calls):
    """``training=False`` (evaluation, export) runs :func:`asr.recurrent.forward_only`: no custom gradient,
    nothing kept for a backward pass; same outputs and final states as Keras."""
    x, mask = inputs_and_mask()
    reference, fused = keras_and_fused_layers(cell, options)
    expected = reference(x, mask=mask, training=False)
    actual = fused(x, mask=mask, training=False)
    assert not fused_calls
    for want, got in zip(tf.nest.flatten(expected), tf.nest.flatten(actual), strict=True):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)  # as above


def assert_same_layer_gradient(actual: np.ndarray, expected: np.ndarray) -> None:
    """Equal within float32 reduction-order rounding (the loops, XLA and the CPU's kernels order the sums
    differently): a weight gradient sums B x T = 27 products whose errors came back through up to 9 steps,
    27 x 9 = 243 roundoffs on each side relative to the tensor's largest element (input and state
    gradients sum fewer): 2 x 243 x 2^-24 = 2.9e-5, rounded up to 3e-5. Scaled by the tensor, not
    elementwise: elements that are small differences of large terms carry the large terms' rounding.
    Measured: at most 30 roundoffs."""
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=3e-5 * float(np.abs(expected).max()))


def test_masked_steps_carry_the_state_and_leave_the_weights_alone():
    x, mask = inputs_and_mask()
    lstm, gru = layers()
    for layer in (lstm(UNITS, return_sequences=True), gru(UNITS, return_sequences=True)):
        short = layer(x[2:, :1], mask=mask[2:, :1])
        padded = layer(x[2:], mask=mask[2:])
        # the one-step utterance: every later (masked) output repeats its only real output. Masked steps copy
        # it exactly; the real step itself is projected in a 1-step vs a 9-step matrix product, so it may
        # round differently: 5 inputs + bias, 6 roundoffs per side of values of order 1, 2 x 6 x 2^-24 < 1e-6
        np.testing.assert_allclose(
            np.asarray(padded)[0], np.repeat(np.asarray(short)[0], STEPS, axis=0), atol=1e-6
        )
        # whatever lies in masked steps changes neither the outputs nor the weight gradients
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(layer(tf.where(mask[..., None], x, 0.0), mask=mask))
        with tf.GradientTape() as tape_noise:
            loss_noise = tf.reduce_sum(layer(tf.where(mask[..., None], x, 1e3), mask=mask))
        # exact: same shapes, same kernels, same real steps; masked steps enter only multiplied by an exact 0
        # (state h + 0 x (h_new - h), weight gradient input x 0): sums add identical terms in the same order
        assert float(loss) == float(loss_noise)
        for a, b in zip(tape.gradient(loss, layer.trainable_variables),
                        tape_noise.gradient(loss_noise, layer.trainable_variables), strict=True):  # fmt: skip
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("rnn,bidirectional", [("lstm", False), ("gru", True)])
def test_model_with_either_loop_gives_the_same_loss_and_gradients(rnn, bidirectional, fused_calls):
    sizes = {"conv_filters": 8, "conv_kernel": 5, "conv_stride": 2, "rnn_layers": 2, "rnn_units": 6}
    fused_config = ModelConfig(**sizes, rnn=rnn, bidirectional=bidirectional, dropout=0.0, rnn_loop="fused")
    keras_config = ModelConfig(**sizes, rnn=rnn, bidirectional=bidirectional, dropout=0.0, rnn_loop="keras")
    fused, plain = build_model(fused_config), build_model(keras_config)
    plain.set_weights(fused.get_weights())
    rng = np.random.default_rng(4)
    features = tf.constant(rng.normal(size=(2, 40, 93)).astype("float32"))
    frames = tf.constant([40, 27])
    labels, label_lengths = tf.constant([[3, 4, 5], [6, 7, 0]]), tf.constant([3, 2])

    def loss_and_gradients(model):
        with tf.GradientTape() as tape:
            logits = model((features, frames), training=True)
            loss = tf.reduce_mean(
                ctc_loss(labels, label_lengths, logits, output_frames(frames, fused_config))
            )
        largest_logit = float(tf.reduce_max(tf.abs(logits)))
        return float(loss), tape.gradient(loss, model.trainable_variables), largest_logit

    fused_loss, fused_gradients, _ = loss_and_gradients(fused)
    assert len(fused_calls) == (2 if not bidirectional else 4)
    plain_loss, plain_gradients, largest_logit = loss_and_gradients(plain)
    assert len(fused_calls) == (2 if not bidirectional else 4)
    # Only the recurrent sums differ (conv, batch norm, dense: same code, same shapes): 2 layers x 18 steps x
    # <= 19 terms ~ 680 roundoffs per side of the logits' scale; a frame's log-softmax moves by at most twice
    # its largest logit change, and the CTC loss by at most the sum of that over its T' = 18 frames.
    logit_bound = 2 * 680 * 2.0**-24 * largest_logit
    np.testing.assert_allclose(fused_loss, plain_loss, rtol=0, atol=2 * 18 * logit_bound)
    for a, b in zip(fused_gradients, plain_gradients, strict=True):
        assert_same_gradient_up_to_summation_order(np.asarray(a), np.asarray(b))


def assert_same_gradient_up_to_summation_order(fused: np.ndarray, plain: np.ndarray) -> None:
    """Equal within float32 reduction-order rounding, not bit-exact: the fused loop sums the products of
    all time steps in one matrix product, Keras' loop step by step, and the CPU's kernels (AVX2 or
    AVX-512) pick the order. Each gradient element sums B x T' = 36 products per step and its error grows
    through the 18 steps of each of the 2 layers: about 650 unit roundoffs (650 x 2^-24 = 4e-5) relative
    to the tensor's largest element, rounded up to 1e-4. An elementwise relative tolerance alone fails on
    elements that are small differences of large terms (seen on an EPYC machine: one of 144 values), so
    the absolute part scales with the tensor. Measured: at most 50 roundoffs on Xeon and EPYC machines."""
    np.testing.assert_allclose(fused, plain, rtol=1e-3, atol=1e-4 * float(np.abs(plain).max()))


def test_mixed_precision_runs_in_the_compute_dtype():
    x, mask = inputs_and_mask()
    lstm, _ = layers()
    reference = keras.layers.LSTM(UNITS, return_sequences=True, dtype="mixed_bfloat16")
    fused = lstm(UNITS, return_sequences=True, dtype="mixed_bfloat16")
    for layer in (reference, fused):
        layer.build((None, None, FEATURES))
    fused.set_weights(reference.get_weights())
    expected, actual = reference(x, mask=mask), fused(x, mask=mask)
    assert actual.dtype == expected.dtype == tf.bfloat16
    # bfloat16 keeps 8 significant bits (roundoff 2^-8 of |h| < 1) and the two loops round at different
    # points: at most about one roundoff apart per step, over 9 steps 9 x 2^-8 = 0.035 (measured 0.002)
    np.testing.assert_allclose(np.asarray(tf.cast(actual, tf.float32)),
                               np.asarray(tf.cast(expected, tf.float32)), atol=9 * 2.0**-8)  # fmt: skip


def test_fused_loop_compiles_with_xla_to_the_same_results():
    x, mask = inputs_and_mask()
    lstm, _ = layers()
    layer = lstm(UNITS, return_sequences=True)
    layer.build((None, None, FEATURES))

    def run(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(tf.square(layer(x, mask=mask, training=True)))
        return loss, tape.gradient(loss, [x, *layer.trainable_variables])

    eager_loss, eager_gradients = run(x)
    xla_loss, xla_gradients = tf.function(run, jit_compile=True)(x)
    # XLA fuses and reorders the sums: the loss adds 108 squares (108 roundoffs) of outputs each within 90
    # roundoffs (doubled by squaring), ~290 per side relative to the loss: 2 x 290 x 2^-24 = 3.5e-5
    np.testing.assert_allclose(float(xla_loss), float(eager_loss), rtol=4e-5)
    for a, b in zip(xla_gradients, eager_gradients, strict=True):
        assert_same_layer_gradient(np.asarray(a), np.asarray(b))


def test_configurations_the_fused_loop_does_not_implement_run_keras_loop(fused_calls):
    x, mask = inputs_and_mask()
    lstm, gru = layers()
    lstm(UNITS, recurrent_dropout=0.1)(x, mask=mask, training=True)
    gru(UNITS, reset_after=False)(x, mask=mask, training=True)
    lstm(UNITS, activation="relu")(x, mask=mask, training=True)
    assert fused_calls == []
    lstm(UNITS)(x, mask=mask, training=True)
    assert fused_calls == ["lstm_sequence"]
