"""``python -m asr.transcribe``: word times, windows and stitching (pure), the command on a stand-in acoustic
model (real files, windows, stitching and errors; fake acoustics), and on the tiny run's real checkpoint."""

from __future__ import annotations

import dataclasses
import itertools
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile

from asr import transcribe
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
    model = FakeModel()
    monkeypatch.setattr(transcribe, "open_model", lambda args: model)
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
    inputs = [good[0], text, truncated, missing, cut_wav, empty, good[1]]
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
    assert "Traceback" not in err and "(5 failed)" in err.splitlines()[-1]
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


# --------------------------------------------------------------------------- the tiny run's real checkpoint


@pytest.fixture(scope="module")
def tiny_inputs(tiny_corpus, tmp_path_factory) -> dict[str, Path]:
    """The dev-clean flac files, a 44.1 kHz stereo copy of one (both channels the same, so that the mono
    mix is the original), and all of them concatenated (with 0.3 s silences) into a file longer than the
    model's 16.7 s training length."""
    out = tmp_path_factory.mktemp("transcribe-inputs")
    dev = sorted((tiny_corpus / "dev-clean").rglob("*.flac"))
    samples = [soundfile.read(path, dtype="float32")[0] for path in dev]
    import soxr

    stereo = np.stack([samples[0], samples[0]], axis=1)
    write_wav(out / "stereo44k.wav", soxr.resample(stereo, SAMPLE_RATE, 44_100, quality="VHQ"), 44_100)
    pause = np.zeros(round(0.3 * SAMPLE_RATE), np.float32)
    write_wav(out / "long.wav", np.concatenate([part for s in samples for part in (s, pause)]))
    return {"dev": tiny_corpus / "dev-clean", "first": dev[0], "stereo": out / "stereo44k.wav",
            "long": out / "long.wav", "out": out}  # fmt: skip


@pytest.fixture(scope="module")
def tiny_transcribed(tiny_run, tiny_inputs, run_module) -> tuple[object, dict[str, dict]]:
    """One run of the command on the real checkpoint: the dev files, the stereo copy and the long file."""
    output = tiny_inputs["out"] / "out.jsonl"
    result = run_module("asr.transcribe", tiny_inputs["dev"], tiny_inputs["stereo"], tiny_inputs["long"],
                        "--run", tiny_run, "--output", output, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return result, {Path(r["path"]).name: r for r in read_jsonl(output)}


def test_dev_files_give_the_greedy_texts_of_asr_evaluate_on_the_extracted_shards(
    tiny_run, tiny_shards, tiny_transcribed, tmp_path
):
    import asr.evaluate

    result, records = tiny_transcribed
    run = shutil.copytree(tiny_run, tmp_path / "run")  # asr.evaluate writes into the run directory
    assert asr.evaluate.main(["--run", str(run), "--data", str(tiny_shards / "dev"), "--beam", "1"]) == 0
    (hypotheses,) = (run / "eval").glob("ckpt-*/dev.beam1.hyp.tsv")
    rows = [line.split("\t") for line in hypotheses.read_text().splitlines()[1:]]
    evaluated = {row[0]: row[5] if len(row) > 5 else "" for row in rows}
    assert len(evaluated) == 6
    for utt_id, text in evaluated.items():
        assert records[f"{utt_id}.flac"]["text"].split() == text.split(), utt_id
    lines = [line for line in result.stdout.splitlines() if line.endswith(".flac") or ".flac\t" in line]
    assert len(lines) == 6 and all("\t" in line for line in lines)


@pytest.fixture(scope="module")
def tiny_model(tiny_run):
    """The tiny run's checkpoint in this process."""
    from asr.inference import open_run

    return open_run(tiny_run)


def test_the_command_computes_the_logits_evaluation_computes(tiny_model, tiny_shards, tiny_inputs):
    """Audio read by the command through the model gives the logits of the extracted features: the texts
    compared above mean something even if this barely trained model said nothing but blanks."""
    from asr.evaluate import load_eval_set

    model = tiny_model
    dev = load_eval_set(tiny_shards / "dev")
    paths = {p.stem: p for p in tiny_inputs["dev"].rglob("*.flac")}
    from_audio = model.run_waveforms([transcribe.load_audio(paths[u]).samples for u in dev.utt_ids])
    from_shards = model.run(list(dev.features))
    for utt_id, a, b in zip(dev.utt_ids, from_audio, from_shards, strict=True):
        assert a.shape == b.shape and a.shape[1] == NUM_SYMBOLS, utt_id
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5 * max(1.0, np.abs(b).max()))
        assert np.array_equal(a.argmax(axis=1), b.argmax(axis=1))


def test_stereo_44k_input_gives_a_note_and_the_model_input_of_the_original(
    tiny_transcribed, tiny_inputs, tiny_model
):
    """Not the same text: this barely trained model's logits are nearly tied, and the round trip through
    44.1 kHz (soxr's passband ends at ~91 % of 8 kHz) moves a few frames' argmax (measured: 6 of 153)."""
    result, records = tiny_transcribed
    stereo = tiny_inputs["stereo"]
    notes = [line for line in result.stderr.splitlines() if ": note: " in line]
    assert notes == [f"asr.transcribe: note: {stereo}: 44100 Hz stereo -> 16000 Hz mono"]
    record, original = records["stereo44k.wav"], records[tiny_inputs["first"].name]
    assert (record["sample_rate"], record["channels"]) == (44_100, 2)
    assert record["duration"] == original["duration"]  # 16 kHz -> 44.1 kHz -> 16 kHz: the same samples count
    assert record["text"] and original["text"]

    reference = soundfile.read(tiny_inputs["first"], dtype="float32")[0]
    converted = transcribe.load_audio(stereo).samples
    assert converted.shape == reference.shape
    assert np.abs(converted - reference).max() < 0.02  # measured 0.008 (the band above 7.3 kHz)
    a, b = tiny_model.run_waveforms([reference, converted])
    assert a.shape == b.shape
    assert (a.argmax(axis=1) == b.argmax(axis=1)).mean() >= 0.9


def test_channels_are_averaged(tmp_path):
    left, right = np.linspace(-0.5, 0.5, 4000, dtype=np.float32), np.full(4000, 0.25, np.float32)
    audio = transcribe.load_audio(write_wav(tmp_path / "stereo.wav", np.stack([left, right], axis=1)))
    assert (audio.sample_rate, audio.channels) == (SAMPLE_RATE, 2)
    assert audio.note() == "16000 Hz stereo -> 16000 Hz mono"
    np.testing.assert_array_equal(audio.samples, (left + right) / 2)  # float32 mean of two: exact


def test_a_long_file_is_transcribed_in_windows_by_the_real_model(tiny_transcribed, tiny_inputs):
    result, records = tiny_transcribed
    record = records["long.wav"]
    assert record["duration"] > 16.7 and record["windows"] == 2
    words = record["words"]
    assert [w["word"] for w in words] == record["text"].split()
    assert [w["start"] for w in words] == sorted(w["start"] for w in words)
    assert all(0 <= w["start"] <= w["end"] <= record["duration"] for w in words)
    summary = result.stderr.splitlines()[-1]
    assert summary.startswith("asr.transcribe: 8 file(s), ") and "real-time factor" in summary
