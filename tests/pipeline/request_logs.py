"""Request logs as a server with `logging_config` writes them (TF Serving's PredictionLog records in TFRecord files
named `<filename_prefix>-*`), made directly for the monitor's tests from rows of the tests' choosing."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import prediction_log_pb2


def predict_log(model: str, version: int, inputs: dict[str, np.ndarray], class_id: np.ndarray | None = None,
                timestamp: int = 1_796_000_000) -> prediction_log_pb2.PredictionLog:
    """One logged Predict: its request's inputs by name and, for a classifier, the class ids it answered."""
    log = prediction_log_pb2.PredictionLog()
    log.log_metadata.model_spec.name = model
    log.log_metadata.model_spec.version.value = version
    log.log_metadata.model_spec.signature_name = "serving_default"
    log.log_metadata.sampling_config.sampling_rate = 1.0
    log.log_metadata.timestamp_secs = timestamp
    request = log.predict_log.request
    request.model_spec.CopyFrom(log.log_metadata.model_spec)
    for name, value in inputs.items():
        request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
    if class_id is not None:
        log.predict_log.response.outputs["class_id"].CopyFrom(tf.make_tensor_proto(class_id.astype(np.int64)))
    return log


def write_logs(path: Path, logs: list[prediction_log_pb2.PredictionLog]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(path)) as writer:
        for log in logs:
            writer.write(log.SerializeToString())
    return path


def digits_logs(path: Path, x: np.ndarray, model: str = "digits", version: int = 1, rows_per_request: int = 1) -> Path:
    """Predict requests of `rows_per_request` rows of `x` each, answered with class 0 (the monitor reads only what
    was asked, and shows what was answered)."""
    logs = [predict_log(model, version, {"x": x[i:i + rows_per_request].astype(np.float32)},
                        np.zeros(len(x[i:i + rows_per_request])), 1_796_000_000 + i)
            for i in range(0, len(x), rows_per_request)]
    return write_logs(path, logs)
