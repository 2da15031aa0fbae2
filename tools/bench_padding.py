"""How much of what training computes is padding: frames in batches that carry no audio, per batching rule.

    python tools/bench_padding.py [--recipe recipes/cpu.yaml] [--epochs 2] [--set section.key=value ...]

Runs the real input pipeline (``asr.data.training_dataset``: shuffling, tempo perturbation, buckets) over
whole epochs of the recipe's training shards, side by side for fixed padding to ``data.max_frames``, the
recipe's length buckets, and dynamic batching (``data.batch_by: audio_seconds``) over the same buckets, and
counts per batch ``B × T`` frames processed against the ``frames`` of its utterances. Prints the padded
share, utterances and batches per epoch.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def padded_share(recipe, padding: str, epochs: int, audio_budget: float = 0.0) -> dict[str, float]:
    from asr import data

    config = dataclasses.replace(recipe.data, padding=padding)
    if audio_budget:
        config = dataclasses.replace(config, batch_by="audio_seconds", batch_audio_seconds=audio_budget)
    shards = data.open_shards(config.train, "data.train")
    processed = audio = utterances = batches = 0
    for epoch in range(epochs):
        for features, frames, *_ in data.training_dataset(
            shards, config, recipe.model, recipe.train.global_batch, epoch, recipe.train.seed
        ):
            processed += int(features.shape[0]) * int(features.shape[1])
            audio += int(np.sum(frames))
            utterances += int(features.shape[0])
            batches += 1
    return {
        "padded_share": 1 - audio / processed,
        "utterances_per_epoch": utterances / epochs,
        "batches_per_epoch": batches / epochs,
        "mean_padded_length": processed / utterances,
    }


def main() -> None:
    from asr.config import Bound, OneLineParser, option_type

    parser = OneLineParser(prog="tools/bench_padding.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", default=str(REPO / "recipes" / "cpu.yaml"))
    parser.add_argument("--epochs", type=option_type(int, Bound(1)), default=2)
    budget = option_type(float, Bound(0, note="0: equal on average"))
    parser.add_argument("--audio-budget", type=budget, default=0.0,
                        help="dynamic batching budget in padded audio seconds (default: the buckets' mean "
                        "padded length x the recipe's global batch, i.e. equal on average)")  # fmt: skip
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="recipe override as for asr.train, e.g. data.readers=2")  # fmt: skip
    args = parser.parse_args()
    from asr.config import load_recipe

    recipe = load_recipe(args.recipe, args.set)
    data = recipe.data
    print(f"{args.recipe}: global batch {recipe.train.global_batch}, buckets {data.bucket_boundaries}, "
          f"{args.epochs} epoch(s) of {data.train}")  # fmt: skip
    print("| padding | padded frames / frames processed | utterances per epoch | batches per epoch | "
          "mean padded length (frames) |\n|---|---:|---:|---:|---:|")  # fmt: skip
    rows = {"fixed": padded_share(recipe, "fixed", args.epochs)}
    rows["bucket"] = padded_share(recipe, "bucket", args.epochs)
    budget = args.audio_budget or rows["bucket"]["mean_padded_length"] * recipe.train.global_batch / 100
    rows[f"bucket, {budget:.1f} audio-s per batch"] = padded_share(recipe, "bucket", args.epochs, budget)
    for name, r in rows.items():
        print(f"| {name} | {100 * r['padded_share']:.1f} % | {r['utterances_per_epoch']:.0f} "
              f"| {r['batches_per_epoch']:.0f} | {r['mean_padded_length']:.0f} |")  # fmt: skip


if __name__ == "__main__":
    main()
