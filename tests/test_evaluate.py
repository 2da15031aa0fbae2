"""Evaluation sets, the overlapped logits→decode loop, result files, and the command."""

from __future__ import annotations

import json
import shutil
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
from asr.shards import SUFFIXES, utterance_example, write_shard
from asr.text import BLANK_ID, NUM_SYMBOLS, SYMBOLS, encode

REPO_ROOT = Path(__file__).resolve().parents[1]
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
    assert batch[1, :68, 0].tolist() == [1.0] * 68  # exact: stored float32 1.0, copied
    assert not batch[1, 68:].any()
    assert labels[1] == encode("a cool dog")


def test_run_set_scores_decoded_batches_in_set_order(dev_set):
    perfect = run_set(dev_set, oracle_logits_fn(dev_set), GreedyDecoder(), batch_size=3)
    assert perfect.hypotheses == DEV_TEXTS
    # WER of no edits is exactly 0; the loss is a float64 mean of 1.5s (exact, approx for readability)
    assert perfect.scores.wer == 0.0 and perfect.loss == pytest.approx(1.5)
    wrong = run_set(dev_set, oracle_logits_fn(dev_set, {1: "a cool dot"}), GreedyDecoder(), batch_size=2)
    assert wrong.hypotheses[1] == "a cool dot"
    assert wrong.scores.words.substitutions == 1
    assert wrong.scores.wer == pytest.approx(100 / 10)  # 3 + 3 + 2 + 2 words; Python floats: any CPU
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
        "dev-clean.beam1.hyp.tsv", "dev-clean.beam4.hyp.tsv", "results.json", "speakers.json", "speakers.md",
        "sweep.md", "table.md",
    ]  # fmt: skip
    speakers = json.loads((out / "speakers.json").read_text())  # the widest beam; dev_set's ids are utt-N
    assert [(r["split"], r["beam_width"], r["speaker"], r["utterances"]) for r in speakers] == [
        ("dev-clean", 4, "utt", 4)
    ]
    assert "| utt | 4 | 10 | 0.00 | 0.00 |" in (out / "speakers.md").read_text()
    rows = json.loads((run_dir / "eval" / "results.json").read_text())
    saved = [(r["split"], r["beam_width"], r["checkpoint"]) for r in rows]
    assert saved == [("dev-clean", 1, "ckpt-7"), ("dev-clean", 4, "ckpt-7")]
    assert rows[0]["wer"] == 0.0 and rows[0]["utterances"] == 4  # exact: no edits, JSON round-trips floats
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
    assert (row["lm"], row["lm_alpha"], row["lm_beta"]) == (str(lm_dir.resolve()), 0.7, 0.5)  # copied: exact
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
from asr.config import ModelConfig
from asr.inference import replica_logits_fn
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
on_one = replica_logits_fn(tf.distribute.get_strategy(), single, config, mean, std)
on_two = replica_logits_fn(strategy, mirrored, config, mean, std)
one, two = on_one(features, frames, labels), on_two(features, frames, labels)
alone = [single(((features[i:i + 1, :n] - mean) / std, np.array([n])), training=False).numpy()[0]
         for i, n in enumerate(frames)]
json.dump({
    "replicas": strategy.num_replicas_in_sync,
    "shape": list(two[0].shape),
    "out_frames": two[1].tolist(),
    "max_diff": float(np.abs(one[0] - two[0]).max()),
    "max_logit": float(np.abs(one[0]).max()),
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
    # Not bit-exact: batches of 3, 2 and 1 rows may be summed in other orders. Per side: conv 11 x 93 = 1023
    # products, GRU 15 steps x 25 terms, dense 17: ~1400 roundoffs of the logits' scale, 2 x 1400 x 2^-24
    # = 1.7e-4 of the largest logit (measured: 6 roundoffs). The CTC loss moves by at most twice each
    # frame's largest logit change (log-softmax), summed over its <= 15 frames.
    logit_bound = 1.7e-4 * report["max_logit"]
    assert report["max_diff"] <= logit_bound
    assert report["padded_vs_alone"] <= logit_bound  # padding (masked) changes no utterance's logits
    assert report["loss_one"][2] is None and report["loss_two"][2] is None  # 20 labels, 8 frames
    assert report["loss_one"][:2] == pytest.approx(report["loss_two"][:2], rel=0, abs=2 * 15 * logit_bound)
    assert all(v > 0 for v in report["loss_two"][:2])
    assert report["texts_equal"]


def test_words_outside_the_dictionary_are_counted_in_rows_and_table(dev_set):
    vocabulary = frozenset({"the", "cat", "sat", "a", "dog", "mat"})  # "cool", "it's", "here" are not
    mistakes = {1: "a col dog", 0: "the cat sad"}
    result = run_set(dev_set, oracle_logits_fn(dev_set, mistakes), GreedyDecoder(), 4, vocabulary)
    row = result.row()
    # ratios of word counts in Python floats (the same on every CPU); approx covers only operation order
    assert row["oov_rate"] == pytest.approx(30.0) and row["oov_words"] == 3
    assert row["oov_word_accuracy"] == pytest.approx(100 * 2 / 3)  # "cool" missed
    assert row["iv_word_accuracy"] == pytest.approx(100 * 6 / 7)  # "sat" missed
    table = format_table([result])
    assert "| dev-clean | 30.0 | 85.7 | 66.7 |" in table
    assert "oov_rate" not in run_set(dev_set, oracle_logits_fn(dev_set), GreedyDecoder(), 4).row()


# --------------------------------------------------------------------------- damaged shards, write failures


def write_counted_shards(directory, texts, compression="gzip"):
    """Shards of two utterances each (feature 0 is the index) and a manifest listing them with their counts,
    as ``asr.extract`` writes it."""
    directory.mkdir(parents=True)
    entries = []
    for start in range(0, len(texts), 2):
        records = []
        for i, transcript in enumerate(texts[start : start + 2], start=start):
            features = np.full((6 * len(transcript) + 8, 93), 0, np.float32)
            features[:, 0] = i
            records.append(utterance_example(features, encode(transcript), transcript, f"utt-{i}", 0.5))
        name = f"shard-{start // 2:05d}{SUFFIXES[compression]}"
        write_shard(directory / name, records, compression=compression)
        entries.append({"file": name, "utterances": len(records)})
    (directory / "manifest.json").write_text(json.dumps({"alphabet": list(SYMBOLS), "shards": entries}))
    return directory


def damage(path: Path, how: str) -> Path:
    """Flip bytes near the start of the compressed stream, cut the file short, or delete it."""
    data = path.read_bytes()
    if how == "flipped":
        path.write_bytes(data[:20] + bytes(b ^ 0xFF for b in data[20:40]) + data[40:])
    elif how == "cut":
        path.write_bytes(data[:-10])
    else:
        path.unlink()
    return path


@pytest.mark.parametrize(("how", "used"), [("flipped", 0), ("cut", 1), ("missing", 0)])
def test_a_damaged_or_missing_shard_keeps_the_records_before_the_damage(tmp_path, capsys, how, used):
    compression = "none" if how == "cut" else "gzip"  # a cut uncompressed shard: struct.error before
    directory = write_counted_shards(tmp_path / "dev-clean", DEV_TEXTS, compression)
    damaged = damage(directory / f"shard-00001{SUFFIXES[compression]}", how)
    eval_set = load_eval_set(directory)
    assert eval_set.texts == tuple(DEV_TEXTS[: 2 + used])
    assert eval_set.lost == 2 - used and len(eval_set.damage) == 1
    warning = capsys.readouterr().err
    assert warning.count("\n") == 1
    assert warning.startswith(f"asr.evaluate: warning: --data: {damaged}: ")
    assert warning.endswith(f"; {used} of its utterances used, {2 - used} lost\n")

    with pytest.raises(EvaluateError) as raised:
        load_eval_set(directory, "dev", key="data.dev", strict=True)
    message = str(raised.value)
    assert message.startswith(f"data.dev: {damaged}: ") and message.endswith(" (--strict)")
    assert "\n" not in message


def test_a_set_whose_shards_are_all_missing_is_an_error(tmp_path):
    directory = write_counted_shards(tmp_path / "dev-clean", DEV_TEXTS)
    for shard in directory.glob("shard-*"):
        shard.unlink()
    with pytest.raises(EvaluateError, match=r"^data\.dev: .*dev-clean: every shard its manifest\.json lists"):
        load_eval_set(directory, key="data.dev")


def test_results_of_an_incomplete_set_count_what_was_left_out(tmp_path, dev_set, capsys):
    directory = write_counted_shards(tmp_path / "partial", DEV_TEXTS)
    damage(directory / "shard-00001.tfrecord.gz", "missing")
    partial = load_eval_set(directory)
    result = run_set(partial, oracle_logits_fn(partial), GreedyDecoder(), batch_size=2)
    row = result.row()
    assert (row["utterances"], row["skipped_utterances"], row["damaged_shards"]) == (2, 2, 1)
    assert result.event_fields("external")["skipped_utterances"] == 2
    assert "partial: incomplete: 2 utterances in 1 damaged or missing shard files" in format_table([result])

    complete = run_set(dev_set, oracle_logits_fn(dev_set), GreedyDecoder(), batch_size=2)
    assert (complete.row()["skipped_utterances"], complete.row()["damaged_shards"]) == (0, 0)
    assert "skipped_utterances" not in complete.event_fields("swap")
    assert "incomplete" not in format_table([complete])


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--batch-size", "-2", "must be at least 1, got -2"),
        ("--batch-size", "0", "must be at least 1, got 0"),
        ("--beam", "0", "must be at least 1, got 0"),
        ("--workers", "-1", "must be at least 0 (0: all CPU cores), got -1"),
        ("--poll", "0", "must be greater than 0, got 0"),
        ("--stop-after", "-5", "must be at least 0 (0: never), got -5"),
        ("--alpha", "nan", "must be a finite number, got nan"),
        ("--checkpoint", "-1", "must be at least 0, got -1"),
        ("--batch-size", "many", "expected a whole number, got 'many'"),
    ],
)
def test_numeric_options_out_of_range_are_one_line_usage_errors(tmp_path, run_module, option, value, message):
    result = run_module("asr.evaluate", "--run", tmp_path, option, value)
    assert result.returncode == 2
    assert result.stderr == f"python -m asr.evaluate: error: argument {option}: {message} (see --help)\n"


def evaluate_main(*args) -> int:
    from asr.evaluate import main

    return main([str(a) for a in args])


def copy_of(run_dir: Path, tmp_path: Path) -> Path:
    shutil.copytree(run_dir, tmp_path / "run")
    return tmp_path / "run"


def temporaries(directory: Path) -> list[Path]:
    return [path for path in directory.rglob("*") if ".tmp-" in path.name]


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "error" in line.lower() or "Traceback" in line]


def reshard(source: Path, out: Path, per_shard: int) -> Path:
    """``source``'s utterances (real features) rewritten ``per_shard`` to a gzip shard, with a manifest
    counting them as ``asr.extract`` writes it: several shards without extracting again."""
    eval_set = load_eval_set(source)
    out.mkdir(parents=True)
    entries = []
    for start in range(0, len(eval_set), per_shard):
        rows = range(start, min(start + per_shard, len(eval_set)))
        records = [utterance_example(eval_set.features[i], encode(eval_set.texts[i]), eval_set.texts[i],
                                     eval_set.utt_ids[i], eval_set.durations[i]) for i in rows]  # fmt: skip
        name = f"shard-{start // per_shard:05d}{SUFFIXES['gzip']}"
        write_shard(out / name, records)
        entries.append({"file": name, "utterances": len(records)})
    (out / "manifest.json").write_text(json.dumps({"alphabet": list(SYMBOLS), "shards": entries}))
    return out


def test_command_with_a_damaged_shard_warns_and_counts_or_stops_with_strict(tiny_run, tmp_path, capsys):
    dev = reshard(data_dir_of(tiny_run), tmp_path / "dev-small", per_shard=2)
    damaged = damage(dev / "shard-00001.tfrecord.gz", "flipped")
    run_dir = copy_of(tiny_run, tmp_path)

    assert evaluate_main("--run", run_dir, "--data", dev, "--beam", 1, "--strict") == 2
    strict = capsys.readouterr().err
    assert strict.startswith(f"asr.evaluate: error: --data: {damaged}: ")
    assert strict.endswith(" (--strict)\n") and strict.count("\n") == 1
    assert not (run_dir / "eval").exists()

    assert evaluate_main("--run", run_dir, "--data", dev, "--beam", 1) == 0
    result = capsys.readouterr()
    warnings = [line for line in result.err.splitlines() if "warning: --data" in line]
    assert len(warnings) == 1 and warnings[0].startswith(f"asr.evaluate: warning: --data: {damaged}: ")
    assert warnings[0].endswith("; 0 of its utterances used, 2 lost")
    assert "dev-small: incomplete: 2 utterances in 1 damaged or missing shard files" in result.out
    (row,) = json.loads((run_dir / "eval" / "results.json").read_text())
    assert (row["utterances"], row["skipped_utterances"], row["damaged_shards"]) == (4, 2, 1)


def test_a_failed_result_write_is_one_line_keeps_what_was_written_and_a_rerun_completes(
    tiny_run, tiny_shards, tmp_path, run_module, run_module_limited
):
    run_dir = copy_of(tiny_run, tmp_path)
    args = ["--run", run_dir, "--data", tiny_shards / "dev", tiny_shards / "train", "--beam", 1]
    reference = run_module("asr.evaluate", *args)
    assert reference.returncode == 0, reference.stderr[-3000:]
    (out,) = (run_dir / "eval").glob("ckpt-*")
    expected = {p.name: p.read_bytes() for p in out.iterdir()}
    dev_size, train_size = len(expected["dev.beam1.hyp.tsv"]), len(expected["train.beam1.hyp.tsv"])
    assert dev_size < train_size  # the first file written fits the limit, the second does not
    shutil.rmtree(run_dir / "eval")

    limited = run_module_limited("asr.evaluate", *args, limit=dev_size)
    assert limited.returncode == 2
    assert error_lines(limited.stderr) == [limited.stderr.splitlines()[-1]]
    assert limited.stderr.splitlines()[-1] == (
        f"asr.evaluate: error: {out / 'train.beam1.hyp.tsv'}: cannot write (File too large); "
        "what was written before is intact, rerun when fixed"
    )
    assert sorted(p.name for p in out.iterdir()) == ["dev.beam1.hyp.tsv"]
    assert (out / "dev.beam1.hyp.tsv").read_bytes() == expected["dev.beam1.hyp.tsv"]
    assert temporaries(run_dir) == []

    rerun = run_module("asr.evaluate", *args)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == sorted(expected)  # results.json, table.md: timings differ
    for name in ("dev.beam1.hyp.tsv", "train.beam1.hyp.tsv"):
        assert (out / name).read_bytes() == expected[name]


def test_watch_stops_with_one_line_when_the_event_log_cannot_grow_and_a_rerun_appends(
    tiny_run, tmp_path, run_module, run_module_limited
):
    run_dir = copy_of(tiny_run, tmp_path)
    log = run_dir / "events.jsonl"
    before = log.read_bytes()
    args = ["--watch", run_dir, "--beam", 1, "--poll", 0.05, "--stop-after", 0.1]

    limited = run_module_limited("asr.evaluate", *args, limit=len(before))  # the log is full already
    assert limited.returncode == 2
    assert error_lines(limited.stderr) == [limited.stderr.splitlines()[-1]]
    assert limited.stderr.splitlines()[-1] == (
        f"asr.evaluate: error: {log}: cannot write (File too large); "
        "what was written before is intact, rerun when fixed"
    )
    assert log.read_bytes() == before
    (out,) = (run_dir / "eval").glob("ckpt-*")
    assert (out / "results.json").is_file()  # written before the event
    assert not (run_dir / "eval" / "watched.json").exists()
    assert temporaries(run_dir) == []

    rerun = run_module("asr.evaluate", *args)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert json.loads((run_dir / "eval" / "watched.json").read_text()) == [out.name]
    appended = [json.loads(line) for line in log.read_text()[len(before.decode()) :].splitlines()]
    assert [(e["event"], e["source"], e["checkpoint"]) for e in appended] == [("eval", "external", out.name)]


def test_watch_stops_with_one_line_on_a_damaged_watched_file(tiny_run, tmp_path, run_module):
    run_dir = copy_of(tiny_run, tmp_path)
    state = run_dir / "eval" / "watched.json"
    state.parent.mkdir()
    state.write_text('["ckpt-')  # cut by a full disk before this code wrote it atomically
    result = run_module("asr.evaluate", "--watch", run_dir, "--stop-after", 0.1)
    assert result.returncode == 2
    assert result.stderr.startswith(f"asr.evaluate: error: {state}: not valid JSON (")
    assert result.stderr.endswith("; delete it to evaluate every checkpoint again\n")
    assert result.stderr.count("\n") == 1


def test_a_run_without_its_normalization_is_one_line_naming_the_file(tiny_run, tiny_shards, tmp_path, capsys):
    run_dir = copy_of(tiny_run, tmp_path)
    (run_dir / "normalization.json").unlink()
    assert evaluate_main("--run", run_dir, "--data", tiny_shards / "dev", "--beam", 1) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"asr.evaluate: error: {run_dir / 'normalization.json'}") and err.count("\n") == 1


def later_checkpoint(run_dir: Path) -> tuple[int, int]:
    """A second, later checkpoint of the run: its only one's files copied under step + 4, with their sizes
    and checksums recorded as a save does (instead of training another epoch). Returns (older, newer)."""
    directory = run_dir / "checkpoints"
    (state_path,) = directory.glob("ckpt-*.json")
    older = int(state_path.stem.split("-")[1])
    newer = older + 4
    state = json.loads(state_path.read_text())
    files = {}
    for name, record in state["files"].items():
        renamed = name.replace(f"ckpt-{older}.", f"ckpt-{newer}.")
        shutil.copyfile(directory / name, directory / renamed)
        files[renamed] = record
    state.update(step=newer, files=files)
    state["progress"]["step"] = newer
    (directory / f"ckpt-{newer}.json").write_text(json.dumps(state))
    return older, newer


def test_a_damaged_newest_checkpoint_falls_back_with_one_warning_naming_both(tiny_run, tmp_path, capsys):
    run = copy_of(tiny_run, tmp_path)
    older, newest = later_checkpoint(run)
    (data,) = (run / "checkpoints").glob(f"ckpt-{newest}.data-*")
    data.write_bytes(data.read_bytes()[:64])
    dev = data_dir_of(tiny_run)
    assert evaluate_main("--run", run, "--beam", 1, "--lm", "", "--data", dev) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(warnings) == 1 and f"ckpt-{newest} (" in warnings[0]
    assert f"using the older ckpt-{older}" in warnings[0]
    assert (run / "eval" / f"ckpt-{older}" / "results.json").is_file()

    assert evaluate_main("--run", run, "--checkpoint", newest, "--beam", 1, "--lm", "", "--data", dev) == 2
    damaged = capsys.readouterr().err
    assert damaged.startswith(f"asr.evaluate: error: --checkpoint {newest}: ") and damaged.count("\n") == 1
    assert "damaged" in damaged

    for data in (run / "checkpoints").glob("ckpt-*.data-*"):
        data.write_bytes(b"")
    assert evaluate_main("--run", run, "--beam", 1, "--lm", "", "--data", dev) == 2
    none = capsys.readouterr().err
    assert none.startswith("asr.evaluate: error: --run ") and none.count("\n") == 1
    assert "no usable checkpoint" in none


def data_dir_of(run_dir: Path) -> Path:
    """The dev shards a run of this module was trained with (its recipe's ``data.dev``)."""
    import yaml

    return Path(yaml.safe_load((run_dir / "recipe.yaml").read_text())["data"]["dev"])


# --------------------------------------------------------------------------- an export: --model

EXPORT_LOGITS_TOLERANCE = 1e-4
"""TFLite float32 vs the checkpoint's evaluation model on the same features: the same float32 arithmetic
in other kernels (XNNPACK vs Eigen); measured 1.4e-5 on the cpu recipe's model (``tests/test_export.py``,
``SAME_FEATURES_TOLERANCE``), 1.5e-6 on ``tiny_run``'s. With every logit moved by at most ``d`` (measured),
greedy text can change only at a frame whose two best symbols are within ``2 d`` of each other, and the
CTC loss (a log-sum-exp over paths of per-frame log-softmax terms, each moved by at most ``2 d``) by at
most ``2 d`` per output frame."""


@pytest.fixture(scope="module")
def tiny_export(tiny_run, tmp_path_factory) -> Path:
    """``asr.export`` of ``tiny_run``: TFLite float32 and int8 only (no SavedModel: faster, and a backend
    the export lacks)."""
    from asr import export

    out = tmp_path_factory.mktemp("export") / "tiny"
    assert export.main(["--run", str(tiny_run), "--out", str(out), "--formats", "tflite", "tflite-int8"]) == 0
    return out


def rows_of(path: Path) -> list[dict]:
    return json.loads(path.read_text())


def test_an_export_evaluates_like_its_checkpoint(tiny_run, tiny_export, tmp_path, capsys):
    """``--model`` on the float32 TFLite export gives the checkpoint's hypotheses, scores and loss, in the
    same files; the int8 export gets its own table beside it; the export's own files are left alone."""
    from asr.inference import open_export, open_run

    run_dir, dev = copy_of(tiny_run, tmp_path), data_dir_of(tiny_run)
    shipped = {p.name: p.stat().st_mtime_ns for p in tiny_export.iterdir()}
    assert evaluate_main("--run", run_dir, "--data", dev, "--beam", 1, "--lm", "") == 0
    assert evaluate_main("--model", tiny_export, "--data", dev, "--beam", 1, "--lm", "") == 0
    assert evaluate_main("--model", tiny_export, "--backend", "tflite-int8", "--data", dev, "--beam", 1,
                         "--lm", "") == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert f"Export {tiny_export} (tflite, ckpt-" in printed and "| dev |" in printed

    (run_out,) = (run_dir / "eval").glob("ckpt-*")
    model_out = tiny_export / "eval" / "tflite"
    assert sorted(p.name for p in model_out.iterdir()) == sorted(p.name for p in run_out.iterdir())
    assert {p.name: p.stat().st_mtime_ns for p in tiny_export.iterdir() if p.name != "eval"} == shipped

    # the logits themselves, where the greedy text is decided: equal within float32 kernel differences
    eval_set = load_eval_set(dev)
    ((_, batch, frames, labels),) = padded_batches(eval_set, len(eval_set))
    reference, out, _ = open_run(run_dir).logits_fn(batch, frames, labels)
    exported, out_exported, _ = open_export(tiny_export, "tflite").logits_fn(batch, frames, labels)
    assert out_exported.tolist() == out.tolist()
    valid = np.arange(reference.shape[1])[None, :] < out[:, None]
    moved = np.abs(exported - reference)[valid].max()
    assert moved < EXPORT_LOGITS_TOLERANCE
    top2 = np.sort(reference, axis=-1)[..., -2:]  # a frame's symbol can change only if its gap <= 2 x moved
    near_tie = ((top2[..., 1] - top2[..., 0] <= 2 * moved) & valid).any(axis=1)
    assert near_tie.sum() <= len(eval_set) // 2, "too many near ties for the comparison to mean something"

    # the hypotheses: equal for every utterance without a near tie (rows are in set order)
    run_lines = (run_out / "dev.beam1.hyp.tsv").read_text().splitlines()
    model_lines = (model_out / "dev.beam1.hyp.tsv").read_text().splitlines()
    assert model_lines[0] == run_lines[0] and len(model_lines) == len(run_lines) == len(eval_set) + 1
    decided = [i for i in range(len(eval_set)) if not near_tie[i]]
    assert [model_lines[1 + i] for i in decided] == [run_lines[1 + i] for i in decided]
    assert any(line.split("\t")[-1] for line in run_lines[1:]), "the tiny model should emit some text"

    # the rows: the same fields (the export's marked), the same scores when no utterance had a near tie,
    # and the loss within what the logits allow: |d loss| <= 2 x (largest logit change) x output frames
    (run_row,) = rows_of(run_out / "results.json")
    (model_row,) = rows_of(model_out / "results.json")
    assert set(model_row) == set(run_row) | {"backend", "model"}
    assert (model_row["backend"], model_row["checkpoint"]) == ("tflite", run_out.name)
    references = ["utterances", "reference_words", "reference_chars", "skipped_utterances", "decoder"]
    assert {k: model_row[k] for k in references} == {k: run_row[k] for k in references}
    if not near_tie.any():  # every hypothesis equal, so every count and rate (the same Python arithmetic)
        scores = ["wer", "cer", "cer_maxlen", "substitutions", "deletions", "insertions", "hits",
                  "char_substitutions", "char_deletions", "char_insertions"]  # fmt: skip
        assert {k: model_row[k] for k in scores} == {k: run_row[k] for k in scores}
    assert model_row["loss"] == pytest.approx(run_row["loss"], abs=2 * moved * out.max())

    int8_out = tiny_export / "eval" / "tflite-int8"
    (int8_row,) = rows_of(int8_out / "results.json")
    assert int8_row["backend"] == "tflite-int8" and int8_row["utterances"] == len(eval_set)
    assert "| set | utterances | WER | CER |" in (int8_out / "table.md").read_text()
    merged = rows_of(tiny_export / "eval" / "results.json")
    assert [(r["split"], r["backend"]) for r in merged] == [("dev", "tflite"), ("dev", "tflite-int8")]


def test_bad_model_backend_or_out_is_one_line_exit_2_before_any_work(
    tiny_export, tiny_shards, tmp_path, capsys
):
    dev = tiny_shards / "dev"
    nowhere = tmp_path / "nowhere"
    files, shards = sorted(tiny_export.rglob("*")), sorted(tiny_shards.rglob("*"))
    cut = tmp_path / "cut"
    shutil.copytree(tiny_export, cut)
    (cut / "model.tflite").write_bytes((tiny_export / "model.tflite").read_bytes()[:100])
    exported_bytes = (tiny_export / "model.tflite").stat().st_size
    cases = [
        (["--model", nowhere], f"--model: {nowhere}: not an export directory of asr.export (no export.json)"),
        (["--model", tiny_export, "--backend", "savedmodel"], f"--model: {tiny_export}: no saved_model.pb"),
        (["--model", cut], f"--model: {cut / 'model.tflite'}: 100 bytes, {exported_bytes} were exported"),
        (
            ["--model", tiny_export, "--out", tiny_export],
            f"--out {tiny_export}: is the input --model {tiny_export};",
        ),
        (
            ["--model", tiny_export, "--out", tiny_export / "x"],
            f"--out {tiny_export / 'x'}: lies inside the input --model {tiny_export};",
        ),
        (
            ["--model", tiny_export, "--out", tiny_export.parent],
            f"--out {tiny_export.parent}: contains the input --model {tiny_export};",
        ),
        (
            ["--model", tiny_export, "--out", dev / "results"],
            f"--out {dev / 'results'}: lies inside the input --data {dev};",
        ),
        (
            ["--model", tiny_export, "--out", tiny_shards],
            f"--out {tiny_shards}: contains the input --data {dev};",
        ),
    ]
    for args, message in cases:
        assert evaluate_main(*args, "--data", dev, "--beam", 1, "--lm", "") == 2, args
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith(f"asr.evaluate: error: {message}"), err
    assert sorted(tiny_export.rglob("*")) == files and sorted(tiny_shards.rglob("*")) == shards

    usage = [
        (["--model", tiny_export, "--backend", "tflite8"], "argument --backend: invalid choice: 'tflite8'"),
        (["--run", tmp_path, "--backend", "tflite"], "--backend needs --model"),
        (["--run", tmp_path, "--out", tmp_path], "--out needs --model"),
        (["--model", tiny_export, "--checkpoint", "3"], "--checkpoint: not with --model"),
        (["--model", tiny_export, "--run", tmp_path], "argument --run: not allowed with argument --model"),
    ]
    for args, message in usage:
        with pytest.raises(SystemExit) as exited:
            evaluate_main(*args)
        err = capsys.readouterr().err
        assert exited.value.code == 2 and err.count("\n") == 1, err
        assert err.startswith(f"python -m asr.evaluate: error: {message}"), err


def test_a_step_without_a_checkpoint_is_one_line_naming_the_steps_there_are(tiny_run, capsys):
    (step,) = [int(p.stem.split("-")[1]) for p in (tiny_run / "checkpoints").glob("ckpt-*.json")]
    files = sorted(tiny_run.rglob("*"))
    assert evaluate_main("--run", tiny_run, "--checkpoint", step + 1, "--beam", 1, "--lm", "") == 2
    assert capsys.readouterr().err == (
        f"asr.evaluate: error: --checkpoint {step + 1}: {tiny_run}: no checkpoint at step {step + 1} "
        f"(steps: {step})\n"
    )
    assert sorted(tiny_run.rglob("*")) == files
