"""How a model is compiled for training, by task: one place for train, tune and compress."""
from __future__ import annotations

import tf_keras as keras


def fit_settings(task: str, learning_rate: float) -> dict:
    """Optimizer, loss and metrics for `model.compile`."""
    classify = task == "classification"
    return {"optimizer": keras.optimizers.Adam(learning_rate),
            "loss": "sparse_categorical_crossentropy" if classify else "mse",
            "metrics": ["accuracy"] if classify else ["mae"]}
