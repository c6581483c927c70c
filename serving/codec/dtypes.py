"""dtypes in TF Serving's JSON: their names in messages, and the JSON values each accepts; shapes as its
messages print them."""
from __future__ import annotations

from typing import Any, Protocol

import numpy as np


class TensorSpecLike(Protocol):
    """A signature input: only its dtype matters here (e.g. tf.TensorSpec, serving.servable.TensorSpec).

    TF Serving's JSON decoding converts values to the input's dtype but never looks at the
    signature's shape; the shape is checked when the model runs.
    """

    @property
    def dtype(self) -> Any: ...


INT64_MIN, UINT64_MAX = -(2**63), 2**64 - 1


_DTYPE_NAMES = {  # numpy dtype -> TF DataTypeString
    np.dtype(np.float16): "half",
    np.dtype(np.float32): "float",
    np.dtype(np.float64): "double",
    np.dtype(np.int8): "int8",
    np.dtype(np.int16): "int16",
    np.dtype(np.int32): "int32",
    np.dtype(np.int64): "int64",
    np.dtype(np.uint8): "uint8",
    np.dtype(np.uint16): "uint16",
    np.dtype(np.uint32): "uint32",
    np.dtype(np.uint64): "uint64",
    np.dtype(np.bool_): "bool",
    np.dtype(np.complex64): "complex64",
    np.dtype(np.complex128): "complex128",
}


# Integer inputs: the JSON range TF Serving accepts (rapidjson IsInt/IsInt64/IsUint/IsUint64).
# int8/int16/uint8 travel in TensorProto.int_val, so out-of-range values wrap like a C cast.
INT_INPUT_RANGES = {
    np.dtype(np.int8): (-(2**31), 2**31 - 1),
    np.dtype(np.int16): (-(2**31), 2**31 - 1),
    np.dtype(np.int32): (-(2**31), 2**31 - 1),
    np.dtype(np.uint8): (-(2**31), 2**31 - 1),
    np.dtype(np.int64): (INT64_MIN, 2**63 - 1),
    np.dtype(np.uint32): (0, 2**32 - 1),
    np.dtype(np.uint64): (0, UINT64_MAX),
}


FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


INT_OUTPUT_DTYPES = tuple(INT_INPUT_RANGES)  # AddSingleValueAndAdvance writes exactly these


STRING = np.dtype(object)


def is_string(dtype: np.dtype) -> bool:
    return dtype.kind in "OSU"


def dtype_name(dtype: np.dtype) -> str:
    return "string" if is_string(dtype) else _DTYPE_NAMES.get(dtype, str(dtype))


def shape_string(shape: tuple[int, ...] | list[int]) -> str:
    """TensorShape::DebugString: "[2,3]"."""
    return "[" + ",".join(map(str, shape)) + "]"


def input_dtype(spec: TensorSpecLike) -> np.dtype:
    """numpy dtype of a tf.DType or numpy dtype-like; DT_STRING inputs become object (bytes) arrays."""
    dtype = np.dtype(getattr(spec.dtype, "as_numpy_dtype", spec.dtype))
    return STRING if is_string(dtype) else dtype
