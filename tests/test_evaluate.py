"""Evaluation sets, the overlapped logits→decode loop, result files, and the command."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from asr.decoding import BeamSearchDecoder, GreedyDecoder
from asr.evaluate import (
    DecodeSetting,
    EvaluateError,
    evaluate_checkpoint,
    format_sweep,
    format_table,
    hypotheses_tsv,
    load_eval_set,
    padded_batches,
    run_set,
    save_results,
)
from asr.shards import utterance_example, write_shard
from asr.text import BLANK_ID, NUM_SYMBOLS, SYMBOLS, encode

DEV_TEXTS = ["the cat sat", "a cool dog", "it's here", "the mat"]


def write_eval_shards(directory, texts, frames_per_char=6, alphabet=SYMBOLS):
    """Shards of utterances with ``frames_per_char`` frames per character; feature 0 is the index."""
    directory.mkdir(parents=True)
    records = []
    for i, transcript in enumerate(texts):
        frames = frames_per_char * len(transcript) + 8
        features = np.zeros((frames, 93), np.float32)
        features[:, 0] = i
        records.append(utterance_example(features, encode(transcript), transcript, f"utt-{i}", frames / 100))
    write_shard(directory / "shard-00000.tfrecord.gz", records[:2])
    write_shard(directory / "shard-00001.tfrecord.gz", records[2:])
    manifest = {
        "alphabet": list(alphabet),
        "shards": [{"file": "shard-00000.tfrecord.gz"}, {"file": "shard-00001.tfrecord.gz"}],
    }
    (directory / "manifest.json").write_text(json.dumps(manifest))
    return directory


def oracle_logits_fn(eval_set, mistakes=None):
    """A stand-in acoustic model: peaked logits spelling each utterance's transcript (or a mistake).

    Utterances are recognized by feature column 0, which :func:`write_eval_shards` sets to the index.
    """
    mistakes = mistakes or {}

    def logits_fn(features, frames, labels):
        out_frames = (np.asarray(frames) - 11) // 2 + 1
        logits = np.zeros((len(frames), int(out_frames.max()), NUM_SYMBOLS), np.float32)
        logits[:, :, BLANK_ID] = 5.0
        for row in range(len(frames)):
            index = int(features[row, 0, 0])
            target = encode(mistakes.get(index, eval_set.texts[index]))
            for position, label in enumerate(target):
                logits[row, 2 * position + 1, label] = 10.0
        return logits, out_frames, np.full(len(frames), 1.5)

    return logits_fn


@pytest.fixture
def dev_set(tmp_path):
    return load_eval_set(write_eval_shards(tmp_path / "dev-clean", DEV_TEXTS))


def test_load_eval_set_reads_every_shard_in_order(dev_set):
    assert dev_set.name == "dev-clean"
    assert dev_set.texts == tuple(DEV_TEXTS)
    assert dev_set.utt_ids == ("utt-0", "utt-1", "utt-2", "utt-3")
    assert [f.shape for f in dev_set.features] == [(6 * len(t) + 8, 93) for t in DEV_TEXTS]


def test_padded_batches_sort_by_length_and_pad_with_zeros(dev_set):
    batches = list(padded_batches(dev_set, 3))
    assert [len(b[0]) for b in batches] == [3, 1]
    indices, batch, frames, labels = batches[0]
    assert list(indices) == [0, 1, 2]  # 11, 10 and 9 characters: longest first
    assert list(batches[1][0]) == [3]
    assert batch.shape == (3, 74, 93)
    assert list(frames) == [74, 68, 62]
    assert batch[1, :68, 0].tolist() == [1.0] * 68
    assert not batch[1, 68:].any()
    assert labels[1] == encode("a cool dog")


def test_run_set_scores_decoded_batches_in_set_order(dev_set):
    perfect = run_set(dev_set, oracle_logits_fn(dev_set), GreedyDecoder(), batch_size=3)
    assert perfect.hypotheses == DEV_TEXTS
    assert perfect.scores.wer == 0.0 and perfect.loss == pytest.approx(1.5)
    wrong = run_set(dev_set, oracle_logits_fn(dev_set, {1: "a cool dot"}), GreedyDecoder(), batch_size=2)
    assert wrong.hypotheses[1] == "a cool dot"
    assert wrong.scores.words.substitutions == 1
    assert wrong.scores.wer == pytest.approx(100 / 10)  # 3 + 3 + 2 + 2 words
    fields = wrong.event_fields("swap")
    assert fields["split"] == "dev-clean" and fields["source"] == "swap" and fields["words"] == 10
    assert fields["decoder"] == "greedy" and fields["beam_width"] == 1


def test_run_set_with_the_beam_search_pool(dev_set):
    with pytest.warns(UserWarning, match="without a language model"):
        decoder = BeamSearchDecoder(beam_width=8, workers=2)
    with decoder:
        result = run_set(dev_set, oracle_logits_fn(dev_set), decoder, batch_size=1)
    assert result.hypotheses == DEV_TEXTS
    assert result.decoder == "beam" and result.beam_width == 8


def test_result_files(dev_set):
    result = run_set(dev_set, oracle_logits_fn(dev_set, {0: "the cat"}), GreedyDecoder(), batch_size=4)
    lines = hypotheses_tsv(dev_set, result).splitlines()
    assert lines[0].split("\t")[0] == "utt_id"
    assert lines[1].split("\t") == ["utt-0", "1", "3", "4", "the cat sat", "the cat"]
    table = format_table([result])
    assert "| dev-clean | 4 | 10.00 |" in table
    assert "| dev-clean | 1 |" in format_sweep([result])


def test_bad_sets_are_one_line_errors(tmp_path):
    with pytest.raises(EvaluateError, match=r"no manifest\.json"):
        load_eval_set(tmp_path)
    other = write_eval_shards(tmp_path / "other", DEV_TEXTS, alphabet=[*SYMBOLS[:-2], "<b>"])
    with pytest.raises(EvaluateError, match="alphabet"):
        load_eval_set(other)
    empty = write_eval_shards(tmp_path / "empty", [])
    with pytest.raises(EvaluateError, match="empty"):
        load_eval_set(empty)


def test_evaluate_checkpoint_sweeps_and_saves_files_report_reads(dev_set, tmp_path):
    run_dir = tmp_path / "run"
    settings = [DecodeSetting(1), DecodeSetting(4, workers=1)]
    with pytest.warns(UserWarning, match="without a language model"):
        results = evaluate_checkpoint([dev_set], oracle_logits_fn(dev_set), settings, batch_size=2)
    assert [(r.name, r.beam_width, r.decoder) for r in results] == [
        ("dev-clean", 1, "greedy"),
        ("dev-clean", 4, "beam"),
    ]
    out = save_results(run_dir, "ckpt-7", [dev_set], results, sweep=True)
    assert sorted(p.name for p in out.iterdir()) == [
        "dev-clean.beam1.hyp.tsv", "dev-clean.beam4.hyp.tsv", "results.json", "sweep.md", "table.md"
    ]  # fmt: skip
    rows = json.loads((run_dir / "eval" / "results.json").read_text())
    saved = [(r["split"], r["beam_width"], r["checkpoint"]) for r in rows]
    assert saved == [("dev-clean", 1, "ckpt-7"), ("dev-clean", 4, "ckpt-7")]
    assert rows[0]["wer"] == 0.0 and rows[0]["utterances"] == 4
    # a later evaluation of the same kind replaces the row; other kinds stay
    save_results(run_dir, "ckpt-9", [dev_set], results[1:], sweep=False)
    rows = json.loads((run_dir / "eval" / "results.json").read_text())
    assert [(r["beam_width"], r["checkpoint"]) for r in rows] == [(1, "ckpt-7"), (4, "ckpt-9")]


def test_rows_decoded_with_an_lm_name_the_lm_and_its_weights(dev_set, tmp_path):
    from asr.lm import build_lm

    lm_dir = tmp_path / "lm"
    build_lm(["the cat sat on the mat", "a dog ran", "the dog sat"], lm_dir, order=2)
    setting = DecodeSetting(4, str(lm_dir), alpha=0.7, beta=0.5, workers=1)
    (result,) = evaluate_checkpoint([dev_set], oracle_logits_fn(dev_set), [setting], batch_size=2)
    row = result.row()
    assert row["decoder"] == "beam+lm"
    assert (row["lm"], row["lm_alpha"], row["lm_beta"]) == (str(lm_dir.resolve()), 0.7, 0.5)
    assert row["oov_words"] > 0  # the dictionary lacks some dev words


def test_command_bad_input_is_one_line_exit_2(tmp_path, run_module):
    result = run_module("asr.evaluate", "--run", tmp_path, "--data", tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        f"asr.evaluate: error: --run {tmp_path}: no recipe.yaml (is this a run directory of asr.train?)"
    )
    result = run_module("asr.evaluate", "--run", tmp_path, "--beam-sweep", "64,x")
    assert result.returncode == 2 and "--beam-sweep" in result.stderr


REPLICA_SCRIPT = """
import json, sys
import numpy as np, tensorflow as tf, keras
cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2)
from asr.decoding import GreedyDecoder, split_batch
from asr.evaluators.swap import conv_output_frames, replica_logits_fn

from asr.config import ModelConfig
from asr.model import build_model

config = ModelConfig(conv_filters=16, conv_stride=2, rnn="gru", bidirectional=True, rnn_layers=1, rnn_units=8,
                     dropout=0.5)

def build():
    return build_model(config)

keras.utils.set_random_seed(1)
single = build()
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
with strategy.scope():
    mirrored = build()
mirrored.set_weights(single.get_weights())
rng = np.random.default_rng(0)
features = rng.normal(size=(3, 40, 93)).astype(np.float32)
frames = np.array([40, 30, 25])
labels = [[1, 2, 3], [4, 5], [6] * 20]
mean, std = features.mean(axis=(0, 1)), features.std(axis=(0, 1))
on_one = replica_logits_fn(tf.distribute.get_strategy(), single, conv_output_frames(11, 2), mean, std)
on_two = replica_logits_fn(strategy, mirrored, conv_output_frames(11, 2), mean, std)
one, two = on_one(features, frames, labels), on_two(features, frames, labels)
alone = [single(((features[i:i + 1, :n] - mean) / std, np.array([n])), training=False).numpy()[0]
         for i, n in enumerate(frames)]
json.dump({
    "replicas": strategy.num_replicas_in_sync,
    "shape": list(two[0].shape),
    "out_frames": two[1].tolist(),
    "max_diff": float(np.abs(one[0] - two[0]).max()),
    "padded_vs_alone": max(float(np.abs(one[0][i, :len(a)] - a).max()) for i, a in enumerate(alone)),
    "loss_one": [None if np.isnan(v) else v for v in one[2].tolist()],
    "loss_two": [None if np.isnan(v) else v for v in two[2].tolist()],
    "texts_equal": GreedyDecoder().decode(split_batch(one[0], one[1]))
    == GreedyDecoder().decode(split_batch(two[0], two[1])),
}, sys.stdout)
"""


def test_replica_logits_split_over_two_replicas_match_one_device(tmp_path):
    """Real MirroredStrategy over 2 logical CPUs: an odd batch is padded, split, gathered in order."""
    result = subprocess.run(
        [sys.executable, "-c", REPLICA_SCRIPT],
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["replicas"] == 2
    assert report["shape"] == [3, 15, 30]
    assert report["out_frames"] == [15, 10, 8]
    assert report["max_diff"] < 1e-5
    assert report["padded_vs_alone"] < 1e-4  # padding (masked) changes no utterance's logits
    assert report["loss_one"][2] is None and report["loss_two"][2] is None  # 20 labels, 8 frames
    assert report["loss_one"][:2] == pytest.approx(report["loss_two"][:2], rel=1e-5)
    assert all(v > 0 for v in report["loss_two"][:2])
    assert report["texts_equal"]


def test_words_outside_the_dictionary_are_counted_in_rows_and_table(dev_set):
    vocabulary = frozenset({"the", "cat", "sat", "a", "dog", "mat"})  # "cool", "it's", "here" are not
    mistakes = {1: "a col dog", 0: "the cat sad"}
    result = run_set(dev_set, oracle_logits_fn(dev_set, mistakes), GreedyDecoder(), 4, vocabulary)
    row = result.row()
    assert row["oov_rate"] == pytest.approx(30.0) and row["oov_words"] == 3
    assert row["oov_word_accuracy"] == pytest.approx(100 * 2 / 3)  # "cool" missed
    assert row["iv_word_accuracy"] == pytest.approx(100 * 6 / 7)  # "sat" missed
    table = format_table([result])
    assert "| dev-clean | 30.0 | 85.7 | 66.7 |" in table
    assert "oov_rate" not in run_set(dev_set, oracle_logits_fn(dev_set), GreedyDecoder(), 4).row()
