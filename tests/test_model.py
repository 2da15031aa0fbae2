"""The acoustic model: sizes, output lengths, CTC loss on sparse labels."""

import numpy as np
import pytest

from asr.config import ModelConfig
from asr.model import (
    build_model,
    ctc_loss,
    flops_per_frame,
    min_input_frames,
    output_frames,
    parameter_count,
    sparse_labels,
    summary,
)

SMALL = {"conv_filters": 8, "conv_kernel": 5, "conv_stride": 2, "rnn_layers": 2, "rnn_units": 6}


def test_paper_model_has_about_25_6_million_parameters():
    paper = ModelConfig()
    assert paper.rnn == "lstm" and not paper.bidirectional
    assert 25.5e6 < parameter_count(paper) < 25.7e6
    text = summary(paper, 1670)
    assert "lstm_5" in text and f"{parameter_count(paper):,}" in text
    assert "= 830 for T = 1670" in text


@pytest.mark.parametrize("rnn", ["lstm", "gru"])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_computed_parameter_count_equals_the_built_model(rnn, bidirectional):
    config = ModelConfig(**SMALL, rnn=rnn, bidirectional=bidirectional)
    model = build_model(config)
    assert model.count_params() == parameter_count(config)
    logits = model((np.zeros((2, 40, 93), np.float32), np.array([40, 31])))
    assert logits.shape == (2, int(output_frames(40, config)), 30)


def test_flops_per_frame_count_gates_directions_and_stride():
    # exact: integer counts divided by the stride 2, so exactly representable doubles
    conv = 2 * 93 * 5 * 8
    # forward LSTM: 4 gates; layer inputs 8 then 6; dense reads 6 features
    lstm = 2 * 4 * (8 + 6) * 6 + 2 * 4 * (6 + 6) * 6
    assert flops_per_frame(ModelConfig(**SMALL)) == (conv + lstm + 2 * 6 * 30) / 2
    # bidirectional GRU: 3 gates, 2 directions; layer inputs 8 then 12; dense reads 12 features
    gru = 2 * (2 * 3 * (8 + 6) * 6 + 2 * 3 * (12 + 6) * 6)
    bi_gru = ModelConfig(**SMALL, rnn="gru", bidirectional=True)
    assert flops_per_frame(bi_gru) == (conv + gru + 2 * 12 * 30) / 2


def test_output_frames_and_the_shortest_usable_input():
    config = ModelConfig(conv_kernel=11, conv_stride=2)
    assert output_frames(11, config) == 1
    assert output_frames(1670, config) == 830
    assert output_frames(np.array([10, 12, 13]), config).tolist() == [0, 1, 2]
    for labels in (1, 7, 50):
        frames = min_input_frames(labels, config)
        assert output_frames(frames, config) >= labels > output_frames(frames - 1, config)


def test_sparse_labels_keep_space_id_zero_and_drop_padding_by_length():
    labels = np.array([[0, 5, 0], [3, 0, 0]], np.int32)
    sparse = sparse_labels(labels, np.array([3, 1]))
    assert sparse.indices.numpy().tolist() == [[0, 0], [0, 1], [0, 2], [1, 0]]
    assert sparse.values.numpy().tolist() == [0, 5, 0, 3]


def test_ctc_loss_of_a_certain_path_is_zero_and_padding_is_ignored():
    # logits that put (almost) all mass on "a, blank, b" then padding frames that must not count
    a, b, blank = 1, 2, 29
    big = 50.0
    logits = np.zeros((1, 5, 30), np.float32)
    for t, symbol in enumerate([a, blank, b, a, a]):
        logits[0, t, symbol] = big
    loss = ctc_loss(np.array([[a, b]]), np.array([2]), logits, np.array([3]))
    # true loss ln(1 + ~29 e^-50) ~ 1e-20; float32 log-space sums of 3 frames round values of order 1 at
    # most a few times (2^-24 = 6e-8 each): |loss| < 1e-6
    assert float(loss[0]) == pytest.approx(0.0, abs=1e-6)
    uniform = ctc_loss(np.array([[a, b]]), np.array([2]), np.zeros((1, 5, 30), np.float32), np.array([3]))
    # paths of length 3 emitting "ab": ab_, a_b, _ab, aab, abb -> 5 of 30^3
    # float32 vs float64: ~10 roundings (log-softmax, 3-frame path sums, log-sum of 5 paths) relative to the
    # loss: 10 x 2^-24 = 6e-7, rel=1e-5 is ~170 roundoffs (measured: 0.25)
    assert float(uniform[0]) == pytest.approx(-np.log(5 / 30**3), rel=1e-5)


@pytest.mark.parametrize("training", [False, True])
def test_padding_changes_no_logits_of_a_bidirectional_model(training):
    """Masked recurrent layers and batch norm: an utterance's logits (and, in training, the batch-norm
    statistics) are the same whether its batch is padded by 0 or by 37 frames."""
    config = ModelConfig(**SMALL, rnn="gru", bidirectional=True, dropout=0.0)
    model = build_model(config)
    rng = np.random.default_rng(0)
    features = rng.normal(size=(2, 30, 93)).astype(np.float32)
    frames = np.array([30, 22], np.int32)
    features[1, 22:] = 0.0
    padded = np.concatenate([features, rng.normal(size=(2, 37, 93)).astype(np.float32)], axis=1)
    short = model((features, frames), training=training).numpy()
    long = model((padded, frames), training=training).numpy()
    # Not bit-exact: other shapes, so kernels may block the sums differently. Per side: conv 5 x 93 = 465
    # products, batch-norm moments of 22 frames (training), 2 GRU layers x 13 steps x <= 19 terms, dense 13:
    # ~1000 roundoffs of the logits' scale, 2 x 1000 x 2^-24 = 1.2e-4 of the largest logit (measured: 7)
    atol = 1.2e-4 * float(np.abs(short).max())
    for row, n in enumerate(output_frames(frames, config)):
        np.testing.assert_allclose(long[row, :n], short[row, :n], atol=atol)


def test_logits_carry_no_keras_mask_so_fit_gets_one_loss_per_utterance():
    model = build_model(ModelConfig(**SMALL))
    assert getattr(model.outputs[0], "_keras_mask", None) is None
    logits = model((np.zeros((2, 40, 93), np.float32), np.array([40, 31])), training=True)
    assert getattr(logits, "_keras_mask", None) is None
