"""What k-means weight clustering costs a trained model: accuracy against size, per cluster count and scope.

    python tools/bench_compress.py --run RUN_DIR [--data work/minilibri/test work/minilibri/dev]
        [--lm work/minilibri/lm] [--clusters 8,16,32,64,128,256] [--scopes layer,model] [--beam 64]
        [--out docs/results/compress]

For the run's newest checkpoint (float32, the baseline row) and each scope × cluster count, runs
``asr.compress`` into a scratch directory and evaluates the clustered run on every ``--data`` set with
greedy decoding and beam search + LM (``asr.evaluate``'s functions, the same logits path). Sizes: the
compact file (packed indices, centroid tables, unclustered tensors) raw and gzip-compressed, against the
model's float32 weights raw and gzip-compressed; the ratio is float32 raw / compact raw. k-means seconds
are wall time on this machine. The last row quantizes the same tensors to per-channel int8 instead.
Writes ``compress.md`` (the table), ``compress.json`` and ``wer-size.png``
to ``--out``.
"""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def evaluate_run(run_dir: Path, sets, beam: int, lm: str) -> dict[str, float]:
    """WER/CER per set with greedy decoding and with beam + LM, from the run's newest checkpoint."""
    from asr.evaluate import DecodeSetting, evaluate_checkpoint, load_run_recipe, open_newest

    recipe = load_run_recipe(run_dir)
    _, logits_fn = open_newest(run_dir, recipe)
    settings = [DecodeSetting(1), DecodeSetting(beam, lm)]
    scores = {}
    for result in evaluate_checkpoint(sets, logits_fn, settings, batch_size=16):
        kind = "greedy" if result.beam_width == 1 else "beam"
        scores[f"{result.name} {kind} wer"] = result.scores.wer
        scores[f"{result.name} {kind} cer"] = result.scores.cer
    return scores


def float32_sizes(run_dir: Path) -> dict[str, int]:
    """Bytes of the model's weights as float32, raw and gzip-compressed (what clustering is compared to)."""
    from asr.checkpoint import latest_checkpoint
    from asr.config import load_recipe
    from asr.inference import restore_model

    model, _ = restore_model(load_recipe(run_dir / "recipe.yaml"), latest_checkpoint(run_dir))
    raw = b"".join(np.asarray(v.numpy(), np.float32).tobytes() for v in model.weights)
    return {"raw": len(raw), "gzip": len(gzip.compress(raw, 6))}


def markdown(rows: list[dict], sets: list[str], cpu: str) -> str:
    columns = [f"{s} {k} {m}" for s in sets for k in ("greedy", "beam") for m in ("wer", "cer")]
    head = "| model | " + " | ".join(columns)
    lines = [head + " | size (MB) | gzip (MB) | ratio | k-means s |",
             "|---|" + "---:|" * (len(columns) + 4)]  # fmt: skip
    for row in rows:
        cells = [f"{row[c]:.2f}" for c in columns]
        lines.append(f"| {row['model']} | " + " | ".join(cells)
                     + f" | {row['bytes'] / 1e6:.3f} | {row['gzip_bytes'] / 1e6:.3f} | {row['ratio']:.2f}×"
                     + f" | {row.get('kmeans_seconds', 0):.1f} |")  # fmt: skip
    lines.append(f"\nWER / CER in %; beam = beam search + LM. Machine: {cpu}.")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], column: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.5))
    for scope, marker in (("layer", "o"), ("model", "s")):
        chosen = [r for r in rows if r.get("scope") == scope]
        label = f"k-means, one table per {'weight matrix' if scope == 'layer' else 'model'}"
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


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, type=Path)
    parser.add_argument("--data", nargs="+", default=["work/minilibri/test", "work/minilibri/dev"])
    parser.add_argument("--lm", default="work/minilibri/lm")
    parser.add_argument("--clusters", default="8,16,32,64,128,256")
    parser.add_argument("--scopes", default="layer,model")
    parser.add_argument("--beam", type=int, default=64)
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "results" / "compress")
    args = parser.parse_args()
    from asr.compress import COMPACT_FILE, CompressConfig, compress
    from asr.evaluate import load_eval_set

    sets = [load_eval_set(path) for path in args.data]
    names = [s.name for s in sets]
    sizes = float32_sizes(args.run)
    rows = [{"model": "float32", **evaluate_run(args.run, sets, args.beam, args.lm), "bytes": sizes["raw"],
             "gzip_bytes": sizes["gzip"], "ratio": 1.0}]  # fmt: skip
    print(markdown(rows, names, cpu_name()), flush=True)
    scratch = Path(tempfile.mkdtemp(prefix="bench-compress-"))
    started = time.perf_counter()
    try:
        for scope in args.scopes.split(","):
            for clusters in (int(k) for k in args.clusters.split(",")):
                out = scratch / f"{scope}-{clusters}"
                report = compress(CompressConfig(args.run, out, clusters, scope=scope), log=lambda _: None)
                compact = (out / COMPACT_FILE).read_bytes()
                rows.append({
                    "model": f"k-means {clusters}, per {scope}", "scope": scope, "clusters": clusters,
                    **evaluate_run(out, sets, args.beam, args.lm), "bytes": len(compact),
                    "gzip_bytes": len(gzip.compress(compact, 6)), "ratio": sizes["raw"] / len(compact),
                    "kmeans_seconds": report["kmeans_seconds"], "bits": report["bits"],
                })  # fmt: skip
                print(markdown(rows[-1:], names, cpu_name()).splitlines()[-3], flush=True)
                shutil.rmtree(out, ignore_errors=True)
        out = scratch / "int8"
        report = compress(CompressConfig(args.run, out, method="int8"), log=lambda _: None)
        compact = (out / COMPACT_FILE).read_bytes()
        rows.append({"model": "int8, per channel", **evaluate_run(out, sets, args.beam, args.lm),
                     "bytes": len(compact), "gzip_bytes": len(gzip.compress(compact, 6)),
                     "ratio": sizes["raw"] / len(compact),
                     "kmeans_seconds": report["kmeans_seconds"]})  # fmt: skip
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    args.out.mkdir(parents=True, exist_ok=True)
    table = markdown(rows, names, cpu_name())
    (args.out / "compress.md").write_text(table)
    (args.out / "compress.json").write_text(json.dumps(rows, indent=1))
    plot(rows, f"{names[0]} beam wer", args.out / "wer-size.png")
    print(table)
    print(f"sweep: {time.perf_counter() - started:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
