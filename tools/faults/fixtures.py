"""What the trials share: the corpora, their extracted shards, training configurations and the
uninterrupted reference runs, made once per harness run (:class:`Context`)."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import random
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from asr.tta import active_events
from tools.faults.checks import SetupError, Trial
from tools.faults.outputs import checkpoints, read_event_log, step_losses
from tools.faults.process import REPO_ROOT, module, run, shorten

TINY_CORPUS = REPO_ROOT / "data" / "tiny"
MINILIBRI = REPO_ROOT.parent / "shared" / "minilibri"

TINY_RECIPE = "recipes/tiny.yaml"
"""The tests' recipe (tests/test_train.py's tiny model)."""
TINY_SETS = ("train.checkpoint_every_steps=3",)
"""A checkpoint every 3 steps (an epoch has 4-5): mid-epoch checkpoints, so that resuming from one must
also restore the data position."""
MINILIBRI_MODEL = ("model.rnn_units=64", "model.rnn_layers=2", "train.global_batch=16", "eval.lm=",
                   "eval.beam_width=4", "eval.decode_workers=1", "train.checkpoint_every_steps=20",
                   "train.epochs=2", "eval.mode=resident")  # fmt: skip
WORKER_SETS = ("runtime.strategy=multi_worker", "train.epochs=8", "eval.mode=external",
               "train.checkpoint_every_steps=2")  # fmt: skip
FAST_RERUN = ("eval.mode=external",)
"""Reruns of a finished run (damage, cut log, full disk) train one more epoch without evaluating it."""


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
    """A training configuration: a recipe with ``--set`` overrides, on one corpus's shards."""

    sets: tuple[str, ...]
    recipe: str = "recipes/cpu.yaml"

    def command(self, shards: Shards, run_dir: Path, *extra: str) -> list[str]:
        command = module("asr.train", self.recipe, "--run-dir", run_dir)
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
    evaluations: list[dict]
    """Its active ``eval`` events (WER, CER, loss per evaluated epoch)."""
    saves: list[str]
    """Checkpoint names in the order they were saved (``checkpoint`` events), for fail-point kills."""
    final: str
    epochs: int


def evaluate_command(run_dir: Path, data: Path, *extra: object) -> list[str]:
    return module("asr.evaluate", "--run", run_dir, "--data", data, "--beam", 1, "--lm", "", *extra)


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
            "tiny": TrainConfig(TINY_SETS + tiny_sets, TINY_RECIPE),
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
            evaluations=[e for e in active if e.get("event") == "eval"],
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


def kill_spec(rng: random.Random, corpus: str, how: str) -> dict:
    return {"corpus": corpus, "how": how, "at": rng.random(), "k": rng.random(), "gap": rng.uniform(0.5, 2.0)}
