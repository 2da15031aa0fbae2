"""The extraction stage end to end: shards, manifest, resume, partitioning and bad input."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile
import tensorflow as tf

from asr import extract, features, shards, text

REPO_ROOT = Path(__file__).resolve().parents[1]


def extract_main(*args) -> int:
    return extract.main([*map(str, args), "--quiet"])


def shard_bytes(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.glob("shard-*.tfrecord*"))}


def manifest_without_timing(out: Path) -> dict:
    manifest = json.loads((out / "manifest.json").read_text())
    manifest.pop("extraction_seconds")
    manifest.pop("split")
    return manifest


def transcripts_of(corpus_dir: Path) -> dict[str, str]:
    lines = [
        line.split(" ", 1) for p in corpus_dir.rglob("*.trans.txt") for line in p.read_text().splitlines()
    ]
    return dict(lines)


@pytest.fixture(scope="module")
def tiny_train(tiny_corpus, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("extract") / "train"
    assert (
        extract_main(
            "--corpus",
            tiny_corpus,
            "--subsets",
            "train-clean",
            "--out",
            out,
            "--shard-size",
            8,
            "--workers",
            2,
        )
        == 0
    )
    return out


def test_shards_and_manifest_of_tiny_corpus(tiny_train, tiny_corpus):
    manifest = json.loads((tiny_train / "manifest.json").read_text())
    assert [s["file"] for s in manifest["shards"]] == [f"shard-0000{i}.tfrecord.gz" for i in range(3)]
    assert [s["utterances"] for s in manifest["shards"]] == [8, 8, 4]
    assert manifest["format"] == "asr-shards" and manifest["version"] == 1 and manifest["split"] == "train"
    assert manifest["alphabet"] == list(text.SYMBOLS)
    assert manifest["parameters"]["feature_dim"] == 93 and manifest["parameters"]["shard_size"] == 8
    assert manifest["counts"]["candidates"] == manifest["counts"]["kept"] == 20
    assert manifest["counts"]["skipped"] == 0 and manifest["skipped"] == []
    assert set(manifest["versions"]) >= {"python", "numpy", "scipy", "librosa", "soundfile", "asr"}

    transcripts = transcripts_of(tiny_corpus / "train-clean")
    audio = {p.stem: p for p in (tiny_corpus / "train-clean").rglob("*.flac")}
    all_features = []
    for entry in manifest["shards"]:
        path = tiny_train / entry["file"]
        dataset = tf.data.TFRecordDataset(str(path), compression_type="GZIP")
        read = list(shards.read_utterances(path))
        assert len(read) == entry["utterances"] == sum(1 for _ in dataset)
        assert sum(u["num_frames"] for u in read) == entry["frames"]
        for utterance in read:
            waveform = soundfile.read(audio[utterance["utt_id"]], dtype="float32")[0]
            np.testing.assert_array_equal(utterance["features"], features.compute_features(waveform))
            assert utterance["text"] == text.normalize(transcripts[utterance["utt_id"]])
            assert utterance["labels"].tolist() == text.encode(utterance["text"])
            assert utterance["duration"] == pytest.approx(len(waveform) / 16000)
            all_features.append(utterance["features"].astype(np.float64))
    stacked = np.concatenate(all_features)
    assert manifest["counts"]["frames_kept"] == len(stacked)
    np.testing.assert_allclose(manifest["feature_mean"], stacked.mean(axis=0), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(manifest["feature_std"], stacked.std(axis=0), rtol=1e-7, atol=1e-9)
    utterance_ids = [
        u
        for e in manifest["shards"]
        for u in [x["utt_id"] for x in shards.read_utterances(tiny_train / e["file"])]
    ]
    assert utterance_ids == sorted(transcripts)


def test_output_independent_of_workers_and_tasks(tiny_train, tiny_corpus, tmp_path):
    common = ["--corpus", tiny_corpus, "--subsets", "train-clean", "--shard-size", 8]
    assert extract_main(*common, "--out", tmp_path / "one", "--workers", 1) == 0
    assert extract_main(*common, "--out", tmp_path / "parts", "--num-tasks", 2, "--task-index", 1) == 0
    assert sorted(p.name for p in (tmp_path / "parts").glob("shard-*")) == ["shard-00001.tfrecord.gz"]
    assert not (tmp_path / "parts" / "manifest.json").exists()
    assert extract_main(*common, "--out", tmp_path / "parts", "--merge-only") == 2
    assert extract_main(*common, "--out", tmp_path / "parts", "--num-tasks", 2, "--task-index", 0) == 0
    for out in (tmp_path / "one", tmp_path / "parts"):
        assert shard_bytes(out) == shard_bytes(tiny_train)
        assert manifest_without_timing(out) == manifest_without_timing(tiny_train)


def test_rerun_skips_complete_shards_and_other_parameters_need_overwrite(tiny_corpus, tmp_path, capsys):
    common = ["--corpus", tiny_corpus, "--subsets", "dev-clean", "--out", tmp_path / "dev"]
    assert extract_main(*common) == 0
    shard = tmp_path / "dev" / "shard-00000.tfrecord.gz"
    stamp = shard.stat().st_mtime_ns
    assert extract_main(*common) == 0
    assert shard.stat().st_mtime_ns == stamp
    capsys.readouterr()
    assert extract_main(*common, "--max-duration", 4) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "max_duration=16.7" in error and "--overwrite" in error
    assert extract_main(*common, "--max-duration", 4, "--overwrite") == 0
    manifest = json.loads((tmp_path / "dev" / "manifest.json").read_text())
    assert manifest["parameters"]["max_duration"] == 4
    assert manifest["counts"]["skipped_by_reason"] == {"too long": 4}


def test_manifest_input_gives_the_same_shards(tiny_corpus, tmp_path):
    rows = [
        {
            "id": utt_id,
            "audio": os.path.relpath(next(tiny_corpus.rglob(f"{utt_id}.flac")), tmp_path),
            "text": transcript,
        }
        for utt_id, transcript in transcripts_of(tiny_corpus / "dev-clean").items()
    ]
    (tmp_path / "list.jsonl").write_text("".join(json.dumps(row) + "\n" for row in reversed(rows)))
    assert extract_main("--manifest-input", tmp_path / "list.jsonl", "--out", tmp_path / "a") == 0
    assert extract_main("--corpus", tiny_corpus, "--subsets", "dev-clean", "--out", tmp_path / "b") == 0
    assert shard_bytes(tmp_path / "a") == shard_bytes(tmp_path / "b")


# --------------------------------------------------------------------------- interruption


@pytest.fixture(scope="module")
def larger_corpus(tiny_corpus, tmp_path_factory) -> Path:
    """Six renamed copies (symlinks) of tiny train-clean: 120 utterances, ~7.5 min of audio."""
    root = tmp_path_factory.mktemp("larger")
    for copy in range(6):
        for flac in (tiny_corpus / "train-clean").rglob("*.flac"):
            speaker, chapter, number = flac.stem.split("-")
            chapter_dir = root / "train" / f"{speaker}{copy}" / chapter
            chapter_dir.mkdir(parents=True, exist_ok=True)
            utt_id = f"{speaker}{copy}-{chapter}-{number}"
            (chapter_dir / f"{utt_id}.flac").symlink_to(flac)
            transcript = transcripts_of(flac.parent)[flac.stem]
            with open(chapter_dir / f"{speaker}{copy}-{chapter}.trans.txt", "a") as handle:
                handle.write(f"{utt_id} {transcript}\n")
    return root


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.slow
@pytest.mark.parametrize("signal_number", [signal.SIGKILL, signal.SIGINT])
def test_interrupted_run_resumes_to_identical_output(larger_corpus, tmp_path, signal_number):
    common = ["--corpus", larger_corpus, "--subsets", "train", "--shard-size", 2, "--workers", 1]
    assert extract_main(*common, "--out", tmp_path / "reference") == 0

    out = tmp_path / "interrupted"
    command = [sys.executable, "-m", "asr.extract", *map(str, common), "--out", str(out)]
    process = subprocess.Popen(
        command,
        cwd=REPO_ROOT,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=_default_sigint,  # a shell's background job (`pytest &`) starts with SIGINT ignored
    )
    deadline = time.monotonic() + 60
    while not list((out / "sidecars").glob("shard-*.json")) and time.monotonic() < deadline:
        time.sleep(0.002)
    os.killpg(process.pid, signal_number)
    _, stderr = process.communicate(timeout=60)
    if signal_number == signal.SIGKILL:
        assert process.returncode == -signal.SIGKILL
    else:
        assert process.returncode == 130
        assert "Traceback" not in stderr and "interrupted" in stderr
    assert not (out / "manifest.json").exists()
    assert 0 < len(list(out.glob("shard-*.tfrecord.gz"))) < 60

    assert extract_main(*common, "--out", out) == 0
    assert shard_bytes(out) == shard_bytes(tmp_path / "reference")
    assert len(shard_bytes(out)) == 60
    assert manifest_without_timing(out) == manifest_without_timing(tmp_path / "reference")
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name]


# --------------------------------------------------------------------------- bad input


def tone(seconds: float, rate: int = 16000, channels: int = 1) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    wave = (0.3 * np.sin(2 * np.pi * 330 * t)).astype(np.float32)
    return wave if channels == 1 else np.stack([wave] * channels, axis=1)


@pytest.fixture(scope="module")
def bad_corpus(tiny_corpus, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bad")
    chapter = root / "mixed" / "9" / "90"
    chapter.mkdir(parents=True)
    (root / "empty" / "8" / "80").mkdir(parents=True)
    good = next((tiny_corpus / "train-clean").rglob("*.flac"))
    shutil.copy(good, chapter / "9-90-0000.flac")
    body = good.read_bytes()
    garbled = body[:8192] + np.random.default_rng(0).bytes(len(body) - 8192)
    (chapter / "9-90-0001.flac").write_bytes(garbled)
    (chapter / "9-90-0002.flac").write_bytes(b"not a flac file at all")
    soundfile.write(chapter / "9-90-0003.flac", tone(1.0, channels=2), 16000)
    soundfile.write(chapter / "9-90-0004.flac", tone(0.05), 16000)
    soundfile.write(chapter / "9-90-0005.flac", tone(1.0), 16000)
    soundfile.write(chapter / "9-90-0006.flac", tone(1.0), 16000)
    soundfile.write(chapter / "9-90-0007.flac", tone(1.0), 16000)
    soundfile.write(chapter / "9-90-0008.flac", tone(20.0), 16000)
    soundfile.write(chapter / "9-90-0009.flac", tone(1.5, rate=8000), 8000)
    transcripts = {
        "0000": "A GOOD ONE",
        "0001": "CORRUPT BODY",
        "0002": "NOT AUDIO",
        "0003": "TWO CHANNELS",
        "0004": "TOO SHORT",
        "0006": "ROOM 101",
        "0007": " ",
        "0008": "TOO LONG",
        "0009": "EIGHT KILOHERTZ",
    }
    (chapter / "9-90.trans.txt").write_text("".join(f"9-90-{k} {v}\n" for k, v in transcripts.items()))
    return root


def test_bad_input_is_skipped_with_reasons(bad_corpus, tmp_path, capsys):
    out = tmp_path / "out"
    assert extract.main(["--corpus", str(bad_corpus), "--subsets", "mixed", "empty", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "warning: subset 'empty'" in captured.err and "skipped 8" in captured.err
    manifest = json.loads((out / "manifest.json").read_text())
    reasons = {s["utt_id"]: s["reason"] for s in manifest["skipped"]}
    assert reasons == {
        "9-90-0001": "unreadable audio",
        "9-90-0002": "unreadable audio",
        "9-90-0003": "not mono",
        "9-90-0004": "too short",
        "9-90-0005": "missing transcript",
        "9-90-0006": "unmappable text: '0' '1'",
        "9-90-0007": "empty transcript",
        "9-90-0008": "too long",
    }
    assert manifest["counts"]["skipped_by_reason"] == {
        "empty transcript": 1,
        "missing transcript": 1,
        "not mono": 1,
        "too long": 1,
        "too short": 1,
        "unmappable text": 1,
        "unreadable audio": 2,
    }
    assert manifest["counts"]["empty_subsets"] == 1 and manifest["counts"]["candidates"] == 10
    assert manifest["shards"][0]["utterances"] == 2
    kept = list(shards.read_utterances(out / "shard-00000.tfrecord.gz"))
    assert [u["utt_id"] for u in kept] == ["9-90-0000", "9-90-0009"]
    assert kept[1]["num_frames"] == features.num_frames(24000)

    assert (
        extract_main(
            "--corpus", bad_corpus, "--subsets", "mixed", "--out", tmp_path / "strict", "--no-resample"
        )
        == 0
    )
    strict = json.loads((tmp_path / "strict" / "manifest.json").read_text())
    assert {s["utt_id"]: s["reason"] for s in strict["skipped"]}["9-90-0009"] == "wrong sample rate"


@pytest.mark.parametrize(
    ("make_args", "named"),
    [
        (lambda t, c: ["--corpus", t / "missing", "--subsets", "dev-clean", "--out", t / "o"], "missing"),
        (lambda t, c: ["--corpus", c, "--subsets", "test-other", "--out", t / "o"], "'test-other'"),
        (lambda t, c: ["--corpus", c, "--subsets", "dev-clean", "--out", t / "file" / "o"], "file/o"),
        (lambda t, c: ["--manifest-input", t / "absent.jsonl", "--out", t / "o"], "absent.jsonl"),
        (lambda t, c: ["--manifest-input", t / "bad.jsonl", "--out", t / "o"], "bad.jsonl line 1"),
    ],
    ids=["missing-corpus", "unknown-subset", "unwritable-output", "missing-manifest", "unreadable-manifest"],
)
def test_unusable_input_is_one_line_and_exit_2(run_module, tiny_corpus, tmp_path, make_args, named):
    (tmp_path / "file").write_text("a file, not a directory")
    (tmp_path / "bad.jsonl").write_text("{oops\n")
    result = run_module("asr.extract", *make_args(tmp_path, tiny_corpus))
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("asr.extract: error: ")
    assert named in result.stderr
    if "test-other" in named:
        assert "dev-clean, test-clean, train-clean" in result.stderr
