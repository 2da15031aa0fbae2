"""The training model, its optimizer and the compiled synchronous step, on a ``tf.distribute`` strategy.

:class:`TrainingSession` is what the training loop (:mod:`asr.train`) drives one batch at a time and what
the swap evaluator releases and rebuilds around an evaluation; :func:`make_train_step` is the step itself
(CTC loss over the global batch, non-finite steps skipped on every replica, optional clipping).
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from asr import text
from asr.config import Recipe, TrainConfig
from asr.features import FEATURE_DIM
from asr.model import output_frames


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
        self._accumulate_fn = self._apply_fn = None
        self._pending: list[tuple[float, float, float, int]] = []
        """Micro-batches accumulated since the last update: (loss sum, bad, frames, utterances) each."""
        self._infer = None
        self.input_spec = None
        self.ties: ClusterTies | None = None
        self.average: WeightAverage | None = None
        self.build()

    def build(self) -> None:
        import keras

        from asr.checkpoint import WEIGHT_AVERAGE_KEY, Checkpointer
        from asr.model import build_model

        keras.utils.set_random_seed(self.recipe.train.seed)
        with self.strategy.scope():
            self.model = build_model(self.recipe.model, sync_batch_norm=self.recipe.runtime.sync_batch_norm)
            self.optimizer = make_optimizer(self.recipe)
            self.optimizer.build(self.model.trainable_variables)
        if self.recipe.train.clustered_weights:
            self.ties = self.ties or ClusterTies(self.recipe.train.clustered_weights, self.model)
            self.ties.assign_weights(self.model)  # a checkpoint restored later replaces them
        extra = {}
        if self.recipe.train.ema_decay > 0:
            self.average = WeightAverage(self.strategy, self.model, self.recipe.train.ema_decay)
            extra[WEIGHT_AVERAGE_KEY] = self.average.variables
        self.checkpointer = Checkpointer(
            self.run_dir,
            self.recipe.train.keep_checkpoints,
            self.is_chief,
            model=self.model,
            optimizer=self.optimizer,
            dropout_random_state=random_state_variables(self.model),
            **extra,
        )
        self._make_steps()
        if self.input_spec is not None:  # compile now, so that swap-in time includes it
            (self._step_fn or self._accumulate_fn).get_concrete_function()

    def _make_steps(self) -> None:
        args = (
            self.strategy, self.model, self.optimizer, self.recipe, self.input_spec, self.ties, self.average
        )  # fmt: skip
        if self.recipe.train.accumulate_steps > 1:
            self._accumulate_fn, self._apply_fn = make_accumulation_steps(*args)
        else:
            self._step_fn = make_train_step(*args)

    def set_input_spec(self, spec) -> None:
        """Fix the step's input signature (the distributed dataset's element spec): one trace per build."""
        if self.input_spec is None:
            self.input_spec = spec
            self._make_steps()

    def release(self) -> None:
        """Drop model, optimizer and compiled step so their memory can be reused by evaluation."""
        import keras

        self.model = self.optimizer = self.checkpointer = self._step_fn = self._infer = self.average = None
        self._accumulate_fn = self._apply_fn = None
        keras.backend.clear_session(free_memory=True)
        gc.collect()

    def restore(self, checkpoint) -> dict[str, Any]:
        """(Re)build if released, then load weights, optimizer state; returns the checkpoint's run state."""
        if self.model is None:
            self.build()
        return self.checkpointer.restore(checkpoint)

    def save(self, step: int, state: dict[str, Any]):
        return self.checkpointer.save(step, state)

    def train_step(self, batch) -> tuple[float, bool, float, int] | None:
        """One synchronous step: ``(mean CTC loss per utterance, applied, unpadded audio seconds,
        utterances in the global batch)``. With ``train.accumulate_steps`` N > 1 the batch is a micro-batch:
        None until the N-th, whose update covers all N (:meth:`flush` applies fewer)."""
        if self._accumulate_fn is None:
            loss_sum, bad, frames, utterances = self._step_fn(batch)
            applied = float(bad) == 0.0
            return float(loss_sum) / float(utterances), applied, float(frames) * 0.01, int(utterances)
        self._pending.append(tuple(float(x) for x in self._accumulate_fn(batch)))
        return self.flush() if len(self._pending) >= self.recipe.train.accumulate_steps else None

    def flush(self) -> tuple[float, bool, float, int] | None:
        """Apply the micro-batches accumulated so far (at an epoch end or a stop); None if there are none."""
        if not self._pending:
            return None
        import tensorflow as tf

        bad = float(self._apply_fn(tf.constant(float(len(self._pending)))))
        loss_sum, _, frames, utterances = (sum(column) for column in zip(*self._pending, strict=True))
        self._pending = []
        return loss_sum / utterances, bad == 0.0, frames * 0.01, int(utterances)

    def poison(self, batch, value: float) -> tuple:
        """``batch`` with its features multiplied by ``value`` on every replica (``nan``/``inf``: a fault
        injected on purpose through :mod:`asr.failpoints`, so the real skip path runs)."""
        features, *rest = batch
        return (self.strategy.run(lambda f: f * value, args=(features,)), *rest)

    def weights_digest(self) -> str:
        """CRC32C of the trainable weights, printed by each worker of a multi-worker run at its end: the
        synchronous all-reduce makes them equal on every worker. Batch-norm statistics are left out: each
        replica keeps its own unless ``runtime.sync_batch_norm``."""
        import google_crc32c

        checksum = google_crc32c.Checksum()
        for weight in self.model.trainable_weights:
            checksum.update(np.ascontiguousarray(weight.numpy()).tobytes())
        return checksum.hexdigest().decode()

    def evaluation_weights(self) -> list[np.ndarray]:
        """The weights an evaluation measures, in ``model.weights`` order (what ``set_weights`` takes): the
        model's, with each trainable weight replaced by its average under ``train.ema_decay``."""
        weights = self.model.get_weights()
        if self.average is None:
            return weights
        position = {id(v): i for i, v in enumerate(self.model.weights)}
        for variable, average in zip(self.model.trainable_weights, self.average.variables, strict=True):
            weights[position[id(variable)]] = average.numpy()
        return weights

    def greedy_sample(self, features, frames, labels, label_lengths, count: int) -> list[list[str]]:
        """``[[reference, hypothesis], ...]`` for the first ``count`` utterances, greedy (beam width 1)."""
        import tensorflow as tf

        from asr.decoding import greedy_text

        if self._infer is None:
            model = self.model
            self._infer = tf.function(
                lambda x, n: model((x, n), training=False),
                autograph=False,
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


def ema_decay_at(decay: float, updates):
    """The averaging decay of the update after ``updates`` earlier ones: ``min(decay, (1 + n) / (10 + n))``
    (TensorFlow's ``num_updates`` rule), so that the first averages follow the fast-moving weights instead
    of holding on to their random start. Works on floats and on tensors."""
    short_start = (1.0 + updates) / (10.0 + updates)
    if isinstance(short_start, float):
        return min(decay, short_start)
    import tensorflow as tf

    return tf.minimum(tf.cast(decay, short_start.dtype), short_start)


class WeightAverage:
    """An exponential moving average of the trainable weights (``train.ema_decay``), one variable per
    trainable weight, created under the strategy like the weights (mirrored on every replica; a synchronous
    update leaves the same weights everywhere, so the same average). :meth:`update` runs in the
    cross-replica context of the step right after the optimizer applies an update; skipped steps do not
    move it."""

    def __init__(self, strategy, model, decay: float):
        import tensorflow as tf

        self.decay = decay
        with strategy.scope():
            self.variables = [
                tf.Variable(w.numpy(), trainable=False, name=f"average_{i}")
                for i, w in enumerate(model.trainable_weights)
            ]

    def update(self, distribution, weights, updates_before) -> None:
        """``average -= (1 - d) * (average - weight)`` on every replica, ``d`` from :func:`ema_decay_at`."""
        import tensorflow as tf

        decay = ema_decay_at(self.decay, tf.cast(updates_before, tf.float32))

        def move(average, weight):
            return average.assign_sub((1.0 - decay) * (average - tf.cast(weight, average.dtype)))

        for average, weight in zip(self.variables, weights, strict=True):
            distribution.extended.update(average, move, args=(weight.value,))


class ClusterTies:
    """Fixed cluster assignments for fine-tuning after clustering (``train.clustered_weights``).

    A table's weights are copies of its centroids, so the gradient of a centroid is the sum of its
    members' gradients. :meth:`tie` gives every member that sum: under any element-wise optimizer (Adam,
    AdaDelta) members that start equal get equal updates and stay equal, which is training the centroids
    with the assignments fixed. :meth:`for_norm` scales the tied gradients by ``1 / sqrt(members)`` so
    that a global-norm clip counts each centroid once, as if the model held only the centroids.
    """

    def __init__(self, path: str, model):
        from asr import clustering

        signature = clustering.signature({v.path: tuple(v.shape) for v in model.weights})
        try:
            tables, self.weights, _ = clustering.read_clustered_file(path, signature)
        except clustering.ClusteredFileError as error:  # "PATH: what is wrong", whatever the damage
            raise clustering.ClusteredFileError(f"train.clustered_weights: {error}") from None
        paths = [v.path for v in model.trainable_variables]
        self.shapes = [tuple(v.shape) for v in model.trainable_variables]
        self.tables = []
        """Per table: (positions in the trainable variables, flat cluster ids int32, clusters)."""
        for table in tables:
            frozen = [name for name in table.names if name not in paths]
            if frozen:
                raise clustering.ClusteredFileError(
                    f"train.clustered_weights: {path}: {frozen[0]} is not a trainable weight"
                )
            ids = np.concatenate([np.asarray(i, np.int32).ravel() for i in table.indices])
            self.tables.append((tuple(paths.index(n) for n in table.names), ids, int(table.centroids.size)))

    def assign_weights(self, model) -> None:
        """Set every weight of ``model`` to the file's (the clustered ones and those left as they were)."""
        for variable in model.weights:
            variable.assign(self.weights[variable.path])

    def tie(self, grads) -> list:
        """``grads`` with each clustered weight's gradient replaced by its cluster's summed gradient."""
        return self._per_table(grads, segment_totals)

    def for_norm(self, grads) -> list:
        """Tied ``grads`` scaled by ``1 / sqrt(cluster size)``: their global norm is the centroids'."""

        def scale(flat, ids, clusters):
            import tensorflow as tf

            sizes = np.bincount(ids, minlength=clusters).astype(np.float32)
            return flat * tf.constant(1.0 / np.sqrt(np.maximum(sizes, 1.0))[ids])

        return self._per_table(grads, scale)

    def _per_table(self, grads, function) -> list:
        import tensorflow as tf

        grads = list(grads)
        for positions, ids, clusters in self.tables:
            flat = tf.concat([tf.reshape(grads[p], [-1]) for p in positions], axis=0)
            parts = tf.split(function(flat, ids, clusters), [int(np.prod(self.shapes[p])) for p in positions])
            for p, part in zip(positions, parts, strict=True):
                grads[p] = tf.reshape(part, self.shapes[p])
        return grads


def segment_totals(flat, ids: np.ndarray, clusters: int):
    """Each element's segment total: ``sum(flat[ids == ids[i]])`` at position ``i``."""
    import tensorflow as tf

    ids = tf.constant(ids)
    return tf.gather(tf.math.unsorted_segment_sum(flat, ids, clusters), ids)


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


def learning_rate_at(train: TrainConfig, epoch: int, step: int) -> float:
    """The learning rate of the update after ``step`` updates, in ``epoch`` (0-based): a linear warm-up
    over ``train.warmup_steps`` updates, constant, then decayed once per epoch."""
    warmup = min(1.0, (step + 1) / train.warmup_steps) if train.warmup_steps else 1.0
    decay = train.learning_rate_decay ** max(0, epoch - train.learning_rate_decay_from_epoch)
    return train.learning_rate * warmup * decay


def loss_scale(optimizer):
    """The factor a :class:`keras.optimizers.LossScaleOptimizer` multiplies the loss by right now."""
    return optimizer.dynamic_scale if optimizer.built else optimizer.initial_scale


def clip_gradients(grads, global_grads, clip_norm: float, scale=1.0):
    """``grads`` scaled so that the global gradient's norm is at most ``clip_norm``.

    ``global_grads``: the gradients summed over replicas, whose norm decides (every replica applies the
    same factor to its share). Under float16 loss scaling the gradients carry the loss scale ``scale``:
    the norm is measured on the unscaled gradients (divided by ``scale``), so that the clip does not
    tighten by the loss scale (2^15 at the start); the factor applies to scaled and unscaled alike.
    """
    import tensorflow as tf

    norm = tf.linalg.global_norm(global_grads) / tf.cast(scale, tf.float32)
    factor = tf.minimum(1.0, clip_norm / (norm + 1e-12))
    return [g * tf.cast(factor, g.dtype) for g in grads]


def make_train_step(
    strategy, model, optimizer, recipe: Recipe, input_spec=None, ties=None, average=None
) -> Callable:
    """The compiled synchronous step over a distributed batch; returns (loss sum, bad-step flag, frames,
    utterances).

    Each replica computes the CTC loss of its share divided by the *global* batch (this step's: with
    dynamic batching it varies by length bucket), so the gradients the optimizer sums over replicas are
    the global batch's mean. A step whose loss or gradients are not
    finite on any replica is skipped on all of them: no gradient is applied and the batch-norm statistics
    it moved are put back. ``average`` (a :class:`WeightAverage`) moves after every applied update.
    """
    import tensorflow as tf

    parts = _StepParts(strategy, model, optimizer, recipe, ties, average)

    def replica_step(features, frames, labels, label_lengths):
        before = [tf.identity(v) for v in parts.statistics]
        loss_sum, grads, bad = parts.gradients(features, frames, labels, label_lengths)
        parts.clip_and_apply(grads, bad, before)
        return loss_sum, bad, tf.cast(tf.reduce_sum(frames), tf.float32), tf.shape(frames)[0]

    def step(batch):
        return parts.reduce(strategy.run(replica_step, args=batch))

    return _compile(step, recipe, input_spec)


def _compile(step, recipe: Recipe, input_spec):
    import tensorflow as tf

    jit = recipe.runtime.xla or None
    if input_spec is None:
        return tf.function(step, reduce_retracing=True, jit_compile=jit, autograph=False)
    return tf.function(step, input_signature=[input_spec], jit_compile=jit, autograph=False)


class _StepParts:
    """What the plain and the accumulating steps share, inside a replica: the loss and its gradients, and
    the clip-then-apply-or-skip that every replica agrees on."""

    def __init__(
        self,
        strategy,
        model,
        optimizer,
        recipe: Recipe,
        ties: ClusterTies | None = None,
        average: WeightAverage | None = None,
    ):
        import keras

        self.strategy, self.model, self.optimizer, self.recipe = strategy, model, optimizer, recipe
        self.ties, self.average = ties, average
        self.replicas = strategy.num_replicas_in_sync
        self.loss_scaled = isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
        self.variables = model.trainable_variables
        self.statistics = [v for v in model.non_trainable_variables if "seed_generator" not in v.path]

    def gradients(self, features, frames, labels, label_lengths):
        """``(loss sum, gradients of loss / global batch, all-reduced bad flag)`` of this replica's share."""
        import tensorflow as tf

        from asr.model import ctc_loss

        with tf.GradientTape() as tape:
            logits = self.model((features, frames), training=True)
            logit_frames = output_frames(frames, self.recipe.model)
            per_utterance = ctc_loss(labels, label_lengths, logits, logit_frames, self.recipe.runtime.xla)
            loss_sum = tf.reduce_sum(per_utterance)
            global_batch = tf.cast(tf.shape(features)[0] * self.replicas, tf.float32)  # varies by bucket
            loss = loss_sum / global_batch
            scaled = self.optimizer.scale_loss(loss) if self.loss_scaled else loss
        grads = tape.gradient(scaled, self.variables)
        if self.ties is not None:
            grads = self.ties.tie(grads)
        bad = tf.cast(~tf.math.is_finite(loss_sum), tf.float32)
        if not self.loss_scaled:  # a loss-scaled optimizer skips overflowing steps itself
            bad += tf.cast(~tf.math.is_finite(tf.linalg.global_norm(grads)), tf.float32)
        context = tf.distribute.get_replica_context()
        return loss_sum, grads, context.all_reduce(tf.distribute.ReduceOp.SUM, bad)

    def clip_and_apply(self, grads, bad, before) -> None:
        """Clip by the global norm, then apply on every replica, or skip on every replica when ``bad`` (and
        put the batch-norm statistics back to ``before``, where given)."""
        import tensorflow as tf

        context = tf.distribute.get_replica_context()
        clip_norm = self.recipe.train.clip_norm
        if clip_norm > 0:
            summed = context.all_reduce(tf.distribute.ReduceOp.SUM, grads)
            if self.ties is not None:
                summed = self.ties.for_norm(summed)
            scale = loss_scale(self.optimizer) if self.loss_scaled else 1.0
            grads = clip_gradients(grads, summed, clip_norm, scale)
        optimizer, variables, statistics = self.optimizer, self.variables, self.statistics
        average, loss_scaled = self.average, self.loss_scaled

        def apply_or_skip(distribution, grads, bad, before):
            ok = tf.equal(distribution.experimental_local_results(bad)[0], 0.0)

            def apply():
                updates_before = tf.convert_to_tensor(optimizer.iterations)
                distribution.extended.call_for_each_replica(
                    lambda g: optimizer.apply_gradients(zip(g, variables, strict=False)), args=(grads,)
                )
                if average is not None:
                    move_average(distribution, updates_before)
                return tf.constant(True)

            def move_average(distribution, updates_before):
                """After an applied update only: a loss-scale optimizer skips an overflowing one itself,
                leaving its update count (``iterations``) where it was."""

                def move():
                    average.update(distribution, variables, updates_before)
                    return tf.constant(True)

                if not loss_scaled:
                    move()
                    return
                applied = tf.not_equal(tf.convert_to_tensor(optimizer.iterations), updates_before)
                tf.cond(applied, move, lambda: tf.constant(False))

            def skip():
                first = distribution.experimental_local_results(before)[0] if before else []
                for variable, value in zip(statistics, first, strict=False):
                    variable.assign(value)
                return tf.constant(False)

            tf.cond(ok, apply, skip)

        context.merge_call(apply_or_skip, args=(grads, bad, before))

    def reduce(self, per_replica):
        """``(loss sum, bad flag, frames, utterances)`` over replicas."""
        import tensorflow as tf

        loss_sum, bad, frames, utterances = per_replica
        sum_, mean = tf.distribute.ReduceOp.SUM, tf.distribute.ReduceOp.MEAN
        return (
            self.strategy.reduce(sum_, loss_sum, axis=None),
            self.strategy.reduce(mean, bad, axis=None),
            self.strategy.reduce(sum_, frames, axis=None),
            self.strategy.reduce(sum_, utterances, axis=None),
        )


def make_accumulation_steps(
    strategy, model, optimizer, recipe: Recipe, input_spec=None, ties=None, average=None
):
    """Gradient accumulation (``train.accumulate_steps``): ``(accumulate, apply)`` compiled steps.

    ``accumulate(batch)`` adds each replica's gradient of its micro-batch (loss / that micro-batch's
    global size) into per-replica accumulators and counts non-finite ones; returns what a plain step
    returns. ``apply(count)`` divides the sums by ``count`` micro-batches (the mean loss's gradient over
    them: with equal micro-batches exactly one batch ``count`` times larger, batch normalization aside,
    whose statistics come from each micro-batch), clips, applies on every replica or skips on every
    replica when any micro-batch was non-finite, and empties the accumulators; returns the bad flag.
    """
    import tensorflow as tf

    parts = _StepParts(strategy, model, optimizer, recipe, ties, average)
    on_read = {"trainable": False, "synchronization": tf.VariableSynchronization.ON_READ,
               "aggregation": tf.VariableAggregation.SUM}  # fmt: skip
    with strategy.scope():
        sums = [tf.Variable(tf.zeros(v.shape, v.dtype), **on_read) for v in parts.variables]
        bad_sum = tf.Variable(0.0, **on_read)

    def replica_accumulate(features, frames, labels, label_lengths):
        loss_sum, grads, bad = parts.gradients(features, frames, labels, label_lengths)
        for total, grad in zip(sums, grads, strict=True):
            total.assign_add(grad)
        bad_sum.assign_add(bad)
        return loss_sum, bad, tf.cast(tf.reduce_sum(frames), tf.float32), tf.shape(frames)[0]

    def accumulate(batch):
        return parts.reduce(strategy.run(replica_accumulate, args=batch))

    def replica_apply(count):
        grads = [tf.identity(total) / count for total in sums]
        bad = tf.identity(bad_sum)
        parts.clip_and_apply(grads, bad, [])
        with tf.control_dependencies([*grads, bad]):
            for total in sums:
                total.assign(tf.zeros_like(total))
            bad_sum.assign(0.0)
        return bad

    def apply(count):
        mean = tf.distribute.ReduceOp.MEAN
        return strategy.reduce(mean, strategy.run(replica_apply, args=(count,)), axis=None)

    return _compile(accumulate, recipe, input_spec), tf.function(apply, autograph=False)
