"""The training step's numerics: gradient clipping under loss scaling, and reduced precision."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from asr.config import TrainConfig, load_recipe
from asr.model import build_model
from asr.session import clip_gradients, learning_rate_at, make_optimizer, make_train_step

REPO_ROOT = Path(__file__).resolve().parents[1]
TINY = REPO_ROOT / "recipes" / "tiny.yaml"
ONE_LAYER = ["model.rnn_layers=1", "model.dropout=0", "data.spec_augment=false"]
"""The tiny recipe with one recurrent layer and nothing random but the initialization."""


def test_clipping_measures_the_norm_of_the_unscaled_gradients():
    grads = [tf.constant([3.0, 4.0]), tf.constant([[0.0, 0.0]])]  # global norm 5
    clipped = clip_gradients(grads, grads, clip_norm=1.0)
    np.testing.assert_allclose(clipped[0].numpy(), [0.6, 0.8], rtol=1e-6)
    scale = 2.0**15  # float16 loss scaling's starting scale
    scaled = [g * scale for g in grads]
    clipped_scaled = clip_gradients(scaled, scaled, clip_norm=1.0, scale=scale)
    np.testing.assert_allclose(clipped_scaled[0].numpy() / scale, [0.6, 0.8], rtol=1e-6)  # powers of 2: exact
    unclipped = clip_gradients(scaled, scaled, clip_norm=10.0, scale=scale)
    np.testing.assert_array_equal(unclipped[0].numpy(), scaled[0].numpy())


def test_learning_rate_warms_up_linearly_then_decays_once_per_epoch():
    train = TrainConfig(learning_rate=4e-3, warmup_steps=4, learning_rate_decay=0.5,
                        learning_rate_decay_from_epoch=1)  # fmt: skip
    rates = [learning_rate_at(train, epoch=0, step=step) for step in range(6)]
    np.testing.assert_allclose(rates, [1e-3, 2e-3, 3e-3, 4e-3, 4e-3, 4e-3], rtol=1e-12)
    assert learning_rate_at(train, epoch=1, step=40) == pytest.approx(4e-3)
    assert learning_rate_at(train, epoch=3, step=120) == pytest.approx(1e-3)
    assert learning_rate_at(train, epoch=3, step=0) == pytest.approx(0.25e-3)  # both factors at once
    plain = TrainConfig(learning_rate=4e-3)
    assert [learning_rate_at(plain, epoch, step) for epoch, step in ((0, 0), (9, 500))] == [4e-3, 4e-3]


def batch(seed: int = 0):
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(4, 120, 93)).astype(np.float32)
    frames = np.array([120, 110, 100, 90], np.int32)
    labels = rng.integers(1, 27, size=(4, 12)).astype(np.int32)
    return features, frames, labels, np.array([12, 10, 8, 6], np.int32)


def losses_after_steps(precision: str, steps: int = 3, overrides: tuple[str, ...] = ()) -> list[float]:
    recipe = load_recipe(TINY, [*ONE_LAYER, f"runtime.mixed_precision={precision}", *overrides])
    keras.mixed_precision.set_global_policy("float32" if precision == "float32" else f"mixed_{precision}")
    try:
        keras.utils.set_random_seed(0)
        strategy = tf.distribute.get_strategy()
        model = build_model(recipe.model)
        optimizer = make_optimizer(recipe)
        step = make_train_step(strategy, model, optimizer, recipe)
        data = tuple(tf.constant(x) for x in batch())
        return [float(step(data)[0]) / 4 for _ in range(steps)]
    finally:
        keras.mixed_precision.set_global_policy("float32")


PRECISION_TOLERANCE = {"float16": 1e-3, "bfloat16": 1e-2}
"""Relative difference of the mean CTC loss from float32's over the first steps. The loss and softmax stay
float32; the layers compute in float16 (11 significant bits, 2^-11 = 0.05 % per rounding) or bfloat16 (8
bits, 0.4 %), largely averaging out over a loss that sums ~40 frames' log-probabilities per path: measured
at most 1e-4 (float16) and 1e-3 (bfloat16) on this batch (AMD EPYC); the tolerances leave 10×. With the
clip measured on loss-scaled gradients (the defect this guards) float16's second step differs by ~10 %."""


@pytest.mark.parametrize("precision", ["float16", "bfloat16"])
def test_reduced_precision_steps_give_float32s_losses(precision):
    """float16's loss scaling starts at 2^15 and skips the steps whose scaled gradients overflow, halving
    the scale each time (Keras' LossScaleOptimizer): those repeat the previous loss and are left out."""
    reference = losses_after_steps("float32", steps=4)
    losses = losses_after_steps(precision, steps=4)
    assert reference[-1] < reference[0], "the steps should learn something for the comparison to mean much"
    skipped = next(i for i in range(1, len(losses)) if losses[i] != losses[i - 1]) - 1
    assert skipped <= (2 if precision == "float16" else 0)
    kept = losses[skipped:]
    np.testing.assert_allclose(kept, reference[: len(kept)], rtol=PRECISION_TOLERANCE[precision])


def test_xla_compiled_steps_give_the_plain_steps_losses():
    """Under ``runtime.xla`` the step is one XLA program and the CTC loss TF's dense formulation (the fused
    sparse kernel has no XLA version): same losses step after step within float32 rounding of a different
    summation order (measured < 1e-5 relative, AMD EPYC)."""
    reference = losses_after_steps("float32", steps=3)
    xla = ("runtime.xla=true", "data.static_shapes=true")
    compiled = losses_after_steps("float32", steps=3, overrides=xla)
    assert reference[-1] < reference[0]
    np.testing.assert_allclose(compiled, reference, rtol=1e-4)


def test_accumulated_micro_batches_update_like_one_batch_of_their_union():
    """Two micro-batches of 2 against one batch of 4, from the same initial weights. Every utterance is the
    same one, so batch normalization sees the same statistics in both (with different utterances its
    batch statistics, hence the gradients, would differ between micro-batches and their union; its moving
    averages are updated once per micro-batch and are not compared). AdaDelta with epsilon 1 and learning
    rate 1 moves each weight by about minus its gradient, so a gradient off by any factor shows."""
    from asr.session import make_accumulation_steps

    linear = ["train.optimizer=adadelta", "train.epsilon=1.0", "train.learning_rate=1.0",
              "train.clip_norm=0"]  # fmt: skip
    recipe = load_recipe(TINY, [*ONE_LAYER, *linear])
    features, frames, labels, lengths = (np.repeat(x[:1], 4, axis=0) for x in batch())
    strategy = tf.distribute.get_strategy()

    def fresh():
        keras.utils.set_random_seed(0)
        model = build_model(recipe.model)
        return model, make_optimizer(recipe), [np.array(w) for w in model.trainable_weights]

    whole, optimizer, initial = fresh()
    make_train_step(strategy, whole, optimizer, recipe)(
        tuple(map(tf.constant, (features, frames, labels, lengths)))
    )
    micro, optimizer, same_initial = fresh()
    accumulate, apply = make_accumulation_steps(strategy, micro, optimizer, recipe)
    half = tuple(tf.constant(x[:2]) for x in (features, frames, labels, lengths))
    accumulate(half)
    accumulate(half)
    assert float(apply(tf.constant(2.0))) == 0.0
    moved = max(
        np.abs(np.array(w) - w0).max() for w, w0 in zip(whole.trainable_weights, initial, strict=True)
    )
    assert moved > 1e-3
    for a, b, w0, w1 in zip(
        whole.trainable_weights, micro.trainable_weights, initial, same_initial, strict=True
    ):
        np.testing.assert_array_equal(w0, w1)
        # each gradient sums 4 x 120 frame terms, in another order on each side: 480 x 2^-24 = 2.9e-5 of the
        # largest, and a weight moves by about its gradient: measured 1.2e-5 of the largest move (a wrong
        # normalization, e.g. a sum for a mean, is off by 100 %)
        np.testing.assert_allclose(np.array(b), np.array(a), atol=1e-4 * moved)


TWO_REPLICAS = """
import numpy as np, tensorflow as tf, keras
cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2)
from asr.config import load_recipe
from asr.model import build_model
from asr.session import make_optimizer, make_train_step, make_accumulation_steps
recipe = load_recipe("recipes/tiny.yaml", {overrides!r})
rng = np.random.default_rng(0)
f = np.repeat(rng.normal(size=(1, 120, 93)).astype(np.float32), 4, 0)
n, ll = np.full(4, 110, np.int32), np.full(4, 12, np.int32)
l = np.repeat(rng.integers(1, 27, size=(1, 12)).astype(np.int32), 4, 0)
devices, reduction = ["/cpu:0", "/cpu:1"], tf.distribute.ReductionToOneDevice()
strategy = tf.distribute.MirroredStrategy(devices, cross_device_ops=reduction)
def fresh():
    keras.utils.set_random_seed(0)
    with strategy.scope():
        model, optimizer = build_model(recipe.model), make_optimizer(recipe)
        optimizer.build(model.trainable_variables)
    return model, optimizer, [w.numpy() for w in model.trainable_weights]
def dist(*arrays):
    return next(iter(strategy.experimental_distribute_dataset(tf.data.Dataset.from_tensors(arrays))))
whole, optimizer, initial = fresh()
make_train_step(strategy, whole, optimizer, recipe)(dist(f, n, l, ll))
micro, optimizer, _ = fresh()
accumulate, apply = make_accumulation_steps(strategy, micro, optimizer, recipe)
half = dist(f[:2], n[:2], l[:2], ll[:2])
accumulate(half); accumulate(half)
assert float(apply(tf.constant(2.0))) == 0.0
moved = max(float(np.abs(w.numpy() - w0).max()) for w, w0 in zip(whole.trainable_weights, initial))
pairs = zip(whole.trainable_weights, micro.trainable_weights)
diff = max(float(np.abs(a.numpy() - b.numpy()).max()) for a, b in pairs)
print(moved, diff)
"""


def test_accumulation_over_two_replicas_updates_like_one_batch_of_the_union():
    """The same comparison with a MirroredStrategy over two logical CPUs (each replica accumulates its own
    share; the mean is all-reduced at the update), in a fresh process (devices are fixed at TF start-up)."""
    import subprocess
    import sys

    overrides = [*ONE_LAYER, "train.optimizer=adadelta", "train.epsilon=1.0", "train.learning_rate=1.0"]
    result = subprocess.run([sys.executable, "-c", TWO_REPLICAS.format(overrides=overrides)], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    moved, diff = map(float, result.stdout.split())
    assert moved > 1e-3 and diff <= 1e-4 * moved  # the tolerance of the one-device test above


def clustered_model(tmp_path, clusters: int, scope: str, overrides: tuple[str, ...] = ()):
    """A tiny model whose weight matrices are k-means clustered, its compact file, recipe and tables."""
    from asr import clustering

    recipe = load_recipe(TINY, [*ONE_LAYER, *overrides])
    keras.utils.set_random_seed(0)
    model = build_model(recipe.model)
    matrices = {v.path: v.numpy() for v in model.trainable_variables if len(v.shape) >= 2}
    tables = clustering.cluster_tensors(matrices, clusters, scope)
    plain = {v.path: v.numpy() for v in model.weights if v.path not in matrices}
    signature = clustering.signature({v.path: tuple(v.shape) for v in model.weights})
    path = tmp_path / "model.kmeans.npz"
    path.write_bytes(clustering.save_clustered(tables, plain, clusters, 8, signature))
    return model, path, tables


@pytest.mark.parametrize("scope", ["layer", "model"])
def test_fine_tuning_moves_the_centroids_and_keeps_every_cluster_tied(tmp_path, scope):
    from asr.session import ClusterTies

    overrides = ("train.learning_rate=0.01", "train.clip_norm=5.0")
    model, path, tables = clustered_model(tmp_path, 4, scope, overrides)
    recipe = load_recipe(TINY, [*ONE_LAYER, *overrides])
    ties = ClusterTies(str(path), model)
    ties.assign_weights(model)
    step = make_train_step(tf.distribute.get_strategy(), model, make_optimizer(recipe), recipe, ties=ties)
    data = tuple(tf.constant(x) for x in batch())
    losses = [float(step(data)[0]) / 4 for _ in range(15)]
    assert losses[-1] < 0.9 * losses[0]  # 4 values per table (layer: ~0.6x, model: ~0.8x here)
    weights = {v.path: v.numpy() for v in model.weights}
    for table in tables:
        values = np.concatenate([weights[n].ravel() for n in table.names])
        ids = np.concatenate([i.ravel() for i in table.indices])
        moved = 0
        for cluster, centroid in enumerate(table.centroids):
            members = values[ids == cluster]
            assert np.all(members == members[0]), (table.names, cluster)  # exactly tied
            moved += members[0] != centroid
        assert moved >= len(table.centroids) - 1, table.names


def test_tied_gradients_are_cluster_sums_and_the_clip_norm_counts_each_centroid_once(tmp_path):
    from asr.session import ClusterTies

    model, path, tables = clustered_model(tmp_path, 4, "model")
    ties = ClusterTies(str(path), model)
    rng = np.random.default_rng(1)
    grads = [tf.constant(rng.normal(size=v.shape).astype(np.float32)) for v in model.trainable_variables]
    tied = [g.numpy() for g in ties.tie(grads)]
    paths = [v.path for v in model.trainable_variables]
    (table,) = tables
    flat = np.concatenate([grads[paths.index(n)].numpy().ravel() for n in table.names])
    ids = np.concatenate([i.ravel() for i in table.indices])
    sums = np.bincount(ids, weights=flat, minlength=4)
    for name, index in zip(table.names, table.indices, strict=True):
        np.testing.assert_allclose(tied[paths.index(name)], sums[index], rtol=1e-4, atol=1e-4)
    unclustered = [g.numpy() for g, p in zip(grads, paths, strict=True) if p not in table.names]
    expected = np.sqrt(np.sum(sums**2) + sum(np.sum(g**2) for g in unclustered))
    measured = float(tf.linalg.global_norm(ties.for_norm([tf.constant(t) for t in tied])))
    np.testing.assert_allclose(measured, expected, rtol=1e-4)


def test_a_compact_file_of_another_model_is_refused(tmp_path):
    from asr.clustering import ClusteredFileError
    from asr.session import ClusterTies

    _, path, _ = clustered_model(tmp_path, 4, "layer")
    recipe = load_recipe(TINY, [*ONE_LAYER, "model.rnn_units=24"])
    with pytest.raises(ClusteredFileError, match=r"clustered_weights: .*another model"):
        ClusterTies(str(path), build_model(recipe.model))
    with pytest.raises(ClusteredFileError, match="No such file"):
        ClusterTies(str(tmp_path / "missing.npz"), build_model(recipe.model))


def test_the_weight_average_starts_short_and_settles_at_its_decay():
    from asr.session import ema_decay_at

    assert ema_decay_at(0.99, 0.0) == pytest.approx(0.1)  # the first average is mostly the new weights
    assert ema_decay_at(0.99, 10.0) == pytest.approx(11 / 20)
    assert ema_decay_at(0.99, 5000.0) == 0.99
    tensor = ema_decay_at(0.99, tf.constant([0.0, 10.0, 5000.0]))
    np.testing.assert_allclose(tensor.numpy(), [0.1, 0.55, 0.99], rtol=1e-6)


WEIGHT_AVERAGE = """
import sys, numpy as np, tensorflow as tf
from pathlib import Path
from asr.checkpoint import restore_weights
from asr.config import load_recipe
from asr.model import build_model
from asr.session import TrainingSession
from asr.strategy import make_strategy
recipe = load_recipe("recipes/tiny.yaml", {overrides!r})
strategy = make_strategy(recipe.runtime, env={{}})
rng = np.random.default_rng(0)
def batch():
    arrays = (rng.normal(size=(4, 60, 93)).astype(np.float32), np.array([60, 55, 50, 45], np.int32),
              rng.integers(1, 27, size=(4, 6)).astype(np.int32), np.array([6, 5, 4, 3], np.int32))
    return next(iter(strategy.experimental_distribute_dataset(tf.data.Dataset.from_tensors(arrays))))
def trainable(session):
    return [w.numpy() for w in session.model.trainable_weights]
def averages(session):  # every replica's copy
    local = strategy.experimental_local_results
    return [[np.asarray(c) for c in local(a)] for a in session.average.variables]
session = TrainingSession(strategy, recipe, Path({run_dir!r}), is_chief=True)
expected = trainable(session)
updates, decays = 0, []
for micro in range({steps}):
    result = session.train_step(batch())
    if result is None:
        continue
    assert result[1], "the update was skipped"
    decay = min(recipe.train.ema_decay, (1 + updates) / (10 + updates))  # written out, not the module's
    expected = [decay * e + (1 - decay) * w for e, w in zip(expected, trainable(session))]
    decays.append(decay)
    updates += 1
moved = max(float(np.abs(e - w).max()) for e, w in zip(expected, trainable(session)))
error = max(float(np.abs(c - e).max()) for copies, e in zip(averages(session), expected) for c in copies)
info = session.save(updates, {{}})
restored = build_model(recipe.model)
restore_weights(restored, info.path)
for weight, average in zip(restored.trainable_weights, averages(session)):
    np.testing.assert_array_equal(weight.numpy(), average[0])
trainable_ids = {{id(w) for w in restored.trainable_weights}}
for mine, theirs in zip(restored.weights, session.model.weights):
    if id(mine) not in trainable_ids:  # batch-norm statistics and random states: the model's own
        np.testing.assert_array_equal(mine.numpy(), np.asarray(theirs.numpy()))
for mine, evaluated in zip(restored.get_weights(), session.evaluation_weights()):
    np.testing.assert_array_equal(mine, evaluated)
resumed = TrainingSession(strategy, recipe, Path({run_dir!r}) / "resumed", is_chief=True)
resumed.restore(info)
for a, b in zip(averages(resumed), averages(session)):
    np.testing.assert_array_equal(a[0], b[0])
print(",".join(map(repr, decays)), updates, moved, error)
"""


CAPPED_DECAYS = [0.1, 2 / 11, 0.25, 0.3, 0.3]
"""``min(0.3, (1 + n) / (10 + n))`` for n = 0..4: the short start, then the cap ``train.ema_decay=0.3``
(reached from the 4th update on; 0.99 would need 981 updates)."""


@pytest.mark.parametrize(
    ("replicas", "accumulate", "steps"),
    [(1, 1, 5), (2, 1, 5), (1, 2, 10)],
    ids=["one", "two-replicas", "acc"],
)
def test_the_weight_average_is_exact_on_every_replica_and_is_what_checkpoints_evaluate(
    tmp_path, replicas, accumulate, steps
):
    """``train.ema_decay``: after each update the average equals the recursion computed here in NumPy from
    the weights the steps left, with the decay written out (float32 rounding: 1e-6 of the weights' move),
    through the short start and at the cap, on every replica's copy, also with accumulated micro-batches
    (one move per update); a checkpoint restored for evaluation holds the average's trainable weights and
    the model's batch-norm statistics, as the resident evaluator's copy does; a resumed session continues
    from the same average. A fresh process: devices are fixed at start-up."""
    import subprocess
    import sys

    overrides = [*ONE_LAYER, "train.ema_decay=0.3", "train.learning_rate=0.01",
                 f"runtime.replicas={replicas}", f"train.accumulate_steps={accumulate}"]  # fmt: skip
    script = WEIGHT_AVERAGE.format(overrides=overrides, run_dir=str(tmp_path), steps=steps)
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True,
                            timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    decays, updates, moved, error = result.stdout.split()[-4:]
    assert int(updates) == steps // accumulate == len(CAPPED_DECAYS)
    np.testing.assert_allclose([float(d) for d in decays.split(",")], CAPPED_DECAYS, rtol=1e-12)
    assert float(moved) > 1e-3  # the average lags the weights: the comparison is not of equal things
    assert float(error) <= 1e-6 + 1e-5 * float(moved)


def test_an_overflowing_float16_step_moves_neither_the_weights_nor_their_average():
    """Under float16 the loss-scale optimizer skips an update whose scaled gradients overflow (forced here:
    a loss scale of 2^100, with the loss itself finite) and halves the scale; the weight average must not
    move either (docs/train.md, "Weight averaging"), and its update count (the optimizer's ``iterations``,
    the ``n`` of its decay) stays where it was. The next update then moves it by ``min(d, 2/11)``."""
    from asr.session import WeightAverage

    recipe = load_recipe(TINY,
                         [*ONE_LAYER, "runtime.mixed_precision=float16", "train.ema_decay=0.5"])  # fmt: skip
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        keras.utils.set_random_seed(0)
        strategy = tf.distribute.get_strategy()
        model = build_model(recipe.model)
        optimizer = make_optimizer(recipe)
        optimizer.build(model.trainable_variables)
        average = WeightAverage(strategy, model, recipe.train.ema_decay)
        step = make_train_step(strategy, model, optimizer, recipe, average=average)
        data = tuple(tf.constant(x) for x in batch())

        def state():
            return [w.numpy() for w in model.trainable_weights], [a.numpy() for a in average.variables]

        optimizer.dynamic_scale.assign(1.0)
        step(data)
        assert int(optimizer.iterations) == 1
        weights, averages = state()
        assert any(not np.array_equal(w, a) for w, a in zip(weights, averages, strict=True))  # it lags
        optimizer.dynamic_scale.assign(2.0**100)
        loss_sum, bad, _, _ = step(data)
        assert np.isfinite(float(loss_sum)) and float(bad) == 0.0  # only the scaled gradients overflowed
        assert float(optimizer.dynamic_scale) == 2.0**99  # the scaler saw the overflow and skipped
        assert int(optimizer.iterations) == 1
        after_weights, after_averages = state()
        for before, after in zip(weights + averages, after_weights + after_averages, strict=True):
            np.testing.assert_array_equal(after, before)
        optimizer.dynamic_scale.assign(1.0)
        step(data)
        assert int(optimizer.iterations) == 2
        moved_weights, moved_averages = state()
        decay = min(0.5, (1 + 1) / (10 + 1))  # the second update's: n = 1, the skipped one not counted
        for old, new, weight in zip(averages, moved_averages, moved_weights, strict=True):
            np.testing.assert_allclose(new, decay * old + (1 - decay) * weight, rtol=1e-5, atol=1e-7)
    finally:
        keras.mixed_precision.set_global_policy("float32")
