"""The SavedModel TF Serving loads: Keras model -> signatures with TF Serving's method names, and warmup.

`serving_default` (predict) takes flat float32 rows `x`. Classifiers also get `classify` and
regressors `regress`, which take serialized tf.Example protos with one float feature `x` (that is
what TF Serving's Classify and Regress APIs send), with TF Serving's method names.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import tensorflow as tf
import tf_keras as keras
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

INPUT = "x"  # the feature name in predict requests and in tf.Example features
METHOD_NAMES = {"classify": "tensorflow/serving/classify", "regress": "tensorflow/serving/regress"}


def save(model: keras.Model, schema: dict, path: Path, warmup: bool) -> None:
    """Write `model` as a SavedModel at `path` with TF Serving's signatures (and Keras metadata: warm starts load it)."""
    n = len(schema["features"])
    signatures = {"serving_default": _predict_fn(model, n, schema)}
    if schema["task"] == "classification":
        signatures["classify"] = _classify_fn(model, n, schema["classes"])
    else:
        signatures["regress"] = _regress_fn(model, n)
    model.save(str(path), save_format="tf", signatures=signatures)
    _set_method_names(path)
    if warmup:
        _write_warmup(path, np.array([[f["mean"] for f in schema["features"]]], dtype=np.float32))


def _predict_fn(model, n_features: int, schema: dict):
    @tf.function(input_signature=[tf.TensorSpec([None, n_features], tf.float32, name=INPUT)])
    def predict(x):
        y = model(x, training=False)
        if schema["task"] == "classification":
            return {"probabilities": y, "class_id": tf.argmax(y, axis=-1)}
        return {"value": tf.squeeze(y, axis=-1)}

    return predict


def _parse(serialized, n_features: int):
    spec = {INPUT: tf.io.FixedLenFeature([n_features], tf.float32)}
    return tf.io.parse_example(serialized, spec)[INPUT]


def _classify_fn(model, n_features: int, classes: list[str]):
    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
    def classify(inputs):
        scores = model(_parse(inputs, n_features), training=False)
        names = tf.broadcast_to(tf.constant(classes), tf.shape(scores))
        return {"classes": names, "scores": scores}

    return classify


def _regress_fn(model, n_features: int):
    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
    def regress(inputs):
        return {"outputs": tf.squeeze(model(_parse(inputs, n_features), training=False), axis=-1)}

    return regress


def _set_method_names(path: Path) -> None:
    """TF2's saver marks every signature as predict; TF Serving's Classify/Regress check this."""
    pb = path / "saved_model.pb"
    saved = saved_model_pb2.SavedModel.FromString(pb.read_bytes())
    for meta_graph in saved.meta_graphs:
        for key, method in METHOD_NAMES.items():
            if key in meta_graph.signature_def:
                meta_graph.signature_def[key].method_name = method
    pb.write_bytes(saved.SerializeToString())


def _write_warmup(path: Path, rows: np.ndarray) -> None:
    """One predict request in TF Serving's warmup format, so the first real request is not slow."""
    request = predict_pb2.PredictRequest()
    request.model_spec.signature_name = "serving_default"
    request.inputs[INPUT].CopyFrom(tf.make_tensor_proto(rows))
    log = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
    (path / "assets.extra").mkdir(exist_ok=True)
    with tf.io.TFRecordWriter(str(path / "assets.extra" / "tf_serving_warmup_requests")) as writer:
        writer.write(log.SerializeToString())
