"""Reading audio files for the model: one definition for ``asr.extract`` and ``asr.transcribe``.

:func:`read` decodes a file (soundfile; with ``fallback``, librosa/audioread for formats libsndfile cannot
read) into float32 ``[N, channels]`` and checks that it is what its header promised; :func:`to_model_input`
averages the channels and resamples to 16 kHz with soxr (``HQ``); :func:`load` does both.

What is refused, as an :class:`AudioError` whose message is the reason in one line (without the path):

* not a file to read (:class:`NotAFileError`): missing, a directory, a symlink loop, no permission, or not
  a regular file (a FIFO, socket or device: opening one would wait for a writer forever). Checked with
  ``stat`` before any decoder opens it (:func:`file_problem`).
* not readable (:class:`UnreadableError`): no decoder opens it, or decoding raises midway (libsndfile 1.2
  raises for every damaged FLAC frame: its CRC fails).
* empty (:class:`EmptyAudioError`): no samples.
* damaged (:class:`DamagedAudioError`, :func:`damage`): decoded without an error, but not what the header
  promised. libsndfile reads a cut WAV file (its ``data`` chunk declares more bytes than the file holds)
  as a shorter file without complaint, and a damaged FLAC header can declare fewer samples than the
  frames hold (libsndfile then stops early), so besides the number of samples the header declares, a
  WAV file's ``data`` chunk size is compared with the file's size, every sample must be finite, and a
  FLAC file's samples must have the MD5 its encoder stored in STREAMINFO.

Paths may be any bytes the file system holds: they are passed to the decoders as bytes
(:func:`os.fsencode`), so a file name that is not UTF-8 (Latin-1, say) is read like any other.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import math
import os
import stat
import warnings

import numpy as np

from asr.features import SAMPLE_RATE

MP3_LENGTH_TOLERANCE = 0.01
"""MP3 files without a Xing/LAME header only estimate their length: decoded and declared samples may
differ by this fraction."""
LEVEL_FRAME = 480
"""Samples per frame (30 ms at 16 kHz) for :func:`level_dbfs`."""
LEVEL_PERCENTILE = 95
""":func:`level_dbfs` is the RMS of the frame at this percentile of frame RMS: the level of the loud part
(speech) of a file, whatever share of it is silence."""


class AudioError(Exception):
    """A file that cannot be used; ``str()`` is the reason, one line, without the path."""


class NotAFileError(AudioError):
    """Missing, a directory, a symlink loop, unreadable, or not a regular file."""


class UnreadableError(AudioError):
    """No decoder reads it, or decoding fails midway."""


class EmptyAudioError(AudioError):
    """No samples."""


class DamagedAudioError(AudioError):
    """Decoded, but not what its header promised. ``label`` is ``truncated`` (fewer samples or bytes than
    declared) or ``damaged``; ``detail`` says what differs; ``str()`` is ``LABEL: DETAIL``."""

    def __init__(self, label: str, detail: str):
        super().__init__(f"{label}: {detail}")
        self.label, self.detail = label, detail


@dataclasses.dataclass
class Decoded:
    """A file's samples as decoded."""

    data: np.ndarray
    """float32 ``[N, channels]`` in [-1, 1)."""
    sample_rate: int
    """Hz."""

    @property
    def channels(self) -> int:
        return int(self.data.shape[1])


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


# --------------------------------------------------------------------------- reading


def load(path: str | bytes | os.PathLike, fallback: bool = True) -> Audio:
    """:func:`read` then :func:`to_model_input`: 16 kHz mono float32 and what the file was."""
    decoded = read(path, fallback)
    return Audio(to_model_input(decoded), decoded.sample_rate, decoded.channels)


def read(path: str | bytes | os.PathLike, fallback: bool = True) -> Decoded:
    """The file's samples, checked (:func:`damage`); raises an :class:`AudioError` subclass. soundfile
    decodes; with ``fallback`` a file it cannot open goes to librosa (audioread/ffmpeg: mp3 on an old
    libsndfile, m4a, ...), whose decoders declare no length to check."""
    name = os.fsencode(path)
    problem = file_problem(name)
    if problem:
        raise NotAFileError(problem)
    try:
        with open(name, "rb") as handle:  # permission problems are clearer here than from a decoder
            head = handle.read(42)
    except OSError as error:
        raise NotAFileError(os_reason(error)) from None
    import soundfile

    try:
        sound = soundfile.SoundFile(name)
    except (RuntimeError, ValueError, OSError) as error:  # LibsndfileError is a RuntimeError
        if not fallback:
            raise UnreadableError(f"not readable as audio ({libsndfile_reason(error)})") from None
        return _checked(_read_librosa(name, libsndfile_reason(error)), name, None, head)
    with sound:
        try:
            data = sound.read(dtype="float32", always_2d=True)
        except (RuntimeError, ValueError, OSError) as error:  # opened, then failed inside the data
            raise UnreadableError(f"truncated or damaged ({libsndfile_reason(error)})") from None
        tolerance = MP3_LENGTH_TOLERANCE if sound.format in ("MP3", "MPEG") else 0.0
        return _checked(Decoded(data, int(sound.samplerate)), name, (sound.frames, tolerance), head)


def _checked(decoded: Decoded, name: bytes, declared: tuple[int, float] | None, head: bytes) -> Decoded:
    if decoded.data.shape[0] == 0:
        raise EmptyAudioError("no audio samples (empty)")
    problem = damage(name, decoded.data, declared, head)
    if problem:
        raise problem
    return decoded


def to_model_input(decoded: Decoded) -> np.ndarray:
    """float32 ``[N]`` at 16 kHz: the mean of the channels, resampled with soxr ``HQ`` if needed."""
    data = decoded.data
    mono = data.mean(axis=1, dtype=np.float32) if data.shape[1] > 1 else data[:, 0]
    if decoded.sample_rate != SAMPLE_RATE:
        import soxr

        mono = soxr.resample(mono, decoded.sample_rate, SAMPLE_RATE, quality="HQ")
    return np.ascontiguousarray(mono, dtype=np.float32)


def file_problem(path: str | bytes | os.PathLike) -> str | None:
    """Why ``path`` is not a file a decoder may open, or None: ``no such file``, ``symlink loop``,
    ``is a directory``, ``not a regular file (FIFO)`` (or socket, device), or the OS's reason."""
    try:
        mode = os.stat(path).st_mode
    except OSError as error:
        return os_reason(error)
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "is a directory"
    kinds = {stat.S_ISFIFO: "FIFO", stat.S_ISSOCK: "socket", stat.S_ISCHR: "character device",
             stat.S_ISBLK: "block device"}  # fmt: skip
    kind = next((name for test, name in kinds.items() if test(mode)), "special file")
    return f"not a regular file ({kind})"


def os_reason(error: OSError) -> str:
    """An OS error as a short reason: ``no such file``, ``symlink loop``, ``permission denied``, ..."""
    reasons = {errno.ENOENT: "no such file", errno.ELOOP: "symlink loop", errno.EACCES: "permission denied",
               errno.ENOTDIR: "no such file (a parent is not a directory)"}  # fmt: skip
    return reasons.get(error.errno, (error.strerror or type(error).__name__).lower())


def libsndfile_reason(error: Exception) -> str:
    """libsndfile's own words (``error_string``) without its ``Error : `` prefix, on one line."""
    reason = " ".join(str(getattr(error, "error_string", None) or error).split())
    return reason.removeprefix("Error : ").removeprefix("Error: ").rstrip(".")


def _read_librosa(name: bytes, soundfile_reason: str) -> Decoded:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "PySoundFile failed. Trying audioread instead."
            import librosa

            data, rate = librosa.load(os.fsdecode(name), sr=None, mono=False, dtype=np.float32)
    except Exception as error:  # audioread raises its own types (NoBackendError, DecodeError, ...)
        reason = soundfile_reason or " ".join(str(error).split()) or type(error).__name__
        raise UnreadableError(f"not readable as audio ({reason})") from None
    data = np.asarray(data, dtype=np.float32)
    return Decoded(data[:, None] if data.ndim == 1 else np.ascontiguousarray(data.T), int(rate))


# --------------------------------------------------------------------------- damage


def damage(
    path: str | bytes | os.PathLike, data: np.ndarray, declared: tuple[int, float] | None, head: bytes = b""
) -> DamagedAudioError | None:
    """What is wrong with decoded samples ``data`` (float32 ``[N, channels]``), or None: not the number of
    samples the header declares (``declared``: that number and the fraction it may be off by; None when
    the decoder declares none), a WAV file cut short (:func:`wav_truncation`), NaN or infinite values, or
    (FLAC) not the samples whose MD5 the encoder stored (:func:`flac_md5_matches`). ``head``: the file's
    first 42 bytes if already read."""
    if declared is not None:
        frames, tolerance = declared
        if abs(data.shape[0] - frames) > tolerance * frames:
            return DamagedAudioError(
                "truncated", f"decoded {data.shape[0]} of the {frames} samples its header declares"
            )
    cut = wav_truncation(path, head)
    if cut:
        return DamagedAudioError("truncated", cut)
    if not np.isfinite(data).all():
        return DamagedAudioError("damaged", "NaN or infinite samples")
    if not flac_md5_matches(path, data.reshape(-1), head):  # interleaved, as the encoder hashed them
        return DamagedAudioError("damaged", "samples differ from the MD5 in its FLAC header")
    return None


def wav_truncation(path: str | bytes | os.PathLike, head: bytes = b"") -> str | None:
    """Why a RIFF WAV file is cut short (its ``data`` chunk declares more bytes than the file holds), or
    None. libsndfile reads such a file without an error, as if it were shorter. A size of 0 or 0xFFFFFFFF
    (a writer that never went back to fill it in) is not a declaration. ``head``: the file's first bytes
    if already read (a file that is not RIFF WAV is not opened again)."""
    if len(head) >= 12 and (head[:4] != b"RIFF" or head[8:12] != b"WAVE"):
        return None
    with open(path, "rb") as handle:
        start = handle.read(12)
        if len(start) < 12 or start[:4] != b"RIFF" or start[8:12] != b"WAVE":
            return None
        size = os.fstat(handle.fileno()).st_size
        while len(chunk := handle.read(8)) == 8:
            declared = int.from_bytes(chunk[4:], "little")
            if chunk[:4] == b"data":
                available = size - handle.tell()
                if declared in (0, 0xFFFFFFFF) or declared <= available:
                    return None
                return f"{available} of the {declared} data bytes its header declares are there"
            handle.seek(declared + (declared & 1), os.SEEK_CUR)
    return None


def flac_md5_matches(path: str | bytes | os.PathLike, samples: np.ndarray, head: bytes = b"") -> bool:
    """False when ``path`` is a FLAC file whose STREAMINFO MD5 is set and differs from the MD5 of the
    decoded interleaved ``samples`` (the encoder's signed little-endian integers, recovered exactly from
    float32 for 8 to 24 bits per sample). True for other files, an unset MD5 or wider samples. ``head``:
    the file's first 42 bytes if already read."""
    if len(head) < 42:
        with open(path, "rb") as handle:
            head = handle.read(42)
    if len(head) < 42 or head[:4] != b"fLaC" or head[4] & 0x7F != 0:  # STREAMINFO is always first
        return True
    bits = ((int.from_bytes(head[18:26], "big") >> 36) & 0x1F) + 1
    stored = head[26:42]
    if not any(stored) or bits > 24:
        return True
    integers = np.round(samples.astype(np.float64) * 2.0 ** (bits - 1)).astype("<i4")
    width = (bits + 7) // 8  # bytes per sample: the low bytes of each little-endian int32
    packed = integers.view(np.uint8).reshape(-1, 4)[:, :width]
    return hashlib.md5(packed.tobytes()).digest() == stored


# --------------------------------------------------------------------------- level


def level_dbfs(samples: np.ndarray) -> tuple[float, float]:
    """``(level, peak)`` of 16 kHz mono samples in dBFS (0 dBFS: a square wave at full scale, so a
    full-scale sine is -3 dBFS); ``-inf`` for silence. ``level`` is the RMS of the 30 ms frame at the
    95th percentile of frame RMS (:data:`LEVEL_PERCENTILE`): the level of the loud part of a file,
    however much silence surrounds it (the whole file's RMS if it is shorter than a frame)."""
    if not len(samples):
        return -math.inf, -math.inf
    wide = samples.astype(np.float64)
    peak = float(np.abs(wide).max())
    frames = len(wide) // LEVEL_FRAME
    if frames:
        rms = np.sqrt(np.square(wide[: frames * LEVEL_FRAME]).reshape(frames, LEVEL_FRAME).mean(axis=1))
        loud = float(np.percentile(rms, LEVEL_PERCENTILE))
    else:
        loud = float(np.sqrt(np.square(wide).mean()))
    with np.errstate(divide="ignore"):
        return float(20 * np.log10(loud)), float(20 * np.log10(peak))


def display(path: str | bytes | os.PathLike) -> str:
    """``path`` as text to print: bytes that are not UTF-8 (a Latin-1 file name) as ``\\xNN``."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")
