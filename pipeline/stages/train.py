"""Train the configured model under the configured tf.distribute strategy."""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tf_keras as keras

from models import DataSpec, build_model
from pipeline.errors import StageError
from pipeline.distribute import Strategy, make_dataset, make_strategy


@dataclass(frozen=True)
class Config:
    epochs: int = 20
    batch_size: int = 64  # global batch; split across replicas
    strategy: Strategy = "default"
    learning_rate: float = 0.003
    early_stopping_patience: int = 5  # epochs without val_loss improvement; 0 = never stop early
    verbose: int = 2  # Keras progress output: 0 silent, 1 progress bar, 2 one line per epoch

    def problems(self) -> list[str]:
        found = []
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                found.append(f"{name}: expected a positive integer, received {getattr(self, name)}.")
        if self.learning_rate <= 0:
            found.append(f"learning_rate: expected a positive number, received {self.learning_rate}.")
        return found


CONFIG = ("model", "train")
INPUTS = ("dataset", "schema")
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


def run(cfg, inputs: dict[str, Path], out: Path) -> dict:
    keras.utils.set_random_seed(cfg.seed)
    schema = json.loads((inputs["schema"] / "schema.json").read_text())
    train = np.load(inputs["dataset"] / "train.npz")
    val = np.load(inputs["dataset"] / "val.npz")
    strategy = make_strategy(cfg.train.strategy)
    classify = schema["task"] == "classification"
    with strategy.scope():
        try:
            model = build_model(cfg.model, data_spec(schema))
        except ValueError as e:
            raise StageError(str(e)) from None
        model.compile(
            optimizer=keras.optimizers.Adam(cfg.train.learning_rate),
            loss="sparse_categorical_crossentropy" if classify else "mse",
            metrics=["accuracy"] if classify else ["mae"],
        )
    print(f"train: {model.name}, {model.count_params()} parameters, strategy "
          f"{cfg.train.strategy} with {strategy.num_replicas_in_sync} replica(s), global batch {cfg.train.batch_size}")
    callbacks = [
        keras.callbacks.TensorBoard(log_dir=str(out / "logs")),
        keras.callbacks.ModelCheckpoint(str(out / "checkpoints" / "epoch-{epoch:03d}.weights.h5"), save_weights_only=True),
    ]
    if cfg.train.early_stopping_patience:
        callbacks.append(keras.callbacks.EarlyStopping(
            monitor="val_loss", patience=cfg.train.early_stopping_patience, restore_best_weights=True))
    started = time.perf_counter()
    history = model.fit(
        make_dataset(train["x"], train["y"], cfg.train.batch_size, shuffle_seed=cfg.seed),
        validation_data=make_dataset(val["x"], val["y"], cfg.train.batch_size),
        epochs=cfg.train.epochs,
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
