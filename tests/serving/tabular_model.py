"""A model of several named inputs, built directly as a SavedModel for the serving tests: the shape the pipeline
exports for a table with a categorical column (README "Your data"), with weights set, not trained.

`serving_default` takes `x` float32 [-1, 5] and `city` string [-1] and answers `score` float32 [-1]: the dot
product of `x` with WEIGHTS plus the city's offset (CITIES; any other city 0). `regress` and `classify` take
serialized tf.Examples with the float feature `x` (5 values) and the bytes feature `city`: `regress` answers the
score; `classify` answers classes "low" and "high" with scores 1 - sigmoid(score) and sigmoid(score).

It ships SCHEMA as `assets.extra/schema.json`, as the pipeline's export does: the five numeric features of `x` (each
seen in [0, 10] in training) and `city` with the vocabulary of CITIES, which the server counts served values
against.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2

WEIGHTS = np.array([0.5, -1.0, 0.01, 0.001, -0.002], np.float32)
CITIES = {"rome": 1.0, "oslo": -2.0}
FEATURES = ("age", "income", "visits", "tenure", "spend")  # the columns of x
SCHEMA = {"kind": "numeric", "input_shape": [5],
          "features": [{"name": name, "dtype": "float32", "min": 0.0, "max": 10.0, "mean": 5.0, "std": 2.0}
                       for name in FEATURES] + [{"name": "city", "dtype": "category", "vocabulary": list(CITIES)}]}


def score(x, city: str) -> float:
    """What the model answers for one row, computed here in float32 as the model does."""
    return float(np.dot(np.asarray(x, np.float32), WEIGHTS) + np.float32(CITIES.get(city, 0.0)))


class Tabular(tf.Module):
    def __init__(self):
        super().__init__()
        self.weights = tf.Variable(WEIGHTS)
        self.cities = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(list(CITIES), list(CITIES.values()), tf.string, tf.float32), 0.0)

    def score(self, x: tf.Tensor, city: tf.Tensor) -> tf.Tensor:
        return tf.linalg.matvec(x, self.weights) + self.cities.lookup(city)

    def parse(self, inputs: tf.Tensor) -> tf.Tensor:
        features = tf.io.parse_example(inputs, {"x": tf.io.FixedLenFeature([5], tf.float32),
                                                "city": tf.io.FixedLenFeature([], tf.string, default_value="")})
        return self.score(features["x"], features["city"])

    @tf.function(input_signature=[tf.TensorSpec([None, 5], tf.float32, name="x"),
                                  tf.TensorSpec([None], tf.string, name="city")])
    def predict(self, x, city):
        return {"score": self.score(x, city)}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
    def regress(self, inputs):
        return {"outputs": self.parse(inputs)}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
    def classify(self, inputs):
        high = tf.sigmoid(self.parse(inputs))
        scores = tf.stack([1.0 - high, high], axis=1)
        return {"classes": tf.broadcast_to(tf.constant(["low", "high"]), tf.shape(scores)), "scores": scores}


def build(base: Path) -> Path:
    """Write the model as version 1 of model base path `base`; returns `base`."""
    model = Tabular()
    export_dir = base / "1"
    tf.saved_model.save(model, str(export_dir), signatures={"serving_default": model.predict,
                                                            "regress": model.regress, "classify": model.classify})
    pb = export_dir / "saved_model.pb"  # TF2's saver marks every signature predict: name the methods TF Serving wants
    saved = saved_model_pb2.SavedModel.FromString(pb.read_bytes())
    for key in ("regress", "classify"):
        saved.meta_graphs[0].signature_def[key].method_name = f"tensorflow/serving/{key}"
    pb.write_bytes(saved.SerializeToString())
    (export_dir / "assets.extra").mkdir()
    (export_dir / "assets.extra" / "schema.json").write_text(json.dumps(SCHEMA))
    return base
