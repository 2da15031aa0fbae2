"""tools/make_unseen_split.py: held-out voices never in training, every utterance in one subset, errors."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPT = REPO_ROOT / "tools" / "make_unseen_split.py"

spec = importlib.util.spec_from_file_location("make_unseen_split", SCRIPT)
split = importlib.util.module_from_spec(spec)
sys.modules["make_unseen_split"] = split  # dataclasses look their module up
spec.loader.exec_module(split)

SPEAKERS = ("1001", "1002", "1009", "1012")
"""Voices of data/tiny present in its train, dev and test subsets alike, as in minilibri."""


@pytest.fixture
def corpus(tmp_path, tiny_corpus) -> Path:
    """A minilibri-style corpus: data/tiny's voices that read in all three subsets, with SPEAKERS.TXT."""
    root = tmp_path / "corpus"
    for subset in split.SOURCE_SUBSETS:
        for speaker in SPEAKERS:
            source = tiny_corpus / subset / speaker
            if source.is_dir():
                shutil.copytree(source, root / subset / speaker)
    lines = [";ID  |SEX| SUBSET |MINUTES| NAME"]
    lines += [f"{s} | {'MF'[i % 2]} | all |  1.00 | voice {s}" for i, s in enumerate(SPEAKERS)]
    (root / "SPEAKERS.TXT").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


def listing(directory: Path) -> list[tuple[str, str]]:
    """Every file under ``directory`` with its link target or content, relative paths, sorted."""
    entries = []
    for path in sorted(directory.rglob("*")):
        if path.is_symlink():
            entries.append((str(path.relative_to(directory)), os.readlink(path)))
        elif path.is_file():
            entries.append((str(path.relative_to(directory)), path.read_bytes().hex()))
    return entries


def transcripts(root: Path, subset: str) -> dict[str, str]:
    lines = {}
    for path in (root / subset).glob("*/*/*.trans.txt"):
        for line in path.read_text(encoding="utf-8").splitlines():
            utt_id, _, text = line.partition(" ")
            lines[utt_id] = text
    return lines


def test_held_out_voices_only_in_unseen_sets_and_every_utterance_once(corpus, tmp_path):
    out = tmp_path / "split"
    assert split.main(["--corpus", str(corpus), "--out", str(out), "--holdout", "1009,1012"]) == 0
    source = {s: transcripts(corpus, s) for s in split.SOURCE_SUBSETS}
    written = {s: transcripts(out, s) for s in split.OUTPUT_SUBSETS}
    speakers = {s: {u.split("-")[0] for u in written[s]} for s in split.OUTPUT_SUBSETS}
    assert speakers["train-clean"] == {"1001", "1002"}
    assert speakers["dev-unseen"] <= {"1009", "1012"} and speakers["test-unseen"] == {"1009", "1012"}
    assert not speakers["dev-clean"] & {"1009", "1012"} and not speakers["test-clean"] & {"1009", "1012"}
    ids = [u for s in split.OUTPUT_SUBSETS for u in written[s]]
    assert len(ids) == len(set(ids))
    dropped = {u for u in source["train-clean"] if u.split("-")[0] in {"1009", "1012"}}
    assert dropped and set(ids) | dropped == {u for s in source.values() for u in s}
    for subset in split.OUTPUT_SUBSETS:  # transcripts and audio are the source's
        for utt_id, text in written[subset].items():
            origin = next(s for s in split.SOURCE_SUBSETS if utt_id in source[s])
            assert text == source[origin][utt_id]
            audio = next((out / subset).glob(f"*/*/{utt_id}.flac"))
            assert audio.is_symlink() and Path(os.readlink(audio)).is_absolute()
            assert audio.read_bytes() == next((corpus / origin).glob(f"*/*/{utt_id}.flac")).read_bytes()
    result = json.loads((out / "split.json").read_text())
    assert [h["id"] for h in result["held_out"]] == ["1009", "1012"]
    assert result["held_out"][0]["name"] == "voice 1009"
    assert {s: r["utterances"] for s, r in result["subsets"].items()} == {
        s: len(written[s]) for s in split.OUTPUT_SUBSETS
    }
    assert result["dropped"]["held-out train-clean"]["utterances"] == len(dropped)
    assert result["subsets"]["train-clean"]["seconds"] > 0
    assert (out / "SPEAKERS.TXT").is_file()


def test_two_runs_give_identical_output_and_copy_copies(corpus, tmp_path):
    args = ["--corpus", str(corpus), "--holdout", "1002"]
    assert split.main([*args, "--out", str(tmp_path / "a")]) == 0
    assert split.main([*args, "--out", str(tmp_path / "b")]) == 0
    assert listing(tmp_path / "a") == listing(tmp_path / "b")
    assert split.main([*args, "--out", str(tmp_path / "c"), "--copy"]) == 0
    copied = [p for p in (tmp_path / "c").rglob("*.flac")]
    assert copied and not any(p.is_symlink() for p in copied)
    assert len(copied) == len(list((tmp_path / "a").rglob("*.flac")))


def test_a_sentence_in_two_subsets_is_refused(corpus, tmp_path):
    train = next((corpus / "train-clean" / "1001").glob("*/*.trans.txt"))
    test = next((corpus / "test-clean" / "1002").glob("*/*.trans.txt"))
    sentence = train.read_text().splitlines()[0].partition(" ")[2]
    utt_id = test.read_text().splitlines()[0].partition(" ")[0]
    test.write_text(f"{utt_id} {sentence}\n" + "\n".join(test.read_text().splitlines()[1:]))
    with pytest.raises(split.SplitError, match=r"is in train-clean .* and test-clean"):
        split.make_split(split.SplitConfig(corpus, tmp_path / "out", ("1009",)))
    assert not (tmp_path / "out").exists()


def test_check_split_catches_a_held_out_voice_in_training(corpus):
    utterances = split.gather(corpus, "train-clean")
    subsets, _ = split.plan_split(utterances, ())
    with pytest.raises(split.SplitError, match="held-out speaker 1001 is in train-clean"):
        split.check_split(subsets, ("1001",))


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--holdout", "1001,4242"], "unknown speaker id 4242"),
        (["--holdout", "1001,abc"], "'abc' is not a speaker id"),
        (["--holdout", ",".join(SPEAKERS)], "no training voice would be left"),
        (["--out-exists"], "exists (use --force"),
    ],
)
def test_errors_are_one_line_with_exit_status_2(corpus, tmp_path, extra, message):
    out = tmp_path / "out"
    if extra == ["--out-exists"]:
        out.mkdir()
        extra = []
    command = [sys.executable, str(SCRIPT), "--corpus", str(corpus), "--out", str(out), *extra]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and message in result.stderr
    assert not out.exists() or not any(out.iterdir())


def test_force_replaces_an_existing_output(corpus, tmp_path):
    out = tmp_path / "out"
    (out / "stale").mkdir(parents=True)
    assert split.main(["--corpus", str(corpus), "--out", str(out), "--holdout", "1001", "--force"]) == 0
    assert not (out / "stale").exists() and (out / "split.json").is_file()
