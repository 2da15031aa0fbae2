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

K is at most what a table can hold: with ``--scope layer`` the weights of the smallest weight matrix (a
table cannot have more centroids than weights), with ``--scope model`` all of them; a larger K is refused
before k-means, naming the matrix. With ``--cluster-biases`` a bias or batch-norm vector of at most K values
keeps every value (its table holds them all; one note says how many). Seeding costs K passes over up to
65,536 values per table, so time grows with K (docs/compress.md has the figures): a progress bar with the
estimated time remaining shows on a terminal when k-means takes over a second.

``NEW_RUN_DIR`` is written under a temporary name and renamed into place
(:func:`asr.files.directory_in_place`: a rerun removes what a killed one left); an existing one is replaced
only with ``--force``, and never when it is, contains or lies inside the run directory. Errors (no
checkpoint, no ``normalization.json``, an invalid recipe, a cluster count the index width or the weights
cannot hold, an output that exists) are one line ``asr.compress: error: ...`` and exit status 2, checked
before k-means starts; Ctrl-C prints ``asr.compress: interrupted`` (exit status 130) and leaves nothing.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from asr import clustering
from asr.config import Bound, OneLineParser, dump_recipe, option_type
from asr.files import (
    OverlapError,
    directory_in_place,
    error_line,
    interrupts_recorded,
    refuse_existing,
    refuse_overlap,
    write_bytes,
    write_json,
    write_text,
)
from asr.startup import import_tensorflow

PROG = "asr.compress"
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
        if not 2 <= self.clusters <= 1 << MAX_BITS:
            raise CompressError(f"--clusters: {self.clusters} (2 to {1 << MAX_BITS}: indices of at most "
                                f"{MAX_BITS} bits)")  # fmt: skip
        if not 0 <= self.bits <= MAX_BITS:
            raise CompressError(f"--bits: {self.bits} (1 to {MAX_BITS}, or 0: the fewest that hold K)")
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
        if trainable_float and (cluster_biases or is_weight_matrix(variable.path, variable.shape)):
            clustered[variable.path] = variable
        else:
            plain[variable.path] = variable
    return clustered, plain


def is_weight_matrix(path: str, shape: Sequence[int]) -> bool:
    """A kernel of rank >= 2 (a GRU's stacked biases are rank 2 but not a weight matrix)."""
    return len(shape) >= 2 and not path.endswith("bias")


def check_clusters(config: CompressConfig, shapes: dict[str, tuple[int, ...]]) -> str | None:
    """Refuse a K that the clustered tensors (``shapes`` by path) cannot hold: a table cannot have more
    centroids than weights, so with ``--scope layer`` K is at most the smallest weight matrix's weight count
    (naming it), with ``--scope model`` the weights clustered. Returns a note when vectors clustered with
    ``--cluster-biases`` have at most K values (their tables keep every value), else None."""
    if config.method != "kmeans" or not shapes:
        return None
    sizes = {name: int(np.prod(shape)) for name, shape in shapes.items()}
    if config.scope == "model":
        total = sum(sizes.values())
        if config.clusters > total:
            raise CompressError(f"--clusters: {config.clusters}: more than the {total} weights clustered "
                                "(a table cannot have more centroids than weights)")  # fmt: skip
        return None
    matrices = {name: n for name, n in sizes.items() if is_weight_matrix(name, shapes[name])}
    smallest = min(matrices, key=matrices.__getitem__, default=None)
    if smallest is not None and config.clusters > matrices[smallest]:
        raise CompressError(
            f"--clusters: {config.clusters}: more than the {matrices[smallest]} weights of {smallest}, the "
            "smallest weight matrix (a table cannot have more centroids than weights): at most "
            f"{matrices[smallest]} with --scope layer, {sum(sizes.values())} with --scope model"
        )
    whole = [name for name, n in sizes.items() if name not in matrices and n <= config.clusters]
    if whole:
        return (f"{len(whole)} vector(s) of at most {config.clusters} values (biases, batch-norm) keep every "
                "value: their tables hold them all")  # fmt: skip
    return None


def check_output(config: CompressConfig) -> None:
    """Refuse, before any work, an output that is, contains or lies inside the run directory (``--force``
    included) and one that exists without ``--force``."""
    refuse_overlap(config.out, {"--run": config.run_dir})
    refuse_existing(config.out, config.force)


def compress(config: CompressConfig, log=print) -> dict[str, Any]:
    """Cluster the run's checkpoint as ``config`` says and write ``config.out``; returns ``compress.json``.

    Everything that can stop it (output, recipe, checkpoint, ``normalization.json``, a K the weights cannot
    hold) is checked before k-means starts."""
    from asr.checkpoint import Checkpointer
    from asr.inference import NORMALIZATION_FILE, read_normalization, restore_model, restore_run

    check_output(config)
    recipe, checkpoint, (model, info) = restore_run(config.run_dir, config.step, restore_model, warn=log)
    read_normalization(config.run_dir, recipe)
    clustered, plain = split_weights(model, config.cluster_biases)
    note = check_clusters(config, {name: tuple(v.shape) for name, v in clustered.items()})
    if note:
        log(f"note: {note}")
    started = time.perf_counter()
    values = {name: variable.numpy() for name, variable in clustered.items()}
    tables, quantized = [], {}
    if config.method == "int8":
        quantized = {name: clustering.quantize_int8(value) for name, value in values.items()}
        compressed = {name: clustering.dequantize_int8(*q) for name, q in quantized.items()}
    else:
        tables = run_kmeans(values, config)
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


def run_kmeans(values: dict[str, np.ndarray], config: CompressConfig) -> list[clustering.Table]:
    """:func:`asr.clustering.cluster_tensors` under a progress bar (centroids seeded, with the estimated
    time left) that shows on a terminal once k-means has taken a second."""
    from tqdm import tqdm

    total = clustering.seeding_work(values, config.clusters, config.scope)
    with tqdm(total=total, desc=f"{PROG}: k-means", unit="centroid", file=sys.stderr, delay=1.0,
              leave=False, disable=None) as bar:  # fmt: skip
        return clustering.cluster_tensors(values, config.clusters, config.scope, config.seed, bar.update)


# --------------------------------------------------------------------------- command line


def parse_args(argv: Sequence[str] | None) -> CompressConfig:
    parser = OneLineParser(
        prog=PROG,
        description="Cluster a run's weights with k-means into a new run directory (checkpoint + compact "
        "file). See docs/compress.md.",
    )
    parser.add_argument("--run", required=True, type=Path, help="run directory of asr.train")
    parser.add_argument("--out", required=True, type=Path, help="run directory to write")
    method = parser.add_mutually_exclusive_group(required=True)
    method.add_argument("--clusters", type=option_type(int, Bound(2, 1 << MAX_BITS)), metavar="K",
                        help=f"k-means: centroids per table (2 to {1 << MAX_BITS}, and at most the "
                        "weights of the smallest weight matrix with --scope layer)")  # fmt: skip
    method.add_argument("--int8", action="store_true",
                        help="per-channel symmetric int8 weights instead (for comparison)")  # fmt: skip
    parser.add_argument("--scope", choices=("layer", "model"), default="layer",
                        help="one table per weight matrix (default) or one for the whole model")  # fmt: skip
    bits = Bound(0, MAX_BITS, note="0: the fewest that hold K")
    parser.add_argument("--bits", type=option_type(int, bits), default=0,
                        help="bits per stored index (default: the fewest that hold K, packed)")  # fmt: skip
    parser.add_argument("--cluster-biases", action="store_true",
                        help="cluster biases and batch-norm parameters too (default: float32)")  # fmt: skip
    parser.add_argument("--checkpoint", type=option_type(int, Bound(0)), default=None, metavar="STEP",
                        help="the checkpoint at this step (default: the newest undamaged one)")  # fmt: skip
    parser.add_argument("--seed", type=option_type(int, Bound(0)), default=0,
                        help="k-means++ seed (default 0)")  # fmt: skip
    parser.add_argument("--force", action="store_true", help="replace an existing output directory")
    args = parser.parse_args(argv)
    method = "int8" if args.int8 else "kmeans"
    try:
        return CompressConfig(args.run, args.out, args.clusters or 0, method, args.scope, args.bits,
                              args.cluster_biases, args.checkpoint, args.seed, args.force)  # fmt: skip
    except CompressError as error:
        parser.error(str(error))


def main(argv: Sequence[str] | None = None) -> int:
    """The command: 0 when written, 2 with one ``asr.compress: error:`` line, 130 on Ctrl-C."""
    from asr.checkpoint import CheckpointDamagedError, CheckpointMismatchError, NoValidCheckpointError
    from asr.config import ConfigError
    from asr.inference import NormalizationError

    config = parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        with interrupts_recorded():
            import_tensorflow()
            report = compress(config, log=lambda line: print(f"{PROG}: {line}", file=sys.stderr))
    except (CompressError, OverlapError, ConfigError, NormalizationError, NoValidCheckpointError,
            CheckpointMismatchError, CheckpointDamagedError, OSError) as error:  # fmt: skip
        print(f"{PROG}: error: {error_line(error, config.out)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    print(f"compressed {report['source']} to {config.out}: {report['compact_file_bytes'] / 1e6:.2f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
