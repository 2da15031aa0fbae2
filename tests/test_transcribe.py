"""``python -m asr.transcribe``: word times, windows and stitching (pure), the command on a stand-in acoustic
model (real files, windows, stitching, inputs, outputs and errors; fake acoustics), and on a real model that
says real words (``memorized_run``: its checkpoint and its TFLite export), as real processes where pipes,
FIFOs and the process start are the point."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile

from asr import audio, transcribe
from asr.config import Recipe
from asr.decoding import greedy_frame_words, greedy_text
from asr.features import HOP, SAMPLE_RATE, num_frames
from asr.text import BLANK_ID, NUM_SYMBOLS, SEPARATOR_ID, SPACE_ID, SYMBOLS, encode
from asr.transcribe import (
    WindowWords,
    Word,
    make_word_decoder,
    plan_windows,
    seam,
    stitch,
    word_times,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPT = [
    "the", "quick", "brown", "fox", "jumps", "over", "the", "lazy", "dog", "it's", "a", "cool", "day", "all",
    "will", "see", "nine", "bells", "ring", "as", "we", "see", "the", "moon", "rise", "over", "still",
    "water", "and", "the", "old", "mill", "keeps", "turning",
]  # fmt: skip


def one_hot(path) -> np.ndarray:
    logits = np.zeros((len(path), NUM_SYMBOLS), np.float32)
    logits[np.arange(len(path)), path] = 10.0
    return logits


# --------------------------------------------------------------------------- pure: word times, stitching


def test_word_frames_and_times_of_a_hand_made_greedy_alignment():
    b, s, sep = BLANK_ID, SPACE_ID, SEPARATOR_ID
    c, o, ell, i, t, q = (SYMBOLS.index(ch) for ch in "colit'")
    # frame: 0  1  2  3  4    5  6    7    8  9  10 11 12 13 14 15 16
    path = [b, c, c, o, sep, o, ell, ell, b, s, s, i, t, b, q, t, b]
    assert greedy_frame_words(path) == [("cool", 1, 8), ("it't", 11, 16)]
    assert " ".join(w for w, _, _ in greedy_frame_words(path)) == greedy_text(one_hot(path))

    words = word_times(greedy_frame_words(path), stride=3, offset=10.0, limit=10.45)
    assert [w.word for w in words] == ["cool", "it't"]
    assert [(w.start, w.end) for w in words] == [
        (pytest.approx(10.03), pytest.approx(10.24)),
        (pytest.approx(10.33), 10.45),  # 10.48 clipped to the file's end (exact: the limit itself)
    ]
    assert words[0].centre == pytest.approx((10.03 + 10.24) / 2)


def test_greedy_words_are_the_greedy_text_on_random_paths():
    rng = np.random.default_rng(0)
    choices = [BLANK_ID] * 6 + [SPACE_ID] * 3 + [SEPARATOR_ID] + list(range(1, 28))
    for _ in range(200):
        path = rng.choice(choices, size=int(rng.integers(0, 60)))
        spans = greedy_frame_words(path)
        assert [w for w, _, _ in spans] == greedy_text(one_hot(path)).split()
        assert all(0 <= a < e <= len(path) for _, a, e in spans)
        assert all(spans[k][2] <= spans[k + 1][1] for k in range(len(spans) - 1))  # in time order
        times = word_times(spans, stride=3, offset=0.0, limit=len(path) * 0.03)
        assert all(0 <= w.start <= w.end <= len(path) * 0.03 for w in times)


def test_plan_windows_cover_the_file_with_the_overlap():
    assert plan_windows(1000, 1600, 400) == [(0, 1000)]
    assert plan_windows(1600, 1600, 400) == [(0, 1600)]
    assert plan_windows(3000, 1600, 400) == [(0, 1600), (1200, 2800), (2400, 3000)]
    for samples, overlap in itertools.product((1601, 2800, 2801, 10_000, 12_345), (0, 400, 800)):
        windows = plan_windows(samples, 1600, overlap)
        assert windows[0][0] == 0 and windows[-1][1] == samples
        assert all(b - a == 1600 for a, b in windows[:-1]) and windows[-1][1] - windows[-1][0] > overlap
        for (a0, b0), (a1, _) in itertools.pairwise(windows):
            assert a1 - a0 == 1600 - overlap and b0 - a1 == overlap
        for (_, b0), (a2, _) in zip(windows, windows[2:], strict=False):
            assert b0 <= a2  # only neighbours overlap
    with pytest.raises(ValueError, match="overlap"):
        plan_windows(5000, 1600, 801)


def true_words(count: int, rng) -> list[Word]:
    """Words of 0.2-0.9 s with 0.05-0.4 s pauses, starting at 0.3 s."""
    words, t = [], 0.3
    for k in range(count):
        length = float(rng.uniform(0.2, 0.9))
        words.append(Word(f"{SCRIPT[k % len(SCRIPT)]}{k}", t, t + length))
        t += length + float(rng.uniform(0.05, 0.4))
    return words


def seen_in(window: tuple[float, float], words: list[Word], jitter=None) -> WindowWords:
    """What a perfect recognizer hears in a window: whole words, and the cut part (shortened text) of
    those the window's edges cut; ``jitter``: a generator moving each time by up to 40 ms (each window
    has its own frame grid)."""
    start, end = window
    seen = []
    for w in words:
        a, b = max(w.start, start), min(w.end, end)
        if b > a:
            whole = (a, b) == (w.start, w.end)
            if jitter is not None:
                a, b = (min(max(t + float(jitter.uniform(-0.04, 0.04)), start), end) for t in (a, b))
            seen.append(Word(w.word if whole else w.word[: max(1, len(w.word) // 2)] + "~", a, b))
    return WindowWords(start, end, tuple(seen))


@pytest.mark.parametrize(("window", "overlap"), [(4.0, 1.0), (3.0, 1.5), (5.0, 0.95), (2.0, 1.0)])
def test_stitching_overlapping_windows_loses_and_doubles_no_word(window, overlap):
    rng = np.random.default_rng(int(window * 10 + overlap * 100))
    words = true_words(60, rng)
    duration = words[-1].end + 0.5
    sample = lambda t: round(t * SAMPLE_RATE)  # noqa: E731
    plan = plan_windows(sample(duration), sample(window), sample(overlap))
    assert len(plan) > 8
    windows = [seen_in((a / SAMPLE_RATE, b / SAMPLE_RATE), words) for a, b in plan]
    assert any("~" in w.word for window_words in windows for w in window_words.words)  # edges do cut words
    assert stitch(windows) == words
    assert stitch([seen_in((0.0, duration), words)]) == words
    # each window times the words it heard a little differently: still each word once
    for trial in range(20):
        jitter = np.random.default_rng(trial)
        shaken = stitch([seen_in((a / SAMPLE_RATE, b / SAMPLE_RATE), words, jitter) for a, b in plan])
        assert [w.word for w in shaken] == [w.word for w in words]
        assert all(abs(s.start - w.start) <= 0.04 for s, w in zip(shaken, words, strict=True))


def test_a_word_at_the_midpoint_timed_differently_by_two_windows_is_kept_once():
    """The case the plain midpoint rule gets wrong: "keeps" centred 5 ms after the midpoint (22.7 s) in one
    window and 5 ms before it in the other."""
    earlier = WindowWords(
        20.8, 23.8, (Word("mill", 21.61, 22.15), Word("keeps", 22.36, 23.05), Word("t~", 23.26, 23.65))
    )
    later = WindowWords(
        21.6, 24.6, (Word("mill", 21.6, 22.14), Word("keeps", 22.35, 23.04), Word("turning", 23.25, 24.24))
    )
    assert [w.word for w in stitch([earlier, later])] == ["mill", "keeps", "turning"]
    assert (
        23.04 < seam(earlier, later) < 23.25
    )  # the centre of the pause after "keeps" (nearest the midpoint)
    no_pause = WindowWords(20.8, 23.8, (Word("a" * 20, 21.0, 23.8),))
    assert seam(no_pause, WindowWords(21.6, 24.6, ())) == pytest.approx(22.7)


def test_a_word_centred_exactly_on_the_seam_is_kept_once():
    """No pause in the overlap [3, 4]: the seam is its midpoint, 3.5, the centre of "y" in both windows.
    Window i keeps the words centred in [its seam with i-1, its seam with i+1): "y" goes to the later
    window only (a closed interval would keep it twice, an open one lose it)."""
    earlier = WindowWords(0.0, 4.0, (Word("x", 2.9, 3.3), Word("y", 3.3, 3.7), Word("z~", 3.7, 4.0)))
    later = WindowWords(3.0, 7.0, (Word("~", 3.0, 3.3), Word("y", 3.3, 3.7), Word("z", 3.7, 4.1)))
    assert seam(earlier, later) == 3.5 == Word("y", 3.3, 3.7).centre
    assert [w.word for w in stitch([earlier, later])] == ["x", "y", "z"]
    third = WindowWords(6.0, 9.0, (Word("q", 6.1, 6.9),))
    assert [w.word for w in stitch([earlier, later, third])] == ["x", "y", "z", "q"]


# --------------------------------------------------------------------------- a stand-in acoustic model

LETTER_SAMPLES = 3 * 3 * HOP
"""Samples per letter: 3 output frames of a stride-3 model (a word of 7 letters lasts 1 s)."""
GAP_SAMPLES = 2 * 3 * HOP
"""Silence after each letter: 2 output frames, so at least one frame sees it whatever a window's start."""


def label_value(label: int) -> float:
    """The sample value that :class:`FakeModel` reads as ``label`` (0 is silence: blank)."""
    return (label + 1) / 40


def speak(words: list[str], lead: float = 0.3) -> tuple[np.ndarray, list[Word]]:
    """A waveform that :class:`FakeModel` hears as ``words``: each letter a constant stretch of samples,
    a blank gap after it, a space between words; and each word's true start/end (s)."""
    parts, spoken, at = [np.zeros(round(lead * SAMPLE_RATE), np.float32)], [], round(lead * SAMPLE_RATE)
    for k, word in enumerate(words):
        if k:
            parts.append(np.full(LETTER_SAMPLES, label_value(SPACE_ID), np.float32))
            parts.append(np.zeros(GAP_SAMPLES, np.float32))
            at += LETTER_SAMPLES + GAP_SAMPLES
        start = at
        for label in encode(word):
            if label == SEPARATOR_ID:
                continue  # the gap after each letter separates double letters
            letter = np.full(LETTER_SAMPLES, label_value(label), np.float32)
            parts += [letter, np.zeros(GAP_SAMPLES, np.float32)]
            at += LETTER_SAMPLES + GAP_SAMPLES
        spoken.append(Word(word, start / SAMPLE_RATE, (at - GAP_SAMPLES) / SAMPLE_RATE))
    parts.append(np.zeros(round(0.3 * SAMPLE_RATE), np.float32))
    return np.concatenate(parts), spoken


class FakeModel:
    """An :class:`asr.inference.AcousticModel` stand-in: output frame ``j`` of a waveform is the label whose
    value (:func:`label_value`) the sample at ``j * stride * HOP`` has, blank for silence; peaked logits."""

    def __init__(self, max_frames: int = 500, batch_size: int = 4):
        base = Recipe()
        self.recipe = dataclasses.replace(
            base,
            data=dataclasses.replace(base.data, max_frames=max_frames),
            model=dataclasses.replace(base.model, conv_stride=3, conv_kernel=11),
        )
        self.source = "fake"
        self.batch_size = batch_size
        self.calls: list[int] = []
        self.opened = 0

    @property
    def max_frames(self) -> int:
        return self.recipe.data.max_frames

    def run_waveforms(self, waveforms):
        self.calls.append(len(waveforms))
        out = []
        for waveform in waveforms:
            steps = max(0, (num_frames(len(waveform)) - 11) // 3 + 1)
            labels = np.rint(waveform[np.arange(steps) * 3 * HOP] * 40).astype(int) - 1
            out.append(one_hot(np.where(labels < 0, BLANK_ID, labels)))
        return out


@pytest.fixture
def fake(monkeypatch) -> FakeModel:
    """The stand-in model, counting how often the command opened it (``opened``: 0 when it stopped
    before any work)."""
    model = FakeModel()

    def open_model(args):
        model.opened += 1
        return model

    monkeypatch.setattr(transcribe, "open_model", open_model)
    return model


def write_wav(path: Path, samples: np.ndarray, rate: int = SAMPLE_RATE) -> Path:
    """Float WAV (exact samples), or 16-bit PCM for other formats."""
    soundfile.write(path, samples, rate, subtype="FLOAT" if path.suffix.lower() == ".wav" else None)
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_beam_search_gives_the_greedy_words_and_frames_on_peaked_logits(capsys):
    waveform, _ = speak(SCRIPT[:6])
    (logits,) = FakeModel().run_waveforms([waveform])
    beam = make_word_decoder(8, None, 0.5, 1.0)
    try:
        assert beam.words(logits) == make_word_decoder(1, None, 0.5, 1.0).words(logits)
        assert [w for w, _, _ in beam.words(logits)] == SCRIPT[:6]
    finally:
        beam.close()
    assert capsys.readouterr().err.count("warning: beam search without a language model") == 1


@pytest.mark.parametrize(("window", "overlap"), [("4", "1.5"), ("3", "1.4"), (None, None)])
def test_long_audio_is_stitched_from_windows_without_lost_or_doubled_words(
    fake, tmp_path, capsys, window, overlap
):
    """Every word (at most 1 s) is shorter than the overlap (default: 1.25 s, a quarter of the 5 s the fake
    model was trained on)."""
    waveform, spoken = speak(SCRIPT)
    long = write_wav(tmp_path / "long.wav", waveform)
    options = ["--window-seconds", window, "--overlap-seconds", overlap] if window else []
    argv = [str(long), "--run", "unused", "--output", str(tmp_path / "out.jsonl"), *options]
    assert transcribe.main(argv) == 0
    out, err = capsys.readouterr()
    assert out == " ".join(SCRIPT) + "\n"  # a single file: its text alone
    assert err.splitlines()[-1].startswith("asr.transcribe: 1 file(s), ")
    (record,) = read_jsonl(tmp_path / "out.jsonl")
    duration = len(waveform) / SAMPLE_RATE
    assert record["duration"] == pytest.approx(duration, abs=1e-3)
    assert record["windows"] == len(plan_windows(len(waveform), *windowing(window, overlap)))
    assert record["windows"] >= 6  # 5 s default window (500 frames), ~25 s of speech
    assert [w["word"] for w in record["words"]] == SCRIPT
    for got, true in zip(record["words"], spoken, strict=True):
        # frames every 30 ms: a start is found up to one frame late, an end up to one frame after the last
        # sample of the word's last letter; plus 1 ms of rounding in the JSON
        assert true.start - 0.001 <= got["start"] <= true.start + 0.031
        assert true.end - 0.001 <= got["end"] <= true.end + 0.031
    starts = [w["start"] for w in record["words"]]
    assert starts == sorted(starts) and all(0 <= w["start"] <= w["end"] <= duration for w in record["words"])
    assert set(record["timings"]) == {"load", "features_network", "decode"}
    assert max(fake.calls) <= fake.batch_size  # the windows went through in model batches


def windowing(window: str | None, overlap: str | None) -> tuple[int, int]:
    """Window and overlap in samples: as given, else the defaults for :class:`FakeModel` (5 s, 1.25 s)."""
    seconds = float(window) if window else 5.0
    overlap_seconds = float(overlap) if overlap else min(3.0, seconds / 4)
    return round(seconds * SAMPLE_RATE), round(overlap_seconds * SAMPLE_RATE)


def test_directories_and_list_files_give_path_tab_text_in_order(fake, tmp_path, capsys):
    (tmp_path / "d" / "sub").mkdir(parents=True)
    a = write_wav(tmp_path / "d" / "sub" / "a.WAV", speak(["all", "is", "well"])[0])
    b = write_wav(tmp_path / "d" / "b.flac", speak(["cool"])[0])
    (tmp_path / "d" / "notes.txt").write_text("not audio")
    c = write_wav(tmp_path / "c.wav", speak(["it's", "nine"])[0])
    listed = tmp_path / "list.txt"
    listed.write_text(f"# inputs\n{c}\n\n{b}\n")
    assert transcribe.main([f"@{listed}", str(tmp_path / "d"), "--run", "x", "--beam", "1"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines() == [f"{c}\tit's nine", f"{b}\tcool", f"{a}\tall is well"]  # b once


def test_unreadable_files_are_one_error_line_each_and_the_rest_is_transcribed(
    fake, tmp_path, tiny_corpus, capsys
):
    good = [write_wav(tmp_path / f"good{k}.wav", speak(SCRIPT[k : k + 3])[0]) for k in range(2)]
    text = tmp_path / "x.wav"
    text.write_text("this is not audio\n")
    flac = next(tiny_corpus.glob("dev-clean/*/*/*.flac"))
    truncated = tmp_path / "cut.flac"
    truncated.write_bytes(flac.read_bytes()[: flac.stat().st_size // 2])
    cut_wav = tmp_path / "cut.wav"
    cut_wav.write_bytes(write_wav(tmp_path / "whole.wav", speak(SCRIPT[:4])[0]).read_bytes()[:30_000])
    empty = write_wav(tmp_path / "empty.wav", np.zeros(0, np.float32))
    missing = tmp_path / "missing.wav"
    loop = tmp_path / "loop.wav"
    loop.symlink_to(loop)
    inputs = [good[0], text, truncated, missing, cut_wav, empty, loop, good[1]]
    assert transcribe.main([*map(str, inputs), "--run", "x", "--output", str(tmp_path / "out.jsonl")]) == 1
    out, err = capsys.readouterr()
    assert out.splitlines() == [f"{good[0]}\t{' '.join(SCRIPT[0:3])}", f"{good[1]}\t{' '.join(SCRIPT[1:4])}"]
    errors = [line for line in err.splitlines() if " error: " in line]
    assert [line.split(": ")[2] for line in errors] == list(map(str, inputs[1:-1]))
    reasons = {Path(line.split(": ")[2]).name: line.split(": ", 3)[3] for line in errors}
    assert reasons["x.wav"].startswith("not readable as audio")
    assert reasons["cut.flac"].startswith("truncated or damaged")
    assert reasons["missing.wav"] == "no such file"
    assert reasons["cut.wav"].startswith("truncated: ")
    assert reasons["empty.wav"].startswith("no audio samples")
    assert reasons["loop.wav"] == "symlink loop"
    assert "Traceback" not in err and "(6 failed)" in err.splitlines()[-1]
    assert [r["path"] for r in read_jsonl(tmp_path / "out.jsonl")] == list(map(str, good))


def test_usage_errors_are_one_line_with_status_2(tmp_path, capsys):
    audio = write_wav(tmp_path / "a.wav", speak(["cool"])[0])
    with pytest.raises(SystemExit) as raised:
        transcribe.main([str(audio)])
    assert raised.value.code == 2
    assert capsys.readouterr().err.endswith("one of the arguments --run --model is required (see --help)\n")

    cases = [
        ([str(audio), "--run", str(tmp_path)], f"--run: {tmp_path}: no recipe.yaml"),
        ([str(tmp_path / "nothing-here"), "--run", str(tmp_path)], "no audio files found in"),
        ([f"@{tmp_path / 'list.txt'}", "--run", str(tmp_path)], "cannot read the list file"),
    ]
    (tmp_path / "nothing-here").mkdir()
    for argv, message in cases:
        assert transcribe.main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("asr.transcribe: error: ") and message in err, err

    assert transcribe.main([str(audio), "--model", str(tmp_path)]) == 2
    assert capsys.readouterr().err == (
        f"asr.transcribe: error: --model: {tmp_path}: not an export directory of asr.export "
        "(no export.json)\n"
    )
    with pytest.raises(SystemExit):
        transcribe.main([str(audio), "--run", "x", "--window-seconds", "2", "--overlap-seconds", "1.1"])
    assert "--overlap-seconds must be at most half of --window-seconds" in capsys.readouterr().err


# --------------------------------------------------------------------------- inputs and outputs (stand-in)


def one_error_line(err: str, start: str) -> str:
    """The single stderr line of a refusal, checked: one line, the usual prefix."""
    assert err.count("\n") == 1 and err.startswith(f"asr.transcribe: error: {start}"), err
    return err


def test_an_output_that_is_an_input_is_refused_before_any_work(fake, tmp_path, capsys, monkeypatch):
    """However the output names an input (the same path, another spelling, a symlink, a hard link, through
    a directory or a list), nothing is read, nothing is written, the input keeps its bytes."""
    folder = tmp_path / "in"
    folder.mkdir()
    victim = write_wav(folder / "victim.wav", speak(["cool"])[0])
    other = write_wav(tmp_path / "other.wav", speak(["all"])[0])
    original = victim.read_bytes()
    (tmp_path / "link.wav").symlink_to(victim)
    os.link(victim, tmp_path / "hard.wav")
    listed = tmp_path / "list.txt"
    listed.write_text(f"{victim}\n")
    monkeypatch.chdir(tmp_path)
    cases = [
        ([victim], victim),
        ([other, victim], victim),
        ([folder], victim),
        ([f"@{listed}"], victim),
        ([victim], "in/../in/victim.wav"),
        (["in/victim.wav"], victim),
        ([victim], tmp_path / "link.wav"),
        ([victim], tmp_path / "hard.wav"),
        ([other, f"@{listed}"], listed),
        ([folder], folder / "out.jsonl"),
    ]
    for inputs, output in cases:
        assert transcribe.main([*map(str, inputs), "--run", "x", "--output", str(output)]) == 2
        err = one_error_line(capsys.readouterr().err, f"--output {output}: ")
        assert "is the input" in err or "lies inside the input directory" in err, err
        assert victim.read_bytes() == original and listed.read_text() == f"{victim}\n"
    assert fake.opened == 0
    assert sorted(p.name for p in tmp_path.rglob("*")) == [
        "hard.wav", "in", "link.wav", "list.txt", "other.wav", "victim.wav"
    ]  # fmt: skip


def test_an_output_that_cannot_be_written_is_refused_before_any_work(fake, tmp_path, capsys, permission_bits):
    audio_file = write_wav(tmp_path / "a.wav", speak(["cool"])[0])
    read_only = tmp_path / "read-only"
    read_only.mkdir()
    read_only.chmod(0o555)
    (tmp_path / "file").write_text("a file")
    (tmp_path / "folder").mkdir()
    cases = {
        read_only / "out.jsonl": "cannot write in",
        read_only / "new" / "out.jsonl": "cannot write in",
        tmp_path / "folder": "is a directory",
        tmp_path / "file" / "out.jsonl": "is not a directory",
        tmp_path / "file" / "deeper" / "out.jsonl": "is not a directory",
        "/dev/null": "not a regular file",
    }
    before = sorted(tmp_path.rglob("*"))
    with permission_bits():
        for output, message in cases.items():
            assert transcribe.main([str(audio_file), "--run", "x", "--output", str(output)]) == 2
            assert message in one_error_line(capsys.readouterr().err, f"--output {output}: ")
    assert fake.opened == 0
    assert sorted(tmp_path.rglob("*")) == before  # the probe files are gone
    nested = tmp_path / "new" / "dir" / "out.jsonl"
    assert transcribe.main([str(audio_file), "--run", "x", "--output", str(nested)]) == 0
    assert [r["text"] for r in read_jsonl(nested)] == ["cool"]


def test_window_and_overlap_are_valid_in_samples_and_bounded(fake, tmp_path, capsys):
    """1.000075 s is 16001.2 samples, 0.5000375 s 8000.6: rounded apart, the overlap (8001) would be more
    than half the window (16001); half the window in seconds stays at most half of it in samples."""
    waveform, _ = speak(SCRIPT[:8])
    path = write_wav(tmp_path / "a.wav", waveform)
    output = tmp_path / "out.jsonl"
    argv = [str(path), "--run", "x", "--output", str(output)]
    assert transcribe.main([*argv, "--window-seconds", "1.000075", "--overlap-seconds", "0.5000375"]) == 0
    assert read_jsonl(output)[0]["windows"] == len(plan_windows(len(waveform), 16001, 8000))
    capsys.readouterr()
    for value in ("1e305", "3600.5", "inf", "nan"):
        with pytest.raises(SystemExit) as raised:
            transcribe.main([*argv, "--window-seconds", value])
        assert raised.value.code == 2
        err = capsys.readouterr().err
        assert (
            err.count("\n") == 1 and f"argument --window-seconds: must be in [0.5, 3600], got {value}" in err
        )
    assert transcribe.main([*argv, "--window-seconds", "3600"]) == 0  # the largest: one window
    assert read_jsonl(output)[0]["windows"] == 1


def test_quiet_and_silent_files_get_a_warning_naming_the_level(fake, tmp_path, capsys):
    """Speech at -60 dBFS is heard as blanks by a model trained on speech at -25 to -15 dBFS; the text is
    empty or wrong, so the file gets a warning (threshold: asr.transcribe.QUIET_DBFS, -45 dBFS)."""
    loud = write_wav(tmp_path / "loud.wav", speak(["cool"])[0])
    quiet_samples = speak(["cool"])[0]
    quiet_samples = 0.001 * quiet_samples / np.abs(quiet_samples).max()  # peak -60 dBFS
    quiet = write_wav(tmp_path / "quiet.wav", quiet_samples)
    silent = write_wav(tmp_path / "silent.wav", np.zeros(SAMPLE_RATE, np.float32))
    output = tmp_path / "out.jsonl"
    assert transcribe.main([str(loud), str(quiet), str(silent), "--run", "x", "--output", str(output)]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if ": warning: " in line]
    assert len(warnings) == 2
    assert warnings[0].startswith(f"asr.transcribe: warning: {quiet}: very quiet (level -6")
    assert "dBFS, peak -60 dBFS;" in warnings[0] and "the text may be empty or wrong" in warnings[0]
    assert warnings[1] == f"asr.transcribe: warning: {silent}: silent (every sample is 0): no text"
    records = {Path(r["path"]).name: r for r in read_jsonl(output)}
    assert records["loud.wav"]["text"] == "cool" and records["loud.wav"]["level_dbfs"] > -20
    assert records["quiet.wav"]["peak_dbfs"] == -60.0 and records["quiet.wav"]["level_dbfs"] <= -60
    assert records["silent.wav"]["level_dbfs"] is None and records["silent.wav"]["peak_dbfs"] is None


def test_a_directory_that_cannot_be_searched_is_an_error_line(fake, tmp_path, capsys, permission_bits):
    top = tmp_path / "top"
    (top / "locked").mkdir(parents=True)
    write_wav(top / "a.wav", speak(["all"])[0])
    write_wav(top / "locked" / "b.wav", speak(["cool"])[0])
    write_wav(top / "z.wav", speak(["day"])[0])
    (top / "locked").chmod(0)
    with permission_bits():
        assert transcribe.main([str(top), "--run", "x"]) == 1
    out, err = capsys.readouterr()
    assert out.splitlines() == [f"{top / 'a.wav'}\tall", f"{top / 'z.wav'}\tday"]
    errors = [line for line in err.splitlines() if ": error: " in line]
    assert errors == [
        f"asr.transcribe: error: {top / 'locked'}: cannot search the directory (permission denied)"
    ]
    assert err.splitlines()[-1].startswith("asr.transcribe: 3 file(s) (1 failed), ")


def test_a_file_name_that_is_not_utf8_is_transcribed_and_printed_safely(fake, tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    path = folder / os.fsdecode(b"caf\xe9.wav")  # Latin-1: the byte 0xE9 alone is not UTF-8
    soundfile.write(os.fsencode(path), speak(["cool"])[0], SAMPLE_RATE, subtype="FLOAT")
    write_wav(folder / "b.wav", speak(["day"])[0])
    listed = tmp_path / "list.txt"
    listed.write_bytes(os.fsencode(path) + b"\n")
    output = tmp_path / "out.jsonl"
    assert transcribe.main([f"@{listed}", str(folder), "--run", "x", "--output", str(output)]) == 0
    out = capsys.readouterr().out
    shown = f"{folder}/caf\\xe9.wav"
    assert out.splitlines() == [f"{shown}\tcool", f"{folder / 'b.wav'}\tday"]  # found again: once
    assert [r["path"] for r in read_jsonl(output)] == [shown, str(folder / "b.wav")]


def test_a_file_named_twice_in_any_spelling_is_transcribed_once(fake, tmp_path, capsys, monkeypatch):
    (tmp_path / "a").mkdir()
    write_wav(tmp_path / "a" / "s1.wav", speak(["cool"])[0])
    (tmp_path / "link.wav").symlink_to(tmp_path / "a" / "s1.wav")
    os.link(tmp_path / "a" / "s1.wav", tmp_path / "hard.wav")
    monkeypatch.chdir(tmp_path)
    names = ["a/../a/s1.wav", "a/s1.wav", "a", "link.wav", "hard.wav", str(tmp_path / "a" / "s1.wav")]
    assert transcribe.main([*names, "--run", "x"]) == 0
    out, err = capsys.readouterr()
    assert out == "cool\n"  # a single file: its text alone
    assert err.splitlines()[-1].startswith("asr.transcribe: 1 file(s), ")


def test_an_explicit_language_model_must_be_there_and_needs_a_beam(fake, tmp_path, capsys, permission_bits):
    audio_file = write_wav(tmp_path / "a.wav", speak(["cool"])[0])
    half = tmp_path / "half-lm"
    half.mkdir()
    (half / "unigrams.txt").write_text("cool\n")
    locked = tmp_path / "locked-lm"
    locked.mkdir()
    (locked / "lm.binary").write_bytes(b"x")
    (locked / "unigrams.txt").write_text("cool\n")
    (locked / "lm.binary").chmod(0)
    cases = [
        ("/nonexistent", "--lm /nonexistent: no such file (an output directory of asr.lm)"),
        (str(audio_file), f"--lm {audio_file}: not a directory (an output directory of asr.lm)"),
        (str(half), f"--lm {half}: {half / 'lm.binary'}: no such file (build it with asr.lm)"),
        (str(locked), f"--lm {locked}: {locked / 'lm.binary'}: permission denied (build it with asr.lm)"),
    ]
    with permission_bits():
        for lm, message in cases:
            assert transcribe.main([str(audio_file), "--run", "x", "--beam", "64", "--lm", lm]) == 2
            assert capsys.readouterr().err == f"asr.transcribe: error: {message}\n"
    assert fake.opened == 0
    for option, value in (("--lm", str(locked)), ("--alpha", "0.5"), ("--beta", "1")):
        for beam in ([], ["--beam", "1"]):
            with pytest.raises(SystemExit) as raised:
                transcribe.main([str(audio_file), "--run", "x", *beam, option, value])
            assert raised.value.code == 2
            err = capsys.readouterr().err
            assert err.count("\n") == 1 and f"{option} needs --beam N with N > 1" in err


def test_the_process_start_is_known_to_a_clock_tick():
    """A child reports when it started (CLOCK_BOOTTIME minus :func:`asr.clock.process_seconds`): between
    the parent's clock just before starting it and just after, less the one tick the start is truncated
    to. (psutil's create_time is off by the boot time's fraction of a second.)"""
    code = (  # the clock read after process_seconds' own: a pause between the two reads cannot make it early
        "import time; from asr.clock import process_seconds; elapsed = process_seconds(); "
        "print(repr(time.clock_gettime(time.CLOCK_BOOTTIME) - elapsed))"
    )
    for _ in range(3):
        before = time.clock_gettime(time.CLOCK_BOOTTIME)
        result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True)
        after = time.clock_gettime(time.CLOCK_BOOTTIME)
        started = float(result.stdout)
        tick = 1 / os.sysconf("SC_CLK_TCK")
        assert before - tick <= started <= after, (before, started, after)


# --------------------------------------------------------------------------- a model that says real words


@pytest.fixture(scope="module")
def spoken(memorized_run, tmp_path_factory) -> dict[str, Path]:
    """The memorized utterances, a 44.1 kHz stereo copy of the first (both channels the same, so that the
    mono mix is the original), and all four joined with 2 s silences (17.3 s: six windows of 5 s)."""
    out = tmp_path_factory.mktemp("transcribe-inputs")
    samples = [soundfile.read(path, dtype="float32")[0] for path in memorized_run.audio]
    import soxr

    stereo = np.stack([samples[0], samples[0]], axis=1)
    write_wav(out / "stereo44k.wav", soxr.resample(stereo, SAMPLE_RATE, 44_100, quality="VHQ"), 44_100)
    pause = np.zeros(2 * SAMPLE_RATE, np.float32)
    write_wav(out / "long.wav", np.concatenate([part for s in samples for part in (s, pause)]))
    return {"stereo": out / "stereo44k.wav", "long": out / "long.wav", "out": out}


LONG_WINDOW = ["--window-seconds", "5", "--overlap-seconds", "2"]


@pytest.fixture(scope="module")
def transcribed(memorized_run, spoken) -> tuple[str, str, dict[str, dict]]:
    """One in-process run of the command on the real checkpoint: the four utterances, the stereo copy and
    the long file; its stdout, stderr and JSON records by file name."""
    output = spoken["out"] / "out.jsonl"
    stdout, stderr = io.StringIO(), io.StringIO()
    argv = [*map(str, memorized_run.audio), str(spoken["stereo"]), str(spoken["long"]),
            "--run", str(memorized_run.run_dir), "--output", str(output), *LONG_WINDOW]  # fmt: skip
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        status = transcribe.main(argv)
    assert status == 0, stderr.getvalue()[-3000:]
    return stdout.getvalue(), stderr.getvalue(), {Path(r["path"]).name: r for r in read_jsonl(output)}


def test_the_texts_are_the_transcripts_and_those_asr_evaluate_gets_from_the_shards(
    memorized_run, transcribed, tmp_path
):
    """Not vacuous: the model says the words (each text is its transcript), so equal texts mean equal
    decisions, frame by frame, of two paths from audio to text."""
    import asr.evaluate

    out, _, records = transcribed
    texts = [records[path.name]["text"] for path in memorized_run.audio]
    assert texts == list(memorized_run.texts)
    assert out.splitlines()[: len(texts)] == [
        f"{p}\t{t}" for p, t in zip(memorized_run.audio, texts, strict=True)
    ]
    run = shutil.copytree(memorized_run.run_dir, tmp_path / "run")  # asr.evaluate writes into it
    assert asr.evaluate.main(["--run", str(run), "--data", str(memorized_run.shards), "--beam", "1"]) == 0
    (hypotheses,) = (run / "eval").glob("ckpt-*/*.beam1.hyp.tsv")
    rows = [line.split("\t") for line in hypotheses.read_text().splitlines()[1:]]
    evaluated = {row[0]: row[5] if len(row) > 5 else "" for row in rows}
    assert evaluated == {path.stem: text for path, text in zip(memorized_run.audio, texts, strict=True)}


@pytest.fixture(scope="module")
def memorized_model(memorized_run):
    """The memorized run's checkpoint in this process."""
    from asr.inference import open_run

    return open_run(memorized_run.run_dir)


LOGIT_TOLERANCE = 1e-5
"""Relative to the largest logit (~17 here). The same features (the same code on the same samples) through
the same model: identical in this process (measured), but float32 sums in another order (another batch
layout, another BLAS thread count) may differ in the last bits."""


def test_the_command_computes_the_logits_evaluation_computes(memorized_model, memorized_run):
    """Audio read by the command through the model gives the logits of the extracted features, within a
    tolerance; the best symbol is compared where the two best are further apart than twice that (a frame
    whose two best symbols are closer may go either way), which must be most frames."""
    from asr.evaluate import load_eval_set

    dev = load_eval_set(memorized_run.shards)
    paths = {p.stem: p for p in memorized_run.audio}
    from_audio = memorized_model.run_waveforms([audio.load(paths[u]).samples for u in dev.utt_ids])
    from_shards = memorized_model.run(list(dev.features))
    decided = 0
    for utt_id, a, b in zip(dev.utt_ids, from_audio, from_shards, strict=True):
        assert a.shape == b.shape and a.shape[1] == NUM_SYMBOLS, utt_id
        np.testing.assert_allclose(a, b, rtol=0, atol=LOGIT_TOLERANCE * max(1.0, np.abs(b).max()))
        top = np.sort(b, axis=1)
        clear = top[:, -1] - top[:, -2] > 2 * LOGIT_TOLERANCE * max(1.0, np.abs(b).max())
        assert np.array_equal(a.argmax(axis=1)[clear], b.argmax(axis=1)[clear]), utt_id
        decided += int(clear.sum())
    assert decided >= 0.9 * sum(len(b) for b in from_shards)


def test_stereo_44k_input_gives_a_note_and_the_words_of_the_original(transcribed, spoken, memorized_run):
    _, err, records = transcribed
    notes = [line for line in err.splitlines() if ": note: " in line]
    assert notes == [f"asr.transcribe: note: {spoken['stereo']}: 44100 Hz stereo -> 16000 Hz mono"]
    record, original = records["stereo44k.wav"], records[memorized_run.audio[0].name]
    assert (record["sample_rate"], record["channels"]) == (44_100, 2)
    assert record["duration"] == original["duration"]  # 16 kHz -> 44.1 kHz -> 16 kHz: the same samples count
    assert record["text"] == original["text"] == memorized_run.texts[0]
    reference = soundfile.read(memorized_run.audio[0], dtype="float32")[0]
    converted = audio.load(spoken["stereo"]).samples
    assert converted.shape == reference.shape
    assert np.abs(converted - reference).max() < 0.02  # measured 0.008 (the band above 7.3 kHz)


LONG_CER = 0.15
"""Character error rate of the long file's text against the four transcripts. The model learned each
utterance alone, from its own start: a window that starts inside one, or holds the end of another, gives it
context it never saw (measured 0.043: "retortby", "israelhis", "he house"). One utterance's words lost or
doubled at a seam add ~0.2."""


def test_a_long_file_is_transcribed_in_windows_by_the_real_model(transcribed, spoken, memorized_run):
    import jiwer

    _, err, records = transcribed
    record = records["long.wav"]
    assert record["windows"] == 6 and record["duration"] > 17  # 5 s every 3 s
    words = record["words"]
    reference = " ".join(memorized_run.texts)
    assert len(words) >= 0.6 * len(reference.split()), record["text"]
    assert jiwer.cer(reference, record["text"]) <= LONG_CER, record["text"]
    assert [w["word"] for w in words] == record["text"].split()
    assert [w["start"] for w in words] == sorted(w["start"] for w in words)
    assert all(0 <= w["start"] <= w["end"] <= record["duration"] for w in words)
    assert words[0]["start"] < 1.0 and words[-1]["end"] > record["duration"] - 4.5  # first and last window
    summary = err.splitlines()[-1]
    assert summary.startswith("asr.transcribe: 6 file(s), ") and "real-time factor" in summary


# --------------------------------------------------------------------------- its export, in real processes


@pytest.fixture(scope="module")
def memorized_export(memorized_run, tmp_path_factory) -> Path:
    """The memorized run exported as TFLite float32 (the command starts without TensorFlow: ~1 s)."""
    import asr.export

    out = tmp_path_factory.mktemp("memorized-export") / "export"
    with contextlib.redirect_stderr(io.StringIO()) as log:
        status = asr.export.main(
            ["--run", str(memorized_run.run_dir), "--out", str(out), "--formats", "tflite"]
        )
    assert status == 0, log.getvalue()[-2000:]
    return out


def transcribe_process(*args, **popen) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "asr.transcribe", *map(str, args)], cwd=REPO_ROOT,
                            text=True, **popen)  # fmt: skip


@pytest.mark.parametrize("output", [True, False], ids=["with-output", "stdout-only"])
def test_a_closed_stdout_loses_no_output_and_ends_quietly(memorized_run, memorized_export, tmp_path, output):
    """``| head -1`` closes the pipe: here its reader is closed before the command writes anything (it is
    still starting), so every line it prints meets a broken pipe. With ``--output`` every file is still
    transcribed and written; the exit status is SIGPIPE's 141, and no traceback is printed."""
    jsonl = tmp_path / "out.jsonl"
    extra = ["--output", jsonl] if output else []
    process = transcribe_process(*memorized_run.audio, "--model", memorized_export, *extra,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    process.stdout.close()
    err = process.stderr.read()
    assert process.wait(timeout=120) == 141, err
    assert "Traceback" not in err and "Broken" not in err and "Exception ignored" not in err, err
    if output:
        assert [r["text"] for r in read_jsonl(jsonl)] == list(memorized_run.texts)
        assert err.splitlines()[-1].startswith("asr.transcribe: 4 file(s), ")
    else:
        assert "asr.transcribe:" not in err  # stopped at the first line: nothing to sum up


def test_a_fifo_among_the_inputs_is_an_error_line_not_a_hang(memorized_run, memorized_export, tmp_path):
    """A FIFO blocks whoever opens it until a writer comes: refused at once, the next file transcribed. The
    summary's times fit in the wall time the parent measured around the process (psutil's process start
    made them longer by the boot time's fraction of a second: 0.42 s on the machine this was written on)."""
    fifo = tmp_path / "fifo.wav"
    os.mkfifo(fifo)
    began = time.perf_counter()
    process = transcribe_process(fifo, memorized_run.audio[0], "--model", memorized_export,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    try:
        out, err = process.communicate(timeout=120)
    finally:
        process.kill()
    wall = time.perf_counter() - began
    assert process.returncode == 1, err
    assert f"asr.transcribe: error: {fifo}: not a regular file (FIFO)\n" in err
    assert out == f"{memorized_run.audio[0]}\t{memorized_run.texts[0]}\n"
    summary = err.splitlines()[-1]
    total, startup = (float(x) for x in re.search(r"in ([\d.]+) s: start-up ([\d.]+) s", summary).groups())
    assert summary.startswith("asr.transcribe: 2 file(s) (1 failed), ")
    assert 0 < startup <= total <= wall + 0.02, (summary, wall)  # a tick of 0.01 s, and the rounding


MALFORMED_EXPORT = {
    "not-json": "{oops",
    "a-list": "[1, 2]",
    "wrong-types": None,  # the real metadata with sample_rate and alphabet of other types
    "missing-keys": '{"format_version": 1}',
}


@pytest.mark.parametrize("damage", MALFORMED_EXPORT)
def test_a_malformed_export_json_is_one_line_naming_it(
    memorized_export, memorized_run, tmp_path, capsys, damage
):
    export = shutil.copytree(memorized_export, tmp_path / "export")
    text = MALFORMED_EXPORT[damage]
    if text is None:
        metadata = json.loads((export / "export.json").read_text())
        text = json.dumps({**metadata, "sample_rate": "16 kHz", "alphabet": 7})
    (export / "export.json").write_text(text)
    assert transcribe.main([str(memorized_run.audio[0]), "--model", str(export)]) == 2
    one_error_line(capsys.readouterr().err, f"--model: {export}/export.json: ")
