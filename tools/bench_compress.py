"""What k-means weight clustering costs a trained model: accuracy against size, per cluster count and scope.

    python tools/bench_compress.py --run RUN_DIR [--data work/minilibri/test work/minilibri/dev]
        [--lm work/minilibri/lm] [--clusters 4,8,16,32,64,128,256] [--scopes layer,model] [--beam 64]
        [--finetune 4,8] [--finetune-epochs 1] [--finetune-lr 1e-4] [--out docs/results/compress]

Rows: the run's newest checkpoint (float32, the baseline); each scope × cluster count through
``asr.compress`` (no fine-tuning); per-layer 64 clusters with byte-aligned 8-bit indices; each scope's
clustering at each ``--finetune`` count, then fine-tuned with the assignments fixed through ``asr.train``
(``train.clustered_weights``; ``--finetune-epochs`` epochs at ``--finetune-lr``, validation loss only) and
packed again by ``asr.compress`` (exact: the fine-tuned tables still hold K values); per-channel int8; and
the paper's model (recipes/base.yaml, random weights) as float32 and per-layer 64 clusters, for size and
speed only. Every trained row is evaluated on every ``--data`` set with greedy decoding and beam search +
LM (``asr.evaluate``'s functions, the same logits path).

Method
- Size: the compact file (packed indices, centroid tables, unclustered tensors) raw and gzip-compressed,
  against the model's float32 weights raw and gzip-compressed; ratio = float32 raw / compact raw.
- k-means seconds and fine-tuning seconds (the ``asr.train`` process, start-up included): wall time.
- Inference: seconds of network time per second of audio on the first ``--speed-utterances`` utterances
  of the first ``--data`` set in batches of 16 (sorted by length), TensorFlow limited to one thread, after
  one warm-up pass; the fastest of three passes. Clustered and int8 weights are held as float32 at run
  time, so they run at float32's speed; a kernel reading indices directly would be needed to gain
  speed from them.
Writes ``compress.md`` (the table), ``compress.json`` and ``wer-size.png`` to ``--out``.
"""

from __future__ import annotations

import gzip
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from asr.sampler import cpu_name

REPO = Path(__file__).resolve().parents[1]
PROG = "tools/bench_compress.py"


def evaluate_run(run_dir: Path, sets, beam: int, lm: str) -> dict[str, float]:
    """WER/CER per set with greedy decoding and with beam + LM, from the run's newest checkpoint."""
    from asr.evaluate import DecodeSetting, evaluate_checkpoint
    from asr.inference import open_run

    logits_fn = open_run(run_dir).logits_fn
    settings = [DecodeSetting(1), DecodeSetting(beam, lm)]
    scores = {}
    for result in evaluate_checkpoint(sets, logits_fn, settings, batch_size=16):
        kind = "greedy" if result.beam_width == 1 else "beam"
        scores[f"{result.name} {kind} wer"] = result.scores.wer
        scores[f"{result.name} {kind} cer"] = result.scores.cer
    return scores


def run_model(run_dir: Path):
    from asr.inference import restore_model, restore_run

    return restore_run(run_dir, None, restore_model)[2][0]


def float32_sizes(model) -> dict[str, int]:
    """Bytes of the model's weights as float32, raw and gzip-compressed (what clustering is compared to)."""
    raw = b"".join(np.asarray(v.numpy(), np.float32).tobytes() for v in model.weights)
    return {"raw": len(raw), "gzip": len(gzip.compress(raw, 6))}


def inference_seconds_per_audio_second(model, eval_set, utterances: int) -> float:
    """Network seconds per audio second over the set's first ``utterances`` (batches of 16, one warm-up)."""
    import tensorflow as tf

    from asr.evaluate import EvalSet, padded_batches
    from asr.features import FEATURE_DIM

    first = slice(0, utterances)
    subset = EvalSet(eval_set.name, eval_set.path, eval_set.utt_ids[first], eval_set.texts[first],
                     eval_set.features[first], eval_set.durations[first], eval_set.manifest)  # fmt: skip
    spec = [tf.TensorSpec([None, None, FEATURE_DIM]), tf.TensorSpec([None], tf.int32)]
    call = tf.function(lambda x, n: model((x, n), training=False), input_signature=spec)
    batches = [(tf.constant(b), tf.constant(f)) for _, b, f, _ in padded_batches(subset, 16)]
    for features, frames in batches:
        call(features, frames)
    passes = []
    for _ in range(3):
        started = time.perf_counter()
        for features, frames in batches:
            call(features, frames).numpy()
        passes.append(time.perf_counter() - started)
    return min(passes) / subset.audio_seconds


def compact_row(name: str, compact: bytes, float_raw: int, **extra) -> dict:
    return {"model": name, "bytes": len(compact), "gzip_bytes": len(gzip.compress(compact, 6)),
            "ratio": float_raw / len(compact), **extra}  # fmt: skip


def fine_tune(compressed: Path, out: Path, epochs: int, learning_rate: float) -> float:
    """Fine-tune a compressed run with its assignments fixed (``asr.train``); returns its wall seconds."""
    from asr.compress import COMPACT_FILE

    overrides = [f"train.clustered_weights={compressed / COMPACT_FILE}", f"train.epochs={epochs}",
                 f"train.learning_rate={learning_rate}", "train.learning_rate_decay=1.0",
                 "train.time_budget_minutes=0", "eval.mode=loss", "tta.targets=[]"]  # fmt: skip
    command = [sys.executable, "-m", "asr.train", str(compressed / "recipe.yaml"), "--run-dir", str(out)]
    for item in overrides:
        command += ["--set", item]
    started = time.perf_counter()
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["no message"])[-1]
        sys.exit(f"{PROG}: error: fine-tuning {compressed} failed (exit {result.returncode}): {last}")
    return time.perf_counter() - started


def markdown(rows: list[dict], sets: list[str], cpu: str) -> str:
    columns = [f"{s} {k} {m}" for s in sets for k in ("greedy", "beam") for m in ("wer", "cer")]
    head = "| model | " + " | ".join(columns)
    lines = [head + " | size (MB) | gzip (MB) | ratio | k-means s | fine-tune s | infer s/audio s |",
             "|---|" + "---:|" * (len(columns) + 6)]  # fmt: skip
    for row in rows:
        cells = [f"{row[c]:.2f}" if c in row else "" for c in columns]
        tuned = f"{row['finetune_seconds']:.0f}" if "finetune_seconds" in row else ""
        lines.append(f"| {row['model']} | " + " | ".join(cells)
                     + f" | {row['bytes'] / 1e6:.3f} | {row['gzip_bytes'] / 1e6:.3f} | {row['ratio']:.2f}×"
                     + f" | {row.get('kmeans_seconds', 0):.1f} | {tuned}"
                     + f" | {row['infer_rtf']:.4f} |")  # fmt: skip
    lines.append(f"\nWER / CER in %; beam = beam search + LM. Machine: {cpu}. Inference: network seconds per "
                 "second of audio, TensorFlow on one thread.")  # fmt: skip
    return "\n".join(lines) + "\n"


def sensitivity_markdown(rows: list[dict], clusters: int, cpu: str) -> str:
    head = f"| weight matrix clustered alone to {clusters} values | weights | greedy WER | change "
    lines = [head + "| greedy CER | change |", "|---|---:|---:|---:|---:|---:|"]
    for row in sorted(rows, key=lambda r: -r["cer_change"]):
        changes = f"{row['wer_change']:+.2f} | {row['cer']:.2f} | {row['cer_change']:+.2f}"
        lines.append(f"| `{row['tensor']}` | {row['weights']:,} | {row['wer']:.2f} | {changes} |")
    lines.append(f"\nFirst --data set, greedy decoding, every other tensor float32. Machine: {cpu}.")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], column: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.5))
    labels = {"layer": "k-means, one table per weight matrix", "model": "k-means, one table for the model",
              "layer-ft": "per weight matrix, fine-tuned", "model-ft": "one table, fine-tuned"}  # fmt: skip
    for (scope, label), marker in zip(labels.items(), "os^v", strict=True):
        chosen = [r for r in rows if r.get("scope") == scope]
        axes.plot([r["bytes"] / 1e6 for r in chosen], [r[column] for r in chosen], marker=marker, label=label)
        for r in chosen:
            axes.annotate(str(r["clusters"]), (r["bytes"] / 1e6, r[column]), fontsize=8)
    base = rows[0]
    axes.axhline(base[column], color="gray", linestyle="--", label=f"float32 ({base['bytes'] / 1e6:.1f} MB)")
    axes.set_xscale("log")
    axes.set_xlabel("model file size (MB, log scale)")
    axes.set_ylabel(f"{column} (%)")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


class Sweep:
    """The rows of one sweep over a trained run (see the module docstring)."""

    def __init__(self, args, sets):
        self.args, self.sets = args, sets
        self.names = [s.name for s in sets]
        self.model = run_model(args.run)
        self.sizes = float32_sizes(self.model)
        self.scratch = Path(tempfile.mkdtemp(prefix="bench-compress-"))
        self.rows: list[dict] = []

    def measure(self, run_dir: Path, row: dict) -> dict:
        model = self.model if run_dir == self.args.run else run_model(run_dir)
        row.update(evaluate_run(run_dir, self.sets, self.args.beam, self.args.lm))
        row["infer_rtf"] = inference_seconds_per_audio_second(model, self.sets[0], self.args.speed_utterances)
        self.rows.append(row)
        print(markdown([row], self.names, cpu_name()).splitlines()[-3], flush=True)
        return row

    def compressed(self, name: str, config, **extra) -> dict:
        from asr.compress import COMPACT_FILE, compress

        report = compress(config, log=lambda _: None)
        compact = (config.out / COMPACT_FILE).read_bytes()
        row = compact_row(name, compact, self.sizes["raw"], kmeans_seconds=report["kmeans_seconds"],
                          bits=report["bits"], **extra)  # fmt: skip
        return self.measure(config.out, row)

    def fine_tuned(self, clusters: int, scope: str) -> dict:
        from asr.compress import COMPACT_FILE, CompressConfig, compress

        first_out = self.scratch / f"ft-{scope}-{clusters}"
        first = compress(CompressConfig(self.args.run, first_out, clusters, scope=scope), log=lambda _: None)
        tuned = self.scratch / f"ft-{scope}-{clusters}-run"
        seconds = fine_tune(first_out, tuned, self.args.finetune_epochs, self.args.finetune_lr)
        packed = self.scratch / f"ft-{scope}-{clusters}-packed"
        compress(CompressConfig(tuned, packed, clusters, scope=scope), log=lambda _: None)
        compact = (packed / COMPACT_FILE).read_bytes()
        row = compact_row(f"k-means {clusters}, per {scope}, fine-tuned", compact, self.sizes["raw"],
                          scope=f"{scope}-ft", clusters=clusters, kmeans_seconds=first["kmeans_seconds"],
                          finetune_seconds=seconds)  # fmt: skip
        return self.measure(packed, row)

    def sensitivity(self, clusters: int) -> list[dict]:
        """Greedy WER/CER of the first set with only one weight matrix clustered to ``clusters`` values at a
        time (the others float32): which layers clustering hurts most."""
        import tensorflow as tf

        from asr import clustering
        from asr.compress import split_weights
        from asr.config import load_recipe
        from asr.evaluate import DecodeSetting, evaluate_checkpoint
        from asr.inference import model_logits_fn, read_normalization

        recipe = load_recipe(self.args.run / "recipe.yaml")
        mean, std = read_normalization(self.args.run, recipe)
        logits_fn = model_logits_fn(recipe, tf.distribute.get_strategy(), self.model, mean, std)

        def greedy() -> tuple[float, float]:
            (result,) = evaluate_checkpoint(self.sets[:1], logits_fn, [DecodeSetting(1)], batch_size=16)
            return result.scores.wer, result.scores.cer

        base_wer, base_cer = greedy()
        rows = []
        for name, variable in split_weights(self.model, cluster_biases=False)[0].items():
            original = variable.numpy()
            (table,) = clustering.cluster_tensors({name: original}, clusters, "layer")
            variable.assign(table.weights()[name])
            wer, cer = greedy()
            variable.assign(original)
            rows.append({"tensor": name, "weights": int(original.size), "wer": wer, "cer": cer,
                         "wer_change": wer - base_wer, "cer_change": cer - base_cer})  # fmt: skip
            print(f"{name}: greedy WER {wer:.2f} ({wer - base_wer:+.2f}) CER {cer:.2f} "
                  f"({cer - base_cer:+.2f})", flush=True)  # fmt: skip
        return rows

    def paper_rows(self) -> list[dict]:
        """The paper's model (random weights): float32 and per-layer 64 clusters, size and speed only."""
        from asr import clustering
        from asr.compress import split_weights
        from asr.config import load_recipe
        from asr.model import build_model

        model = build_model(load_recipe(REPO / "recipes" / "base.yaml").model)
        clustered, plain = split_weights(model, cluster_biases=False)
        sizes = float32_sizes(model)
        started = time.perf_counter()
        tables = clustering.cluster_tensors({n: v.numpy() for n, v in clustered.items()}, 64, "layer")
        seconds = time.perf_counter() - started
        shapes = {v.path: tuple(v.shape) for v in model.weights}
        compact = clustering.save_clustered(tables, {n: v.numpy() for n, v in plain.items()}, 64, 6,
                                            clustering.signature(shapes))  # fmt: skip
        rtf = inference_seconds_per_audio_second(model, self.sets[0], self.args.speed_utterances)
        base = {"model": "paper model (base.yaml), float32", "bytes": sizes["raw"],
                "gzip_bytes": sizes["gzip"], "ratio": 1.0, "infer_rtf": rtf}  # fmt: skip
        row = compact_row("paper model, k-means 64, per layer", compact, sizes["raw"], kmeans_seconds=seconds,
                          infer_rtf=rtf)  # fmt: skip
        self.rows += [base, row]
        return [base, row]


def main() -> None:
    from asr.config import Bound, OneLineParser, option_type

    parser = OneLineParser(prog=PROG, description=__doc__.split("\n\n")[0])
    count = option_type(int, Bound(1))
    parser.add_argument("--run", required=True, type=Path)
    parser.add_argument("--data", nargs="+", default=["work/minilibri/test", "work/minilibri/dev"])
    parser.add_argument("--lm", default="work/minilibri/lm")
    parser.add_argument("--clusters", default="4,8,16,32,64,128,256")
    parser.add_argument("--scopes", default="layer,model")
    parser.add_argument(
        "--finetune", default="4,8", help="cluster counts to fine-tune, each scope ('' for none)"
    )
    parser.add_argument("--finetune-epochs", type=count, default=1)
    parser.add_argument("--finetune-lr", type=option_type(float, Bound(0, low_open=True)), default=1e-4)
    parser.add_argument("--speed-utterances", type=count, default=32)
    parser.add_argument("--beam", type=count, default=64)
    parser.add_argument("--no-paper-model", action="store_true")
    parser.add_argument("--sensitivity", type=option_type(int, Bound(0, note="0: skip")), default=4,
                        help="clusters for the one-matrix-at-a-time table (0: skip it)")  # fmt: skip
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "results" / "compress")
    args = parser.parse_args()
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    from asr.compress import CompressConfig
    from asr.evaluate import load_eval_set

    sweep = Sweep(args, [load_eval_set(path) for path in args.data])
    started = time.perf_counter()
    sizes = sweep.sizes
    try:
        sweep.measure(args.run, {"model": "float32", "bytes": sizes["raw"], "gzip_bytes": sizes["gzip"],
                                 "ratio": 1.0})  # fmt: skip
        for scope in args.scopes.split(","):
            for clusters in (int(k) for k in args.clusters.split(",")):
                config = CompressConfig(
                    args.run, sweep.scratch / f"{scope}-{clusters}", clusters, scope=scope
                )
                sweep.compressed(f"k-means {clusters}, per {scope}", config, scope=scope, clusters=clusters)
        config = CompressConfig(args.run, sweep.scratch / "layer-64-8bit", 64, bits=8)
        sweep.compressed("k-means 64, per layer, 8-bit indices", config, clusters=64)
        for scope in args.scopes.split(","):
            for clusters in (int(k) for k in args.finetune.split(",") if k):
                sweep.fine_tuned(clusters, scope)
        sweep.compressed("int8, per channel", CompressConfig(args.run, sweep.scratch / "int8", method="int8"))
        if not args.no_paper_model:
            sweep.paper_rows()
        sensitivity = sweep.sensitivity(args.sensitivity) if args.sensitivity else []
    finally:
        shutil.rmtree(sweep.scratch, ignore_errors=True)
    args.out.mkdir(parents=True, exist_ok=True)
    table = markdown(sweep.rows, sweep.names, cpu_name())
    (args.out / "compress.md").write_text(table)
    (args.out / "compress.json").write_text(
        json.dumps({"rows": sweep.rows, "sensitivity": sensitivity}, indent=1)
    )
    if sensitivity:
        (args.out / "sensitivity.md").write_text(
            sensitivity_markdown(sensitivity, args.sensitivity, cpu_name())
        )
    plot(sweep.rows, f"{sweep.names[0]} beam wer", args.out / "wer-size.png")
    print(table)
    print(f"sweep: {time.perf_counter() - started:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
