"""TF Serving's API messages (PredictRequest, tf.Example, ...) and TensorProto <-> numpy, without TensorFlow.

The generated modules of these messages live in the `tensorflow_serving` and `tensorflow` packages, and importing
any of them runs `tensorflow/__init__`: the whole runtime, seconds. A client needs the messages only. Each generated
module holds its .proto as serialized bytes: they are read here from the modules' files, following their imports,
into a private descriptor pool (about 40 files, 30 ms), without running them. Same wire format, other Python
classes: a message of TensorFlow's own classes converts to these through its bytes.
"""
from __future__ import annotations

import ast
import importlib
import importlib.util
import math
from pathlib import Path

import numpy as np
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

ROOTS = ["tensorflow_serving.apis.predict_pb2", "tensorflow_serving.apis.classification_pb2",
         "tensorflow_serving.apis.regression_pb2", "tensorflow_serving.apis.get_model_metadata_pb2",
         "tensorflow_serving.apis.get_model_status_pb2", "tensorflow_serving.apis.model_management_pb2",
         "tensorflow.core.example.example_pb2"]


def _build_pool(modules: list[str]) -> descriptor_pool.DescriptorPool:
    """The pool holding `modules`' files and every file they import, each added after its imports."""
    pool, added = descriptor_pool.DescriptorPool(), set()

    def add(module: str) -> None:
        if module in added:
            return
        added.add(module)
        proto = descriptor_pb2.FileDescriptorProto()
        if module.startswith("google.protobuf."):  # protobuf's own files: importing them costs nothing
            importlib.import_module(module).DESCRIPTOR.CopyToProto(proto)
        else:
            for imported in _read_generated(module, proto):
                add(imported)
        pool.Add(proto)

    for module in modules:
        add(module)
    return pool


def _read_generated(module: str, proto: descriptor_pb2.FileDescriptorProto) -> list[str]:
    """Fill `proto` from a generated module's file, unrun; returns the generated modules it imports."""
    top, _, rest = module.partition(".")
    spec = importlib.util.find_spec(top)  # a top-level package is found, not run
    path = Path(spec.submodule_search_locations[0]) / (rest.replace(".", "/") + ".py")
    imported, serialized = [], None
    for node in ast.parse(path.read_bytes(), str(path)).body:
        if isinstance(node, ast.ImportFrom) and node.module and node.names[0].name.endswith("_pb2"):
            imported += [f"{node.module}.{alias.name}" for alias in node.names]
        elif (isinstance(node, ast.Assign) and isinstance(node.value, ast.Call)
              and getattr(node.value.func, "attr", "") == "AddSerializedFile"):
            serialized = node.value.args[0].value
    if not isinstance(serialized, bytes):
        raise RuntimeError(f"{path}: no AddSerializedFile(b'...') found; the protobuf generator changed its output")
    proto.ParseFromString(serialized)
    return imported


_POOL = _build_pool(ROOTS)


def _message(name: str):
    return message_factory.GetMessageClass(_POOL.FindMessageTypeByName(name))


PredictRequest = _message("tensorflow.serving.PredictRequest")
PredictResponse = _message("tensorflow.serving.PredictResponse")
ClassificationRequest = _message("tensorflow.serving.ClassificationRequest")
ClassificationResponse = _message("tensorflow.serving.ClassificationResponse")
RegressionRequest = _message("tensorflow.serving.RegressionRequest")
RegressionResponse = _message("tensorflow.serving.RegressionResponse")
GetModelMetadataRequest = _message("tensorflow.serving.GetModelMetadataRequest")
GetModelMetadataResponse = _message("tensorflow.serving.GetModelMetadataResponse")
SignatureDefMap = _message("tensorflow.serving.SignatureDefMap")
GetModelStatusRequest = _message("tensorflow.serving.GetModelStatusRequest")
GetModelStatusResponse = _message("tensorflow.serving.GetModelStatusResponse")
ReloadConfigRequest = _message("tensorflow.serving.ReloadConfigRequest")
ReloadConfigResponse = _message("tensorflow.serving.ReloadConfigResponse")
Example = _message("tensorflow.Example")
TensorProto = _message("tensorflow.TensorProto")
VERSION_STATES = {v.number: v.name
                  for v in _POOL.FindEnumTypeByName("tensorflow.serving.ModelVersionStatus.State").values}

_DATA_TYPES = {v.name: v.number for v in _POOL.FindEnumTypeByName("tensorflow.DataType").values}
_TENSORS = {  # numpy dtype -> (DataType, the TensorProto field TF Serving answers it in)
    np.dtype(np.float32): ("DT_FLOAT", "float_val"), np.dtype(np.float64): ("DT_DOUBLE", "double_val"),
    np.dtype(np.float16): ("DT_HALF", "half_val"), np.dtype(np.int8): ("DT_INT8", "int_val"),
    np.dtype(np.int16): ("DT_INT16", "int_val"), np.dtype(np.int32): ("DT_INT32", "int_val"),
    np.dtype(np.int64): ("DT_INT64", "int64_val"), np.dtype(np.uint8): ("DT_UINT8", "int_val"),
    np.dtype(np.uint16): ("DT_UINT16", "int_val"), np.dtype(np.uint32): ("DT_UINT32", "uint32_val"),
    np.dtype(np.uint64): ("DT_UINT64", "uint64_val"), np.dtype(np.bool_): ("DT_BOOL", "bool_val"),
    np.dtype(np.complex64): ("DT_COMPLEX64", "scomplex_val"),
    np.dtype(np.complex128): ("DT_COMPLEX128", "dcomplex_val"),
    np.dtype(object): ("DT_STRING", "string_val"),
}
_BY_DATA_TYPE = {_DATA_TYPES[data_type]: (dtype, field) for dtype, (data_type, field) in _TENSORS.items()}


def tensor_proto(array: np.ndarray):
    """A TensorProto of `array` (numbers in tensor_content, as tf.make_tensor_proto writes them; strings, as bytes
    or str objects, in string_val)."""
    dtype = np.dtype(object) if array.dtype.kind in "OSU" else array.dtype
    if dtype not in _TENSORS:
        raise ValueError(f"cannot send a tensor of dtype {array.dtype}; expected one of "
                         f"{sorted(str(d) for d in _TENSORS)}")
    proto = TensorProto(dtype=_DATA_TYPES[_TENSORS[dtype][0]])
    proto.tensor_shape.dim.extend(proto.tensor_shape.Dim(size=d) for d in array.shape)
    if dtype == object:
        proto.string_val.extend(v.encode() if isinstance(v, str) else bytes(v) for v in array.ravel())
    else:
        proto.tensor_content = np.ascontiguousarray(array).tobytes()
    return proto


def to_numpy(proto) -> np.ndarray:
    """The array a TensorProto holds, in tensor_content or its typed field; fewer values than the shape holds are
    completed with the last one, as TensorFlow's MakeNdarray does."""
    if proto.dtype not in _BY_DATA_TYPE:
        raise ValueError(f"cannot read a tensor of DataType {proto.dtype}; this client reads "
                         f"{sorted(_TENSORS[d][0] for d in _TENSORS)}")
    dtype, field = _BY_DATA_TYPE[proto.dtype]
    shape = [d.size for d in proto.tensor_shape.dim]
    if proto.tensor_content:
        return np.frombuffer(proto.tensor_content, dtype).reshape(shape).copy()
    values = getattr(proto, field)
    if field == "half_val":
        values = np.array(values, np.uint16).view(np.float16)
    elif dtype.kind == "c":
        values = np.array(values, dtype.type(0).real.dtype).view(dtype)
    else:
        values = np.array(list(values), dtype)
    count = math.prod(shape)
    if len(values) == 0:
        return np.full(shape, b"" if dtype == object else 0, dtype)
    if len(values) < count:
        values = np.concatenate([values, np.full(count - len(values), values[-1], dtype)])
    return values[:count].reshape(shape)
