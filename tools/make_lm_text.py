"""Make minilibri's language-model text: the books its training sentences come from, never dev/test.

    python tools/make_lm_text.py [--corpus ../shared/minilibri] [--out data/lm-text/minilibri-books.txt.gz]

Why: an n-gram LM and dictionary built from 625 training sentences leave about a fifth of the
dev/test words outside the dictionary, and the beam search cannot output those. LibriSpeech solves
this with a separate LM corpus: the text of 14,500 public-domain books, excluding every book that
dev or test utterances were read from. This script builds the same kind of corpus for minilibri.

minilibri's sentences come from two public-domain texts that Debian ships, the King James Bible
(``bible-kjv`` / ``bible-kjv-text``) and Ambrose Bierce's *The Devil's Dictionary* (``dict-devil``).
The corpus's ``generation_info.json`` lists which documents (Bible books, dictionary letters) fed
which subset. Kept: the documents of the training pool and the unused ``spare`` pool. Dropped:
every document of a dev or test pool (``pub-dev``, ``pub-test``, ``hold-dev``, ``hold-test``), whole.

Then, as a second guard (the Bible repeats itself: Psalm 18 is 2 Samuel 22, Kings parallels
Chronicles), every line that contains a dev or test transcript is removed. This is the only use of
dev/test transcripts here, and it only removes text. The summary prints how much was removed and
how many dev/test word 6-grams still occur in the kept text (shared phrasing, measured, not hidden).

Lines are sentences and clauses split at ``. ; : ? !``, normalized like transcripts (upper case,
letters, apostrophes). The output is gzip with a fixed timestamp: the same inputs give the same bytes.
Needs the Debian packages: ``apt-get install bible-kjv dict-devil``.
"""

from __future__ import annotations

import gzip
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
PROG = "tools/make_lm_text.py"
sys.path.insert(0, str(REPO_ROOT))

from asr.config import OneLineParser  # noqa: E402
from asr.lm import normalize_lines  # noqa: E402

HELD_OUT_POOLS = ("pub-dev", "pub-test", "hold-dev", "hold-test")
KEPT_POOLS = ("pub-train", "spare")
DEVIL_DICT = Path("/usr/share/dictd/devil.dict.dz")
DEVIL_INDEX = Path("/usr/share/dictd/devil.index")
DICTD_DIGITS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
SENTENCE_END = re.compile(r"[.;:?!]+")
VERSE_PREFIX = re.compile(r"^\S*?\d+:\d+\s+")
DEVIL_PREFIX = "Devil's Dictionary "
CHECK_NGRAM = 6


class LMTextError(Exception):
    """Missing input (corpus file, Debian package): one line naming it, exit status 2."""


def dictd_number(text: str) -> int:
    """dictd's base-64 offsets and lengths (its own digit order, most significant first)."""
    value = 0
    for char in text:
        value = value * 64 + DICTD_DIGITS.index(char)
    return value


def devil_entries() -> dict[str, list[str]]:
    """Definition texts of *The Devil's Dictionary*, grouped by document name ("Devil's Dictionary A")."""
    if not DEVIL_DICT.exists() or not DEVIL_INDEX.exists():
        raise LMTextError(f"{DEVIL_DICT}: missing (apt-get install dict-devil)")
    body = gzip.decompress(DEVIL_DICT.read_bytes())
    documents: dict[str, list[str]] = {}
    for line in DEVIL_INDEX.read_text(encoding="utf-8").splitlines():
        headword, offset, length = line.split("\t")[:3]
        if headword.startswith("00-") or not headword[:1].isalpha():
            continue
        start = dictd_number(offset)
        entry = body[start : start + dictd_number(length)].decode("utf-8", errors="replace")
        documents.setdefault(DEVIL_PREFIX + headword[0].upper(), []).append(entry)
    return documents


def bible_book(name: str) -> str:
    """The whole text of one King James book, through the ``bible`` command (verse prefixes removed)."""
    program = shutil.which("bible")
    if program is None:
        raise LMTextError("bible: command not found (apt-get install bible-kjv)")
    reference = name.replace(" ", "") + "1:1-999:999"
    result = subprocess.run(
        [program, "-f", reference], stdin=subprocess.DEVNULL, capture_output=True, text=True
    )
    verses = [VERSE_PREFIX.sub("", line) for line in result.stdout.splitlines() if VERSE_PREFIX.match(line)]
    if result.returncode != 0 or len(verses) < 2:
        raise LMTextError(f"bible -f {reference}: no text ({result.stderr.strip() or 'empty output'})")
    return "\n".join(verses)


def pools(corpus: Path) -> dict[str, dict[str, list[str]]]:
    info = corpus / "generation_info.json"
    try:
        return json.loads(info.read_text(encoding="utf-8"))["text_pools"]
    except (OSError, KeyError, json.JSONDecodeError) as error:
        raise LMTextError(f"{info}: cannot read its text_pools ({error})") from error


def documents_of(text_pools: dict, names: Iterable[str]) -> dict[str, set[str]]:
    chosen: dict[str, set[str]] = {"kjv": set(), "devil": set()}
    for pool in names:
        for source, documents in text_pools.get(pool, {}).items():
            chosen.setdefault(source, set()).update(documents)
    return chosen


def split_sentences(text: str) -> list[str]:
    return [part.strip() for part in SENTENCE_END.split(text.replace("\n", " ")) if part.strip()]


def held_out_transcripts(corpus: Path) -> list[str]:
    rows = [
        json.loads(line)
        for line in (corpus / "manifest.jsonl").read_text(encoding="utf-8").splitlines()
        if line
    ]
    texts, _ = normalize_lines(row["text"] for row in rows if row["subset"] != "train-clean")
    return sorted(set(texts))


def remove_containing(lines: list[str], transcripts: list[str]) -> tuple[list[str], int]:
    """Drop every line that contains one of ``transcripts`` as a run of whole words."""
    by_first_words: dict[tuple[str, ...], list[tuple[str, ...]]] = {}
    for transcript in transcripts:
        words = tuple(transcript.split())
        by_first_words.setdefault(words[:2], []).append(words)
    kept, removed = [], 0
    for line in lines:
        words = tuple(line.split())
        hit = any(
            words[i : i + len(candidate)] == candidate
            for i in range(len(words))
            for candidate in by_first_words.get(words[i : i + 2], ())
        )
        removed += hit
        if not hit:
            kept.append(line)
    return kept, removed


def ngrams(words: list[str], n: int) -> set[tuple[str, ...]]:
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=REPO_ROOT.parent / "shared" / "minilibri")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "data" / "lm-text" / "minilibri-books.txt.gz")
    args = parser.parse_args(argv)
    try:
        text_pools = pools(args.corpus)
        kept = documents_of(text_pools, KEPT_POOLS)
        held_out = documents_of(text_pools, HELD_OUT_POOLS)
        for source in kept:
            kept[source] -= held_out.get(source, set())
        devil = devil_entries()
        raw: list[str] = []
        for book in sorted(kept["kjv"]):
            raw.extend(split_sentences(bible_book(book)))
        for letter in sorted(kept["devil"]):
            for entry in devil.get(letter, []):
                raw.extend(split_sentences(entry))
        lines, unmappable = normalize_lines(raw)
        transcripts = held_out_transcripts(args.corpus)
    except (LMTextError, OSError) as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 2
    lines, removed = remove_containing(lines, transcripts)
    held_ngrams = set().union(*(ngrams(t.split(), CHECK_NGRAM) for t in transcripts))
    kept_ngrams = set().union(*(ngrams(line.split(), CHECK_NGRAM) for line in lines))
    shared = len(held_ngrams & kept_ngrams)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    temporary = args.out.with_name(args.out.name + ".tmp")
    with (
        open(temporary, "wb") as raw_file,
        gzip.GzipFile(fileobj=raw_file, mode="wb", mtime=0, filename="") as out,
    ):
        out.write(("\n".join(lines) + "\n").encode("utf-8"))
    temporary.replace(args.out)
    words = sum(len(line.split()) for line in lines)
    held_documents = sum(len(v) for v in held_out.values())
    print(
        f"make_lm_text: {len(kept['kjv'])} Bible books + {len(kept['devil'])} dictionary letters kept, "
        f"{held_documents} held-out documents left out; {len(lines)} lines, {words} words; "
        f"{removed} lines containing a dev/test transcript removed; "
        f"{sum(unmappable.values())} unmappable lines skipped; {shared} of {len(held_ngrams)} dev/test "
        f"word {CHECK_NGRAM}-grams ({100 * shared / max(1, len(held_ngrams)):.1f} %) still occur in the "
        f"kept text -> {args.out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
