"""Error rates over a whole evaluation set: WER, CER and the paper's ``cer_maxlen``.

All rates are *corpus-level* percentages: total edits over the set divided by a total length over
the set, never a mean of per-utterance rates (which would give a short utterance as much weight as a
long one).

- ``wer``: word edits (S + D + I) / reference words, with jiwer (paper eq. 2).
- ``cer``: character edits / reference characters, with jiwer (spaces count as characters).
- ``cer_maxlen``: the paper's eq. 3, character edits / max(|hypothesis|, |reference|).
  **Decision**: summed over the set like the others, i.e. sum of edits / sum over utterances of
  max(|hyp_i|, |ref_i|). It never exceeds 100 % and never exceeds ``cer``.

``vocabulary_breakdown`` splits the reference words by whether a vocabulary (the language model's
dictionary, built from the training transcripts) holds them, and counts how many of each kind were
recognized: out-of-vocabulary words can only come from the acoustic model spelling them.

``by_speaker`` regroups a set's per-utterance edits by speaker (the utterance id up to its first ``-``,
LibriSpeech's ``speaker-chapter-utterance``; a speed-perturbed copy's ``sp<factor>-`` prefix is dropped),
with the same corpus-level rule inside each speaker: which voices carry a set's errors.

Inputs are transcripts already in the alphabet (``asr.text.normalize``); runs of spaces and
leading/trailing spaces are ignored. An empty hypothesis is fine (all deletions); an empty
reference is fine as long as the set has at least one reference word.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jiwer

from asr.corpus import unperturbed_id


class EmptySetError(ValueError):
    """The evaluation set has no utterances, or no reference words at all: rates are undefined."""


@dataclasses.dataclass(frozen=True)
class EditCounts:
    """Levenshtein alignment counts over a set, in words or characters."""

    substitutions: int
    deletions: int
    insertions: int
    hits: int

    @property
    def edits(self) -> int:
        return self.substitutions + self.deletions + self.insertions

    @property
    def reference_length(self) -> int:
        """Units in the references: hits + substitutions + deletions."""
        return self.hits + self.substitutions + self.deletions


@dataclasses.dataclass(frozen=True)
class UtteranceErrors:
    """Edits of one utterance, for the per-utterance hypotheses file."""

    word_edits: int
    reference_words: int
    char_edits: int
    reference_chars: int
    max_chars: int
    """max(|hypothesis|, |reference|) in characters: the ``cer_maxlen`` denominator."""


@dataclasses.dataclass(frozen=True)
class SetScores:
    """Error rates of one evaluation set (percent) with the counts they come from."""

    utterances: int
    words: EditCounts
    chars: EditCounts
    max_chars: int
    """Sum over utterances of max(|hypothesis|, |reference|) in characters."""
    per_utterance: tuple[UtteranceErrors, ...]

    @property
    def wer(self) -> float:
        return _percent(self.words.edits, self.words.reference_length)

    @property
    def cer(self) -> float:
        return _percent(self.chars.edits, self.chars.reference_length)

    @property
    def cer_maxlen(self) -> float:
        return _percent(self.chars.edits, self.max_chars)

    def summary(self) -> dict[str, float | int]:
        """Flat JSON-ready fields: rates in percent, counts in words/characters/utterances."""
        return {
            "wer": self.wer,
            "cer": self.cer,
            "cer_maxlen": self.cer_maxlen,
            "substitutions": self.words.substitutions,
            "deletions": self.words.deletions,
            "insertions": self.words.insertions,
            "hits": self.words.hits,
            "reference_words": self.words.reference_length,
            "char_substitutions": self.chars.substitutions,
            "char_deletions": self.chars.deletions,
            "char_insertions": self.chars.insertions,
            "reference_chars": self.chars.reference_length,
            "utterances": self.utterances,
        }


def _percent(numerator: int, denominator: int) -> float:
    return 100.0 * numerator / denominator if denominator else 0.0


def _clean(text: str) -> str:
    return " ".join(text.split())


def _chunk_edits(chunks: Sequence[jiwer.AlignmentChunk]) -> int:
    edits = 0
    for chunk in chunks:
        if chunk.type in ("substitute", "delete"):
            edits += chunk.ref_end_idx - chunk.ref_start_idx
        elif chunk.type == "insert":
            edits += chunk.hyp_end_idx - chunk.hyp_start_idx
    return edits


def score(references: Sequence[str], hypotheses: Sequence[str]) -> SetScores:
    """Corpus-level WER, CER and ``cer_maxlen`` of ``hypotheses`` against ``references``.

    Raises :class:`EmptySetError` for an empty set or a set without any reference word, and
    ``ValueError`` when the two sequences differ in length.
    """
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses")
    if not references:
        raise EmptySetError("the evaluation set is empty: no utterances to score")
    refs = [_clean(r) for r in references]
    hyps = [_clean(h) for h in hypotheses]
    if not any(refs):
        raise EmptySetError(f"all {len(refs)} reference transcripts are empty: rates are undefined")

    words = jiwer.process_words(refs, hyps)
    chars = jiwer.process_characters(refs, hyps)
    per_utterance = tuple(
        UtteranceErrors(
            word_edits=_chunk_edits(word_chunks),
            reference_words=len(ref.split()),
            char_edits=_chunk_edits(char_chunks),
            reference_chars=len(ref),
            max_chars=max(len(ref), len(hyp)),
        )
        for ref, hyp, word_chunks, char_chunks in zip(
            refs, hyps, words.alignments, chars.alignments, strict=True
        )
    )
    return SetScores(
        utterances=len(refs),
        words=EditCounts(words.substitutions, words.deletions, words.insertions, words.hits),
        chars=EditCounts(chars.substitutions, chars.deletions, chars.insertions, chars.hits),
        max_chars=sum(u.max_chars for u in per_utterance),
        per_utterance=per_utterance,
    )


@dataclasses.dataclass(frozen=True)
class VocabularyBreakdown:
    """Reference words inside and outside a vocabulary, and how many of each were recognized (aligned
    to an identical hypothesis word)."""

    in_vocabulary: int
    in_vocabulary_hits: int
    out_of_vocabulary: int
    out_of_vocabulary_hits: int

    def summary(self) -> dict[str, float | int]:
        """``oov_rate``: percent of reference words outside the vocabulary; ``iv_word_accuracy`` and
        ``oov_word_accuracy``: percent of those words recognized."""
        total = self.in_vocabulary + self.out_of_vocabulary
        return {
            "oov_rate": _percent(self.out_of_vocabulary, total),
            "iv_word_accuracy": _percent(self.in_vocabulary_hits, self.in_vocabulary),
            "oov_word_accuracy": _percent(self.out_of_vocabulary_hits, self.out_of_vocabulary),
            "oov_words": self.out_of_vocabulary,
        }


@dataclasses.dataclass(frozen=True)
class SpeakerScores:
    """One speaker's share of a set: counts summed over its utterances, rates in percent."""

    speaker: str
    utterances: int
    word_edits: int
    reference_words: int
    char_edits: int
    reference_chars: int

    @property
    def wer(self) -> float:
        return _percent(self.word_edits, self.reference_words)

    @property
    def cer(self) -> float:
        return _percent(self.char_edits, self.reference_chars)


def speaker_of(utt_id: str) -> str:
    """``1089-134686-0000`` -> ``1089``; ``sp0.9-1089-134686-0000`` -> ``1089``."""
    return unperturbed_id(utt_id).partition("-")[0]


def by_speaker(utt_ids: Sequence[str], per_utterance: Sequence[UtteranceErrors]) -> list[SpeakerScores]:
    """Per-speaker counts and rates of one set, sorted by speaker id."""
    if len(utt_ids) != len(per_utterance):
        raise ValueError(f"{len(utt_ids)} utterance ids but {len(per_utterance)} scored utterances")
    groups: dict[str, list[UtteranceErrors]] = {}
    for utt_id, errors in zip(utt_ids, per_utterance, strict=True):
        groups.setdefault(speaker_of(utt_id), []).append(errors)
    return [
        SpeakerScores(
            speaker,
            utterances=len(group),
            word_edits=sum(e.word_edits for e in group),
            reference_words=sum(e.reference_words for e in group),
            char_edits=sum(e.char_edits for e in group),
            reference_chars=sum(e.reference_chars for e in group),
        )
        for speaker, group in sorted(groups.items())
    ]


def vocabulary_breakdown(
    references: Sequence[str], hypotheses: Sequence[str], vocabulary: set[str] | frozenset[str]
) -> VocabularyBreakdown:
    """Count reference words in and out of ``vocabulary`` and their hits (word-level alignment)."""
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses")
    counts = {True: [0, 0], False: [0, 0]}  # in vocabulary -> [words, hits]
    for reference, hypothesis in zip(references, hypotheses, strict=True):
        words = _clean(reference).split()
        if not words:
            continue
        hit = [False] * len(words)
        alignment = jiwer.process_words(_clean(reference), _clean(hypothesis)).alignments[0]
        for chunk in alignment:
            if chunk.type == "equal":
                hit[chunk.ref_start_idx : chunk.ref_end_idx] = [True] * (
                    chunk.ref_end_idx - chunk.ref_start_idx
                )
        for word, recognized in zip(words, hit, strict=True):
            counts[word in vocabulary][0] += 1
            counts[word in vocabulary][1] += recognized
    return VocabularyBreakdown(*counts[True], *counts[False])
