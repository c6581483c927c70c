"""The benchmark models, built deterministically (seeded random weights) in TF Serving's layout.

digits: the pipeline's CNN shape on 8x8x1. mid: a 32x32x3 CNN with ~2.4 M parameters (batch-1 a
few ms on 2 cores). big: mid's shape with four times its filters (more than 10 ms a row on one core, on the same
small input). large: MobileNetV2 at 224x224x3 (batch-1 tens of ms). Weights are random: speed does not depend on
them.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf_keras as keras  # noqa: E402
from tensorflow_serving.apis import predict_pb2  # noqa: E402


def digits_cnn() -> keras.Model:
    inputs = keras.Input((64,), name="x")
    x = keras.layers.Reshape((8, 8, 1))(inputs)
    x = keras.layers.Conv2D(32, 3, padding="same", activation="relu")(x)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Conv2D(64, 3, padding="same", activation="relu")(x)
    x = keras.layers.Flatten()(keras.layers.MaxPooling2D()(x))
    return keras.Model(inputs, keras.layers.Dense(10, activation="softmax")(keras.layers.Dense(64, activation="relu")(x)))


def mid_cnn(filters_of: tuple[int, ...] = (32, 64, 128)) -> keras.Model:
    inputs = keras.Input((32, 32, 3), name="x")
    x = inputs
    for filters in filters_of:
        x = keras.layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
        x = keras.layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
        x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Dense(1024, activation="relu")(keras.layers.Flatten()(x))
    return keras.Model(inputs, keras.layers.Dense(10, activation="softmax")(x))


def big_cnn() -> keras.Model:
    return mid_cnn((128, 256, 512))


def large_cnn() -> keras.Model:
    return keras.applications.MobileNetV2(input_shape=(224, 224, 3), weights=None, classes=100)


MODELS = {"digits": (digits_cnn, (64,)), "mid": (mid_cnn, (32, 32, 3)), "big": (big_cnn, (32, 32, 3)),
          "large": (large_cnn, (224, 224, 3))}


def build(name: str, repository: Path) -> Path:
    """Write model `name` as version 1 under repository/name (skipped if already there)."""
    path = Path(repository) / name / "1"
    if (path / "saved_model.pb").is_file():
        return path
    keras.utils.set_random_seed(0)
    builder, shape = MODELS[name]
    model = builder()

    @tf.function(input_signature=[tf.TensorSpec([None, *shape], tf.float32, name="x")])
    def serve(x):
        return {"scores": model(x, training=False)}

    tf.saved_model.save(model, str(path), signatures={"serving_default": serve})
    return path


def sample(name: str, batch: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((batch, *MODELS[name][1]), dtype=np.float32)


def json_body(x: np.ndarray) -> bytes:
    """`x` as a REST predict body in row format, values with 3 decimals (what every benchmark sends)."""
    return json.dumps({"instances": np.round(x.astype(np.float64), 3).tolist()}).encode()


def grpc_request(name: str, x: np.ndarray) -> predict_pb2.PredictRequest:
    """`x` as a gRPC PredictRequest for model `name`."""
    request = predict_pb2.PredictRequest()
    request.model_spec.name = name
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(x))
    return request
