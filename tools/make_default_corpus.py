"""Make ``data/minilibri-demo``, the main job's default corpus, from a copy of minilibri.

    python tools/make_default_corpus.py [--source ../shared/minilibri] [--out data/minilibri-demo]

Keeps every voice (speaker) of train-clean but only every other utterance of each chapter (by utterance
number), and dev-clean and test-clean whole, so that the repository stays lean (about 50 MB). The
selection is deterministic (sorted, no randomness): running it again gives the same files. FLAC files
are copied byte for byte; transcript files keep only the kept utterances' lines.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
PROG = "tools/make_default_corpus.py"
SUBSETS = {"train-clean": 2, "dev-clean": 1, "test-clean": 1}
"""Subset -> keep every n-th utterance of each chapter."""
TOP_FILES = ("LICENSE.TXT", "README.TXT", "SPEAKERS.TXT", "CHAPTERS.TXT", "BOOKS.TXT")


def copy_subset(source: Path, out: Path, every: int) -> tuple[int, int]:
    """Copy one subset; returns (utterances, bytes)."""
    kept = size = 0
    for transcript in sorted(source.glob("*/*/*.trans.txt")):
        chapter_out = out / transcript.parent.relative_to(source)
        chapter_out.mkdir(parents=True, exist_ok=True)
        lines = []
        for line in transcript.read_text().splitlines():
            utt_id = line.split(" ", 1)[0]
            if int(utt_id.rsplit("-", 1)[1]) % every:
                continue
            flac = transcript.parent / f"{utt_id}.flac"
            if not flac.is_file():
                continue
            shutil.copyfile(flac, chapter_out / flac.name)
            lines.append(line)
            kept += 1
            size += flac.stat().st_size
        (chapter_out / transcript.name).write_text("\n".join(lines) + "\n")
    return kept, size


def main(argv: list[str] | None = None) -> int:
    from asr.config import OneLineParser

    parser = OneLineParser(
        prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--source", default=str(REPO_ROOT.parent / "shared" / "minilibri"))
    parser.add_argument("--out", default=str(REPO_ROOT / "data" / "minilibri-demo"))
    args = parser.parse_args(argv)
    source, out = Path(args.source), Path(args.out)
    if not (source / "train-clean").is_dir():
        print(f"{PROG}: error: --source {source}: not a minilibri copy (no train-clean/)", file=sys.stderr)
        return 2
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    for name in TOP_FILES:
        if (source / name).is_file():
            shutil.copyfile(source / name, out / name)
    total = 0
    for subset, every in SUBSETS.items():
        kept, size = copy_subset(source / subset, out / subset, every)
        total += size
        print(f"{subset}: {kept} utterances, {size / 1e6:.1f} MB")
    print(f"wrote {out} ({total / 1e6:.1f} MB of FLAC)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
