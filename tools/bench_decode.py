"""Decode speed (utterances/s) at beam widths 1, 64, 256, 512 with the LM: process pool vs one process.

    .venv/bin/python tools/bench_decode.py [--corpus ../shared/minilibri] [--subset dev-clean]
                                           [--beams 1,64,256,512] [--limit N] [--lm LM_DIR]

Logits are model-shaped: one ``[T_out, 30]`` matrix per real utterance of the subset, T_out from
its duration (features.md frame count, then the convolution's kernel 11 / stride 2). They are
"random but peaked": the utterance's own transcript, encoded with separators, laid out evenly over
the frames with blanks between, plus Gaussian noise, so every frame has a few plausible symbols as a
half-trained model's output does. The LM is built from the corpus's ``train-clean`` transcripts with
``asr.lm`` unless ``--lm`` names one. Both modes decode the same matrices in the same run and print
their ratio; the WER column checks they agree.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
PROG = "tools/bench_decode.py"
sys.path.insert(0, str(REPO_ROOT))

from asr.config import Bound, OneLineParser, option_type  # noqa: E402
from asr.decoding import BeamSearchDecoder, GreedyDecoder  # noqa: E402
from asr.lm import build_lm, normalize_lines  # noqa: E402
from asr.metrics import score  # noqa: E402
from asr.text import BLANK_ID, NUM_SYMBOLS, encode, normalize  # noqa: E402

SAMPLE_RATE = 16000
WINDOW, HOP = 512, 160
CONV_KERNEL, CONV_STRIDE = 11, 2


def output_frames(duration_seconds: float) -> int:
    samples = round(duration_seconds * SAMPLE_RATE)
    frames = 1 + (samples - WINDOW) // HOP
    return (frames - CONV_KERNEL) // CONV_STRIDE + 1


def peaked_logits(text: str, frames: int, rng: np.random.Generator, noise: float = 1.2) -> np.ndarray:
    labels = encode(text)
    frames = max(frames, 2 * len(labels) + 1)
    targets = np.full(frames, BLANK_ID)
    positions = np.linspace(0, frames - 1, num=len(labels) + 2)[1:-1].astype(int)
    targets[positions] = labels
    logits = rng.normal(0.0, noise, size=(frames, NUM_SYMBOLS)).astype(np.float32)
    logits[np.arange(frames), targets] += 5.0
    return logits


def load_subset(corpus: Path, subset: str) -> list[dict]:
    rows = [json.loads(line) for line in (corpus / "manifest.jsonl").read_text().splitlines() if line]
    return [row for row in rows if row["subset"] == subset]


def main() -> int:
    parser = OneLineParser(
        prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--corpus", default=str(REPO_ROOT.parent / "shared" / "minilibri"))
    parser.add_argument("--subset", default="dev-clean")
    parser.add_argument("--beams", default="1,64,256,512")
    parser.add_argument(
        "--limit",
        type=option_type(int, Bound(0, note="0: all")),
        default=0,
        help="first N utterances only (0: all)",
    )
    parser.add_argument("--lm", default="", help="asr.lm output directory (default: build from train-clean)")
    parser.add_argument(
        "--workers",
        type=option_type(int, Bound(0, note="0: all cores")),
        default=0,
        help="pool processes (0: all cores)",
    )
    args = parser.parse_args()

    corpus = Path(args.corpus)
    rows = load_subset(corpus, args.subset)
    if args.limit:
        rows = rows[: args.limit]
    if not rows:
        where = f"{corpus}/manifest.jsonl"
        print(f"{PROG}: error: no utterances of {args.subset} in {where}", file=sys.stderr)
        return 2
    rng = np.random.default_rng(0)
    references = [normalize(row["text"]) for row in rows]
    logits = [
        peaked_logits(t, output_frames(row["duration"]), rng) for t, row in zip(references, rows, strict=True)
    ]
    audio_seconds = sum(row["duration"] for row in rows)

    with tempfile.TemporaryDirectory() as scratch:
        lm_dir = args.lm
        if not lm_dir:
            train = [row["text"] for row in load_subset(corpus, "train-clean")]
            sentences, _ = normalize_lines(train)
            lm_dir = os.path.join(scratch, "lm")
            build_lm(sentences, lm_dir, order=4, sources=[f"{corpus}/manifest.jsonl train-clean"])
        workers = args.workers or os.cpu_count() or 1
        frames = sum(m.shape[0] for m in logits)
        print(
            f"{len(rows)} {args.subset} utterances, {audio_seconds:.0f} s of audio, {frames} output frames; "
            f"LM {lm_dir}; {workers} pool processes on {os.cpu_count()} cores"
        )
        header = ("beam", "mode", "seconds", "utt/s", "x realtime", "WER", "pool speedup")
        print(" ".join(f"{h:>{w}}" for h, w in zip(header, (5, 8, 8, 8, 10, 6, 12), strict=True)))
        for beam in (int(b) for b in args.beams.split(",")):
            single_seconds = None
            for mode, n_workers in (("single", 1), ("pool", workers)):
                if beam == 1 and mode == "pool":
                    continue
                decoder = GreedyDecoder() if beam == 1 else BeamSearchDecoder(beam, lm_dir, workers=n_workers)
                with decoder:
                    start = time.perf_counter()
                    hypotheses = decoder.decode(logits)
                    seconds = time.perf_counter() - start
                wer = score(references, hypotheses).wer
                speedup = "" if single_seconds is None else f"{single_seconds / seconds:.2f}x"
                single_seconds = seconds if mode == "single" else single_seconds
                print(
                    f"{beam:>5} {mode:>8} {seconds:>8.2f} {len(rows) / seconds:>8.1f} "
                    f"{audio_seconds / seconds:>10.1f} {wer:>6.2f} {speedup:>12}",
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
