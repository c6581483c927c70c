"""TF Serving's gRPC messages made from what a model call took and gave: the responses the gRPC front end answers,
and the requests and responses the request log records for either front end (a REST request as the gRPC request
that means the same), so one request gives the same messages whichever port it came in by.
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2
from tensorflow_serving.apis import (classification_pb2, inference_pb2, input_pb2, model_pb2, predict_pb2,
                                     regression_pb2)

from serving import signatures
from serving.servable import Servable, Tensors

TYPED_FIELDS = {  # numpy dtype -> the TensorProto repeated field TF's AsProtoField fills
    np.dtype(np.float32): "float_val", np.dtype(np.float64): "double_val", np.dtype(np.int64): "int64_val",
    np.dtype(np.int32): "int_val", np.dtype(np.int16): "int_val", np.dtype(np.int8): "int_val",
    np.dtype(np.uint8): "int_val", np.dtype(np.uint16): "int_val", np.dtype(np.bool_): "bool_val",
    np.dtype(np.uint32): "uint32_val", np.dtype(np.uint64): "uint64_val", np.dtype(object): "string_val",
}


DATA_TYPES = {dtype: tf.as_dtype(dtype).as_datatype_enum for dtype in TYPED_FIELDS}


PACKED_AS_BYTES = {  # numpy dtype -> the packed field's key: these fields are little-endian values, as numpy has them
    np.dtype(np.float32): bytes([tensor_pb2.TensorProto.FLOAT_VAL_FIELD_NUMBER << 3 | 2]),
    np.dtype(np.float64): bytes([tensor_pb2.TensorProto.DOUBLE_VAL_FIELD_NUMBER << 3 | 2]),
}


def _shape(value: np.ndarray) -> tensor_shape_pb2.TensorShapeProto:
    return tensor_shape_pb2.TensorShapeProto(dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in value.shape])


def typed_tensor_proto(value: np.ndarray) -> tensor_pb2.TensorProto:
    """A TensorProto with values in the typed repeated field, as TF Serving writes outputs. float_val and double_val
    are parsed from their packed encoding, numpy's own bytes: extending them with Python floats took 24 bytes and
    a Python object per value (a 32 MB output: 190 MB more, and seconds)."""
    field = TYPED_FIELDS.get(value.dtype)
    if field is None:
        return tf.make_tensor_proto(value)
    proto = tensor_pb2.TensorProto(dtype=DATA_TYPES[value.dtype], tensor_shape=_shape(value))
    key = PACKED_AS_BYTES.get(value.dtype)
    if key is not None and value.size:
        data = np.ascontiguousarray(value, value.dtype.newbyteorder("<")).tobytes()
        proto.MergeFromString(key + _varint(len(data)) + data)
    else:
        getattr(proto, field).extend(value.ravel().tolist())
    return proto


def _varint(number: int) -> bytes:
    out = bytearray()
    while number > 0x7F:
        out.append(number & 0x7F | 0x80)
        number >>= 7
    return bytes(out + bytes([number]))


def request_tensor_proto(value: np.ndarray) -> tensor_pb2.TensorProto:
    """A request's input as clients send it (tf.make_tensor_proto's encoding: numbers in tensor_content, strings in
    string_val), whatever encoding it came in."""
    if value.dtype.kind in "OSU":
        proto = tensor_pb2.TensorProto(dtype=DATA_TYPES[np.dtype(object)], tensor_shape=_shape(value))
        proto.string_val.extend(v if isinstance(v, bytes) else str(v).encode() for v in value.ravel())
        return proto
    if value.dtype not in DATA_TYPES:
        return tf.make_tensor_proto(value)
    return tensor_pb2.TensorProto(dtype=DATA_TYPES[value.dtype], tensor_shape=_shape(value),
                                  tensor_content=np.ascontiguousarray(value, value.dtype.newbyteorder("<")).tobytes())


def answered_spec(spec: model_pb2.ModelSpec, servable: Servable, signature: str) -> model_pb2.ModelSpec:
    """util.cc MakeModelSpec, with the signature as decided (a request naming none is answered with the default
    one's name) and the version that answered."""
    spec.name = servable.name
    spec.version.value = servable.version
    spec.signature_name = signature
    return spec


def predict_response(servable: Servable, signature: str, outputs: Tensors,
                     to_proto=typed_tensor_proto) -> predict_pb2.PredictResponse:
    response = predict_pb2.PredictResponse()
    answered_spec(response.model_spec, servable, signature)
    for name, value in outputs.items():
        response.outputs[name].CopyFrom(to_proto(value))
    return response


def fill_classifications(result: classification_pb2.ClassificationResult, classes, scores, n: int) -> None:
    n_classes = (classes if classes is not None else scores).shape[1]
    for i in range(n):
        entry = result.classifications.add()
        for c in range(n_classes):
            item = entry.classes.add()
            if classes is not None:
                item.label = classes[i, c].decode() if isinstance(classes[i, c], bytes) else str(classes[i, c])
            if scores is not None:
                item.score = float(scores[i, c])


def fill_regressions(result: regression_pb2.RegressionResult, values) -> None:
    result.regressions.extend(regression_pb2.Regression(value=float(v)) for v in values)


def classification_response(servable: Servable, signature: str, classes, scores,
                            n: int) -> classification_pb2.ClassificationResponse:
    response = classification_pb2.ClassificationResponse()
    answered_spec(response.model_spec, servable, signature)
    fill_classifications(response.result, classes, scores, n)
    return response


def regression_response(servable: Servable, signature: str, values) -> regression_pb2.RegressionResponse:
    response = regression_pb2.RegressionResponse()
    answered_spec(response.model_spec, servable, signature)
    fill_regressions(response.result, values)
    return response


def multi_inference_response(servable: Servable, tasks: list[tuple[str, str]], outcomes: list,
                             n: int) -> inference_pb2.MultiInferenceResponse:
    """Each task's result, in order: a classification's (classes, scores), a regression's values."""
    response = inference_pb2.MultiInferenceResponse()
    for (method, signature), outcome in zip(tasks, outcomes):
        result = response.results.add()
        answered_spec(result.model_spec, servable, signature)
        if method == signatures.CLASSIFY:
            fill_classifications(result.classification_result, *outcome, n)
        else:
            fill_regressions(result.regression_result, outcome)
    return response


def example_list_input(examples: list[bytes]) -> input_pb2.Input:
    """An Input of serialized tf.Examples as the model saw them (a context already merged into each)."""
    found = input_pb2.Input()
    for example in examples:
        found.example_list.examples.add().ParseFromString(example)
    return found
