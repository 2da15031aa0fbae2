"""asr.compress on a real (tiny) trained run: clustered checkpoint, compact file, evaluation, errors."""

import json

import numpy as np
import pytest

from asr import clustering
from asr.compress import COMPACT_FILE, REPORT_FILE, CompressConfig, CompressError, compress


@pytest.fixture(scope="module")
def compressed(tiny_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("compressed") / "k8"
    compress(CompressConfig(tiny_run, out, clusters=8), log=lambda line: None)
    return out


def restored_weights(run_dir):
    from asr.checkpoint import latest_checkpoint
    from asr.config import load_recipe
    from asr.inference import restore_model

    model, _ = restore_model(load_recipe(run_dir / "recipe.yaml"), latest_checkpoint(run_dir))
    return {v.path: v.numpy() for v in model.weights}


def test_every_weight_matrix_takes_exactly_k_values_and_the_rest_is_untouched(tiny_run, compressed):
    report = json.loads((compressed / REPORT_FILE).read_text())
    original, clustered = restored_weights(tiny_run), restored_weights(compressed)
    assert report["clustered_tensors"] and report["tables"] == len(report["clustered_tensors"])
    for name in report["clustered_tensors"]:
        assert clustered[name].ndim >= 2 and len(np.unique(clustered[name])) == 8, name
        assert np.abs(clustered[name] - original[name]).max() < np.abs(original[name]).max() / 2
    for name in report["plain_tensors"]:
        np.testing.assert_array_equal(clustered[name], original[name])
    assert not [name for name in report["clustered_tensors"] if name.endswith("bias")]
    assert [name for name in report["plain_tensors"] if name.endswith("gru_cell/bias")]  # rank 2, a bias


def test_the_compact_file_restores_the_checkpoint_exactly(compressed):
    weights, header = clustering.load_clustered((compressed / COMPACT_FILE).read_bytes())
    checkpoint = restored_weights(compressed)
    assert header["bits"] == 3 and set(weights) == set(checkpoint)
    for name, value in weights.items():
        np.testing.assert_array_equal(value, checkpoint[name])


def test_one_table_for_the_whole_model(tiny_run, tmp_path):
    out = tmp_path / "model16"
    report = compress(CompressConfig(tiny_run, out, clusters=16, scope="model", bits=8), log=lambda _: None)
    clustered = restored_weights(out)
    values = np.concatenate([clustered[name].ravel() for name in report["clustered_tensors"]])
    assert report["tables"] == 1 and len(np.unique(values)) == 16


def test_int8_keeps_each_weight_within_half_a_quantization_step(tiny_run, tmp_path):
    out = tmp_path / "int8"
    report = compress(CompressConfig(tiny_run, out, method="int8"), log=lambda _: None)
    original, quantized = restored_weights(tiny_run), restored_weights(out)
    weights, header = clustering.load_clustered((out / COMPACT_FILE).read_bytes())
    assert header["int8"] == report["clustered_tensors"]
    for name in report["clustered_tensors"]:
        np.testing.assert_array_equal(weights[name], quantized[name])
        step = np.abs(original[name]).reshape(-1, original[name].shape[-1]).max(axis=0) / 127
        assert np.all(np.abs(quantized[name] - original[name]) <= step / 2 + 1e-7)


def test_the_compressed_run_evaluates_end_to_end(compressed, tiny_shards, run_module):
    result = run_module("asr.evaluate", "--run", compressed, "--data", tiny_shards / "dev", "--beam", "1",
                        timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert "cer" in result.stdout.lower() or "cer" in result.stderr.lower()


def test_fine_tuning_through_asr_train_keeps_the_assignments_and_recompresses_exactly(
    compressed, tmp_path, run_module
):
    run = tmp_path / "k8-fine-tuned"
    result = run_module("asr.train", compressed / "recipe.yaml", "--run-dir", run,
                        "--set", f"train.clustered_weights={compressed / COMPACT_FILE}",
                        "--set", "train.epochs=2", "--set", "train.learning_rate=0.01",
                        timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    tables = clustering.load_tables((compressed / COMPACT_FILE).read_bytes())
    tuned = restored_weights(run)
    moved = 0
    for table in tables:
        (name,), (index,) = table.names, table.indices
        for cluster, centroid in enumerate(table.centroids):
            members = tuned[name][index == cluster]
            assert members.size == 0 or np.all(members == members[0]), (name, cluster)
            moved += members.size > 0 and members[0] != centroid
    assert moved > sum(t.centroids.size for t in tables) // 2
    again = tmp_path / "k8-fine-tuned-packed"
    compress(CompressConfig(run, again, clusters=8), log=lambda line: None)
    weights, _ = clustering.load_clustered((again / COMPACT_FILE).read_bytes())
    for name, value in tuned.items():
        np.testing.assert_array_equal(weights[name], value)


def test_fine_tuning_from_a_damaged_compact_file_is_one_line(compressed, tmp_path, run_module):
    damaged = tmp_path / "cut.npz"
    damaged.write_bytes((compressed / COMPACT_FILE).read_bytes()[:1000])
    result = run_module("asr.train", compressed / "recipe.yaml", "--run-dir", tmp_path / "run",
                        "--set", f"train.clustered_weights={damaged}", timeout=300)  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: train.clustered_weights: ")


def test_settings_outside_the_index_width_are_refused():
    with pytest.raises(CompressError, match="--clusters: 1"):
        CompressConfig("r", "o", clusters=1)
    with pytest.raises(CompressError, match="8-bit indices hold 2 to 256"):
        CompressConfig("r", "o", clusters=300, bits=8)
    assert CompressConfig("r", "o", clusters=64).index_bits == 6


def test_errors_are_one_line_with_status_2(tmp_path, tiny_run, compressed, run_module):
    run = ["--run", str(tiny_run)]
    cases = [
        (
            ["--run", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x"), "--clusters", "8"],
            "no recipe.yaml",
        ),
        ([*run, "--out", str(compressed), "--clusters", "8"], "exists (use --force"),
        ([*run, "--out", str(tmp_path / "y"), "--clusters", "1"], "--clusters: 1"),
        ([*run, "--out", str(tmp_path / "z"), "--clusters", "512", "--bits", "8"], "2 to 256"),
    ]
    for args, message in cases:
        result = run_module("asr.compress", *args)
        assert result.returncode == 2, result.stderr[-2000:]
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and message in errors[0], result.stderr[-2000:]
    assert not any((tmp_path / n).exists() for n in "xyz")
