"""How a model is compiled, by task (optimizer, loss, metrics; the loss and metric also as objects for a custom
loop): one place for train (fit and the custom loop), tune and compress."""
from __future__ import annotations

import tf_keras as keras


def compile_settings(task: str, learning_rate: float) -> dict:
    """Optimizer, loss and metrics for `model.compile`."""
    classify = task == "classification"
    return {"optimizer": keras.optimizers.Adam(learning_rate),
            "loss": "sparse_categorical_crossentropy" if classify else "mse",
            "metrics": ["accuracy"] if classify else ["mae"]}


def per_example_loss(task: str) -> keras.losses.Loss:
    """The compiled loss, unreduced: a custom loop scales it by the global batch itself."""
    none = keras.losses.Reduction.NONE
    if task == "classification":
        return keras.losses.SparseCategoricalCrossentropy(reduction=none)
    return keras.losses.MeanSquaredError(reduction=none)


def train_metric(task: str) -> keras.metrics.Metric:
    """The compiled metric as an object, named as fit names it in the history."""
    if task == "classification":
        return keras.metrics.SparseCategoricalAccuracy(name="accuracy")
    return keras.metrics.MeanAbsoluteError(name="mae")
