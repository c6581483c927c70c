"""train.loop=custom: the training loop written out with `strategy.run` and `GradientTape`, beside `model.fit`.

Users bring loops like this when `fit` cannot express their step (two optimizers, gradient tricks); a
step of theirs (train.step) replaces the default one and keeps everything around it. Each replica
scales its per-example losses by the *global* batch (`tf.nn.compute_average_loss`), so the gradients
summed across replicas equal one device's on the whole batch; metrics are Keras metrics, whose
variables are summed across replicas. Every worker runs the same number of steps per epoch (the
input repeats), as collective ops require. The epoch's model, optimizer and count are backed up, so a
killed run resumes after its last finished epoch, and fit's own callbacks (early stopping with the best
weights restored, TensorBoard, per-epoch weights, the epoch log) see the same logs as under `fit`.
"""
from __future__ import annotations

import math
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import tensorflow as tf
import tf_keras as keras

from models import user
from models.compile_settings import per_example_loss, train_metric
from pipeline.artifacts import Split
from pipeline.training.distribute import make_dataset

STEP_SIGNATURE = ("train_step(model, batch: (x, y), optimizer) -> (loss, predictions), run on each replica by "
                  "strategy.run: loss is the replica's mean loss scaled by the global batch "
                  "(tf.nn.compute_average_loss), after applying the gradients")
VAL_BATCH = 256


def default_step(task: str) -> Callable:
    """One replica's step: forward, per-example loss scaled by the global batch, backward, apply."""
    loss_fn = per_example_loss(task)

    def train_step(model: keras.Model, batch, optimizer: keras.optimizers.Optimizer):
        x, y = batch
        with tf.GradientTape() as tape:
            predictions = model(x, training=True)
            loss = tf.nn.compute_average_loss(loss_fn(y, predictions))
            if model.losses:  # regularisation, split across replicas like the data loss
                loss += tf.nn.scale_regularization_loss(tf.add_n(model.losses))
        optimizer.apply_gradients(zip(tape.gradient(loss, model.trainable_variables), model.trainable_variables))
        return loss, predictions

    return train_step


def user_step(reference: str) -> Callable:
    """The user's step, checked on each call for the (loss, predictions) it must return."""
    step = user.load(reference)

    def train_step(model, batch, optimizer):
        result = user.call(reference, step, STEP_SIGNATURE, model, batch, optimizer)
        if not (isinstance(result, tuple) and len(result) == 2):
            raise user.UserCodeError(f"{reference} returned {type(result).__name__}; expected {STEP_SIGNATURE}.")
        return result

    return train_step


def fit_custom(model: keras.Model, strategy: tf.distribute.Strategy, train: Split, val: Split, *, task: str,
               epochs: int, global_batch: int, seed: int, step: Callable, callbacks: list, backup: Path,
               chief: bool, augment: Callable | None = None) -> dict[str, list[float]]:
    """Train `model` (compiled: its optimizer is used) as model.fit would; the history, as fit's."""
    steps = math.ceil(len(train.y) / global_batch)
    data = make_dataset(train.x, train.y, global_batch, shuffle_seed=seed, augment=augment, repeat=True)
    iterator = iter(strategy.experimental_distribute_dataset(data))
    optimizer = model.optimizer
    with strategy.scope():
        metric = train_metric(task)
        finished = tf.Variable(0, dtype=tf.int64, trainable=False, name="finished_epochs")
    checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, finished_epochs=finished)
    if tf.train.latest_checkpoint(backup):
        checkpoint.restore(tf.train.latest_checkpoint(backup))
        print(f"train: resuming after epoch {int(finished.numpy())} from the backup in {backup}")
    # Every worker saves (TensorFlow requires it); only the chief's copy is kept.
    save_dir = backup if chief else Path(tempfile.mkdtemp(prefix="backup-"))
    manager = tf.train.CheckpointManager(checkpoint, str(save_dir), max_to_keep=1)

    def replica_step(batch):
        loss, predictions = step(model, batch, optimizer)
        metric.update_state(batch[1], predictions)
        return loss

    def one_step(iterator):
        return strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(replica_step, args=(next(iterator),)),
                               axis=None)

    # The run's first step is eager: a step's mistakes raise with their own traceback, not autograph's.
    run_step, graph_step = one_step, tf.function(one_step)

    evaluate = _evaluator(model, task)
    callback_list = keras.callbacks.CallbackList(callbacks, model=model, epochs=epochs, steps=steps, verbose=0)
    history: dict[str, list[float]] = {}
    model.stop_training = False
    callback_list.on_train_begin()
    for epoch in range(int(finished.numpy()), epochs):
        callback_list.on_epoch_begin(epoch)
        metric.reset_state()
        losses = []
        for _ in range(steps):
            losses.append(float(run_step(iterator)))
            run_step = graph_step
        logs = {"loss": float(np.mean(losses)), metric.name: float(metric.result()), **evaluate(val)}
        finished.assign(epoch + 1)
        manager.save()
        callback_list.on_epoch_end(epoch, logs)
        for key, value in logs.items():
            history.setdefault(key, []).append(value)
        if model.stop_training:
            break
    callback_list.on_train_end()
    shutil.rmtree(save_dir, ignore_errors=True)  # finished: a rerun starts afresh, as with BackupAndRestore
    return history


def _evaluator(model: keras.Model, task: str) -> Callable[[Split], dict[str, float]]:
    """Validation loss and metric on a whole split, computed the same on every worker (no collectives)."""
    loss_fn = per_example_loss(task)
    forward = tf.function(lambda x: model(x, training=False))

    def evaluate(split: Split) -> dict[str, float]:
        metric = train_metric(task)
        total = 0.0
        for start in range(0, len(split.y), VAL_BATCH):
            x, y = split.x[start:start + VAL_BATCH], split.y[start:start + VAL_BATCH]
            predictions = forward(tf.constant(x))
            total += float(tf.reduce_sum(loss_fn(y, predictions)))
            metric.update_state(y, predictions)
        return {"val_loss": total / len(split.y), f"val_{metric.name}": float(metric.result())}

    return evaluate
