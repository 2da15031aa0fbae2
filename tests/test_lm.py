"""The LM build end to end with the real lmplz and build_binary, read back with kenlm."""

from __future__ import annotations

import gzip
import hashlib
import json
import re
from pathlib import Path

import kenlm
import numpy as np
import pytest

from asr.lm import LMError, build_lm, find_kenlm_bin, load_unigrams, read_shard_texts
from asr.shards import SUFFIXES, utterance_example, write_shard
from asr.text import encode

REPO_ROOT = Path(__file__).resolve().parents[1]


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
    # exact: build_binary's default (probing, unquantized) is the structure kenlm builds from the ARPA in
    # memory, holding the same floats parsed from the same text, both scored by the same code in this process
    assert binary.score(seen) == arpa.score(seen)


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


# --------------------------------------------------------------------------- damaged shards, write failures


def write_listed_shards(directory, texts, compression="gzip"):
    """Shards of two transcripts each and a manifest listing them with their counts, as asr.extract does."""
    directory.mkdir(parents=True)
    entries = []
    for start in range(0, len(texts), 2):
        records = [
            utterance_example(np.zeros((12, 93), np.float32), encode(t), t, f"utt-{i}", 0.12)
            for i, t in enumerate(texts[start : start + 2], start=start)
        ]
        name = f"shard-{start // 2:05d}{SUFFIXES[compression]}"
        write_shard(directory / name, records, compression=compression)
        entries.append({"file": name, "utterances": len(records)})
    (directory / "manifest.json").write_text(json.dumps({"shards": entries}))


@pytest.mark.parametrize(("how", "used"), [("flipped", 0), ("cut", 1), ("missing", 0)])
def test_damaged_or_missing_shards_warn_and_count_or_stop_with_strict(tmp_path, run_module, how, used):
    compression = "none" if how == "cut" else "gzip"
    shards = tmp_path / "train"
    write_listed_shards(shards, TRAIN_TEXTS, compression)
    damaged = shards / f"shard-00000{SUFFIXES[compression]}"
    data = damaged.read_bytes()
    if how == "flipped":  # early in the GZIP stream: zlib.error before
        damaged.write_bytes(data[:20] + bytes(b ^ 0xFF for b in data[20:40]) + data[40:])
    elif how == "cut":  # inside the second record: struct.error before
        damaged.write_bytes(data[:-10])
    else:
        damaged.unlink()

    strict_out = tmp_path / "strict"
    strict = run_module("asr.lm", "--manifest", shards, "--order", 2, "--out", strict_out, "--strict")
    assert strict.returncode == 2
    assert strict.stderr.startswith(f"asr.lm: error: --manifest: {damaged}: ")
    assert strict.stderr.endswith(" (--strict)\n") and strict.stderr.count("\n") == 1
    assert not (strict_out / "lm.binary").exists()

    out = tmp_path / "lm"
    result = run_module("asr.lm", "--manifest", shards, "--order", 2, "--out", out)
    assert result.returncode == 0, result.stderr
    (warning,) = result.stderr.splitlines()
    assert warning.startswith(f"asr.lm: warning: --manifest: {damaged}: ")
    assert warning.endswith(f"; {used} of its utterances used, {2 - used} lost")
    info = json.loads((out / "lm.json").read_text())
    assert info["sentences"] == 2 + used
    assert info["skipped"] == {"utterances in damaged or missing shards": 2 - used}
    read = [*TRAIN_TEXTS[:used], *TRAIN_TEXTS[2:]]
    assert load_unigrams(out) == sorted({word for text in read for word in text.split()})


@pytest.fixture(scope="module")
def book_text(tmp_path_factory) -> Path:
    """1500 lines of the bundled LM text (~110 kB): a 3-gram ARPA of it is ~8 times larger."""
    path = tmp_path_factory.mktemp("books") / "books.txt"
    books = REPO_ROOT / "data" / "lm-text" / "minilibri-books.txt.gz"
    with gzip.open(books, "rt", encoding="utf-8") as handle:
        path.write_text("".join(line for _, line in zip(range(1500), handle, strict=False)), encoding="utf-8")
    return path


@pytest.mark.parametrize("failing", ["lm.arpa", "corpus.txt"])
def test_a_failed_write_is_one_line_keeps_the_earlier_model_and_a_rerun_builds(
    tmp_path, run_module, run_module_limited, book_text, failing
):
    reference = tmp_path / "reference"
    assert run_module("asr.lm", "--text", book_text, "--order", 3, "--out", reference).returncode == 0
    text_size = book_text.stat().st_size
    assert 2 * text_size < (reference / "lm.arpa").stat().st_size
    out = tmp_path / "lm"
    small = tmp_path / "small.txt"
    small.write_text("the cat sat\nthe dog ran\n")
    assert run_module("asr.lm", "--text", small, "--order", 2, "--out", out).returncode == 0
    earlier = {p.name: p.read_bytes() for p in out.iterdir()}

    limit = 2 * text_size if failing == "lm.arpa" else text_size // 2
    limited = run_module_limited("asr.lm", "--text", book_text, "--order", 3, "--out", out, limit=limit)
    assert limited.returncode == 2
    (line,) = limited.stderr.splitlines()
    named = {
        "lm.arpa": re.escape(str(out / "lm.arpa")),
        "corpus.txt": rf"{re.escape(str(out))}/\.lmplz-\w+/corpus\.txt",
    }
    path = named[failing]
    assert re.fullmatch(
        rf"asr\.lm: error: {path}: cannot write \(File too large\); what was written before is intact, "
        r"rerun when fixed",
        line,
    )
    assert {p.name: p.read_bytes() for p in out.iterdir()} == earlier  # no temporaries, no scratch directory

    rebuilt = run_module("asr.lm", "--text", book_text, "--order", 3, "--out", out)
    assert rebuilt.returncode == 0, rebuilt.stderr
    for name in ("lm.arpa", "unigrams.txt"):
        assert (out / name).read_bytes() == (reference / name).read_bytes()


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--order", "0", "must be at least 1, got 0"),
        ("--order", "two", "expected a whole number, got 'two'"),
        ("--memory", "1.5G", "expected e.g. 1G, 500M or 10%, got '1.5G'"),
        ("--memory", "0%", "expected e.g. 1G, 500M or 10%, got '0%'"),
        ("--memory", "150%", "expected e.g. 1G, 500M or 10%, got '150%'"),
        ("--memory", "1g", "expected e.g. 1G, 500M or 10%, got '1g'"),
    ],
)
def test_numeric_options_out_of_range_are_one_line_usage_errors(tmp_path, run_module, option, value, message):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("a b\n")
    result = run_module("asr.lm", "--text", corpus, "--out", tmp_path / "lm", option, value)
    assert result.returncode == 2
    assert result.stderr == f"python -m asr.lm: error: argument {option}: {message} (see --help)\n"
    assert not (tmp_path / "lm").exists()
