"""Train the acoustic model from a recipe (paper Figure 6): ``python -m asr.train RECIPE.yaml``.

    python -m asr.train recipes/cpu.yaml --run-dir runs/cpu [--set train.global_batch=48] [--resume]
    python -m asr.train --summary recipes/base.yaml

The loop trains with synchronous data parallelism on the recipe's ``tf.distribute`` strategy; every
``sample_every_steps`` it decodes a training batch greedily and logs a few sentences; every
``checkpoint_every_steps`` it saves a checkpoint; at each epoch end it saves one and hands over to the
recipe's evaluator (:mod:`asr.evaluators`), feeds the results to the time-to-accuracy tracker and goes on.
It stops after ``train.epochs``, ``train.max_steps``, the ``train.time_budget_minutes`` run-clock budget,
when every TTA target is reached (``tta.stop_at_last_target``), or on Ctrl-C/SIGTERM, saving a checkpoint
first. Running again into the same run directory (or with ``--resume``) continues from the newest
undamaged checkpoint with step, epoch, data position, optimizer state, TTA history and run clock intact,
first redoing an epoch-end evaluation that was interrupted; a run that is already complete says so and
exits 0. One process owns a run directory at a time (:mod:`asr.runlock`; a multi-worker run's chief): a
second ``asr.train`` on it stops with one line naming the holder, before writing anything. What is
guaranteed under each fault: ``docs/reliability.md``.

The pieces: :class:`Schedule` (when to sample, save, evaluate and stop), :class:`Trainer` (setup and
restore, the step loop, the epoch-end sequence checkpoint → evaluation → TTA), :class:`RunLog` (event log,
console, TensorBoard) and :class:`asr.session.TrainingSession` (model, optimizer, compiled step).

The run directory holds ``recipe.yaml`` (fully resolved), ``events.jsonl`` (see :mod:`asr.events`),
``checkpoints/``, ``tensorboard/``, and while a run holds it ``train.lock`` and ``train.lock.json``. Errors
that stop the run print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import re
import shlex
import shutil
import signal
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from asr import failpoints
from asr.config import ConfigError, OneLineParser, Recipe, dump_recipe, load_recipe, recipe_from_dict
from asr.files import WriteError, write_text
from asr.model import summary
from asr.startup import import_tensorflow

EXIT_BAD_INPUT = 2
RECIPE_FILE = "recipe.yaml"
SHARD_CHECK_FILE = "shard-check.json"
SAMPLE_PAIRS = 3


class TrainError(Exception):
    """The run cannot go on; the message names the file, key or cause (exit status 2)."""


class NonFiniteError(TrainError):
    """Too many non-finite steps in a row; the last good weights are saved."""


@dataclasses.dataclass
class Progress:
    """Where the run is; saved with every checkpoint so a resumed run continues exactly."""

    step: int = 0
    """Optimizer steps applied (skipped non-finite steps are not counted)."""
    epoch: int = 0
    """Epoch in progress (0-based)."""
    batches_in_epoch: int = 0
    """Batches of this epoch already consumed, including skipped ones: the data position."""
    consecutive_bad_steps: int = 0
    skipped_steps: int = 0


def itstime(count: int, every: int) -> bool:
    """True on every ``every``-th count (never when ``every`` is 0)."""
    return every > 0 and count > 0 and count % every == 0


@dataclasses.dataclass(frozen=True)
class Schedule:
    """When the loop samples, saves, evaluates and stops: the recipe's cadences as pure rules."""

    epochs: int
    max_steps: int
    """0: no limit."""
    budget_seconds: float
    """Run-clock seconds; 0: no budget."""
    sample_every_steps: int
    checkpoint_every_steps: int
    eval_every_epochs: int
    stop_at_last_target: bool

    @classmethod
    def from_recipe(cls, recipe: Recipe) -> Schedule:
        return cls(
            epochs=recipe.train.epochs,
            max_steps=recipe.train.max_steps,
            budget_seconds=recipe.train.time_budget_minutes * 60,
            sample_every_steps=recipe.train.sample_every_steps,
            checkpoint_every_steps=recipe.train.checkpoint_every_steps,
            eval_every_epochs=recipe.eval.every_epochs,
            stop_at_last_target=recipe.tta.stop_at_last_target,
        )

    def sample_due(self, step: int) -> bool:
        return itstime(step, self.sample_every_steps)

    def checkpoint_due(self, step: int) -> bool:
        return itstime(step, self.checkpoint_every_steps)

    def evaluation_due(self, finished_epoch: int) -> bool:
        """After 0-based epoch ``finished_epoch``."""
        return itstime(finished_epoch + 1, self.eval_every_epochs)

    def stop_reason(self, progress: Progress, elapsed: float, targets_reached: bool) -> str | None:
        """Why the run must not take another step (checked before every step), or None."""
        if progress.epoch >= self.epochs:
            return "epochs"
        if self.max_steps and progress.step >= self.max_steps:
            return "max_steps"
        if self.budget_seconds and elapsed >= self.budget_seconds:
            return "time_budget"
        if self.stop_at_last_target and targets_reached:
            return "targets"
        return None

    def describe(self, reason: str) -> str:
        return {
            "epochs": f"all {self.epochs} epochs trained",
            "max_steps": f"train.max_steps={self.max_steps} reached",
            "time_budget": f"train.time_budget_minutes={self.budget_seconds / 60:g} used",
            "targets": "every TTA target reached (tta.stop_at_last_target)",
        }.get(reason, reason)


# --------------------------------------------------------------------------- run directory and logging


class RunLog:
    """Event log (chief only) stamped with the run clock and position; console lines; TensorBoard."""

    def __init__(self, run_dir: Path, clock, progress: Progress, is_chief: bool):
        from asr.events import EventLog

        self.clock = clock
        self.progress = progress
        self.is_chief = is_chief
        self.events = EventLog(run_dir) if is_chief else None
        self.summary_writer = None
        if is_chief:
            import tensorflow as tf

            self.summary_writer = tf.summary.create_file_writer(str(run_dir / "tensorboard"))

    def write(self, event: str, **fields: Any) -> dict[str, Any]:
        fields.setdefault("elapsed", self.clock.elapsed())
        fields.setdefault("epoch", self.progress.epoch)
        fields.setdefault("step", self.progress.step)
        if self.events is None:
            return {"event": event, **fields}
        return self.events.write(event, **fields)

    def scalars(self, step: int, **values: float) -> None:
        if self.summary_writer is None:
            return
        import tensorflow as tf

        with self.summary_writer.as_default(step=step):
            for name, value in values.items():
                tf.summary.scalar(name, value)

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time a phase on the run clock and log it as a ``phase`` event when it ends."""
        began = time.monotonic()
        with self.clock.phase(name):
            yield
        self.write("phase", phase=name, seconds=time.monotonic() - began)

    @contextmanager
    def off_clock(self, name: str) -> Iterator[None]:
        """Work the run clock must not count (extra evaluation sets): the clock stands still, and an
        ``off_clock`` event gives its seconds when it ends."""
        began = time.monotonic()
        with self.clock.off_clock(name):
            yield
        self.write("off_clock", name=name, seconds=time.monotonic() - began)

    def say(self, message: str) -> None:
        if self.is_chief:
            print(f"asr.train: {message}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.summary_writer is not None:
            self.summary_writer.flush()
        if self.events is not None:
            self.events.close()


class StopFlag:
    """Turns the first SIGINT/SIGTERM into a request the loop honours before the next step."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopFlag:
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.signal is not None:  # second signal: stop now
            raise KeyboardInterrupt
        self.signal = signum

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


def run_directory(args: argparse.Namespace, recipe: Recipe) -> Path:
    """The run directory ``--run-dir`` names (default ``runs/<recipe name>``); it may not exist yet."""
    run_dir = Path(args.run_dir or Path("runs") / recipe.name)
    if run_dir.exists() and not run_dir.is_dir():
        raise TrainError(f"--run-dir {run_dir}: exists and is not a directory")
    return run_dir


def resuming_run(args: argparse.Namespace, recipe: Recipe, run_dir: Path) -> bool:
    """Whether the run resumes from a checkpoint in ``run_dir``; a run directory of another model, batch
    or data is refused. Read while holding the run directory, so no other process changes it meanwhile."""
    from asr.checkpoint import list_checkpoints

    saved = run_dir / RECIPE_FILE
    resuming = bool(list_checkpoints(run_dir))
    if args.resume and not resuming:
        raise TrainError(f"--resume: {run_dir} has no checkpoint to resume from")
    if resuming and saved.is_file():
        from asr.config import parse_yaml

        previous = recipe_from_dict(parse_yaml(saved.read_text()), str(saved))
        if previous.model != recipe.model:
            raise TrainError(
                f"{saved}: the run directory holds a model of another shape than {args.recipe} "
                "(choose another --run-dir)"
            )
        if previous.train.global_batch != recipe.train.global_batch or previous.data != recipe.data:
            raise TrainError(
                f"{saved}: train.global_batch or data.* differ from {args.recipe}; a resumed run must "
                "read the same batches (choose another --run-dir)"
            )
    return resuming


@contextmanager
def owning(run_dir: Path, command_line: str) -> Iterator[None]:
    """Hold ``run_dir`` for this process (:mod:`asr.runlock`) while the block runs; a multi-worker run's
    chief only (the other workers write to scratch). Another live holder stops the run with one line
    naming it (:class:`asr.runlock.RunInUseError`) before anything is written."""
    from asr.runlock import RunInUseError, RunLock
    from asr.strategy import cluster_from_environment

    if not cluster_from_environment().is_chief:
        yield
        return
    try:
        lock = RunLock(run_dir, command_line).acquire()
    except RunInUseError as error:
        raise TrainError(str(error)) from None
    try:
        if lock.unsupported:
            print(f"asr.train: warning: {lock.unsupported}; a second asr.train in {run_dir} would not be "
                  "stopped", file=sys.stderr, flush=True)  # fmt: skip
        if lock.taken_over:
            print(f"asr.train: {run_dir} was held by {lock.taken_over.describe()}, which ended without "
                  "releasing it (killed?); taken over", file=sys.stderr, flush=True)  # fmt: skip
        yield
    finally:
        lock.release()


def completed(recipe: Recipe, run_dir: Path) -> str | None:
    """Why the run in ``run_dir`` has nothing left to do (its epochs, step limit, time budget or targets
    reached, no evaluation pending), judged from its newest undamaged checkpoint's state alone, so that a
    finished run answers at once, before TensorFlow and the model are loaded; None if it has work left."""
    from asr.checkpoint import damage, list_checkpoints
    from asr.tta import TTATracker

    newest = next((c for c in reversed(list_checkpoints(run_dir)) if damage(c) is None), None)
    if newest is None or newest.state.get("evaluation_pending") or "progress" not in newest.state:
        return None
    state = newest.state
    tracker = TTATracker.from_state(state["tta"]) if state.get("tta") else None
    schedule = Schedule.from_recipe(recipe)
    reason = schedule.stop_reason(Progress(**state["progress"]), float(state["clock"]["elapsed"]),
                                  bool(tracker and tracker.all_reached()))  # fmt: skip
    return f"{schedule.describe(reason)}; {newest.name}" if reason else None


# --------------------------------------------------------------------------- the trainer


class Trainer:
    """One training run in this process: setup and restore, the step loop, the epoch-end sequence.

    ``run()`` is the whole run; each part below is short enough to read alone. Multi-worker runs build
    one per worker: every decision that ends the loop is taken by all workers together.
    """

    def __init__(self, recipe: Recipe, run_dir: Path, resuming: bool, strict: bool = False):
        from asr.clock import RunClock
        from asr.session import TrainingSession
        from asr.strategy import cluster_from_environment, make_strategy
        from asr.tta import TTATracker

        self.recipe, self.run_dir, self.strict = recipe, run_dir, strict
        self.schedule = Schedule.from_recipe(recipe)
        self.cluster = cluster_from_environment()
        self.strategy = make_strategy(recipe.runtime)
        self.shards, self.plan = self._open_training_shards()
        if self.cluster.is_chief:
            self._write_run_files()
        self.progress = Progress()
        self.session = TrainingSession(self.strategy, recipe, run_dir, self.cluster.is_chief)
        self.tracker = TTATracker(recipe.tta.targets, recipe.tta.window)
        self.clock = RunClock()
        self.restored = self._restore() if resuming else None
        self.log: RunLog | None = None
        self.evaluator = None
        self.stop: StopFlag | None = None
        self._pending_batch = None
        self._update_seconds = 0.0
        """Seconds of the micro-batches of the update in progress (``train.accumulate_steps``)."""
        self._batches = None
        self._bar = None
        self._vote = None

    # ----------------------------------------------------------------------- setup and restore

    def _open_training_shards(self):
        from asr import data

        shards = data.open_shards(self.recipe.data.train, "data.train", allow_missing=not self.strict)
        cache = self.run_dir / SHARD_CHECK_FILE if self.cluster.is_chief else None
        shards = data.check_shards(shards, "full", cache, self.recipe.data.readers, self.cluster.is_chief)
        if shards.damage and self.strict:
            raise TrainError(f"{shards.damage[0].describe('data.train')} (--strict)")
        for damage in shards.damage:
            self._warn(damage.describe("data.train"))
        replicas = self.strategy.num_replicas_in_sync
        plan = data.plan_epoch(shards, self.recipe.data, self.recipe.model, self.recipe.train.global_batch,
                               replicas)  # fmt: skip
        if plan.steps == 0:
            raise TrainError(
                f"data.train: {self.recipe.data.train}: {plan.kept} trainable utterances make no full global "
                f"batch of {self.recipe.train.global_batch} (dropped: {plan.dropped or 'none'})"
            )
        return shards, plan

    def _warn(self, message: str) -> None:
        if self.cluster.is_chief:
            print(f"asr.train: warning: {message}", file=sys.stderr, flush=True)

    def _write_run_files(self) -> None:
        from asr.inference import write_normalization

        self.run_dir.mkdir(parents=True, exist_ok=True)
        write_text(self.run_dir / RECIPE_FILE, dump_recipe(self.recipe))
        write_normalization(
            self.run_dir, self.shards.mean, self.shards.std, str(self.shards.path / "manifest.json")
        )

    def _restore(self):
        """Load the newest undamaged checkpoint (warning about any damaged one) and the run state in it."""
        from asr.checkpoint import list_checkpoints, restore_newest
        from asr.clock import RunClock
        from asr.tta import TTATracker

        if self.cluster.is_chief:
            self.session.checkpointer.remove_leftovers()
        checkpoint, state = restore_newest(list_checkpoints(self.run_dir), self.session.restore, self._warn)
        self.progress = Progress(**state["progress"])
        self.clock = RunClock.resume(state["clock"])
        if state.get("tta"):
            self.tracker = TTATracker.from_state(state["tta"])
        return checkpoint

    def run_state(self, **extra: Any) -> dict[str, Any]:
        """What a checkpoint saves besides the weights."""
        return {
            "progress": dataclasses.asdict(self.progress),
            "clock": self.clock.state(),
            "tta": self.tracker.state(),
            **extra,
        }

    @property
    def evaluation_pending(self) -> bool:
        """The restored checkpoint is an epoch end whose evaluation was interrupted."""
        return bool(self.restored and self.restored.state.get("evaluation_pending"))

    # ----------------------------------------------------------------------- the run

    def run(self) -> int:
        """Train until a stop reason; returns the exit status (128 + signal when stopped by one)."""
        from asr.evaluators import make_evaluator
        from asr.sampler import UtilizationSampler

        self.evaluator = make_evaluator(self.recipe, self.strategy, self.run_dir, strict=self.strict)
        self.log = RunLog(self.run_dir, self.clock, self.progress, self.cluster.is_chief)
        self._start_message()
        sampler = None
        if self.cluster.is_chief:
            position = lambda: (self.progress.epoch, self.progress.step)  # noqa: E731
            sampler = UtilizationSampler(self.log, self.recipe.tta.sample_interval_seconds, clock=self.clock,
                                         position=position).start()  # fmt: skip
            self.log.say(f"CPU energy: {sampler.cpu_energy_method()}")
        reason = "error"
        try:
            with StopFlag() as self.stop:
                if self.evaluation_pending:
                    self.log.say(
                        f"redoing the interrupted evaluation of epoch {self.restored.state['epoch_end'] + 1}"
                    )
                    self._evaluate(self.restored)
                reason = self._loop()
        except NonFiniteError:
            reason = "nan"
            raise
        except KeyboardInterrupt:
            reason = "signal"
            raise
        finally:
            self._close(sampler, reason)
        return 128 + int(self.stop.signal or signal.SIGINT) if reason == "signal" else 0

    def _start_message(self) -> None:
        from asr.strategy import describe

        parameters = int(self.session.model.count_params())
        self.log.write(
            "run_start",
            recipe=self.recipe.name,
            rig=self.recipe.rig.name,
            replicas=self.strategy.num_replicas_in_sync,
            workers=self.cluster.workers,
            resumed=self.restored is not None,
            restart_elapsed=self.restored.state["clock"]["elapsed"] if self.restored else 0.0,
            downtime=self.clock.downtime,
            strategy=describe(self.strategy),
            steps_per_epoch=self.plan.steps,
            utterances=self.plan.kept,
            dropped=self.plan.dropped,
            damaged_shards=[dataclasses.asdict(d) for d in self.shards.damage],
            extract_seconds=self.shards.manifest.get("extraction_seconds"),
            parameters=parameters,
        )
        self.log.say(f"{describe(self.strategy)}; {parameters:,} parameters")
        self.log.say(
            f"{self.recipe.data.train}: {self.plan.kept} utterances "
            f"({self.plan.audio_seconds / 3600:.2f} h), "
            f"{self.plan.steps} steps of {self.recipe.train.global_batch} per epoch; dropped "
            + (", ".join(f"{n} {reason}" for reason, n in self.plan.dropped.items()) or "none")
        )
        if self.restored is not None:
            self.log.say(
                f"resumed at epoch {self.progress.epoch + 1}, step {self.progress.step} from "
                f"{self.restored.name} (run clock {self.clock.elapsed() / 60:.1f} min, "
                f"downtime {self.clock.downtime / 60:.1f} min)"
            )

    def _close(self, sampler, reason: str) -> None:
        if sampler:
            sampler.stop()
        with contextlib.suppress(
            WriteError
        ):  # the error that stopped the run (a full disk) is the one to report
            self.log.write("run_end", reason=reason, skipped_steps=self.progress.skipped_steps,
                           phases=self.clock.phases, off_clock=self.clock.off_clock_totals)  # fmt: skip
        self.log.close()
        self.evaluator.close()
        if reason != "error":
            self.log.say(
                f"stopped ({reason}) in epoch {min(self.progress.epoch + 1, self.schedule.epochs)} of "
                f"{self.schedule.epochs}, step {self.progress.step}; "
                f"run clock {self.clock.elapsed() / 60:.2f} min"
            )
        if self.cluster.workers > 1 and reason != "error" and self.session.model is not None:
            digest = self.session.weights_digest()
            print(f"asr.train: worker {self.cluster.task_index}: stopped ({reason}) at step "
                  f"{self.progress.step}; weights crc32c {digest}", file=sys.stderr, flush=True)  # fmt: skip

    def _loop(self) -> str:
        """Epochs until a stop reason; returns it. A stop inside an epoch saves a checkpoint first. The batch
        iterator outlives the loop (``self._batches``): tearing a ``tf.data`` iterator down can take seconds,
        which must not fall between the last checkpoint and ``run_end`` on the run clock."""
        while True:
            reason = self._stop_reason()
            if reason:
                return reason
            self._batches = self._batches or self._stream()
            began = time.monotonic()
            reason = self._train_epoch(self._batches)
            if reason:
                self._save()
                return reason
            self._end_epoch(train_seconds=time.monotonic() - began)

    def _stop_reason(self) -> str | None:
        """Why to stop before the next step, agreed by every worker (a signal, the budget, the limits)."""
        reason = "signal" if self.stop and self.stop.signal is not None else None
        reason = reason or self.schedule.stop_reason(
            self.progress, self.clock.elapsed(), self.tracker.all_reached()
        )
        if self.cluster.workers > 1 and self._agreed_stop(reason is not None) and reason is None:
            reason = "signal"  # another worker stopped: stop with it (a signal or its clock's budget)
        return reason

    def _agreed_stop(self, stop: bool) -> bool:
        """True when any worker wants to stop: one all-reduce, so no worker steps alone into a collective."""
        import tensorflow as tf

        if self._vote is None:
            strategy = self.strategy
            self._vote = tf.function(
                lambda x: strategy.reduce(
                    tf.distribute.ReduceOp.SUM, strategy.run(tf.identity, args=(x,)), axis=None
                ),
                autograph=False,
            )
        return bool(self._vote(tf.constant(1.0 if stop else 0.0)) > 0)

    # ----------------------------------------------------------------------- the step loop

    def _stream(self):
        from asr import data

        batches = data.training_stream(
            self.shards, self.recipe.data, self.recipe.model, self.recipe.train.global_batch,
            self.progress.epoch, self.recipe.train.epochs, self.recipe.train.seed,
            skip_batches=self.progress.batches_in_epoch, replicas=self.strategy.num_replicas_in_sync,
        )  # fmt: skip
        return distributed_batches(self.strategy, batches, self.session)

    def _train_epoch(self, stream) -> str | None:
        """Steps to the end of the epoch in progress (None), or until a reason to stop inside it."""
        self._bar = _progress_bar(self.cluster.is_chief, self.plan.steps, self.progress)
        try:
            while True:
                began = time.monotonic()
                batch = self._next_batch(stream)
                if batch is None:
                    self._flush()
                    return None
                reason = self._stop_reason()
                if reason:
                    self._pending_batch = None  # not consumed: the resumed run reads it again
                    self._flush()  # the checkpoint that follows holds every batch read so far
                    return reason
                self._step(batch, began)
        finally:
            self._bar.close()

    def _next_batch(self, stream) -> tuple | None:
        """The epoch's next global batch, or None at its end (the next epoch's first batch is kept)."""
        import tensorflow as tf

        tagged, self._pending_batch = self._pending_batch, None
        if tagged is None:
            try:
                tagged = next(stream)
            except StopIteration:
                return None
            except tf.errors.DataLossError as error:
                raise TrainError(
                    "data.train: a shard became unreadable during training "
                    f"({error.message.splitlines()[0]}); rerun to check the shards again"
                ) from None
        *batch, tag = tagged
        if int(np.asarray(self.strategy.experimental_local_results(tag)[0])[0]) != self.progress.epoch:
            self._pending_batch = tagged
            return None
        return tuple(batch)

    def _step(self, batch: tuple, began: float) -> None:
        fault = failpoints.hit("train.step", key=self.progress.step + self.progress.skipped_steps + 1)
        if fault in ("nan", "inf"):
            batch = self.session.poison(batch, float(fault))
        self._set_learning_rate()
        result = self.session.train_step(batch)
        self._update_seconds += time.monotonic() - began
        self.progress.batches_in_epoch += 1
        self._bar.update(1)
        if result is not None:
            self._finish_update(result, batch)

    def _set_learning_rate(self) -> None:
        """Give the optimizer the schedule's rate for the coming update. Assigned every time (~0.2 ms
        against a step's tenths of a second): a cached value would go stale when the swap evaluator
        builds a new optimizer."""
        from asr.session import learning_rate_at

        self.session.optimizer.learning_rate = learning_rate_at(
            self.recipe.train, self.progress.epoch, self.progress.step
        )

    def _flush(self) -> None:
        """Apply the micro-batches accumulated so far (an epoch end or a stop inside an update)."""
        result = self.session.flush()
        if result is not None:
            self._finish_update(result, None)

    def _finish_update(self, result: tuple, batch: tuple | None) -> None:
        """Count and log one optimizer update (or a skipped one); sample and checkpoint when due."""
        loss, applied, audio, utterances = result
        seconds, self._update_seconds = self._update_seconds, 0.0
        if not applied:
            self._skipped()
            return
        self.progress.step += 1
        self.progress.consecutive_bad_steps = 0
        self._log_step(loss, seconds, audio, utterances)
        if batch is not None and self.schedule.sample_due(self.progress.step):
            self._sample(batch)
        if self.schedule.checkpoint_due(self.progress.step):
            self._save()

    def _log_step(self, loss: float, seconds: float, audio: float, batch: int) -> None:
        replicas = self.strategy.num_replicas_in_sync
        eps = batch / seconds
        learning_rate = float(np.asarray(self.session.optimizer.learning_rate))
        self.log.write("step", phase="train", loss=loss, batch_size=batch, replicas=replicas,
                       step_seconds=seconds, elements_per_second=eps,
                       elements_per_second_per_replica=eps / replicas, audio_seconds=audio,
                       learning_rate=learning_rate)  # fmt: skip
        self.log.scalars(self.progress.step, loss=loss, utterances_per_second=eps, step_seconds=seconds,
                         learning_rate=learning_rate)  # fmt: skip
        self._bar.set_postfix(loss=f"{loss:.2f}", utt_s=f"{eps:.1f}", refresh=False)

    def _skipped(self) -> None:
        """The non-finite policy: count the skipped step; too many in a row stop the run, saved."""
        progress = self.progress
        progress.skipped_steps += 1
        progress.consecutive_bad_steps += 1
        self.log.write(
            "skipped_step", reason="non-finite loss or gradient", consecutive=progress.consecutive_bad_steps
        )
        self.log.say(f"step {progress.step + 1}: non-finite loss or gradient; step skipped")
        if progress.consecutive_bad_steps >= self.recipe.train.max_consecutive_nan_steps:
            self._bar.close()
            self._save()
            raise NonFiniteError(
                f"{progress.consecutive_bad_steps} non-finite steps in a row "
                f"(train.max_consecutive_nan_steps); stopped with the last good weights saved in "
                f"{self.run_dir / 'checkpoints'}; lower train.learning_rate or set train.clip_norm"
            )

    def _sample(self, batch: tuple) -> None:
        local = [self.strategy.experimental_local_results(t)[0] for t in batch]
        pairs = self.session.greedy_sample(*local, count=SAMPLE_PAIRS)
        self.log.write("sample", pairs=pairs)
        if self.cluster.is_chief:
            self._bar.write(f"step {self.progress.step} greedy: {pairs[0][1]!r} (ref: {pairs[0][0]!r})")

    def _save(self, **extra: Any):
        began = time.monotonic()
        with self.log.phase("checkpoint"):
            saved = self.session.save(self.progress.step, self.run_state(**extra))
        self.log.write("checkpoint", path=str(saved.path), seconds=time.monotonic() - began)
        return saved

    # ----------------------------------------------------------------------- the epoch end

    def _end_epoch(self, train_seconds: float) -> None:
        """Checkpoint → evaluation → TTA. The checkpoint says an evaluation is pending until its results are
        in its state, so a run killed during the evaluation redoes it when resumed."""
        from asr.session import learning_rate_at

        finished = self.progress.epoch
        self.progress.epoch += 1
        self.progress.batches_in_epoch = 0
        due = self.schedule.evaluation_due(finished) and self.recipe.eval.mode != "external"
        checkpoint = self._save(epoch_end=finished, evaluation_pending=due)
        last_rate = learning_rate_at(self.recipe.train, finished, max(0, self.progress.step - 1))
        self.log.write("epoch_end", epoch=finished, train_seconds=train_seconds, learning_rate=last_rate)
        if due:
            self._evaluate(checkpoint)

    def _evaluate(self, checkpoint) -> None:
        """Evaluate an epoch-end checkpoint, log the results, update TTA, record both in the checkpoint."""
        from asr.decoding import DecoderWorkerError

        finished = int(checkpoint.state["epoch_end"])
        failpoints.hit("evaluate")
        try:
            results = self.evaluator.evaluate(self.session, checkpoint, self.log)
        except DecoderWorkerError:
            if self.stop is None or self.stop.signal is None:
                raise
            # the signal reached the decoding workers too (pkill -f, a scheduler's group kill): stop as
            # for the signal alone; the checkpoint still says the evaluation is pending, so a rerun redoes it
            self.log.say(f"evaluation of epoch {finished + 1} interrupted; it is redone when the run resumes")
            return
        for fields in results:
            event = self.log.write("eval", epoch=finished, checkpoint=checkpoint.name, **fields)
            if fields.get("extra"):
                continue  # eval.extra_sets: reported, never a TTA input
            for reached in self.tracker.update(event):
                self.log.write("target", **reached.event_fields())
                self.log.say(reached.describe())
        for fields in results:
            scores = ", ".join(
                f"{k} {fields[k]:.2f}" for k in ("loss", "wer", "cer") if fields.get(k) is not None
            )
            self.log.say(f"epoch {finished + 1}: {fields['split']} {scores}")
        state = self.run_state(epoch_end=finished, evaluation_pending=False)
        self.session.checkpointer.update_state(checkpoint, state)


def distributed_batches(strategy, dataset, session) -> Iterator:
    """An iterator of global batches split over the replicas; the step's input signature is set from it.

    With one replica the plain dataset is iterated: ``tf.distribute``'s multi-device iterator adds
    nothing there. The last element of each batch is the epoch tag, which the step does not take.
    """
    if strategy.num_replicas_in_sync == 1:
        session.set_input_spec(tuple(dataset.element_spec[:-1]))
        return iter(dataset)
    distributed = strategy.experimental_distribute_dataset(dataset)
    session.set_input_spec(tuple(distributed.element_spec[:-1]))
    return iter(distributed)


def _progress_bar(enabled: bool, steps: int, progress: Progress):
    from tqdm import tqdm

    return tqdm(
        total=steps,
        initial=progress.batches_in_epoch,
        desc=f"epoch {progress.epoch + 1}",
        unit="step",
        disable=not enabled,
        file=sys.stderr,
        dynamic_ncols=True,
        leave=False,
    )


# --------------------------------------------------------------------------- command line


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = OneLineParser(
        prog="python -m asr.train",
        description="Train the acoustic model from a recipe, evaluating every epoch (see docs/train.md).",
    )
    parser.add_argument("recipe", help="recipe YAML (recipes/*.yaml)")
    parser.add_argument("--run-dir", help="run directory (default: runs/<recipe name>); reused to resume")
    parser.add_argument(
        "--set", action="append", metavar="SECTION.KEY=VALUE", help="override a recipe value (repeatable)"
    )
    parser.add_argument("--resume", action="store_true", help="require a checkpoint to continue from")
    parser.add_argument(
        "--strict", action="store_true",
        help="stop on any damaged or missing shard instead of training on the readable records",
    )  # fmt: skip
    parser.add_argument(
        "--summary", action="store_true", help="print the model's layers and parameters, then exit"
    )
    return parser.parse_args(argv)


LOST_WORKER = re.compile(
    r"Task /job:\w+/replica:\d+/task:(\d+) heartbeat timeout|remote target /job:\w+/replica:\d+/task:(\d+)"
)
"""Where TensorFlow's collective errors name the dead task: its heartbeat timed out at the chief, or a
worker could not reach the chief's coordination service."""


def lost_worker_message(error: BaseException) -> str | None:
    """One line for a collective that failed because a worker died, or None for any other error."""
    import tensorflow as tf

    lost = (tf.errors.UnavailableError, tf.errors.AbortedError, tf.errors.DeadlineExceededError,
            tf.errors.CancelledError, tf.errors.InternalError)  # fmt: skip
    if not isinstance(error, lost):
        return None
    match = LOST_WORKER.search(str(error))
    who = f"worker {match.group(1) or match.group(2)}" if match else "another worker"
    return (
        f"{who} of this multi-worker run was lost ({type(error).__name__}); restart every worker with the "
        "same command to resume from the last checkpoint"
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TF's C++ info/warning lines would drown the progress
    command_line = shlex.join(["python", "-m", "asr.train", *(sys.argv[1:] if argv is None else argv)])
    try:
        return command(args, command_line)
    except (ConfigError, TrainError, WriteError) as error:
        print(f"asr.train: error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("asr.train: interrupted; rerun the same command to resume from the last checkpoint",
              file=sys.stderr)  # fmt: skip
        return 128 + signal.SIGINT
    except Exception as error:  # errors of the other stages carry their own one-line message
        message = _one_line_error(error)
        if message is None:
            lost = lost_worker_message(error) if "tensorflow" in sys.modules else None
            if lost is None:
                raise
            exit_after_lost_worker(lost)
        print(f"asr.train: error: {message}", file=sys.stderr)
        return EXIT_BAD_INPUT


def command(args: argparse.Namespace, command_line: str = "python -m asr.train") -> int:
    """``--summary``, a run that is already complete, or training, holding the run directory."""
    recipe = load_recipe(args.recipe, args.set or ())
    if args.summary:
        print(summary(recipe.model, recipe.data.max_frames))
        return 0
    run_dir = run_directory(args, recipe)
    with owning(run_dir, command_line):
        resuming = resuming_run(args, recipe, run_dir)
        done = completed(recipe, run_dir) if resuming else None
        if done:
            print(f"asr.train: {run_dir} is complete ({done}); nothing to do (raise train.epochs or the "
                  "limit with --set to train further)", file=sys.stderr)  # fmt: skip
            return 0
        import_tensorflow()
        return Trainer(recipe, run_dir, resuming, strict=args.strict).run()


def exit_after_lost_worker(message: str) -> None:
    """Print the one line and end the process now: its collectives are aborted, and TensorFlow's threads
    would print more errors and tracebacks while the interpreter shuts down, after the line that matters."""
    from asr.checkpoint import worker_scratch

    print(f"asr.train: error: {message}", file=sys.stderr, flush=True)
    sys.stdout.flush()
    with open(os.devnull, "w") as devnull:
        os.dup2(devnull.fileno(), 2)
    if worker_scratch.cache_info().currsize:
        shutil.rmtree(worker_scratch().parent, ignore_errors=True)
    os._exit(EXIT_BAD_INPUT)


def _one_line_error(error: Exception) -> str | None:
    from asr.checkpoint import CheckpointMismatchError, NoValidCheckpointError
    from asr.clustering import ClusteredFileError
    from asr.data import DataError
    from asr.decoding import DecoderWorkerError
    from asr.evaluate import EvaluateError
    from asr.strategy import StrategyError

    if isinstance(error, (DataError, StrategyError, CheckpointMismatchError, NoValidCheckpointError,
                          EvaluateError, ClusteredFileError, DecoderWorkerError)):  # fmt: skip
        return str(error)
    return None


if __name__ == "__main__":
    sys.exit(main())
