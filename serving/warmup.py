"""Replay a SavedModel's assets.extra/tf_serving_warmup_requests before it takes traffic.

The file is TF Serving's: a TFRecord of PredictionLog protos (predict, classify or regress logs).
Running them once builds the graph's kernels and caches, so the first real request is not slow.
A record that fails makes the load fail, as in TF Serving.
"""
from __future__ import annotations

import tensorflow as tf
from tensorflow_serving.apis import prediction_log_pb2

from serving import signatures
from serving.servable import Servable

WARMUP_FILE = "assets.extra/tf_serving_warmup_requests"
MAX_RECORDS = 1000  # TF Serving's limit


def replay(servable: Servable) -> int:
    """Run every warmup record once; returns how many ran."""
    path = servable.path / WARMUP_FILE
    if not path.is_file():
        return 0
    count = 0
    for record in tf.data.TFRecordDataset(str(path)):
        count += 1
        if count > MAX_RECORDS:
            raise ValueError(f"{path}: more than {MAX_RECORDS} warmup records")
        _replay_one(servable, prediction_log_pb2.PredictionLog.FromString(record.numpy()))
    return count


def _replay_one(servable: Servable, log: prediction_log_pb2.PredictionLog) -> None:
    kind = log.WhichOneof("log_type")
    if kind == "predict_log":
        request = log.predict_log.request
        signature = signatures.predict_signature(servable, request.model_spec.signature_name)
        inputs = {name: tf.make_ndarray(proto) for name, proto in request.inputs.items()}
        signatures.check_predict_request(servable, signature, inputs, list(request.output_filter), check_method=False)
        servable.run(signature, inputs)
    elif kind in ("classify_log", "regress_log"):
        request = getattr(log, kind).request
        choose = signatures.classify_signature if kind == "classify_log" else signatures.regress_signature
        signature = choose(servable, request.model_spec.signature_name, check_method=False)
        examples = signatures.serialized_examples(request.input)
        servable.run(signature, signatures.example_inputs(servable, (signature,), examples))
    else:
        raise ValueError(f"warmup record of type {kind!r} is not supported; expected predict, classify or regress logs")
