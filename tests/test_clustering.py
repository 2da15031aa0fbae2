"""Weight clustering's math: scalar k-means, index packing and the compact file (asr.clustering)."""

import re

import numpy as np
import pytest

from asr import clustering


def weights(n: int = 20_000, seed: int = 0) -> np.ndarray:
    """Weight-like values: a narrow normal with a few large outliers."""
    rng = np.random.default_rng(seed)
    values = rng.normal(0, 0.05, n)
    values[: n // 100] *= 20
    return values.astype(np.float32)


@pytest.mark.parametrize("clusters", [2, 8, 64, 256])
def test_clustered_weights_take_exactly_k_distinct_values(clusters):
    values = weights()
    centroids, indices = clustering.kmeans(values, clusters, seed=1)
    clustered = centroids[indices]
    assert len(np.unique(clustered)) == clusters == len(np.unique(centroids))
    assert np.all(np.diff(centroids) > 0)
    assert indices.dtype == np.uint8


def test_kmeans_is_deterministic_with_a_seed_and_each_value_goes_to_its_nearest_centroid():
    values = weights(seed=3)
    first = clustering.kmeans(values, 16, seed=7)
    again = clustering.kmeans(values, 16, seed=7)
    np.testing.assert_array_equal(first[0], again[0])
    np.testing.assert_array_equal(first[1], again[1])
    centroids, indices = first
    nearest = np.argmin(np.abs(values[:, None] - centroids[None, :]), axis=1)
    np.testing.assert_array_equal(indices, nearest)
    counts = np.bincount(indices, minlength=16)  # Lloyd's fixed point: each centroid is its cluster's mean
    means = np.bincount(indices, weights=values.astype(np.float64), minlength=16) / counts
    np.testing.assert_allclose(centroids, means, rtol=1e-5, atol=1e-7)


def test_kmeans_finds_well_separated_groups_and_beats_uniform_levels():
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.normal(c, 0.01, 1000) for c in (-1.0, 0.0, 0.5)])
    centroids, _ = clustering.kmeans(values, 3, seed=0)
    np.testing.assert_allclose(centroids, [-1.0, 0.0, 0.5], atol=0.005)
    skewed = weights()
    centroids, indices = clustering.kmeans(skewed, 16, seed=0)
    uniform = np.linspace(skewed.min(), skewed.max(), 16)
    uniform_error = np.mean((skewed - uniform[clustering.assign(skewed, uniform)]) ** 2)
    assert np.mean((skewed - centroids[indices]) ** 2) < uniform_error / 4


def test_fewer_distinct_values_than_clusters_keeps_them_all():
    values = np.array([0.5, -0.5, 0.5, 0.25], np.float32)
    centroids, indices = clustering.kmeans(values, 8)
    np.testing.assert_array_equal(centroids[indices], values)


@pytest.mark.parametrize("bits", [1, 3, 6, 8, 9])
def test_packed_indices_round_trip_in_n_times_bits_over_8_bytes(bits):
    rng = np.random.default_rng(bits)
    indices = rng.integers(0, 1 << bits, size=1001)
    stream = clustering.pack(indices, bits)
    assert stream.dtype == np.uint8 and stream.size == -(-1001 * bits // 8)
    np.testing.assert_array_equal(clustering.unpack(stream, bits, 1001), indices)
    with pytest.raises(ValueError, match="does not fit"):
        clustering.pack(np.array([1 << bits]), bits)


def test_index_bits():
    assert [clustering.index_bits(k) for k in (2, 3, 64, 65, 256, 257)] == [1, 2, 6, 7, 8, 9]
    with pytest.raises(ValueError, match="at least 2"):
        clustering.index_bits(1)


def model_tensors():
    rng = np.random.default_rng(5)
    return {"conv/kernel": rng.normal(0, 0.1, (11, 93, 8)).astype(np.float32),
            "gru/kernel": rng.normal(0, 0.2, (8, 24)).astype(np.float32),
            "dense/kernel": rng.normal(0, 0.3, (8, 30)).astype(np.float32)}  # fmt: skip


@pytest.mark.parametrize(("scope", "bits"), [("layer", 6), ("layer", 8), ("model", 6)])
def test_the_compact_file_restores_the_clustered_weights_bit_for_bit(scope, bits):
    tensors = model_tensors()
    tables = clustering.cluster_tensors(tensors, 64, scope, seed=2)
    assert len(tables) == (3 if scope == "layer" else 1)
    clustered = {name: w for table in tables for name, w in table.weights().items()}
    plain = {"dense/bias": np.arange(30, dtype=np.float32)}
    shapes = {name: t.shape for name, t in {**tensors, **plain}.items()}
    data = clustering.save_clustered(tables, plain, 64, bits, clustering.signature(shapes))
    restored, header = clustering.load_clustered(data, clustering.signature(shapes))
    assert header["clusters"] == 64 and header["bits"] == bits
    for name, w in clustered.items():
        assert restored[name].dtype == np.float32 and restored[name].shape == tensors[name].shape
        np.testing.assert_array_equal(restored[name], w)
        assert len(np.unique(w)) <= 64
    np.testing.assert_array_equal(restored["dense/bias"], plain["dense/bias"])
    weight_bytes = sum(t.nbytes for t in tensors.values())
    index_bytes = sum(t.size for t in tensors.values()) * bits / 8
    assert len(data) < index_bytes + 64 * 4 * len(tables) + 30 * 4 + 4096  # indices + tables + header
    assert index_bytes / weight_bytes == bits / 32


def test_a_compact_file_of_another_model_or_damaged_is_refused():
    tensors = model_tensors()
    tables = clustering.cluster_tensors(tensors, 16, "layer")
    shapes = {name: t.shape for name, t in tensors.items()}
    data = clustering.save_clustered(tables, {}, 16, 4, clustering.signature(shapes))
    other = clustering.signature({**shapes, "dense/kernel": (8, 31)})
    with pytest.raises(clustering.ClusteredFileError, match="another model"):
        clustering.load_clustered(data, other)
    with pytest.raises(clustering.ClusteredFileError, match="not a clustered-weights file"):
        clustering.load_clustered(data[: len(data) // 2])
    with pytest.raises(ValueError, match="more than 4-bit"):
        clustering.save_clustered(tables, {}, 17, 4, [])


def test_int8_quantization_is_per_channel_symmetric_within_half_a_step():
    rng = np.random.default_rng(4)
    values = rng.normal(0, 1, (20, 6)).astype(np.float32) * np.array([0.01, 0.1, 1, 10, 100, 0], np.float32)
    q, scales = clustering.quantize_int8(values)
    assert q.dtype == np.int8 and scales.shape == (6,) and np.abs(q).max() == 127
    restored = clustering.dequantize_int8(q, scales)
    assert np.all(np.abs(restored - values) <= scales / 2 + 1e-7)
    np.testing.assert_array_equal(restored[:, 5], 0)


def test_progress_counts_every_centroid_seeded():
    """k-means reports its progress as centroids seeded (a progress bar's unit); a table's is min(K, size)."""
    rng = np.random.default_rng(0)
    tensors = {"a": rng.normal(size=(64, 80)), "b": rng.normal(size=(10, 30)), "c": rng.normal(size=(5,))}
    for scope in ("layer", "model"):
        counted = []
        clustering.cluster_tensors(tensors, 600, scope, progress=counted.append)
        total = clustering.seeding_work(tensors, 600, scope)
        assert sum(counted) == total == (600 + 300 + 5 if scope == "layer" else 600)
        assert all(n >= 0 for n in counted) and counted.count(clustering.PROGRESS_EVERY) >= 2


def compact_file() -> tuple[bytes, dict[str, np.ndarray], list]:
    tensors = model_tensors()
    tables = clustering.cluster_tensors(tensors, 16, "layer")
    plain = {"dense/bias": np.arange(30, dtype=np.float32)}
    signature = clustering.signature({name: t.shape for name, t in {**tensors, **plain}.items()})
    data = clustering.save_clustered(tables, plain, 16, 4, signature)
    return data, clustering.load_clustered(data, signature)[0], signature


def test_a_flipped_bit_anywhere_is_refused_or_changes_nothing():
    """Every third byte of the file (all bit positions in turn), one bit flipped each time: the loader raises
    :class:`ClusteredFileError` (zip's CRC-32 of each array, the header's checks) or gives back exactly the
    same tensors (a bit of a field nothing reads, e.g. a timestamp); never another exception, never other
    weights. (Every byte: the same outcome, 3× the time.)"""
    data, expected, signature = compact_file()
    refused, positions = 0, range(0, len(data), 3)
    for position in positions:
        damaged = bytearray(data)
        damaged[position] ^= 1 << (position % 8)
        try:
            weights, _ = clustering.load_clustered(bytes(damaged), signature)
        except clustering.ClusteredFileError as error:
            refused += 1
            assert "\n" not in str(error)
            continue
        assert set(weights) == set(expected), position
        for name, value in expected.items():
            assert weights[name].dtype == value.dtype, (position, name)
            np.testing.assert_array_equal(weights[name], value, err_msg=f"byte {position}")
    assert refused > 0.8 * len(positions)


def rewritten(data: bytes, change) -> bytes:
    """The archive with its JSON header changed by ``change(header)``."""
    import io
    import json

    archive = np.load(io.BytesIO(data))
    arrays = {name: archive[name] for name in archive.files}
    header = json.loads(bytes(arrays["header"]).decode())
    change(header)
    arrays["header"] = np.frombuffer(json.dumps(header).encode(), np.uint8)
    out = io.BytesIO()
    np.savez(out, **arrays)
    return out.getvalue()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda h: h.pop("tables"), "header key 'tables' is missing"),
        (lambda h: h.pop("bits"), "header key 'bits' is missing"),
        (lambda h: h.update(bits="4"), "header key 'bits' is not a int"),
        (lambda h: h.update(plain=["dense/kernel9"]), "member 'plain/dense/kernel9' is missing"),
        (lambda h: h["tables"][0].append(["x"]), "header does not describe its tables"),
        (lambda h: h.update(bits=40), "header bits 40"),
    ],
)
def test_a_header_missing_a_key_or_of_the_wrong_kind_is_one_error(change, message):
    """A header without a key used to raise KeyError."""
    data, _, _ = compact_file()
    with pytest.raises(clustering.ClusteredFileError, match=re.escape(message)):
        clustering.load_clustered(rewritten(data, change))


def test_reading_a_file_names_it(tmp_path):
    data, _, signature = compact_file()
    path = tmp_path / "model.kmeans.npz"
    path.write_bytes(data[:-100])
    with pytest.raises(clustering.ClusteredFileError, match=rf"^{path}: not a clustered-weights file \("):
        clustering.read_clustered_file(path, signature)
    with pytest.raises(clustering.ClusteredFileError, match=rf"^{tmp_path / 'none.npz'}: No such file"):
        clustering.read_clustered_file(tmp_path / "none.npz")
    path.write_bytes(data)
    other = [[name, [1, *shape]] for name, shape in signature]
    with pytest.raises(clustering.ClusteredFileError, match=rf"^{path}: made from another model"):
        clustering.read_clustered_file(path, other)
