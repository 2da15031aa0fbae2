"""tools/make_lm_text.py: the held-out guard, and the shipped LM text checked against the demo corpus."""

from __future__ import annotations

import gzip
import importlib.util
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
SHIPPED = REPO_ROOT / "data" / "lm-text" / "minilibri-books.txt.gz"
DEMO_CORPUS = REPO_ROOT / "data" / "minilibri-demo"

spec = importlib.util.spec_from_file_location("make_lm_text", REPO_ROOT / "tools" / "make_lm_text.py")
make_lm_text = importlib.util.module_from_spec(spec)
spec.loader.exec_module(make_lm_text)


def test_lines_containing_a_held_out_transcript_are_removed_as_whole_words():
    lines = ["and the king said unto him go in peace", "the kingdom of heaven", "go in peaceful ways"]
    kept, removed = make_lm_text.remove_containing(lines, ["go in peace", "heaven is near"])
    assert kept == ["the kingdom of heaven", "go in peaceful ways"] and removed == 1


def test_held_out_pools_are_never_kept():
    pools = {
        "pub-train": {"kjv": ["Genesis", "Mark"], "devil": ["Devil's Dictionary T"]},
        "spare": {"kjv": ["Numbers"]},
        "pub-dev": {"kjv": ["Psalms"], "devil": ["Devil's Dictionary A"]},
        "hold-test": {"kjv": ["Mark"]},
    }
    kept = make_lm_text.documents_of(pools, make_lm_text.KEPT_POOLS)
    held = make_lm_text.documents_of(pools, make_lm_text.HELD_OUT_POOLS)
    assert kept["kjv"] - held["kjv"] == {"Genesis", "Numbers"}
    assert held["devil"] == {"Devil's Dictionary A"}


def test_dictd_offsets_and_sentence_split():
    assert make_lm_text.dictd_number("A") == 0 and make_lm_text.dictd_number("BA") == 64
    assert make_lm_text.split_sentences("In the beginning; God said: Let there be light.\nAnd") == [
        "In the beginning", "God said", "Let there be light", "And",
    ]  # fmt: skip


def test_shipped_lm_text_holds_no_demo_dev_or_test_transcript():
    lines = gzip.decompress(SHIPPED.read_bytes()).decode("utf-8").splitlines()
    held_out = [
        line.split(" ", 1)[1].lower()
        for subset in ("dev-clean", "test-clean")
        for path in sorted((DEMO_CORPUS / subset).glob("*/*/*.trans.txt"))
        for line in path.read_text(encoding="utf-8").splitlines()
    ]
    assert len(lines) > 30_000 and len(held_out) > 150
    _, removed = make_lm_text.remove_containing(lines, held_out)
    assert removed == 0
    held_ngrams = set().union(*(make_lm_text.ngrams(t.split(), 6) for t in held_out))
    kept_ngrams = set().union(*(make_lm_text.ngrams(line.split(), 6) for line in lines))
    assert len(held_ngrams & kept_ngrams) < 0.05 * len(held_ngrams)
