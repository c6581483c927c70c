"""Build (or warm-start), train and save the model under a tf.distribute strategy: the train stage's work.

`multi_worker` and `parameter_server` without TF_CONFIG run as a local cluster started by
pipeline.training.launcher: each task process runs pipeline.training.worker, which reads the task file
written here and calls `run_cluster_task`. A coordinator in the stage's own
process would leave its eager context tied to the stopped servers for the stages that follow
(every later tf.function tries to register on them), so the parameter_server coordinator is a
launched chief too. Every task backs up each epoch (BackupAndRestore) under a path fixed by the
config and inputs, so re-running a killed stage resumes after its last finished epoch.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import tensorflow as tf
import tf_keras as keras

from models import build_model, import_model_code
from models.compile_settings import compile_settings
from models.user import UserCodeError
from pipeline import progress
from pipeline.artifacts import HISTORY, Split, data_spec, read_schema, read_split
from pipeline.errors import StageError
from pipeline.images import augmenter
from pipeline.training import launcher
from pipeline.training.custom_loop import default_step, fit_custom, user_step
from pipeline.training.distribute import (is_chief, make_dataset, make_dataset_creator, make_strategy,
                                          parse_tf_config, placement, shard_bound_problem, shard_groups,
                                          variable_partitioner)
from pipeline.views import TrainView, keyed, to_dict, view_from_dict

TASK_FILE = "task.json"  # what a launched task is to do: written by `train`, read by the worker
METRICS_FILE = "metrics.json"  # what the chief of a launched cluster hands back to `train`


def train(cfg: TrainView, inputs: dict[str, Path], out: Path) -> dict:
    """Train as the configured strategy says: here, as one task of a cluster, or by launching one."""
    backup = backup_dir(cfg, inputs, out)
    strategy = cfg.train.strategy
    if strategy not in ("multi_worker", "parameter_server"):
        return fit(cfg, inputs, out, make_strategy(strategy), backup)
    if "TF_CONFIG" in os.environ:
        return run_cluster_task(cfg, inputs, out, backup)
    task = out / TASK_FILE
    task.write_text(json.dumps({"config": to_dict(cfg), "inputs": {k: str(v) for k, v in inputs.items()},
                                "out": str(out), "backup": str(backup)}, indent=2))
    ps = cfg.train.ps if strategy == "parameter_server" else 0
    launcher.launch("pipeline.training.worker:run_task", str(task), workers=cfg.train.workers, ps=ps)
    return json.loads((out / METRICS_FILE).read_text())


def read_task(task_file: Path) -> tuple[TrainView, dict[str, Path], Path, Path]:
    """(config view, inputs, output dir, backup dir) of a task file `train` wrote."""
    task = json.loads(task_file.read_text())
    return (view_from_dict(TrainView, task["config"]), {k: Path(v) for k, v in task["inputs"].items()},
            Path(task["out"]), Path(task["backup"]))


def backup_dir(cfg: TrainView, inputs: dict[str, Path], out: Path) -> Path:
    """Where BackupAndRestore keeps epochs: the same for every attempt at the same stage.

    The runner gives each attempt a new `out` in the same parent, and the resolved inputs are
    cache entries named by their producers' keys, so hashing config and inputs finds it again.
    """
    if cfg.train.backup_dir:
        return Path(cfg.train.backup_dir)
    identity = {"config": keyed(cfg), "inputs": {k: str(v.resolve()) for k, v in sorted(inputs.items())}}
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return out.parent / ".backup" / digest


def run_cluster_task(cfg: TrainView, inputs: dict[str, Path], out: Path, backup: Path) -> dict:
    """Train as the task TF_CONFIG names: set by pipeline.training.launcher, or per pod by pipeline.k8s.

    On a cluster each pod runs its own pipeline, so every task's `out` is its own; the chief's
    is the model that counts.
    """
    try:
        config = parse_tf_config(os.environ["TF_CONFIG"], cfg.train.strategy)
    except ValueError as e:
        raise StageError(str(e)) from None
    task = config["task"]
    if cfg.train.strategy == "parameter_server" and task["type"] != "chief":
        raise StageError(f"TF_CONFIG names task {task['type']}:{task['index']} of a parameter_server cluster; the "
                         f"pipeline runs on the chief (the coordinator) only. Start workers and ps with "
                         f"`python -m pipeline.training.launcher server`.")
    partitioner = variable_partitioner(cfg.train, ps=len(config["cluster"].get("ps", [])))
    return fit(cfg, inputs, out, make_strategy(cfg.train.strategy, partitioner), backup)


class EpochLog(keras.callbacks.Callback):
    """Appends each finished epoch (1-based) and its logs to a JSON-lines file (resumes show in it), and
    tells the terminal's progress display."""

    def __init__(self, path: Path):
        super().__init__()
        self.path = path

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        values = {k: float(v) for k, v in (logs or {}).items()}
        with self.path.open("a") as f:
            f.write(json.dumps({"epoch": epoch + 1, **values}) + "\n")
        progress.epoch(epoch + 1, self.params.get("epochs", 0), values)


def _warm_start(cfg: TrainView, schema: dict) -> keras.Model:
    """The served model, weights and architecture (a quantization-aware variant with its wrappers), to continue
    training on new data."""
    from pipeline.compression import loading

    import_model_code(cfg.model.name)
    model = loading.load(Path(cfg.train.init_from), compile=True)
    if model.input_shape[-1] != len(schema["features"]):
        raise ValueError(f"train.init_from: {cfg.train.init_from} takes {model.input_shape[-1]} features, "
                         f"the data has {len(schema['features'])}.")
    print(f"train: warm start from {cfg.train.init_from}")
    return model


def report_placement(model: keras.Model, out: Path) -> None:
    """placement.json: every variable's shards and their parameter servers; sharded ones said aloud."""
    report = placement(model.variables)
    (out / "placement.json").write_text(json.dumps(report, indent=2))
    for variable in report:
        if len(variable["shards"]) > 1:
            shards = ", ".join(f"rows {s['rows'][0]}-{s['rows'][1]} on {s['device']}" for s in variable["shards"])
            print(f"train: {variable['name']} {variable['shape']} in {len(variable['shards'])} shards: {shards}")


def whole(model: keras.Model) -> keras.Model:
    """The model with every sharded variable joined back into one (a copy made outside the strategy): what
    evaluation, export and serving load, on one machine without parameter servers (a saved ShardedVariable
    keeps its parts, which load_model refuses). The model itself when nothing is sharded."""
    groups = [shard_groups(layer.weights) for layer in model.layers]
    if all(len(shards) == 1 for group in groups for shards in group.values()):
        return model
    copy = keras.models.clone_model(model)
    for layer, group in zip(copy.layers, groups):
        layer.set_weights([np.concatenate([s.numpy() for s in shards]) for shards in group.values()])
    return copy  # not compiled: the stages after train predict, or compile for their own fine-tuning


def _fit(cfg: TrainView, model: keras.Model, train_split: Split, val: Split, callbacks: list, backup: Path,
         augment: Callable | None) -> dict:
    """model.fit, backed up each epoch (BackupAndRestore goes first: an epoch is in the log only once it is
    backed up); the history."""
    if cfg.train.strategy == "parameter_server":
        train_data, steps = make_dataset_creator(train_split.x, train_split.y, cfg.train.batch_size,
                                                 shuffle_seed=cfg.seed, augment=augment)
        val_data, val_steps = make_dataset_creator(val.x, val.y, cfg.train.batch_size)
    else:
        train_data = make_dataset(train_split.x, train_split.y, cfg.train.batch_size, shuffle_seed=cfg.seed,
                                  augment=augment)
        val_data = make_dataset(val.x, val.y, cfg.train.batch_size)
        steps = val_steps = None
    return model.fit(train_data, validation_data=val_data, epochs=cfg.train.epochs, steps_per_epoch=steps,
                     validation_steps=val_steps, verbose=cfg.train.verbose,
                     callbacks=[keras.callbacks.BackupAndRestore(str(backup)), *callbacks]).history


def fit(cfg: TrainView, inputs: dict[str, Path], out: Path, strategy: tf.distribute.Strategy, backup: Path) -> dict:
    """Build, train and save the model in `out` under `strategy`; the stage's metrics."""
    keras.utils.set_random_seed(cfg.seed)
    schema = read_schema(inputs["schema"])
    train_split, val = read_split(inputs["dataset"], "train"), read_split(inputs["dataset"], "val")
    classify = schema["task"] == "classification"
    with strategy.scope():
        try:
            model = _warm_start(cfg, schema) if cfg.train.init_from else build_model(cfg.model, data_spec(schema))
        except ValueError as e:
            raise StageError(str(e)) from None
        model.compile(**compile_settings(schema["task"], cfg.train.learning_rate))
    if cfg.train.strategy == "parameter_server":
        problem = shard_bound_problem(cfg.train, model.variables)
        if problem:
            raise StageError(problem)
        report_placement(model, out)
    print(f"train: {model.name}, {model.count_params()} parameters, strategy "
          f"{cfg.train.strategy} with {strategy.num_replicas_in_sync} replica(s), global batch {cfg.train.batch_size}, "
          f"loop {cfg.train.loop}" + (f" with step {cfg.train.step}" if cfg.train.step else ""))
    callbacks = [
        EpochLog(out / "epochs.jsonl"),
        keras.callbacks.TensorBoard(log_dir=str(out / "logs")),
        keras.callbacks.ModelCheckpoint(str(out / "checkpoints" / "epoch-{epoch:03d}.weights.h5"), save_weights_only=True),
    ]
    if cfg.train.early_stopping_patience:
        callbacks.append(keras.callbacks.EarlyStopping(
            monitor="val_loss", patience=cfg.train.early_stopping_patience, restore_best_weights=True))
    augment = augmenter(tuple(schema["input_shape"]), cfg.data.augment) if cfg.data.augment else None
    started = time.perf_counter()
    if cfg.train.loop == "custom":
        step = user_step(cfg.train.step) if cfg.train.step else default_step(schema["task"])
        chief = "TF_CONFIG" not in os.environ or is_chief(json.loads(os.environ["TF_CONFIG"]))
        try:
            history = fit_custom(model, strategy, train_split, val, task=schema["task"], epochs=cfg.train.epochs,
                                 global_batch=cfg.train.batch_size, seed=cfg.seed, step=step, callbacks=callbacks,
                                 backup=backup, chief=chief, augment=augment)
        except UserCodeError as e:
            raise StageError(str(e)) from None
    else:
        history = _fit(cfg, model, train_split, val, callbacks, backup, augment)
    seconds = time.perf_counter() - started
    (out / "model").mkdir()
    whole(model).save(out / "model" / "model.keras")
    HISTORY.in_output(out).write_text(json.dumps(history, indent=2))
    epochs_run = len(history["loss"])
    metric = "val_accuracy" if classify else "val_mae"
    return {
        "epochs_run": epochs_run,
        metric: float(history[metric][-1]),
        "val_loss": float(history["val_loss"][-1]),
        "examples_per_s": round(len(train_split.y) * epochs_run / seconds, 1),
    }
