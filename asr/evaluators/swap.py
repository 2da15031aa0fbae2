"""``eval.mode: swap`` (the paper's default) and the evaluation model every mode shares.

At an epoch end the training loop saves a checkpoint and releases the training model and optimizer;
:class:`SwapEvaluator` then builds the *evaluation* model (dropout off, batch normalization in
inference mode) from that checkpoint on every replica of the strategy, computes the logits of the
whole validation set (each batch split over the replicas, results gathered), decodes them with the
process pool while the next batch runs, scores them, and drops the evaluation model again before
training state is rebuilt.

:func:`replica_logits_fn` is the part that runs the model: it turns any Keras model
``features [B, T, 93] -> logits [B, T_out, 30]`` into the :data:`asr.evaluate.LogitsFn` the
evaluation loop calls, running it on all replicas.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

OutputFrames = Callable[[np.ndarray], np.ndarray]
"""Output frames of the model for input frames (the convolution's arithmetic), both ``int [B]``."""


def conv_output_frames(kernel: int, stride: int) -> OutputFrames:
    """``floor((frames - kernel) / stride) + 1``: a ``valid`` convolution's output length."""

    def output_frames(frames: np.ndarray) -> np.ndarray:
        return (np.asarray(frames, dtype=np.int64) - kernel) // stride + 1

    return output_frames


def replica_logits_fn(
    strategy,
    model,
    output_frames: OutputFrames,
    mean: np.ndarray | None = None,
    std: np.ndarray | None = None,
):
    """A :data:`asr.evaluate.LogitsFn` that runs ``model`` in inference mode on every replica.

    Each batch ``[B, T, 93]`` is normalized with the training set's ``mean``/``std`` (per feature,
    over valid frames only), padded with empty utterances to a multiple of the replica count, split
    evenly (replica r gets rows ``r*B/R .. (r+1)*B/R``), and the replicas' logits and CTC losses are
    gathered back in row order. Returns ``(logits float32 [B, T_out, 30], output frames int [B],
    CTC loss per utterance float [B])``; the loss is ``nan`` where the transcript (separators
    included) is longer than the output.
    """
    import tensorflow as tf

    from asr.model import ctc_loss

    replicas = strategy.num_replicas_in_sync
    signature = [
        tf.TensorSpec([None, None, None], tf.float32),  # features
        tf.TensorSpec([None], tf.int32),  # input frames
        tf.TensorSpec([None], tf.int32),  # output frames
        tf.TensorSpec([None, None], tf.int32),  # labels
        tf.TensorSpec([None], tf.int32),  # label lengths
    ]

    @tf.function(input_signature=signature)
    def step(*batch):
        def on_replica(features, frames, out_frames, labels, label_lengths):
            logits = tf.cast(model((features, frames), training=False), tf.float32)
            return logits, ctc_loss(labels, label_lengths, logits, out_frames)

        per_replica = strategy.experimental_distribute_values_from_function(
            lambda ctx: _replica_slice(batch, ctx, replicas)
        )
        logits, loss = strategy.run(on_replica, args=per_replica)
        return strategy.gather(logits, axis=0), strategy.gather(loss, axis=0)

    def logits_fn(features: np.ndarray, frames: np.ndarray, labels: Sequence[Sequence[int]]):
        features = np.asarray(features, dtype=np.float32)
        frames = np.asarray(frames, dtype=np.int64)
        batch = features.shape[0]
        if mean is not None and std is not None:
            features = (features - mean) / np.where(std > 0, std, 1.0)
            features[np.arange(features.shape[1])[None, :] >= frames[:, None]] = 0.0
        out = output_frames(frames)
        padded = -(-batch // replicas) * replicas
        label_lengths = np.array([len(label) for label in labels] + [0] * (padded - batch), np.int32)
        dense_labels = np.zeros((padded, max(1, int(label_lengths.max()))), np.int32)
        for row, label in enumerate(labels):
            dense_labels[row, : len(label)] = label
        if padded > batch:  # empty utterances, so that every replica gets an equal share
            features = np.concatenate([features, np.zeros((padded - batch, *features.shape[1:]), np.float32)])
            frames = np.concatenate([frames, np.zeros(padded - batch, np.int64)])
            out = np.concatenate([out, np.ones(padded - batch, np.int64)])
        logit_steps = int(output_frames(np.array([features.shape[1]]))[0])
        # TF's CTC kernel refuses empty and too-long transcripts (padding rows, short utterances): those
        # are scored against one label instead, and their loss reported as nan
        unfit = (label_lengths > out) | (label_lengths == 0)
        logits, loss = step(
            tf.constant(features),
            tf.constant(frames, tf.int32),
            tf.constant(np.maximum(out, 1), tf.int32),
            tf.constant(dense_labels),
            tf.constant(np.where(unfit, 1, label_lengths).astype(np.int32)),
        )
        loss = loss.numpy()[:batch].astype(np.float64)
        loss[~np.isfinite(loss) | unfit[:batch]] = np.nan
        return logits.numpy()[:batch, :logit_steps], out[:batch], loss

    return logits_fn


def _replica_slice(tensors, ctx, replicas: int):
    """Rows of the batch that replica ``ctx.replica_id_in_sync_group`` computes."""
    import tensorflow as tf

    index = ctx.replica_id_in_sync_group
    out = []
    for tensor in tensors:
        share = tf.shape(tensor)[0] // replicas
        out.append(tensor[index * share : (index + 1) * share])
    return tuple(out)


class SwapEvaluator:
    """``eval.mode: swap``: training state out, evaluation model in, decode, and back (paper Figure 6).

    Phases on the run clock and in the event log: ``swap_out`` (release training model and optimizer),
    ``evaluate`` (build the evaluation model from the epoch-end checkpoint, decode the validation set),
    ``swap_in`` (rebuild model, optimizer and compiled step from the same checkpoint). Because the
    checkpoint holds every weight, optimizer slot and dropout random state, training continues exactly
    where it would have without evaluation.
    """

    def __init__(self, recipe, strategy, strict: bool = False):
        from asr.evaluators.common import Validation

        self.recipe = recipe
        self.strategy = strategy
        self.validation = Validation(recipe, strict=strict)

    def evaluate(self, session, checkpoint, log) -> list[dict]:
        from asr.checkpoint import restore_weights
        from asr.evaluators.common import build_eval_model, model_logits_fn, read_normalization

        with log.phase("swap_out"):
            session.release()
        with log.phase("evaluate"):
            model = build_eval_model(self.recipe, self.strategy)
            restore_weights(model, checkpoint.path)
            mean, std = read_normalization(session.run_dir, self.recipe)
            results = self.validation.run(
                model_logits_fn(self.recipe, self.strategy, model, mean, std), "swap"
            )
            del model
        with log.phase("swap_in"):
            session.restore(checkpoint)
        return results

    def close(self) -> None:
        self.validation.close()


def checkpoint_logits_fn(run_dir, checkpoint_path, recipe):
    """For ``asr.evaluate``: the evaluation model of ``recipe`` with a checkpoint's weights, on all replicas.

    Returns the :data:`asr.evaluate.LogitsFn` and the checkpoint's ``epoch``/``step``/``elapsed``;
    raises :class:`asr.checkpoint.CheckpointMismatchError` when the checkpoint does not fit the recipe.
    """
    from pathlib import Path

    from asr.checkpoint import restore_weights
    from asr.evaluators.common import build_eval_model, local_runtime, model_logits_fn, read_normalization
    from asr.files import read_json
    from asr.strategy import make_strategy

    recipe = local_runtime(recipe)
    strategy = make_strategy(recipe.runtime, env={})
    model = build_eval_model(recipe, strategy)
    restore_weights(model, checkpoint_path)
    mean, std = read_normalization(Path(run_dir), recipe)
    state = read_json(Path(f"{checkpoint_path}.json"), {})
    progress = state.get("progress", {})
    info = {
        "epoch": int(state.get("epoch_end", progress.get("epoch", 0))),
        "step": int(state.get("step", progress.get("step", 0))),
    }
    if "clock" in state:
        info["elapsed"] = float(state["clock"].get("elapsed", 0.0))
    return model_logits_fn(recipe, strategy, model, mean, std), info
