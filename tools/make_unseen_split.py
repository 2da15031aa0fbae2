"""Make a speaker-disjoint corpus from a minilibri-style one: some voices only ever in dev/test.

    python tools/make_unseen_split.py --out work/minilibri-unseen-corpus \
        [--corpus ../shared/minilibri] [--holdout 1008,1009,1011,1018] [--copy] [--force]

Why: minilibri's 20 synthetic voices read in all three subsets (only the sentences differ), so its
dev/test WER says how well the model transcribes voices it was trained on. This script holds some
voices out of training, to measure accuracy on voices the model never heard (issue 18).

Output, in LibriSpeech layout (``SUBSET/SPEAKER/CHAPTER/ID.flac`` + ``SPEAKER-CHAPTER.trans.txt``):

* ``train-clean``: the kept voices' train-clean utterances;
* ``dev-clean``, ``test-clean``: the kept voices' dev/test utterances (the "seen" sets);
* ``dev-unseen``, ``test-unseen``: the held-out voices' dev-clean/test-clean utterances.

The held-out voices' train-clean utterances are dropped (counted in ``split.json``). Audio is linked
with absolute symlinks (``--copy`` copies it), each chapter's ``.trans.txt`` holds only its included
lines, the corpus's description files (``SPEAKERS.TXT``, ``speakers.json``, ``CHAPTERS.TXT``,
``BOOKS.TXT``, ``LICENSE.TXT``) are copied, and ``split.json`` records the source, the held-out
voices and each subset's utterances, speakers and seconds (from the audio headers).

The default held-out voices (``1008,1009,1011,1018``: two female, two male, three engines) are those
of minilibri whose engine+voice is the least like any kept voice; what each still shares with a kept
voice is in ``docs/unseen-voices.md``.

The script checks what it wrote before moving it into place: no held-out voice in ``train-clean``,
every source utterance in exactly one output subset (or dropped), and no sentence (transcript text)
in two output subsets (minilibri has none; a corpus that does is refused, naming the sentence, rather
than silently changed). The output is written to a temporary directory and renamed; the same inputs
give the same files. Errors (an unknown speaker id, a missing subset, an existing ``--out`` without
``--force``, a failed check) are one line with exit status 2.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

import soundfile

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from asr.config import OneLineParser  # noqa: E402
from asr.files import (  # noqa: E402
    DirectoryExistsError,
    WriteError,
    directory_in_place,
    os_error_line,
    refuse_existing,
    write_json,
    write_text,
)

PROG = "make_unseen_split"
DEFAULT_CORPUS = Path("../shared/minilibri")
DEFAULT_HOLDOUT = ("1008", "1009", "1011", "1018")
SOURCE_SUBSETS = ("train-clean", "dev-clean", "test-clean")
SEEN = {"train-clean": "train-clean", "dev-clean": "dev-clean", "test-clean": "test-clean"}
"""Output subset of a kept voice's utterance, by source subset."""
UNSEEN = {"train-clean": None, "dev-clean": "dev-unseen", "test-clean": "test-unseen"}
"""Output subset of a held-out voice's utterance, by source subset (None: dropped)."""
OUTPUT_SUBSETS = ("train-clean", "dev-clean", "test-clean", "dev-unseen", "test-unseen")
DESCRIPTION_FILES = ("SPEAKERS.TXT", "speakers.json", "CHAPTERS.TXT", "BOOKS.TXT", "LICENSE.TXT")
AUDIO_SUFFIXES = (".flac", ".wav")
SPLIT_FILE = "split.json"


class SplitError(Exception):
    """Input or output the split cannot use; printed as one line, exit status 2."""


@dataclasses.dataclass(frozen=True)
class SplitConfig:
    """The command line, validated by :func:`check_config` against the corpus."""

    corpus: Path
    out: Path
    holdout: tuple[str, ...] = DEFAULT_HOLDOUT
    copy: bool = False
    """Copy the audio instead of linking it (for a corpus that may move or disappear)."""
    force: bool = False


@dataclasses.dataclass(frozen=True)
class Utterance:
    """One source utterance: where it is and what is said."""

    subset: str
    speaker: str
    chapter: str
    utt_id: str
    audio: Path
    text: str


def parse_holdout(value: str) -> tuple[str, ...]:
    """``"1008, 1009"`` → ``("1008", "1009")``: sorted, unique, each a speaker directory name (digits)."""
    ids = [part.strip() for part in value.split(",") if part.strip()]
    if not ids:
        raise SplitError(f"--holdout {value!r}: no speaker id given")
    for speaker in ids:
        if not speaker.isdigit():
            raise SplitError(f"--holdout {value!r}: {speaker!r} is not a speaker id (digits)")
    return tuple(sorted(set(ids), key=lambda s: (int(s), s)))


def read_transcripts(path: Path) -> dict[str, str]:
    """``ID TEXT`` lines of a ``.trans.txt`` file; a repeated id is an error naming the file."""
    lines: dict[str, str] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        utt_id, _, text = line.partition(" ")
        if not utt_id:
            continue
        if utt_id in lines:
            raise SplitError(f"{path} line {number}: utterance id {utt_id} appears twice")
        lines[utt_id] = text
    return lines


def gather(corpus: Path, subset: str) -> list[Utterance]:
    """Every utterance of one source subset, sorted by id. An audio file without a transcript line, or a
    line without its audio file, is an error naming it (the split must account for every utterance)."""
    found: list[Utterance] = []
    for speaker_dir in sorted(p for p in (corpus / subset).iterdir() if p.is_dir()):
        for chapter_dir in sorted(p for p in speaker_dir.iterdir() if p.is_dir()):
            transcripts: dict[str, str] = {}
            for trans in sorted(chapter_dir.glob("*.trans.txt")):
                transcripts.update(read_transcripts(trans))
            audio = {p.name.rsplit(".", 1)[0]: p for p in chapter_dir.iterdir() if p.suffix in AUDIO_SUFFIXES}
            for utt_id in sorted(set(audio) | set(transcripts)):
                if utt_id not in transcripts:
                    raise SplitError(f"{audio[utt_id]}: no transcript line in {chapter_dir}")
                if utt_id not in audio:
                    raise SplitError(f"{chapter_dir}: transcript line {utt_id} has no audio file")
                found.append(
                    Utterance(subset, speaker_dir.name, chapter_dir.name, utt_id,
                              audio[utt_id].resolve(), transcripts[utt_id])
                )  # fmt: skip
    return sorted(found, key=lambda u: u.utt_id)


def check_config(config: SplitConfig) -> list[str]:
    """Raise :class:`SplitError` for a missing corpus or subset, an unknown held-out id or one that leaves
    no voice to train on; returns every speaker id of the corpus, sorted."""
    for subset in SOURCE_SUBSETS:
        if not (config.corpus / subset).is_dir():
            raise SplitError(f"--corpus {config.corpus}: no {subset} directory (LibriSpeech layout expected)")
    speakers = sorted(
        {p.name for subset in SOURCE_SUBSETS for p in (config.corpus / subset).iterdir() if p.is_dir()},
        key=lambda s: (len(s), s),
    )
    for speaker in config.holdout:
        if speaker not in speakers:
            raise SplitError(f"--holdout: unknown speaker id {speaker} (not in {config.corpus})")
    train = {p.name for p in (config.corpus / "train-clean").iterdir() if p.is_dir()}
    if not train - set(config.holdout):
        raise SplitError(f"--holdout {','.join(config.holdout)}: no training voice would be left")
    return speakers


def plan_split(
    utterances: Sequence[Utterance], holdout: Sequence[str]
) -> tuple[dict[str, list[Utterance]], list[Utterance]]:
    """The output subsets' utterances (every name of :data:`OUTPUT_SUBSETS`, sorted by id) and the dropped
    ones (held-out voices' training utterances)."""
    held = set(holdout)
    subsets: dict[str, list[Utterance]] = {name: [] for name in OUTPUT_SUBSETS}
    dropped: list[Utterance] = []
    for utterance in sorted(utterances, key=lambda u: (u.utt_id, u.subset)):
        target = (UNSEEN if utterance.speaker in held else SEEN)[utterance.subset]
        (dropped if target is None else subsets[target]).append(utterance)
    return subsets, dropped


def check_split(subsets: dict[str, list[Utterance]], holdout: Sequence[str]) -> None:
    """Raise :class:`SplitError` if a held-out voice is in ``train-clean``, an utterance id is in two
    subsets, or a sentence (transcript text) is in two subsets."""
    held = set(holdout)
    leaked = sorted({u.speaker for u in subsets["train-clean"]} & held)
    if leaked:
        raise SplitError(f"held-out speaker {leaked[0]} is in train-clean")
    where: dict[str, str] = {}
    said: dict[str, tuple[str, str]] = {}
    for name in OUTPUT_SUBSETS:
        for utterance in subsets[name]:
            if utterance.utt_id in where:
                raise SplitError(f"utterance {utterance.utt_id} is in {where[utterance.utt_id]} and {name}")
            where[utterance.utt_id] = name
            other = said.setdefault(utterance.text, (name, utterance.utt_id))
            if other[0] != name:
                raise SplitError(
                    f"sentence {utterance.text!r} is in {other[0]} ({other[1]}) and {name} "
                    f"({utterance.utt_id}); the seen/unseen comparison needs disjoint sentences"
                )


def speaker_names(corpus: Path) -> dict[str, dict[str, str]]:
    """Speaker id → ``{"name", "sex"}`` from ``speakers.json`` (minilibri) or ``SPEAKERS.TXT``; empty if
    neither is there."""
    described: dict[str, dict[str, str]] = {}
    if (corpus / "speakers.json").is_file():
        for entry in json.loads((corpus / "speakers.json").read_text(encoding="utf-8")):
            described[str(entry["id"])] = {"name": str(entry.get("name", "")), "sex": str(entry.get("sex"))}
    elif (corpus / "SPEAKERS.TXT").is_file():
        for line in (corpus / "SPEAKERS.TXT").read_text(encoding="utf-8").splitlines():
            fields = [field.strip() for field in line.split("|")]
            if line.startswith(";") or len(fields) < 5:
                continue
            described[fields[0]] = {"name": fields[-1], "sex": fields[1]}
    return described


def seconds(utterances: Sequence[Utterance]) -> float:
    """Total audio duration in seconds, from the headers."""
    total = 0.0
    for utterance in utterances:
        info = soundfile.info(str(utterance.audio))
        total += info.frames / info.samplerate
    return round(total, 3)


def write_corpus(directory: Path, subsets: dict[str, list[Utterance]], copy: bool) -> None:
    """Lay out the output subsets in ``directory``: audio linked (absolute target) or copied, one
    ``.trans.txt`` per chapter with its included lines in id order."""
    for name, utterances in subsets.items():
        (directory / name).mkdir()
        chapters: dict[Path, list[Utterance]] = {}
        for utterance in utterances:
            chapter_dir = directory / name / utterance.speaker / utterance.chapter
            chapters.setdefault(chapter_dir, []).append(utterance)
        for chapter_dir, members in chapters.items():
            chapter_dir.mkdir(parents=True)
            for utterance in members:
                target = chapter_dir / utterance.audio.name
                if copy:
                    shutil.copyfile(utterance.audio, target)
                else:
                    os.symlink(utterance.audio, target)
            lines = "".join(f"{u.utt_id} {u.text}\n" for u in members)
            write_text(chapter_dir / f"{members[0].speaker}-{members[0].chapter}.trans.txt", lines)


def check_written(
    directory: Path, subsets: dict[str, list[Utterance]], holdout: Sequence[str], copy: bool
) -> None:
    """Read the written corpus back and compare it with the plan: same utterances, audio (the link's
    target, or the copy's place) and transcripts per subset, and :func:`check_split` on what was read."""
    read_back = {name: gather(directory, name) for name in OUTPUT_SUBSETS}
    for name in OUTPUT_SUBSETS:
        place = directory / name
        want = [
            (u.utt_id, (place / u.speaker / u.chapter / u.audio.name).resolve() if copy else u.audio, u.text)
            for u in subsets[name]
        ]
        got = [(u.utt_id, u.audio, u.text) for u in read_back[name]]
        if want != got:
            raise SplitError(f"{directory / name}: written utterances differ from the plan")
    check_split(read_back, holdout)


def summary(config: SplitConfig, subsets: dict[str, list[Utterance]], dropped: list[Utterance]) -> dict:
    """The content of ``split.json``."""
    names = speaker_names(config.corpus)

    def figures(utterances: Sequence[Utterance]) -> dict:
        return {
            "utterances": len(utterances),
            "seconds": seconds(utterances),
            "speakers": sorted({u.speaker for u in utterances}, key=lambda s: (len(s), s)),
        }

    return {
        "source": str(config.corpus.resolve()),
        "audio": "copied" if config.copy else "symlinked",
        "held_out": [{"id": s, **names.get(s, {"name": "", "sex": ""})} for s in config.holdout],
        "subsets": {name: figures(subsets[name]) for name in OUTPUT_SUBSETS},
        "dropped": {"held-out train-clean": figures(dropped)},
    }


def make_split(config: SplitConfig) -> dict:
    """Check, plan, write into a temporary directory, check what was written, rename; returns split.json."""
    refuse_existing(config.out, config.force)
    check_config(config)
    utterances = [u for subset in SOURCE_SUBSETS for u in gather(config.corpus, subset)]
    subsets, dropped = plan_split(utterances, config.holdout)
    check_split(subsets, config.holdout)
    if len(utterances) != sum(map(len, subsets.values())) + len(dropped):
        raise SplitError("internal: utterances lost in the plan")
    result = summary(config, subsets, dropped)
    config.out.parent.mkdir(parents=True, exist_ok=True)
    with directory_in_place(config.out, config.force) as directory:
        write_corpus(directory, subsets, config.copy)
        for name in DESCRIPTION_FILES:
            if (config.corpus / name).is_file():
                shutil.copyfile(config.corpus / name, directory / name)
        write_json(directory / SPLIT_FILE, result)
        check_written(directory, subsets, config.holdout, config.copy)
    return result


def parse_args(argv: Sequence[str] | None = None) -> SplitConfig:
    parser = OneLineParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS, help="minilibri-style corpus")
    parser.add_argument("--out", type=Path, required=True, help="output corpus directory")
    parser.add_argument(
        "--holdout", default=",".join(DEFAULT_HOLDOUT), help="speaker ids kept out of training (a,b,...)"
    )
    parser.add_argument("--copy", action="store_true", help="copy the audio instead of symlinking it")
    parser.add_argument("--force", action="store_true", help="replace an existing --out")
    args = parser.parse_args(argv)
    return SplitConfig(args.corpus, args.out, parse_holdout(args.holdout), args.copy, args.force)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: a summary line per subset on stderr; one-line errors with exit status 2."""
    try:
        config = parse_args(argv)
        result = make_split(config)
    except (SplitError, DirectoryExistsError, WriteError) as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        print(f"{PROG}: error: {os_error_line(error)}", file=sys.stderr)
        return 2
    held = ", ".join(f"{h['id']} {h['name']}".strip() for h in result["held_out"])
    print(f"{PROG}: {config.out}: held out {held}", file=sys.stderr)
    for name, figures in [*result["subsets"].items(), *result["dropped"].items()]:
        print(
            f"{PROG}:   {name}: {figures['utterances']} utterances, {figures['seconds'] / 60:.1f} min, "
            f"{len(figures['speakers'])} speakers",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
