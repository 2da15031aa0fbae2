"""Shared fixtures: the bundled tiny corpus and running ``python -m`` entry points as real processes."""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
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


TINY_RECIPE = "recipes/tiny.yaml"
"""The tests' recipe: the tiny model, which every test trains, changing only what it must with --set."""
TINY_RUN_SETS = ("train.epochs=1", "eval.mode=loss")


@pytest.fixture(scope="session")
def tiny_run(tiny_shards, tmp_path_factory) -> Path:
    """A run directory of ``asr.train`` holding one checkpoint of a tiny model (one epoch, ~10 s), trained
    once per test run; each test process gets its own copy (tests may write evaluations into it)."""

    def train(run_dir: Path) -> None:
        command = [sys.executable, "-m", "asr.train", TINY_RECIPE, "--run-dir", str(run_dir)]
        for item in (
            f"data.train={tiny_shards / 'train'}",
            f"data.dev={tiny_shards / 'dev'}",
            *TINY_RUN_SETS,
        ):
            command += ["--set", item]
        result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]

    trained = built_once(tmp_path_factory, "tiny-run", train)
    return Path(shutil.copytree(trained, tmp_path_factory.mktemp("runs") / "tiny"))


PERMISSION_CAPABILITIES = (1, 2)
"""CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH: what lets root read, search and write whatever the permission
bits say."""


def _libcap():
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("cap")
    if name is None:
        pytest.skip("running as root without libcap: permission bits cannot be made to apply")
    libcap = ctypes.CDLL(name, use_errno=True)
    libcap.cap_get_proc.restype = ctypes.c_void_p
    integer, pointer = ctypes.c_int, ctypes.c_void_p
    libcap.cap_set_flag.argtypes = [pointer, integer, integer, pointer, integer]
    libcap.cap_set_proc.argtypes = [ctypes.c_void_p]
    libcap.cap_free.argtypes = [ctypes.c_void_p]
    return libcap


def _set_permission_capabilities(libcap, raised: bool) -> None:
    import ctypes

    state = libcap.cap_get_proc()
    values = (ctypes.c_int * len(PERMISSION_CAPABILITIES))(*PERMISSION_CAPABILITIES)
    try:
        # 0: CAP_EFFECTIVE; 1/0: CAP_SET/CAP_CLEAR
        assert libcap.cap_set_flag(state, 0, len(values), values, int(raised)) == 0
        assert libcap.cap_set_proc(state) == 0, ctypes.get_errno()
    finally:
        libcap.cap_free(state)


@contextlib.contextmanager
def permission_bits_apply() -> Iterator[None]:
    """Within the block, file permission bits apply to this thread even when the tests run as root (who
    reads a ``chmod 000`` directory and writes a read-only one): the two capabilities that let root
    ignore them (:data:`PERMISSION_CAPABILITIES`) leave the thread's effective set and come back after."""
    if os.geteuid() != 0:
        yield
        return
    libcap = _libcap()
    _set_permission_capabilities(libcap, raised=False)
    try:
        yield
    finally:
        _set_permission_capabilities(libcap, raised=True)


@pytest.fixture(scope="session")
def permission_bits():
    """:func:`permission_bits_apply` (a context manager) for tests of unreadable and read-only files."""
    return permission_bits_apply


@dataclasses.dataclass(frozen=True)
class MemorizedRun:
    """A run of a small model trained until it says the words of a few training utterances."""

    run_dir: Path
    audio: tuple[Path, ...]
    """The utterances it learned (flac files of the tiny corpus), in id order."""
    texts: tuple[str, ...]
    """Their normalized transcripts."""
    shards: Path
    """``asr.extract`` output of these utterances, one copy each."""


MEMORIZED_UTTERANCES = 4
MEMORIZED_COPIES = 8
"""Copies of each utterance per epoch: 8 steps of 4 per epoch instead of 1."""
MEMORIZED_RECIPE = [
    "model.conv_filters=64", "model.rnn_layers=1", "model.rnn_units=64", "model.dropout=0",
    "data.spec_augment=false", "data.tempo_range=[1.0,1.0]", "train.epochs=18", "train.learning_rate=5e-3",
    "train.learning_rate_decay_from_epoch=100", "eval.mode=loss", "eval.every_epochs=100",
]  # fmt: skip
"""The tiny recipe's changes for a model four times wider, without augmentation, that learns four
utterances by heart. Measured: 144 steps (~3 s of training, ~25 s with TensorFlow's start-up) take the
training loss to ~0.01; the greedy text of each utterance is then its transcript."""


@pytest.fixture(scope="session")
def memorized_run(tiny_corpus, tmp_path_factory) -> MemorizedRun:
    """:class:`MemorizedRun` of the tiny corpus's four shortest training utterances, trained once per test
    run (read only: a test that writes into the run copies it first): a model whose output is real words
    (the ``tiny_run`` model's is letters at random), for tests that must see the right words come out of
    the real model."""
    import soundfile

    from asr.text import normalize

    found = sorted((tiny_corpus / "train-clean").rglob("*.flac"), key=lambda p: (soundfile.info(p).frames, p))
    chosen = tuple(sorted(found[:MEMORIZED_UTTERANCES]))
    transcripts = dict(
        line.split(" ", 1) for p in tiny_corpus.rglob("*.trans.txt") for line in p.read_text().splitlines()
    )
    texts = tuple(normalize(transcripts[p.stem]) for p in chosen)
    out = built_once(tmp_path_factory, "memorized", lambda path: _train_memorized(path, chosen, texts))
    return MemorizedRun(out / "run", chosen, texts, out / "once")


def _train_memorized(out: Path, chosen: tuple[Path, ...], texts: tuple[str, ...]) -> None:
    import json

    out.mkdir(parents=True)
    for name, copies in (("train", MEMORIZED_COPIES), ("once", 1)):
        rows = [{"audio": str(p), "text": text, "id": f"{p.stem}-{k}" if copies > 1 else p.stem}
                for k in range(copies) for p, text in zip(chosen, texts, strict=True)]  # fmt: skip
        (out / f"{name}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
        result = subprocess.run(
            [sys.executable, "-m", "asr.extract", "--manifest-input", str(out / f"{name}.jsonl"),
             "--out", str(out / name), "--workers", "2", "--quiet"],
            cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr[-2000:]
    command = [sys.executable, "-m", "asr.train", TINY_RECIPE, "--run-dir", str(out / "run")]
    for item in (f"data.train={out / 'train'}", f"data.dev={out / 'once'}", *MEMORIZED_RECIPE):
        command += ["--set", item]
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]


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
