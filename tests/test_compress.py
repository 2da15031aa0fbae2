"""asr.compress on a real (tiny) trained run: clustered checkpoint, compact file, evaluation, errors."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import beside, run_main, snapshot

from asr import clustering
from asr import compress as command
from asr.compress import COMPACT_FILE, REPORT_FILE, CompressConfig, CompressError, compress

REPO_ROOT = Path(__file__).resolve().parents[1]


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


def check_kmeans_table(original: np.ndarray, centroids: np.ndarray, index: np.ndarray, clustered: np.ndarray):
    """What k-means promises of one table: every clustered weight is exactly its centroid, the table holds at
    most K distinct values, each weight sits at its nearest centroid (so its error is at most half the gap to
    the next one), and each centroid is the mean of its members (Lloyd's fixed point)."""
    np.testing.assert_array_equal(clustered, centroids[index])
    assert np.all(np.diff(centroids) > 0)
    distance = np.abs(original.astype(np.float64).ravel()[:, None] - centroids.astype(np.float64)[None, :])
    own = distance[np.arange(index.size), index.ravel()]
    assert np.all(own <= distance.min(axis=1) + 1e-7)
    members = np.bincount(index.ravel(), minlength=centroids.size)
    means = np.bincount(index.ravel(), weights=original.ravel().astype(np.float64), minlength=centroids.size)
    used = members > 0
    np.testing.assert_allclose(centroids[used], means[used] / members[used], rtol=1e-5, atol=1e-7)


def test_every_weight_matrix_is_k_means_of_its_weights_and_the_rest_is_untouched(tiny_run, compressed):
    report = json.loads((compressed / REPORT_FILE).read_text())
    original, clustered = restored_weights(tiny_run), restored_weights(compressed)
    tables = clustering.load_tables((compressed / COMPACT_FILE).read_bytes())
    assert report["clustered_tensors"] and report["tables"] == len(report["clustered_tensors"]) == len(tables)
    for table in tables:
        (name,), (index,) = table.names, table.indices
        assert clustered[name].ndim >= 2 and len(np.unique(clustered[name])) == table.centroids.size == 8
        check_kmeans_table(original[name], table.centroids, index, clustered[name])
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
    original, clustered = restored_weights(tiny_run), restored_weights(out)
    (table,) = clustering.load_tables((out / COMPACT_FILE).read_bytes())
    assert report["tables"] == 1 and table.centroids.size == 16
    assert sorted(table.names) == report["clustered_tensors"]
    flat = np.concatenate([original[name].ravel() for name in table.names])
    index = np.concatenate([i.ravel() for i in table.indices])
    values = np.concatenate([clustered[name].ravel() for name in table.names])
    assert len(np.unique(values)) == 16
    check_kmeans_table(flat, table.centroids, index, values)


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


def test_the_compressed_run_evaluates_to_the_cer_of_its_own_greedy_text(compressed, tiny_shards, capsys):
    """``asr.evaluate`` on the compressed run prints the dev row with the CER of the clustered model's greedy
    text, computed here independently from the same shards."""
    from asr import evaluate
    from asr.decoding import greedy_text
    from asr.evaluate import load_eval_set
    from asr.inference import open_run
    from asr.metrics import score

    status = evaluate.main(["--run", str(compressed), "--data", str(tiny_shards / "dev"), "--beam", "1"])
    out = capsys.readouterr().out
    assert status == 0
    rows = re.findall(r"^\| dev \| (\d+) \| ([\d.]+) \| ([\d.]+) \|", out, re.M)
    assert len(rows) == 1, out
    dev = load_eval_set(tiny_shards / "dev")
    texts = [greedy_text(logits) for logits in open_run(compressed).run(list(dev.features))]
    expected = score(list(dev.texts), texts)
    assert rows[0] == (str(len(dev)), f"{expected.wer:.2f}", f"{expected.cer:.2f}")


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


def test_fine_tuning_from_a_compact_file_with_one_flipped_bit_is_one_line(compressed, tmp_path, run_module):
    """A bit flipped inside a member used to surface as a ``zipfile.BadZipFile`` traceback (zip's CRC)."""
    import io
    import zipfile

    data = bytearray((compressed / COMPACT_FILE).read_bytes())
    member = max(zipfile.ZipFile(io.BytesIO(bytes(data))).infolist(), key=lambda m: m.file_size)
    start = member.header_offset + 30 + len(member.filename.encode()) + len(member.extra)
    data[start + member.compress_size // 2] ^= 0x10  # a bit in the middle of the largest array's bytes
    damaged = tmp_path / "flipped.npz"
    damaged.write_bytes(bytes(data))
    result = run_module("asr.train", compressed / "recipe.yaml", "--run-dir", tmp_path / "run",
                        "--set", f"train.clustered_weights={damaged}", timeout=300)  # fmt: skip
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert re.match(rf"asr\.train: error: train\.clustered_weights: {damaged}: damaged: member '[^']+' is "
                    r"unreadable \(Bad CRC-32 for file '[^']+'\)$", last), last  # fmt: skip


def test_settings_outside_the_index_width_are_refused():
    with pytest.raises(CompressError, match="--clusters: 1"):
        CompressConfig("r", "o", clusters=1)
    with pytest.raises(CompressError, match="8-bit indices hold 2 to 256"):
        CompressConfig("r", "o", clusters=300, bits=8)
    with pytest.raises(
        CompressError, match=r"^--clusters: 65537 \(2 to 65536: indices of at most 16 bits\)$"
    ):
        CompressConfig("r", "o", clusters=65537)
    assert CompressConfig("r", "o", clusters=64).index_bits == 6
    assert CompressConfig("r", "o", clusters=65536).index_bits == 16


def test_errors_are_one_line_with_status_2_and_come_before_k_means(tmp_path, tiny_run, compressed, capsys,
                                                                  monkeypatch):  # fmt: skip
    seeded = []
    real_kmeans = clustering.kmeans
    monkeypatch.setattr(clustering, "kmeans", lambda *a, **k: seeded.append(1) or real_kmeans(*a, **k))
    no_normalization = Path(shutil.copytree(tiny_run, tmp_path / "no-normalization"))
    (no_normalization / "normalization.json").unlink()
    bad_recipe = Path(shutil.copytree(tiny_run, tmp_path / "bad-recipe"))
    text = (bad_recipe / "recipe.yaml").read_text()
    (bad_recipe / "recipe.yaml").write_text(text.replace("rnn_units: 16", "rnn_units: eight"))
    run, out = ["--run", tiny_run], tmp_path / "x"
    cases = [
        (["--run", tmp_path / "nowhere", "--out", out, "--clusters", "8"], "no recipe.yaml"),
        ([*run, "--out", compressed, "--clusters", "8"], f"{compressed}: exists (use --force"),
        ([*run, "--out", out, "--clusters", "1"], "argument --clusters: must be in [2, 65536], got 1"),
        ([*run, "--out", out, "--clusters", "65537"], "--clusters: must be in [2, 65536], got 65537"),
        ([*run, "--out", out, "--clusters", "512", "--bits", "8"], "8-bit indices hold 2 to 256"),
        ([*run, "--out", out, "--clusters", "8", "--bits", "17"], "argument --bits: must be in [0, 16]"),
        ([*run, "--out", out, "--clusters", "eight"], "argument --clusters: expected a whole number"),
        (["--run", no_normalization, "--out", out, "--clusters", "8"],
         f"{no_normalization / 'normalization.json'}: missing; "),
        (["--run", bad_recipe, "--out", out, "--clusters", "8"],
         f"{bad_recipe / 'recipe.yaml'}: model.rnn_units: expected an integer"),
        ([*run, "--out", out, "--clusters", "65536"],
         "--clusters: 65536: more than the 768 weights of bigru_1/"),
        ([*run, "--out", out, "--clusters", "25009", "--scope", "model"],
         "--clusters: 25009: more than the 25008 weights clustered"),
    ]  # fmt: skip
    for args, message in cases:
        status, lines = run_main(command.main, args, capsys)
        assert status == 2, lines
        errors = [line for line in lines if "error" in line]
        assert len(errors) == 1 and errors[0].startswith("asr.compress: error: "), lines
        assert message in errors[0], lines
    assert seeded == []  # every refusal came before k-means
    assert beside(out) == []


def test_the_largest_k_the_smallest_matrix_holds_is_accepted(tiny_run, tmp_path, capsys):
    args = ["--run", tiny_run, "--out", tmp_path / "k192", "--clusters", "192", "--cluster-biases"]
    status, lines = run_main(command.main, args, capsys)
    assert status == 0, lines
    notes = [line for line in lines if line.startswith("asr.compress: note: ")]
    assert len(notes) == 1 and "vector(s) of at most 192 values (biases, batch-norm) keep every" in notes[0]
    _, header = clustering.load_clustered((tmp_path / "k192" / COMPACT_FILE).read_bytes())
    assert header["clusters"] == 192 and header["bits"] == 8


def test_an_output_that_is_or_lies_inside_the_run_is_refused_even_with_force(tiny_run, tmp_path, capsys):
    """``--out RUN --force`` used to replace the run directory with the clustered run."""
    before = snapshot(tiny_run)
    (tmp_path / "link").symlink_to(tiny_run)
    for out, relation in ((tiny_run, "is"), (tmp_path / "link", "is"), (tiny_run / "k8", "lies inside")):
        status, lines = run_main(
            command.main, ["--run", tiny_run, "--out", out, "--clusters", "8", "--force"], capsys
        )
        assert status == 2 and len(lines) == 1, lines
        assert lines[0].startswith(f"asr.compress: error: --out {out}: {relation} the input --run "), lines
    assert snapshot(tiny_run) == before and beside(tiny_run) == [tiny_run.name]


def test_a_kill_9_mid_write_loses_nothing_and_the_rerun_leaves_no_leftovers(tiny_run, compressed, tmp_path,
                                                                           capsys):  # fmt: skip
    """SIGKILL inside the clustered checkpoint's write (fail point ``checkpoint.state``) of a ``--force``
    replacement: the previous output stays whole; the rerun removes the dead process's temporary directory and
    leaves no ``OUT.old-PID`` either."""
    out = Path(shutil.copytree(compressed, tmp_path / "k8"))
    before = snapshot(out)
    result = subprocess.run(
        [sys.executable, "-m", "asr.compress", "--run", str(tiny_run), "--out", str(out), "--clusters", "4",
         "--force"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "ASR_FAILPOINTS": "checkpoint.state=kill@1"},
    )  # fmt: skip
    assert result.returncode == -signal.SIGKILL, result.stderr[-2000:]
    leftovers = [name for name in beside(out) if name != "k8"]
    assert len(leftovers) == 1 and leftovers[0].startswith("k8.tmp-"), beside(out)
    assert snapshot(out) == before
    status, lines = run_main(
        command.main, ["--run", tiny_run, "--out", out, "--clusters", "4", "--force"], capsys
    )
    assert status == 0, lines
    assert beside(out) == ["k8"]
    assert json.loads((out / REPORT_FILE).read_text())["clusters"] == 4


def test_ctrl_c_is_one_line_status_130_and_leaves_nothing(tiny_run, tmp_path, capsys, monkeypatch):
    """Ctrl-C while the output is being written (here: as the report is written): the temporary directory
    goes. (``tests/test_export.py`` sends a real SIGINT to a real export.)"""

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(command, "write_json", interrupted)
    out = tmp_path / "k8"
    status, lines = run_main(command.main, ["--run", tiny_run, "--out", out, "--clusters", "8"], capsys)
    assert status == 130 and lines[-1] == "asr.compress: interrupted", lines
    assert beside(out) == []
