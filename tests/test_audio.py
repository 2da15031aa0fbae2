"""asr.audio: what every command reads audio with. Real files: cut, damaged, special and oddly named ones."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile

from asr import audio
from asr.features import SAMPLE_RATE


@contextlib.contextmanager
def deadline(seconds: int) -> Iterator[None]:
    """Fail instead of hanging: SIGALRM interrupts a blocked ``open`` after ``seconds``."""

    def expire(signum, frame):
        raise TimeoutError(f"still blocked after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def tone(seconds: float, amplitude: float = 0.3, rate: int = SAMPLE_RATE) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (amplitude * np.sin(2 * np.pi * 330 * t)).astype(np.float32)


def reason(path) -> str:
    with pytest.raises(audio.AudioError) as raised:
        audio.read(path)
    return str(raised.value)


def test_channels_are_averaged(tmp_path):
    left, right = np.linspace(-0.5, 0.5, 4000, dtype=np.float32), np.full(4000, 0.25, np.float32)
    path = tmp_path / "stereo.wav"
    soundfile.write(path, np.stack([left, right], axis=1), SAMPLE_RATE, subtype="FLOAT")
    loaded = audio.load(path)
    assert (loaded.sample_rate, loaded.channels) == (SAMPLE_RATE, 2)
    assert loaded.note() == "16000 Hz stereo -> 16000 Hz mono"
    np.testing.assert_array_equal(loaded.samples, (left + right) / 2)  # float32 mean of two: exact


def test_damage_is_found_in_what_decodes_without_an_error(tmp_path, tiny_corpus):
    """A WAV file cut short (libsndfile reads it as a shorter file), NaN samples, a FLAC file whose header
    declares a second less than its frames hold (libsndfile stops early: only the MD5 shows it), no
    samples at all."""
    whole = tmp_path / "whole.wav"
    soundfile.write(whole, tone(1.0), SAMPLE_RATE, subtype="PCM_16")
    cut = tmp_path / "cut.wav"
    cut.write_bytes(whole.read_bytes()[:20_000])
    assert soundfile.info(cut).frames < SAMPLE_RATE  # libsndfile: just a shorter file
    nan = tone(1.0)
    nan[100:200] = np.nan
    soundfile.write(tmp_path / "nan.wav", nan, SAMPLE_RATE, subtype="FLOAT")
    flac = next(tiny_corpus.glob("train-clean/*/*/*.flac"))
    body = flac.read_bytes()
    word = int.from_bytes(body[18:26], "big")
    declared = (word & ((1 << 36) - 1)) - SAMPLE_RATE
    short = tmp_path / "short.flac"
    short.write_bytes(body[:18] + ((word & ~((1 << 36) - 1)) | declared).to_bytes(8, "big") + body[26:])
    soundfile.write(tmp_path / "empty.wav", np.zeros(0, np.float32), SAMPLE_RATE)

    assert reason(cut) == "truncated: 19956 of the 32000 data bytes its header declares are there"
    assert reason(tmp_path / "nan.wav") == "damaged: NaN or infinite samples"
    assert reason(short) == "damaged: samples differ from the MD5 in its FLAC header"
    assert reason(tmp_path / "empty.wav") == "no audio samples (empty)"
    with pytest.raises(audio.DamagedAudioError) as raised:
        audio.read(cut)
    assert (raised.value.label, raised.value.detail) == ("truncated", reason(cut).removeprefix("truncated: "))
    assert len(audio.read(whole).data) == SAMPLE_RATE


def test_the_md5_check_accepts_every_bundled_flac_file(tiny_corpus):
    for path in sorted(tiny_corpus.rglob("*.flac")):
        decoded = audio.read(path)
        assert audio.damage(path, decoded.data, (soundfile.info(path).frames, 0.0)) is None, path


def test_what_is_not_a_regular_file_is_refused_at_once(tmp_path, permission_bits):
    """A FIFO would block the decoder's ``open`` until a writer came: refused before any decoder sees it."""
    fifo = tmp_path / "fifo.wav"
    os.mkfifo(fifo)
    (tmp_path / "loop.wav").symlink_to(tmp_path / "loop.wav")
    (tmp_path / "dir.wav").mkdir()
    locked = tmp_path / "locked.wav"
    soundfile.write(locked, tone(0.5), SAMPLE_RATE)
    locked.chmod(0)
    with deadline(10):
        assert reason(fifo) == "not a regular file (FIFO)"
    assert audio.file_problem(fifo) == "not a regular file (FIFO)"
    assert reason(tmp_path / "loop.wav") == "symlink loop"
    assert reason(tmp_path / "missing.wav") == "no such file"
    assert reason(tmp_path / "dir.wav") == "is a directory"
    assert audio.file_problem("/dev/null") == "not a regular file (character device)"
    with permission_bits():
        assert reason(locked) == "permission denied"
    for kind in (audio.NotAFileError, audio.AudioError):
        with pytest.raises(kind):
            audio.read(fifo)


def test_a_file_name_that_is_not_utf8_is_read(tmp_path):
    samples = tone(0.5)
    name = os.fsdecode(b"caf\xe9.wav")  # Latin-1: the byte 0xE9 alone is not UTF-8
    path = tmp_path / name
    soundfile.write(os.fsencode(path), samples, SAMPLE_RATE, subtype="FLOAT")
    assert os.fsencode(path).endswith(b"caf\xe9.wav")
    np.testing.assert_array_equal(audio.load(path).samples, samples)
    np.testing.assert_array_equal(audio.load(os.fsencode(path)).samples, samples)
    assert audio.display(path).endswith("caf\\xe9.wav")
    assert audio.display(path).encode("utf-8")  # printable whatever stdout's encoding errors are
    assert audio.display("plain/é.wav") == "plain/é.wav"


def test_resampling_keeps_the_length_and_the_tone(tmp_path):
    path = tmp_path / "44k.wav"
    soundfile.write(path, tone(1.0, rate=44_100), 44_100, subtype="FLOAT")
    loaded = audio.load(path)
    assert loaded.note() == "44100 Hz mono -> 16000 Hz mono" and len(loaded.samples) == SAMPLE_RATE
    middle = loaded.samples[1000:-1000]
    np.testing.assert_allclose(middle, tone(1.0)[1000:-1000], atol=2e-3)


def test_level_is_that_of_the_loud_part(tmp_path):
    """A full-scale sine is -3 dBFS; one second of a sine at 0.01 (-43 dBFS) in nine of silence has the
    sine's level (the loudest 5 % of 30 ms frames), not the whole file's RMS (-53 dBFS)."""
    level, peak = audio.level_dbfs(tone(1.0, amplitude=1.0))
    assert level == pytest.approx(-3.01, abs=0.05) and peak == pytest.approx(0.0, abs=0.01)
    quiet = np.concatenate([tone(1.0, amplitude=0.01), np.zeros(9 * SAMPLE_RATE, np.float32)])
    level, peak = audio.level_dbfs(quiet)
    assert level == pytest.approx(-43.01, abs=0.1) and peak == pytest.approx(-40.0, abs=0.01)
    assert audio.level_dbfs(np.zeros(SAMPLE_RATE, np.float32)) == (-np.inf, -np.inf)
    assert audio.level_dbfs(np.zeros(0, np.float32)) == (-np.inf, -np.inf)
    level, _ = audio.level_dbfs(np.full(100, 0.5, np.float32))  # shorter than a frame: the RMS
    assert level == pytest.approx(-6.02, abs=0.01)


def test_mp3_style_tolerance_and_declared_counts():
    data = np.zeros((1000, 1), np.float32)
    assert audio.damage(Path("/dev/null"), data, (1005, 0.01)) is None
    found = audio.damage(Path("/dev/null"), data, (1005, 0.0))
    assert str(found) == "truncated: decoded 1000 of the 1005 samples its header declares"
