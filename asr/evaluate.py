"""Evaluate checkpoints and exports: WER/CER tables (paper Table 5), beam sweeps (Table 3), ``--watch``.

    python -m asr.evaluate --run RUN_DIR [--checkpoint N] --data OUT/dev-clean OUT/test-clean \\
        [--beam 512] [--lm LM_DIR] [--beam-sweep 64,128,256,512]
    python -m asr.evaluate --model EXPORT_DIR [--backend tflite|tflite-int8|savedmodel|onnx] [--out DIR] ...
    python -m asr.evaluate --watch RUN_DIR [--data OUT/dev-clean]

For each ``--data`` shard directory (written by ``asr.extract``) the model computes logits batch by
batch; each batch is handed to the decoder's process pool while the model computes the next one.
Results go to ``RUN_DIR/eval/<checkpoint>/``: ``table.md`` and ``results.json`` (one row per set:
WER, CER, cer_maxlen, S/D/I, utterances, seconds) and ``<set>.beam<W>.hyp.tsv`` (one line per
utterance: id, word edits, reference words, character edits, reference, hypothesis), and
``speakers.md`` / ``speakers.json`` (each set's WER and CER per speaker, at the widest beam: which
voices carry the errors). ``--beam-sweep`` adds ``sweep.md``: decode seconds, WER and CER per beam
width on each set.

The checkpoint is the run's newest undamaged one (a damaged newer one is skipped with one warning naming
both) or the one at ``--checkpoint``, chosen and loaded as every stage does
(:func:`asr.inference.restore_run`, :func:`asr.inference.load_checkpoint`). ``--model`` evaluates what
``asr.export`` wrote instead, run by ``--backend`` (:func:`asr.inference.open_export`): the same decoding,
tables and files, in ``--out`` (default ``EXPORT_DIR/eval/``) ``/<backend>/``, rows marked with
``backend``; the CTC loss is computed from the export's logits. That output may not be, hold or lie inside
the export's files or an input.

``--watch`` polls the run directory for checkpoints it has not evaluated yet and appends an ``eval``
event (``source: "external"``) per set to ``RUN_DIR/events.jsonl``; it is how ``eval.mode: external``
runs evaluate, possibly on another machine that sees the run directory.

Errors that stop the command print one line ``asr.evaluate: error: ...`` naming the file or value and exit
with status 2: a checkpoint that does not fit the recipe's model, an export directory without the backend's
file, an empty evaluation set, shards written with a different alphabet, a write that fails (disk full: the
line names the file). A missing language model only warns: decoding falls back to beam search without it.
So does a damaged or missing shard (:mod:`asr.shardset`): the utterances before the damage are evaluated and
the rows count the rest (``skipped_utterances``); ``--strict`` makes it an error.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from asr import text
from asr.config import FINITE, Bound, OneLineParser, option_type
from asr.decoding import Decoder, PendingDecode, split_batch
from asr.files import JsonError, WriteError, load_json, os_error_line, read_json, write_json, write_text
from asr.inference import EXPORT_BACKENDS, LogitsFn
from asr.metrics import SetScores, VocabularyBreakdown, by_speaker, score, vocabulary_breakdown
from asr.startup import import_tensorflow

EVAL_DIR = "eval"


class EvaluateError(Exception):
    """A problem the command cannot get past; the message names the file or value (exit 2)."""


# --------------------------------------------------------------------------- evaluation sets


@dataclasses.dataclass(frozen=True)
class EvalSet:
    """The utterances of one shard directory, in shard order."""

    name: str
    path: Path
    utt_ids: tuple[str, ...]
    texts: tuple[str, ...]
    features: tuple[np.ndarray, ...]
    """``float32 [frames, 93]`` per utterance, not normalized (the model's input layer does that)."""
    durations: tuple[float, ...]
    """Seconds of audio per utterance."""
    manifest: dict
    lost: int = 0
    """Utterances in damaged or missing shards that were not read (those the manifest counts)."""
    damage: tuple[str, ...] = ()
    """One line per damaged or missing shard file: which, why, utterances used and lost."""

    def __len__(self) -> int:
        return len(self.utt_ids)

    @property
    def audio_seconds(self) -> float:
        return float(sum(self.durations))


def load_eval_set(
    path: str | os.PathLike, name: str | None = None, key: str = "--data", strict: bool = False
) -> EvalSet:
    """Read a shard directory; raises :class:`EvaluateError` (starting with ``key``, the option or recipe
    key that named it) for a bad or empty one.

    Damaged or missing shards (:mod:`asr.shardset`): by default the utterances before the damage are kept
    and each file gets one warning line on stderr, counted in :attr:`EvalSet.lost`; ``strict`` stops.
    """
    from asr.shardset import ShardReader, ShardReaderError

    path = Path(path)
    utt_ids, texts, feats, durations = [], [], [], []
    try:
        shard_set = ShardReader(path, key, strict)
        for utterance in shard_set.utterances():
            utt_ids.append(utterance["utt_id"])
            texts.append(utterance["text"])
            feats.append(np.asarray(utterance["features"], dtype=np.float32))
            durations.append(utterance["duration"])
    except ShardReaderError as error:
        raise EvaluateError(str(error)) from None
    for warning in shard_set.warnings():
        print(f"asr.evaluate: warning: {warning}", file=sys.stderr, flush=True)
    if not utt_ids:
        raise EvaluateError(f"{key} {path}: the evaluation set is empty (no utterances in its shards)")
    _check_alphabet(key, path, utt_ids, texts)
    return EvalSet(
        name=name or path.resolve().name,
        path=path,
        utt_ids=tuple(utt_ids),
        texts=tuple(texts),
        features=tuple(feats),
        durations=tuple(durations),
        manifest=shard_set.manifest,
        lost=shard_set.lost,
        damage=tuple(shard_set.warnings()),
    )


def _check_alphabet(key: str, path: Path, utt_ids: Sequence[str], texts: Sequence[str]) -> None:
    """Transcripts must be spelled in the model's alphabet (a shard written by other code may not be)."""
    allowed = set(text.SYMBOLS[: text.SEPARATOR_ID])
    for utt_id, transcript in zip(utt_ids, texts, strict=True):
        outside = sorted(set(transcript) - allowed)
        if outside:
            raise EvaluateError(
                f"{key} {path}: utterance {utt_id}: characters outside the alphabet {outside}"
            )


def padded_batches(
    eval_set: EvalSet, batch_size: int
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray, list[list[int]]]]:
    """``(indices [B], features [B, T, 93] zero-padded, frames [B], labels)`` in order of length.

    Sorting by length keeps padding (and so wasted model time) small; ``indices`` map back to the
    set's order.
    """
    if batch_size < 1:
        raise ValueError(f"batch size must be at least 1, got {batch_size}")
    order = sorted(range(len(eval_set)), key=lambda i: eval_set.features[i].shape[0], reverse=True)
    for start in range(0, len(order), batch_size):
        indices = np.asarray(order[start : start + batch_size])
        frames = np.asarray([eval_set.features[i].shape[0] for i in indices], dtype=np.int32)
        dim = eval_set.features[indices[0]].shape[1]
        batch = np.zeros((len(indices), int(frames.max()), dim), dtype=np.float32)
        for row, i in enumerate(indices):
            batch[row, : frames[row]] = eval_set.features[i]
        labels = [text.encode(eval_set.texts[i]) for i in indices]
        yield indices, batch, frames, labels


# --------------------------------------------------------------------------- running a set


@dataclasses.dataclass
class SetResult:
    """One set decoded with one decoder."""

    name: str
    scores: SetScores
    hypotheses: list[str]
    loss: float
    """Mean CTC loss per utterance over utterances where it is finite (nan if none)."""
    seconds: float
    """Wall time of the whole set: logits and decoding, overlapped."""
    model_seconds: float
    """Time spent computing logits (and loss)."""
    decode_wait_seconds: float
    """Time the loop was blocked waiting for decoded text (decoding not hidden behind the model)."""
    decoder: str
    beam_width: int
    audio_seconds: float
    vocabulary: VocabularyBreakdown | None = None
    """Reference words in and out of the LM's dictionary and how many were recognized (with an LM)."""
    language_model: dict | None = None
    """With an LM: its directory (``lm``) and weights (``lm_alpha``, ``lm_beta``): how the row was made."""
    skipped_utterances: int = 0
    """Utterances of the set not evaluated because their shard was damaged or missing."""
    damaged_shards: int = 0
    """Damaged or missing shard files: a row with any is of an incomplete set."""

    def event_fields(self, source: str) -> dict:
        """Fields of an ``eval`` event (see :mod:`asr.events`)."""
        words = self.scores.words
        return {
            "split": self.name,
            "loss": self.loss,
            "wer": self.scores.wer,
            "cer": self.scores.cer,
            "cer_maxlen": self.scores.cer_maxlen,
            "substitutions": words.substitutions,
            "deletions": words.deletions,
            "insertions": words.insertions,
            "words": words.reference_length,
            "decoder": self.decoder,
            "beam_width": self.beam_width,
            "utterances": self.scores.utterances,
            "seconds": self.seconds,
            "source": source,
            **({"skipped_utterances": self.skipped_utterances} if self.damaged_shards else {}),
        }

    def row(self) -> dict:
        return {
            "split": self.name,
            **self.scores.summary(),
            "loss": self.loss,
            "seconds": self.seconds,
            "model_seconds": self.model_seconds,
            "decode_wait_seconds": self.decode_wait_seconds,
            "decoder": self.decoder,
            "beam_width": self.beam_width,
            "audio_seconds": self.audio_seconds,
            "skipped_utterances": self.skipped_utterances,
            "damaged_shards": self.damaged_shards,
            **(self.vocabulary.summary() if self.vocabulary else {}),
            **(self.language_model or {}),
        }


def run_set(
    eval_set: EvalSet,
    logits_fn: LogitsFn,
    decoder: Decoder,
    batch_size: int,
    vocabulary: frozenset[str] | None = None,
) -> SetResult:
    """Logits for every batch, each decoded while the model computes the next; then the scores
    (and, given the LM's dictionary as ``vocabulary``, the in/out-of-vocabulary breakdown)."""
    start = time.perf_counter()
    hypotheses: list[str] = [""] * len(eval_set)
    losses = np.full(len(eval_set), np.nan)
    pending: list[tuple[np.ndarray, PendingDecode]] = []
    model_seconds = wait_seconds = 0.0

    def collect() -> None:
        nonlocal wait_seconds
        indices, handle = pending.pop(0)
        waited = time.perf_counter()
        texts = handle.result()
        wait_seconds += time.perf_counter() - waited
        for i, hypothesis in zip(indices, texts, strict=True):
            hypotheses[i] = hypothesis

    for indices, batch, frames, labels in _progress(eval_set, batch_size):
        begun = time.perf_counter()
        logits, out_frames, loss = logits_fn(batch, frames, labels)
        model_seconds += time.perf_counter() - begun
        losses[indices] = np.asarray(loss, dtype=np.float64)
        pending.append((indices, decoder.submit(split_batch(np.asarray(logits), out_frames))))
        while len(pending) > 1:  # keep one batch decoding while the model computes the next
            collect()
    while pending:
        collect()
    finite = losses[np.isfinite(losses)]
    return SetResult(
        name=eval_set.name,
        scores=score(eval_set.texts, hypotheses),
        hypotheses=hypotheses,
        loss=float(finite.mean()) if finite.size else float("nan"),
        seconds=time.perf_counter() - start,
        model_seconds=model_seconds,
        decode_wait_seconds=wait_seconds,
        decoder=_decoder_kind(decoder),
        beam_width=decoder.beam_width,
        audio_seconds=eval_set.audio_seconds,
        vocabulary=vocabulary_breakdown(eval_set.texts, hypotheses, vocabulary) if vocabulary else None,
        skipped_utterances=eval_set.lost,
        damaged_shards=len(eval_set.damage),
    )


def _decoder_kind(decoder: Decoder) -> str:
    if decoder.beam_width == 1:
        return "greedy"
    return "beam+lm" if decoder.uses_lm else "beam"


def _progress(eval_set: EvalSet, batch_size: int):
    from tqdm import tqdm

    total = -(-len(eval_set) // batch_size)
    return tqdm(
        padded_batches(eval_set, batch_size),
        total=total,
        desc=f"evaluating {eval_set.name}",
        unit="batch",
        leave=False,
        disable=total < 2,
    )


# --------------------------------------------------------------------------- writing results


def hypotheses_tsv(eval_set: EvalSet, result: SetResult) -> str:
    """One line per utterance: id, word edits, reference words, char edits, reference, hypothesis."""
    lines = ["utt_id\tword_edits\treference_words\tchar_edits\treference\thypothesis"]
    for utt_id, reference, hypothesis, errors in zip(
        eval_set.utt_ids, eval_set.texts, result.hypotheses, result.scores.per_utterance, strict=True
    ):
        counts = f"{errors.word_edits}\t{errors.reference_words}\t{errors.char_edits}"
        lines.append(f"{utt_id}\t{counts}\t{reference}\t{hypothesis}")
    return "\n".join(lines) + "\n"


def format_table(results: Sequence[SetResult], title: str = "") -> str:
    """Markdown table like the paper's Table 5, one row per set (rates in percent)."""
    header = "| set | utterances | WER | CER | cer_maxlen | S | D | I | words | loss | decode s |"
    lines = [f"{title}\n" if title else "", header, "|" + "---|" * 11]
    for r in results:
        w = r.scores.words
        lines.append(
            f"| {r.name} | {r.scores.utterances} | {r.scores.wer:.2f} | {r.scores.cer:.2f} | "
            f"{r.scores.cer_maxlen:.2f} | {w.substitutions} | {w.deletions} | {w.insertions} | "
            f"{w.reference_length} | {r.loss:.3f} | {r.seconds:.1f} |"
        )
    table = "\n".join(line for line in lines if line or title) + "\n" + _incomplete_note(results)
    with_vocabulary = [r for r in results if r.vocabulary]
    if not with_vocabulary:
        return table
    vocabulary = [
        "",
        "Reference words in and out of the LM's dictionary (the words of the LM's training text):",
        "",
        "| set | OOV rate % | in-dictionary words recognized % | out-of-dictionary words recognized % |",
        "|---|---:|---:|---:|",
    ]
    for r in with_vocabulary:
        v = r.vocabulary.summary()
        vocabulary.append(
            f"| {r.name} | {v['oov_rate']:.1f} | {v['iv_word_accuracy']:.1f} | {v['oov_word_accuracy']:.1f} |"
        )
    return table + "\n".join(vocabulary) + "\n"


def _incomplete_note(results: Sequence[SetResult]) -> str:
    """A line under the table for each set read with damaged or missing shards: its figures are partial."""
    notes = {
        r.name: f"\n{r.name}: incomplete: {r.skipped_utterances} utterances in {r.damaged_shards} damaged or "
        "missing shard files were not evaluated (the warnings name them)"
        for r in results
        if r.damaged_shards
    }
    return "".join(notes.values()) + ("\n" if notes else "")


def speaker_rows(sets: Sequence[EvalSet], results: Sequence[SetResult]) -> list[dict]:
    """One JSON row per (set, speaker) of these results: counts and rates in percent."""
    by_name = {s.name: s for s in sets}
    rows = []
    for result in results:
        for speaker in by_speaker(by_name[result.name].utt_ids, result.scores.per_utterance):
            rows.append(
                {
                    "split": result.name,
                    "beam_width": result.beam_width,
                    "decoder": result.decoder,
                    **dataclasses.asdict(speaker),
                    "wer": speaker.wer,
                    "cer": speaker.cer,
                }
            )
    return rows


def format_speakers(rows: Sequence[dict], title: str = "") -> str:
    """Markdown: per set, one line per speaker (WER and CER in percent, corpus-level within the speaker)."""
    row = "| {speaker} | {utterances} | {reference_words} | {wer:.2f} | {cer:.2f} |"
    blocks = [title] if title else []
    for split in dict.fromkeys(r["split"] for r in rows):
        lines = [f"{split}:", "", "| speaker | utterances | words | WER | CER |", "|---|---:|---:|---:|---:|"]
        lines += [row.format(**r) for r in rows if r["split"] == split]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"


def format_sweep(results: Sequence[SetResult]) -> str:
    """Markdown table like the paper's Table 3: per set and beam width, seconds, WER, CER."""
    lines = ["| set | beam width | decode s | WER | CER | cer_maxlen |", "|---|---:|---:|---:|---:|---:|"]
    for r in results:
        lines.append(
            f"| {r.name} | {r.beam_width} | {r.seconds:.1f} | {r.scores.wer:.2f} | {r.scores.cer:.2f} | "
            f"{r.scores.cer_maxlen:.2f} |"
        )
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- a checkpoint, several sets


@dataclasses.dataclass(frozen=True)
class DecodeSetting:
    """How to decode: beam width (1: greedy) and the language model directory ("" for none)."""

    beam_width: int
    lm_dir: str = ""
    alpha: float = 0.5
    beta: float = 1.0
    workers: int = 0


def evaluate_checkpoint(
    sets: Sequence[EvalSet],
    logits_fn: LogitsFn,
    settings: Sequence[DecodeSetting],
    batch_size: int,
) -> list[SetResult]:
    """Every set decoded with every setting; one decoder (and process pool) per setting. With an LM,
    each result also says how words in and out of its dictionary fared."""
    from asr.decoding import make_decoder, resolve_lm

    results = []
    for setting in settings:
        with make_decoder(
            setting.beam_width, setting.lm_dir, setting.alpha, setting.beta, setting.workers
        ) as decoder:
            if decoder.uses_lm:
                unigrams = decoder.unigrams
            elif decoder.beam_width == 1 and setting.lm_dir:  # greedy still gets the OOV breakdown
                unigrams = resolve_lm(setting.lm_dir)[1]
            else:
                unigrams = None
            vocabulary = frozenset(unigrams) if unigrams else None
            language_model = None
            if decoder.uses_lm:
                lm_path = str(Path(setting.lm_dir).resolve())
                language_model = {"lm": lm_path, "lm_alpha": setting.alpha, "lm_beta": setting.beta}
            for eval_set in sets:
                result = run_set(eval_set, logits_fn, decoder, batch_size, vocabulary)
                results.append(dataclasses.replace(result, language_model=language_model))
    return results


def save_results(
    run_dir: Path, checkpoint_name: str, sets: Sequence[EvalSet], results: Sequence[SetResult], sweep: bool
) -> Path:
    """A run's results: :func:`write_results` into ``RUN_DIR/eval/<checkpoint>/`` and ``RUN_DIR/eval/``."""
    label = f"Checkpoint {checkpoint_name}"
    return write_results(
        run_dir / EVAL_DIR, checkpoint_name, label, sets, results, sweep, {"checkpoint": checkpoint_name}
    )


def write_results(
    eval_dir: Path,
    name: str,
    label: str,
    sets: Sequence[EvalSet],
    results: Sequence[SetResult],
    sweep: bool,
    fields: dict[str, Any],
) -> Path:
    """Write ``eval_dir/<name>/`` files (``name``: the checkpoint, or an export's backend) and merge the rows,
    each with ``fields`` added, into ``eval_dir/results.json``; ``label`` titles the tables.

    ``results.json`` (``RUN_DIR/eval/results.json`` is read by ``asr.report``) keeps one row per (split, beam
    width, decoder, backend): the newest evaluation replaces an older one of the same kind.
    """
    out = eval_dir / name
    by_name = {s.name: s for s in sets}
    for result in results:
        write_text(
            out / f"{result.name}.beam{result.beam_width}.hyp.tsv",
            hypotheses_tsv(by_name[result.name], result),
        )
    rows = [{**r.row(), **fields} for r in results]
    widest = max(r.beam_width for r in results)
    final = [r for r in results if r.beam_width == widest]
    write_text(out / "table.md", format_table(final, f"{label}, {final[0].decoder} beam {widest}"))
    if sweep:
        write_text(out / "sweep.md", format_sweep(results))
    speakers = speaker_rows(sets, final)
    write_json(out / "speakers.json", speakers)
    write_text(out / "speakers.md", format_speakers(speakers, f"Per speaker, {label[:1].lower()}{label[1:]}"))
    write_json(out / "results.json", rows)

    merged_path = eval_dir / "results.json"
    previous = read_json(merged_path, default=[])
    if not isinstance(previous, list):  # not ours (or damaged): start the merged rows afresh
        previous = []

    def kind(row: dict) -> tuple:
        return row.get("split"), row.get("beam_width"), row.get("decoder"), row.get("backend")

    keys = {kind(r) for r in rows}
    kept = [r for r in previous if isinstance(r, dict) and kind(r) not in keys]
    write_json(merged_path, kept + rows)
    write_text(eval_dir / "table.md", format_table(final, label))
    return out


# --------------------------------------------------------------------------- the model: a run's checkpoint


def _warn(message: str) -> None:
    print(f"asr.evaluate: warning: {message}", file=sys.stderr, flush=True)


def restore_checkpoint(run_dir: Path, step: int | None, recipe) -> tuple[Any, LogitsFn, dict]:
    """The run's checkpoint at ``step`` (default: the newest undamaged one; a damaged newer one is skipped
    with one warning naming both) as the evaluation model's :data:`LogitsFn`: :func:`asr.inference.
    restore_run` with :func:`asr.inference.load_checkpoint`, as every stage restores a checkpoint. Returns the
    :class:`asr.checkpoint.CheckpointInfo`, the :data:`LogitsFn` and the checkpoint's ``epoch``/``step``/
    ``elapsed`` for the event log.

    A checkpoint that does not fit the recipe's model raises :class:`EvaluateError` naming both; one that
    is missing or damaged (or none usable) raises :class:`asr.checkpoint.NoValidCheckpointError`.
    """
    from asr.checkpoint import CheckpointMismatchError
    from asr.inference import NormalizationError, load_checkpoint, restore_run

    def restore(recipe, checkpoint):
        return load_checkpoint(run_dir, checkpoint.path, recipe)

    try:
        _, checkpoint, (logits_fn, info) = restore_run(run_dir, step, restore, _warn, recipe=recipe)
    except CheckpointMismatchError as error:
        raise EvaluateError(f"{error}; recipe {Path(run_dir) / 'recipe.yaml'}") from None
    except NormalizationError as error:
        raise EvaluateError(str(error)) from None
    return checkpoint, logits_fn, info


def load_run_recipe(run_dir: Path):
    from asr.config import ConfigError, load_recipe

    path = run_dir / "recipe.yaml"
    if not path.is_file():
        raise EvaluateError(f"--run {run_dir}: no recipe.yaml (is this a run directory of asr.train?)")
    try:
        return load_recipe(path)
    except ConfigError as error:
        raise EvaluateError(str(error)) from error


# --------------------------------------------------------------------------- the model: an export


def open_exported(export_dir: Path, backend: str):
    """``--model``: the export's :class:`asr.inference.AcousticModel` running ``backend``
    (:func:`asr.inference.open_export`); a directory that is not a usable export is :class:`EvaluateError`."""
    from asr.inference import open_export

    try:
        return open_export(export_dir, backend)
    except (ValueError, OSError) as error:  # ExportNotFoundError, ConfigError, an unreadable model file
        line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        if str(export_dir) not in line:  # the interpreter's own message: say which model it was
            line = f"{export_dir} ({backend}): {line}"
        raise EvaluateError(f"--model: {line}") from None


def with_ctc_loss(logits_fn: LogitsFn) -> LogitsFn:
    """An export's :data:`LogitsFn` (which gives no loss) with the CTC loss per utterance computed from its
    logits by :func:`asr.model.ctc_loss`, the run's evaluation loss; nan where the transcript is empty or
    longer than the output, as there."""

    def logits_and_loss(features: np.ndarray, frames: np.ndarray, labels: Sequence[Sequence[int]]):
        import tensorflow as tf

        from asr.model import ctc_loss

        logits, out, _ = logits_fn(features, frames, labels)
        out = np.asarray(out, np.int64)
        lengths = np.array([len(label) for label in labels], np.int32)
        unfit = (lengths > out) | (lengths == 0)
        dense = np.zeros((len(labels), max(1, int(lengths.max(initial=0)))), np.int32)
        for row, label in enumerate(labels):
            dense[row, : len(label)] = label
        loss = ctc_loss(
            tf.constant(dense),
            tf.constant(np.where(unfit, 1, lengths).astype(np.int32)),
            tf.constant(np.asarray(logits, np.float32)),
            tf.constant(np.maximum(out, 1).astype(np.int32)),
        )
        loss = np.asarray(loss, np.float64)
        loss[unfit | ~np.isfinite(loss)] = np.nan
        return logits, out, loss

    return logits_and_loss


def export_output(out: Path, export_dir: Path, inputs: Sequence[tuple[str, str]]) -> None:
    """Refuse an output directory that is, contains or lies inside what is read (before any work): the
    export (only its ``eval/`` may hold results: the rest is what gets shipped) or an input ``(option,
    path)`` (``--data``, ``--lm``), by :func:`asr.files.refuse_overlap`; or that is an existing file."""
    from asr.files import OverlapError, refuse_overlap

    if out.exists() and not out.is_dir():
        raise EvaluateError(f"--out {out}: exists and is not a directory")
    read = [(option, path) for option, path in inputs if path]
    if not out.resolve().is_relative_to(export_dir.resolve() / EVAL_DIR):
        read.insert(0, ("--model", str(export_dir)))
    try:
        for option, path in read:
            refuse_overlap(out, {option: path})
    except OverlapError as error:
        raise EvaluateError(str(error)) from None


# --------------------------------------------------------------------------- command line


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = OneLineParser(
        prog="python -m asr.evaluate",
        description="Decode shard sets with a checkpoint of a run or an exported model: WER/CER tables, beam "
        "sweeps, --watch.",
    )
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--run", metavar="RUN_DIR", help="run directory of asr.train")
    target.add_argument("--watch", metavar="RUN_DIR", help="evaluate each new checkpoint of a running run")
    target.add_argument("--model", metavar="EXPORT_DIR", help="export directory of asr.export")
    parser.add_argument(
        "--backend",
        choices=EXPORT_BACKENDS,
        help="with --model: which exported model computes the logits (default: tflite, float32)",
    )
    parser.add_argument(
        "--out", metavar="DIR", help=f"with --model: results directory (default: EXPORT_DIR/{EVAL_DIR})"
    )
    count, zero_or_more = option_type(int, Bound(1)), option_type(int, Bound(0))
    parser.add_argument(
        "--checkpoint", type=zero_or_more, metavar="N", help="checkpoint at step N (default: latest)"
    )
    parser.add_argument(
        "--data", nargs="+", metavar="SHARDS", help="shard directories (default: recipe data.dev)"
    )
    parser.add_argument(
        "--beam", type=count, help="beam width; 1 is greedy (default: 512; --watch: recipe's)"
    )
    parser.add_argument("--beam-sweep", metavar="W,W,...", help="decode with each beam width (paper Table 3)")
    parser.add_argument("--lm", metavar="LM_DIR", help="asr.lm output (default: recipe eval.lm)")
    finite = option_type(float, FINITE)
    parser.add_argument("--alpha", type=finite, help="LM weight (default: recipe eval.lm_alpha)")
    parser.add_argument("--beta", type=finite, help="word bonus (default: recipe eval.lm_beta)")
    parser.add_argument("--batch-size", type=count, help="utterances per model batch (default: recipe's)")
    parser.add_argument(
        "--workers",
        type=option_type(int, Bound(0, note="0: all CPU cores")),
        help="decoding processes (default: recipe eval.decode_workers)",
    )
    parser.add_argument(
        "--poll",
        type=option_type(float, Bound(0, low_open=True)),
        default=10.0,
        help="--watch: seconds between looks (default 10)",
    )
    parser.add_argument(
        "--stop-after",
        type=option_type(float, Bound(0, note="0: never")),
        default=0.0,
        help="--watch: stop after this many seconds without a new checkpoint (0: never)",
    )
    parser.add_argument(
        "--strict", action="store_true", help="stop at a damaged or missing shard instead of skipping it"
    )
    args = parser.parse_args(argv)
    for option, value in (("--backend", args.backend), ("--out", args.out)):
        if value is not None and args.model is None:
            parser.error(f"{option} needs --model")
    if args.checkpoint is not None and args.model is not None:
        parser.error("--checkpoint: not with --model (an export holds one checkpoint)")
    if args.beam_sweep:
        try:
            args.beam_sweep = [int(w) for w in args.beam_sweep.split(",") if w.strip()]
        except ValueError:
            parser.error(f"--beam-sweep: expected comma-separated integers, got {args.beam_sweep!r}")
        if not args.beam_sweep or min(args.beam_sweep) < 1:
            parser.error("--beam-sweep: beam widths must be at least 1")
    return args


def _settings(args: argparse.Namespace, recipe, default_beam: int) -> list[DecodeSetting]:
    lm_dir = args.lm if args.lm is not None else recipe.eval.lm
    alpha = args.alpha if args.alpha is not None else recipe.eval.lm_alpha
    beta = args.beta if args.beta is not None else recipe.eval.lm_beta
    workers = args.workers if args.workers is not None else recipe.eval.decode_workers
    widths = args.beam_sweep or [args.beam or default_beam]
    return [DecodeSetting(width, lm_dir, alpha, beta, workers) for width in widths]


def _load_sets(args: argparse.Namespace, recipe) -> list[EvalSet]:
    if args.data:
        return [load_eval_set(path, strict=args.strict) for path in args.data]
    return [load_eval_set(recipe.data.dev, key="data.dev", strict=args.strict)]


def run_command(args: argparse.Namespace) -> int:
    from asr.checkpoint import NoValidCheckpointError

    run_dir = Path(args.run)
    recipe = load_run_recipe(run_dir)
    sets = _load_sets(args, recipe)
    try:
        checkpoint, logits_fn, _ = restore_checkpoint(run_dir, args.checkpoint, recipe)
    except NoValidCheckpointError as error:
        option = "--run" if args.checkpoint is None else f"--checkpoint {args.checkpoint}:"
        raise EvaluateError(f"{option} {error}") from None
    settings = _settings(args, recipe, default_beam=512)
    batch_size = args.batch_size or recipe.eval.batch_size or recipe.train.global_batch
    results = evaluate_checkpoint(sets, logits_fn, settings, batch_size)
    out = save_results(run_dir, checkpoint.name, sets, results, sweep=bool(args.beam_sweep))
    _print_results(results, f"Checkpoint {checkpoint.name}", args.beam_sweep)
    print(f"results in {out}/ and {run_dir / EVAL_DIR / 'results.json'}")
    return 0


def model_command(args: argparse.Namespace) -> int:
    """``--model EXPORT_DIR``: the export's logits (``--backend``), then decoding, scores and files as a
    run's checkpoint, into ``--out`` (default ``EXPORT_DIR/eval/``) ``/<backend>/``."""
    export_dir, backend = Path(args.model), args.backend or "tflite"
    model = open_exported(export_dir, backend)
    recipe = model.recipe
    eval_dir = Path(args.out) if args.out else export_dir / EVAL_DIR
    settings = _settings(args, recipe, default_beam=512)
    inputs = [("--data", str(p)) for p in args.data] if args.data else [("data.dev", recipe.data.dev)]
    lm = ("--lm" if args.lm is not None else "eval.lm", settings[0].lm_dir)
    export_output(eval_dir, export_dir, [*inputs, lm])
    sets = _load_sets(args, recipe)
    batch_size = args.batch_size or recipe.eval.batch_size or recipe.train.global_batch
    results = evaluate_checkpoint(sets, with_ctc_loss(model.logits_fn), settings, batch_size)
    metadata = read_json(export_dir / "export.json", {})
    source = metadata.get("source") if isinstance(metadata, dict) else None
    checkpoint = Path(source).name if isinstance(source, str) and source else ""
    label = f"Export {export_dir} ({backend}{f', {checkpoint}' if checkpoint else ''})"
    fields = {"backend": backend, "model": str(export_dir.resolve()), "checkpoint": checkpoint}
    out = write_results(eval_dir, backend, label, sets, results, bool(args.beam_sweep), fields)
    _print_results(results, label, args.beam_sweep)
    print(f"results in {out}/ and {eval_dir / 'results.json'}")
    return 0


def _print_results(results: Sequence[SetResult], label: str, sweep) -> None:
    widest = max(r.beam_width for r in results)
    print(format_table([r for r in results if r.beam_width == widest], label))
    if sweep:
        print(format_sweep(results))


def watch_command(args: argparse.Namespace) -> int:
    """Evaluate every checkpoint not evaluated yet; append ``eval`` events (source "external")."""
    from asr.checkpoint import NoValidCheckpointError, list_checkpoints
    from asr.events import EventLog

    run_dir = Path(args.watch)
    recipe = load_run_recipe(run_dir)
    sets = _load_sets(args, recipe)
    settings = _settings(args, recipe, default_beam=recipe.eval.beam_width)
    batch_size = args.batch_size or recipe.eval.batch_size or recipe.train.global_batch
    state_path = run_dir / EVAL_DIR / "watched.json"
    done = _watched(state_path)
    last_new = time.monotonic()
    print(f"asr.evaluate: watching {run_dir} for new checkpoints (every {args.poll:g} s)", flush=True)
    while True:
        fresh = [c for c in list_checkpoints(run_dir) if c.name not in done]
        for checkpoint in fresh:
            try:
                _, logits_fn, info = restore_checkpoint(run_dir, checkpoint.step, recipe)
            except NoValidCheckpointError as error:
                _warn(f"{error}; skipped")
                done.append(checkpoint.name)
                continue
            results = evaluate_checkpoint(sets, logits_fn, settings, batch_size)
            save_results(run_dir, checkpoint.name, sets, results, sweep=False)
            with EventLog(run_dir) as events:
                for result in results:
                    events.write(
                        "eval", **info, **result.event_fields("external"), checkpoint=checkpoint.name
                    )
            done.append(checkpoint.name)
            write_json(state_path, done, indent=None)
            summary = ", ".join(f"{r.name} WER {r.scores.wer:.2f} CER {r.scores.cer:.2f}" for r in results)
            print(f"asr.evaluate: {checkpoint.name}: {summary}", flush=True)
            last_new = time.monotonic()
        if args.stop_after and time.monotonic() - last_new > args.stop_after:
            print(f"asr.evaluate: no new checkpoint for {args.stop_after:g} s; stopping", flush=True)
            return 0
        time.sleep(args.poll)


def _watched(state_path: Path) -> list[str]:
    """Checkpoints ``--watch`` has evaluated (``eval/watched.json``); a damaged file stops with one line
    rather than silently evaluating every checkpoint again (and appending their events twice)."""
    if not state_path.is_file():
        return []
    try:
        done = load_json(state_path)
    except JsonError as error:
        raise EvaluateError(f"{error}; delete it to evaluate every checkpoint again") from None
    if not isinstance(done, list) or not all(isinstance(name, str) for name in done):
        raise EvaluateError(f"{state_path}: expected a list of checkpoint names; delete it to start over")
    return done


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    import warnings

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TF's C++ info lines would drown the tables
    warnings.filterwarnings("always", category=UserWarning, module="asr")
    from asr.decoding import DecoderWorkerError

    command = watch_command if args.watch else model_command if args.model else run_command
    try:
        import_tensorflow()
        return command(args)
    except (EvaluateError, WriteError, DecoderWorkerError) as error:
        print(f"asr.evaluate: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # a file that cannot be read (permissions, I/O error)
        print(f"asr.evaluate: error: {os_error_line(error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("asr.evaluate: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
