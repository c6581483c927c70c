"""What every builder shares: its config, the data it is built for, the input and output ends."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import tf_keras as keras


@dataclass(frozen=True)
class ModelConfig:
    name: Literal["cnn", "mlp", "rnn"] = "cnn"
    width: int = 32  # conv filters (cnn) or units (mlp, rnn) of the first layer
    depth: int = 2  # conv blocks (cnn), hidden layers (mlp), recurrent layers (rnn)
    dropout: float = 0.2
    cell: Literal["lstm", "gru"] = "lstm"  # rnn only

    def problems(self) -> list[str]:
        found = []
        if self.width < 1:
            found.append(f"width: expected a positive integer, received {self.width}.")
        if self.depth < 1:
            found.append(f"depth: expected a positive integer, received {self.depth}.")
        if not 0 <= self.dropout < 1:
            found.append(f"dropout: expected a number in [0, 1), received {self.dropout}.")
        return found


@dataclass(frozen=True)
class DataSpec:
    """The shape of the data a model is built for, read from the validate stage's schema."""

    n_features: int
    input_shape: tuple[int, ...]  # each flat row is reshaped to this inside the model
    task: Literal["classification", "regression"]
    n_outputs: int  # classes, or 1 for regression
    mean: np.ndarray  # per-feature statistics of the train split, for the Normalization layer
    variance: np.ndarray

    def __post_init__(self):
        if math.prod(self.input_shape) != self.n_features:
            raise ValueError(
                f"input_shape {list(self.input_shape)} holds {math.prod(self.input_shape)} values, "
                f"but each row has {self.n_features} features."
            )


def normalized_input(spec: DataSpec) -> tuple[keras.Input, keras.layers.Layer]:
    """Flat features in, standardised and reshaped to `spec.input_shape`: serving sends raw rows.

    A feature that (nearly) never varies in the train split would get a huge multiplier 1/std:
    unseen values blow up, and int8 quantization of the normalization constants (one scale for
    all features) loses every other feature. So std is floored at a quarter of the median std.
    """
    std = np.sqrt(spec.variance)
    varying = std[std > 0]
    floor = 0.25 * float(np.median(varying)) if varying.size else 1.0
    inputs = keras.Input(shape=(spec.n_features,), name="x")
    norm = keras.layers.Normalization(axis=-1, mean=spec.mean, variance=np.maximum(std, floor) ** 2)(inputs)
    return inputs, keras.layers.Reshape(spec.input_shape)(norm)


def output_head(spec: DataSpec, hidden: keras.layers.Layer) -> keras.layers.Layer:
    """Softmax probabilities for classification, one linear value for regression."""
    if spec.task == "classification":
        return keras.layers.Dense(spec.n_outputs, activation="softmax", name="probabilities")(hidden)
    return keras.layers.Dense(1, name="value")(hidden)
