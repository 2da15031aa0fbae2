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


MEL_SUM_TOLERANCE = 2 * features.N_BINS * 2.0**-24
"""Largest difference between two float32 Mel energies summed in different orders, relative to the energy:
each is a sum of at most 257 non-negative products, and float32 summation in any order is within
(n - 1) unit roundoffs of the exact sum, so two orders differ by at most 2 x 257 x 2^-24 = 3.1e-5."""


def assert_same_features_up_to_summation_order(stored: np.ndarray, computed: np.ndarray) -> None:
    """Features an extraction worker stored = features this process computes, within the rounding of
    the Mel matrix product. Not bit-exact: a worker limits BLAS to one thread and this process does not,
    and on some CPUs (AVX-512 EPYC) the two sum the 257 products in different orders.

    Log-Mel: ln(E(1 + d)) - ln(E) ~ d, so the absolute difference is at most :data:`MEL_SUM_TOLERANCE`
    plus two float32 ulps of values below 16 (the logarithm's own rounding). MFCC: an orthonormal DCT of
    the 80 log-Mels, computed by the same code on both sides, so each coefficient differs by at most the
    Euclidean norm of the log-Mel differences: sqrt(80) times the log-Mel bound.
    """
    assert stored.shape == computed.shape and stored.dtype == computed.dtype == np.float32
    log_mel_bound = MEL_SUM_TOLERANCE + 2 * np.spacing(np.float32(16))
    np.testing.assert_allclose(stored[:, : features.N_MELS], computed[:, : features.N_MELS], rtol=0,
                               atol=log_mel_bound)  # fmt: skip
    np.testing.assert_allclose(stored[:, features.N_MELS :], computed[:, features.N_MELS :], rtol=0,
                               atol=np.sqrt(features.N_MELS) * log_mel_bound)  # fmt: skip


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
            computed = features.compute_features(waveform)
            assert_same_features_up_to_summation_order(utterance["features"], computed)
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


# --------------------------------------------------------------------------- write failures


def temporaries(directory: Path) -> list[Path]:
    return [path for path in directory.rglob("*") if ".tmp-" in path.name]


def test_a_failed_shard_write_is_one_line_keeps_finished_shards_and_a_rerun_resumes(
    tiny_corpus, tmp_path, run_module, run_module_limited
):
    common = ["--corpus", tiny_corpus, "--subsets", "train-clean", "--shard-size", 4]
    reference, out = tmp_path / "reference", tmp_path / "out"
    assert extract_main(*common, "--out", reference) == 0
    sizes = [len(data) for data in shard_bytes(reference).values()]
    failing = next(i for i, size in enumerate(sizes) if size > sizes[0])  # the first shard over the limit

    one_worker = [*common, "--out", out, "--workers", 1, "--quiet"]  # shards written in order
    limited = run_module_limited("asr.extract", *one_worker, limit=sizes[0])
    assert limited.returncode == 2
    assert limited.stderr == (
        f"asr.extract: error: {out / f'shard-{failing:05d}.tfrecord.gz'}: cannot write (File too large); "
        "what was written before is intact, rerun when fixed\n"
    )
    assert temporaries(out) == [] and not (out / "manifest.json").exists()
    assert shard_bytes(out) == dict(list(shard_bytes(reference).items())[:failing])
    sidecars = sorted(p.name for p in (out / "sidecars").iterdir())
    assert sidecars == [f"shard-{i:05d}.json" for i in range(failing)]

    resumed = run_module("asr.extract", *common, "--out", out, "--workers", 2)
    assert resumed.returncode == 0, resumed.stderr
    assert f"{failing} of this task's {len(sizes)} shards already complete" in resumed.stderr
    assert shard_bytes(out) == shard_bytes(reference)
    assert manifest_without_timing(out) == manifest_without_timing(reference)


def test_a_failed_manifest_write_leaves_no_temporary_and_merge_only_completes(
    tiny_train, tiny_corpus, tmp_path, run_module, run_module_limited
):
    out = tmp_path / "train"
    shutil.copytree(tiny_train, out)
    (out / "manifest.json").unlink()
    args = ["--corpus", tiny_corpus, "--subsets", "train-clean", "--out", out, "--shard-size", 8]
    args.append("--merge-only")

    limited = run_module_limited("asr.extract", *args, "--quiet", limit=1000)
    assert limited.returncode == 2
    assert limited.stderr == (
        f"asr.extract: error: {out / 'manifest.json'}: cannot write (File too large); "
        "what was written before is intact, rerun when fixed\n"
    )
    assert temporaries(out) == [] and not (out / "manifest.json").exists()
    assert shard_bytes(out) == shard_bytes(tiny_train)

    assert run_module("asr.extract", *args).returncode == 0
    assert manifest_without_timing(out) == manifest_without_timing(tiny_train)


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--workers", 0, "--workers: must be at least 1, got 0"),
        ("--shard-size", -1, "--shard-size: must be at least 1, got -1"),
        ("--num-tasks", 0, "--num-tasks: must be at least 1, got 0"),
        ("--max-duration", "nan", "--max-duration nan must be a positive number of seconds"),
        ("--max-duration", "-2", "--max-duration -2.0 must be a positive number of seconds"),
        ("--compression-level", 10, "--compression-level 10 is not in 0..9"),
        ("--workers", "two", "argument --workers: invalid int value: 'two' (see --help)"),
    ],
)
def test_numeric_options_out_of_range_are_one_line(run_module, tiny_corpus, tmp_path, option, value, message):
    args = ["--corpus", tiny_corpus, "--subsets", "dev-clean", "--out", tmp_path / "o", option, value]
    result = run_module("asr.extract", *args)
    assert result.returncode == 2
    assert result.stderr == f"asr.extract: error: {message}\n"
    assert not (tmp_path / "o").exists()


# --------------------------------------------------------------------------- damaged audio


def _with_declared_frames(flac: bytes, frames: int) -> bytes:
    """The FLAC file with STREAMINFO's total-samples field (36 bits at byte 21.5) set to ``frames``."""
    word = int.from_bytes(flac[18:26], "big")
    word = (word & ~((1 << 36) - 1)) | frames
    return flac[:18] + word.to_bytes(8, "big") + flac[26:]


@pytest.fixture(scope="module")
def damaged_corpus(tiny_corpus, tmp_path_factory) -> Path:
    """Three good files of the tiny corpus and seven damaged ones, each with a transcript."""
    root = tmp_path_factory.mktemp("damaged")
    chapter = root / "damaged" / "7" / "70"
    chapter.mkdir(parents=True)
    good = sorted((tiny_corpus / "train-clean").rglob("*.flac"))[:3]
    for number, path in enumerate(good):
        shutil.copy(path, chapter / f"7-70-000{number}.flac")
    body = good[0].read_bytes()
    middle = len(body) // 2
    declared = soundfile.info(good[0]).frames
    damaged = {
        "0010": body[:middle] + bytes(b ^ 0xFF for b in body[middle : middle + 64]) + body[middle + 64 :],
        "0011": body[:middle],
        "0012": body[:8192] + np.random.default_rng(1).bytes(len(body) - 8192),
        "0013": b"",
        "0014": _with_declared_frames(body, declared - 16000),  # the frames hold a second more
    }
    for number, data in damaged.items():
        (chapter / f"7-70-{number}.flac").write_bytes(data)
    nan, huge = tone(1.0), tone(1.0)
    nan[100:200] = np.nan
    huge[300:400] = 1e30  # finite, but the power spectrum overflows
    soundfile.write(chapter / "7-70-0015.wav", nan, 16000, subtype="FLOAT")
    soundfile.write(chapter / "7-70-0016.wav", huge, 16000, subtype="FLOAT")
    numbers = [f"000{i}" for i in range(3)] + [f"00{i}" for i in range(10, 17)]
    (chapter / "7-70.trans.txt").write_text("".join(f"7-70-{n} SOME WORDS\n" for n in numbers))
    return root


def test_damaged_audio_is_skipped_with_a_reason_never_featurized(damaged_corpus, tmp_path, run_module):
    out = tmp_path / "out"
    result = run_module("asr.extract", "--corpus", damaged_corpus, "--subsets", "damaged", "--out", out,
                        "--workers", 2)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr and "Warning" not in result.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    reasons = {s["utt_id"]: s["reason"] for s in manifest["skipped"]}
    assert reasons == {
        "7-70-0010": "unreadable audio",  # flipped bytes mid-frames: libsndfile 1.2 raises (frame CRC)
        "7-70-0011": "unreadable audio",  # cut at half: raises
        "7-70-0012": "unreadable audio",  # valid header, random frames: raises
        "7-70-0013": "unreadable audio",  # empty: no header (the plan skips it)
        "7-70-0014": "corrupt audio: samples differ from the MD5 in its FLAC header",  # decodes 1 s short
        "7-70-0015": "corrupt audio: NaN or infinite samples",
        "7-70-0016": "corrupt audio: NaN or infinite features",
    }
    assert manifest["counts"]["skipped_by_reason"] == {"corrupt audio": 3, "unreadable audio": 4}
    kept = [u for shard in manifest["shards"] for u in shards.read_utterances(out / shard["file"])]
    assert [u["utt_id"] for u in kept] == ["7-70-0000", "7-70-0001", "7-70-0002"]
    assert all(np.isfinite(u["features"]).all() for u in kept)
    assert np.isfinite(manifest["feature_mean"]).all() and np.isfinite(manifest["feature_std"]).all()


@pytest.fixture(scope="module")
def odd_corpus(tiny_corpus, tmp_path_factory) -> Path:
    """Subset ``odd``: two good utterances, a WAV file cut short, a file name that is not UTF-8 (Latin-1,
    with its id in the same bytes in the transcript file), a chapter directory nobody may list and one
    whose transcript file nobody may read."""
    root = tmp_path_factory.mktemp("odd")
    chapter = root / "odd" / "6" / "60"
    chapter.mkdir(parents=True)
    good = sorted((tiny_corpus / "train-clean").rglob("*.flac"))[:2]
    for number, path in enumerate(good):
        shutil.copy(path, chapter / f"6-60-000{number}.flac")
    whole = root / "whole.wav"
    soundfile.write(whole, tone(1.0), 16000, subtype="PCM_16")
    (chapter / "6-60-0002.wav").write_bytes(whole.read_bytes()[:20_000])
    shutil.copy(good[0], os.fsencode(chapter) + b"/6-60-caf\xe9.flac")
    lines = b"".join(f"6-60-000{n} SOME WORDS\n".encode() for n in range(3)) + b"6-60-caf\xe9 LATIN ONE\n"
    (chapter / "6-60.trans.txt").write_bytes(lines)
    locked = root / "odd" / "6" / "61"
    locked.mkdir()
    shutil.copy(good[1], locked / "6-61-0000.flac")
    (locked / "6-61.trans.txt").write_text("6-61-0000 LOCKED AWAY\n")
    locked.chmod(0)
    hidden = root / "odd" / "6" / "62"
    hidden.mkdir()
    shutil.copy(good[1], hidden / "6-62-0000.flac")
    (hidden / "6-62.trans.txt").write_text("6-62-0000 HIDDEN TEXT\n")
    (hidden / "6-62.trans.txt").chmod(0)
    return root


def test_a_cut_wav_an_unlistable_directory_and_a_latin1_name(odd_corpus, tmp_path, capsys, permission_bits):
    """The cut WAV decodes without an error as a shorter file: skipped as corrupt, as asr.transcribe refuses
    it. The directory nobody may list is a warning and a skipped entry, not a silent gap. The Latin-1 name
    is read (its id gets U+FFFD for the byte, as the transcript file's line does)."""
    out = tmp_path / "out"
    with permission_bits():
        assert extract.main(["--corpus", str(odd_corpus), "--subsets", "odd", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    locked = odd_corpus / "odd" / "6" / "61"
    assert (
        f"asr.extract: warning: {locked}: unreadable directory: Permission denied; what it holds is left out"
        in err
    )
    manifest = json.loads((out / "manifest.json").read_text())
    cut = "corrupt audio: 19956 of the 32000 data bytes its header declares are there"
    assert sorted((s["utt_id"], Path(s["path"]).name, s["reason"]) for s in manifest["skipped"]) == [
        ("", "6-62.trans.txt", "unreadable transcripts: Permission denied"),
        ("", "61", "unreadable directory: Permission denied"),
        ("6-60-0002", "6-60-0002.wav", cut),
        ("6-62-0000", "6-62-0000.flac", "missing transcript"),
    ]
    assert manifest["counts"]["skipped_by_reason"] == {
        "corrupt audio": 1, "missing transcript": 1, "unreadable directory": 1, "unreadable transcripts": 1
    }  # fmt: skip
    kept = [u for shard in manifest["shards"] for u in shards.read_utterances(out / shard["file"])]
    assert [(u["utt_id"], u["text"]) for u in kept] == [
        ("6-60-0000", "some words"), ("6-60-0001", "some words"), ("6-60-caf\ufffd", "latin one")
    ]  # fmt: skip
    assert kept[2]["features"].tobytes() == kept[0]["features"].tobytes()  # the same audio


def test_a_fifo_in_the_corpus_is_skipped_not_waited_for(tiny_corpus, tmp_path, run_module):
    """Reading a FIFO's header waits for a writer forever: it is skipped at once with its reason (the
    timeout makes a regression fail instead of hanging)."""
    chapter = tmp_path / "corpus" / "fifo" / "5" / "50"
    chapter.mkdir(parents=True)
    shutil.copy(next((tiny_corpus / "train-clean").rglob("*.flac")), chapter / "5-50-0000.flac")
    os.mkfifo(chapter / "5-50-0001.flac")
    (chapter / "5-50.trans.txt").write_text("5-50-0000 GOOD\n5-50-0001 NEVER WRITTEN\n")
    out = tmp_path / "out"
    result = run_module("asr.extract", "--corpus", tmp_path / "corpus", "--subsets", "fifo", "--out", out,
                        "--workers", 1, timeout=60)  # fmt: skip
    assert result.returncode == 0, result.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert [(s["utt_id"], s["reason"]) for s in manifest["skipped"]] == [
        ("5-50-0001", "unreadable audio: not a regular file (FIFO)")
    ]
    assert manifest["counts"]["kept"] == 1 and manifest["counts"]["skipped_by_reason"] == {
        "unreadable audio": 1
    }


# --------------------------------------------------------------------------- speed perturbation


def test_speed_perturb_scales_pitch_and_length_by_the_factor():
    rate, seconds, tone = 16000, 1.0, 500.0
    samples = np.sin(2 * np.pi * tone * np.arange(int(rate * seconds)) / rate).astype(np.float32)
    for factor in (0.9, 1.1, 0.95):
        perturbed = extract.speed_perturb(samples, factor)
        assert perturbed.dtype == np.float32 and len(perturbed) == round(len(samples) / factor)
        middle = perturbed[2000:-2000]  # the resampling filter's edges left out
        spectrum = np.abs(np.fft.rfft(middle * np.hanning(len(middle))))
        peak = np.argmax(spectrum) * rate / len(middle)
        assert abs(peak - tone * factor) < rate / len(middle), factor
    assert extract.speed_perturb(samples, 1.0) is samples


def test_speed_perturbed_copies_follow_each_utterance_with_its_transcript(tiny_corpus, tmp_path):
    audio = {p.stem: p for p in (tiny_corpus / "train-clean").rglob("*.flac")}
    lengths = {utt_id: soundfile.info(path).frames for utt_id, path in audio.items()}
    longest = max(lengths.values()) / 16000
    max_duration = longest * 1.05  # every original kept, the longest 0.9 copies (x 1.11) too long
    out = tmp_path / "sp"
    args = ["--corpus", tiny_corpus, "--subsets", "train-clean", "--out", out, "--shard-size", 8]
    assert (
        extract_main(*args, "--workers", 1, "--max-duration", max_duration, "--speed-perturb", "1.1,0.9") == 0
    )
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["parameters"]["speed_perturb"] == [0.9, 1.1]
    too_long = {f"sp0.9-{u}" for u, n in lengths.items() if round(n / 0.9) / 16000 > max_duration}
    assert too_long and {s["utt_id"] for s in manifest["skipped"]} == too_long
    assert {s["reason"] for s in manifest["skipped"]} == {"too long"}
    read = [u for e in manifest["shards"] for u in shards.read_utterances(out / e["file"])]
    expected = [
        name for u in sorted(audio) for name in (u, f"sp0.9-{u}", f"sp1.1-{u}") if name not in too_long
    ]
    assert [u["utt_id"] for u in read] == expected  # each original followed by its copies
    by_id = {u["utt_id"]: u for u in read}
    transcripts = transcripts_of(tiny_corpus / "train-clean")
    for utterance in read:
        prefix, _, original = utterance["utt_id"].partition("-")
        factor = float(prefix[2:]) if prefix.startswith("sp") else 1.0
        original = original if factor != 1.0 else utterance["utt_id"]
        samples = round(lengths[original] / factor)
        assert utterance["num_frames"] == features.num_frames(samples)
        assert utterance["duration"] == pytest.approx(samples / 16000)
        assert utterance["text"] == text.normalize(transcripts[original])
        assert utterance["labels"].tolist() == by_id[original]["labels"].tolist()
    assert manifest["counts"]["kept"] == 3 * len(audio) - len(too_long)


def test_speed_factor_one_is_the_extraction_without_the_option(tiny_train, tiny_corpus, tmp_path):
    out = tmp_path / "train"
    args = ["--corpus", tiny_corpus, "--subsets", "train-clean", "--out", out, "--shard-size", 8]
    assert extract_main(*args, "--workers", 1, "--speed-perturb", "1.0") == 0
    assert shard_bytes(out) == shard_bytes(tiny_train)
    assert manifest_without_timing(out) == manifest_without_timing(tiny_train)
    assert extract_main(*args, "--workers", 1) == 0  # and the same directory resumes without the option


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("0", "factor 0.0 is not in [0.1, 10.0]"),
        ("-0.9,1.1", "factor -0.9 is not in"),
        ("0.9,abc", "'abc' is not a number"),
        ("0.9,,1.1", "'' is not a number"),
        ("nan", "factor nan is not in"),
    ],
)
def test_a_bad_speed_factor_is_one_line_and_exit_2(run_module, tiny_corpus, tmp_path, value, message):
    args = ["--corpus", tiny_corpus, "--subsets", "dev-clean", "--out", tmp_path / "o"]
    result = run_module("asr.extract", *args, f"--speed-perturb={value}")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("asr.extract: error: --speed-perturb")
    assert message in result.stderr
    assert not (tmp_path / "o").exists()
