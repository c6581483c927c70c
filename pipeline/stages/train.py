"""Train the configured model under the configured tf.distribute strategy.

`multi_worker` starts `train.workers` local processes (pipeline.launcher), or, when TF_CONFIG is
already set (a cluster, see pipeline.k8s), runs as the one task it names. `parameter_server`
starts a coordinator process (the chief) and `train.workers` + `train.ps` servers: a coordinator
in this process would leave its eager context tied to the stopped servers for the stages that
follow (every later tf.function tries to register on them). Every strategy backs up
each epoch (BackupAndRestore) under a path fixed by the config and inputs, so re-running a
stage that was killed resumes after its last finished epoch.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import tensorflow as tf
import tf_keras as keras

from models import DataSpec, ModelConfig, build_model
from pipeline import launcher
from pipeline.distribute import (Strategy, is_chief, make_dataset, make_dataset_creator, make_strategy,
                                 parse_tf_config)
from pipeline.errors import StageError
from pipeline.stages.push import versions


@dataclass(frozen=True)
class Config:
    epochs: int = 20
    batch_size: int = 64  # global batch; split across replicas
    strategy: Strategy = "default"
    workers: int = 1  # multi_worker, parameter_server: worker processes (local ones when TF_CONFIG is unset)
    ps: int = 1  # parameter_server: parameter server processes
    backup_dir: str = ""  # BackupAndRestore's dir; "" = .backup/<hash of config and inputs> beside the output
    init_from: str = ""  # online update: "latest" or a version number in push.repository/push.model_name (or
    # a version directory) to warm-start from, instead of training from scratch
    learning_rate: float = 0.003
    early_stopping_patience: int = 5  # epochs without val_loss improvement; 0 = never stop early
    verbose: int = 2  # Keras progress output: 0 silent, 1 progress bar, 2 one line per epoch

    def problems(self) -> list[str]:
        found = []
        for name in ("epochs", "batch_size", "workers", "ps"):
            if getattr(self, name) < 1:
                found.append(f"{name}: expected a positive integer, received {getattr(self, name)}.")
        if self.learning_rate <= 0:
            found.append(f"learning_rate: expected a positive number, received {self.learning_rate}.")
        return found


CONFIG = ("model", "train", "push")
INPUTS = ("dataset", "schema", "hyperparameters")
OUTPUTS = ("model",)


def data_spec(schema: dict) -> DataSpec:
    features = schema["features"]
    return DataSpec(
        n_features=len(features),
        input_shape=tuple(schema["input_shape"]),
        task=schema["task"],
        n_outputs=len(schema.get("classes", [None])),
        mean=np.array([f["mean"] for f in features], dtype=np.float32),
        variance=np.array([f["std"] ** 2 for f in features], dtype=np.float32),
    )


def fit_settings(task: str, learning_rate: float) -> dict:
    """Optimizer, loss and metrics for `model.compile`, by task (also used by the tune stage)."""
    classify = task == "classification"
    return {"optimizer": keras.optimizers.Adam(learning_rate),
            "loss": "sparse_categorical_crossentropy" if classify else "mse",
            "metrics": ["accuracy"] if classify else ["mae"]}


def with_tuned(cfg, hyperparameters: Path):
    """The config with the tune stage's best values applied (none when tuning is off)."""
    best = json.loads((hyperparameters / "best.json").read_text())
    model = replace(cfg.model, **{k: v for k, v in best.items() if k != "learning_rate"})
    train = replace(cfg.train, learning_rate=best.get("learning_rate", cfg.train.learning_rate))
    if best:
        print(f"train: tuned hyperparameters {best}")
    return SimpleNamespace(**{**vars(cfg), "model": model, "train": train})


def init_source(cfg) -> Path | None:
    """The SavedModel version `train.init_from` names, or None for training from scratch."""
    name = cfg.train.init_from
    if not name:
        return None
    model_dir = Path(cfg.push.repository) / cfg.push.model_name
    available = versions(model_dir)
    if name == "latest":
        if not available:
            raise StageError(f"train.init_from=latest: {model_dir} holds no version to start from; "
                             f"push one first, or set train.init_from=\"\".")
        return model_dir / str(available[-1])
    path = model_dir / name if name.isdigit() else Path(name)
    if not (path / "keras_metadata.pb").is_file():
        raise StageError(f"train.init_from={name}: {path} is not a version this pipeline exported "
                         f"(versions in {model_dir}: {available or 'none'}).")
    return path


def external_inputs(cfg) -> list[Path]:
    """The warm-start version's files are part of the cache key: a new version re-trains."""
    try:
        source = init_source(cfg)
    except StageError:
        return []  # run() reports it
    return sorted(p for p in source.rglob("*") if p.is_file()) if source else []


def run(cfg, inputs: dict[str, Path], out: Path) -> dict:
    cfg = with_tuned(cfg, inputs["hyperparameters"])
    source = init_source(cfg)
    if source:  # resolved once: launched workers must all start from the same version
        cfg = SimpleNamespace(**{**vars(cfg), "train": replace(cfg.train, init_from=str(source.resolve()))})
    backup = backup_dir(cfg, inputs, out)
    strategy = cfg.train.strategy
    if strategy not in ("multi_worker", "parameter_server"):
        return fit(cfg, inputs, out, make_strategy(strategy), backup)
    if "TF_CONFIG" in os.environ:
        return run_cluster_task(cfg, inputs, out, backup)
    task = out / "task.json"
    task.write_text(json.dumps({"seed": cfg.seed, "model": asdict(cfg.model), "train": asdict(cfg.train),
                                "inputs": {k: str(v) for k, v in inputs.items()},
                                "out": str(out), "backup": str(backup)}, indent=2))
    ps = cfg.train.ps if strategy == "parameter_server" else 0
    launcher.launch("pipeline.stages.train:run_task", str(task), workers=cfg.train.workers, ps=ps)
    return json.loads((out / "metrics.json").read_text())


def backup_dir(cfg, inputs: dict[str, Path], out: Path) -> Path:
    """Where BackupAndRestore keeps epochs: the same for every attempt at the same stage.

    The runner gives each attempt a new `out` in the same parent, and the resolved inputs are
    cache entries named by their producers' keys, so hashing config, seed and inputs finds it again.
    """
    if cfg.train.backup_dir:
        return Path(cfg.train.backup_dir)
    identity = {"model": asdict(cfg.model), "train": asdict(cfg.train), "seed": cfg.seed,
                "inputs": {k: str(v.resolve()) for k, v in sorted(inputs.items())}}
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    return out.parent / ".backup" / digest


def run_task(task_file: str) -> None:
    """One local process of a cluster started by `run` through pipeline.launcher.

    Only the chief writes to the stage's output; the other workers save into a temporary dir,
    as TensorFlow requires every worker to take part in saving.
    """
    task = json.loads(Path(task_file).read_text())
    cfg = SimpleNamespace(seed=task["seed"], model=ModelConfig(**task["model"]), train=Config(**task["train"]))
    inputs = {k: Path(v) for k, v in task["inputs"].items()}
    chief = is_chief(json.loads(os.environ["TF_CONFIG"]))
    with tempfile.TemporaryDirectory() as temp:
        out = Path(task["out"]) if chief else Path(temp)
        metrics = run_cluster_task(cfg, inputs, out, Path(task["backup"]))
    if chief:
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2))


def run_cluster_task(cfg, inputs: dict[str, Path], out: Path, backup: Path) -> dict:
    """Train as the task TF_CONFIG names: set by pipeline.launcher, or per pod by pipeline.k8s.

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
                         f"`python -m pipeline.launcher server`.")
    return fit(cfg, inputs, out, make_strategy(cfg.train.strategy), backup)


class EpochLog(keras.callbacks.Callback):
    """Appends each finished epoch (1-based) and its logs to a JSON-lines file: resumes show in it."""

    def __init__(self, path: Path):
        super().__init__()
        self.path = path

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps({"epoch": epoch + 1, **{k: float(v) for k, v in (logs or {}).items()}}) + "\n")


def _warm_start(cfg, schema: dict) -> keras.Model:
    """The served model, weights and architecture, to continue training on new data."""
    model = keras.models.load_model(cfg.train.init_from)
    if model.input_shape[-1] != len(schema["features"]):
        raise ValueError(f"train.init_from: {cfg.train.init_from} takes {model.input_shape[-1]} features, "
                         f"the data has {len(schema['features'])}.")
    print(f"train: warm start from {cfg.train.init_from}")
    return model


def fit(cfg, inputs: dict[str, Path], out: Path, strategy: tf.distribute.Strategy, backup: Path) -> dict:
    """Build, train and save the model in `out` under `strategy`; the stage's metrics."""
    keras.utils.set_random_seed(cfg.seed)
    schema = json.loads((inputs["schema"] / "schema.json").read_text())
    train = np.load(inputs["dataset"] / "train.npz")
    val = np.load(inputs["dataset"] / "val.npz")
    classify = schema["task"] == "classification"
    with strategy.scope():
        try:
            model = _warm_start(cfg, schema) if cfg.train.init_from else build_model(cfg.model, data_spec(schema))
        except ValueError as e:
            raise StageError(str(e)) from None
        model.compile(**fit_settings(schema["task"], cfg.train.learning_rate))
    print(f"train: {model.name}, {model.count_params()} parameters, strategy "
          f"{cfg.train.strategy} with {strategy.num_replicas_in_sync} replica(s), global batch {cfg.train.batch_size}")
    callbacks = [  # BackupAndRestore first: an epoch is in the log only once it is backed up
        keras.callbacks.BackupAndRestore(str(backup)),
        EpochLog(out / "epochs.jsonl"),
        keras.callbacks.TensorBoard(log_dir=str(out / "logs")),
        keras.callbacks.ModelCheckpoint(str(out / "checkpoints" / "epoch-{epoch:03d}.weights.h5"), save_weights_only=True),
    ]
    if cfg.train.early_stopping_patience:
        callbacks.append(keras.callbacks.EarlyStopping(
            monitor="val_loss", patience=cfg.train.early_stopping_patience, restore_best_weights=True))
    if cfg.train.strategy == "parameter_server":
        train_data, steps = make_dataset_creator(train["x"], train["y"], cfg.train.batch_size, shuffle_seed=cfg.seed)
        val_data, val_steps = make_dataset_creator(val["x"], val["y"], cfg.train.batch_size)
    else:
        train_data = make_dataset(train["x"], train["y"], cfg.train.batch_size, shuffle_seed=cfg.seed)
        val_data = make_dataset(val["x"], val["y"], cfg.train.batch_size)
        steps = val_steps = None
    started = time.perf_counter()
    history = model.fit(
        train_data,
        validation_data=val_data,
        epochs=cfg.train.epochs,
        steps_per_epoch=steps,
        validation_steps=val_steps,
        callbacks=callbacks,
        verbose=cfg.train.verbose,
    ).history
    seconds = time.perf_counter() - started
    (out / "model").mkdir()
    model.save(out / "model" / "model.keras")
    (out / "history.json").write_text(json.dumps(history, indent=2))
    epochs_run = len(history["loss"])
    metric = "val_accuracy" if classify else "val_mae"
    return {
        "epochs_run": epochs_run,
        metric: float(history[metric][-1]),
        "val_loss": float(history["val_loss"][-1]),
        "examples_per_s": round(len(train["y"]) * epochs_run / seconds, 1),
    }
