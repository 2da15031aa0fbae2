"""asr.export: the SavedModel and TFLite models give the checkpoint model's logits; errors are one line."""

from __future__ import annotations

import json
from pathlib import Path

import jiwer
import numpy as np
import pytest
import soundfile

from asr.decoding import greedy_text
from asr.inference import ExportNotFoundError, open_export, open_run, read_normalization
from asr.text import NUM_SYMBOLS

GRAPH_FEATURES_TOLERANCE = 1e-3
"""SavedModel (features computed in the graph) vs the checkpoint model on numpy features. The two feature
computations agree within 5e-4 (``tests/test_features.py``: each within 2.5e-4 of a float64 reference);
the network's first layers map that to logit differences measured at 3e-5 here (std-normalized inputs,
conv and recurrent weights of magnitude < 1), so 1e-3 is 30× the measurement."""

SAME_FEATURES_TOLERANCE = 1e-4
"""SavedModel ``features`` signature and TFLite float32 vs the checkpoint model on the same features: the
same float32 arithmetic in other kernels (TF's graph vs eager-compiled, XNNPACK vs Eigen): measured 1.4e-5
on the cpu recipe's model, float32 sums of ~600 terms per product."""

INT8_CER_MARGIN = 0.10
"""int8 weights and per-call int8 inputs move logits by ~1 % of their range; greedy text changes only
where two symbols were within that of each other: measured 0-4 % CER against float32's text on these
sentences (tiny barely trained model: many near ties); the cpu model's WER gap is in RESULTS.md."""


@pytest.fixture(scope="module")
def exported(tiny_run, tmp_path_factory, run_module) -> Path:
    out = tmp_path_factory.mktemp("export") / "tiny"
    result = run_module("asr.export", "--run", str(tiny_run), "--out", str(out), timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def dev_waveforms(tiny_corpus) -> list[np.ndarray]:
    return [soundfile.read(p, dtype="float32")[0] for p in sorted(tiny_corpus.glob("dev-clean/*/*/*.flac"))]


@pytest.fixture(scope="module")
def reference(tiny_run, dev_waveforms) -> list[np.ndarray]:
    """The checkpoint model's logits per utterance (evaluation's path: numpy features, Keras model)."""
    return open_run(tiny_run).run_waveforms(dev_waveforms)


def test_export_writes_every_format_with_what_it_needs(exported, tiny_run):
    names = {p.name for p in exported.iterdir()}
    assert {"saved_model.pb", "variables", "model.tflite", "model-int8.tflite", "export.json"} <= names
    assert "recipe.yaml" in names
    metadata = json.loads((exported / "export.json").read_text())
    assert metadata["alphabet"][0] == " " and len(metadata["alphabet"]) == NUM_SYMBOLS
    assert metadata["sample_rate"] == 16000 and metadata["output_frame_seconds"] == pytest.approx(0.03)
    mean, _ = read_normalization(tiny_run, None)
    np.testing.assert_array_equal(np.asarray(metadata["normalization"]["mean"], np.float32), mean)
    assert metadata["files"]["model.tflite"] == (exported / "model.tflite").stat().st_size
    assert not [p for p in exported.parent.iterdir() if ".tmp-" in p.name]


def test_saved_model_takes_waveforms_and_gives_the_checkpoint_models_logits_and_greedy_text(
    exported, dev_waveforms, reference
):
    import tensorflow as tf

    serving = tf.saved_model.load(str(exported)).signatures["serving_default"]
    longest = max(len(w) for w in dev_waveforms)
    batch = np.stack([np.pad(w, (0, longest - len(w))) for w in dev_waveforms])
    lengths = np.array([len(w) for w in dev_waveforms], np.int32)
    out = serving(waveforms=tf.constant(batch), lengths=tf.constant(lengths))
    texts = [t.decode() for t in out["text"].numpy()]
    for row, expected in enumerate(reference):
        frames = int(out["output_frames"][row])
        assert frames == len(expected)
        logits = out["logits"].numpy()[row, :frames]
        assert np.abs(logits - expected).max() < GRAPH_FEATURES_TOLERANCE
        assert texts[row] == greedy_text(logits)
    assert any(texts), "the tiny model should emit some text for the comparison to mean something"


@pytest.mark.parametrize("backend", ["savedmodel", "tflite"])
def test_features_backends_equal_the_checkpoint_model(exported, dev_waveforms, reference, backend):
    model = open_export(exported, backend)
    for logits, expected in zip(model.run_waveforms(dev_waveforms), reference, strict=True):
        assert logits.shape == expected.shape
        assert np.abs(logits - expected).max() < SAME_FEATURES_TOLERANCE


def test_int8_tflite_greedy_text_stays_close_to_float32(exported, dev_waveforms):
    float32 = [greedy_text(x) for x in open_export(exported, "tflite").run_waveforms(dev_waveforms)]
    int8 = [greedy_text(x) for x in open_export(exported, "tflite-int8").run_waveforms(dev_waveforms)]
    assert jiwer.cer(float32, int8) <= INT8_CER_MARGIN


def test_graph_greedy_text_is_the_decoders():
    import tensorflow as tf

    from asr.export import greedy_text_graph

    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 40, NUM_SYMBOLS)).astype(np.float32)
    logits[..., NUM_SYMBOLS - 1] += 1.0  # blanks as often as in a trained model
    frames = np.array([40, 17, 0], np.int32)
    texts = greedy_text_graph(tf.constant(logits), tf.constant(frames)).numpy()
    assert [t.decode() for t in texts] == [greedy_text(logits[i, : frames[i]]) for i in range(3)]


def test_errors_are_one_line_with_status_2(tmp_path, exported, tiny_run, run_module):
    cases = [
        (["--run", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x")], "no recipe.yaml"),
        (["--run", str(tiny_run), "--out", str(exported)], "exists (use --force"),
        (["--run", str(tiny_run), "--out", str(tmp_path / "y"), "--formats", "mp4"], "--formats: mp4"),
        (["--run", str(tiny_run), "--out", str(tmp_path / "z"), "--checkpoint", "999"], "no checkpoint at"),
    ]
    for args, message in cases:
        result = run_module("asr.export", *args)
        assert result.returncode == 2, result.stderr[-2000:]
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and message in errors[0], result.stderr[-2000:]
        assert "Traceback" not in result.stderr
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_open_export_names_what_is_missing(tmp_path, exported):
    with pytest.raises(ExportNotFoundError, match="not an export directory"):
        open_export(tmp_path)
    with pytest.raises(ExportNotFoundError, match="choose from"):
        open_export(exported, "coreml")
    with pytest.raises(ExportNotFoundError, match=r"model\.onnx: missing"):
        open_export(exported, "onnx")


def test_onnx_export_equals_the_checkpoint_model(tiny_run, tmp_path, dev_waveforms, reference):
    """Optional format: runs where tf2onnx and onnxruntime are installed (docs/inference.md)."""
    pytest.importorskip("tf2onnx")
    pytest.importorskip("onnxruntime")
    from asr.export import ExportOptions, write_export

    write_export(ExportOptions(tiny_run, tmp_path / "onnx", formats=("onnx",)), log=lambda line: None)
    model = open_export(tmp_path / "onnx", "onnx")
    for logits, expected in zip(model.run_waveforms(dev_waveforms), reference, strict=True):
        assert logits.shape == expected.shape
        assert np.abs(logits - expected).max() < SAME_FEATURES_TOLERANCE


def test_an_export_of_a_run_with_utterance_normalization_gives_evaluations_logits(
    tiny_run, tmp_path, dev_waveforms, reference
):
    """The same weights read as a run with ``data.normalization: utterance``: evaluation (numpy rule) and the
    SavedModel and TFLite graphs (TF rule) normalize alike, and differently from the global run."""
    import shutil

    from asr.export import ExportOptions, write_export

    run = tmp_path / "utterance-run"
    shutil.copytree(tiny_run, run)
    recipe = (run / "recipe.yaml").read_text()
    assert recipe.count("normalization: global") == 1
    (run / "recipe.yaml").write_text(recipe.replace("normalization: global", "normalization: utterance"))
    evaluation = open_run(run).run_waveforms(dev_waveforms)
    assert max(np.abs(a - b).max() for a, b in zip(evaluation, reference, strict=True)) > 1e-2
    metadata = write_export(
        ExportOptions(run, tmp_path / "export", formats=("savedmodel", "tflite")), log=print
    )
    assert metadata["normalization"]["mode"] == "utterance"
    for backend in ("savedmodel", "tflite"):
        model = open_export(tmp_path / "export", backend)
        for logits, expected in zip(model.run_waveforms(dev_waveforms), evaluation, strict=True):
            assert logits.shape == expected.shape
            assert np.abs(logits - expected).max() < SAME_FEATURES_TOLERANCE
