"""A digits classifier built directly as a SavedModel, in a second, for the serving tests (a pipeline run takes
much longer and tests the pipeline, not the server).

It has the signatures the pipeline exports for its digits model (pipeline/saved_model.py): `serving_default`
takes `x`, float32 [-1, 64] (pixels 0 to 16, as scikit-learn's digits hold them), and answers `probabilities`
float32 [-1, 10] and `class_id` int64 [-1]; `classify` (method name tensorflow/serving/classify) takes serialized
tf.Examples with the float feature `x` and answers `classes` ("0" to "9") and `scores`. Its weights are computed,
not trained: the nearest class mean of standardized pixels, which gets most digits right and is the same on
every build. Its first op standardizes `x` against a [1, 64] mean, so a row of another width fails there, in a
function, as the pipeline's model fails ("Incompatible shapes: [1,2] vs. [1,64]").
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tensorflow as tf
from sklearn.datasets import load_digits
from tensorflow.core.protobuf import saved_model_pb2

CLASSES = [str(digit) for digit in range(10)]
TEST_ROWS = 300  # the last rows of scikit-learn's digits; the class means come from the others


@dataclass(frozen=True)
class Digits:
    base: Path  # the model base path, with version 1
    x_test: np.ndarray  # float32 [TEST_ROWS, 64]
    y_test: np.ndarray  # int64 [TEST_ROWS]


class Classifier(tf.Module):
    def __init__(self, x: np.ndarray, y: np.ndarray):
        super().__init__()
        mean, scale = x.mean(axis=0), np.maximum(x.std(axis=0), 1.0)  # some pixels are always 0
        centres = np.stack([((x[y == digit] - mean) / scale).mean(axis=0) for digit in range(10)])
        self.mean = tf.Variable(mean[None, :].astype(np.float32))
        self.scale = tf.Variable(scale[None, :].astype(np.float32))
        self.weights = tf.Variable(centres.T.astype(np.float32))  # logit: -|z - centre|^2 / 2, less what all share
        self.bias = tf.Variable((-0.5 * (centres**2).sum(axis=1)).astype(np.float32))

    def probabilities(self, x: tf.Tensor) -> tf.Tensor:
        return tf.nn.softmax(tf.matmul((x - self.mean) / self.scale, self.weights) + self.bias)

    @tf.function(input_signature=[tf.TensorSpec([None, 64], tf.float32, name="x")])
    def predict(self, x):
        probabilities = self.probabilities(x)
        return {"probabilities": probabilities, "class_id": tf.argmax(probabilities, axis=-1)}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
    def classify(self, inputs):
        x = tf.io.parse_example(inputs, {"x": tf.io.FixedLenFeature([64], tf.float32)})["x"]
        scores = self.probabilities(x)
        return {"classes": tf.broadcast_to(tf.constant(CLASSES), tf.shape(scores)), "scores": scores}


def build(base: Path) -> Digits:
    """Write the model as version 1 of model base path `base`; returns it with the rows it was not built from."""
    digits = load_digits()
    x, y = digits.data.astype(np.float32), digits.target.astype(np.int64)
    model = Classifier(x[:-TEST_ROWS], y[:-TEST_ROWS])
    export_dir = base / "1"
    signatures = {"serving_default": model.predict, "classify": model.classify}
    tf.saved_model.save(model, str(export_dir), signatures=signatures)
    pb = export_dir / "saved_model.pb"  # TF2's saver marks every signature predict, as the pipeline's export fixes
    saved = saved_model_pb2.SavedModel.FromString(pb.read_bytes())
    saved.meta_graphs[0].signature_def["classify"].method_name = "tensorflow/serving/classify"
    pb.write_bytes(saved.SerializeToString())
    return Digits(base, x[-TEST_ROWS:], y[-TEST_ROWS:])
