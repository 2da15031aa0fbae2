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

Damaged or missing shards follow :mod:`asr.shardset` (warn, use what is readable, count the rest in
``lm.json``; ``--strict`` stops). Errors are one line and exit status 2, a failed write included.
"""

from __future__ import annotations

import argparse
import errno
import gzip
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

from asr.config import Bound, OneLineParser, option_type
from asr.files import WriteError, atomic_write, temporary_name, write_text
from asr.text import UnmappableTextError, normalize

REPO_ROOT = Path(__file__).resolve().parents[1]
KENLM_BIN_ENV = "ASR_KENLM_BIN"
LM_ARPA = "lm.arpa"
LM_BINARY = "lm.binary"
UNIGRAMS = "unigrams.txt"
LM_INFO = "lm.json"
DAMAGED_SHARDS = "utterances in damaged or missing shards"
"""The ``lm.json`` ``skipped`` reason counting transcripts lost to shard damage (see :mod:`asr.shardset`)."""


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


def read_shard_texts(shard_dir: str | os.PathLike, strict: bool = False) -> list[str]:
    """The ``text`` of every utterance in a shard directory (already normalized by ``asr.extract``)."""
    return shard_texts(shard_dir, strict)[0]


def shard_texts(shard_dir: str | os.PathLike, strict: bool = False) -> tuple[list[str], int]:
    """The transcripts of a shard directory and how many were lost to damaged or missing shards.

    Damage policy of :mod:`asr.shardset`: by default the transcripts before the damage are used and each
    damaged or missing file gets one warning line on stderr; ``strict`` raises :class:`LMError`.
    """
    from asr.shardset import ShardReader, ShardReaderError

    try:
        shard_set = ShardReader(shard_dir, "--manifest", strict)
        counts = shard_set.manifest.get("counts")
        total = counts.get("kept") if isinstance(counts, dict) else None
        texts = [u["text"] for u in _progress(shard_set.utterances(), total, "reading transcripts")]
    except ShardReaderError as error:
        raise LMError(str(error)) from None
    for warning in shard_set.warnings():
        print(f"asr.lm: warning: {warning}", file=sys.stderr, flush=True)
    return texts, shard_set.lost


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


def _progress(items: Iterable, total: int | None, what: str):
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover - tqdm is a dependency
        return items
    quiet = not total or not sys.stderr.isatty()  # a log file gets the warnings and errors, not a bar
    return tqdm(items, desc=what, total=total, unit="utt", file=sys.stderr, disable=quiet, leave=False)


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

    ``sentences`` are normalized transcripts. Files appear under their real names only once all four are
    complete: ``lmplz`` and ``build_binary`` write ``NAME.tmp-<pid>`` (:func:`asr.files.temporary_name`)
    and :func:`_install` renames them after the dictionary and ``lm.json``. A write that fails (disk
    full, file-size limit) raises :class:`asr.files.WriteError` naming the file, with every temporary
    removed and an earlier model in ``out_dir`` left whole. Returns the ``lm.json`` contents.
    """
    if order < 1:
        raise LMError(f"--order: must be at least 1, got {order}")
    sentences = [s for s in sentences if s.strip()]
    if not sentences:
        raise LMError(f"no transcripts to build a language model from (sources: {', '.join(sources)})")
    bin_dir = find_kenlm_bin(kenlm_bin)
    out = Path(out_dir)
    corpus_text = "".join(s + "\n" for s in sentences)
    arpa_tmp, binary_tmp = temporary_name(out / LM_ARPA), temporary_name(out / LM_BINARY)
    scratch = _scratch_directory(out)
    try:
        corpus = scratch / "corpus.txt"
        write_text(corpus, corpus_text)
        lmplz = [str(bin_dir / "lmplz"), "-o", str(order), "-S", memory, "-T", str(scratch) + "/",
                 "--text", str(corpus), "--arpa", str(arpa_tmp)]  # fmt: skip
        discount_fallback = False
        result = _run_tool(lmplz, out / LM_ARPA)
        if result.returncode != 0 and "discount_fallback" in result.stderr:
            discount_fallback = True
            result = _run_tool([*lmplz, "--discount_fallback"], out / LM_ARPA)
        if result.returncode != 0:
            raise LMError(f"lmplz failed (exit {result.returncode}): {_last_line(result.stderr)}")
        result = _run_tool([str(bin_dir / "build_binary"), str(arpa_tmp), str(binary_tmp)], out / LM_BINARY)
        if result.returncode != 0:
            raise LMError(f"build_binary failed (exit {result.returncode}): {_last_line(result.stderr)}")

        word_counts = Counter(word for sentence in sentences for word in sentence.split())
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
        _install(out, sorted(word_counts), info, arpa_tmp, binary_tmp)
        return info
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        for leftover in (arpa_tmp, binary_tmp):
            leftover.unlink(missing_ok=True)


def _scratch_directory(out: Path) -> Path:
    """A fresh directory inside ``out`` for lmplz's corpus and sort files (same disk as the model)."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=".lmplz-", dir=out))
    except OSError as error:
        raise WriteError(out, error) from None


def _run_tool(command: list[str], output: Path) -> subprocess.CompletedProcess:
    """Run a KenLM tool; when it failed because ``output``'s disk is full or a file-size limit was hit
    (it is then killed by SIGXFSZ or names the errno), raise :class:`WriteError` naming ``output``."""
    result = _run(command)
    if result.returncode == -signal.SIGXFSZ:
        raise WriteError(output, OSError(errno.EFBIG, os.strerror(errno.EFBIG)))
    for code in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        if result.returncode != 0 and os.strerror(code) in result.stderr:
            raise WriteError(output, OSError(code, os.strerror(code)))
    return result


def _install(out: Path, words: list[str], info: dict, arpa_tmp: Path, binary_tmp: Path) -> None:
    """Write the dictionary and ``lm.json``, then rename the tools' outputs into place.

    The dictionary is flushed before ``lm.json`` is written, so a failed write of either raises from its
    own :func:`atomic_write` (naming the right file) before anything is renamed.
    """
    with atomic_write(out / UNIGRAMS) as unigrams:
        unigrams.write("".join(word + "\n" for word in words))
        unigrams.flush()
        with atomic_write(out / LM_INFO) as info_file:
            info_file.write(json.dumps(info, indent=2) + "\n")
    os.replace(arpa_tmp, out / LM_ARPA)
    os.replace(binary_tmp, out / LM_BINARY)


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    useful = [line for line in lines if "threw" in line or "rror" in line or "xception" in line]
    return (useful or lines or ["(no message)"])[-1]


def load_unigrams(lm_dir: str | os.PathLike) -> list[str]:
    """The dictionary written by :func:`build_lm`."""
    return Path(lm_dir, UNIGRAMS).read_text(encoding="utf-8").split()


# --------------------------------------------------------------------------- command line


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = OneLineParser(
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
    order = option_type(int, Bound(1))
    parser.add_argument("--order", type=order, default=4, help="n-gram order (default 4)")
    parser.add_argument("--out", required=True, metavar="LM_DIR", help="output directory")
    parser.add_argument("--kenlm-bin", metavar="DIR", help="directory with lmplz and build_binary")
    parser.add_argument(
        "--memory", type=_memory, default="1G", help="lmplz sorting memory, e.g. 1G or 10%% (default 1G)"
    )
    parser.add_argument(
        "--strict", action="store_true", help="stop at a damaged or missing shard instead of skipping it"
    )
    args = parser.parse_args(argv)
    if not args.manifest and not args.text:
        parser.error("name the training text: --manifest TRAIN_OUT and/or --text FILE")
    return args


MEMORY_SYNTAX = re.compile(r"[1-9][0-9]*[bKMGTPEZY]?|(?!0+(\.0*)?%)[0-9]+(\.[0-9]+)?%")
"""What lmplz's ``-S`` parses: a whole number of KiB or with a unit (``1G``), or a percentage of RAM."""


def _memory(value: str) -> str:
    """``--memory``: refuse what lmplz would fail to parse (after the whole text was read and normalized)."""
    if not MEMORY_SYNTAX.fullmatch(value) or (value.endswith("%") and float(value[:-1]) > 100):
        raise argparse.ArgumentTypeError(f"expected e.g. 1G, 500M or 10%, got {value!r}")
    return value


def read_text_lines(path: Path) -> list[str]:
    """Lines of a plain or gzip (``.gz``) text file; :class:`LMError` names the file it cannot read."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rt", encoding="utf-8") as handle:
                return handle.read().splitlines()
        return path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError, EOFError) as error:
        raise LMError(f"--text {path}: cannot read: {error}") from error


def read_sources(args: argparse.Namespace) -> tuple[list[str], Counter]:
    """The sentences of every ``--manifest`` and ``--text`` source, and what was left out, by reason."""
    skipped: Counter = Counter()
    sentences: list[str] = []
    for directory in args.manifest:
        texts, lost = shard_texts(directory, args.strict)
        sentences.extend(texts)
        if lost:
            skipped[DAMAGED_SHARDS] += lost
    for name in args.text:
        kept, dropped = normalize_lines(read_text_lines(Path(name)))
        sentences.extend(kept)
        skipped.update(dropped)
    return sentences, skipped


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        sentences, skipped = read_sources(args)
        sources = [str(Path(name).resolve()) for name in [*args.manifest, *args.text]]
        for reason, count in sorted(skipped.items()):
            if reason != DAMAGED_SHARDS:  # those were warned about shard file by shard file
                print(f"asr.lm: skipped {count} line(s): {reason}", file=sys.stderr)
        info = build_lm(sentences, args.out, args.order, args.kenlm_bin, sources, args.memory, dict(skipped))
    except (LMError, WriteError) as error:
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
