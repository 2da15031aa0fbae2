"""Keep every N-th utterance of an ``asr.extract`` shard directory: a smaller training set.

    python tools/thin_shards.py work/minilibri/train --every 2 --out work/minilibri-half/train [--force]

Why: "would more data help?" is answered by a learning curve, training the same recipe on less of the
same data and comparing where each levels off (RESULTS.md section 9 measures it on minilibri for issue 17).
Each shard keeps its utterances number 0, N, 2N, ... in file order; ``asr.extract`` writes a corpus's
utterances in id order, so every voice (and chapter) keeps about 1/N of its sentences instead of some
voices being dropped whole. The output is a shard directory like ``asr.extract``'s: same shard names and
compression, a manifest whose shard list, counts and feature mean/std (the normalization ``asr.train``
uses) are recomputed from the kept utterances, and a ``thinned`` entry naming the source and N. Sidecars
are not written (``asr.train`` then reads utterance lengths from the shards). Written to a temporary
directory and renamed; errors (a damaged or missing source, N < 1, an existing ``--out`` without
``--force``) are one line with exit status 2.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from asr.config import OneLineParser  # noqa: E402
from asr.extract import feature_mean_std  # noqa: E402
from asr.features import FRAME_SECONDS  # noqa: E402
from asr.files import (  # noqa: E402
    DirectoryExistsError,
    WriteError,
    directory_in_place,
    os_error_line,
    refuse_existing,
    write_json,
)
from asr.shards import (  # noqa: E402
    MANIFEST,
    ShardDirectoryError,
    ShardError,
    compression_of,
    decode_utterance,
    read_manifest,
    read_records,
    write_shard,
)

PROG = "thin_shards"


def thin_shard(source: Path, target: Path, every: int) -> dict:
    """Write records 0, ``every``, 2 × ``every``, ... of ``source`` to ``target`` (nothing when none is
    kept); returns the shard's manifest entry with ``feature_sum`` / ``feature_sum_squares`` (float64
    ``[93]``) for the mean/std."""
    kept: list[bytes] = []
    frames = 0
    feature_sum = feature_squares = 0.0
    for index, record in enumerate(read_records(source)):
        if index % every:
            continue
        features = decode_utterance(record)["features"].astype(np.float64)
        frames += features.shape[0]
        feature_sum = feature_sum + features.sum(axis=0)
        feature_squares = feature_squares + np.square(features).sum(axis=0)
        kept.append(record)
    if kept:
        write_shard(target, kept, compression_of(source))
    return {
        "file": target.name,
        "utterances": len(kept),
        "frames": frames,
        "seconds": round(frames * FRAME_SECONDS, 6),
        "feature_sum": feature_sum,
        "feature_sum_squares": feature_squares,
    }


def thin(source: Path, out: Path, every: int, force: bool = False) -> dict:
    """Thin every shard of ``source`` into ``out`` (see the module docstring); returns the new manifest."""
    if every < 1:
        raise ValueError(f"--every {every}: must be at least 1")
    refuse_existing(out, force)
    manifest, files = read_manifest(source, "source")
    out.parent.mkdir(parents=True, exist_ok=True)
    with directory_in_place(out, force) as directory:
        entries = [thin_shard(file, directory / file.name, every) for file in files]
        entries = [entry for entry in entries if entry["utterances"]]
        frames = sum(entry["frames"] for entry in entries)
        mean, std = feature_mean_std(
            sum(entry.pop("feature_sum") for entry in entries),
            sum(entry.pop("feature_sum_squares") for entry in entries),
            frames,
        )
        counts = dict(manifest.get("counts", {}))
        counts.update(
            kept=sum(entry["utterances"] for entry in entries),
            hours_kept=frames * FRAME_SECONDS / 3600,
            frames_kept=frames,
        )
        thinned = {
            **manifest,
            "counts": counts,
            "feature_mean": mean.tolist(),
            "feature_std": std.tolist(),
            "shards": entries,
            "thinned": {"source": str(source.resolve()), "every": every},
        }
        write_json(directory / MANIFEST, thinned)
    return thinned


def parse_args(argv: Sequence[str] | None = None):
    parser = OneLineParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path, help="asr.extract output directory")
    parser.add_argument("--every", type=int, default=2, help="keep one utterance in this many (default 2)")
    parser.add_argument("--out", type=Path, required=True, help="output shard directory")
    parser.add_argument("--force", action="store_true", help="replace an existing --out")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: one summary line on stderr; one-line errors with exit status 2."""
    args = parse_args(argv)
    try:
        manifest = thin(args.source, args.out, args.every, args.force)
    except (ValueError, ShardDirectoryError, ShardError, DirectoryExistsError, WriteError) as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        print(f"{PROG}: error: {os_error_line(error)}", file=sys.stderr)
        return 2
    counts = manifest["counts"]
    print(
        f"{PROG}: {args.out}: {counts['kept']} utterances ({counts['hours_kept']:.3f} h) "
        f"in {len(manifest['shards'])} shards, one in {args.every} of {args.source}",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
