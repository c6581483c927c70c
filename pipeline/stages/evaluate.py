"""Measure the trained model on the held-out test split, and gate the run on it."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from models import import_model_code, model_code_files
from pipeline import specs
from pipeline.artifacts import CONFUSION, EVALUATION, TRAINED_MODEL, Inputs, read_schema, read_split, write_json
from pipeline.errors import StageError
from pipeline.metrics import classification_metrics, confusion_matrix, regression_metrics
from pipeline.views import EvaluateView


SPEC = specs.EVALUATE


def external_inputs(cfg: EvaluateView) -> list[Path]:
    """A user builder's file: its classes are rebuilt from it when the model loads."""
    return model_code_files(cfg.model.name)


def run(cfg: EvaluateView, inputs: Inputs, out: Path) -> dict:
    from pipeline.compression import loading

    schema = read_schema(inputs["schema"])
    test = read_split(inputs["dataset"], "test")
    import_model_code(cfg.model.name)
    model = loading.load(TRAINED_MODEL.in_artefact(inputs["model"]))  # a warm start from a QAT version is one
    predictions = model.predict(test.x, batch_size=256, verbose=0)
    (out / "evaluation").mkdir()
    if schema["task"] == "classification":
        metrics = _classification(predictions, test.y, schema["classes"], out)
        if metrics["accuracy"] < cfg.evaluate.min_accuracy:
            raise StageError(
                f"test accuracy {metrics['accuracy']:.4f} on {len(test.y)} rows is below the gate "
                f"evaluate.min_accuracy={cfg.evaluate.min_accuracy}. {_gate_advice(schema['rows'], cfg.evaluate.min_accuracy)}"
            )
    else:
        metrics = regression_metrics(predictions[:, 0], test.y, schema["label_stats"]["train_mean"])
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


SMALL_TEST_ROWS = 100  # below this, a gate of a few points is decided by a handful of rows


def _gate_advice(rows: dict[str, int], min_accuracy: float) -> str:
    """What to do about a failed accuracy gate; when the data is small, the likely cause, with its numbers."""
    test, train = rows["test"], rows["train"]
    if test >= SMALL_TEST_ROWS:
        return "Train longer (train.epochs), change the model, or lower the gate."
    allowed = _wrong_answers_allowed(min_accuracy, test)
    looser = math.floor((1 - (allowed + 1) / test) * 100) / 100
    return (f"The data is small: {train} train rows, and {test} test rows, where one row is {100 / test:.1f} points "
            f"and the gate allows {allowed} wrong answer(s). A small table may need more epochs or more patience "
            f"than the defaults (train.epochs=100 train.early_stopping_patience=20, say: its validation loss is "
            f"noisy, and training stops early on it), or a gate that fits its size (evaluate.min_accuracy={looser:g} "
            f"allows {_wrong_answers_allowed(looser, test)}).")


def _wrong_answers_allowed(min_accuracy: float, rows: int) -> int:
    return math.floor(round((1 - min_accuracy) * rows, 6))


def _classification(probabilities: np.ndarray, y: np.ndarray, classes: list[str], out: Path) -> dict:
    confusion = confusion_matrix(probabilities, y, len(classes))
    write_json(CONFUSION, out, {"classes": classes, "matrix": confusion.tolist()})
    print("evaluate: confusion matrix (rows = true class, columns = predicted)")
    print(confusion_table(classes, confusion))
    return classification_metrics(probabilities, y)


def confusion_table(classes: list[str], confusion: np.ndarray) -> str:
    """The matrix as text, its columns as wide as the widest class name or count."""
    width = max(len(str(c)) for c in [*classes, *confusion.ravel().tolist()])
    lines = [" " * width + " " + " ".join(f"{c:>{width}}" for c in classes)]
    lines += [f"{name:>{width}} " + " ".join(f"{v:>{width}}" for v in row) for name, row in zip(classes, confusion)]
    return "\n".join(lines)
