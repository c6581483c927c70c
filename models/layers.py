"""The two ends every builder shares: standardised input reshaped for the model, and the output head."""
from __future__ import annotations

import numpy as np
import tf_keras as keras

from models.config import DataSpec


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
