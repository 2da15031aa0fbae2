"""What reliability costs, side by side in one run: checkpoint saves with their integrity record against a
plain ``tf.train.Checkpoint.write``, and the training shard check against one plain read of the shards.

    python tools/bench_reliability.py [--recipe recipes/cpu.yaml] [--shards work/minilibri/train] [--rounds 3]

- **checkpoint**: :meth:`asr.checkpoint.Checkpointer.save` (TF files under a temporary prefix, renamed,
  CRC32C of each file, the JSON state fsynced) vs ``tf.train.Checkpoint.write`` of the same model and
  optimizer to a fresh prefix; rounds alternate, medians reported, and the CRC32C pass alone.
- **shard check**: :func:`asr.data.check_shards` (every record read by TF's reader, in ``data.readers``
  threads) vs one ``tf.data.TFRecordDataset`` pass over the same files (one thread, records counted), and
  the check again with its cache (what a resumed run pays).

Timings only, never asserted; the machine is shared, so only the ratios of one run compare.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))


def timed(function) -> float:
    began = time.perf_counter()
    function()
    return time.perf_counter() - began


def bench_checkpoint(recipe_path: str, rounds: int, work: Path) -> dict[str, float]:
    import tensorflow as tf

    from asr.checkpoint import describe_files
    from asr.config import load_recipe
    from asr.session import TrainingSession
    from asr.strategy import make_strategy

    recipe = load_recipe(recipe_path, ["runtime.strategy=one_device", "runtime.replicas=1"])
    session = TrainingSession(make_strategy(recipe.runtime, env={}), recipe, work / "run", is_chief=True)
    plain = tf.train.Checkpoint(model=session.model, optimizer=session.optimizer)
    ours, baseline, checksums = [], [], []
    for round_number in range(rounds + 1):  # the first round warms up both
        ours_seconds = timed(lambda n=round_number: session.save(n, {"round": n}))
        baseline_seconds = timed(lambda n=round_number: plain.write(str(work / "plain" / f"ckpt-{n}")))
        prefix = work / "run" / "checkpoints" / f"ckpt-{round_number}"
        crc_seconds = timed(lambda p=prefix: describe_files(p))
        if round_number:
            ours.append(ours_seconds)
            baseline.append(baseline_seconds)
            checksums.append(crc_seconds)
    size = sum(f.stat().st_size for f in (work / "run" / "checkpoints").glob(f"ckpt-{rounds}.*"))
    return {
        "bytes": size,
        "ours": statistics.median(ours),
        "baseline": statistics.median(baseline),
        "crc": statistics.median(checksums),
    }


def bench_shard_check(shards_path: Path, work: Path) -> dict[str, float]:
    import tensorflow as tf

    from asr import data

    shards = data.open_shards(shards_path)
    readers = data.DataConfig().readers

    def plain_read() -> None:
        dataset = tf.data.TFRecordDataset(list(shards.files), compression_type=shards.compression_type)
        dataset.reduce(0, lambda count, _: count + 1)

    cache = work / "shard-check.json"
    baseline = timed(plain_read)
    checked = timed(lambda: data.check_shards(shards, "full", cache, readers))
    cached = timed(lambda: data.check_shards(shards, "full", cache, readers))
    audio_hours = sum(f for _, f, _ in shards.lengths) * 0.01 / 3600
    return {"files": len(shards.files), "hours": audio_hours, "baseline": baseline, "check": checked,
            "cached": cached, "readers": readers}  # fmt: skip


def main() -> int:
    from asr.config import Bound, OneLineParser, option_type

    parser = OneLineParser(prog="tools/bench_reliability.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", default="recipes/cpu.yaml", help="model and optimizer to checkpoint")
    parser.add_argument("--shards", type=Path, default=REPO_ROOT / "work" / "minilibri" / "train")
    parser.add_argument("--rounds", type=option_type(int, Bound(1)), default=3)
    args = parser.parse_args()
    if not (args.shards / "manifest.json").is_file():
        print(f"bench_reliability: {args.shards}: no shards; run python -m asr.extract --corpus "
              "../shared/minilibri --subsets train-clean --out work/minilibri/train",
              file=sys.stderr)  # fmt: skip
        return 2
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        saves = bench_checkpoint(args.recipe, args.rounds, work)
        check = bench_shard_check(args.shards, work)
    print(f"checkpoint ({args.recipe}, {saves['bytes'] / 1e6:.1f} MB, median of {args.rounds}): "
          f"save with integrity record {saves['ours']:.3f} s vs plain tf.train.Checkpoint.write "
          f"{saves['baseline']:.3f} s = {saves['ours'] / saves['baseline']:.2f}x; CRC32C pass alone "
          f"{saves['crc']:.3f} s ({saves['bytes'] / 1e6 / saves['crc']:.0f} MB/s)")  # fmt: skip
    ratio = check["check"] / check["baseline"]
    print(f"shard check ({check['files']} shards, {check['hours']:.2f} h of audio, {check['readers']} "
          f"threads): {check['check']:.2f} s vs one plain read {check['baseline']:.2f} s = {ratio:.2f}x; "
          f"cached (a resumed run) {check['cached'] * 1000:.1f} ms; "
          f"{check['check'] / check['hours']:.2f} s per hour of audio")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
