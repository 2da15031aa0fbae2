"""tools/thin_shards.py: every N-th utterance kept, a readable shard directory, its own mean/std, errors."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np

from asr import data
from asr.shards import read_utterances

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPT = REPO_ROOT / "tools" / "thin_shards.py"

spec = importlib.util.spec_from_file_location("thin_shards", SCRIPT)
thin_shards = importlib.util.module_from_spec(spec)
spec.loader.exec_module(thin_shards)


def utterances_of(directory: Path) -> list[dict]:
    return [u for file in data.open_shards(directory).files for u in read_utterances(Path(file))]


def test_every_other_utterance_of_each_shard_is_kept_with_its_own_statistics(tiny_shards, tmp_path):
    source, out = tiny_shards / "train", tmp_path / "half" / "train"
    manifest = thin_shards.thin(source, out, every=2)

    per_shard = [list(read_utterances(Path(file))) for file in data.open_shards(source).files]
    expected = [u for shard in per_shard for u in shard[::2]]
    kept = utterances_of(out)
    assert [u["utt_id"] for u in kept] == [u["utt_id"] for u in expected]
    for got, want in zip(kept, expected, strict=True):
        np.testing.assert_array_equal(got["features"], want["features"])
        np.testing.assert_array_equal(got["labels"], want["labels"])

    frames = np.concatenate([u["features"] for u in kept]).astype(np.float64)
    thinned = data.open_shards(out)
    np.testing.assert_allclose(thinned.mean, frames.mean(axis=0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(thinned.std, frames.std(axis=0), rtol=1e-4, atol=1e-4)
    assert manifest["counts"]["kept"] == len(kept) == thinned.utterances
    assert manifest["counts"]["frames_kept"] == frames.shape[0]
    assert manifest["thinned"] == {"source": str(source.resolve()), "every": 2}


def test_every_one_keeps_everything(tiny_shards, tmp_path):
    source = tiny_shards / "train"
    thin_shards.thin(source, tmp_path / "all", every=1)
    assert [u["utt_id"] for u in utterances_of(tmp_path / "all")] == [
        u["utt_id"] for u in utterances_of(source)
    ]


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=120, cwd=REPO_ROOT
    )


def test_bad_input_is_one_line_with_exit_2_and_nothing_is_replaced(tiny_shards, tmp_path):
    source = str(tiny_shards / "train")
    result = run(source, "--every", "0", "--out", str(tmp_path / "x"))
    assert result.returncode == 2
    assert result.stderr.strip() == "thin_shards: error: --every 0: must be at least 1"
    assert not (tmp_path / "x").exists()

    result = run(str(tmp_path / "nowhere"), "--out", str(tmp_path / "y"))
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "nowhere" in result.stderr

    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "keep.txt").write_text("mine")
    result = run(source, "--out", str(existing))
    assert result.returncode == 2 and "--force" in result.stderr
    assert (existing / "keep.txt").read_text() == "mine"
