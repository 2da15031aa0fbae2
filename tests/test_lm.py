"""The LM build end to end with the real lmplz and build_binary, read back with kenlm."""

from __future__ import annotations

import gzip
import hashlib
import json

import kenlm
import numpy as np
import pytest

from asr.lm import LMError, build_lm, find_kenlm_bin, load_unigrams, read_shard_texts
from asr.shards import utterance_example, write_shard
from asr.text import encode


def write_train_shards(directory, texts):
    directory.mkdir(parents=True)
    records = [
        utterance_example(np.zeros((12, 93), np.float32), encode(t), t, f"utt-{i}", 0.12)
        for i, t in enumerate(texts)
    ]
    write_shard(directory / "train-00000.tfrecord.gz", records[:2], compression="gzip")
    write_shard(directory / "train-00001.tfrecord.gz", records[2:], compression="gzip")
    (directory / "manifest.json").write_text(json.dumps({"utterances": len(texts)}))


TRAIN_TEXTS = ["the cat sat on the mat", "the cat sat", "a dog ran", "the dog sat on the cat"]


def test_command_builds_arpa_binary_dictionary_and_info_from_shards(tmp_path, run_module):
    shards = tmp_path / "features" / "train"
    write_train_shards(shards, TRAIN_TEXTS)
    out = tmp_path / "lm"
    result = run_module("asr.lm", "--manifest", shards, "--order", 3, "--out", out)
    assert result.returncode == 0, result.stderr
    assert "4 sentences" in result.stdout

    assert load_unigrams(out) == sorted({w for t in TRAIN_TEXTS for w in t.split()})
    info = json.loads((out / "lm.json").read_text())
    assert info["order"] == 3
    assert info["sentences"] == 4 and info["words"] == 6 + 3 + 3 + 6 and info["unique_words"] == 8
    assert info["sources"] == [str(shards.resolve())]
    assert info["discount_fallback"] is True  # four sentences cannot estimate Kneser-Ney discounts
    assert info["text_sha256"] == hashlib.sha256("".join(t + "\n" for t in TRAIN_TEXTS).encode()).hexdigest()
    assert info["ngrams"]["1"] == 8 + 3  # the words, <s>, </s>, <unk>
    assert sorted(p.name for p in out.iterdir()) == ["lm.arpa", "lm.binary", "lm.json", "unigrams.txt"]

    binary, arpa = kenlm.Model(str(out / "lm.binary")), kenlm.Model(str(out / "lm.arpa"))
    assert binary.order == 3
    seen, unseen = "the cat sat", "mat dog a"
    assert binary.score(seen) > binary.score(unseen)
    assert binary.score(seen) == pytest.approx(arpa.score(seen), abs=1e-4)


def test_transcripts_and_gzip_book_text_combine_into_one_model(tmp_path, run_module):
    shards = tmp_path / "features" / "train"
    write_train_shards(shards, TRAIN_TEXTS)
    books = tmp_path / "books.txt.gz"
    with gzip.open(books, "wt", encoding="utf-8") as handle:
        handle.write("And the bird flew.\nthe bird sat on the mat\n")
    out = tmp_path / "lm"
    result = run_module("asr.lm", "--manifest", shards, "--text", books, "--order", 2, "--out", out)
    assert result.returncode == 0, result.stderr
    info = json.loads((out / "lm.json").read_text())
    assert info["sentences"] == 4 + 2
    assert info["sources"] == [str(shards.resolve()), str(books.resolve())]
    assert set(load_unigrams(out)) == {w for t in TRAIN_TEXTS for w in t.split()} | {"and", "bird", "flew"}


def test_no_text_source_is_a_usage_error(tmp_path, run_module):
    result = run_module("asr.lm", "--out", tmp_path / "lm")
    assert result.returncode == 2
    assert "--manifest TRAIN_OUT and/or --text FILE" in result.stderr
    assert not (tmp_path / "lm").exists()


def test_text_files_are_normalized_and_bad_lines_counted(tmp_path, run_module):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("THE CAT SAT.\nthe Cat — sat\nroom 101\n\n", encoding="utf-8")
    out = tmp_path / "lm"
    result = run_module("asr.lm", "--text", corpus, "--order", 2, "--out", out)
    assert result.returncode == 0, result.stderr
    assert "skipped 1 line(s): characters outside the alphabet" in result.stderr
    info = json.loads((out / "lm.json").read_text())
    assert info["sentences"] == 2
    assert info["skipped"] == {"characters outside the alphabet": 1}
    assert load_unigrams(out) == ["cat", "sat", "the"]


def test_missing_kenlm_names_the_fix(tmp_path, run_module):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("a b\n")
    result = run_module("asr.lm", "--text", corpus, "--out", tmp_path / "lm", "--kenlm-bin", tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("asr.lm: error: KenLM's lmplz")
    assert "make kenlm" in result.stderr
    assert not (tmp_path / "lm" / "lm.binary").exists()


def test_bad_sources_exit_2_with_one_line(tmp_path, run_module):
    not_shards = tmp_path / "plain"
    not_shards.mkdir()
    result = run_module("asr.lm", "--manifest", not_shards, "--out", tmp_path / "lm")
    assert result.returncode == 2 and "no manifest.json" in result.stderr
    empty = tmp_path / "empty.txt"
    empty.write_text("\n123\n")
    result = run_module("asr.lm", "--text", empty, "--out", tmp_path / "lm")
    assert result.returncode == 2 and "no transcripts" in result.stderr


def test_kenlm_lookup_order(tmp_path, monkeypatch):
    real = find_kenlm_bin()
    monkeypatch.setenv("ASR_KENLM_BIN", str(tmp_path))
    with pytest.raises(LMError, match=r"\$ASR_KENLM_BIN"):
        find_kenlm_bin()
    assert find_kenlm_bin(real) == real
    monkeypatch.setenv("ASR_KENLM_BIN", str(real))
    assert find_kenlm_bin() == real


def test_a_failed_build_leaves_earlier_files(tmp_path):
    out = tmp_path / "lm"
    build_lm(["a b c", "a b"], out, order=2)
    before = (out / "lm.binary").read_bytes()
    with pytest.raises(LMError, match="no transcripts"):
        build_lm(["", "  "], out, order=2)
    with pytest.raises(LMError, match="order"):
        build_lm(["a b"], out, order=0)
    assert (out / "lm.binary").read_bytes() == before
    assert sorted(p.name for p in out.iterdir()) == ["lm.arpa", "lm.binary", "lm.json", "unigrams.txt"]


def test_shard_reader_reads_every_shard(tmp_path):
    shards = tmp_path / "train"
    write_train_shards(shards, TRAIN_TEXTS)
    assert read_shard_texts(shards) == TRAIN_TEXTS


def test_shards_with_another_alphabet_are_refused(tmp_path, run_module):
    shards = tmp_path / "train"
    write_train_shards(shards, TRAIN_TEXTS)
    manifest = json.loads((shards / "manifest.json").read_text())
    manifest["alphabet"] = [" ", *"abcdefghijklmnopqrstuvwxyz", "'", "<b>"]
    (shards / "manifest.json").write_text(json.dumps(manifest))
    result = run_module("asr.lm", "--manifest", shards, "--out", tmp_path / "lm")
    assert result.returncode == 2
    assert "alphabet" in result.stderr and "manifest.json" in result.stderr


def test_only_the_shards_the_manifest_lists_are_read(tmp_path):
    shards = tmp_path / "train"
    write_train_shards(shards, TRAIN_TEXTS)
    (shards / "manifest.json").write_text(json.dumps({"shards": [{"file": "train-00001.tfrecord.gz"}]}))
    assert read_shard_texts(shards) == TRAIN_TEXTS[2:]
