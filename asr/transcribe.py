"""Transcribe audio files with a trained model: text per file, word times, long audio in windows.

    python -m asr.transcribe FILE_OR_DIR... (--run RUN_DIR [--checkpoint STEP] [--xla]
                                             | --model EXPORT_DIR [--backend tflite|tflite-int8|...])
        [--beam N [--lm LM_DIR] [--alpha A] [--beta B]] [--window-seconds S] [--overlap-seconds S]
        [--output OUT.jsonl]

Inputs
    Audio files (any suffix), directories (searched recursively for :data:`AUDIO_SUFFIXES`) and list files
    given as ``@LIST`` (one file or directory per line, relative to the current directory; blank lines and
    lines starting with ``#`` are skipped). Files are transcribed in the order given, directories in sorted
    order; a file named twice is transcribed once.

Audio
    Any sample rate and channel count: read with soundfile (librosa, i.e. audioread/ffmpeg, for formats
    libsndfile cannot read), channels averaged to mono, resampled to 16 kHz with soxr (high quality); a file
    that needed either gets one ``note`` line on stderr (``44100 Hz stereo -> 16000 Hz mono``).

Output
    stdout: one line per file, ``PATH<TAB>TEXT``; when exactly one file is transcribed (given or found),
    only its text. ``--output OUT.jsonl`` (written atomically once every file is done): one JSON object per
    transcribed file with ``path``, ``text``, ``duration`` (s), ``sample_rate`` and ``channels`` (of the
    file), ``windows``, ``words`` (``[{"word", "start", "end"}]``, seconds from the start of the file) and
    ``timings`` (s): ``load`` (read, downmix, resample), ``features_network`` (features and model; the files
    of one model batch share its time in proportion to their durations) and ``decode``.

Long audio: overlapping windows
    The model was trained on utterances of at most ``data.max_frames`` 10 ms frames; a file longer than
    the window (default: that length) is cut into windows of ``--window-seconds`` that overlap by
    ``--overlap-seconds`` (default: 3 s, or a quarter of the window if that is less; at most half the
    window), the last one shorter, ending with the file (:func:`plan_windows`). Each window is
    transcribed on its own, then the word lists are stitched (:func:`stitch`): window i contributes the
    words whose centre (mean of start and end time) lies before its seam with window i+1, window i+1
    those from the seam on. The seam is the midpoint of the overlap, moved to the centre of the nearest
    pause, a stretch of the overlap in which neither window heard a word (:func:`seam`). The two windows
    time a word they both heard slightly differently (each has its own 30 ms frame grid and context); a
    seam inside no word of either keeps every word on the same side in both, so a word near the midpoint
    cannot be lost or doubled. A word shorter than the overlap lies whole in at least one of the two
    windows; the part of it the other window's edge cuts off reaches that edge, so the seam (inside the
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

Errors and exit status
    A file that cannot be transcribed (missing, not audio, empty, truncated or damaged) is one line
    ``asr.transcribe: error: PATH: REASON`` on stderr and skipped; the others are transcribed; exit status
    1 if any file failed, else 0. Usage errors (no ``--run``/``--model``, a run or export directory that
    cannot be opened, no audio found, an overlap longer than half the window) are one line, exit status 2.
    The last stderr line is a timing summary: start-up (from the start of the process to the model and
    decoder ready: interpreter, imports, model load) and its share of the total, seconds of audio,
    real-time factor (seconds of processing per second of audio, start-up excluded and included).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from asr.config import FINITE, Bound, OneLineParser, option_type
from asr.decoding import BeamSearchDecoder, FrameWord, GreedyDecoder
from asr.features import FRAME_SECONDS, SAMPLE_RATE, num_frames
from asr.files import WriteError, write_text
from asr.text import SYMBOLS

PROG = "asr.transcribe"
AUDIO_SUFFIXES = frozenset(
    {".wav", ".wave", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".m4a", ".mp4", ".aac", ".wma", ".webm",
     ".aif", ".aiff", ".aifc", ".au", ".snd", ".caf", ".w64", ".rf64", ".sph", ".nist", ".voc"}
)  # fmt: skip
"""File name endings searched for in directories (any case); a file named directly may have any."""
DEFAULT_OVERLAP_SECONDS = 3.0
"""Default overlap of consecutive windows (s); at most a quarter of the window."""


class UsageError(Exception):
    """A problem with the command line or the model; one line, exit status 2."""


class AudioError(Exception):
    """A file that cannot be transcribed; the message is the reason (one line, without the path)."""


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


# --------------------------------------------------------------------------- audio


@dataclasses.dataclass
class Audio:
    """A file's samples as the model needs them and what they were before."""

    samples: np.ndarray
    """float32 [N], 16 kHz mono."""
    sample_rate: int
    """Of the file (Hz)."""
    channels: int
    """Of the file."""

    @property
    def seconds(self) -> float:
        return len(self.samples) / SAMPLE_RATE

    def note(self) -> str | None:
        """``44100 Hz stereo -> 16000 Hz mono`` when the file needed converting, else None."""
        if self.sample_rate == SAMPLE_RATE and self.channels == 1:
            return None
        layout = {1: "mono", 2: "stereo"}.get(self.channels, f"{self.channels} channels")
        return f"{self.sample_rate} Hz {layout} -> {SAMPLE_RATE} Hz mono"


def load_audio(path: str | os.PathLike) -> Audio:
    """Read, downmix (mean of the channels) and resample (soxr HQ) to 16 kHz mono float32; raises
    :class:`AudioError` for a missing, unreadable, empty, truncated or damaged file."""
    path = Path(path)
    if not path.exists():
        raise AudioError("no such file")
    if path.is_dir():
        raise AudioError("is a directory")
    data, rate = _read(path)
    if data.shape[0] == 0:
        raise AudioError("no audio samples (empty)")
    if not np.isfinite(data).all():
        raise AudioError("damaged: NaN or infinite samples")
    mono = data.mean(axis=1, dtype=np.float32) if data.shape[1] > 1 else data[:, 0]
    if rate != SAMPLE_RATE:
        import soxr

        mono = soxr.resample(mono, rate, SAMPLE_RATE, quality="HQ")
    return Audio(np.ascontiguousarray(mono, dtype=np.float32), int(rate), int(data.shape[1]))


def _read(path: Path) -> tuple[np.ndarray, int]:
    """``(float32 [N, channels], sample rate Hz)`` by soundfile, else by librosa (audioread)."""
    import soundfile

    try:
        audio = soundfile.SoundFile(path)
    except (RuntimeError, ValueError, OSError) as error:  # LibsndfileError is a RuntimeError
        return _read_librosa(path, _reason(error))
    with audio:
        try:
            data = audio.read(dtype="float32", always_2d=True)
        except (RuntimeError, ValueError, OSError) as error:  # opened, then failed inside the data
            raise AudioError(f"truncated or damaged ({_reason(error)})") from None
        _check_complete(path, data, audio.frames, 0.01 if audio.format in ("MP3", "MPEG") else 0.0)
        return data, int(audio.samplerate)


def _check_complete(path: Path, data: np.ndarray, declared: int, tolerance: float = 0.0) -> None:
    """Raise :class:`AudioError` when the number of samples decoded differs from the ``declared`` one by
    more than ``tolerance`` (a fraction: MP3 files without a Xing header only estimate it), a WAV file ends
    before its data does, or (FLAC) the samples are not the ones whose MD5 the encoder stored (see
    ``asr.extract.audio_damage``)."""
    from asr.extract import flac_md5_matches

    if abs(data.shape[0] - declared) > tolerance * declared:
        raise AudioError(f"truncated: decoded {data.shape[0]} of the {declared} samples its header declares")
    cut = wav_truncation(path)
    if cut:
        raise AudioError(cut)
    if not flac_md5_matches(str(path), data.reshape(-1)):  # interleaved, as the encoder hashed them
        raise AudioError("damaged: samples differ from the MD5 in its FLAC header")


def wav_truncation(path: str | os.PathLike) -> str | None:
    """Why a RIFF WAV file is cut short (its ``data`` chunk declares more bytes than the file holds), or
    None. libsndfile reads such a file without an error, as if it were shorter. A size of 0 or 0xFFFFFFFF
    (a writer that never went back to fill it in) is not a declaration."""
    with open(path, "rb") as handle:
        head = handle.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return None
        size = os.fstat(handle.fileno()).st_size
        while len(chunk := handle.read(8)) == 8:
            declared = int.from_bytes(chunk[4:], "little")
            if chunk[:4] == b"data":
                available = size - handle.tell()
                if declared in (0, 0xFFFFFFFF) or declared <= available:
                    return None
                return f"truncated: {available} of the {declared} data bytes its header declares are there"
            handle.seek(declared + (declared & 1), os.SEEK_CUR)
    return None


def _read_librosa(path: Path, soundfile_reason: str) -> tuple[np.ndarray, int]:
    """Formats libsndfile cannot read (mp3 on old libsndfile, m4a, ...) through librosa/audioread."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "PySoundFile failed. Trying audioread instead."
            import librosa

            data, rate = librosa.load(path, sr=None, mono=False, dtype=np.float32)
    except Exception as error:  # audioread raises its own types (NoBackendError, DecodeError, ...)
        reason = soundfile_reason or _reason(error) or type(error).__name__
        raise AudioError(f"not readable as audio ({reason})") from None
    data = np.asarray(data, dtype=np.float32)
    return (data[:, None] if data.ndim == 1 else data.T), int(rate)


def _one_line(error: object) -> str:
    return " ".join(str(error).split())


def _reason(error: Exception) -> str:
    """libsndfile's own words (``error_string``) without its ``Error : `` prefix, on one line."""
    reason = _one_line(getattr(error, "error_string", None) or error)
    return reason.removeprefix("Error : ").removeprefix("Error: ").rstrip(".")


# --------------------------------------------------------------------------- inputs


def find_audio(inputs: Sequence[str]) -> list[Path]:
    """The files to transcribe: files as given, directories searched recursively (sorted), ``@LIST`` files
    expanded; duplicates dropped. Raises :class:`UsageError` when a list file cannot be read or nothing
    was found. A missing file is kept (it is reported when it is read)."""
    found: dict[Path, None] = {}
    for item in inputs:
        for path in _expand(item):
            found.setdefault(path, None)
    if not found:
        suffixes = " ".join(sorted(AUDIO_SUFFIXES))
        raise UsageError(f"no audio files found in {' '.join(inputs)} (looked for {suffixes})")
    return list(found)


def _expand(item: str) -> Iterator[Path]:
    if item.startswith("@"):
        try:
            lines = Path(item[1:]).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as error:
            reason = error.strerror if isinstance(error, OSError) else "not UTF-8 text"
            raise UsageError(f"{item}: cannot read the list file ({reason})") from None
        for line in lines:
            if line.strip() and not line.lstrip().startswith("#"):
                yield from _expand_path(Path(line.strip()))
    else:
        yield from _expand_path(Path(item))


def _expand_path(path: Path) -> Iterator[Path]:
    if not path.is_dir():
        yield path
        return
    for found in sorted(path.rglob("*")):
        if found.suffix.lower() in AUDIO_SUFFIXES and found.is_file():
            yield found


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

    @property
    def text(self) -> str:
        return " ".join(word.word for word in self.words)

    def to_json(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "text": self.text,
            "duration": round(self.audio.seconds, 3),
            "sample_rate": self.audio.sample_rate,
            "channels": self.audio.channels,
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
        transcripts.append(Transcript(item.path, item.audio, words, len(item.windows), timings))
    return transcripts


def transcribe_files(
    paths: Sequence[Path],
    model: Model,
    decoder: WordDecoder,
    settings: Settings,
    note: Callable[[str], None] = print,
) -> Iterator[tuple[Path, Transcript | str]]:
    """``(path, transcript)`` or ``(path, error reason)`` per file, in order. Files are read one by one
    and run through the model in batches of about the model's batch size in windows; ``note`` gets the
    conversion line of each file that needed one."""
    limit = max(1, int(getattr(model, "batch_size", 16)))
    pending: list[Loaded | tuple[Path, str]] = []
    for index, path in enumerate(paths):
        pending.append(load(path, settings, note))
        windows = sum(len(item.windows) for item in pending if isinstance(item, Loaded))
        if windows >= limit or index == len(paths) - 1:
            loaded = [item for item in pending if isinstance(item, Loaded)]
            done = iter(transcribe_batch(model, decoder, loaded) if loaded else [])
            for item in pending:
                yield (item.path, next(done)) if isinstance(item, Loaded) else item
            pending = []


def load(path: Path, settings: Settings, note: Callable[[str], None] = print) -> Loaded | tuple[Path, str]:
    """A file read and planned into windows, or ``(path, reason)`` when it cannot be read."""
    begun = time.perf_counter()
    try:
        audio = load_audio(path)
    except AudioError as error:
        return path, str(error)
    if audio.note():
        note(f"{path}: {audio.note()}")
    windows = plan_windows(len(audio.samples), settings.window, settings.overlap)
    return Loaded(path, audio, windows, time.perf_counter() - begun)


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
                        help="beam width; 1 (default) is greedy decoding")  # fmt: skip
    parser.add_argument("--lm", metavar="LM_DIR", help="beam search: asr.lm output (default: recipe eval.lm)")
    finite = option_type(float, FINITE)
    parser.add_argument("--alpha", type=finite, help="LM weight (default: recipe eval.lm_alpha)")
    parser.add_argument("--beta", type=finite, help="word bonus (default: recipe eval.lm_beta)")
    parser.add_argument("--window-seconds", type=option_type(float, Bound(0.5)), metavar="S",
                        help="longer files are cut into windows of S seconds (default: the longest "
                        "training input, data.max_frames x 10 ms)")  # fmt: skip
    parser.add_argument("--overlap-seconds", type=option_type(float, Bound(0)), metavar="S",
                        help="overlap of consecutive windows, at most half a window (default: "
                        f"{DEFAULT_OVERLAP_SECONDS:g} s or a quarter window, whichever is less)")  # fmt: skip
    parser.add_argument("--output", metavar="OUT.jsonl", help="also write one JSON object per file here")
    args = parser.parse_args(argv)
    if args.checkpoint is not None and args.run is None:
        parser.error("--checkpoint needs --run")
    if args.xla and args.run is None:
        parser.error("--xla needs --run")
    if args.backend is not None and args.model is None:
        parser.error("--backend needs --model")
    window, overlap = args.window_seconds, args.overlap_seconds
    if window is not None and overlap is not None and 2 * overlap > window:
        parser.error("--overlap-seconds must be at most half of --window-seconds")
    return args


def open_model(args: argparse.Namespace) -> Model:
    """The model of ``--run`` (:func:`asr.inference.open_run`) or ``--model``
    (:func:`asr.inference.open_export`); raises :class:`UsageError` with one line."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from asr import inference

    def warn(message: str) -> None:
        print(f"{PROG}: warning: {message}", file=sys.stderr, flush=True)

    try:
        if args.run is not None:
            return inference.open_run(args.run, step=args.checkpoint, warn=warn, xla=args.xla)
        return inference.open_export(args.model, args.backend or "tflite")
    except (ValueError, OSError) as error:  # NoValidCheckpointError, ConfigError, ExportNotFoundError, ...
        raise UsageError(f"{'--run' if args.run is not None else '--model'}: {_one_line(error)}") from None


def window_settings(args: argparse.Namespace, model: Model) -> Settings:
    """Window and overlap in samples from the options or the model's training length."""
    trained = model.max_frames * FRAME_SECONDS
    window = args.window_seconds if args.window_seconds is not None else trained
    overlap = args.overlap_seconds
    if overlap is None:
        overlap = min(DEFAULT_OVERLAP_SECONDS, window / 4)
    if 2 * overlap > window:
        raise UsageError(f"--overlap-seconds {overlap:g}: at most half the window ({window:g} s)")
    if window > trained + 1e-9:
        print_note(f"windows of {window:g} s are longer than the model was trained on ({trained:g} s)")
    return Settings(round(window * SAMPLE_RATE), round(overlap * SAMPLE_RATE))


def decoder_for(args: argparse.Namespace, model: Model) -> WordDecoder:
    """Greedy, or beam search with ``--lm`` (default: the recipe's ``eval.lm``) and its weights."""
    evaluation = model.recipe.eval
    lm_dir = args.lm if args.lm is not None else evaluation.lm
    alpha = args.alpha if args.alpha is not None else evaluation.lm_alpha
    beta = args.beta if args.beta is not None else evaluation.lm_beta
    return make_word_decoder(args.beam, lm_dir or None, alpha, beta)


def run_command(args: argparse.Namespace, started: float) -> int:
    """Transcribe every file; ``started``: ``time.perf_counter()`` at process start (for the summary)."""
    paths = find_audio(args.inputs)
    model = open_model(args)
    settings = window_settings(args, model)
    decoder = decoder_for(args, model)
    ready = time.perf_counter()
    try:
        records, failures = report(transcribe_files(paths, model, decoder, settings, print_note), len(paths))
    finally:
        decoder.close()
    if args.output:
        write_text(args.output, "".join(json.dumps(r) + "\n" for r in records))
    audio_seconds = sum(r["duration"] for r in records)
    now = time.perf_counter()
    print(summary(len(paths), failures, audio_seconds, ready - started, now - started), file=sys.stderr)
    return 1 if failures else 0


def print_note(line: str) -> None:
    """A ``note`` line on stderr (above the progress bar)."""
    from tqdm import tqdm

    tqdm.write(f"{PROG}: note: {line}", file=sys.stderr)


def report(results: Iterator[tuple[Path, Transcript | str]], files: int) -> tuple[list[dict], int]:
    """Print each result as it comes (text to stdout, ``PATH<TAB>TEXT`` unless there is a single file;
    errors to stderr) under a progress bar (several files, stderr a terminal); returns the JSON records
    and the number of files that failed."""
    from tqdm import tqdm

    records, failures = [], 0
    with tqdm(
        total=files, unit="file", file=sys.stderr, leave=False, disable=True if files < 2 else None
    ) as bar:
        for path, result in results:
            bar.update(1)
            if isinstance(result, str):
                failures += 1
                tqdm.write(f"{PROG}: error: {path}: {result}", file=sys.stderr)
                continue
            records.append(result.to_json())
            tqdm.write(result.text if files == 1 else f"{path}\t{result.text}", file=sys.stdout)
            sys.stdout.flush()
    return records, failures


def summary(files: int, failures: int, audio_seconds: float, startup: float, total: float) -> str:
    """The last stderr line: files, start-up seconds and share, audio seconds, real-time factors."""
    work = total - startup
    rtf = "n/a"
    if audio_seconds:
        rtf = f"{work / audio_seconds:.3f} ({total / audio_seconds:.3f} with start-up)"
    failed = f" ({failures} failed)" if failures else ""
    return (
        f"{PROG}: {files} file(s){failed}, {audio_seconds:.1f} s of audio in {total:.1f} s: start-up "
        f"{startup:.1f} s (imports + model load, {100 * startup / max(total, 1e-9):.0f} % of the total), "
        f"transcription {work:.1f} s, real-time factor {rtf}"
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


def process_start() -> float:
    """``time.perf_counter()`` value at which this process started (interpreter start-up included)."""
    import psutil

    return time.perf_counter() - max(time.time() - psutil.Process().create_time(), 0.0)


if __name__ == "__main__":
    sys.exit(main(started=process_start()))
