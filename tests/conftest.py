"""Shared fixtures: the bundled tiny corpus and running ``python -m`` entry points as real processes."""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
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


def built_once(tmp_path_factory, name: str, build: Callable[[Path], None]) -> Path:
    """``build(path)`` once per test run, then its result: with pytest-xdist, once for every worker process
    (the first builds under a lock, the others wait and reuse it). Its users must only read it."""
    base = tmp_path_factory.getbasetemp()
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base  # workers: <root>/popen-gwN
    path, done = root / name, root / f"{name}.done"
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():
            shutil.rmtree(path, ignore_errors=True)
            build(path)
            done.touch()
    return path


def _extract_tiny(out: Path) -> None:
    for subset, split in (("train-clean", "train"), ("dev-clean", "dev")):
        result = subprocess.run(
            [sys.executable, "-m", "asr.extract", "--corpus", str(TINY_CORPUS), "--subsets", subset,
             "--out", str(out / split), "--workers", "2"],
            cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr[-2000:]


@pytest.fixture(scope="session")
def tiny_shards(tmp_path_factory) -> Path:
    """``asr.extract`` output of the tiny corpus, once per test run: ``train/`` and ``dev/`` under the path
    (read only: a test that damages shards copies them first)."""
    return built_once(tmp_path_factory, "tiny-shards", _extract_tiny)


@pytest.fixture(scope="session")
def run_module_limited():
    """Like ``run_module``, with every file the process writes limited to ``limit`` bytes."""

    def run(module: str, *args: str, limit: int, timeout: float = 300) -> subprocess.CompletedProcess:
        return run_python_module(module, *args, timeout=timeout, limit=limit)

    return run


TINY_RECIPE = [
    "model.conv_filters=8", "model.rnn_layers=1", "model.rnn_units=8", "train.global_batch=4",
    "train.epochs=1", "eval.mode=loss", "eval.lm=", "eval.beam_width=2", "eval.decode_workers=1",
]  # fmt: skip


@pytest.fixture(scope="session")
def tiny_run(tiny_shards, tmp_path_factory) -> Path:
    """A run directory of ``asr.train`` holding one checkpoint of a tiny model (one epoch, ~10 s), trained
    once per test run; each test process gets its own copy (tests may write evaluations into it)."""

    def train(run_dir: Path) -> None:
        command = [sys.executable, "-m", "asr.train", "recipes/cpu.yaml", "--run-dir", str(run_dir)]
        for item in (f"data.train={tiny_shards / 'train'}", f"data.dev={tiny_shards / 'dev'}", *TINY_RECIPE):
            command += ["--set", item]
        result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]

    trained = built_once(tmp_path_factory, "tiny-run", train)
    return Path(shutil.copytree(trained, tmp_path_factory.mktemp("runs") / "tiny"))


LONGEST_FIRST = ("test_faults.py", "test_train.py", "test_evaluators.py", "test_e2e.py", "test_session.py",
                 "test_evaluate.py")  # fmt: skip
"""Modules whose tests take longest (``make test`` lists the slowest), run first: with several test
processes (pytest-xdist) the long ones start early and the short ones fill in, so the processes finish
together."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        name = item.path.name
        return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: each module keeps its own order
