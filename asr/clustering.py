"""Weight clustering (issue 19's math): scalar k-means of weights, bit-packed indices, and the compact file.

Replacing every weight of a table by one of ``k`` centroids (k-means on the weights' values, one
dimension) lets a model be stored as small centroid tables plus ``ceil(log2 k)``-bit indices: 64 clusters
take 6 bits per weight instead of 32. The functions here are pure numpy, so the model-side stage
(reading a run's checkpoint, writing a clustered one) stays a thin edge around them.

The compact file (:func:`save_clustered`, :func:`load_clustered`) is a numpy ``.npz`` archive: a JSON
header (format version, model signature, clusters, index bits, which tensors share which table) and per
table its float32 centroids and the packed indices of its tensors, plus unclustered tensors verbatim.
Loading gives back exactly the clustered weights (``centroids[indices]``), bit for bit.
"""

from __future__ import annotations

import io
import json
import math
import tokenize
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

FORMAT = "asr-clustered-weights/1"
INIT_SAMPLE = 65_536
"""k-means++ seeding looks at at most this many values (a seeded random subset): its ``k`` passes over
the data would otherwise cost more than Lloyd's iterations, which use every value."""


PROGRESS_EVERY = 256
"""k-means++ reports progress every this many centroids drawn."""
Progress = Callable[[int], None]
"""Called with the number of centroids seeded since the last call (a progress bar's ``update``)."""


class ClusteredFileError(ValueError):
    """A compact file that is damaged, of another format, or of another model; the message says which."""


def index_bits(clusters: int) -> int:
    """Bits per index for ``clusters`` centroids (at least 1): 64 -> 6, 65 -> 7, 256 -> 8."""
    if clusters < 2:
        raise ValueError(f"clusters: {clusters} (at least 2)")
    return max(1, math.ceil(math.log2(clusters)))


def kmeans_plus_plus(
    values: np.ndarray, clusters: int, rng: np.random.Generator, progress: Progress | None = None
) -> np.ndarray:
    """``clusters`` distinct initial centroids drawn by k-means++ (Arthur and Vassilvitskii, 2007): each
    next one with probability proportional to the squared distance to the nearest one chosen so far.

    Each draw is a pass over the (at most :data:`INIT_SAMPLE`) values, so seeding costs ``clusters ×
    sample`` operations: the part of k-means that grows with K (``progress`` follows it)."""
    distinct = np.unique(values)
    if distinct.size <= clusters:
        return distinct.astype(np.float64)
    if values.size > INIT_SAMPLE:
        values = rng.choice(values, INIT_SAMPLE, replace=False)
    values = values.astype(np.float64)
    chosen = [values[rng.integers(values.size)]]
    nearest = (values - chosen[0]) ** 2
    while len(chosen) < clusters:
        total = nearest.sum()
        if total <= 0:  # fewer distinct values in the sample than clusters: fill from the whole set
            rest = np.setdiff1d(distinct, chosen)
            chosen.extend(rng.choice(rest, clusters - len(chosen), replace=False))
            break
        pick = values[rng.choice(values.size, p=nearest / total)]
        chosen.append(pick)
        nearest = np.minimum(nearest, (values - pick) ** 2)
        if progress is not None and len(chosen) % PROGRESS_EVERY == 0:
            progress(PROGRESS_EVERY)
    return np.sort(np.asarray(chosen, np.float64))


def assign(values: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Index of the nearest of the sorted ``centroids`` for each value (ties: the lower one): in one
    dimension the boundaries are the midpoints between neighbours, so a binary search is exact."""
    midpoints = (centroids[1:] + centroids[:-1]) / 2
    return np.searchsorted(midpoints, values, side="left")


def kmeans(
    values: np.ndarray, clusters: int, seed: int = 0, iterations: int = 300, progress: Progress | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``(centroids float32 [k], indices [n])`` of scalar k-means on ``values`` (any shape, flattened).

    k-means++ seeding with ``seed``, then Lloyd's iterations until no assignment changes (or
    ``iterations``; weight-like values with outliers took ~150 to settle in one dimension). In one
    dimension each cluster is a run of the sorted values between two midpoints, so an iteration needs
    only ``k`` binary searches and prefix sums (O(k log n), not O(n)); the values are sorted once. A
    cluster that empties is re-seeded at the value farthest from its centroid, so there are
    ``min(k, distinct values)`` distinct centroids. Deterministic for a given ``seed``. ``progress``:
    see :func:`kmeans_plus_plus`.
    """
    flat = np.asarray(values, np.float64).ravel()
    rng = np.random.default_rng(seed)
    centroids = kmeans_plus_plus(flat, clusters, rng, progress)
    ordered = np.sort(flat)
    prefix = np.concatenate([[0.0], np.cumsum(ordered)])
    ends = _cluster_ends(ordered, centroids)
    for _ in range(iterations):
        starts = np.concatenate([[0], ends[:-1]])
        counts = ends - starts
        sums = prefix[ends] - prefix[starts]
        updated = np.where(counts > 0, sums / np.maximum(counts, 1), centroids)
        if not counts.all():
            updated = _reseed_empty(ordered, updated, counts)
        centroids = np.sort(updated)
        new = _cluster_ends(ordered, centroids)
        settled = np.array_equal(new, ends)
        ends = new
        if settled:
            break
    indices = assign(flat, centroids)
    return centroids.astype(np.float32), indices.astype(np.uint16 if clusters > 256 else np.uint8)


def _cluster_ends(ordered: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """End (exclusive) of each centroid's run in the sorted values: the same nearest-centroid rule as
    :func:`assign` (a value on a midpoint goes to the lower centroid)."""
    midpoints = (centroids[1:] + centroids[:-1]) / 2
    return np.concatenate([np.searchsorted(ordered, midpoints, side="right"), [ordered.size]])


def _reseed_empty(ordered: np.ndarray, centroids: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """``centroids`` with each empty cluster moved to the value farthest from its own centroid."""
    owner = np.repeat(np.arange(centroids.size), counts)
    errors = np.abs(ordered - centroids[owner])
    for empty in np.flatnonzero(counts == 0):
        centroids[empty] = ordered[np.argmax(errors)]
        errors[ordered == centroids[empty]] = 0
    return centroids


def pack(indices: np.ndarray, bits: int) -> np.ndarray:
    """``indices`` (each below ``2**bits``) as a ``uint8`` bit stream, ``bits`` per index, least
    significant bit first: ``ceil(n * bits / 8)`` bytes."""
    flat = np.asarray(indices, np.uint32).ravel()
    if flat.size and int(flat.max()) >= 1 << bits:
        raise ValueError(f"index {int(flat.max())} does not fit in {bits} bits")
    planes = (flat[:, None] >> np.arange(bits, dtype=np.uint32)) & 1
    return np.packbits(planes.astype(np.uint8).ravel(), bitorder="little")


def unpack(stream: np.ndarray, bits: int, count: int) -> np.ndarray:
    """The ``count`` indices :func:`pack` wrote into ``stream``."""
    planes = np.unpackbits(np.asarray(stream, np.uint8), bitorder="little")[: count * bits]
    if planes.size != count * bits:
        raise ClusteredFileError(
            f"index stream holds {planes.size // max(bits, 1)} indices, expected {count}"
        )
    weights = (1 << np.arange(bits, dtype=np.uint32))[None, :]
    return (planes.reshape(count, bits).astype(np.uint32) * weights).sum(axis=1).astype(np.uint32)


@dataclass(frozen=True)
class Table:
    """One centroid table and the tensors that share it (per layer: one tensor; whole model: all)."""

    names: tuple[str, ...]
    centroids: np.ndarray
    """float32 ``[k]``, sorted."""
    indices: tuple[np.ndarray, ...]
    """Per tensor, its indices in the tensor's shape."""

    def weights(self) -> dict[str, np.ndarray]:
        return {name: self.centroids[index] for name, index in zip(self.names, self.indices, strict=True)}


def seeding_work(tensors: Mapping[str, np.ndarray], clusters: int, scope: str) -> int:
    """Centroids k-means++ draws for :func:`cluster_tensors` at most (a progress bar's total): ``min(K,
    size)`` per table."""
    sizes = [int(np.size(t)) for t in tensors.values()]
    return min(clusters, sum(sizes)) if scope == "model" else sum(min(clusters, n) for n in sizes)


def cluster_tensors(
    tensors: Mapping[str, np.ndarray],
    clusters: int,
    scope: str,
    seed: int = 0,
    progress: Progress | None = None,
) -> list[Table]:
    """k-means tables for ``tensors``: ``scope="layer"`` one table per tensor (per weight matrix),
    ``scope="model"`` one table for all of them (the two ways the weight-clustering paper compares).
    ``progress`` is told of :func:`seeding_work`'s units as they are done, each table's in full at its end."""
    if scope == "model":
        names = tuple(tensors)
        flat = np.concatenate([np.asarray(tensors[n], np.float32).ravel() for n in names])
        centroids, indices = _counted_kmeans(flat, clusters, seed, progress)
        splits = np.cumsum([np.asarray(tensors[n]).size for n in names])[:-1]
        parts = np.split(indices, splits)
        shaped = tuple(p.reshape(np.shape(tensors[n])) for p, n in zip(parts, names, strict=True))
        return [Table(names, centroids, shaped)]
    if scope != "layer":
        raise ValueError(f"scope: {scope!r} (layer or model)")
    tables = []
    for offset, (name, tensor) in enumerate(tensors.items()):
        centroids, indices = _counted_kmeans(tensor, clusters, seed + offset, progress)
        tables.append(Table((name,), centroids, (indices.reshape(np.shape(tensor)),)))
    return tables


def _counted_kmeans(values: np.ndarray, clusters: int, seed: int, progress: Progress | None):
    """:func:`kmeans`, then ``progress`` topped up to the table's ``min(K, size)`` units."""
    if progress is None:
        return kmeans(values, clusters, seed)
    done = [0]

    def count(units: int) -> None:
        done[0] += units
        progress(units)

    result = kmeans(values, clusters, seed, progress=count)
    progress(min(clusters, int(np.size(values))) - done[0])
    return result


def quantize_int8(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel symmetric int8 (the usual post-training weight quantization, for comparison):
    ``(q int8, scales float32 [channels])`` with ``values ≈ q * scales`` over the last axis (a Keras
    kernel's output channels), ``scale = max |w| / 127`` per channel (1 for an all-zero channel)."""
    values = np.asarray(values, np.float32)
    peak = np.abs(values.reshape(-1, values.shape[-1])).max(axis=0) if values.ndim else np.abs(values)
    scales = np.where(peak > 0, peak / 127.0, 1.0).astype(np.float32)
    return np.clip(np.rint(values / scales), -127, 127).astype(np.int8), scales


def dequantize_int8(q: np.ndarray, scales: np.ndarray) -> np.ndarray:
    return q.astype(np.float32) * scales


def signature(shapes: Mapping[str, tuple[int, ...]]) -> list[list]:
    """What identifies a model's weights: each tensor's name and shape, in name order."""
    return [[name, list(shapes[name])] for name in sorted(shapes)]


def save_clustered(
    tables: list[Table],
    plain: Mapping[str, np.ndarray],
    clusters: int,
    bits: int,
    model_signature: list,
    quantized: Mapping[str, tuple[np.ndarray, np.ndarray]] | None = None,
) -> bytes:
    """The compact file's bytes (write them with :func:`asr.files.write_bytes`): ``bits``-bit packed
    indices (8 for byte-aligned ones), float32 centroid tables, ``plain`` tensors (left unclustered) and
    ``quantized`` ones (:func:`quantize_int8`'s ``(q, scales)``)."""
    quantized = quantized or {}
    if clusters > 1 << bits:
        raise ValueError(f"{clusters} clusters need more than {bits}-bit indices")
    arrays: dict[str, np.ndarray] = {}
    header = {"format": FORMAT, "clusters": clusters, "bits": bits, "signature": model_signature,
              "tables": [], "plain": sorted(plain), "int8": sorted(quantized)}  # fmt: skip
    for t, table in enumerate(tables):
        arrays[f"table{t}/centroids"] = table.centroids.astype(np.float32)
        shapes = []
        for i, (name, index) in enumerate(zip(table.names, table.indices, strict=True)):
            arrays[f"table{t}/indices{i}"] = pack(index, bits)
            shapes.append([name, list(index.shape)])
        header["tables"].append(shapes)
    for name in plain:
        arrays[f"plain/{name}"] = np.asarray(plain[name])
    for name, (q, scales) in quantized.items():
        arrays[f"int8/{name}/values"], arrays[f"int8/{name}/scales"] = q, scales
    arrays["header"] = np.frombuffer(json.dumps(header).encode(), np.uint8)
    out = io.BytesIO()
    np.savez(out, **arrays)
    return out.getvalue()


_DAMAGE = (OSError, EOFError, ValueError, KeyError, IndexError, TypeError, RuntimeError, NotImplementedError,
           SyntaxError, tokenize.TokenError, zipfile.BadZipFile)  # fmt: skip
"""What numpy, zipfile and json raise on a damaged archive: a bad CRC, a cut member, a renamed key, flag bits
that read as encryption or an unknown compression method, an ``.npy`` header that no longer parses."""


def _member(archive, key: str) -> np.ndarray:
    """Array ``key`` of the archive; a missing or damaged member (zip CRC, npy header) as
    :class:`ClusteredFileError` naming it."""
    try:
        return archive[key]
    except KeyError:
        raise ClusteredFileError(f"damaged: member {key!r} is missing") from None
    except _DAMAGE as error:
        raise ClusteredFileError(f"damaged: member {key!r} is unreadable ({_reason(error)})") from None


def _reason(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


_HEADER_KEYS = {"format": str, "clusters": int, "bits": int, "signature": list, "tables": list, "plain": list}


def _open(data: bytes, model_signature: list | None):
    try:
        archive = np.load(io.BytesIO(data), allow_pickle=False)
    except _DAMAGE as error:
        raise ClusteredFileError(f"not a clustered-weights file ({_reason(error)})") from None
    if not hasattr(archive, "files"):
        raise ClusteredFileError("not a clustered-weights file (a single array, not an .npz archive)")
    try:
        header = json.loads(bytes(_member(archive, "header")).decode())
    except (ValueError, UnicodeDecodeError) as error:
        raise ClusteredFileError(f"damaged: header is not JSON ({_reason(error)})") from None
    if not isinstance(header, dict):
        raise ClusteredFileError("damaged: header is not a JSON object")
    if header.get("format") != FORMAT:
        raise ClusteredFileError(f"format {header.get('format')!r}, expected {FORMAT!r}")
    for key, kind in _HEADER_KEYS.items():
        if not isinstance(header.get(key), kind) or isinstance(header.get(key), bool):
            problem = "missing" if key not in header else f"not a {kind.__name__}"
            raise ClusteredFileError(f"damaged: header key {key!r} is {problem}")
    if not 1 <= header["bits"] <= 32:
        raise ClusteredFileError(f"damaged: header bits {header['bits']} (1 to 32)")
    if model_signature is not None and header["signature"] != model_signature:
        raise ClusteredFileError("made from another model (tensor names or shapes differ)")
    return archive, header


def _tables(archive, header: dict) -> list[Table]:
    tables = []
    for t, shapes in enumerate(header["tables"]):
        centroids = _member(archive, f"table{t}/centroids")
        indices = []
        for i, (name, shape) in enumerate(shapes):
            count = int(np.prod(shape))
            index = unpack(_member(archive, f"table{t}/indices{i}"), header["bits"], count)
            if count and int(index.max()) >= centroids.size:
                raise ClusteredFileError(f"{name}: index beyond its table of {centroids.size} centroids")
            indices.append(index.reshape(shape))
        tables.append(Table(tuple(name for name, _ in shapes), centroids, tuple(indices)))
    return tables


def _parsed(function: Callable, archive, header: dict):
    """``function(archive, header)`` with what a malformed header raises (a table that is not a list of
    ``[name, shape]`` pairs, ...) as :class:`ClusteredFileError`."""
    try:
        return function(archive, header)
    except ClusteredFileError:
        raise
    except _DAMAGE as error:
        raise ClusteredFileError(f"damaged: header does not describe its tables ({_reason(error)})") from None


def load_tables(data: bytes, model_signature: list | None = None) -> list[Table]:
    """The centroid tables of :func:`save_clustered`'s bytes, each with its tensors' indices;
    ``model_signature`` as for :func:`load_clustered`."""
    return _parsed(_tables, *_open(data, model_signature))


def _all_weights(archive, header: dict) -> tuple[list[Table], dict[str, np.ndarray]]:
    tables = _tables(archive, header)
    weights = {name: w for table in tables for name, w in table.weights().items()}
    for name in header["plain"]:
        weights[name] = _member(archive, f"plain/{name}")
    for name in header.get("int8", []):
        values, scales = _member(archive, f"int8/{name}/values"), _member(archive, f"int8/{name}/scales")
        weights[name] = dequantize_int8(values, scales)
    return tables, weights


def read_clustered(
    data: bytes, model_signature: list | None = None
) -> tuple[list[Table], dict[str, np.ndarray], dict]:
    """``(tables, every tensor by name, header)`` in one pass over the file: what fine-tuning with fixed
    assignments needs (the weights to start from and the indices to tie), without unpacking twice.

    Every way the bytes can be wrong (not an archive, a member whose zip CRC fails after a flipped bit, a
    header without a key, tensors that do not match the model's signature) raises
    :class:`ClusteredFileError` with one line saying what."""
    archive, header = _open(data, model_signature)
    tables, weights = _parsed(_all_weights, archive, header)
    expected = {name: shape for name, shape in header["signature"]} if model_signature is not None else {}
    for name, shape in expected.items():
        if name not in weights:
            raise ClusteredFileError(f"damaged: tensor {name} of the model is not in the file")
        if list(np.shape(weights[name])) != list(shape):
            raise ClusteredFileError(f"damaged: tensor {name} has shape {list(np.shape(weights[name]))}, "
                                     f"the model's is {list(shape)}")  # fmt: skip
    return tables, weights, header


def read_clustered_file(
    path: str | Path, model_signature: list | None = None
) -> tuple[list[Table], dict[str, np.ndarray], dict]:
    """:func:`read_clustered` of a file; every error is :class:`ClusteredFileError` ``PATH: reason``."""
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise ClusteredFileError(f"{path}: {error.strerror or _reason(error)}") from None
    try:
        return read_clustered(data, model_signature)
    except ClusteredFileError as error:
        raise ClusteredFileError(f"{path}: {error}") from None


def load_clustered(data: bytes, model_signature: list | None = None) -> tuple[dict[str, np.ndarray], dict]:
    """``(every tensor by name, header)`` from :func:`save_clustered`'s bytes: clustered tensors as
    ``centroids[indices]`` (float32), plain ones as stored. With ``model_signature``, a file made from
    another model (other tensor names or shapes) is refused."""
    _, weights, header = read_clustered(data, model_signature)
    return weights, header
