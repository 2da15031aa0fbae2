"""Transcribe audio files with a trained model: text per file, word times, long audio in windows.

    python -m asr.transcribe FILE_OR_DIR... (--run RUN_DIR [--checkpoint STEP] [--xla]
                                             | --model EXPORT_DIR [--backend tflite|tflite-int8|...])
        [--beam N [--lm LM_DIR] [--alpha A] [--beta B]] [--window-seconds S] [--overlap-seconds S]
        [--output OUT.jsonl]

Inputs
    Audio files (any suffix), directories (searched recursively for :data:`AUDIO_SUFFIXES`) and list files
    given as ``@LIST`` (one file or directory per line, relative to the current directory; blank lines and
    lines starting with ``#`` are skipped). Files are transcribed in the order given, directories in sorted
    order; a file named twice is transcribed once, where it first appears: "twice" means the same file
    (device and inode), however it is spelled (``a/../a/x.wav``, a symlink, a hard link). File names may be
    any bytes (a Latin-1 name is read like any other); they are printed with each byte that is not UTF-8 as
    ``\\xNN`` (:func:`asr.audio.display`), in the JSON records too. A directory that cannot be searched
    (no permission) is an error line and counts as a failed file; so is a file with an audio suffix inside
    a directory that is not a regular file (a FIFO, a socket, a symlink loop).

Audio
    Read by :mod:`asr.audio`, as ``asr.extract`` reads it: any sample rate and channel count, soundfile
    (librosa, i.e. audioread/ffmpeg, for formats libsndfile cannot read), channels averaged to mono,
    resampled to 16 kHz with soxr (high quality); a file that needed either gets one ``note`` line on
    stderr (``44100 Hz stereo -> 16000 Hz mono``). A file whose level is below :data:`QUIET_DBFS` (-45
    dBFS; level: the RMS of its loudest 5 % of 30 ms frames, :func:`asr.audio.level_dbfs`), or that is
    silent, gets a ``warning`` line naming its level and peak: the model hears little of it and its text
    may be empty or wrong (the speech the models here were trained on is at -25 to -15 dBFS).

Output
    stdout: one line per file, ``PATH<TAB>TEXT``; when exactly one file is transcribed (given or found),
    only its text. ``--output OUT.jsonl`` (written atomically once every file is done): one JSON object per
    transcribed file with ``path``, ``text``, ``duration`` (s), ``sample_rate`` and ``channels`` (of the
    file), ``level_dbfs`` and ``peak_dbfs`` (null for silence), ``windows``, ``words`` (``[{"word",
    "start", "end"}]``, seconds from the start of the file) and ``timings`` (s): ``load`` (read, downmix,
    resample), ``features_network`` (features and model; the files of one model batch share its time in
    proportion to their durations) and ``decode``. ``--output`` is checked before anything is read
    (:func:`check_output`): it may not be one of the inputs (any spelling, symlink or hard link; a list
    file included) or lie inside an input directory, be a directory or another non-regular file, or be
    somewhere this process cannot write (a temporary file is created in its nearest existing directory,
    then removed); each is one error line naming ``--output``, exit status 2.

    When stdout's reader goes away (``... | head -1``), nothing more is printed; with ``--output`` every
    file is still transcribed and the file written, without it the command stops at once. Either way it
    ends quietly (no traceback, no error line) with exit status 141, as a tool killed by SIGPIPE.

Long audio: overlapping windows
    The model was trained on utterances of at most ``data.max_frames`` 10 ms frames; a file longer than
    the window (default: that length; at most :data:`MAX_WINDOW_SECONDS`) is cut into windows of
    ``--window-seconds`` that overlap by ``--overlap-seconds`` (default: 3 s, or a quarter of the window if
    that is less; at most half the window), the last one shorter, ending with the file
    (:func:`plan_windows`). Both are rounded to 16 kHz samples; an overlap of at most half the window in
    seconds stays at most half of it in samples (rounding may take one sample off it). Each window is
    transcribed on its own, then the word lists are stitched (:func:`stitch`): window i contributes the
    words whose centre (mean of start and end time) lies in the half-open interval from its seam with
    window i-1 (included) to its seam with window i+1 (excluded), so a word centred exactly on a seam is
    kept once, by the later window. The seam is the midpoint of the overlap, moved to the centre of the
    nearest pause, a stretch of the overlap in which neither window heard a word (:func:`seam`). The two
    windows time a word they both heard slightly differently (each has its own 30 ms frame grid and
    context); a seam inside no word of either keeps every word on the same side in both, so a word near the
    midpoint cannot be lost or doubled. A word shorter than the overlap lies whole in at least one of the
    two windows; the part of it the other window's edge cuts off reaches that edge, so the seam (inside the
    overlap, outside the part) puts the part on the far side of it and the whole word on the near side:
    kept once, whole. With no pause in the overlap (no gap between words for the whole overlap) the seam
    stays at the midpoint.

Word times
    From the CTC alignment of each window: a word starts at the first output frame of its first letter
    and ends after the last frame of its last letter (greedy: the argmax path; beam search: pyctcdecode's
    word frame spans, the same convention). Output frame ``j`` of a window starting at ``offset`` seconds
    is at ``offset + j * conv_stride * 0.01`` s. That ignores the convolution's receptive field (output
    frame ``j`` sees input frames ``j * stride .. j * stride + kernel - 1``, so the true centre of what it
    heard is about ``kernel / 2 * 10 ms`` = 55 ms later): times are early by up to one kernel width and
    quantized to ``conv_stride * 10 ms``. Times are clipped to ``[0, duration]``.

Decoding
    ``--beam 1`` (the default) is greedy decoding, which uses no language model: ``--lm``, ``--alpha`` or
    ``--beta`` without ``--beam N`` (N > 1) is a usage error. An ``--lm`` given on the command line must
    hold a readable ``lm.binary`` and ``unigrams.txt`` (checked before anything is read: one error line
    naming ``--lm``, exit status 2); the recipe's ``eval.lm``, used when ``--lm`` is not given, may be
    missing: beam search then goes on without a language model, with a warning.

Errors and exit status
    A file that cannot be transcribed (missing, a symlink loop, not a regular file, not readable, not
    audio, empty, truncated or damaged: :mod:`asr.audio`) is one line ``asr.transcribe: error: PATH:
    REASON`` on stderr and skipped; the others are transcribed; exit status 1 if any file failed, else 0
    (141 once stdout's reader has gone). Usage errors (no ``--run``/``--model``, a run or export directory
    that cannot be opened or holds a malformed file, no audio found, an ``--output`` or ``--lm`` refused as
    above, a window or overlap out of range) are one line, exit status 2, before any audio is read.
    The last stderr line is a timing summary: start-up (from the start of the process to the model and
    decoder ready: interpreter, imports, model load) and its share of the total, seconds of audio,
    real-time factor (seconds of processing per second of audio, start-up excluded and included). The
    process start is Linux's record of it (:func:`asr.clock.process_seconds`: exact to a 10 ms clock tick,
    never less than the truth), so times are printed to 0.01 s.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import math
import os
import signal
import stat
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from asr import audio
from asr.audio import Audio, display
from asr.config import FINITE, Bound, OneLineParser, option_type
from asr.decoding import BeamSearchDecoder, FrameWord, GreedyDecoder
from asr.features import FRAME_SECONDS, SAMPLE_RATE, num_frames
from asr.files import WriteError, write_text
from asr.lm import LM_BINARY, UNIGRAMS
from asr.startup import import_tensorflow
from asr.text import SYMBOLS

PROG = "asr.transcribe"
AUDIO_SUFFIXES = frozenset(
    {".wav", ".wave", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".m4a", ".mp4", ".aac", ".wma", ".webm",
     ".aif", ".aiff", ".aifc", ".au", ".snd", ".caf", ".w64", ".rf64", ".sph", ".nist", ".voc"}
)  # fmt: skip
"""File name endings searched for in directories (any case); a file named directly may have any."""
DEFAULT_OVERLAP_SECONDS = 3.0
"""Default overlap of consecutive windows (s); at most a quarter of the window."""
MAX_WINDOW_SECONDS = 3600.0
"""Longest ``--window-seconds``: an hour of audio in one model call (features of ~134 MB) is already far
beyond the ~17 s the models are trained on."""
QUIET_DBFS = -45.0
"""A file whose level (:func:`asr.audio.level_dbfs`) is below this gets a warning. The bundled corpora's
speech is at -25 to -15 dBFS (the level of each utterance's loudest 5 %); 20 dB quieter shifts every log-Mel
feature by ln(100) = 4.6, 1.5 of the training features' typical standard deviation (3.1), and puts the
typical band (mean log-Mel -10) below the features' floor (ln 1e-6 = -13.8), where it is no longer heard."""
EXIT_BROKEN_PIPE = 128 + signal.SIGPIPE
"""Exit status once stdout's reader has gone (``| head``), as a tool killed by SIGPIPE has."""


class UsageError(Exception):
    """A problem with the command line or the model; one line, exit status 2."""


class Model(Protocol):
    """What transcription needs from :class:`asr.inference.AcousticModel`."""

    recipe: Any
    source: str

    @property
    def max_frames(self) -> int: ...

    def run_waveforms(self, waveforms: Sequence[np.ndarray]) -> list[np.ndarray]: ...


class WordDecoder(Protocol):
    """A decoder that gives words with their output frames (:mod:`asr.decoding`'s decoders)."""

    def words(self, logits: np.ndarray) -> list[FrameWord]: ...

    def close(self) -> None: ...


# --------------------------------------------------------------------------- word times and stitching


@dataclasses.dataclass(frozen=True)
class Word:
    """A recognized word and where it was heard, in seconds from the start of the file."""

    word: str
    start: float
    end: float

    @property
    def centre(self) -> float:
        """Mean of start and end (s): the time that decides which window keeps the word."""
        return (self.start + self.end) / 2

    def to_json(self) -> dict[str, Any]:
        return {"word": self.word, "start": round(self.start, 3), "end": round(self.end, 3)}


@dataclasses.dataclass(frozen=True)
class WindowWords:
    """The words recognized in one window and the window's extent (s from the start of the file)."""

    start: float
    end: float
    words: tuple[Word, ...]


def word_times(spans: Sequence[FrameWord], stride: int, offset: float, limit: float) -> list[Word]:
    """Words of one window in seconds: output frame ``j`` is at ``offset + j * stride * 0.01`` s (the
    convolution's kernel offset ignored, see the module docstring), clipped to ``[0, limit]``."""
    step = stride * FRAME_SECONDS
    times = [(word, offset + a * step, offset + b * step) for word, a, b in spans]
    return [Word(word, min(max(a, 0.0), limit), min(max(b, 0.0), limit)) for word, a, b in times]


def stitch(windows: Sequence[WindowWords]) -> list[Word]:
    """One word list from overlapping windows (in time order): window i keeps the words whose centre lies
    from its seam with window i-1 up to (not including) its seam with window i+1 (:func:`seam`)."""
    kept: list[Word] = []
    low = -math.inf
    for i, window in enumerate(windows):
        high = math.inf if i == len(windows) - 1 else seam(window, windows[i + 1], low)
        kept.extend(word for word in window.words if low <= word.centre < high)
        low = high
    return kept


def seam(earlier: WindowWords, later: WindowWords, after: float = -math.inf) -> float:
    """Where (s) ``later`` takes over from ``earlier``: the centre of the pause nearest to the midpoint of
    their overlap, a pause being a stretch of the overlap (from ``after`` on) inside no word of either
    window; the midpoint itself if there is none. A seam inside no word of either window puts each word on
    the same side of it whichever window heard it, however much their times for it differ."""
    low, high = max(later.start, after), earlier.end
    middle = min(max((later.start + earlier.end) / 2, low), high)
    spans = [(w.start, w.end) for w in (*earlier.words, *later.words) if w.end >= low and w.start <= high]
    gaps = pauses(spans, low, high)
    if not gaps:
        return middle
    a, b = min(gaps, key=lambda gap: max(gap[0] - middle, middle - gap[1], 0.0))
    return (a + b) / 2


def pauses(spans: Sequence[tuple[float, float]], low: float, high: float) -> list[tuple[float, float]]:
    """The open stretches of ``[low, high]`` (s) that no span ``[start, end]`` touches, in time order."""
    found, at = [], low
    for start, end in sorted(spans):
        if start > at:
            found.append((at, min(start, high)))
        at = max(at, end)
    if at < high:
        found.append((at, high))
    return [(a, b) for a, b in found if b > a]


def plan_windows(samples: int, window: int, overlap: int) -> list[tuple[int, int]]:
    """Windows ``[start, end)`` (samples) covering ``samples``: one if it fits in ``window``, else windows
    of ``window`` samples every ``window - overlap``, the last one ending with the file (shorter, but
    longer than ``overlap``). ``overlap`` is at most half the window, so that a window overlaps only its
    neighbours and the seams between windows are in time order."""
    if not 0 <= 2 * overlap <= window:
        raise ValueError(f"overlap {overlap} must be at least 0 and at most half the window {window}")
    if samples <= window:
        return [(0, samples)]
    step = window - overlap
    count = 1 + math.ceil((samples - window) / step)
    return [(i * step, min(i * step + window, samples)) for i in range(count)]


# --------------------------------------------------------------------------- inputs


@dataclasses.dataclass(frozen=True)
class Unsearchable:
    """A directory among the inputs (or inside one) that could not be searched: one error line, counted
    as a failed file."""

    path: Path
    reason: str


Entry = Path | Unsearchable
"""One item to transcribe (a file) or to report (a directory that could not be searched)."""


@dataclasses.dataclass
class Inputs:
    """What the command line names: the entries in order, each file once, and what :func:`check_output`
    compares ``--output`` with."""

    entries: list[Entry]
    identities: dict[tuple[int, int], Path]
    """``(st_dev, st_ino)`` of every existing input file, directory and list file: the file itself,
    however it is spelled (``a/../a/x.wav``, a symlink, a hard link)."""
    directories: list[Path]
    """Directories named (on the command line or in a list), resolved."""


def find_audio(inputs: Sequence[str]) -> Inputs:
    """The files to transcribe: files as given, directories searched recursively (sorted), ``@LIST`` files
    expanded; a file named twice (same device and inode, however spelled) is kept once, where it first
    appears. Raises :class:`UsageError` when a list file cannot be read or nothing was found. A missing
    file is kept (it is reported when it is read)."""
    found = Inputs([], {}, [])
    seen: set[tuple[int, int] | str] = set()
    for item in inputs:
        for entry in _expand(item, found):
            path = entry.path if isinstance(entry, Unsearchable) else entry
            identity = _identity(path)
            key = identity or os.path.abspath(path)  # what cannot be stat'ed: by its name
            if key in seen:
                continue
            seen.add(key)
            found.entries.append(entry)
            if identity is not None:
                found.identities.setdefault(identity, path)
    if not found.entries:
        suffixes = " ".join(sorted(AUDIO_SUFFIXES))
        named = " ".join(display(item) for item in inputs)
        raise UsageError(f"no audio files found in {named} (looked for {suffixes})")
    return found


def _identity(path: Path) -> tuple[int, int] | None:
    """``(st_dev, st_ino)`` of the file ``path`` names (symlinks followed), None when it cannot be stat'ed."""
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_dev, info.st_ino


def _remember(path: Path, found: Inputs) -> None:
    key = _identity(path)
    if key is not None:
        found.identities.setdefault(key, path)


def _expand(item: str, found: Inputs) -> Iterator[Entry]:
    if item.startswith("@"):
        listed = Path(item[1:])
        try:
            lines = listed.read_bytes().splitlines()
        except OSError as error:
            raise UsageError(f"{display(item)}: cannot read the list file ({error.strerror})") from None
        _remember(listed, found)
        for line in map(os.fsdecode, lines):  # a list names any file, UTF-8 or not
            if line.strip() and not line.lstrip().startswith("#"):
                yield from _expand_path(Path(line.strip()), found)
    else:
        yield from _expand_path(Path(item), found)


def _expand_path(path: Path, found: Inputs) -> Iterator[Entry]:
    if not path.is_dir():
        yield path
        return
    _remember(path, found)
    found.directories.append(Path(os.path.realpath(path)))
    entries: list[Entry] = []

    def cannot_search(error: OSError) -> None:
        where = Path(error.filename) if error.filename else path
        entries.append(Unsearchable(where, f"cannot search the directory ({audio.os_reason(error)})"))

    for directory, _, names in os.walk(path, onerror=cannot_search):
        # every name with an audio suffix that is no directory: a FIFO or a symlink loop is an error line
        entries += [Path(directory, name) for name in names if Path(name).suffix.lower() in AUDIO_SUFFIXES]
    yield from sorted(entries, key=lambda entry: entry.path if isinstance(entry, Unsearchable) else entry)


def check_output(output: str, inputs: Inputs) -> None:
    """Refuse, before any work, an ``--output`` that is one of the inputs (any spelling, symlink or hard
    link), lies inside an input directory, is a directory or not a regular file, or cannot be written
    (its nearest existing directory: a temporary file is created there and removed)."""
    named = f"--output {display(output)}"
    try:
        info = os.stat(output)
    except FileNotFoundError:
        info = None
    except OSError as error:
        raise UsageError(f"{named}: {audio.os_reason(error)}") from None
    if info is not None:
        same = inputs.identities.get((info.st_dev, info.st_ino))
        if same is not None:
            raise UsageError(f"{named}: is the input {display(same)}; it would be overwritten")
        if stat.S_ISDIR(info.st_mode):
            raise UsageError(f"{named}: is a directory")
        if not stat.S_ISREG(info.st_mode):
            raise UsageError(f"{named}: not a regular file")
    resolved = Path(os.path.realpath(output))
    for directory in inputs.directories:
        if resolved.is_relative_to(directory):
            raise UsageError(f"{named}: lies inside the input directory {display(directory)}")
    parent = resolved.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise UsageError(f"{named}: {display(parent)} is not a directory")
    try:
        handle, probe = tempfile.mkstemp(prefix=f".{resolved.name}.probe-", dir=parent)
        os.close(handle)
        os.unlink(probe)
    except OSError as error:
        raise UsageError(f"{named}: cannot write in {display(parent)} ({audio.os_reason(error)})") from None


# --------------------------------------------------------------------------- decoders with word frames


def make_word_decoder(beam_width: int, lm_dir: str | None, alpha: float, beta: float) -> WordDecoder:
    """Greedy for beam width 1, else beam search; the LM's warnings become one stderr line each."""
    if beam_width == 1:
        return GreedyDecoder()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        decoder = BeamSearchDecoder(beam_width, lm_dir, alpha, beta, workers=1)
    for warning in caught:
        print(f"{PROG}: warning: {warning.message}", file=sys.stderr, flush=True)
    return decoder


def check_lm(lm_dir: str) -> None:
    """:class:`UsageError` naming ``--lm`` unless ``lm_dir`` holds a readable ``asr.lm`` output (``lm.binary``
    and ``unigrams.txt``, regular files)."""
    if not os.path.isdir(lm_dir):
        reason = audio.file_problem(lm_dir) or "not a directory"
        raise UsageError(f"--lm {display(lm_dir)}: {reason} (an output directory of asr.lm)")
    for name in (LM_BINARY, UNIGRAMS):
        path = Path(lm_dir, name)
        problem = audio.file_problem(path)
        if problem is None:
            try:
                with open(path, "rb") as handle:
                    handle.read(1)
            except OSError as error:
                problem = audio.os_reason(error)
        if problem:
            raise UsageError(f"--lm {display(lm_dir)}: {display(path)}: {problem} (build it with asr.lm)")


# --------------------------------------------------------------------------- transcription


@dataclasses.dataclass(frozen=True)
class Settings:
    """How to cut files: window and overlap lengths in samples (16 kHz)."""

    window: int
    overlap: int


@dataclasses.dataclass
class Transcript:
    """One file's result."""

    path: Path
    audio: Audio
    words: list[Word]
    windows: int
    timings: dict[str, float]
    """Seconds: ``load``, ``features_network``, ``decode``."""
    level: tuple[float, float]
    """``(level, peak)`` in dBFS (:func:`asr.audio.level_dbfs`)."""

    @property
    def text(self) -> str:
        return " ".join(word.word for word in self.words)

    def to_json(self) -> dict[str, Any]:
        level, peak = (round(value, 1) if math.isfinite(value) else None for value in self.level)
        return {
            "path": display(self.path),
            "text": self.text,
            "duration": round(self.audio.seconds, 3),
            "sample_rate": self.audio.sample_rate,
            "channels": self.audio.channels,
            "level_dbfs": level,
            "peak_dbfs": peak,
            "windows": self.windows,
            "words": [word.to_json() for word in self.words],
            "timings": {key: round(value, 4) for key, value in self.timings.items()},
        }


@dataclasses.dataclass
class Loaded:
    """A file read and cut into windows, waiting for its batch."""

    path: Path
    audio: Audio
    windows: list[tuple[int, int]]
    load_seconds: float
    level: tuple[float, float]


Failed = tuple[Path, str]
"""A file (or a directory) that could not be transcribed and why (one line, without the path)."""


def run_windows(model: Model, waveforms: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Logits ``float32 [T_out, 30]`` per waveform, in chunks of the model's batch size; a waveform too
    short for one output frame gets ``[0, 30]`` without running the model."""
    kernel = model.recipe.model.conv_kernel
    usable = [i for i, w in enumerate(waveforms) if num_frames(len(w)) >= kernel]
    results = [np.zeros((0, len(SYMBOLS)), np.float32) for _ in waveforms]
    batch = max(1, int(getattr(model, "batch_size", 16)))
    for start in range(0, len(usable), batch):
        rows = usable[start : start + batch]
        for i, logits in zip(rows, model.run_waveforms([waveforms[i] for i in rows]), strict=True):
            results[i] = logits
    return results


def window_words(
    decoder: WordDecoder, logits: np.ndarray, start: int, end: int, stride: int, limit: float
) -> WindowWords:
    """The words of one window ``[start, end)`` (samples) decoded from its logits, times in seconds from
    the start of the file, clipped to ``limit`` (the file's duration, s)."""
    offset = start / SAMPLE_RATE
    words = word_times(decoder.words(logits), stride, offset, limit)
    return WindowWords(offset, end / SAMPLE_RATE, tuple(words))


def transcribe_batch(model: Model, decoder: WordDecoder, batch: Sequence[Loaded]) -> list[Transcript]:
    """Every window of ``batch`` through the model in one go, then each file decoded and stitched."""
    waveforms = [item.audio.samples[a:b] for item in batch for a, b in item.windows]
    begun = time.perf_counter()
    logits = iter(run_windows(model, waveforms))
    network = time.perf_counter() - begun
    total_samples = sum(len(item.audio.samples) for item in batch) or 1
    stride = model.recipe.model.conv_stride
    transcripts = []
    for item in batch:
        begun = time.perf_counter()
        words = stitch([window_words(decoder, next(logits), a, b, stride, item.audio.seconds)
                        for a, b in item.windows])  # fmt: skip
        timings = {
            "load": item.load_seconds,
            "features_network": network * len(item.audio.samples) / total_samples,
            "decode": time.perf_counter() - begun,
        }
        transcripts.append(Transcript(item.path, item.audio, words, len(item.windows), timings, item.level))
    return transcripts


Tell = Callable[[str, str], None]
"""``tell(kind, line)``: a ``note`` or ``warning`` line about a file, printed as it is read."""


def transcribe_files(
    entries: Sequence[Entry],
    model: Model,
    decoder: WordDecoder,
    settings: Settings,
    tell: Tell = lambda kind, line: print(f"{kind}: {line}"),
) -> Iterator[tuple[Path, Transcript | str]]:
    """``(path, transcript)`` or ``(path, error reason)`` per entry, in order. Files are read one by one
    and run through the model in batches of about the model's batch size in windows; ``tell`` gets the
    conversion note and the level warning of each file that needs one."""
    limit = max(1, int(getattr(model, "batch_size", 16)))
    pending: list[Loaded | Failed] = []
    for index, entry in enumerate(entries):
        pending.append(
            (entry.path, entry.reason) if isinstance(entry, Unsearchable) else load(entry, settings, tell)
        )
        windows = sum(len(item.windows) for item in pending if isinstance(item, Loaded))
        if windows >= limit or index == len(entries) - 1:
            loaded = [item for item in pending if isinstance(item, Loaded)]
            done = iter(transcribe_batch(model, decoder, loaded) if loaded else [])
            for item in pending:
                yield (item.path, next(done)) if isinstance(item, Loaded) else item
            pending = []


def load(path: Path, settings: Settings, tell: Tell) -> Loaded | Failed:
    """A file read and planned into windows, or ``(path, reason)`` when it cannot be read."""
    begun = time.perf_counter()
    try:
        sound = audio.load(path)
    except audio.AudioError as error:
        return path, str(error)
    if sound.note():
        tell("note", f"{display(path)}: {sound.note()}")
    level = audio.level_dbfs(sound.samples)
    quiet = quiet_warning(*level)
    if quiet:
        tell("warning", f"{display(path)}: {quiet}")
    windows = plan_windows(len(sound.samples), settings.window, settings.overlap)
    return Loaded(path, sound, windows, time.perf_counter() - begun, level)


def quiet_warning(level: float, peak: float) -> str | None:
    """Why a file's level (:func:`asr.audio.level_dbfs`, dBFS) makes its text unreliable, or None: silent,
    or a level below :data:`QUIET_DBFS`."""
    if peak == -math.inf:
        return "silent (every sample is 0): no text"
    if level < QUIET_DBFS:
        return (
            f"very quiet (level {level:.0f} dBFS, peak {peak:.0f} dBFS; below {QUIET_DBFS:.0f} dBFS the "
            "model hears little): the text may be empty or wrong"
        )
    return None


# --------------------------------------------------------------------------- command line


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = OneLineParser(
        prog=f"python -m {PROG}",
        description="Transcribe audio files (any rate, any channels; long files in overlapping windows) "
        "with a run's checkpoint or an export: text per file, word times with --output.",
    )
    parser.add_argument(
        "inputs", nargs="+", metavar="FILE_OR_DIR",
        help="audio files, directories (searched recursively), @LIST files (one path per line)",
    )  # fmt: skip
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--run", metavar="RUN_DIR", help="run directory of asr.train")
    source.add_argument("--model", metavar="EXPORT_DIR", help="export directory of asr.export")
    parser.add_argument("--checkpoint", type=option_type(int, Bound(0)), metavar="STEP",
                        help="with --run: the checkpoint at STEP (default: newest undamaged)")  # fmt: skip
    parser.add_argument("--xla", action="store_true",
                        help="with --run: compile the model with XLA (about 3x faster on a CPU; each new "
                        "input length compiles once, ~1 s)")  # fmt: skip
    parser.add_argument("--backend", choices=("tflite", "tflite-int8", "savedmodel", "onnx"),
                        help="with --model: which exported file runs the model (default: tflite, float32; "
                        "starts without TensorFlow)")  # fmt: skip
    parser.add_argument("--beam", type=option_type(int, Bound(1)), default=1, metavar="N",
                        help="beam width; 1 (default) is greedy decoding, which uses no language "
                        "model")  # fmt: skip
    parser.add_argument("--lm", metavar="LM_DIR",
                        help="with --beam N > 1: asr.lm output (default: recipe eval.lm)")  # fmt: skip
    finite = option_type(float, FINITE)
    parser.add_argument("--alpha", type=finite, help="with --beam: LM weight (default: recipe eval.lm_alpha)")
    parser.add_argument("--beta", type=finite, help="with --beam: word bonus (default: recipe eval.lm_beta)")
    parser.add_argument("--window-seconds", type=option_type(float, Bound(0.5, MAX_WINDOW_SECONDS)),
                        metavar="S", help="longer files are cut into windows of S seconds (default: the "
                        "longest training input, data.max_frames x 10 ms)")  # fmt: skip
    parser.add_argument("--overlap-seconds", type=option_type(float, Bound(0, MAX_WINDOW_SECONDS / 2)),
                        metavar="S", help="overlap of consecutive windows, at most half a window (default: "
                        f"{DEFAULT_OVERLAP_SECONDS:g} s or a quarter window, whichever is less)")  # fmt: skip
    parser.add_argument("--output", metavar="OUT.jsonl", help="also write one JSON object per file here")
    args = parser.parse_args(argv)
    if args.checkpoint is not None and args.run is None:
        parser.error("--checkpoint needs --run")
    if args.xla and args.run is None:
        parser.error("--xla needs --run")
    if args.backend is not None and args.model is None:
        parser.error("--backend needs --model")
    for option in ("lm", "alpha", "beta"):
        if getattr(args, option) is not None and args.beam == 1:
            parser.error(
                f"--{option} needs --beam N with N > 1 (beam 1 is greedy decoding: no language model)"
            )
    window, overlap = args.window_seconds, args.overlap_seconds
    if window is not None and overlap is not None and 2 * overlap > window:
        parser.error("--overlap-seconds must be at most half of --window-seconds")
    return args


def open_model(args: argparse.Namespace) -> Model:
    """The model of ``--run`` (:func:`asr.inference.open_run`) or ``--model``
    (:func:`asr.inference.open_export`); raises :class:`UsageError` with one line for whatever the loader
    raises for a directory it cannot use (a malformed file included)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from asr import inference

    def warn(message: str) -> None:
        print(f"{PROG}: warning: {message}", file=sys.stderr, flush=True)

    option = "--run" if args.run is not None else "--model"
    try:
        if args.run is not None:
            import_tensorflow()
            return inference.open_run(args.run, step=args.checkpoint, warn=warn, xla=args.xla)
        return inference.open_export(args.model, args.backend or "tflite", warn=warn)
    except (ValueError, OSError) as error:  # NoValidCheckpointError, ConfigError, JSON errors, ...
        raise UsageError(f"{option}: {_one_line(error)}") from None
    except (TypeError, KeyError, AttributeError, IndexError) as error:  # a file the loader did not check
        where = display(args.run) if args.run is not None else f"{display(args.model)}/export.json"
        raise UsageError(
            f"{option}: {where}: malformed ({type(error).__name__}: {_one_line(error)})"
        ) from None


def window_settings(args: argparse.Namespace, model: Model) -> Settings:
    """Window and overlap in samples from the options or the model's training length. Both are rounded to
    samples; an overlap of at most half the window in seconds stays at most half of it in samples."""
    trained = model.max_frames * FRAME_SECONDS
    window = args.window_seconds if args.window_seconds is not None else trained
    overlap = args.overlap_seconds
    if overlap is None:
        overlap = min(DEFAULT_OVERLAP_SECONDS, window / 4)
    if 2 * overlap > window:
        raise UsageError(f"--overlap-seconds {overlap:g}: at most half the window ({window:g} s)")
    if window > trained + 1e-9:
        print_message(
            "note", f"windows of {window:g} s are longer than the model was trained on ({trained:g} s)"
        )
    samples = round(window * SAMPLE_RATE)
    return Settings(samples, min(round(overlap * SAMPLE_RATE), samples // 2))


def decoder_for(args: argparse.Namespace, model: Model) -> WordDecoder:
    """Greedy, or beam search with ``--lm`` (default: the recipe's ``eval.lm``) and its weights."""
    evaluation = model.recipe.eval
    lm_dir = args.lm if args.lm is not None else evaluation.lm
    alpha = args.alpha if args.alpha is not None else evaluation.lm_alpha
    beta = args.beta if args.beta is not None else evaluation.lm_beta
    try:
        return make_word_decoder(args.beam, lm_dir or None, alpha, beta)
    except (OSError, RuntimeError, ValueError) as error:  # kenlm: OSError "Cannot read model ..."
        if not lm_dir:
            raise
        option = "--lm" if args.lm is not None else "eval.lm"
        raise UsageError(f"{option} {display(lm_dir)}: cannot be loaded ({_one_line(error)})") from None


def run_command(args: argparse.Namespace, started: float) -> int:
    """Transcribe every file; ``started``: ``time.perf_counter()`` at process start (for the summary)."""
    inputs = find_audio(args.inputs)
    if args.output:
        check_output(args.output, inputs)
    if args.lm is not None:
        check_lm(args.lm)
    model = open_model(args)
    settings = window_settings(args, model)
    decoder = decoder_for(args, model)
    ready = time.perf_counter()
    files = len(inputs.entries)
    try:
        results = transcribe_files(inputs.entries, model, decoder, settings, print_message)
        records, failures, stdout_open = report(results, files, finish=bool(args.output))
    finally:
        decoder.close()
    if args.output:
        write_text(args.output, "".join(json.dumps(r) + "\n" for r in records))
    elif not stdout_open:
        return EXIT_BROKEN_PIPE  # stopped at once: nothing left to do or to sum up
    audio_seconds = sum(r["duration"] for r in records)
    now = time.perf_counter()
    print(summary(files, failures, audio_seconds, ready - started, now - started), file=sys.stderr)
    if not stdout_open:
        return EXIT_BROKEN_PIPE
    return 1 if failures else 0


def print_message(kind: str, line: str) -> None:
    """A ``note`` or ``warning`` line on stderr (above the progress bar)."""
    from tqdm import tqdm

    tqdm.write(f"{PROG}: {kind}: {line}", file=sys.stderr)


def report(
    results: Iterator[tuple[Path, Transcript | str]], files: int, finish: bool
) -> tuple[list[dict], int, bool]:
    """Print each result as it comes (text to stdout, ``PATH<TAB>TEXT`` unless there is a single file;
    errors to stderr) under a progress bar (several files, stderr a terminal). Returns the JSON records,
    the number of files that failed, and whether stdout stayed open: once its reader has gone (``| head``)
    nothing more is printed, and the files left are transcribed only if ``finish`` (for ``--output``)."""
    from tqdm import tqdm

    records, failures, stdout_open = [], 0, True
    with tqdm(
        total=files, unit="file", file=sys.stderr, leave=False, disable=True if files < 2 else None
    ) as bar:
        for path, result in results:
            bar.update(1)
            if isinstance(result, str):
                failures += 1
                tqdm.write(f"{PROG}: error: {display(path)}: {result}", file=sys.stderr)
                continue
            records.append(result.to_json())
            if stdout_open:
                stdout_open = print_text(result.text if files == 1 else f"{display(path)}\t{result.text}")
                if not stdout_open and not finish:
                    break
    return records, failures, stdout_open


def print_text(line: str) -> bool:
    """``line`` on stdout, flushed; False when stdout's reader has gone (a broken pipe): stdout is then
    pointed at /dev/null, so that Python's flush at exit fails no more."""
    from tqdm import tqdm

    try:
        tqdm.write(line, file=sys.stdout)
        sys.stdout.flush()
        return True
    except BrokenPipeError:
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            os.close(devnull)
        except (OSError, ValueError, io.UnsupportedOperation):  # not a real file (a test's capture)
            pass
        return False


def summary(files: int, failures: int, audio_seconds: float, startup: float, total: float) -> str:
    """The last stderr line: files, start-up seconds and share, audio seconds, real-time factors. Times to
    0.01 s: the process start is known to one clock tick (:func:`asr.clock.process_seconds`)."""
    work = total - startup
    rtf = "n/a"
    if audio_seconds:
        rtf = f"{work / audio_seconds:.3f} ({total / audio_seconds:.3f} with start-up)"
    failed = f" ({failures} failed)" if failures else ""
    return (
        f"{PROG}: {files} file(s){failed}, {audio_seconds:.1f} s of audio in {total:.2f} s: start-up "
        f"{startup:.2f} s (process start to model ready, {100 * startup / max(total, 1e-9):.0f} % of the "
        f"total), transcription {work:.2f} s, real-time factor {rtf}"
    )


def main(argv: Sequence[str] | None = None, started: float | None = None) -> int:
    """The command; ``started``: ``time.perf_counter()`` value at which start-up began (default: now)."""
    started = time.perf_counter() if started is None else started
    args = parse_args(argv)
    try:
        return run_command(args, started)
    except (UsageError, WriteError) as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


def _one_line(error: object) -> str:
    return " ".join(str(error).split())


if __name__ == "__main__":
    from asr.clock import process_seconds

    sys.exit(main(started=time.perf_counter() - process_seconds()))
