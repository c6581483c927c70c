"""Measure the trained model on the held-out test split, and gate the run on it."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from models import import_model_code, model_code_files
from pipeline import specs
from pipeline.artifacts import CONFUSION, EVALUATION, TRAINED_MODEL, Inputs, read_schema, read_split, write_json
from pipeline.errors import StageError
from pipeline.views import EvaluateView


SPEC = specs.EVALUATE


def external_inputs(cfg: EvaluateView) -> list[Path]:
    """A user builder's file: its classes are rebuilt from it when the model loads."""
    return model_code_files(cfg.model.name)


def run(cfg: EvaluateView, inputs: Inputs, out: Path) -> dict:
    import tf_keras as keras

    schema = read_schema(inputs["schema"])
    test = read_split(inputs["dataset"], "test")
    import_model_code(cfg.model.name)
    model = keras.models.load_model(TRAINED_MODEL.in_artefact(inputs["model"]))
    predictions = model.predict(test.x, batch_size=256, verbose=0)
    (out / "evaluation").mkdir()
    if schema["task"] == "classification":
        metrics = _classification(predictions, test.y, schema["classes"], out)
        if metrics["accuracy"] < cfg.evaluate.min_accuracy:
            raise StageError(
                f"test accuracy {metrics['accuracy']:.4f} on {len(test.y)} rows is below the gate "
                f"evaluate.min_accuracy={cfg.evaluate.min_accuracy}. Train longer (train.epochs), "
                f"change the model, or lower the gate."
            )
    else:
        metrics = _regression(predictions[:, 0], test.y, schema["label_stats"]["train_mean"])
        if cfg.evaluate.max_mae is not None and metrics["mae"] > cfg.evaluate.max_mae:
            raise StageError(
                f"test MAE {metrics['mae']:.4f} on {len(test.y)} rows is above the gate "
                f"evaluate.max_mae={cfg.evaluate.max_mae}."
            )
        if cfg.evaluate.beat_mean and metrics["mae"] >= metrics["mean_baseline_mae"]:
            raise StageError(
                f"test MAE {metrics['mae']:.4f} on {len(test.y)} rows is no better than predicting the train "
                f"mean ({metrics['mean_baseline_mae']:.4f}): the model learnt nothing useful. Train longer "
                f"(train.epochs), change the model, or set evaluate.beat_mean=false."
            )
    write_json(EVALUATION, out, metrics)
    return metrics


def _classification(probabilities: np.ndarray, y: np.ndarray, classes: list[str], out: Path) -> dict:
    predicted = probabilities.argmax(axis=1)
    n = len(classes)
    confusion = np.zeros((n, n), dtype=np.int64)
    np.add.at(confusion, (y, predicted), 1)
    picked = np.clip(probabilities[np.arange(len(y)), y], 1e-7, 1.0)
    write_json(CONFUSION, out, {"classes": classes, "matrix": confusion.tolist()})
    print("evaluate: confusion matrix (rows = true class, columns = predicted)")
    print("      " + " ".join(f"{c:>4}" for c in classes))
    for name, row in zip(classes, confusion):
        print(f"{name:>5} " + " ".join(f"{v:>4}" for v in row))
    return {"accuracy": float((predicted == y).mean()), "loss": float(-np.log(picked).mean()), "test_rows": len(y)}


def _regression(predicted: np.ndarray, y: np.ndarray, train_mean: float) -> dict:
    error = predicted - y
    return {"mae": float(np.abs(error).mean()), "mse": float((error**2).mean()),
            "mean_baseline_mae": float(np.abs(train_mean - y).mean()), "test_rows": len(y)}
