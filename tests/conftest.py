"""Shared fixtures: the bundled tiny corpus and running ``python -m`` entry points as real processes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
TINY_CORPUS = REPO_ROOT / "data" / "tiny"


@pytest.fixture(scope="session")
def tiny_corpus() -> Path:
    """The LibriSpeech-layout corpus in ``data/tiny`` (subsets ``train-clean`` and ``dev-clean``)."""
    return TINY_CORPUS


def run_python_module(module: str, *args, timeout: float, limit: int | None = None):
    """``python -m MODULE ARGS...`` from the repository root as a real process; ``limit``: every file it
    writes is limited to that many bytes (RLIMIT_FSIZE, as a full disk would stop it: Python ignores
    SIGXFSZ, so a write past the limit fails with EFBIG)."""
    import resource

    limited = None if limit is None else (lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit)))
    return subprocess.run(
        [sys.executable, "-m", module, *map(str, args)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        preexec_fn=limited,
    )


@pytest.fixture(scope="session")
def run_module():
    """Run ``python -m MODULE ARGS...`` from the repository root; returns the CompletedProcess."""

    def run(module: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return run_python_module(module, *args, timeout=timeout)

    return run


@pytest.fixture(scope="session")
def tiny_shards(tmp_path_factory, tiny_corpus) -> Path:
    """``asr.extract`` output of the tiny corpus, once per session: ``train/`` and ``dev/`` under the path."""
    out = tmp_path_factory.mktemp("tiny-shards")
    for subset, split in (("train-clean", "train"), ("dev-clean", "dev")):
        result = subprocess.run(
            [sys.executable, "-m", "asr.extract", "--corpus", str(tiny_corpus), "--subsets", subset,
             "--out", str(out / split), "--workers", "2"],
            cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr[-2000:]
    return out


@pytest.fixture(scope="session")
def run_module_limited():
    """Like ``run_module``, with every file the process writes limited to ``limit`` bytes."""

    def run(module: str, *args: str, limit: int, timeout: float = 300) -> subprocess.CompletedProcess:
        return run_python_module(module, *args, timeout=timeout, limit=limit)

    return run
