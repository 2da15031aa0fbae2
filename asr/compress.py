"""Compress a trained model by k-means weight clustering (issue 19), as a run directory like any other.

    python -m asr.compress --run RUN_DIR (--clusters K | --int8) --out NEW_RUN_DIR [--scope layer|model]
        [--bits B] [--cluster-biases] [--checkpoint STEP] [--seed S] [--force]

Reads the run's newest undamaged checkpoint (or ``--checkpoint STEP``), replaces every weight matrix by
its nearest of ``K`` k-means centroids (:mod:`asr.clustering`: one table per weight matrix with
``--scope layer``, one for the whole model with ``model``), and writes ``NEW_RUN_DIR``::

    NEW_RUN_DIR/checkpoints/ckpt-N          the clustered weights as a training checkpoint (no optimizer
                                            state), so asr.evaluate, asr.transcribe and asr.export use it
    NEW_RUN_DIR/model.kmeans.npz            the compact file: centroid tables + B-bit packed indices
    NEW_RUN_DIR/compress.json               what was done: source, clusters, scope, bits, sizes, seconds
    NEW_RUN_DIR/recipe.yaml, normalization.json   copied from the run

Biases, batch-normalization parameters and statistics stay float32 by default: they are under 1 % of
the weights, so clustering them saves almost nothing, while a batch-norm scale or a bias shifts every
output of its channel. ``--cluster-biases`` clusters every trainable tensor.

``--int8`` instead quantizes the same tensors to per-channel symmetric int8 (``scale = max |w| / 127``
per output channel), the usual post-training weight quantization, stored in the same compact file.

``NEW_RUN_DIR`` is written under a temporary name and renamed into place; an existing one is replaced
only with ``--force``. Errors (no checkpoint, a cluster count the index width cannot hold, an output
that exists) are one line and exit status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from asr import clustering
from asr.config import dump_recipe
from asr.files import (
    DirectoryExistsError,
    directory_in_place,
    refuse_existing,
    write_bytes,
    write_json,
    write_text,
)

COMPACT_FILE = "model.kmeans.npz"
REPORT_FILE = "compress.json"
MAX_BITS = 16


class CompressError(ValueError):
    """What stops a compression, as one line naming the option or file."""


@dataclasses.dataclass(frozen=True)
class CompressConfig:
    """What ``asr.compress`` clusters and where it writes."""

    run_dir: Path
    out: Path
    clusters: int = 0
    """Centroids per table (k-means); 0 with ``method: int8``."""
    method: str = "kmeans"
    """``kmeans``: weight clustering; ``int8``: per-channel symmetric int8 instead (for comparison)."""
    scope: str = "layer"
    """``layer``: one centroid table per weight matrix; ``model``: one table for all of them."""
    bits: int = 0
    """Bits per stored index (0: the fewest that hold ``clusters``, packed; 8: byte-aligned)."""
    cluster_biases: bool = False
    step: int | None = None
    seed: int = 0
    force: bool = False

    @property
    def index_bits(self) -> int:
        return 8 if self.method == "int8" else self.bits or clustering.index_bits(self.clusters)

    def __post_init__(self) -> None:
        if self.method == "int8":
            return
        if self.method != "kmeans":
            raise CompressError(f"method: {self.method!r}; choose kmeans or int8")
        if self.scope not in ("layer", "model"):
            raise CompressError(f"--scope: {self.scope!r}; choose layer or model")
        if self.clusters < 2:
            raise CompressError(f"--clusters: {self.clusters} (at least 2)")
        if not 1 <= self.index_bits <= MAX_BITS:
            raise CompressError(f"--bits: {self.bits} (1 to {MAX_BITS})")
        if not 2 <= self.clusters <= 1 << self.index_bits:
            raise CompressError(
                f"--clusters: {self.clusters}; {self.index_bits}-bit indices hold 2 to {1 << self.index_bits}"
            )


def split_weights(model, cluster_biases: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(clustered, plain)`` variables of ``model`` by path: weight matrices (trainable kernels of rank >= 2)
    are clustered; with ``cluster_biases`` every trainable float tensor is. A GRU's bias is a matrix (input
    and recurrent biases stacked) but still a bias: it stays plain unless ``cluster_biases``."""
    clustered, plain = {}, {}
    for variable in model.weights:
        trainable_float = variable.trainable and "float" in str(variable.dtype)
        matrix = len(variable.shape) >= 2 and not variable.path.endswith("bias")
        if trainable_float and (cluster_biases or matrix):
            clustered[variable.path] = variable
        else:
            plain[variable.path] = variable
    return clustered, plain


def compress(config: CompressConfig, log=print) -> dict[str, Any]:
    """Cluster the run's checkpoint as ``config`` says and write ``config.out``; returns ``compress.json``."""
    from asr.checkpoint import Checkpointer
    from asr.inference import NORMALIZATION_FILE, restore_model, restore_run

    recipe, checkpoint, (model, info) = restore_run(config.run_dir, config.step, restore_model, warn=log)
    clustered, plain = split_weights(model, config.cluster_biases)
    started = time.perf_counter()
    values = {name: variable.numpy() for name, variable in clustered.items()}
    tables, quantized = [], {}
    if config.method == "int8":
        quantized = {name: clustering.quantize_int8(value) for name, value in values.items()}
        compressed = {name: clustering.dequantize_int8(*q) for name, q in quantized.items()}
    else:
        tables = clustering.cluster_tensors(values, config.clusters, config.scope, config.seed)
        compressed = {name: w for table in tables for name, w in table.weights().items()}
    kmeans_seconds = time.perf_counter() - started
    for name, weights in compressed.items():
        clustered[name].assign(weights)
    shapes = {name: tuple(v.shape) for name, v in {**clustered, **plain}.items()}
    compact = clustering.save_clustered(
        tables, {name: v.numpy() for name, v in plain.items()}, config.clusters, config.index_bits,
        clustering.signature(shapes), quantized,
    )  # fmt: skip
    float_bytes = sum(int(np.prod(v.shape)) * 4 for v in clustered.values())
    report = {
        "source": str(checkpoint.path), "step": checkpoint.step, "method": config.method,
        "clusters": config.clusters, "scope": config.scope, "bits": config.index_bits, "tables": len(tables),
        "clustered_tensors": sorted(clustered), "plain_tensors": sorted(plain),
        "clustered_float32_bytes": float_bytes, "compact_file_bytes": len(compact),
        "kmeans_seconds": round(kmeans_seconds, 3), "seed": config.seed,
    }  # fmt: skip
    with directory_in_place(config.out, config.force) as temporary:
        write_text(temporary / "recipe.yaml", dump_recipe(recipe))
        shutil.copyfile(config.run_dir / NORMALIZATION_FILE, temporary / NORMALIZATION_FILE)
        state = dict(checkpoint.state, compression=report)
        state.pop("files", None)
        Checkpointer(temporary, keep=1, model=model).save(checkpoint.step, state)
        write_bytes(temporary / COMPACT_FILE, compact)
        write_json(temporary / REPORT_FILE, report)
    what = (
        "per-channel int8"
        if config.method == "int8"
        else f"{len(tables)} table(s) of {config.clusters} centroids, {config.index_bits}-bit indices"
    )
    log(f"{what}: {len(compact) / 1e6:.2f} MB ({100 * len(compact) / float_bytes:.1f} % of the compressed "
        f"tensors' float32 bytes) in {kmeans_seconds:.1f} s; from step {info.get('step')}")  # fmt: skip
    return report


# --------------------------------------------------------------------------- command line


def parse_args(argv: Sequence[str] | None) -> CompressConfig:
    parser = argparse.ArgumentParser(
        prog="python -m asr.compress",
        description="Cluster a run's weights with k-means into a new run directory (checkpoint + compact "
        "file). See docs/compress.md.",
    )
    parser.add_argument("--run", required=True, type=Path, help="run directory of asr.train")
    parser.add_argument("--out", required=True, type=Path, help="run directory to write")
    method = parser.add_mutually_exclusive_group(required=True)
    method.add_argument("--clusters", type=int, metavar="K", help="k-means: centroids per table")
    method.add_argument("--int8", action="store_true",
                        help="per-channel symmetric int8 weights instead (for comparison)")  # fmt: skip
    parser.add_argument("--scope", choices=("layer", "model"), default="layer",
                        help="one table per weight matrix (default) or one for the whole model")  # fmt: skip
    parser.add_argument("--bits", type=int, default=0,
                        help="bits per stored index (default: the fewest that hold K, packed)")  # fmt: skip
    parser.add_argument("--cluster-biases", action="store_true",
                        help="cluster biases and batch-norm parameters too (default: float32)")  # fmt: skip
    parser.add_argument("--checkpoint", type=int, default=None, metavar="STEP",
                        help="the checkpoint at this step (default: the newest undamaged one)")  # fmt: skip
    parser.add_argument("--seed", type=int, default=0, help="k-means++ seed (default 0)")
    parser.add_argument("--force", action="store_true", help="replace an existing output directory")
    args = parser.parse_args(argv)
    method = "int8" if args.int8 else "kmeans"
    return CompressConfig(args.run, args.out, args.clusters or 0, method, args.scope, args.bits,
                          args.cluster_biases, args.checkpoint, args.seed, args.force)  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    from asr.checkpoint import CheckpointDamagedError, CheckpointMismatchError, NoValidCheckpointError
    from asr.files import WriteError

    try:
        config = parse_args(argv)
        refuse_existing(config.out, config.force)
        report = compress(config, log=lambda line: print(line, file=sys.stderr))
    except (CompressError, DirectoryExistsError, NoValidCheckpointError, CheckpointMismatchError,
            CheckpointDamagedError, WriteError) as error:  # fmt: skip
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"compressed {report['source']} to {config.out}: {report['compact_file_bytes'] / 1e6:.2f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
