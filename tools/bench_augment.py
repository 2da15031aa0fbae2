"""What each augmentation costs the input pipeline: utterances per second, as a ratio to the plain pipeline.

    PYTHONPATH=. python tools/bench_augment.py [--recipe recipes/cpu.yaml] [--rounds 2] [--set key=value ...]

Runs the real training input pipeline (``asr.data.training_dataset`` over the recipe's training shards,
one epoch per measurement) with every augmentation off ("plain"), then with one augmentation at a time and
with all of them, alternating each setting with a plain epoch so both see the same machine load; prints
utterances per second of each and its ratio to the plain epochs measured beside it (the best of
``--rounds``). Per-utterance cost ~ (1 / ratio - 1) x the plain pipeline's time per utterance.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

SETTINGS = {
    "vtlp [0.9, 1.1]": {"vtlp_range": (0.9, 1.1)},
    "noise white [0, 20] dB": {"noise_snr_db": (0.0, 20.0)},
    "noise pink [0, 20] dB": {"noise_snr_db": (0.0, 20.0), "noise_color": "pink"},
    "normalization utterance": {"normalization": "utterance"},
    "tempo [0.85, 1.15]": {"tempo_range": (0.85, 1.15)},
    "spec_augment (LD)": {"spec_augment": True, "freq_mask_width": 27, "time_mask_width": 100},
}
OFF = {"vtlp_range": (1.0, 1.0), "noise_snr_db": (), "normalization": "global", "tempo_range": (1.0, 1.0),
       "spec_augment": False}  # fmt: skip


def utterances_per_second(recipe, changes: dict, shards, epoch: int) -> float:
    from asr import data

    config = dataclasses.replace(recipe.data, **{**OFF, **changes})
    started, utterances = time.perf_counter(), 0
    batches = data.training_dataset(shards, config, recipe.model, recipe.train.global_batch, epoch, 1)
    for features, *_ in batches:
        utterances += int(features.shape[0])
    return utterances / (time.perf_counter() - started)


def main() -> None:
    from asr.config import Bound, OneLineParser, option_type

    parser = OneLineParser(prog="tools/bench_augment.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", default=str(REPO / "recipes" / "cpu.yaml"))
    parser.add_argument("--rounds", type=option_type(int, Bound(1)), default=2)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="recipe override as for asr.train, e.g. data.readers=2")  # fmt: skip
    args = parser.parse_args()
    from asr import data
    from asr.config import load_recipe

    recipe = load_recipe(args.recipe, args.set)
    shards = data.open_shards(recipe.data.train, "data.train")
    utterances_per_second(recipe, {}, shards, 0)  # warm-up: file cache, tf.data start-up
    print(f"{args.recipe}: {shards.utterances} utterances of {recipe.data.train}, global batch "
          f"{recipe.train.global_batch}, best of {args.rounds}")  # fmt: skip
    print("| setting | utterances/s | plain beside it | ratio |\n|---|---:|---:|---:|")
    settings = {**SETTINGS, "all of them": {k: v for s in SETTINGS.values() for k, v in s.items()}}
    for name, new in settings.items():
        pairs = [(utterances_per_second(recipe, {}, shards, r), utterances_per_second(recipe, new, shards, r))
                 for r in range(args.rounds)]  # fmt: skip
        plain, augmented = max(p for p, _ in pairs), max(a for _, a in pairs)
        print(f"| {name} | {augmented:.0f} | {plain:.0f} | {augmented / plain:.2f} |", flush=True)


if __name__ == "__main__":
    main()
