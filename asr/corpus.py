"""Finding utterances: LibriSpeech-layout subsets or a manifest file, then a cheap header check.

Two inputs give the same :class:`Candidate` records (id, audio path, raw transcript):

* LibriSpeech layout: ``SUBSET/SPEAKER/CHAPTER/SPEAKER-CHAPTER-NNNN.flac`` next to
  ``SPEAKER-CHAPTER.trans.txt`` (lines ``ID TRANSCRIPT``).
* A manifest: CSV with a header row, or JSON lines, with ``audio`` (path relative to the
  manifest file) and ``text``, optionally ``id`` (default: the audio path without suffix).

:func:`probe` then decides, from the transcript and the audio header only (no decoding), whether
an utterance is kept or skipped and why; the reasons are the short strings in :data:`REASONS`.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
from fractions import Fraction
from pathlib import Path

import soundfile

from asr import features, text
from asr.audio import file_problem

AUDIO_SUFFIXES = (".flac", ".wav")
TOO_LONG = "too long"
TOO_SHORT = "too short"
NOT_MONO = "not mono"
UNREADABLE_AUDIO = "unreadable audio"
MISSING_TRANSCRIPT = "missing transcript"
UNMAPPABLE_TEXT = "unmappable text"
EMPTY_TRANSCRIPT = "empty transcript"
UNREADABLE_DIRECTORY = "unreadable directory"
"""A directory of the corpus that cannot be listed (no permission): the audio in it is left out."""
UNREADABLE_TRANSCRIPTS = "unreadable transcripts"
"""A ``.trans.txt`` file that cannot be read: its utterances count as ``missing transcript``."""
WRONG_SAMPLE_RATE = "wrong sample rate"
CORRUPT_AUDIO = "corrupt audio"
"""Decoded without an error, but not what the header promised: fewer or more samples, NaN or infinite
values, samples that differ from a FLAC file's MD5 (found by ``asr.extract`` when it decodes; the detail
after the colon says which)."""
REASONS = (
    TOO_LONG,
    TOO_SHORT,
    NOT_MONO,
    UNREADABLE_AUDIO,
    MISSING_TRANSCRIPT,
    UNMAPPABLE_TEXT,
    EMPTY_TRANSCRIPT,
    WRONG_SAMPLE_RATE,
    CORRUPT_AUDIO,
    UNREADABLE_DIRECTORY,
    UNREADABLE_TRANSCRIPTS,
)
"""Skip reasons, as counted in the manifest (``unmappable text: 'x' 'y'`` counts as ``unmappable text``)."""


class CorpusError(Exception):
    """Input that cannot be used at all (missing directory, unknown subset, bad manifest)."""


@dataclasses.dataclass(frozen=True)
class Candidate:
    """An utterance found in the input, before any check. ``transcript`` is None when absent."""

    utt_id: str
    path: str
    transcript: str | None


@dataclasses.dataclass(frozen=True)
class Planned:
    """An utterance that passed the header checks: normalized text, duration in seconds (from the header;
    for a speed-perturbed copy, of the perturbed audio)."""

    utt_id: str
    path: str
    text: str
    duration: float
    speed: float = 1.0
    """Speed-perturbation factor (1.0: the audio as it is; see :func:`perturbed_length`)."""


@dataclasses.dataclass(frozen=True)
class Skipped:
    """An utterance left out, with its reason (one of :data:`REASONS`, possibly with detail)."""

    utt_id: str
    path: str
    reason: str


def reason_key(reason: str) -> str:
    """The counted reason: ``"unmappable text: '1' '2'"`` → ``"unmappable text"``."""
    return reason.split(":", 1)[0]


# --------------------------------------------------------------------------- LibriSpeech layout


def list_subsets(corpus: Path) -> list[str]:
    """Names of the subset directories of a corpus directory, sorted."""
    return sorted(entry.name for entry in os.scandir(corpus) if entry.is_dir())


def check_subsets(corpus: Path, subsets: list[str]) -> None:
    """Raise :class:`CorpusError` for a missing corpus directory or a subset it does not have."""
    if not corpus.is_dir():
        raise CorpusError(f"corpus directory not found: {corpus}")
    available = list_subsets(corpus)
    for subset in subsets:
        if subset not in available:
            found = ", ".join(available) or "none"
            raise CorpusError(f"unknown subset {subset!r} in {corpus} (subsets found: {found})")


def _read_transcripts(path: Path) -> dict[str, str]:
    """``{id: transcript}`` of a ``.trans.txt`` file; bytes that are not UTF-8 become U+FFFD, in ids as in
    :func:`text_id`."""
    transcripts: dict[str, str] = {}
    with open(path, encoding="utf-8", errors="replace") as handle:
        for line in handle:
            utt_id, _, transcript = line.rstrip("\n").partition(" ")
            if utt_id:
                transcripts[utt_id] = transcript
    return transcripts


def text_id(name: str) -> str:
    """The utterance id of an audio file name (its stem) as text: a name that is not UTF-8 (Latin-1, say,
    which ``os.walk`` gives with surrogate escapes) gets U+FFFD for each undecodable byte, as its id has in
    the ``.trans.txt`` file read by :func:`_read_transcripts`."""
    return os.fsencode(name).decode("utf-8", "replace").rsplit(".", 1)[0]


def librispeech_candidates(corpus: Path, subset: str) -> list[Candidate]:
    """Every audio file of one subset with its transcript line (None when missing), sorted by id."""
    return librispeech_listing(corpus, subset)[0]


def librispeech_listing(corpus: Path, subset: str) -> tuple[list[Candidate], list[Skipped]]:
    """:func:`librispeech_candidates`, and the directories and transcript files that could not be read
    (``Skipped`` with an empty ``utt_id``, the path and :data:`UNREADABLE_DIRECTORY` or
    :data:`UNREADABLE_TRANSCRIPTS` with the OS's reason): what they hold is left out."""
    candidates: list[Candidate] = []
    unreadable: list[Skipped] = []

    def cannot_list(error: OSError) -> None:
        reason = f"{UNREADABLE_DIRECTORY}: {error.strerror or error}"
        unreadable.append(Skipped("", os.path.abspath(error.filename or corpus / subset), reason))

    for directory, _, files in os.walk(corpus / subset, onerror=cannot_list):
        audio = sorted(name for name in files if name.endswith(AUDIO_SUFFIXES))
        if not audio:
            continue
        transcripts: dict[str, str] = {}
        for name in files:
            if name.endswith(".trans.txt"):
                path = Path(directory) / name
                try:
                    transcripts.update(_read_transcripts(path))
                except OSError as error:
                    reason = f"{UNREADABLE_TRANSCRIPTS}: {error.strerror or error}"
                    unreadable.append(Skipped("", os.path.abspath(path), reason))
        for name in audio:
            utt_id = text_id(name)
            path = os.path.abspath(os.path.join(directory, name))
            candidates.append(Candidate(utt_id, path, transcripts.get(utt_id)))
    return sorted(candidates, key=lambda c: c.utt_id), sorted(unreadable, key=lambda s: s.path)


# --------------------------------------------------------------------------- manifest input


def _manifest_rows(path: Path) -> list[tuple[int, dict]]:
    try:
        content = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise CorpusError(f"cannot read manifest {path}: {error}") from None
    first = content.lstrip()[:1]
    if path.suffix in (".jsonl", ".json") or first == "{":
        rows = []
        for number, line in enumerate(content.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise CorpusError(f"manifest {path} line {number}: not JSON ({error.msg})") from None
            if not isinstance(row, dict):
                raise CorpusError(f"manifest {path} line {number}: expected a JSON object")
            rows.append((number, row))
        return rows
    reader = csv.DictReader(content.splitlines())
    if reader.fieldnames is None or "audio" not in reader.fieldnames:
        raise CorpusError(
            f"manifest {path}: CSV header must name an 'audio' column (got {reader.fieldnames})"
        )
    return [(number, row) for number, row in enumerate(reader, start=2)]


def manifest_candidates(path: Path) -> list[Candidate]:
    """Utterances listed in a CSV (with header) or JSON-lines manifest, sorted by id."""
    path = Path(path)
    base = path.parent
    candidates: list[Candidate] = []
    seen: dict[str, int] = {}
    for number, row in _manifest_rows(path):
        audio = row.get("audio")
        if not isinstance(audio, str) or not audio:
            raise CorpusError(f"manifest {path} line {number}: no 'audio' path")
        audio_path = os.path.abspath(base / audio)
        utt_id = str(row.get("id") or Path(audio).with_suffix("").as_posix().replace("/", "-"))
        if utt_id in seen:
            raise CorpusError(f"manifest {path} line {number}: duplicate id {utt_id!r} (line {seen[utt_id]})")
        seen[utt_id] = number
        transcript = row.get("text")
        candidates.append(Candidate(utt_id, audio_path, None if transcript is None else str(transcript)))
    return sorted(candidates, key=lambda c: c.utt_id)


# --------------------------------------------------------------------------- speed perturbation

MAX_SPEED_DENOMINATOR = 100
"""Speed factors are used as the nearest fraction p/q with q <= 100 (exact for 0.9, 1.1, 0.95, ...)."""


def speed_ratio(factor: float) -> tuple[int, int]:
    """``(p, q)``: the fraction p/q nearest ``factor`` with q <= :data:`MAX_SPEED_DENOMINATOR`."""
    ratio = Fraction(factor).limit_denominator(MAX_SPEED_DENOMINATOR)
    return ratio.numerator, ratio.denominator


def perturbed_length(samples: int, factor: float) -> int:
    """Samples of a waveform of ``samples`` samples played ``factor`` times faster (Kaldi's speed
    perturbation: resampled, so tempo, pitch and formants all scale): ``round(samples / factor)``, with
    ``factor`` taken as :func:`speed_ratio`'s fraction."""
    if factor == 1.0:
        return samples
    p, q = speed_ratio(factor)
    return (2 * samples * q + p) // (2 * p)  # round(samples * q / p), halves up, in integers


def speed_id(utt_id: str, factor: float) -> str:
    """Kaldi's id of a speed-perturbed copy: ``sp0.9-<id>``; the id itself for factor 1.0."""
    return utt_id if factor == 1.0 else f"sp{factor:g}-{utt_id}"


def unperturbed_id(utt_id: str) -> str:
    """The id :func:`speed_id` made a copy's id from (``sp0.9-<id>`` -> ``<id>``); any other id as it is."""
    head, separator, rest = utt_id.partition("-")
    is_copy = bool(separator) and head.startswith("sp") and head[2:].replace(".", "", 1).isdigit()
    return rest if is_copy else utt_id


# --------------------------------------------------------------------------- header checks


def probe(candidate: Candidate, max_duration: float, resample: bool, speed: float = 1.0) -> Planned | Skipped:
    """Keep or skip one utterance from its transcript and audio header (no decoding).

    Durations are seconds; ``too short`` means fewer than ``MIN_FRAMES`` feature frames after
    resampling to 16 kHz. What is not a regular file (a FIFO would block the header read forever) is
    ``unreadable audio: REASON`` (:func:`asr.audio.file_problem`). Audio at another rate is kept (to be
    resampled) unless ``resample`` is False, then skipped as ``wrong sample rate``. ``speed`` != 1.0 plans
    the speed-perturbed copy (id :func:`speed_id`): its length, checked against ``max_duration``, is
    :func:`perturbed_length`'s.
    """
    utt_id = speed_id(candidate.utt_id, speed)

    def skip(reason: str) -> Skipped:
        return Skipped(utt_id, candidate.path, reason)

    if candidate.transcript is None:
        return skip(MISSING_TRANSCRIPT)
    try:
        normalized = text.normalize(candidate.transcript)
    except text.UnmappableTextError as error:
        return skip(f"{UNMAPPABLE_TEXT}: " + " ".join(repr(c) for c in error.characters))
    if not normalized:
        return skip(EMPTY_TRANSCRIPT)
    problem = file_problem(candidate.path)  # a FIFO would block the header read forever
    if problem:
        return skip(f"{UNREADABLE_AUDIO}: {problem}")
    try:
        info = soundfile.info(os.fsencode(candidate.path))  # bytes: any file name, UTF-8 or not
    except Exception:  # libsndfile raises several types for missing, empty or garbled files
        return skip(UNREADABLE_AUDIO)
    if info.frames <= 0 or info.samplerate <= 0:
        return skip(UNREADABLE_AUDIO)
    if info.channels != 1:
        return skip(NOT_MONO)
    if info.samplerate != features.SAMPLE_RATE and not resample:
        return skip(WRONG_SAMPLE_RATE)
    duration = info.frames / info.samplerate
    if speed != 1.0:
        samples = perturbed_length(round(duration * features.SAMPLE_RATE), speed)
        duration = samples / features.SAMPLE_RATE
    if duration > max_duration:
        return skip(TOO_LONG)
    if features.num_frames(round(duration * features.SAMPLE_RATE)) < features.MIN_FRAMES:
        return skip(TOO_SHORT)
    return Planned(utt_id, candidate.path, normalized, duration, speed)


def probe_many(
    candidates: list[Candidate], max_duration: float, resample: bool, speeds: tuple[float, ...] = ()
) -> list[Planned | Skipped]:
    """:func:`probe` over a chunk of candidates (one task for a worker process); with ``speeds``, each
    candidate is followed by its speed-perturbed copies in that order."""
    return [
        probe(candidate, max_duration, resample, speed)
        for candidate in candidates
        for speed in (1.0, *speeds)
    ]
