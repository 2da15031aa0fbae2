"""CTC decoders: greedy (beam width 1) and pyctcdecode beam search with a KenLM model and dictionary.

Both take a *list* of per-utterance matrices ``float32 [T_out, 30]`` (frames × alphabet ids of
:mod:`asr.text`), each already cut to the utterance's output length (:func:`split_batch`); the
values may be raw logits or log-probabilities (a log-softmax is applied either way). They return one
transcript per utterance, in the alphabet, with the separation symbol removed.

The separation symbol and the beam search
    The separator (id 28) only exists to break a run of equal letters ("cool" is ``c o _ o l``);
    after collapsing it is deleted, exactly like the blank. Any frame path therefore yields the same
    text whether a frame says "separator" or "blank", so the probability of a text is unchanged when
    the two columns are summed into one blank column (``logaddexp``). The beam search gets those 29
    columns, labels ``[" ", "a".."z", "'", ""]`` with pyctcdecode's blank ``""`` last. Giving the
    separator a printable placeholder label instead would put it *inside* words ("co·ol"), which
    the dictionary and the language model would then treat as unknown words.

Parallel decoding
    :class:`BeamSearchDecoder` keeps one process pool (all CPU cores by default) for its lifetime.
    ``submit`` hands a batch to the pool and returns at once, so the caller can compute the next
    batch's logits while the previous one is decoded; ``PendingDecode.result()`` collects the texts.
    Workers are forked (``spawn``/``forkserver`` would re-import the main module, TensorFlow
    included, in every worker); they only ever run numpy, pyctcdecode and KenLM, never TensorFlow.
    Each builds its own decoder and loads the LM once, in its initializer. The pool is a
    ``concurrent.futures`` one: a worker that dies (a SIGTERM sent to the whole process group by
    ``pkill -f`` or a batch scheduler, an out-of-memory kill) fails the batch with
    :class:`DecoderWorkerError`, where ``multiprocessing.Pool`` replaces the worker and waits forever
    for the lost result (and can hang in ``terminate``). Workers ignore SIGINT: Ctrl-C in a terminal
    reaches the whole foreground process group, and the main process, not the workers, decides what
    an interrupt does (``asr.train`` finishes the evaluation and stops). SIGTERM ends a worker at once,
    whatever handler the forking process had installed.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import warnings
from collections.abc import Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Protocol

import numpy as np

from asr.lm import LM_BINARY, UNIGRAMS, load_unigrams
from asr.pools import stop_pool
from asr.text import BLANK_ID, NUM_SYMBOLS, SEPARATOR_ID, SPACE_ID, SYMBOLS, ctc_collapse, decode

FrameWord = tuple[str, int, int]
"""A word and its output frames ``[start, end)`` within one matrix of logits."""

BEAM_LABELS: tuple[str, ...] = (*SYMBOLS[:SEPARATOR_ID], "")
"""pyctcdecode labels for the 29 beam-search columns: space, a–z, apostrophe, blank ``""`` last."""


class DecoderWorkerError(RuntimeError):
    """A beam-search worker process died while decoding (killed, or out of memory)."""

    def __init__(self) -> None:
        super().__init__(
            "a beam-search decoding process died (killed by a signal, or out of memory?); "
            "nothing saved is lost: rerun the same command to redo the evaluation"
        )


class LanguageModelMissingWarning(UserWarning):
    """Beam search runs without a language model (none configured, or its files are missing)."""


class Decoder(Protocol):
    """What evaluation needs from a decoder."""

    beam_width: int
    uses_lm: bool
    unigrams: list[str] | None
    """The LM's dictionary when ``uses_lm``."""

    def decode(self, logits: Sequence[np.ndarray]) -> list[str]:
        """Texts for a list of ``[T_out, 30]`` matrices."""

    def submit(self, logits: Sequence[np.ndarray]) -> PendingDecode:
        """Start decoding; ``.result()`` returns what :meth:`decode` would."""

    def close(self) -> None: ...


class PendingDecode:
    """Texts of a submitted batch; ``result()`` blocks until they are decoded."""

    def __init__(self, texts: list[str] | None = None, chunks: Sequence[Future] = ()):
        self._texts = texts
        self._chunks = list(chunks)
        """Futures of consecutive slices of the batch, each a list of texts."""

    def ready(self) -> bool:
        return self._texts is not None or all(chunk.done() for chunk in self._chunks)

    def result(self) -> list[str]:
        if self._texts is None:
            self._texts = [text for chunk in self._chunks for text in _worker_result(chunk)]
        return self._texts


def _worker_result(future: Future):
    try:
        return future.result()
    except BrokenProcessPool:
        raise DecoderWorkerError() from None


def split_batch(logits: np.ndarray, lengths: Sequence[int]) -> list[np.ndarray]:
    """Per-utterance matrices from a padded batch.

    ``logits``: ``[B, T, 30]``; ``lengths``: ``[B]`` output frames of each utterance (after the
    convolution's stride). Returns ``B`` arrays ``float32 [lengths[i], 30]``.
    """
    logits = np.asarray(logits)
    if logits.ndim != 3 or logits.shape[-1] != NUM_SYMBOLS:
        raise ValueError(f"expected logits [batch, frames, {NUM_SYMBOLS}], got shape {logits.shape}")
    if len(lengths) != logits.shape[0]:
        raise ValueError(f"{len(lengths)} lengths for a batch of {logits.shape[0]}")
    return [np.asarray(logits[i, : int(n)], dtype=np.float32) for i, n in enumerate(lengths)]


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Log-probabilities over the last axis (idempotent: log-probabilities come back unchanged)."""
    logits = np.asarray(logits, dtype=np.float32)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def beam_log_probs(logits: np.ndarray) -> np.ndarray:
    """``[T, 30]`` logits → ``[T, 29]`` log-probabilities with the separator merged into the blank."""
    logits = np.asarray(logits, dtype=np.float32)
    if logits.ndim != 2 or logits.shape[1] != NUM_SYMBOLS:
        raise ValueError(f"expected one utterance's logits [frames, {NUM_SYMBOLS}], got shape {logits.shape}")
    log_probs = log_softmax(logits)
    blank = np.logaddexp(log_probs[:, SEPARATOR_ID], log_probs[:, BLANK_ID])
    return np.concatenate([log_probs[:, :SEPARATOR_ID], blank[:, None]], axis=1)


def greedy_text(logits: np.ndarray) -> str:
    """Best-path text of one ``[T, 30]`` matrix: argmax per frame, CTC collapse, drop separators."""
    logits = np.asarray(logits)
    if logits.ndim != 2 or logits.shape[1] != NUM_SYMBOLS:
        raise ValueError(f"expected one utterance's logits [frames, {NUM_SYMBOLS}], got shape {logits.shape}")
    return decode(ctc_collapse(np.argmax(logits, axis=1)))


def greedy_frame_words(path: Sequence[int]) -> list[FrameWord]:
    """Words of a best path (one label id per output frame) with their frames ``[start, end)``.

    The same text as :func:`greedy_text` split into words: runs of a label are one symbol,
    blanks and separators are dropped, spaces end words. A word starts at the first frame of its first
    letter and ends after the last frame of its last letter.
    """
    words: list[FrameWord] = []
    letters: list[str] = []
    start = end = 0
    previous = None
    for frame, label in enumerate(int(x) for x in path):
        if label == previous and letters and label not in (BLANK_ID, SEPARATOR_ID, SPACE_ID):
            end = frame + 1  # the same letter held on
        elif label != previous and label == SPACE_ID and letters:
            words.append(("".join(letters), start, end))
            letters = []
        elif label != previous and label not in (BLANK_ID, SEPARATOR_ID, SPACE_ID):
            start = frame if not letters else start
            letters.append(SYMBOLS[label])
            end = frame + 1
        previous = label
    if letters:
        words.append(("".join(letters), start, end))
    return words


class GreedyDecoder:
    """Beam width 1: the most likely symbol per frame, collapsed. Fast enough to run inline."""

    beam_width = 1
    uses_lm = False
    unigrams = None

    def decode(self, logits: Sequence[np.ndarray]) -> list[str]:
        return [greedy_text(matrix) for matrix in logits]

    def words(self, logits: np.ndarray) -> list[FrameWord]:
        """Words and their output frames ``[start, end)`` of one ``[T_out, 30]`` matrix."""
        return greedy_frame_words(np.argmax(logits, axis=1)) if len(logits) else []

    def submit(self, logits: Sequence[np.ndarray]) -> PendingDecode:
        return PendingDecode(texts=self.decode(logits))

    def close(self) -> None:
        pass

    def describe(self) -> str:
        return "greedy"

    def __enter__(self) -> GreedyDecoder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def resolve_lm(lm_dir: str | os.PathLike | None) -> tuple[str | None, list[str] | None]:
    """``(lm.binary path, unigrams)`` of an ``asr.lm`` output directory, or ``(None, None)`` with a
    :class:`LanguageModelMissingWarning` when there is none to use."""
    if not lm_dir:
        warnings.warn(
            "beam search without a language model (no LM directory given)",
            LanguageModelMissingWarning,
            stacklevel=3,
        )
        return None, None
    binary = Path(lm_dir) / LM_BINARY
    unigrams = Path(lm_dir) / UNIGRAMS
    missing = [str(p) for p in (binary, unigrams) if not p.is_file()]
    if missing:
        warnings.warn(
            f"language model file(s) missing: {', '.join(missing)}; beam search continues without a "
            f"language model (build one with python -m asr.lm)",
            LanguageModelMissingWarning,
            stacklevel=3,
        )
        return None, None
    return str(binary), load_unigrams(lm_dir)


def _build_pyctcdecoder(lm_path: str | None, unigrams: list[str] | None, alpha: float, beta: float):
    import logging

    from pyctcdecode import build_ctcdecoder

    # pyctcdecode logs alphabet guesses at INFO/WARNING on every build; ours are deliberate.
    logging.getLogger("pyctcdecode").setLevel(logging.ERROR)
    return build_ctcdecoder(
        list(BEAM_LABELS), kenlm_model_path=lm_path, unigrams=unigrams, alpha=alpha, beta=beta
    )


_WORKER: dict = {}


def _init_worker(lm_path, unigrams, alpha, beta, options) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # not the forking process's handler (asr.train's StopFlag)
    _WORKER["decoder"] = _build_pyctcdecoder(lm_path, unigrams, alpha, beta)
    _WORKER["options"] = options


def _decode_in_worker(log_probs: Sequence[np.ndarray]) -> list[str]:
    return [_WORKER["decoder"].decode(matrix, **_WORKER["options"]) for matrix in log_probs]


def _best_beam_words(decoder, log_probs: np.ndarray, options: dict) -> list[FrameWord]:
    """The best beam's words with their frames (pyctcdecode's ``decode_beams``, same pruning as decode)."""
    beams = decoder.decode_beams(log_probs, **options)
    return [(word, int(a), int(b)) for word, (a, b) in beams[0][2]]


def _words_in_worker(log_probs: np.ndarray) -> list[FrameWord]:
    return _best_beam_words(_WORKER["decoder"], log_probs, _WORKER["options"])


class BeamSearchDecoder:
    """CTC prefix beam search (pyctcdecode) with an optional KenLM model and dictionary.

    ``lm_dir``: an ``asr.lm`` output directory (``lm.binary`` + ``unigrams.txt``); empty or missing
    files → a :class:`LanguageModelMissingWarning` and beam search without LM. ``alpha`` weighs the
    LM log-probability, ``beta`` is the bonus per word. ``workers``: decoding processes (0: all CPU
    cores; 1: decode in this process, no pool).
    """

    def __init__(
        self,
        beam_width: int = 256,
        lm_dir: str | os.PathLike | None = None,
        alpha: float = 0.5,
        beta: float = 1.0,
        workers: int = 0,
        token_min_logp: float = -5.0,
        beam_prune_logp: float = -10.0,
    ):
        if beam_width < 1:
            raise ValueError(f"beam width must be at least 1, got {beam_width}")
        self.beam_width = beam_width
        self.alpha, self.beta = alpha, beta
        self.lm_path, self.unigrams = resolve_lm(lm_dir)
        self.uses_lm = self.lm_path is not None
        self.workers = workers if workers > 0 else (os.cpu_count() or 1)
        self._options = {
            "beam_width": beam_width,
            "token_min_logp": token_min_logp,
            "beam_prune_logp": beam_prune_logp,
        }
        self._pool = None
        self._local = None
        if self.workers == 1:
            self._local = _build_pyctcdecoder(self.lm_path, self.unigrams, alpha, beta)
        else:
            self._pool = ProcessPoolExecutor(
                self.workers,
                mp_context=multiprocessing.get_context("fork"),
                initializer=_init_worker,
                initargs=(self.lm_path, self.unigrams, alpha, beta, self._options),
            )

    def describe(self) -> str:
        lm = f"LM {self.lm_path} (alpha {self.alpha}, beta {self.beta})" if self.uses_lm else "no LM"
        return f"beam {self.beam_width}, {lm}, {self.workers} process(es)"

    def submit(self, logits: Sequence[np.ndarray]) -> PendingDecode:
        log_probs = [beam_log_probs(matrix) for matrix in logits]
        if self._pool is None:
            if self._local is None:
                raise RuntimeError("decoder is closed")
            return PendingDecode(texts=[self._local.decode(lp, **self._options) for lp in log_probs])
        size = max(1, len(log_probs) // (self.workers * 4))
        return PendingDecode(chunks=[self._submit(_decode_in_worker, log_probs[i : i + size])
                                     for i in range(0, len(log_probs), size)])  # fmt: skip

    def decode(self, logits: Sequence[np.ndarray]) -> list[str]:
        return self.submit(logits).result()

    def words(self, logits: np.ndarray) -> list[FrameWord]:
        """The best beam's words and their output frames ``[start, end)`` of one ``[T_out, 30]`` matrix
        (the frames pyctcdecode aligns each word to; same text as :meth:`decode`)."""
        if not len(logits):
            return []
        log_probs = beam_log_probs(logits)
        if self._pool is not None:
            return _worker_result(self._submit(_words_in_worker, log_probs))
        if self._local is None:
            raise RuntimeError("decoder is closed")
        return _best_beam_words(self._local, log_probs, self._options)

    def _submit(self, function, *args) -> Future:
        """``function(*args)`` in a worker; a pool already broken by a dead worker raises at once."""
        try:
            return self._pool.submit(function, *args)
        except BrokenProcessPool:
            raise DecoderWorkerError() from None

    def close(self) -> None:
        if self._pool is not None:
            stop_pool(self._pool)
            self._pool = None
        if self._local is not None:
            self._local.cleanup()
            self._local = None

    def __enter__(self) -> BeamSearchDecoder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def make_decoder(
    beam_width: int,
    lm_dir: str | os.PathLike | None = None,
    alpha: float = 0.5,
    beta: float = 1.0,
    workers: int = 0,
) -> GreedyDecoder | BeamSearchDecoder:
    """Greedy for beam width 1, otherwise beam search (with the LM when ``lm_dir`` has one)."""
    if beam_width == 1:
        return GreedyDecoder()
    return BeamSearchDecoder(beam_width, lm_dir, alpha, beta, workers)
