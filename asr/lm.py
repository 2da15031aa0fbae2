"""Build the decoder's KenLM n-gram language model and dictionary from *training* transcripts.

    python -m asr.lm --manifest features/train --order 4 --out lm/
    python -m asr.lm --text corpus.txt --order 4 --out lm/

writes into ``--out``:

- ``lm.arpa``: the ARPA model from KenLM's ``lmplz`` (modified Kneser-Ney);
- ``lm.binary``: the same model from ``build_binary``, which loads in milliseconds (the decoder uses it);
- ``unigrams.txt``: the dictionary, one word per line, sorted: every word of the transcripts. The
  beam search is constrained to these words (paper 2.2.2: "we build the dictionary from the words in
  our training dataset");
- ``lm.json``: order, sources, counts, the SHA-256 of the text, and whether ``--discount_fallback``
  was needed.

**Only the sources you name are read.** ``--manifest`` takes a shard directory written by
``asr.extract`` (its ``manifest.json`` beside the shards) and reads the ``text`` of every
utterance; point it at the *training* shards. The command never looks for dev or test transcripts
by itself: an LM that has seen the evaluation text makes WER meaningless, so including them is
only possible by naming them explicitly.

``lmplz`` and ``build_binary`` are not in the ``kenlm`` wheel: ``make kenlm`` builds them into
``.cache/kenlm/bin``. They are looked up in ``--kenlm-bin``, then ``$ASR_KENLM_BIN``, then
``.cache/kenlm/bin`` under the repository root, then ``PATH``.

Tiny corpora (tests, the bundled corpus) do not have the count-of-counts Kneser-Ney discounts need;
``lmplz`` then fails and is rerun with ``--discount_fallback``, which ``lm.json`` records.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

from asr.text import UnmappableTextError, normalize

REPO_ROOT = Path(__file__).resolve().parents[1]
KENLM_BIN_ENV = "ASR_KENLM_BIN"
LM_ARPA = "lm.arpa"
LM_BINARY = "lm.binary"
UNIGRAMS = "unigrams.txt"
LM_INFO = "lm.json"


class LMError(Exception):
    """A problem the command cannot get past; the message names the file or value (exit 2)."""


# --------------------------------------------------------------------------- finding KenLM


def find_kenlm_bin(explicit: str | os.PathLike | None = None) -> Path:
    """The directory holding ``lmplz`` and ``build_binary``; raises :class:`LMError` naming the fix."""
    candidates: list[tuple[str, Path]] = []
    if explicit:
        candidates.append(("--kenlm-bin", Path(explicit)))
    elif os.environ.get(KENLM_BIN_ENV):
        candidates.append((f"${KENLM_BIN_ENV}", Path(os.environ[KENLM_BIN_ENV])))
    else:
        candidates.append(("repository cache", REPO_ROOT / ".cache" / "kenlm" / "bin"))
        on_path = shutil.which("lmplz")
        if on_path:
            candidates.append(("PATH", Path(on_path).parent))
    for _, directory in candidates:
        if all(os.access(directory / tool, os.X_OK) for tool in ("lmplz", "build_binary")):
            return directory
    where = ", ".join(f"{source} {directory}" for source, directory in candidates)
    raise LMError(
        f"KenLM's lmplz and build_binary not found (looked in {where}): run `make kenlm` "
        f"(bash tools/build_kenlm.sh .cache/kenlm/bin)"
    )


# --------------------------------------------------------------------------- reading transcripts


def read_shard_texts(shard_dir: str | os.PathLike) -> list[str]:
    """The ``text`` of every utterance in a shard directory (already normalized by ``asr.extract``)."""
    from asr.shards import ShardDirectoryError, decode_example, read_manifest, read_records

    try:
        _, files = read_manifest(shard_dir, "--manifest")
    except ShardDirectoryError as error:
        raise LMError(str(error)) from None
    texts: list[str] = []
    for path in _progress(files, "reading transcripts"):
        try:
            for record in read_records(path):
                texts.append(decode_example(record)["text"][0].decode())
        except (OSError, ValueError, KeyError, IndexError) as error:
            raise LMError(f"{path}: cannot read transcripts: {error}") from error
    return texts


def normalize_lines(lines: Iterable[str]) -> tuple[list[str], Counter]:
    """Normalized non-empty sentences, and counts of skipped lines by reason."""
    sentences: list[str] = []
    skipped: Counter = Counter()
    for line in lines:
        try:
            sentence = normalize(line)
        except UnmappableTextError:
            skipped["characters outside the alphabet"] += 1
            continue
        if sentence:
            sentences.append(sentence)
        elif line.strip():
            skipped["nothing left after normalization"] += 1
    return sentences, skipped


def _progress(items: Sequence, what: str):
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover - tqdm is a dependency
        return items
    return tqdm(items, desc=what, unit="shard", file=sys.stderr, disable=len(items) < 2, leave=False)


# --------------------------------------------------------------------------- building


def _ngram_counts(arpa: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    with arpa.open(encoding="utf-8") as handle:
        for line in handle:
            line = line.strip()
            if line.startswith("ngram "):
                order, count = line[len("ngram ") :].split("=")
                counts[order] = int(count)
            elif line.startswith("\\1-grams"):
                break
    return counts


def _run(command: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, check=False)


def build_lm(
    sentences: Sequence[str],
    out_dir: str | os.PathLike,
    order: int = 4,
    kenlm_bin: str | os.PathLike | None = None,
    sources: Sequence[str] = (),
    memory: str = "1G",
    skipped: dict[str, int] | None = None,
) -> dict:
    """Write ``lm.arpa``, ``lm.binary``, ``unigrams.txt`` and ``lm.json`` into ``out_dir``.

    ``sentences`` are normalized transcripts. Files appear under their real names only when complete
    (written to temporary names, then renamed). Returns the ``lm.json`` contents.
    """
    if order < 1:
        raise LMError(f"--order: must be at least 1, got {order}")
    sentences = [s for s in sentences if s.strip()]
    if not sentences:
        raise LMError(f"no transcripts to build a language model from (sources: {', '.join(sources)})")
    bin_dir = find_kenlm_bin(kenlm_bin)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    corpus_text = "".join(s + "\n" for s in sentences)
    scratch = Path(tempfile.mkdtemp(prefix=".lmplz-", dir=out))
    corpus = scratch / "corpus.txt"
    arpa_tmp, binary_tmp, unigrams_tmp, info_tmp = (
        out / f".{name}.tmp" for name in (LM_ARPA, LM_BINARY, UNIGRAMS, LM_INFO)
    )
    try:
        corpus.write_text(corpus_text, encoding="utf-8")
        lmplz = [str(bin_dir / "lmplz"), "-o", str(order), "-S", memory, "-T", str(scratch) + "/",
                 "--text", str(corpus), "--arpa", str(arpa_tmp)]  # fmt: skip
        discount_fallback = False
        result = _run(lmplz)
        if result.returncode != 0 and "discount_fallback" in result.stderr:
            discount_fallback = True
            result = _run([*lmplz, "--discount_fallback"])
        if result.returncode != 0:
            raise LMError(f"lmplz failed (exit {result.returncode}): {_last_line(result.stderr)}")
        result = _run([str(bin_dir / "build_binary"), str(arpa_tmp), str(binary_tmp)])
        if result.returncode != 0:
            raise LMError(f"build_binary failed (exit {result.returncode}): {_last_line(result.stderr)}")

        word_counts = Counter(word for sentence in sentences for word in sentence.split())
        unigrams_tmp.write_text("".join(w + "\n" for w in sorted(word_counts)), encoding="utf-8")
        info = {
            "order": order,
            "sources": list(sources),
            "sentences": len(sentences),
            "words": sum(word_counts.values()),
            "unique_words": len(word_counts),
            "skipped": dict(skipped or {}),
            "ngrams": _ngram_counts(arpa_tmp),
            "text_sha256": hashlib.sha256(corpus_text.encode("utf-8")).hexdigest(),
            "discount_fallback": discount_fallback,
            "kenlm_bin": str(bin_dir),
        }
        info_tmp.write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        for temporary, name in ((arpa_tmp, LM_ARPA), (binary_tmp, LM_BINARY), (unigrams_tmp, UNIGRAMS),
                                (info_tmp, LM_INFO)):  # fmt: skip
            os.replace(temporary, out / name)
        return info
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        for leftover in (arpa_tmp, binary_tmp, unigrams_tmp, info_tmp):
            leftover.unlink(missing_ok=True)


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    useful = [line for line in lines if "threw" in line or "rror" in line or "xception" in line]
    return (useful or lines or ["(no message)"])[-1]


def load_unigrams(lm_dir: str | os.PathLike) -> list[str]:
    """The dictionary written by :func:`build_lm`."""
    return Path(lm_dir, UNIGRAMS).read_text(encoding="utf-8").split()


# --------------------------------------------------------------------------- command line


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m asr.lm",
        description="Build the KenLM n-gram model and dictionary from training transcripts. Only the "
        "sources named here are read: never point it at dev/test transcripts unless you mean to.",
    )
    parser.add_argument(
        "--manifest",
        nargs="+",
        default=[],
        metavar="TRAIN_OUT",
        help="asr.extract output directories (manifest.json beside the shards)",
    )
    parser.add_argument(
        "--text",
        nargs="+",
        default=[],
        metavar="FILE",
        help="plain text files, one sentence a line (.gz read as gzip); combinable with --manifest",
    )
    parser.add_argument("--order", type=int, default=4, help="n-gram order (default 4)")
    parser.add_argument("--out", required=True, metavar="LM_DIR", help="output directory")
    parser.add_argument("--kenlm-bin", metavar="DIR", help="directory with lmplz and build_binary")
    parser.add_argument("--memory", default="1G", help="lmplz sorting memory, e.g. 1G or 10%% (default 1G)")
    args = parser.parse_args(argv)
    if not args.manifest and not args.text:
        parser.error("name the training text: --manifest TRAIN_OUT and/or --text FILE")
    return args


def read_text_lines(path: Path) -> list[str]:
    """Lines of a plain or gzip (``.gz``) text file; :class:`LMError` names the file it cannot read."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rt", encoding="utf-8") as handle:
                return handle.read().splitlines()
        return path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError, EOFError) as error:
        raise LMError(f"--text {path}: cannot read: {error}") from error


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        skipped: Counter = Counter()
        sentences = [text for directory in args.manifest for text in read_shard_texts(directory)]
        for name in args.text:
            kept, dropped = normalize_lines(read_text_lines(Path(name)))
            sentences.extend(kept)
            skipped.update(dropped)
        sources = [str(Path(name).resolve()) for name in [*args.manifest, *args.text]]
        for reason, count in sorted(skipped.items()):
            print(f"asr.lm: skipped {count} line(s): {reason}", file=sys.stderr)
        info = build_lm(sentences, args.out, args.order, args.kenlm_bin, sources, args.memory, dict(skipped))
    except LMError as error:
        print(f"asr.lm: error: {error}", file=sys.stderr)
        return 2
    ngrams = ", ".join(f"{order}-grams {count}" for order, count in info["ngrams"].items())
    fallback = " (with --discount_fallback: small corpus)" if info["discount_fallback"] else ""
    print(
        f"asr.lm: {info['sentences']} sentences, {info['unique_words']} words in the dictionary, "
        f"{ngrams}{fallback} -> {Path(args.out) / LM_BINARY}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
