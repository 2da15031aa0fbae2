"""Extraction speed: ``python -m asr.extract`` per compression setting vs a plain librosa loop.

Every figure is measured in this one run, side by side, on the same utterances:

* ``asr.extract`` as a real process per setting (fresh output directory). Its
  ``timing-task0.json`` splits the wall time into start-up (process start → first shard
  submitted: imports, worker pool, planning) and steady state (first shard submitted → last shard
  done). Steady speed per worker = audio seconds / (steady seconds × workers).
* The baseline: one process, ``librosa.load`` + ``librosa.stft`` features + scipy DCT +
  ``tf.train.Example`` written with ``tf.io.TFRecordWriter`` (GZIP), shards of 64; timed after
  its imports.
* Compression alone (zlib levels and strategies) on features of a sample of the corpus.

Speeds are audio seconds per wall second ("x real time"). The machine may be shared: run it
when quiet and compare the ratios, which are measured minutes apart at most.

    .venv/bin/python tools/bench_extract.py [--corpus DIR] [--subsets ...] [--workers 1 2]
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from asr import corpus, extract, features, text  # noqa: E402
from asr.config import Bound, OneLineParser, option_type  # noqa: E402

SETTINGS: list[tuple[str, list[str]]] = [
    ("gzip (default: level 6, huffman)", ["--compression", "gzip"]),
    ("gzip level 6, default strategy", ["--compression", "gzip", "--compression-strategy", "default"]),
    (
        "gzip level 1, default strategy",
        ["--compression", "gzip", "--compression-strategy", "default", "--compression-level", "1"],
    ),
    ("zlib (level 6, huffman)", ["--compression", "zlib"]),
    ("none", ["--compression", "none"]),
]


def planned_utterances(corpus_dir: Path, subsets: list[str], max_duration: float) -> list[corpus.Planned]:
    kept = []
    for subset in subsets:
        for candidate in corpus.librispeech_candidates(corpus_dir, subset):
            result = corpus.probe(candidate, max_duration, resample=True)
            if isinstance(result, corpus.Planned):
                kept.append(result)
    return sorted(kept, key=lambda u: u.utt_id)


def run_extract(corpus_dir: Path, subsets: list[str], out: Path, workers: int, options: list[str]) -> dict:
    command = [
        sys.executable,
        "-m",
        "asr.extract",
        "--corpus",
        str(corpus_dir),
        "--subsets",
        *subsets,
        "--out",
        str(out),
        "--workers",
        str(workers),
        "--quiet",
        *options,
    ]
    started = time.perf_counter()
    subprocess.run(command, cwd=REPO_ROOT, check=True)
    wall = time.perf_counter() - started
    timing = json.loads((out / "timing-task0.json").read_text())
    audio = timing["audio_seconds_written"]
    return {
        "startup": timing["startup_seconds"],
        "steady_per_worker": audio / (timing["extract_seconds"] * workers),
        "per_cpu_second": audio / timing["worker_cpu_seconds"],
        "end_to_end": audio / wall,
        "megabytes": sum(p.stat().st_size for p in out.glob("shard-*")) / 1e6,
        "audio_seconds": audio,
    }


def run_baseline(utterances: list[corpus.Planned], out: Path) -> dict:
    import librosa
    import scipy.fft
    import tensorflow as tf

    mel = librosa.filters.mel(sr=16000, n_fft=512, n_mels=80, fmin=0.0, fmax=8000.0)
    options = tf.io.TFRecordOptions(compression_type="GZIP")
    audio = 0.0
    started = time.perf_counter()
    cpu_started = time.process_time()
    for start in range(0, len(utterances), 64):
        with tf.io.TFRecordWriter(str(out / f"shard-{start // 64:05d}.tfrecord.gz"), options) as writer:
            for utterance in utterances[start : start + 64]:
                waveform, _ = librosa.load(utterance.path, sr=16000)
                power = np.abs(librosa.stft(waveform, n_fft=512, hop_length=160, center=False)) ** 2
                log_mel = np.log(mel @ power + 1e-6).T
                mfcc = scipy.fft.dct(log_mel, type=2, norm="ortho", axis=-1)[:, :13]
                values = np.concatenate([log_mel, mfcc], axis=1).astype(np.float32)
                seconds = len(waveform) / 16000
                audio += seconds
                feature = {
                    "features": tf.train.Feature(float_list=tf.train.FloatList(value=values.ravel())),
                    "num_frames": tf.train.Feature(int64_list=tf.train.Int64List(value=[len(values)])),
                    "labels": tf.train.Feature(
                        int64_list=tf.train.Int64List(value=text.encode(utterance.text))
                    ),
                    "text": tf.train.Feature(bytes_list=tf.train.BytesList(value=[utterance.text.encode()])),
                    "utt_id": tf.train.Feature(
                        bytes_list=tf.train.BytesList(value=[utterance.utt_id.encode()])
                    ),
                    "duration": tf.train.Feature(float_list=tf.train.FloatList(value=[seconds])),
                }
                example = tf.train.Example(features=tf.train.Features(feature=feature))
                writer.write(example.SerializeToString())
    wall = time.perf_counter() - started
    return {
        "startup": float("nan"),
        "steady_per_worker": audio / wall,
        "per_cpu_second": audio / (time.process_time() - cpu_started),
        "end_to_end": audio / wall,
        "megabytes": sum(p.stat().st_size for p in out.glob("shard-*")) / 1e6,
        "audio_seconds": audio,
    }


def compression_table(utterances: list[corpus.Planned], sample_seconds: float = 600.0) -> list[str]:
    """zlib speed (x real time) and size ratio per level and strategy, on features of a sample."""
    import soundfile

    blobs, seconds = [], 0.0
    for utterance in utterances:
        waveform = soundfile.read(utterance.path, dtype="float32")[0]
        blobs.append(features.compute_features(waveform).tobytes())
        seconds += len(waveform) / 16000
        if seconds >= sample_seconds:
            break
    raw = sum(map(len, blobs))
    lines = [
        f"compression only, {seconds:.0f} s of audio ({raw / 1e6:.0f} MB of float32 features):",
        f"{'strategy':>9} {'level':>5} {'x real time':>12} {'size ratio':>10}",
    ]
    for strategy in ("default", "huffman"):
        for level in (1, 2, 3, 4, 5, 6, 7, 8, 9) if strategy == "default" else (6,):
            started = time.perf_counter()
            size = 0
            for blob in blobs:
                compressor = zlib.compressobj(
                    level, zlib.DEFLATED, 31, 8, extract.shards.STRATEGIES[strategy]
                )
                size += len(compressor.compress(blob)) + len(compressor.flush())
            elapsed = time.perf_counter() - started
            lines.append(f"{strategy:>9} {level:>5} {seconds / elapsed:>12.0f} {size / raw:>10.3f}")
    return lines


def main() -> None:
    parser = OneLineParser(prog="tools/bench_extract.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", type=Path, default=REPO_ROOT.parent / "shared" / "minilibri")
    parser.add_argument("--subsets", nargs="+", default=["train-clean", "dev-clean", "test-clean"])
    parser.add_argument("--workers", type=option_type(int, Bound(1)), nargs="+", default=[1])
    parser.add_argument("--max-duration", type=option_type(float, Bound(0, low_open=True)), default=16.7)
    args = parser.parse_args()

    utterances = planned_utterances(args.corpus, args.subsets, args.max_duration)
    hours = sum(u.duration for u in utterances) / 3600
    print(f"corpus {args.corpus} {' '.join(args.subsets)}: {len(utterances)} utterances, {hours:.2f} h")
    rows: list[tuple[str, int, dict]] = []
    with tempfile.TemporaryDirectory(prefix="bench_extract_") as scratch:
        root = Path(scratch)
        (root / "baseline").mkdir()
        baseline = run_baseline(utterances, root / "baseline")
        rows.append(("baseline: librosa + TFRecordWriter GZIP", 1, baseline))
        for workers in args.workers:
            for index, (name, options) in enumerate(SETTINGS):
                out = root / f"run-{workers}-{index}"
                rows.append((name, workers, run_extract(args.corpus, args.subsets, out, workers, options)))
    header = (
        f"{'setting':<42} {'workers':>7} {'start-up s':>10} {'steady x/worker':>15} "
        f"{'x per CPU-s':>11} {'end-to-end x':>12} {'MB':>6} {'vs baseline':>11}"
    )
    print(header)
    print("-" * len(header))
    for name, workers, row in rows:
        ratio = row["steady_per_worker"] / baseline["steady_per_worker"]
        print(
            f"{name:<42} {workers:>7} {row['startup']:>10.2f} {row['steady_per_worker']:>15.0f} "
            f"{row['per_cpu_second']:>11.0f} {row['end_to_end']:>12.0f} {row['megabytes']:>6.1f} "
            f"{ratio:>10.2f}x"
        )
    print(
        "steady x/worker: audio s / (wall s from first shard submitted to last done x workers); "
        "x per CPU-s: audio s / worker CPU s (less sensitive to a shared machine); vs baseline: steady ratio"
    )
    print()
    print("\n".join(compression_table(utterances)))


if __name__ == "__main__":
    main()
