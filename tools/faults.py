#!/usr/bin/env python3
"""Fault injection: the real pipeline commands as processes, a fault each, and the guarantees checked.

    python tools/faults.py --quick            # CI: a few trials on data/tiny (< 2 minutes, 2 idle cores)
    python tools/faults.py                    # full: every trial below, data/tiny and ../shared/minilibri
    python tools/faults.py --only train-kill,disk-full --seed 3 --work /tmp/f --keep --json rows.json

Every trial runs ``python -m asr.extract``/``asr.train``/``asr.evaluate``/``asr.lm``/``asr.report`` as
processes, injects one fault and checks what the program promises (``docs/train.md``, ``asr/files.py``,
``asr/checkpoint.py``, ``asr/shardset.py``). A trial passes only when every one of its checks holds; the
first failed checks are named in its row. Faults:

- ``train-kill``: SIGKILL a training run (at a random time, or inside a checkpoint write or an evaluation
  through ``ASR_FAILPOINTS``), rerun it: it must resume from the newest complete checkpoint with its run
  clock, and end exactly where an uninterrupted run ends (same step losses, bit-identical weights).
- ``extract-kill``: SIGKILL feature extraction (the main process at a random time, or a worker through the
  ``extract.shard`` fail point), rerun it: the output must be byte-identical to an uninterrupted run's.
- ``checkpoint-damage``: cut, empty, corrupt or delete the newest checkpoint's files: training and
  evaluation must fall back to the older one with one warning; with every checkpoint damaged, exit 2.
- ``events-cut``: cut the event log's last line (a kill mid-write): resuming and the report must cope.
- ``disk-full``: shards, checkpoints, the event log, evaluation results each on a full filesystem (a small
  tmpfs, or RLIMIT_FSIZE where mounting is not possible): one line naming the path, nothing damaged, and
  the same command completes once space is back.
- ``corrupt-input``: damaged or missing shards for training, evaluation and the LM build (warnings, or exit 2
  with ``--strict``); a FLAC file that decodes to garbage (skipped and counted by extraction).
- ``worker-kill``: SIGKILL one of two multi-worker training processes: the other stops with one line naming
  the lost worker, and both resume to the same weights.
- ``nan-inject``: non-finite steps through the ``train.step`` fail point: skipped and counted, or the run
  stops with the last good weights saved.

Every random choice comes from ``random.Random(--seed)``, drawn for every fault in a fixed order before
anything runs, so a seed names the same trials with or without ``--only`` and ``--jobs``. Trials run
``--jobs`` at a time (worker-kill alone, at the end). The table goes to stdout as
Markdown, then a per-fault summary and the wall time; progress goes to stderr. Exit status 0 when every
trial passed, 1 otherwise, 2 for bad options.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from asr.tta import active_events  # noqa: E402  (pure Python: the TTA tracker's view of a resumed log)

TINY_CORPUS = REPO_ROOT / "data" / "tiny"
MINILIBRI = REPO_ROOT.parent / "shared" / "minilibri"
FAULTS = ("train-kill", "extract-kill", "checkpoint-damage", "events-cut", "disk-full", "corrupt-input",
          "worker-kill", "nan-inject")  # fmt: skip
EXCLUSIVE = {"worker-kill"}
"""Faults whose trials run alone, after the others: two training processes and a heartbeat timeout."""
NO_REFERENCE = {"extract-kill", "nan-inject", "corrupt-input"}
"""Faults whose trials need no reference training run (only corrupt-input's asr.evaluate rows copy one)."""
TINY_MODEL = ("model.conv_filters=16", "model.rnn_layers=2", "model.rnn_units=16", "train.global_batch=4",
              "eval.lm=", "eval.beam_width=4", "eval.decode_workers=1", "train.sample_every_steps=3",
              "train.checkpoint_every_steps=3")  # fmt: skip
"""tests/test_train.py's tiny model, with a checkpoint every 3 steps (an epoch has 4-5): mid-epoch
checkpoints, so that resuming from one must also restore the data position."""
MINILIBRI_MODEL = ("model.rnn_units=64", "model.rnn_layers=2", "train.global_batch=16", "eval.lm=",
                   "eval.beam_width=4", "eval.decode_workers=1", "train.checkpoint_every_steps=20",
                   "train.epochs=2", "eval.mode=resident")  # fmt: skip
WORKER_SETS = ("runtime.strategy=multi_worker", "train.epochs=8", "eval.mode=external",
               "train.checkpoint_every_steps=2")  # fmt: skip
FAST_RERUN = ("eval.mode=external",)
"""Reruns of a finished run (damage, cut log, full disk) train one more epoch without evaluating it."""
DAMAGE_KINDS = ("truncate-data", "empty-index", "flip-data", "delete-data")
DISK_TARGETS = ("shards", "checkpoints", "events", "eval-results")
CORRUPT_ROWS = ("bad-shards:train", "bad-shards:evaluate", "bad-shards:lm", "missing-shard:train",
                "missing-shard:evaluate", "missing-shard:lm", "bad-flac:extract")  # fmt: skip
TMPFS_BYTES = 8 << 20
WARNING_LINE = re.compile(r"\bwarning: ")
"""The pipeline's own warning lines (``asr.train: warning: ...``), not Python's ``...Warning:`` ones."""
FILE_SIZE_LIMIT = (
    "import os, resource, sys; n = int(sys.argv[1]); "
    "resource.setrlimit(resource.RLIMIT_FSIZE, (n, n)); os.execv(sys.argv[2], sys.argv[2:])"
)
"""Runs a command under RLIMIT_FSIZE (the thread-safe form of ``preexec_fn=setrlimit``: the harness runs
trials from threads). Python ignores SIGXFSZ and the exec keeps it ignored, so writes fail with EFBIG."""


# --------------------------------------------------------------------------- rows and checks


@dataclasses.dataclass
class Trial:
    """One row of the table. ``passed`` only when every check of the trial held."""

    fault: str
    corpus: str
    where: str
    """Where the fault struck (the last event before a kill, the damaged file, the full filesystem)."""
    did: str
    """What the program did; failed checks follow ``FAILED:``."""
    lost: str = "—"
    """Work lost to the fault (and redone), or input lost (utterances not used)."""
    equal: str = "—"
    """Whether the outcome equals an uninterrupted run's, where the trial can tell."""
    passed: bool = False
    seconds: float = 0.0


class Checks:
    """The checks of one trial: what the program did (notes) and each check that failed."""

    def __init__(self) -> None:
        self.notes: list[str] = []
        self.failed: list[str] = []

    def note(self, text: str) -> None:
        self.notes.append(text)

    def expect(self, ok: object, failure: str) -> bool:
        if not ok:
            self.failed.append(failure)
        return bool(ok)

    def row(self, fault: str, corpus: str, where: str, lost: str = "—", equal: str = "—") -> Trial:
        did = "; ".join(self.notes) or "—"
        if self.failed:
            did += " — FAILED: " + "; ".join(self.failed)
        return Trial(fault, corpus, where, did, lost, equal, passed=not self.failed)


class SetupError(RuntimeError):
    """A shared fixture (shards, reference run) could not be made; every trial needing it fails."""


# --------------------------------------------------------------------------- processes


@dataclasses.dataclass
class Finished:
    """A command's exit status (None: timed out, or still running when killed), output and wall time."""

    code: int | None
    stdout: str
    stderr: str
    seconds: float

    @property
    def lines(self) -> list[str]:
        """Non-empty stderr lines as a terminal shows them: a progress bar redrawn with ``\\r`` and erased
        (tqdm's ``leave=False``) is not a line."""
        visible = (line.rsplit("\r", 1)[-1] for line in self.stderr.split("\n"))
        return [line for line in visible if line.strip()]

    @property
    def last_line(self) -> str:
        return self.lines[-1].strip() if self.lines else ""

    @property
    def warnings(self) -> list[str]:
        return [line for line in self.lines if WARNING_LINE.search(line)]

    @property
    def traceback(self) -> bool:
        return "Traceback (most recent call last)" in self.stderr

    def describe(self) -> str:
        """``exit N: <last stderr line>`` (shortened), for a row."""
        code = "timed out" if self.code is None else f"exit {self.code}"
        return f"{code}: {shorten(self.last_line)}" if self.last_line else code


LIVE: set[Process] = set()
LIVE_LOCK = threading.Lock()
STOPPING = threading.Event()
"""Set on Ctrl-C: no new process starts, the running ones are killed."""


class Stopped(Exception):
    """The harness is stopping (Ctrl-C)."""


class Process:
    """A command started in a session of its own (so that its workers can be found and killed), its output
    copied to ``LOG.out``/``LOG.err`` by the harness: through pipes, so that a file-size limit on the
    command (RLIMIT_FSIZE) does not apply to its own stderr."""

    def __init__(self, command: Sequence[str], log: Path, env: dict[str, str] | None = None):
        if STOPPING.is_set():
            raise Stopped("interrupted")
        log.parent.mkdir(parents=True, exist_ok=True)
        self.log = log
        self.command = [str(c) for c in command]
        self.started = time.monotonic()
        self.popen = subprocess.Popen(
            self.command,
            cwd=REPO_ROOT,
            env=environment(env),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        self._copies = [
            threading.Thread(target=_copy, args=(pipe, Path(f"{log}{suffix}")), daemon=True)
            for pipe, suffix in ((self.popen.stdout, ".out"), (self.popen.stderr, ".err"))
        ]
        for copy in self._copies:
            copy.start()
        with LIVE_LOCK:
            LIVE.add(self)

    @property
    def code(self) -> int | None:
        return self.popen.poll()

    def wait(self, seconds: float) -> bool:
        """Wait until ``seconds`` after the start; True when the process has exited."""
        return self.wait_more(self.started + seconds - time.monotonic())

    def wait_more(self, seconds: float) -> bool:
        """Wait up to ``seconds`` from now; True when the process has exited."""
        try:
            self.popen.wait(timeout=max(0.0, seconds))
            return True
        except subprocess.TimeoutExpired:
            return False

    def kill(self) -> None:
        """SIGKILL the process itself (its workers, if any, live on as orphans)."""
        with contextlib.suppress(ProcessLookupError):
            self.popen.kill()
        self.popen.wait()

    def signal_group(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signum)

    def group_alive(self) -> bool:
        try:
            os.killpg(self.popen.pid, 0)
            return True
        except (ProcessLookupError, PermissionError):
            return False

    def end_group(self, grace: float = 0.0) -> bool:
        """Wait up to ``grace`` seconds for the whole group (orphaned workers included), then SIGKILL it;
        True when some of it was still alive then."""
        deadline = time.monotonic() + grace
        while self.group_alive() and time.monotonic() < deadline:
            time.sleep(0.1)
        lingering = self.group_alive()
        self.signal_group(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=10)
        with LIVE_LOCK:
            LIVE.discard(self)
        return lingering

    def finish(self) -> Finished:
        for copy in self._copies:  # orphaned workers may hold the pipes open: what they wrote so far
            copy.join(timeout=5)
        read = lambda suffix: Path(f"{self.log}{suffix}").read_bytes().decode(errors="replace")  # noqa: E731
        return Finished(self.popen.poll(), read(".out"), read(".err"), time.monotonic() - self.started)


def _copy(pipe: IO[bytes], path: Path) -> None:
    with open(path, "wb") as out:
        while chunk := pipe.read1(1 << 16):
            out.write(chunk)
            out.flush()


def environment(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The harness's environment without fail points, plus ``extra``. A process that crashes (SIGSEGV,
    SIGABRT) writes its Python stack to its ``.err`` log (``PYTHONFAULTHANDLER``)."""
    env = {key: value for key, value in os.environ.items() if key != "ASR_FAILPOINTS"}
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env.setdefault("PYTHONFAULTHANDLER", "1")
    return {**env, **(extra or {})}


def failpoint(spec: str) -> dict[str, str]:
    return {"ASR_FAILPOINTS": spec}


def run(
    command: Sequence[str], log: Path, env: dict[str, str] | None = None, timeout: float = 900
) -> Finished:
    """Run a command to its end (SIGKILLed with its group after ``timeout`` s: exit status None)."""
    process = Process(command, log, env)
    exited = process.wait(timeout)
    process.end_group()
    finished = process.finish()
    return finished if exited else dataclasses.replace(finished, code=None)


def module(name: str, *args: object) -> list[str]:
    return [sys.executable, "-m", name, *map(str, args)]


def with_file_size_limit(command: Sequence[str], limit: int) -> list[str]:
    return [sys.executable, "-c", FILE_SIZE_LIMIT, str(limit), *map(str, command)]


def shorten(text: str, width: int = 160) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


# --------------------------------------------------------------------------- corpora, recipes, fixtures


@dataclasses.dataclass(frozen=True)
class Corpus:
    name: str
    directory: Path
    train: str
    dev: str
    shard_size: int | None
    """``--shard-size`` of the training split (tiny: 8, so that it has several shards)."""

    def extract_command(self, subset: str, out: Path) -> list[str]:
        command = module(
            "asr.extract", "--corpus", self.directory, "--subsets", subset, "--out", out, "--workers", 2
        )
        if self.shard_size and subset == self.train:
            command += ["--shard-size", str(self.shard_size)]
        return command


@dataclasses.dataclass(frozen=True)
class Shards:
    """Extracted training and development splits; ``train_seconds``: wall time of the training split's
    extraction (the reference for random kill times)."""

    corpus: Corpus
    train: Path
    dev: Path
    train_seconds: float


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """A training configuration: ``recipes/cpu.yaml`` with ``--set`` overrides, on one corpus's shards."""

    sets: tuple[str, ...]

    def command(self, shards: Shards, run_dir: Path, *extra: str) -> list[str]:
        command = module("asr.train", "recipes/cpu.yaml", "--run-dir", run_dir)
        for item in (f"data.train={shards.train}", f"data.dev={shards.dev}", *self.sets, *extra):
            command += ["--set", item]
        return command

    @property
    def epochs(self) -> int:
        return int([s for s in self.sets if s.startswith("train.epochs=")][-1].split("=", 1)[1])


@dataclasses.dataclass
class Reference:
    """An uninterrupted run: what every interrupted one must end equal to."""

    run: Path
    seconds: float
    steps: list[tuple[int, float]]
    """``(step, loss)`` of every active ``step`` event."""
    evaluated: list[int]
    saves: list[str]
    """Checkpoint names in the order they were saved (``checkpoint`` events), for fail-point kills."""
    final: str
    epochs: int


class Once:
    """A value made once, by the first thread that asks; the others wait for it."""

    def __init__(self, make: Callable[[], Any]):
        self.make = make
        self.lock = threading.Lock()
        self.done = False
        self.value: Any = None
        self.error: BaseException | None = None

    def get(self) -> Any:
        with self.lock:
            if not self.done:
                try:
                    self.value = self.make()
                except Exception as error:
                    self.error = error
                self.done = True
        if self.error is not None:
            raise SetupError(str(self.error)) from self.error
        return self.value


class Context:
    """The work directory, the shared fixtures (shards, reference runs) and the progress bar."""

    def __init__(self, work: Path, quick: bool, disk_method: str, minilibri: Path, bar):
        self.work = work
        self.quick = quick
        self.disk_method = disk_method
        self.bar = bar
        self.corpora = {
            "tiny": Corpus("tiny", TINY_CORPUS, "train-clean", "dev-clean", 8),
            "minilibri": Corpus("minilibri", minilibri, "train-clean", "dev-clean", None),
        }
        tiny_sets = (
            ("train.epochs=2", "eval.mode=resident") if quick else ("train.epochs=3", "eval.mode=swap")
        )
        self.configs = {
            "tiny": TrainConfig(TINY_MODEL + tiny_sets),
            "minilibri": TrainConfig(MINILIBRI_MODEL),
        }
        self._shared: dict[str, Once] = {}
        self._shared_lock = threading.Lock()
        self._shards = {name: Once(lambda name=name: self._extract(name)) for name in self.corpora}
        self._references = {name: Once(lambda name=name: self._reference(name)) for name in self.corpora}
        self._digests: dict[str, dict[str, str]] = {}
        self._tf_lock = threading.Lock()
        self._errors = threading.Lock()

    def say(self, text: str) -> None:
        self.bar.set_postfix_str(text[:60], refresh=True)

    def folder(self, fault: str, index: int, corpus: str) -> Path:
        path = self.work / fault / f"{index:02d}-{corpus}"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def shared(self, key: str, make: Callable[[], Any]) -> Any:
        """A value made once for every trial that asks for ``key``."""
        with self._shared_lock:
            once = self._shared.setdefault(key, Once(make))
        return once.get()

    def shards(self, corpus: str) -> Shards:
        return self._shards[corpus].get()

    def reference(self, corpus: str) -> Reference:
        return self._references[corpus].get()

    def _extract(self, name: str) -> Shards:
        """The training split, then the development split (2 workers each). The training split is also the
        reference output of extract-kill, and its wall time the span of its random kill times: extracted
        alone, so that the span is that of one extraction."""
        corpus = self.corpora[name]
        if not corpus.directory.is_dir():
            raise SetupError(f"corpus {corpus.directory} not found")
        self.say(f"extracting {name}")
        base = self.work / "shards" / name
        results = {}
        for split, subset in (("train", corpus.train), ("dev", corpus.dev)):
            result = run(corpus.extract_command(subset, base / split), base / f"extract-{split}")
            if result.code != 0:
                raise SetupError(f"asr.extract of {name} {subset}: {result.describe()}")
            results[split] = result
        return Shards(corpus, base / "train", base / "dev", results["train"].seconds)

    def _reference(self, name: str) -> Reference:
        shards = self.shards(name)
        self.say(f"reference run {name}")
        run_dir = self.work / "references" / name
        result = run(self.configs[name].command(shards, run_dir), self.work / "references" / f"{name}-train")
        if result.code != 0:
            raise SetupError(f"reference training run on {name}: {result.describe()}")
        events, _ = read_event_log(run_dir)
        active = active_events(events)
        saves = [Path(e["path"]).name for e in events if e.get("event") == "checkpoint"]
        return Reference(
            run=run_dir,
            seconds=result.seconds,
            steps=step_losses(active),
            evaluated=[e["epoch"] for e in active if e.get("event") == "eval"],
            saves=saves,
            final=checkpoints(run_dir)[-1].name,
            epochs=self.configs[name].epochs,
        )

    def weights(self, prefix: Path) -> dict[str, str]:
        """SHA-256 of every model weight of a checkpoint (keys ``model/`` and
        ``optimizer/_trainable_variables/``, as tests/test_train.py ``model_weights``), read with
        ``tf.train.load_checkpoint``; optimizer slots excluded."""
        key = str(prefix.resolve())
        with self._tf_lock:
            if key not in self._digests:
                os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
                import numpy as np
                import tensorflow as tf

                reader = tf.train.load_checkpoint(str(prefix))
                self._digests[key] = {
                    name: hashlib.sha256(np.ascontiguousarray(reader.get_tensor(name)).tobytes()).hexdigest()
                    for name in reader.get_variable_to_shape_map()
                    if name.startswith(("model/", "optimizer/_trainable_variables/"))
                }
            return self._digests[key]

    def attempt(self, fault: str, corpus: str, make: Callable[[], Trial]) -> Trial:
        """One trial; a harness or setup error fails it (the traceback goes to WORK/errors.log) and the
        other trials go on."""
        began = time.monotonic()
        try:
            trial = make()
        except Exception as error:
            with self._errors, open(self.work / "errors.log", "a") as log:
                log.write(f"--- {fault} ({corpus})\n{traceback.format_exc()}\n")
            kind = (
                "setup failed" if isinstance(error, SetupError) else f"harness error ({type(error).__name__})"
            )
            trial = Trial(fault, corpus, "—", f"{kind}: {shorten(str(error))}", passed=False)
        trial.seconds = time.monotonic() - began
        self.bar.update(1)
        self.say(f"{fault}: {'passed' if trial.passed else 'FAILED'}")
        return trial


# --------------------------------------------------------------------------- reading what the programs wrote


def read_event_log(run_dir: Path) -> tuple[list[dict], bool]:
    """The events of ``RUN/events.jsonl`` that parse, and whether its last line is cut (no newline)."""
    path = run_dir / "events.jsonl"
    if not path.is_file():
        return [], False
    data = path.read_bytes()
    events = []
    for line in data.decode(errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            if isinstance(record, dict) and "event" in record:
                events.append(record)
    return events, bool(data) and not data.endswith(b"\n")


def step_losses(events: Sequence[dict]) -> list[tuple[int, float]]:
    return [(int(e["step"]), float(e["loss"])) for e in events if e.get("event") == "step"]


@dataclasses.dataclass(frozen=True)
class Saved:
    """A complete checkpoint as a resumed run sees it: ``ckpt-N.json`` readable, ``ckpt-N.index`` present."""

    name: str
    step: int
    state: dict
    prefix: Path

    @property
    def elapsed(self) -> float:
        return float(self.state.get("clock", {}).get("elapsed", 0.0))


def checkpoints(run_dir: Path) -> list[Saved]:
    """Complete checkpoints of a run, oldest first, read from the files (not through asr.checkpoint)."""
    found = []
    directory = run_dir / "checkpoints"
    for state_file in directory.glob("ckpt-*.json") if directory.is_dir() else ():
        match = re.fullmatch(r"ckpt-(\d+)", state_file.stem)
        try:
            state = json.loads(state_file.read_text())
        except (OSError, ValueError):
            continue
        if match and isinstance(state, dict) and state_file.with_suffix(".index").is_file():
            found.append(Saved(state_file.stem, int(match.group(1)), state, state_file.with_suffix("")))
    return sorted(found, key=lambda saved: saved.step)


def leftovers(directory: Path) -> list[str]:
    """Temporary files a killed or failed writer left (``*.tmp-*``, TF's ``*_temp``)."""
    found = []
    for _, dirs, files in os.walk(directory, followlinks=True):
        found += [name for name in (*dirs, *files) if ".tmp-" in name or name.endswith("_temp")]
    return sorted(found)


def snapshot(directory: Path) -> dict[str, tuple[int, str]]:
    """``{relative path: (bytes, sha256)}`` of every file under ``directory`` (symlinks followed)."""
    files = {}
    for root, _, names in os.walk(directory, followlinks=True):
        for name in names:
            path = Path(root) / name
            data = path.read_bytes()
            files[str(path.relative_to(directory))] = (len(data), hashlib.sha256(data).hexdigest())
    return files


def changed_since(
    before: dict[str, tuple[int, str]],
    directory: Path,
    appended: Sequence[str] = (),
    prunable: str | None = None,
    rewritten: Sequence[str] = (),
) -> list[str]:
    """Files of ``before`` that are no longer what they were: ``appended`` files must still start with their
    old bytes, files matching ``prunable`` may be gone (old checkpoints the program pruned), ``rewritten``
    ones are not compared (a rerun rewrites ``recipe.yaml`` with its own ``--set`` values)."""
    changed = []
    for name, (size, digest) in sorted(before.items()):
        path = directory / name
        if name in rewritten:
            continue
        if not path.is_file():
            if not (prunable and re.match(prunable, name)):
                changed.append(f"{name} removed")
            continue
        data = path.read_bytes()
        data = data[:size] if name in appended else data
        if len(data) != size or hashlib.sha256(data).hexdigest() != digest:
            changed.append(f"{name} changed")
    return changed


def without(record: dict, *keys: str) -> dict:
    return {k: v for k, v in record.items() if k not in keys}


def compare_extraction(out: Path, reference: Path) -> list[str]:
    """Differences from a reference extraction: every shard byte for byte, sidecars and manifest.json
    without their timing fields (``worker_seconds``, ``worker_cpu_seconds``; ``extraction_seconds``,
    ``split``: tests/test_extract.py ``manifest_without_timing``)."""
    problems = []
    shards = sorted(p.name for p in out.glob("shard-*"))
    expected = sorted(p.name for p in reference.glob("shard-*"))
    if shards != expected:
        problems.append(f"shard files {shards} instead of {expected}")
    for name in set(shards) & set(expected):
        if (out / name).read_bytes() != (reference / name).read_bytes():
            problems.append(f"{name} differs")
    for sidecar in sorted((reference / "sidecars").glob("*.json")):
        mine = out / "sidecars" / sidecar.name
        timing = ("worker_seconds", "worker_cpu_seconds")
        if not mine.is_file() or without(json.loads(mine.read_text()), *timing) != without(
            json.loads(sidecar.read_text()), *timing
        ):
            problems.append(f"sidecars/{sidecar.name} differs")
    manifest = out / "manifest.json"
    timing = ("extraction_seconds", "split")
    if not manifest.is_file():
        problems.append("no manifest.json")
    elif without(json.loads(manifest.read_text()), *timing) != without(
        json.loads((reference / "manifest.json").read_text()), *timing
    ):
        problems.append("manifest.json differs")
    return problems


def copy_run(source: Path, destination: Path) -> Path:
    shutil.copytree(source, destination, symlinks=True)
    return destination


# --------------------------------------------------------------------------- damaging files


def flip_bytes(path: Path, fractions: Sequence[float], start: int = 0) -> str:
    """Invert the bytes at ``fractions`` of ``path`` after offset ``start`` (size kept); says which."""
    data = bytearray(path.read_bytes())
    positions = sorted({start + min(int(f * (len(data) - start)), len(data) - start - 1) for f in fractions})
    for position in positions:
        data[position] ^= 0xFF
    path.write_bytes(bytes(data))
    return (
        f"{path.name}: {len(positions)} byte(s) inverted at {', '.join(map(str, positions))} of {len(data)}"
    )


def cut_file(path: Path, fraction: float, start: int = 0) -> str:
    """Truncate ``path`` at ``fraction`` of its bytes after ``start``; says where."""
    size = path.stat().st_size
    keep = start + int(fraction * (size - start))
    with open(path, "r+b") as handle:
        handle.truncate(keep)
    return f"{path.name} cut to {keep} of {size} bytes"


def flac_audio_start(path: Path) -> int:
    """Offset of a FLAC file's first audio frame (after ``fLaC`` and its metadata blocks)."""
    data = path.read_bytes()
    offset = 4
    while offset + 4 <= len(data):
        header = data[offset]
        offset += 4 + int.from_bytes(data[offset + 1 : offset + 4], "big")
        if header & 0x80:  # last metadata block
            break
    return offset


def damage_checkpoint(saved: Saved, kind: str, fractions: Sequence[float]) -> str:
    """Damage one checkpoint's TF files as a disk or a careless copy would; says what was done."""
    (data,) = sorted(saved.prefix.parent.glob(f"{saved.name}.data-*"))
    index = saved.prefix.parent / f"{saved.name}.index"
    if kind == "truncate-data":
        return cut_file(data, fractions[0])
    if kind == "empty-index":
        index.write_bytes(b"")
        return f"{index.name} emptied"
    if kind == "flip-data":
        return flip_bytes(data, fractions[:3])
    data.unlink()
    return f"{data.name} deleted"


# --------------------------------------------------------------------------- a full disk


def disk_full_method(work: Path) -> str:
    """``tmpfs`` when this process may mount one (root, and ``mount -t tmpfs`` works), else ``rlimit``."""
    if os.geteuid() != 0 or not shutil.which("mount"):
        return "rlimit"
    probe = work / "tmpfs-probe"
    probe.mkdir(parents=True, exist_ok=True)
    mounted = (
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(probe)], capture_output=True
        ).returncode
        == 0
    )
    if mounted:
        subprocess.run(["umount", str(probe)], capture_output=True)
    probe.rmdir()
    return "tmpfs" if mounted else "rlimit"


MOUNTS: set[Path] = set()


class FullDisk:
    """Where a write must fail: a small tmpfs at ``mount`` filled by a filler file to leave ``leave`` bytes
    (a real ENOSPC), or, without tmpfs, RLIMIT_FSIZE ``limit`` on every file the command writes (EFBIG).

    ``command()`` wraps a command for the fault; ``lift()`` deletes the filler (or drops the limit); the
    tmpfs is unmounted when the ``with`` block ends.
    """

    def __init__(self, method: str, mount: Path, leave: int, limit: int):
        self.method, self.mount, self.leave, self.limit = method, mount, leave, limit
        self.filler = mount / "filler"
        self.lifted = False

    def __enter__(self) -> FullDisk:
        self.mount.mkdir(parents=True, exist_ok=True)
        if self.method == "tmpfs":
            subprocess.run(
                ["mount", "-t", "tmpfs", "-o", f"size={TMPFS_BYTES}", "tmpfs", str(self.mount)],
                check=True,
                capture_output=True,
            )
            MOUNTS.add(self.mount)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.method == "tmpfs":
            unmount(self.mount)

    def fill(self) -> None:
        """Fill the tmpfs to leave ``leave`` bytes free (nothing to do under RLIMIT)."""
        if self.method != "tmpfs":
            return
        stat = os.statvfs(self.mount)
        size = max(0, stat.f_bavail * stat.f_frsize - self.leave)
        with open(self.filler, "wb") as handle:
            os.posix_fallocate(handle.fileno(), 0, max(size, 1))

    def free(self) -> int:
        stat = os.statvfs(self.mount)
        return stat.f_bavail * stat.f_frsize

    def command(self, command: Sequence[str]) -> list[str]:
        if self.method == "rlimit" and not self.lifted:
            return with_file_size_limit(command, self.limit)
        return list(map(str, command))

    def lift(self) -> None:
        self.lifted = True
        self.filler.unlink(missing_ok=True)

    def describe(self, what: str) -> str:
        """Where the fault was put and how it was targeted, for the row."""
        if self.method == "tmpfs":
            return (
                f"{what} alone on a tmpfs of {TMPFS_BYTES >> 20} MiB, {kib(self.free())} left free (filler)"
            )
        return f"{what}: RLIMIT_FSIZE={self.limit} B on every file the command writes (tmpfs not used)"


def unmount(path: Path) -> None:
    result = subprocess.run(["umount", str(path)], capture_output=True)
    if result.returncode != 0:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)
    MOUNTS.discard(path)


def plural(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def kib(n: int) -> str:
    return f"{n / 1024:.0f} KiB"


# --------------------------------------------------------------------------- planning (every random draw)


def plan(seed: int, quick: bool) -> dict[str, list[dict]]:
    """Every trial's parameters, drawn from one ``random.Random(seed)`` in a fixed order for every fault,
    selected or not: a seed names the same trials in a full run, an ``--only`` run and any ``--jobs``.
    Times, offsets and counts that depend on a reference run are drawn as fractions and scaled then."""
    rng = random.Random(seed)
    planners = {
        "train-kill": plan_train_kill,
        "extract-kill": plan_extract_kill,
        "checkpoint-damage": plan_checkpoint_damage,
        "events-cut": plan_events_cut,
        "disk-full": plan_disk_full,
        "corrupt-input": plan_corrupt_input,
        "worker-kill": plan_worker_kill,
        "nan-inject": plan_nan_inject,
    }
    planned = {fault: planners[fault](rng, quick) for fault in FAULTS}
    return {fault: [{**spec, "index": i} for i, spec in enumerate(specs)] for fault, specs in planned.items()}


def _kill_spec(rng: random.Random, corpus: str, how: str) -> dict:
    return {"corpus": corpus, "how": how, "at": rng.random(), "k": rng.random(), "gap": rng.uniform(0.5, 2.0)}


def plan_train_kill(rng: random.Random, quick: bool) -> list[dict]:
    """Kinds in turn: a random time, a checkpoint write (before its weights, or between weights and state),
    an evaluation; full: 10 on tiny, 4 on minilibri; quick: 2 on tiny. One full-mode trial kills the first
    save (no checkpoint exists yet: the rerun starts afresh in a run directory that has a log)."""
    cycle = ("time", "checkpoint.state", "time", "evaluate", "checkpoint.weights")
    trials = [_kill_spec(rng, "tiny", cycle[i % len(cycle)]) for i in range(10)]
    trials += [
        _kill_spec(rng, "minilibri", ("time", "checkpoint.state", "evaluate", "time")[i]) for i in range(4)
    ]
    trials[4]["k"] = 0.0  # checkpoint.weights=kill@1
    if quick:
        return [
            trials[0],
            {**trials[1], "how": rng.choice(("checkpoint.state", "checkpoint.weights", "evaluate"))},
        ]
    return trials


def plan_extract_kill(rng: random.Random, quick: bool) -> list[dict]:
    """Full: 10 on minilibri train-clean (8 at a random time, 2 through the worker fail point); quick: 2 on
    tiny (one of each)."""
    full = [_kill_spec(rng, "minilibri", "extract.shard" if i in (3, 7) else "time") for i in range(10)]
    tiny = [_kill_spec(rng, "tiny", how) for how in ("time", "extract.shard")]
    return tiny if quick else full


def plan_checkpoint_damage(rng: random.Random, quick: bool) -> list[dict]:
    """Each damage kind on the newest checkpoint, then every checkpoint damaged; quick: one kind."""
    trials = [
        {"corpus": "tiny", "kind": kind, "fractions": [rng.random() for _ in range(3)]}
        for kind in DAMAGE_KINDS
    ]
    every = {
        "corpus": "tiny",
        "kind": "all",
        "kinds": [rng.choice(DAMAGE_KINDS) for _ in range(3)],
        "fractions": [rng.random() for _ in range(3)],
    }
    return [rng.choice(trials)] if quick else [*trials, every]


def plan_events_cut(rng: random.Random, quick: bool) -> list[dict]:
    trials = [{"corpus": "tiny", "at": rng.random()} for _ in range(2)]
    return trials[:1] if quick else trials


def plan_disk_full(rng: random.Random, quick: bool) -> list[dict]:
    trials = [{"corpus": "tiny", "target": target} for target in DISK_TARGETS]
    return [rng.choice(trials)] if quick else trials


def plan_corrupt_input(rng: random.Random, quick: bool) -> list[dict]:
    """The damage is drawn once (the same damaged shards serve training, evaluation and the LM build)."""
    damage = {
        "flip": rng.random(),
        "cut": rng.random(),
        "shards": rng.sample(range(3), 2),
        "missing": rng.randrange(3),
        "flac": rng.random(),
        "flac_how": rng.choice(("flip", "cut")),
        "flac_at": [rng.random() for _ in range(8)],
    }
    trials = [{"corpus": "tiny", "row": row, **damage} for row in CORRUPT_ROWS]
    return trials[:1] if quick else trials


def plan_worker_kill(rng: random.Random, quick: bool) -> list[dict]:
    """Worker 1, then worker 0 (the chief), after a random 2nd-4th checkpoint; skipped by --quick (two
    multi-worker starts take longer than the quick mode's budget)."""
    trials = [
        {"corpus": "tiny", "victim": victim, "after": rng.randint(2, 4), "gap": rng.uniform(0.5, 2.0)}
        for victim in (1, 0)
    ]
    return [] if quick else trials


def plan_nan_inject(rng: random.Random, quick: bool) -> list[dict]:
    """One poisoned batch (of the first 4 of one tiny epoch), then two in a row (after at least one good
    step) against a limit of 2; quick: one of the two."""
    trials = [
        {"corpus": "tiny", "row": "one", "k": rng.randint(1, 4)},
        {"corpus": "tiny", "row": "two", "k": rng.randint(2, 3)},
    ]
    return [rng.choice(trials)] if quick else trials


# --------------------------------------------------------------------------- train-kill


def train_kill(ctx: Context, specs: list[dict]) -> list[Trial]:
    """SIGKILL training and rerun the same command: it must resume exactly (see :func:`train_kill_trial`)."""
    return [
        ctx.attempt("train-kill", s["corpus"], lambda s=s: train_kill_trial(ctx, s["index"], s))
        for s in specs
    ]


def train_kill_trial(ctx: Context, index: int, spec: dict) -> Trial:
    """Kill a training run at a random time or at a fail point, wait 0.5-2 s, rerun the same command.

    Checks: the rerun's ``run_start`` resumes (``resumed``) at the newest complete checkpoint's step, counts
    the gap as downtime and restarts the run clock at that checkpoint's ``clock.elapsed`` (``restart_elapsed``
    exactly; the clock runs on from there while the model is restored, so ``elapsed`` is never before it); the
    active ``step`` losses equal the uninterrupted reference's exactly (same batches in the same order), each
    epoch is evaluated exactly once (no TTA gap), the final weights equal the reference's bit for bit (one
    CPU process computes deterministically), and no temporary checkpoint file is left.
    """
    corpus, how = spec["corpus"], spec["how"]
    shards, reference, config = ctx.shards(corpus), ctx.reference(corpus), ctx.configs[corpus]
    folder = ctx.folder("train-kill", index, corpus)
    run_dir = folder / "run"
    command = config.command(shards, run_dir)
    checks = Checks()
    at = spec["at"] * reference.seconds
    ended = False
    if how == "time":
        process = Process(command, folder / "killed")
        ended = process.wait(at)
        if not ended:
            process.kill()
        when = f"SIGKILL at {at:.1f} s of the reference's {reference.seconds:.0f} s"
    else:
        count = len(reference.saves) if how.startswith("checkpoint") else reference.epochs
        k = 1 + int(spec["k"] * count)
        rule = f"{how}=kill@{k}"
        process = Process(command, folder / "killed", failpoint(rule))
        process.wait(reference.seconds * 3 + 120)
        checks.expect(
            process.code == -signal.SIGKILL, f"fail point {rule} did not kill the run (exit {process.code})"
        )
        when = f"fail point {rule}"
        if how.startswith("checkpoint"):
            when += f" ({reference.saves[k - 1]})"
    process.end_group()
    events, cut = read_event_log(run_dir)
    where = f"{strike_point(events, how, spec, reference)}{' (its line cut)' if cut else ''}; {when}"
    if ended:
        where = f"not struck: the run ended (exit {process.code}) before the kill time {at:.1f} s"
    saved = checkpoints(run_dir)
    newest = saved[-1] if saved else None
    time.sleep(spec["gap"])
    rerun = run(command, folder / "rerun", timeout=reference.seconds * 4 + 120)
    checks.expect(rerun.code == 0, f"rerun {rerun.describe()}")
    after, _ = read_event_log(run_dir)
    check_resume(checks, after[len(events) :], newest, spec["gap"], rerun)
    equal = check_same_as_reference(ctx, checks, run_dir, after, reference)
    return checks.row("train-kill", corpus, where, lost_work(events, newest), equal)


def strike_point(events: Sequence[dict], how: str, spec: dict, reference: Reference) -> str:
    """The last thing the killed run logged, in words ("step 7", "evaluating epoch 2", ...)."""
    if how == "evaluate":
        return f"evaluating epoch {1 + int(spec['k'] * reference.epochs)}"
    last = next((e for e in reversed(events) if e.get("event") not in ("util", "sample")), None)
    if last is None:
        return "start-up (nothing logged yet)"
    kind, step, epoch = last["event"], last.get("step"), int(last.get("epoch", 0)) + 1
    if how.startswith("checkpoint"):
        return f"checkpoint write after step {step}"
    phase = last.get("phase")
    described = {
        "run_start": "start-up (run_start logged, no step yet)",
        "step": f"step {step} (epoch {epoch})",
        "checkpoint": f"just after checkpoint ckpt-{step}",
        "epoch_end": f"evaluating epoch {int(last.get('epoch', 0)) + 1} (just begun)",
        "eval": f"after evaluating epoch {epoch} (TTA update)",
        "target": f"after evaluating epoch {epoch} (TTA update)",
        "skipped_step": f"after a skipped step {step}",
        "run_end": "after run_end (exiting)",
    }.get(kind, f"{kind} at step {step}")
    if kind == "phase":  # an epoch-end phase carries the next epoch (0-based): the finished one, from 1
        finished = int(last.get("epoch", 0))
        described = {
            "checkpoint": f"just after checkpoint ckpt-{step}",
            "swap_out": f"evaluating epoch {finished} (training model swapped out)",
            "evaluate": f"epoch {finished} evaluated, before its results were logged",
            "swap_in": f"epoch {finished} evaluated and swapped back in, before its results were logged",
        }.get(phase, f"phase {phase}")
    return described


def check_resume(
    checks: Checks, new: Sequence[dict], newest: Saved | None, gap: float, rerun: Finished
) -> None:
    """The rerun's ``run_start``: resumed at ``newest`` (step, run clock) with the gap counted as downtime;
    a fresh start when no checkpoint was complete; nothing when the run had already ended."""
    start = next((e for e in new if e.get("event") == "run_start"), None)
    if "is complete" in rerun.stderr and start is None:
        checks.note(f"rerun: already complete ({newest.name if newest else '?'})")
        return
    if not checks.expect(start is not None, "the rerun logged no run_start"):
        return
    if newest is None:
        checks.note("no checkpoint yet: rerun started afresh")
        checks.expect(start.get("resumed") is False, "run_start.resumed is true without a checkpoint")
        return
    clock = newest.elapsed
    checks.note(
        f"rerun resumed from {newest.name} (clock {start.get('elapsed', 0):.1f} s, downtime "
        f"{start.get('downtime', 0):.1f} s ≥ gap {gap:.1f} s)"
    )
    checks.expect(start.get("resumed") is True, "run_start.resumed is not true")
    checks.expect(start.get("step") == newest.step, f"resumed at step {start.get('step')}, not {newest.step}")
    checks.expect(
        float(start.get("downtime", 0)) >= gap, f"downtime {start.get('downtime')} < gap {gap:.2f} s"
    )
    restart = start.get("restart_elapsed")
    checks.expect(
        isinstance(restart, (int, float)) and abs(float(restart) - clock) <= 1e-6,
        f"run_start.restart_elapsed {restart} is not the checkpoint's clock {clock:.6f}",
    )
    checks.expect(
        float(start.get("elapsed", -99)) >= clock,
        f"run_start.elapsed {start.get('elapsed')} is before the checkpoint's clock {clock:.2f}",
    )


def check_same_as_reference(
    ctx: Context, checks: Checks, run_dir: Path, events: list[dict], reference: Reference
) -> str:
    """Active step losses, evaluated epochs, final checkpoint and weights against the reference run."""
    active = active_events(events)
    losses = step_losses(active)
    same_losses = checks.expect(losses == reference.steps, differing_steps(losses, reference.steps))
    evaluated = Counter(e.get("epoch") for e in active if e.get("event") == "eval")
    checks.expect(
        evaluated == Counter(reference.evaluated),
        f"epochs evaluated (active events) {dict(sorted(evaluated.items()))}, expected each of "
        f"{reference.evaluated} once",
    )
    saved = checkpoints(run_dir)
    final = saved[-1] if saved else None
    same_weights = False
    if checks.expect(
        final is not None and final.name == reference.final,
        f"final checkpoint {final.name if final else None}, not {reference.final}",
    ):
        mine, theirs = ctx.weights(final.prefix), ctx.weights(reference.run / "checkpoints" / reference.final)
        differ = sorted(k for k in theirs if mine.get(k) != theirs[k])
        same_weights = checks.expect(
            mine.keys() == theirs.keys() and not differ,
            f"final weights differ from the reference's in {len(differ)} tensors",
        )
    left = leftovers(run_dir / "checkpoints")
    checks.expect(not left, f"left in checkpoints/: {', '.join(left[:3])}")
    if same_losses and same_weights:
        return "yes: same step losses, weights bit-identical (one CPU process is deterministic)"
    return "no"


def differing_steps(losses: list[tuple[int, float]], expected: list[tuple[int, float]]) -> str:
    for i, (mine, theirs) in enumerate(zip(losses, expected, strict=False)):
        if mine != theirs:
            return f"step losses differ from the reference's at active step event {i + 1}: {mine} vs {theirs}"
    return f"{len(losses)} active step events, the reference has {len(expected)}"


def lost_work(events: Sequence[dict], newest: Saved | None) -> str:
    """Steps and run-clock seconds the killed session did after the checkpoint the rerun resumed from."""
    steps = [e for e in events if e.get("event") == "step"]
    timed = [e for e in events if isinstance(e.get("elapsed"), (int, float))]
    if not steps and not timed:
        return "nothing trained yet"
    base_step = newest.step if newest else 0
    base_clock = newest.elapsed if newest else 0.0
    last_step = steps[-1]["step"] if steps else 0
    seconds = max(0.0, (timed[-1]["elapsed"] if timed else 0.0) - base_clock)
    redo = " + its pending evaluation" if newest and newest.state.get("evaluation_pending") else ""
    return f"{plural(max(0, last_step - base_step), 'step')}, {seconds:.1f} s of run clock{redo}"


# --------------------------------------------------------------------------- extract-kill


def extract_kill(ctx: Context, specs: list[dict]) -> list[Trial]:
    """SIGKILL feature extraction and rerun it (see :func:`extract_kill_trial`)."""
    return [
        ctx.attempt("extract-kill", s["corpus"], lambda s=s: extract_kill_trial(ctx, s["index"], s))
        for s in specs
    ]


def extract_kill_trial(ctx: Context, index: int, spec: dict) -> Trial:
    """Kill ``asr.extract`` of the training split, wait 0.5-2 s and rerun it (orphaned workers of a killed
    main process may still be finishing their shard meanwhile, as after a real kill -9).

    A random-time kill SIGKILLs the main process. The ``extract.shard=kill@N`` fail point SIGKILLs the worker
    writing shard N: the command must then end by itself (not wait forever for the lost shard). Checks
    after the rerun: exit 0, every shard byte-identical to the reference extraction, sidecars and manifest
    equal without their timing fields, no ``*.tmp-*`` left.
    """
    corpus = spec["corpus"]
    shards = ctx.shards(corpus)
    folder = ctx.folder("extract-kill", index, corpus)
    out = folder / shards.train.name
    command = shards.corpus.extract_command(shards.corpus.train, out)
    checks = Checks()
    planned = len(list(shards.train.glob("shard-*")))
    if spec["how"] == "time":
        at = spec["at"] * shards.train_seconds
        process = Process(command, folder / "killed")
        ended = process.wait(at)
        if not ended:
            process.kill()
        complete, writing = extraction_progress(out)
        where = (
            f"main process SIGKILLed at {at:.1f} s of {shards.train_seconds:.1f} s: {complete} of {planned} "
            f"shards complete, {writing} being written"
        )
        if ended:
            where = f"not struck: extraction ended (exit {process.code}) before {at:.1f} s"
    else:
        shard = int(spec["k"] * planned)
        rule = f"extract.shard=kill@{shard}"
        process = Process(command, folder / "killed", failpoint(rule))
        patience = 20 if ctx.quick else 60
        ended = process.wait(shards.train_seconds + patience)
        complete, writing = extraction_progress(out)
        where = f"{rule}: the worker writing shard {shard} SIGKILLed; {complete} of {planned} shards complete"
        if checks.expect(
            ended,
            f"the run never ended after its worker was killed (still waiting after "
            f"{shards.train_seconds + patience:.0f} s)",
        ):
            checks.note(f"killed run: {process.finish().describe()}")
        else:
            os.kill(process.popen.pid, signal.SIGTERM)  # what a user's Ctrl-C or `kill` would do next
            stopped = process.wait_more(10)
            checks.note(
                "killed run hung; SIGTERM "
                + ("stopped it" if stopped else "did not stop it either (SIGKILLed)")
            )
            if not stopped:
                process.kill()
    time.sleep(spec["gap"])
    rerun = run(command, folder / "rerun", timeout=shards.train_seconds * 4 + 120)
    if process.end_group(grace=5):  # orphaned workers finishing their shard may take a moment
        checks.note("the killed run's workers were still alive after the rerun (the harness SIGKILLed them)")
    checks.expect(rerun.code == 0, f"rerun {rerun.describe()}")
    differences = compare_extraction(out, shards.train)
    checks.expect(not differences, "; ".join(differences[:3]))
    left = leftovers(out)
    checks.expect(not left, f"left: {', '.join(left[:3])}")
    timing = (
        json.loads((out / "timing-task0.json").read_text()) if (out / "timing-task0.json").is_file() else {}
    )
    written = timing.get("shards_written")
    checks.note(f"rerun exit {rerun.code}, wrote {'?' if written is None else plural(written, 'shard')}")
    equal = (
        "yes: shards byte-identical, sidecars and manifest equal but for timing" if not differences else "no"
    )
    return checks.row(
        "extract-kill", corpus, where, f"{'?' if written is None else plural(written, 'shard')} redone", equal
    )


def extraction_progress(out: Path) -> tuple[int, int]:
    """Shards with a readable sidecar, and temporary files being written."""
    complete = sum(1 for sidecar in (out / "sidecars").glob("shard-*.json") if _json_or_none(sidecar))
    return complete, len([p for p in out.rglob("*") if ".tmp-" in p.name]) if out.is_dir() else 0


def _json_or_none(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


# --------------------------------------------------------------------------- checkpoint-damage


def checkpoint_damage(ctx: Context, specs: list[dict]) -> list[Trial]:
    """Damage checkpoints of a finished run (see :func:`checkpoint_damage_trial`)."""
    return [
        ctx.attempt("checkpoint-damage", s["corpus"], lambda s=s: checkpoint_damage_trial(ctx, s["index"], s))
        for s in specs
    ]


def evaluate_command(run_dir: Path, data: Path, *extra: object) -> list[str]:
    return module("asr.evaluate", "--run", run_dir, "--data", data, "--beam", 1, "--lm", "", *extra)


def checkpoint_damage_trial(ctx: Context, index: int, spec: dict) -> Trial:
    """Damage the newest checkpoint of a copy of the finished reference run (or every checkpoint).

    ``asr.evaluate --run RUN --data DEV --beam 1 --lm ''`` runs first (training would overwrite the damaged
    checkpoint), then training with one more epoch. Newest damaged: each must print exactly one warning
    naming the damaged checkpoint and the older one it uses, and complete (training from the older one,
    evaluation writing the older one's results). Every checkpoint damaged: both exit 2 with one line.
    """
    corpus = spec["corpus"]
    shards, reference, config = ctx.shards(corpus), ctx.reference(corpus), ctx.configs[corpus]
    folder = ctx.folder("checkpoint-damage", index, corpus)
    run_dir = copy_run(reference.run, folder / "run")
    saved = checkpoints(run_dir)
    checks = Checks()
    if spec["kind"] == "all":
        done = [
            damage_checkpoint(s, kind, spec["fractions"])
            for s, kind in zip(saved, spec["kinds"], strict=False)
        ]
        where = "every checkpoint: " + "; ".join(done)
    else:
        where = f"newest {saved[-1].name}: " + damage_checkpoint(saved[-1], spec["kind"], spec["fractions"])
    evaluation = run(evaluate_command(run_dir, shards.dev), folder / "evaluate", timeout=300)
    training = run(
        config.command(shards, run_dir, f"train.epochs={reference.epochs + 1}", *FAST_RERUN),
        folder / "train",
        timeout=reference.seconds * 3 + 120,
    )
    if spec["kind"] == "all":
        for name, result in (("asr.train", training), ("asr.evaluate", evaluation)):
            checks.note(f"{name} {result.describe()}")
            checks.expect(
                result.code == 2 and len(result.lines) == 1,
                f"{name}: expected exit 2 with one line, got {result.describe()} "
                f"({len(result.lines)} lines{', a traceback' if result.traceback else ''})",
            )
        checks.expect(
            "no usable checkpoint" in training.last_line,
            "asr.train's line does not say 'no usable checkpoint'",
        )
        return checks.row("checkpoint-damage", corpus, where, "every checkpoint (the run cannot go on)")
    newest, older = saved[-1], saved[-2]
    for name, result in (("asr.evaluate", evaluation), ("asr.train", training)):
        fell_back = fallback_warning(result, newest.name, older.name)
        checks.note(
            f"{name} exit {result.code}" + (f", warned: {shorten(fell_back, 90)}" if fell_back else "")
        )
        if checks.expect(result.code == 0, f"{name} did not complete: {result.describe()}"):
            checks.expect(
                len(result.warnings) == 1 and fell_back,
                f"{name}: {len(result.warnings)} warning lines, expected one naming {newest.name} and "
                f"the older {older.name}",
            )
    checks.expect(f"from {older.name}" in training.stderr, f"asr.train did not resume from {older.name}")
    checks.expect(
        (run_dir / "eval" / older.name / "results.json").is_file(),
        f"no eval/{older.name}/results.json from asr.evaluate",
    )
    return checks.row(
        "checkpoint-damage",
        corpus,
        where,
        f"{plural(newest.step - older.step, 'step')} redone from {older.name}",
    )


def fallback_warning(result: Finished, damaged: str, used: str) -> str:
    """The warning line naming both the damaged checkpoint and the older one used, or ''."""
    return next((w for w in result.warnings if f"{damaged} (" in w and used in w), "")


# --------------------------------------------------------------------------- events-cut


def events_cut(ctx: Context, specs: list[dict]) -> list[Trial]:
    """Cut the event log's last line (see :func:`events_cut_trial`)."""
    return [
        ctx.attempt("events-cut", s["corpus"], lambda s=s: events_cut_trial(ctx, s["index"], s))
        for s in specs
    ]


def events_cut_trial(ctx: Context, index: int, spec: dict) -> Trial:
    """Cut ``events.jsonl`` of a copy of the finished reference run at a random byte inside its last line
    (what a kill mid-write leaves), resume training one more epoch, then ``asr.report``.

    Checks: training completes; the report exits 0, warns about exactly one unreadable line, the cut one
    (so every complete line was read), and counts 2 sessions.
    """
    corpus = spec["corpus"]
    shards, reference, config = ctx.shards(corpus), ctx.reference(corpus), ctx.configs[corpus]
    folder = ctx.folder("events-cut", index, corpus)
    run_dir = copy_run(reference.run, folder / "run")
    log = run_dir / "events.jsonl"
    data = log.read_bytes()
    start = data.rstrip(b"\n").rfind(b"\n") + 1
    length = len(data) - 1 - start
    cut = start + 1 + int(spec["at"] * (length - 1))
    number = data[:start].count(b"\n") + 1
    kind = json.loads(data[start:]).get("event")
    log.write_bytes(data[:cut])
    where = f"line {number} (the {kind} event) cut after {cut - start} of its {length} bytes"
    checks = Checks()
    training = run(
        config.command(shards, run_dir, f"train.epochs={reference.epochs + 1}", *FAST_RERUN),
        folder / "train",
        timeout=reference.seconds * 3 + 120,
    )
    checks.expect(training.code == 0, f"resumed training {training.describe()}")
    report = run(
        module("asr.report", run_dir, "--out", folder / "report", "--no-plots"),
        folder / "report",
        timeout=300,
    )
    checks.expect(report.code == 0, f"asr.report {report.describe()}")
    skipped = [line for line in report.lines if "unreadable line skipped" in line]
    checks.expect(
        len(skipped) == 1 and f":{number}:" in skipped[0],
        f"asr.report warned about {len(skipped)} unreadable lines, expected one: line {number}",
    )
    sessions = report_sessions(folder / "report" / "report.md")
    checks.expect(sessions == 2, f"report counts {sessions} sessions, expected 2")
    checks.note(
        f"training exit {training.code}; asr.report exit {report.code}, {len(skipped)} line skipped "
        f"({shorten(skipped[0], 70) if skipped else '-'}), {sessions} sessions"
    )
    return checks.row("events-cut", corpus, where, f"the {kind} event's line")


def report_sessions(report: Path) -> int | None:
    """The ``sessions`` cell of the first run row in ``report.md``."""
    if not report.is_file():
        return None
    lines = report.read_text().splitlines()
    for i, line in enumerate(lines[:-2]):
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if "sessions" in cells:
            row = [c.strip() for c in lines[i + 2].strip().strip("|").split("|")]
            with contextlib.suppress(ValueError, IndexError):
                return int(row[cells.index("sessions")])
    return None


# --------------------------------------------------------------------------- disk-full


def disk_full(ctx: Context, specs: list[dict]) -> list[Trial]:
    """A write fails for lack of space (see :func:`disk_full_trial`)."""
    return [
        ctx.attempt("disk-full", s["corpus"], lambda s=s: disk_full_trial(ctx, s["index"], s)) for s in specs
    ]


def disk_full_trial(ctx: Context, index: int, spec: dict) -> Trial:
    """Put exactly one kind of file on a full filesystem and run the command that writes it.

    Targeting: with tmpfs only that kind of file lives on it (the extraction's ``--out``; or a symlink from
    the run directory's ``checkpoints/``, ``events.jsonl`` or ``eval/`` into the tmpfs), filled to leave
    less than the next write needs. With RLIMIT_FSIZE the limit lies between the sizes of the files written
    before and the size of the target's next file (see each target's description in its row).

    Checks: exit status non-zero, the last stderr line is one line naming the target's path, no traceback,
    the files present before are unchanged (an appended log keeps its old bytes, pruned old checkpoints may
    go), no ``*.tmp-*`` left; once the filler is deleted (the limit dropped) the same command completes.
    """
    corpus, target = spec["corpus"], spec["target"]
    shards, reference, config = ctx.shards(corpus), ctx.reference(corpus), ctx.configs[corpus]
    folder = ctx.folder("disk-full", index, f"{corpus}-{target}")
    mount = folder / "full"
    checks = Checks()
    setup = {
        "shards": (256 << 10, 200_000),
        "checkpoints": (64 << 10, 200_000),
        "events": (0, 0),
        "eval-results": (0, 64),
    }[target]
    with FullDisk(ctx.disk_method, mount, *setup) as disk:
        if target == "shards":
            out = mount / "train" if disk.method == "tmpfs" else folder / "train"
            (out / "sidecars").mkdir(parents=True)
            shutil.copy2(shards.train / "shard-00000.tfrecord.gz", out)
            shutil.copy2(shards.train / "sidecars" / "shard-00000.json", out / "sidecars")
            command = shards.corpus.extract_command(shards.corpus.train, out)
            watched, path, appended, prunable = out, out, (), None
            what = "asr.extract --out (shard 0 already there; a shard is ~1 MB)"
            lost = "the shards being written"
        else:
            run_dir = copy_run(reference.run, folder / "run")
            watched, appended, prunable = run_dir, ("events.jsonl",), r"checkpoints/ckpt-"
            moved = {"checkpoints": "checkpoints", "events": "events.jsonl", "eval-results": "eval"}[target]
            if target == "eval-results":  # results of an earlier evaluation must survive the failed one
                first = run(evaluate_command(run_dir, shards.dev), folder / "evaluate-before", timeout=300)
                checks.expect(first.code == 0, f"evaluation before the fault {first.describe()}")
            if target == "events" and disk.method == "rlimit":
                disk.limit = (run_dir / "events.jsonl").stat().st_size + 1
            if disk.method == "tmpfs":
                shutil.move(run_dir / moved, mount / moved)
                (run_dir / moved).symlink_to(mount / moved)
            path = run_dir / moved
            if target == "eval-results":
                command = evaluate_command(run_dir, shards.dev)
                what = "RUN/eval/ (an earlier evaluation's results inside)"
                lost = "the evaluation (redone)"
            else:
                epochs = reference.epochs + (1 if target == "checkpoints" else 2)
                command = config.command(shards, run_dir, f"train.epochs={epochs}", *FAST_RERUN)
                what = {
                    "checkpoints": "RUN/checkpoints/ (a checkpoint is ~320 KB)",
                    "events": "RUN/events.jsonl",
                }[target]
                lost = f"the steps after {checkpoints(run_dir)[-1].name} (redone)"
        before = snapshot(watched)
        disk.fill()
        where = disk.describe(what)
        failed = run(disk.command(command), folder / "full-run", timeout=reference.seconds * 3 + 180)
        checks.note(f"{failed.describe()}")
        checks.expect(failed.code not in (0, None), f"exit status {failed.code} (expected non-zero)")
        checks.expect(str(path) in failed.last_line, f"last line does not name {path}")
        checks.expect(not failed.traceback, "a traceback on stderr")
        changed = changed_since(before, watched, appended, prunable, rewritten=("recipe.yaml",))
        checks.expect(not changed, "damaged before the fault: " + ", ".join(changed[:3]))
        left = leftovers(watched)
        checks.expect(not left, f"left: {', '.join(left[:3])}")
        disk.lift()
        rerun = run(disk.command(command), folder / "rerun", timeout=reference.seconds * 3 + 180)
        checks.note(f"space back: rerun exit {rerun.code}")
        checks.expect(rerun.code == 0, f"rerun with space {rerun.describe()}")
        equal = "—"
        if target == "shards":
            differences = compare_extraction(out, shards.train)
            equal = "yes: shards byte-identical" if not differences else "no: " + "; ".join(differences[:2])
            checks.expect(not differences, "after the rerun: " + "; ".join(differences[:2]))
    return checks.row("disk-full", corpus, where, lost, equal)


# --------------------------------------------------------------------------- corrupt-input


def corrupt_input(ctx: Context, specs: list[dict]) -> list[Trial]:
    """Damaged and missing shards, garbage audio (see :func:`corrupt_input_trial`)."""
    return [
        ctx.attempt("corrupt-input", s["corpus"], lambda s=s: corrupt_input_trial(ctx, s["index"], s))
        for s in specs
    ]


def damaged_shards(ctx: Context, spec: dict, kind: str) -> tuple[Path, list[Path], str]:
    """A copy of the tiny training shards with one shard's byte flipped and another cut in the middle
    (``bad-shards``) or one shard deleted (``missing-shard``): the directory, the damaged files, what.
    Made once; the rows of training, evaluation and the LM build read the same damage."""
    return ctx.shared(f"corrupt-input:{kind}", lambda: _damage_shards(ctx, spec, kind))


def _damage_shards(ctx: Context, spec: dict, kind: str) -> tuple[Path, list[Path], str]:
    shards = ctx.shards(spec["corpus"])
    copy = ctx.work / "corrupt-input" / kind
    shutil.copytree(shards.train, copy)
    files = sorted(copy.glob("shard-*.tfrecord.gz"))
    if kind == "bad-shards":
        flipped, cut = (files[i] for i in spec["shards"])
        what = flip_bytes(flipped, [0.2 + 0.6 * spec["flip"]]) + "; " + cut_file(cut, 0.3 + 0.4 * spec["cut"])
        damaged = [flipped, cut]
    else:
        damaged = [files[spec["missing"]]]
        damaged[0].unlink()
        what = f"{damaged[0].name} deleted (manifest.json lists it)"
    return copy, damaged, what


def corrupt_input_trial(ctx: Context, index: int, spec: dict) -> Trial:
    """Damaged input for one command, with and without ``--strict``.

    Shards (a flipped byte: bad CRC; a shard cut in the middle; a shard deleted although listed): the
    command completes with one warning per damaged file naming it, using the readable records and no
    traceback; with ``--strict`` it exits 2 with one line. A FLAC file that decodes to garbage: extraction
    completes and counts it in ``manifest.json``'s ``skipped_by_reason``.
    """
    kind, command_name = spec["row"].split(":")
    corpus = spec["corpus"]
    folder = ctx.folder("corrupt-input", index, corpus)
    if kind == "bad-flac":
        return bad_flac_trial(ctx, folder, spec)
    directory, damaged, what = damaged_shards(ctx, spec, kind)
    shards = ctx.shards(corpus)
    checks = Checks()

    def command(strict: bool, name: str) -> list[str]:
        flag = ["--strict"] if strict else []
        if command_name == "train":
            config = ctx.configs[corpus]
            return [
                *config.command(
                    shards, folder / f"run-{name}", f"data.train={directory}", "train.epochs=1", *FAST_RERUN
                ),
                *flag,
            ]
        if command_name == "evaluate":
            run_dir = folder / "run"
            if not run_dir.exists():
                copy_run(ctx.reference(corpus).run, run_dir)
            return [*evaluate_command(run_dir, directory), *flag]
        return [*module("asr.lm", "--manifest", directory, "--out", folder / f"lm-{name}"), *flag]

    lenient = run(command(False, "lenient"), folder / "lenient", timeout=600)
    strict = run(command(True, "strict"), folder / "strict", timeout=600)
    named = {f: [w for w in lenient.warnings if str(f) in w] for f in damaged}
    checks.note(
        f"lenient exit {lenient.code}, {len(lenient.warnings)} warning(s); --strict {strict.describe()}"
    )
    checks.expect(lenient.code == 0, f"lenient run {lenient.describe()}")
    checks.expect(not lenient.traceback, "a traceback")
    checks.expect(
        all(len(w) == 1 for w in named.values()) and len(lenient.warnings) == len(damaged),
        f"{len(lenient.warnings)} warning lines, expected one naming each of "
        f"{', '.join(f.name for f in damaged)}",
    )
    checks.expect(
        strict.code == 2 and len(strict.lines) == 1 and any(str(f) in strict.last_line for f in damaged),
        f"--strict: expected exit 2 with one line naming a damaged shard, got {strict.describe()} "
        f"({len(strict.lines)} lines)",
    )
    counts = [int(n) for n in re.findall(r"(\d+) lost", " ".join(lenient.warnings))]
    lost = f"{sum(counts)} utterances" if counts else "—"
    if command_name == "train":
        start = next(
            (e for e in read_event_log(folder / "run-lenient")[0] if e.get("event") == "run_start"), {}
        )
        total = json.loads((shards.train / "manifest.json").read_text())["counts"]["kept"]
        lost = f"{total - start.get('utterances', total)} of {total} utterances"
        checks.expect(
            0 < start.get("utterances", 0) < total,
            f"trained on {start.get('utterances')} utterances, expected the readable part of {total}",
        )
    return checks.row("corrupt-input", corpus, f"{kind} → asr.{command_name}: {what}", lost)


def bad_flac_trial(ctx: Context, folder: Path, spec: dict) -> Trial:
    """A copy of data/tiny with one dev-clean FLAC damaged in its audio frames (bytes inverted, or cut):
    ``asr.extract`` must complete and count the utterance in ``skipped_by_reason``."""
    corpus = ctx.corpora[spec["corpus"]]
    copy = folder / "corpus"
    shutil.copytree(corpus.directory, copy)
    flacs = sorted((copy / corpus.dev).rglob("*.flac"))
    victim = flacs[int(spec["flac"] * len(flacs))]
    start = flac_audio_start(victim)
    if spec["flac_how"] == "flip":
        what = flip_bytes(victim, spec["flac_at"], start=start + 16)
    else:
        what = cut_file(victim, 0.2 + 0.6 * spec["flac_at"][0], start=start)
    checks = Checks()
    out = folder / "dev"
    result = run(
        module("asr.extract", "--corpus", copy, "--subsets", corpus.dev, "--out", out, "--workers", 2),
        folder / "extract",
        timeout=300,
    )
    checks.expect(result.code == 0, f"asr.extract {result.describe()}")
    checks.expect(not result.traceback, "a traceback")
    manifest = _json_or_none(out / "manifest.json") or {}
    counts = manifest.get("counts", {})
    skipped = [s for s in manifest.get("skipped", []) if s.get("utt_id") == victim.stem]
    reasons = counts.get("skipped_by_reason", {})
    checks.note(f"exit {result.code}; skipped_by_reason {reasons}")
    checks.expect(
        len(skipped) == 1 and reasons.get(skipped[0]["reason"].split(":", 1)[0], 0) >= 1,
        f"{victim.stem} is not counted in skipped_by_reason ({reasons})",
    )
    return checks.row(
        "corrupt-input",
        spec["corpus"],
        f"bad-flac → asr.extract: {what}",
        f"1 utterance ({victim.stem})",
    )


# --------------------------------------------------------------------------- worker-kill


def worker_kill(ctx: Context, specs: list[dict]) -> list[Trial]:
    """Kill one of two training workers (see :func:`worker_kill_trial`)."""
    return [
        ctx.attempt("worker-kill", s["corpus"], lambda s=s: worker_kill_trial(ctx, s["index"], s))
        for s in specs
    ]


def free_ports(count: int) -> list[int]:
    """Ports free on localhost now, for a multi-worker cluster's TF_CONFIG (tests/test_train.py uses it)."""
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def start_workers(ctx: Context, shards: Shards, run_dir: Path, folder: Path, name: str) -> list[Process]:
    """Two ``asr.train`` processes on localhost forming one MultiWorkerMirroredStrategy cluster
    (tests/test_train.py ``start_workers``), each with its own TMPDIR."""
    workers = [f"localhost:{port}" for port in free_ports(2)]
    processes = []
    for index in range(2):
        scratch = folder / f"tmp{index}"
        scratch.mkdir(exist_ok=True)
        config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        command = TrainConfig(TINY_MODEL + WORKER_SETS).command(shards, run_dir)
        processes.append(
            Process(
                command,
                folder / f"{name}-worker{index}",
                {"TMPDIR": str(scratch), "TF_CONFIG": json.dumps(config)},
            )
        )
    return processes


def worker_kill_trial(ctx: Context, index: int, spec: dict) -> Trial:
    """Two workers train; after the ``after``-th checkpoint one is SIGKILLed.

    Checks: the other exits within 90 s with a non-zero status, its last stderr line naming the lost worker,
    no traceback; restarting both with the same command resumes from the newest checkpoint and completes,
    both workers printing the same final ``weights crc32c``.
    """
    corpus, victim = spec["corpus"], spec["victim"]
    shards = ctx.shards(corpus)
    folder = ctx.folder("worker-kill", index, corpus)
    run_dir = folder / "run"
    checks = Checks()
    processes = start_workers(ctx, shards, run_dir, folder, "first")
    step = 2 * spec["after"]
    deadline = time.monotonic() + 300
    while not (run_dir / "checkpoints" / f"ckpt-{step}.json").is_file():
        if time.monotonic() > deadline or any(p.code is not None for p in processes):
            break
        time.sleep(0.1)
    where = f"worker {victim}{' (the chief)' if victim == 0 else ''} SIGKILLed once ckpt-{step} existed"
    processes[victim].kill()
    killed_at = time.monotonic()
    survivor = processes[1 - victim]
    ended = survivor.wait_more(120)
    waited = time.monotonic() - killed_at
    for p in processes:
        p.end_group()
    other = survivor.finish()
    checks.note(f"worker {1 - victim}: {other.describe()} after {waited:.0f} s")
    checks.expect(ended and waited <= 90, f"worker {1 - victim} still running {waited:.0f} s after the kill")
    checks.expect(other.code not in (0, None), f"worker {1 - victim} exit {other.code}")
    said = next((line for line in reversed(other.lines) if "multi-worker run was lost" in line), "")
    if checks.expect(said, f"worker {1 - victim} did not say a worker was lost"):
        checks.expect(f"worker {victim} " in said, f"its line names the wrong worker: {shorten(said, 70)}")
        checks.expect(
            said == other.last_line, f"its line is not the last one (last: {shorten(other.last_line, 80)})"
        )
    checks.expect(not other.traceback, "a traceback on stderr")
    saved = checkpoints(run_dir)
    newest = saved[-1] if saved else None
    time.sleep(spec["gap"])
    restarted = start_workers(ctx, shards, run_dir, folder, "restart")
    for p in restarted:
        p.wait(600)
        p.end_group()
    results = [p.finish() for p in restarted]
    ending = re.compile(r"worker \d: stopped \(epochs\) at step (\d+); weights crc32c (\w+)")
    ends = [ending.search(r.stderr) for r in results]
    checks.note(
        f"restart: exits {[r.code for r in results]}, resumed from {newest.name if newest else 'nothing'}"
    )
    checks.expect(all(r.code == 0 for r in results), "restart: " + "; ".join(r.describe() for r in results))
    checks.expect(
        newest is not None and f"from {newest.name}" in results[0].stderr,
        f"the restart did not resume from {newest.name if newest else 'a checkpoint'}",
    )
    same = all(ends) and ends[0].groups() == ends[1].groups()
    checks.expect(same, "the workers did not end with the same step and weights crc32c")
    lost = f"the steps after {newest.name}" if newest else "everything"
    equal = f"both workers end with crc32c {ends[0].group(2)}" if same else "no"
    return checks.row("worker-kill", corpus, where, lost, equal)


# --------------------------------------------------------------------------- nan-inject


def nan_inject(ctx: Context, specs: list[dict]) -> list[Trial]:
    """Non-finite steps through the ``train.step`` fail point (see :func:`nan_inject_trial`)."""
    return [
        ctx.attempt("nan-inject", s["corpus"], lambda s=s: nan_inject_trial(ctx, s["index"], s))
        for s in specs
    ]


def nan_inject_trial(ctx: Context, index: int, spec: dict) -> Trial:
    """``train.step=nan@k`` (one epoch): the run completes with exactly one ``skipped_step`` event and
    ``run_end.skipped_steps == 1``. ``train.step=nan@k+(k+1)`` with ``train.max_consecutive_nan_steps=2``:
    exit 2, the last line says "non-finite steps in a row", and a checkpoint exists at the last good step
    (k - 1: skipped steps change no weight)."""
    corpus, k = spec["corpus"], spec["k"]
    shards, config = ctx.shards(corpus), ctx.configs[corpus]
    folder = ctx.folder("nan-inject", index, corpus)
    run_dir = folder / "run"
    checks = Checks()
    rule = f"train.step=nan@{k}" if spec["row"] == "one" else f"train.step=nan@{k}+{k + 1}"
    extra = ("train.epochs=1", *FAST_RERUN)
    if spec["row"] == "two":
        extra += ("train.max_consecutive_nan_steps=2",)
    result = run(config.command(shards, run_dir, *extra), folder / "train", failpoint(rule), timeout=600)
    events, _ = read_event_log(run_dir)
    skipped = [e for e in events if e.get("event") == "skipped_step"]
    end = next((e for e in reversed(events) if e.get("event") == "run_end"), {})
    checks.note(
        f"{result.describe()}; {plural(len(skipped), 'skipped_step event')}, run_end {end.get('reason')} "
        f"skipped_steps={end.get('skipped_steps')}"
    )
    if spec["row"] == "one":
        checks.expect(result.code == 0, f"exit {result.code}")
        checks.expect(len(skipped) == 1, f"{len(skipped)} skipped_step events, expected 1")
        checks.expect(
            end.get("skipped_steps") == 1, f"run_end.skipped_steps {end.get('skipped_steps')}, expected 1"
        )
        return checks.row("nan-inject", corpus, f"{rule}: batch {k} poisoned", f"batch {k} not applied")
    saved = checkpoints(run_dir)
    checks.expect(result.code == 2, f"exit {result.code}, expected 2")
    checks.expect(
        "non-finite steps in a row" in result.last_line,
        "the last line does not say 'non-finite steps in a row'",
    )
    checks.expect(
        saved and saved[-1].step == k - 1,
        f"newest checkpoint {saved[-1].name if saved else None}, expected ckpt-{k - 1} (the last good step)",
    )
    return checks.row(
        "nan-inject",
        corpus,
        f"{rule}: batches {k} and {k + 1} poisoned, limit 2",
        f"batches {k}-{k + 1}; the run stopped (ckpt-{k - 1} kept)",
    )


# --------------------------------------------------------------------------- the table


RUNNERS: dict[str, Callable[[Context, list[dict]], list[Trial]]] = {
    "train-kill": train_kill,
    "extract-kill": extract_kill,
    "checkpoint-damage": checkpoint_damage,
    "events-cut": events_cut,
    "disk-full": disk_full,
    "corrupt-input": corrupt_input,
    "worker-kill": worker_kill,
    "nan-inject": nan_inject,
}


def schedule(selected: dict[str, list[dict]]) -> tuple[list[tuple[str, dict]], list[tuple[str, dict]]]:
    """Trials in the order the pool starts them, and those that run alone afterwards (:data:`EXCLUSIVE`).

    First one train-kill trial per corpus (it makes that corpus's shards and reference run), then the trials
    that need no reference run, then the rest: no thread waits idle for a reference run another is making.
    """
    first, free, rest, alone = [], [], [], []
    for fault, specs in selected.items():
        for spec in specs:
            if fault in EXCLUSIVE:
                alone.append((fault, spec))
            elif fault == "train-kill" and all(s["corpus"] != spec["corpus"] for _, s in first):
                first.append((fault, spec))
            else:
                (free if fault in NO_REFERENCE else rest).append((fault, spec))
    return first + free + rest, alone


def cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def markdown_table(rows: Sequence[Trial]) -> str:
    lines = [
        "| # | fault | where it struck | what the program did | lost | equals uninterrupted | passed |",
        "|---:|---|---|---|---|---|---|",
    ]
    for number, row in enumerate(rows, start=1):
        lines.append(
            f"| {number} | {cell(row.fault)} ({cell(row.corpus)}) | {cell(row.where)} | {cell(row.did)} | "
            f"{cell(row.lost)} | {cell(row.equal)} | {'yes' if row.passed else '**NO**'} |"
        )
    return "\n".join(lines)


def summary_table(rows: Sequence[Trial]) -> str:
    lines = ["| fault | trials | passed |", "|---|---:|---:|"]
    for fault in FAULTS:
        mine = [r for r in rows if r.fault == fault]
        if mine:
            lines.append(f"| {fault} | {len(mine)} | {sum(r.passed for r in mine)} |")
    lines.append(f"| all | {len(rows)} | {sum(r.passed for r in rows)} |")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="tools/faults.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few trials on data/tiny (CI, < 2 min)")
    parser.add_argument("--seed", type=int, default=0, help="seed of every random choice (default 0)")
    parser.add_argument("--only", metavar="FAULT[,FAULT]", help=f"run these faults only: {', '.join(FAULTS)}")
    parser.add_argument(
        "--work", type=Path, help="work directory, kept (default: a temporary one, removed at the end)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the rows as JSON")
    parser.add_argument("--jobs", type=int, default=2, help="trials run side by side (default 2)")
    parser.add_argument(
        "--disk-full",
        choices=("auto", "tmpfs", "rlimit"),
        default="auto",
        help="how disk-full fails writes: a full tmpfs (root) or RLIMIT_FSIZE (default: tmpfs if it mounts)",
    )
    parser.add_argument(
        "--minilibri", type=Path, default=MINILIBRI, help="LibriSpeech-layout corpus for full mode"
    )
    args = parser.parse_args(argv)
    only = [f.strip() for f in (args.only or "").split(",") if f.strip()]
    unknown = [f for f in only if f not in FAULTS]
    if unknown:
        parser.error(f"--only: unknown fault(s) {', '.join(unknown)}; choose from {', '.join(FAULTS)}")
    if args.jobs < 1:
        parser.error("--jobs: must be at least 1")
    if args.work and args.work.exists() and any(args.work.iterdir()):
        parser.error(f"--work {args.work}: not empty (the trials need fresh directories)")
    args.only = only or list(FAULTS)
    return args


def kill_everything() -> None:
    """SIGKILL every process group the harness started that may still run."""
    with LIVE_LOCK:
        live = list(LIVE)
    for process in live:
        process.signal_group(signal.SIGKILL)


def run_trials(ctx: Context, selected: dict[str, list[dict]], jobs: int) -> dict[tuple[str, int], Trial]:
    """Every selected trial, ``jobs`` at a time in :func:`schedule`'s order, then the exclusive ones alone;
    on Ctrl-C every process is killed and no new one starts (KeyboardInterrupt is raised again)."""
    together, alone = schedule(selected)
    pool = ThreadPoolExecutor(jobs)
    try:
        futures = [(fault, spec, pool.submit(RUNNERS[fault], ctx, [spec])) for fault, spec in together]
        done = {(fault, spec["index"]): future.result()[0] for fault, spec, future in futures}
        for fault, spec in alone:
            done[(fault, spec["index"])] = RUNNERS[fault](ctx, [spec])[0]
    except KeyboardInterrupt:
        STOPPING.set()
        kill_everything()
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown()
    return done


@contextlib.contextmanager
def work_directory(path: Path | None, keep: bool) -> Iterator[Path]:
    """The given directory (created if missing, kept), or a temporary one removed unless ``keep``; every
    tmpfs mounted under it is unmounted and every process still running is killed first."""
    work = path or Path(tempfile.mkdtemp(prefix="asr-faults-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        yield work.resolve()
    finally:
        kill_everything()
        for mount in list(MOUNTS):
            unmount(mount)
        if path is None and not keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"work directory kept: {work}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    from tqdm import tqdm

    args = parse_args(argv)
    began = time.monotonic()
    specs = plan(args.seed, args.quick)
    selected = {fault: specs[fault] for fault in FAULTS if fault in args.only and specs[fault]}
    with work_directory(args.work, args.keep) as work:
        method = disk_full_method(work) if args.disk_full == "auto" else args.disk_full
        total = sum(len(s) for s in selected.values())
        with tqdm(total=total, desc="fault trials", unit="trial", file=sys.stderr, dynamic_ncols=True) as bar:
            ctx = Context(work, args.quick, method, args.minilibri, bar)
            try:
                done = run_trials(ctx, selected, args.jobs)
            except KeyboardInterrupt:
                print("\ntools/faults.py: interrupted", file=sys.stderr)
                return 130
        rows = [done[(fault, spec["index"])] for fault, specs in selected.items() for spec in specs]
        wall = time.monotonic() - began
        mode = "quick" if args.quick else "full"
        print(f"## Fault trials ({mode}, seed {args.seed}, disk-full via {method}, {args.jobs} jobs)\n")
        print(markdown_table(rows))
        print()
        print(summary_table(rows))
        print(f"\ntotal wall time: {wall:.1f} s")
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(
                json.dumps(
                    {
                        "mode": mode,
                        "seed": args.seed,
                        "disk_full": method,
                        "wall_seconds": wall,
                        "rows": [dataclasses.asdict(r) for r in rows],
                    },
                    indent=1,
                )
                + "\n"
            )
    return 0 if rows and all(row.passed for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
