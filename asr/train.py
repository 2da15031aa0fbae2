"""Train the acoustic model from a recipe (paper Figure 6): ``python -m asr.train RECIPE.yaml``.

    python -m asr.train recipes/cpu.yaml --run-dir runs/cpu [--set train.global_batch=48] [--resume]
    python -m asr.train --summary recipes/base.yaml

The loop trains with synchronous data parallelism on the recipe's ``tf.distribute`` strategy; every
``sample_every_steps`` it decodes a training batch greedily and logs a few sentences; every
``checkpoint_every_steps`` it saves a checkpoint; at each epoch end it saves one and hands over to the
recipe's evaluator (:mod:`asr.evaluators`), feeds the results to the time-to-accuracy tracker and goes on.
It stops after ``train.epochs``, ``train.max_steps``, the ``train.time_budget_minutes`` run-clock budget,
when every TTA target is reached (``tta.stop_at_last_target``), or on Ctrl-C/SIGTERM, saving a checkpoint
first. Running again into the same run directory (or with ``--resume``) continues from the latest
checkpoint with step, epoch, data position, optimizer state, TTA history and run clock intact.

The run directory holds ``recipe.yaml`` (fully resolved), ``events.jsonl`` (see :mod:`asr.events`),
``checkpoints/`` and ``tensorboard/``. Errors that stop the run print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from asr import text
from asr.config import ConfigError, Recipe, dump_recipe, load_recipe, recipe_from_dict
from asr.features import FEATURE_DIM
from asr.model import output_frames, summary

EXIT_BAD_INPUT = 2
RECIPE_FILE = "recipe.yaml"
SAMPLE_PAIRS = 3


class TrainError(Exception):
    """The run cannot go on; the message names the file, key or cause (exit status 2)."""


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


# --------------------------------------------------------------------------- the training session


class TrainingSession:
    """The training model, optimizer and compiled step on a strategy.

    ``release()`` drops them from the devices and ``restore()`` rebuilds them from a checkpoint: what the
    swap evaluator does around each evaluation.
    """

    def __init__(self, strategy, recipe: Recipe, run_dir: Path, is_chief: bool):
        self.strategy = strategy
        self.recipe = recipe
        self.run_dir = run_dir
        self.is_chief = is_chief
        self.model = None
        self.optimizer = None
        self.checkpointer = None
        self._step_fn = None
        self._infer = None
        self.input_spec = None
        self.build()

    def build(self) -> None:
        import keras
        import tensorflow as tf

        from asr.checkpoint import Checkpointer
        from asr.model import build_model

        keras.utils.set_random_seed(self.recipe.train.seed)
        with self.strategy.scope():
            self.model = build_model(self.recipe.model, sync_batch_norm=self.recipe.runtime.sync_batch_norm)
            self.optimizer = make_optimizer(self.recipe)
            self.optimizer.build(self.model.trainable_variables)
        self.checkpointer = Checkpointer(
            self.run_dir,
            self.recipe.train.keep_checkpoints,
            self.is_chief,
            model=self.model,
            optimizer=self.optimizer,
            dropout_random_state=random_state_variables(self.model),
        )
        self._step_fn = make_train_step(
            self.strategy, self.model, self.optimizer, self.recipe, self.input_spec
        )
        if self.input_spec is not None:  # compile now, so that swap-in time includes it
            self._step_fn.get_concrete_function()
        del tf

    def set_input_spec(self, spec) -> None:
        """Fix the step's input signature (the distributed dataset's element spec): one trace per build."""
        if self.input_spec is None:
            self.input_spec = spec
            self._step_fn = make_train_step(self.strategy, self.model, self.optimizer, self.recipe, spec)

    def release(self) -> None:
        """Drop model, optimizer and compiled step so their memory can be reused by evaluation."""
        import keras

        self.model = self.optimizer = self.checkpointer = self._step_fn = self._infer = None
        keras.backend.clear_session(free_memory=True)
        gc.collect()

    def restore(self, checkpoint) -> dict[str, Any]:
        """(Re)build if released, then load weights, optimizer state; returns the checkpoint's run state."""
        if self.model is None:
            self.build()
        return self.checkpointer.restore(checkpoint)

    def save(self, step: int, state: dict[str, Any]):
        return self.checkpointer.save(step, state)

    def train_step(self, batch) -> tuple[float, bool, float]:
        """One synchronous step: ``(mean CTC loss per utterance, applied, unpadded audio seconds)``."""
        loss_sum, bad, frames = self._step_fn(batch)
        applied = float(bad) == 0.0
        return float(loss_sum) / self.recipe.train.global_batch, applied, float(frames) * 0.01

    def greedy_sample(self, features, frames, labels, label_lengths, count: int) -> list[list[str]]:
        """``[[reference, hypothesis], ...]`` for the first ``count`` utterances, greedy (beam width 1)."""
        import tensorflow as tf

        from asr.decoding import greedy_text

        if self._infer is None:
            model = self.model
            self._infer = tf.function(
                lambda x, n: model((x, n), training=False),
                input_signature=[tf.TensorSpec([None, None, FEATURE_DIM]), tf.TensorSpec([None], tf.int32)],
            )
        features = np.asarray(features)[:count]
        frames = np.asarray(frames)[:count]
        logits = np.asarray(self._infer(tf.constant(features, tf.float32), tf.constant(frames, tf.int32)))
        out = np.asarray(output_frames(frames, self.recipe.model))
        pairs = []
        for row in range(len(features)):
            reference = text.decode(np.asarray(labels)[row, : int(np.asarray(label_lengths)[row])].tolist())
            pairs.append([reference, greedy_text(logits[row, : out[row]])])
        return pairs


def random_state_variables(model) -> list:
    """The dropout layers' random-generator states, which Keras leaves out of ``tf.train.Checkpoint``;
    saved too, so that a resumed or swapped-back run draws the dropout masks it would have drawn."""
    return [v.value for v in model.variables if "seed_generator" in v.path]


def make_optimizer(recipe: Recipe):
    """AdaDelta (the paper's) or Adam, loss-scaled under float16 mixed precision."""
    import keras

    train = recipe.train
    if train.optimizer == "adadelta":
        optimizer = keras.optimizers.Adadelta(
            learning_rate=train.learning_rate, rho=train.rho, epsilon=train.epsilon
        )
    else:
        optimizer = keras.optimizers.Adam(learning_rate=train.learning_rate, epsilon=train.epsilon)
    if recipe.runtime.mixed_precision == "float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer


def learning_rate_at(recipe: Recipe, epoch: int) -> float:
    """The learning rate of ``epoch`` (0-based): constant, then decayed once per epoch."""
    train = recipe.train
    return train.learning_rate * train.learning_rate_decay ** max(
        0, epoch - train.learning_rate_decay_from_epoch
    )


def make_train_step(strategy, model, optimizer, recipe: Recipe, input_spec=None) -> Callable:
    """The compiled synchronous step over a distributed batch; returns (loss sum, bad-step flag, frames).

    Each replica computes the CTC loss of its share divided by the *global* batch, so the gradients the
    optimizer sums over replicas are the global batch's mean. A step whose loss or gradients are not
    finite on any replica is skipped on all of them: no gradient is applied and the batch-norm statistics
    it moved are put back.
    """
    import keras
    import tensorflow as tf

    from asr.model import ctc_loss

    global_batch = recipe.train.global_batch
    clip_norm = recipe.train.clip_norm
    loss_scaled = isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
    variables = model.trainable_variables
    statistics = [v for v in model.non_trainable_variables if "seed_generator" not in v.path]

    def replica_step(features, frames, labels, label_lengths):
        before = [tf.identity(v) for v in statistics]
        with tf.GradientTape() as tape:
            logits = model((features, frames), training=True)
            per_utterance = ctc_loss(labels, label_lengths, logits, output_frames(frames, recipe.model))
            loss_sum = tf.reduce_sum(per_utterance)
            loss = loss_sum / global_batch
            scaled = optimizer.scale_loss(loss) if loss_scaled else loss
        grads = tape.gradient(scaled, variables)
        context = tf.distribute.get_replica_context()
        bad = tf.cast(~tf.math.is_finite(loss_sum), tf.float32)
        if not loss_scaled:  # a loss-scaled optimizer skips overflowing steps itself
            bad += tf.cast(~tf.math.is_finite(tf.linalg.global_norm(grads)), tf.float32)
        bad = context.all_reduce(tf.distribute.ReduceOp.SUM, bad)
        if clip_norm > 0:
            norm = tf.linalg.global_norm(context.all_reduce(tf.distribute.ReduceOp.SUM, grads))
            grads = [g * tf.minimum(1.0, clip_norm / (norm + 1e-12)) for g in grads]

        def apply_or_skip(distribution, grads, bad, before):
            ok = tf.equal(distribution.experimental_local_results(bad)[0], 0.0)

            def apply():
                distribution.extended.call_for_each_replica(
                    lambda g: optimizer.apply_gradients(zip(g, variables, strict=False)), args=(grads,)
                )
                return tf.constant(True)

            def skip():
                first = distribution.experimental_local_results(before)[0] if before else []
                for variable, value in zip(statistics, first, strict=False):
                    variable.assign(value)
                return tf.constant(False)

            tf.cond(ok, apply, skip)

        context.merge_call(apply_or_skip, args=(grads, bad, before))
        return loss_sum, bad, tf.cast(tf.reduce_sum(frames), tf.float32)

    def step(batch):
        loss_sum, bad, frames = strategy.run(replica_step, args=batch)
        return (
            strategy.reduce(tf.distribute.ReduceOp.SUM, loss_sum, axis=None),
            strategy.reduce(tf.distribute.ReduceOp.MEAN, bad, axis=None),
            strategy.reduce(tf.distribute.ReduceOp.SUM, frames, axis=None),
        )

    jit = recipe.runtime.xla or None
    if input_spec is None:
        return tf.function(step, reduce_retracing=True, jit_compile=jit)
    return tf.function(step, input_signature=[input_spec], jit_compile=jit)


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

    def say(self, message: str) -> None:
        if self.is_chief:
            print(f"asr.train: {message}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.summary_writer is not None:
            self.summary_writer.flush()
        if self.events is not None:
            self.events.close()


class StopFlag:
    """Turns the first SIGINT/SIGTERM into a request the loop honours after the current step."""

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


def resolve_run(args: argparse.Namespace) -> tuple[Recipe, Path, bool]:
    """The recipe to run, the run directory and whether it resumes an existing run."""
    recipe = load_recipe(args.recipe, args.set or ())
    run_dir = Path(args.run_dir or Path("runs") / recipe.name)
    saved = run_dir / RECIPE_FILE
    from asr.checkpoint import latest_checkpoint

    resuming = latest_checkpoint(run_dir) is not None
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
    return recipe, run_dir, resuming


# --------------------------------------------------------------------------- the loop


def _find_corrupt_shard(shards) -> str:
    import tensorflow as tf

    for file in shards.files:
        try:
            for _ in tf.data.TFRecordDataset(file, compression_type=shards.compression_type):
                pass
        except (tf.errors.DataLossError, tf.errors.InvalidArgumentError):
            return file
    return "one of the shards"


def train(recipe: Recipe, run_dir: Path, resuming: bool) -> int:
    """Run (or continue) training; returns the exit status."""
    from asr import data
    from asr.checkpoint import latest_checkpoint
    from asr.clock import RunClock
    from asr.evaluators import make_evaluator
    from asr.sampler import UtilizationSampler
    from asr.strategy import cluster_from_environment, describe, make_strategy
    from asr.tta import TTATracker

    cluster = cluster_from_environment()
    strategy = make_strategy(recipe.runtime)
    import tensorflow as tf

    train_shards = data.open_shards(recipe.data.train, "data.train")
    plan = data.plan_epoch(train_shards, recipe.data, recipe.model, recipe.train.global_batch)
    if plan.steps == 0:
        raise TrainError(
            f"data.train: {recipe.data.train}: {plan.kept} trainable utterances make no full global batch of "
            f"{recipe.train.global_batch} (dropped: {plan.dropped or 'none'})"
        )
    if cluster.is_chief:
        from asr.evaluators.common import write_normalization

        run_dir.mkdir(parents=True, exist_ok=True)
        tmp = run_dir / f".{RECIPE_FILE}.tmp"
        tmp.write_text(dump_recipe(recipe))
        os.replace(tmp, run_dir / RECIPE_FILE)
        write_normalization(
            run_dir, train_shards.mean, train_shards.std, str(train_shards.path / data.MANIFEST)
        )

    progress = Progress()
    session = TrainingSession(strategy, recipe, run_dir, cluster.is_chief)
    tracker = TTATracker(recipe.tta.targets, recipe.tta.window)
    clock = RunClock()
    if resuming:
        state = session.restore(latest_checkpoint(run_dir))
        progress = Progress(**state["progress"])
        clock = RunClock.resume(state["clock"])
        if state.get("tta"):
            tracker = TTATracker.from_state(state["tta"])
    log = RunLog(run_dir, clock, progress, cluster.is_chief)
    evaluator = make_evaluator(recipe, strategy, run_dir)

    def run_state(**extra: Any) -> dict[str, Any]:
        return {
            "progress": dataclasses.asdict(progress),
            "clock": clock.state(),
            "tta": tracker.state(),
            **extra,
        }

    def save(**extra: Any):
        began = time.monotonic()
        with log.phase("checkpoint"):
            saved = session.save(progress.step, run_state(**extra))
        log.write("checkpoint", path=str(saved.path), seconds=time.monotonic() - began)
        return saved

    log.write(
        "run_start",
        recipe=recipe.name,
        rig=recipe.rig.name,
        replicas=strategy.num_replicas_in_sync,
        workers=cluster.workers,
        resumed=resuming,
        downtime=clock.downtime,
        strategy=describe(strategy),
        steps_per_epoch=plan.steps,
        utterances=plan.kept,
        dropped=plan.dropped,
        extract_seconds=train_shards.manifest.get("extraction_seconds"),
        parameters=int(session.model.count_params()),
    )
    log.say(f"{describe(strategy)}; {session.model.count_params():,} parameters")
    log.say(
        f"{recipe.data.train}: {plan.kept} utterances ({plan.audio_seconds / 3600:.2f} h), "
        f"{plan.steps} steps of {recipe.train.global_batch} per epoch; dropped "
        + (", ".join(f"{n} {reason}" for reason, n in plan.dropped.items()) or "none")
    )
    if resuming:
        log.say(
            f"resumed at epoch {progress.epoch + 1}, step {progress.step} "
            f"(run clock {clock.elapsed() / 60:.1f} min, downtime {clock.downtime / 60:.1f} min)"
        )

    reason = "epochs"
    budget = recipe.train.time_budget_minutes * 60
    sampler = (
        UtilizationSampler(
            log,
            recipe.tta.sample_interval_seconds,
            clock=clock,
            position=lambda: (progress.epoch, progress.step),
        )
        if cluster.is_chief
        else None
    )
    if sampler:
        sampler.start()
    try:
        with StopFlag() as stop:
            stream = distributed_batches(
                strategy,
                data.training_stream(
                    train_shards,
                    recipe.data,
                    recipe.model,
                    recipe.train.global_batch,
                    progress.epoch,
                    recipe.train.epochs,
                    recipe.train.seed,
                    skip_batches=progress.batches_in_epoch,
                ),
                session,
            )
            pending = None
            while progress.epoch < recipe.train.epochs:
                epoch_started = time.monotonic()
                session.optimizer.learning_rate = learning_rate_at(recipe, progress.epoch)
                bar = _progress_bar(cluster.is_chief, plan.steps, progress)
                while True:
                    began = time.monotonic()
                    try:
                        tagged = pending if pending is not None else next(stream)
                    except StopIteration:
                        break
                    except tf.errors.DataLossError:
                        raise TrainError(
                            f"data.train: {_find_corrupt_shard(train_shards)}: corrupted shard "
                            "(TFRecord CRC or GZIP error); re-extract it"
                        ) from None
                    pending = None
                    *batch, tag = tagged
                    if int(np.asarray(strategy.experimental_local_results(tag)[0])[0]) != progress.epoch:
                        pending = tagged  # the first batch of the next epoch
                        break
                    loss, applied, audio = session.train_step(tuple(batch))
                    seconds = time.monotonic() - began
                    progress.batches_in_epoch += 1
                    bar.update(1)
                    if applied:
                        progress.step += 1
                        progress.consecutive_bad_steps = 0
                        eps = recipe.train.global_batch / seconds
                        log.write(
                            "step",
                            phase="train",
                            loss=loss,
                            batch_size=recipe.train.global_batch,
                            replicas=strategy.num_replicas_in_sync,
                            step_seconds=seconds,
                            elements_per_second=eps,
                            elements_per_second_per_replica=eps / strategy.num_replicas_in_sync,
                            audio_seconds=audio,
                        )
                        log.scalars(
                            progress.step,
                            loss=loss,
                            utterances_per_second=eps,
                            step_seconds=seconds,
                            learning_rate=float(np.asarray(session.optimizer.learning_rate)),
                        )
                        bar.set_postfix(loss=f"{loss:.2f}", utt_s=f"{eps:.1f}", refresh=False)
                    else:
                        progress.skipped_steps += 1
                        progress.consecutive_bad_steps += 1
                        log.write(
                            "skipped_step",
                            reason="non-finite loss or gradient",
                            consecutive=progress.consecutive_bad_steps,
                        )
                        log.say(f"step {progress.step + 1}: non-finite loss or gradient; step skipped")
                        if progress.consecutive_bad_steps >= recipe.train.max_consecutive_nan_steps:
                            bar.close()
                            save()
                            reason = "nan"
                            raise TrainError(
                                f"{progress.consecutive_bad_steps} non-finite steps in a row (train."
                                "max_consecutive_nan_steps); stopped with the last good weights saved in "
                                f"{run_dir / 'checkpoints'}; lower train.learning_rate or set train.clip_norm"
                            )
                    if applied and itstime(progress.step, recipe.train.sample_every_steps):
                        local = [strategy.experimental_local_results(t)[0] for t in batch]
                        pairs = session.greedy_sample(*local, count=SAMPLE_PAIRS)
                        log.write("sample", pairs=pairs)
                        if cluster.is_chief:
                            bar.write(f"step {progress.step} greedy: {pairs[0][1]!r} (ref: {pairs[0][0]!r})")
                    if applied and itstime(progress.step, recipe.train.checkpoint_every_steps):
                        save()
                    if stop.signal is not None:
                        reason = "signal"
                        break
                    if budget and clock.elapsed() >= budget:
                        reason = "time_budget"
                        break
                    if recipe.train.max_steps and progress.step >= recipe.train.max_steps:
                        reason = "max_steps"
                        break
                bar.close()
                if reason in ("signal", "time_budget", "max_steps"):
                    save()
                    break
                train_seconds = time.monotonic() - epoch_started
                finished_epoch = progress.epoch
                progress.epoch += 1
                progress.batches_in_epoch = 0
                checkpoint = save(epoch_end=finished_epoch)
                log.write(
                    "epoch_end",
                    epoch=finished_epoch,
                    train_seconds=train_seconds,
                    learning_rate=learning_rate_at(recipe, finished_epoch),
                )
                if itstime(finished_epoch + 1, recipe.eval.every_epochs):
                    results = evaluator.evaluate(session, checkpoint, log)
                    for fields in results:
                        event = log.write("eval", epoch=finished_epoch, checkpoint=checkpoint.name, **fields)
                        for reached in tracker.update(event):
                            log.write("target", **reached.event_fields())
                            log.say(reached.describe())
                    for fields in results:
                        log.say(
                            f"epoch {finished_epoch + 1}: {fields['split']} "
                            + ", ".join(
                                f"{k} {fields[k]:.2f}"
                                for k in ("loss", "wer", "cer")
                                if fields.get(k) is not None
                            )
                        )
                    if results:  # the TTA state after this evaluation goes with the checkpoint
                        session.checkpointer.update_state(checkpoint, run_state(epoch_end=finished_epoch))
                if recipe.tta.stop_at_last_target and tracker.targets and tracker.all_reached():
                    reason = "targets"
                    break
    except TrainError:
        if reason != "nan":
            reason = "error"
        raise
    except KeyboardInterrupt:
        reason = "signal"
        raise
    except BaseException:
        reason = "error"
        raise
    finally:
        if sampler:
            sampler.stop()
        log.write("run_end", reason=reason, skipped_steps=progress.skipped_steps, phases=clock.phases)
        log.close()
        evaluator.close()
    log.say(
        f"stopped ({reason}) at epoch {progress.epoch}, step {progress.step}; "
        f"run clock {clock.elapsed() / 60:.2f} min"
    )
    if reason == "signal":
        return 128 + int(stop.signal or signal.SIGINT)
    return 0


def distributed_batches(strategy, dataset, session: TrainingSession) -> Iterator:
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
    parser = argparse.ArgumentParser(
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
        "--summary", action="store_true", help="print the model's layers and parameters, then exit"
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TF's C++ info/warning lines would drown the progress
    try:
        if args.summary:
            recipe = load_recipe(args.recipe, args.set or ())
            print(summary(recipe.model, recipe.data.max_frames))
            return 0
        recipe, run_dir, resuming = resolve_run(args)
        return train(recipe, run_dir, resuming)
    except (ConfigError, TrainError) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except Exception as error:  # errors of the data and strategy modules carry their own one-line message
        from asr.checkpoint import CheckpointMismatchError
        from asr.data import DataError
        from asr.strategy import StrategyError

        if isinstance(error, (DataError, StrategyError, CheckpointMismatchError)):
            print(f"error: {error}", file=sys.stderr)
            return EXIT_BAD_INPUT
        raise


if __name__ == "__main__":
    sys.exit(main())
