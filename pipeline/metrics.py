"""The held-out figures of a model, from its outputs on the test split: one definition for the trained model
(evaluate) and the published one (export), so the two are comparable; and how a stage's figures are printed."""
from __future__ import annotations

import numpy as np


def classification_metrics(probabilities: np.ndarray, y: np.ndarray) -> dict:
    """Accuracy, mean cross-entropy and the number of rows."""
    predicted = probabilities.argmax(axis=1)
    picked = np.clip(probabilities[np.arange(len(y)), y], 1e-7, 1.0)
    return {"accuracy": float((predicted == y).mean()), "loss": float(-np.log(picked).mean()), "test_rows": len(y)}


def confusion_matrix(probabilities: np.ndarray, y: np.ndarray, n_classes: int) -> np.ndarray:
    """[true class, predicted class] -> rows."""
    confusion = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(confusion, (y, probabilities.argmax(axis=1)), 1)
    return confusion


def regression_metrics(predicted: np.ndarray, y: np.ndarray, train_mean: float) -> dict:
    """MAE, MSE, the MAE of predicting the train split's mean (what a model must beat) and the number of rows."""
    error = predicted - y
    return {"mae": float(np.abs(error).mean()), "mse": float((error**2).mean()),
            "mean_baseline_mae": float(np.abs(train_mean - y).mean()), "test_rows": len(y)}


def format_metrics(metrics: dict) -> str:
    """The numbers of a stage's metrics as `name=value` (4 significant digits), for one line of output."""
    shown = [f"{k}={v:.4g}" for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)]
    return " ".join(shown)
