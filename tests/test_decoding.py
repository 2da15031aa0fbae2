"""Decoders on hand-made logits whose answers are known."""

from __future__ import annotations

import math
import signal
import time

import numpy as np
import psutil
import pytest

from asr.decoding import (
    BEAM_LABELS,
    BeamSearchDecoder,
    DecoderWorkerError,
    GreedyDecoder,
    LanguageModelMissingWarning,
    beam_log_probs,
    greedy_text,
    log_softmax,
    make_decoder,
    split_batch,
)
from asr.lm import build_lm
from asr.text import BLANK_ID, NUM_SYMBOLS, SEPARATOR_ID, SPACE_ID, SYMBOLS

BLANK, SEP, SPACE = BLANK_ID, SEPARATOR_ID, SPACE_ID


def ids(text: str) -> list[int]:
    return [SYMBOLS.index(c) for c in text]


def peaked(frame_ids: list[int], peak: float = 8.0) -> np.ndarray:
    """Logits ``[T, 30]`` with one clear winner per frame."""
    logits = np.zeros((len(frame_ids), NUM_SYMBOLS), np.float32)
    logits[np.arange(len(frame_ids)), frame_ids] = peak
    return logits


def distributions(frames: list[dict[int, float]]) -> np.ndarray:
    """Log-probabilities ``[T, 30]`` from per-frame {id: probability}; the rest share what is left."""
    log_probs = np.empty((len(frames), NUM_SYMBOLS), np.float32)
    for t, frame in enumerate(frames):
        rest = (1.0 - sum(frame.values())) / (NUM_SYMBOLS - len(frame))
        log_probs[t] = math.log(max(rest, 1e-12))
        for label, p in frame.items():
            log_probs[t, label] = math.log(p)
    return log_probs


# "cool" spoken with repeats and blanks: c c o _ o o l, then a blank tail.
COOL = [*ids("cc"), *ids("o"), BLANK, SEP, *ids("oo"), *ids("l"), BLANK, BLANK]


def test_greedy_collapses_repeats_blanks_and_the_separator():
    assert greedy_text(peaked(COOL)) == "cool"
    without_separator = [*ids("cc"), *ids("oo"), *ids("l")]
    assert greedy_text(peaked(without_separator)) == "col"
    blank_between = [*ids("o"), BLANK, *ids("o")]
    assert greedy_text(peaked(blank_between)) == "oo"
    words = [*ids("it's"), SPACE, SPACE, BLANK, *ids("a")]
    assert greedy_text(peaked(words)) == "it's a"
    assert greedy_text(peaked([BLANK, BLANK, SEP])) == ""
    assert greedy_text(np.zeros((0, NUM_SYMBOLS), np.float32)) == ""


def test_greedy_decoder_decodes_a_list_and_rejects_other_shapes():
    decoder = GreedyDecoder()
    assert decoder.decode([peaked(COOL), peaked(ids("a"))]) == ["cool", "a"]
    assert decoder.submit([peaked(COOL)]).result() == ["cool"]
    with pytest.raises(ValueError, match="30"):
        decoder.decode([np.zeros((4, 29), np.float32)])


def test_split_batch_cuts_each_utterance_to_its_length():
    batch = np.zeros((2, 5, NUM_SYMBOLS), np.float32)
    pieces = split_batch(batch, [5, 2])
    assert [p.shape for p in pieces] == [(5, NUM_SYMBOLS), (2, NUM_SYMBOLS)]
    with pytest.raises(ValueError, match="2 lengths"):
        split_batch(np.zeros((3, 5, NUM_SYMBOLS)), [1, 2])


def test_beam_columns_merge_the_separator_into_pyctcdecode_blank():
    assert BEAM_LABELS[-1] == "" and len(BEAM_LABELS) == NUM_SYMBOLS - 1
    assert BEAM_LABELS[SPACE_ID] == " " and BEAM_LABELS[27] == "'"
    frame = distributions([{SEP: 0.3, BLANK: 0.5, 1: 0.2 - 27e-9}])
    merged = np.exp(beam_log_probs(frame))
    assert merged.shape == (1, NUM_SYMBOLS - 1)
    # float32, numpy's exp and log within 4 ulps each (CPU-specific SIMD code): 5 of them (3 exps, log in
    # the log-softmax, the final exp) + logaddexp (~4) + ~6 plain roundings of values near 1: ~30 roundoffs,
    # 30 x 2^-24 = 1.8e-6 (measured: 1)
    assert merged[0, -1] == pytest.approx(0.8, abs=2e-6)
    # 29 such exps (~30 roundoffs of their total, 1) and 28 additions: ~60 roundoffs, 3.6e-6 < 1e-5
    assert merged.sum() == pytest.approx(1.0, abs=1e-5)
    # raw logits and their log-softmax give the same columns: each log-softmax rounds a 30-term sum of exps
    # (~35 roundoffs with exp's and log's) and values below 8 (a few ulps, 5e-7): ~6e-6 < 1e-5 (measured 5e-7)
    logits = np.random.default_rng(0).normal(size=(3, NUM_SYMBOLS)).astype(np.float32)
    np.testing.assert_allclose(beam_log_probs(logits), beam_log_probs(log_softmax(logits)), atol=1e-5)


@pytest.fixture(scope="module")
def lm_dir(tmp_path_factory):
    """A real KenLM model (lmplz + build_binary) in which "the cat sat" is common and "bat" rare."""
    out = tmp_path_factory.mktemp("lm")
    sentences = ["the cat sat"] * 6 + ["the cat sat on the mat", "a bat flew", "the cool cat", "too cool"]
    build_lm(sentences, out, order=3)
    return out


def test_beam_search_without_lm_warns_and_agrees_with_greedy_on_peaked_logits():
    utterances = [peaked(COOL), peaked([*ids("the"), SPACE, *ids("cat")]), peaked([BLANK] * 3)]
    with pytest.warns(LanguageModelMissingWarning, match="without a language model"):
        decoder = BeamSearchDecoder(beam_width=8, lm_dir=None, workers=1)
    with decoder:
        assert not decoder.uses_lm
        assert decoder.decode(utterances) == GreedyDecoder().decode(utterances) == ["cool", "the cat", ""]


def test_missing_lm_files_warn_and_fall_back(tmp_path):
    with pytest.warns(LanguageModelMissingWarning, match="lm.binary"):
        decoder = BeamSearchDecoder(beam_width=4, lm_dir=tmp_path / "nowhere", workers=1)
    with decoder:
        assert not decoder.uses_lm
        assert decoder.decode([peaked(COOL)]) == ["cool"]


def test_the_language_model_breaks_an_acoustic_tie(lm_dir):
    # "the ?at sat": the first letter of the middle word sounds slightly more like b than c.
    sure = 0.97
    frames = [{i: sure} for i in ids("the")] + [{SPACE: sure}]
    frames += [{ids("b")[0]: 0.52, ids("c")[0]: 0.46}]
    frames += [{i: sure} for i in ids("at")] + [{SPACE: sure}] + [{i: sure} for i in ids("sat")]
    log_probs = distributions(frames)
    assert greedy_text(log_probs) == "the bat sat"
    with pytest.warns(LanguageModelMissingWarning):
        no_lm = BeamSearchDecoder(beam_width=16, lm_dir=None, workers=1)
    with no_lm:
        assert no_lm.decode([log_probs]) == ["the bat sat"]
    with BeamSearchDecoder(beam_width=16, lm_dir=lm_dir, alpha=0.5, beta=1.0, workers=1) as with_lm:
        assert with_lm.uses_lm
        assert with_lm.decode([log_probs]) == ["the cat sat"]


def test_double_letters_survive_the_lm_and_dictionary(lm_dir):
    # t o o -> "to" (a repeat), then blank, separator, o -> "too": only a break makes a double letter.
    too_cool = peaked([*ids("too"), BLANK, SEP, *ids("o"), SPACE, *ids("co"), SEP, *ids("ol")])
    assert greedy_text(too_cool) == "too cool"
    cool_cat = peaked([*ids("the"), SPACE, *ids("co"), SEP, *ids("ol"), SPACE, *ids("cat")])
    with BeamSearchDecoder(beam_width=16, lm_dir=lm_dir, workers=1) as decoder:
        assert decoder.decode([cool_cat, too_cool]) == ["the cool cat", "too cool"]


def test_pool_decoding_matches_single_process_and_overlaps(lm_dir):
    rng = np.random.default_rng(7)
    utterances = []
    for _ in range(6):
        frame_ids = rng.integers(0, NUM_SYMBOLS, size=int(rng.integers(5, 40))).tolist()
        utterances.append(peaked(frame_ids, peak=3.0) + rng.normal(0, 0.5, (len(frame_ids), NUM_SYMBOLS)))
    with BeamSearchDecoder(beam_width=8, lm_dir=lm_dir, workers=1) as single:
        expected = single.decode(utterances)
    with BeamSearchDecoder(beam_width=8, lm_dir=lm_dir, workers=2) as pooled:
        first = pooled.submit(utterances[:3])
        second = pooled.submit(utterances[3:])  # submitted before the first is collected
        assert first.result() + second.result() == expected


def wait_until_dead(process: psutil.Process, seconds: float = 10) -> None:
    """Until ``process`` (a child) has ended, without reaping it: its pool's own ``waitpid`` must see its
    exit, or the pool counts it as alive for ever (psutil's ``wait()`` would reap it)."""
    deadline = time.monotonic() + seconds
    try:
        while process.status() != psutil.STATUS_ZOMBIE:
            assert time.monotonic() < deadline, "the killed worker did not end"
            time.sleep(0.01)
    except psutil.NoSuchProcess:  # reaped already, by the pool
        pass


def test_workers_ignore_ctrl_c_and_a_killed_worker_fails_the_batch_instead_of_hanging(lm_dir):
    utterances = [peaked(COOL)] * 8
    others = set(psutil.Process().children())  # what earlier tests of this process left running
    with BeamSearchDecoder(beam_width=8, lm_dir=lm_dir, workers=2) as pooled:
        expected = pooled.decode(utterances)
        workers = [child for child in psutil.Process().children() if child not in others]
        assert len(workers) == 2
        for worker in workers:  # Ctrl-C in a terminal reaches the whole process group
            worker.send_signal(signal.SIGINT)
        assert pooled.decode(utterances) == expected
        workers[0].kill()
        wait_until_dead(workers[0])
        with pytest.raises(DecoderWorkerError, match="decoding process died"):
            pending = pooled.submit(utterances)
            deadline = time.monotonic() + 60
            while not pending.ready():  # multiprocessing.Pool never got here: it waited for the lost chunk
                assert time.monotonic() < deadline, "the batch of a killed worker never finished"
                time.sleep(0.05)
            pending.result()
    assert set(psutil.Process().children()) <= others  # close() ended the other worker too


def test_make_decoder_picks_greedy_for_beam_width_one(lm_dir):
    assert isinstance(make_decoder(1, lm_dir), GreedyDecoder)
    with make_decoder(4, lm_dir, workers=1) as decoder:
        assert isinstance(decoder, BeamSearchDecoder) and decoder.uses_lm
    with pytest.raises(ValueError, match="beam width"):
        BeamSearchDecoder(beam_width=0, lm_dir=lm_dir, workers=1)
