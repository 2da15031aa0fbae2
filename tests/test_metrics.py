"""Corpus-level WER / CER / cer_maxlen against values worked out by hand."""

from __future__ import annotations

import pytest

from asr.metrics import (
    EmptySetError,
    VocabularyBreakdown,
    by_speaker,
    score,
    speaker_of,
    vocabulary_breakdown,
)

# Rates are ratios of integer counts in Python floats (IEEE doubles: the same on every CPU); approx only
# absorbs that the code may order the operations differently (a few 2^-53 roundings). No edits: exactly 0.

# Worked by hand:
#   "the cat sat" -> "the bat": words the=the, cat->bat (S), sat deleted (D); characters c->b (S) and
#       " sat" deleted (4 D): 5 edits, 11 reference characters, max(7, 11) = 11.
#   "cool" -> "col": words 1 S; characters one o deleted: 1 edit, 4 reference characters, max = 4.
#   "ab" -> "abcd": words 1 S; characters c, d inserted: 2 edits, 2 reference characters, max = 4.
REFERENCES = ["the cat sat", "cool", "ab"]
HYPOTHESES = ["the bat", "col", "abcd"]


def test_counts_and_rates_match_hand_values():
    scores = score(REFERENCES, HYPOTHESES)
    assert scores.utterances == 3
    assert (scores.words.substitutions, scores.words.deletions, scores.words.insertions) == (3, 1, 0)
    assert scores.words.hits == 1
    assert scores.words.reference_length == 5
    assert scores.wer == pytest.approx(100 * 4 / 5)
    assert scores.chars.edits == 8
    assert scores.chars.reference_length == 17
    assert scores.cer == pytest.approx(100 * 8 / 17)
    assert scores.max_chars == 19
    assert scores.cer_maxlen == pytest.approx(100 * 8 / 19)


def test_rates_are_corpus_level_not_mean_of_utterances():
    scores = score(REFERENCES, HYPOTHESES)
    mean_of_utterances = 100 * (5 / 11 + 1 / 4 + 2 / 4) / 3
    assert scores.cer_maxlen != pytest.approx(mean_of_utterances)
    assert [u.char_edits for u in scores.per_utterance] == [5, 1, 2]
    assert [u.word_edits for u in scores.per_utterance] == [2, 1, 1]
    assert [u.max_chars for u in scores.per_utterance] == [11, 4, 4]
    assert sum(u.char_edits for u in scores.per_utterance) == scores.chars.edits


def test_cer_maxlen_uses_the_longer_side():
    only_insertions = score(["ab"], ["abcd"])
    assert only_insertions.cer == pytest.approx(100.0)
    assert only_insertions.cer_maxlen == pytest.approx(50.0)
    garbage = score(["a"], ["xyzw"])
    assert garbage.cer == pytest.approx(400.0)
    assert garbage.cer_maxlen == pytest.approx(100.0)


def test_perfect_and_empty_hypotheses():
    perfect = score(["hello world", "it's"], ["hello world", "it's"])
    assert (perfect.wer, perfect.cer, perfect.cer_maxlen) == (0.0, 0.0, 0.0)
    silent = score(["hello world"], [""])
    assert silent.wer == pytest.approx(100.0)
    assert silent.words.deletions == 2
    assert silent.cer == pytest.approx(100.0)
    assert silent.cer_maxlen == pytest.approx(100.0)


def test_extra_spaces_are_ignored():
    assert score(["a  b "], [" a b"]).wer == 0.0


def test_an_empty_reference_counts_insertions():
    scores = score(["", "a b"], ["x", "a b"])
    assert scores.words.insertions == 1
    assert scores.wer == pytest.approx(50.0)


def test_summary_is_flat():
    summary = score(REFERENCES, HYPOTHESES).summary()
    assert summary["substitutions"] == 3
    assert summary["reference_words"] == 5
    assert summary["utterances"] == 3
    assert summary["cer_maxlen"] == pytest.approx(100 * 8 / 19)


def test_empty_set_is_an_error():
    with pytest.raises(EmptySetError, match="empty"):
        score([], [])
    with pytest.raises(EmptySetError, match="reference"):
        score(["", " "], ["a", ""])


def test_length_mismatch_is_an_error():
    with pytest.raises(ValueError, match="2 references but 1 hypotheses"):
        score(["a", "b"], ["a"])


def test_vocabulary_breakdown_counts_words_in_and_out_of_the_dictionary():
    vocabulary = {"the", "cat", "sat", "on", "mat"}
    references = ["the cat sat on the mat", "a sylph sat"]
    hypotheses = ["the cat sad on the mat", "a silf sat"]
    breakdown = vocabulary_breakdown(references, hypotheses, vocabulary)
    # in: the cat sat on the mat sat (7), recognized all but "sat" in the first; out: a sylph (2), "a" right
    assert breakdown == VocabularyBreakdown(7, 6, 2, 1)
    assert breakdown.summary() == pytest.approx(
        {"oov_rate": 100 * 2 / 9, "iv_word_accuracy": 100 * 6 / 7, "oov_word_accuracy": 50.0, "oov_words": 2}
    )
    assert vocabulary_breakdown([""], ["noise"], vocabulary) == VocabularyBreakdown(0, 0, 0, 0)


def test_speaker_of_librispeech_ids_and_speed_perturbed_copies():
    assert speaker_of("1089-134686-0000") == "1089"
    assert speaker_of("sp0.9-1089-134686-0000") == "1089"
    assert speaker_of("sp1.1-1089-134686-0000") == "1089"
    assert speaker_of("spk7-chapter-0001") == "spk7"  # an id starting with "sp" is not a perturbed copy
    assert speaker_of("utterance") == "utterance"


def test_by_speaker_sums_counts_within_each_speaker_and_keeps_the_set_totals():
    ids = ["2-1-0", "1-1-0", "2-1-1", "sp0.9-1-1-2"]
    refs = ["a b c d", "the cat", "x y", "the dog"]
    hyps = ["a b c d", "the hat", "", "a dog"]
    scores = score(refs, hyps)
    speakers = by_speaker(ids, scores.per_utterance)
    assert [(s.speaker, s.utterances, s.word_edits, s.reference_words) for s in speakers] == [
        ("1", 2, 2, 4),
        ("2", 2, 2, 6),
    ]
    assert speakers[0].wer == pytest.approx(50.0) and speakers[1].wer == pytest.approx(100 * 2 / 6)
    assert sum(s.char_edits for s in speakers) == scores.chars.edits
    assert sum(s.reference_chars for s in speakers) == scores.chars.reference_length
    with pytest.raises(ValueError, match="3 utterance ids but 4"):
        by_speaker(ids[:3], scores.per_utterance)
