"""Predict requests: JSON -> input tensors, with TF Serving's checks and messages (FillPredictRequestFromJson)."""
from __future__ import annotations

import base64
import math
import re
from collections.abc import Mapping
from typing import Any

import numpy as np
import orjson

from serving.codec.deep import DeepValue
from serving.codec.document import signature_name
from serving.codec.dtypes import (FLOAT_DTYPES, INT_INPUT_RANGES, STRING, TensorSpecLike, dtype_name, input_dtype,
                                  shape_string)
from serving.codec.numeric import NumericDocument
from serving.codec.rapidjson import debug_string, json_type
from serving.codec.slices import array as sliced_array
from serving.errors import CodecError, ServingError, Unimplemented

MAX_RANK = 64  # dimensions of a decoded tensor


ROW_FORMAT = "row"  # request had "instances": answer {"predictions": ...}


COLUMNAR_FORMAT = "columnar"  # request had "inputs": answer {"outputs": ...}


def parse_predict_request(
    document: dict, signature_inputs: Mapping[str, TensorSpecLike]
) -> tuple[dict[str, np.ndarray], str]:
    """Input tensors of a predict request, and its format (ROW_FORMAT or COLUMNAR_FORMAT).

    Follows FillPredictRequestFromJson: exactly one of "instances" (row format: one entry per
    batch item, objects keyed by input name unless the signature has a single input) and "inputs"
    (columnar: one value per input, or an object keyed by input name; unknown keys are ignored).
    The format is returned because the response must use the same one.
    """
    if isinstance(document, NumericDocument):  # decoded in C; the exact path decides what it cannot
        tensors = document.tensors(signature_inputs)
        if tensors is not None:
            return tensors, ROW_FORMAT if document.key == "instances" else COLUMNAR_FORMAT
        document = document.exact()
    name = signature_name(document)
    if not signature_inputs:
        raise CodecError(f"Failed to get input map for signature: {name or 'DEFAULT'}")
    dtypes = {key: input_dtype(spec) for key, spec in sorted(signature_inputs.items())}
    has_instances, has_inputs = "instances" in document, "inputs" in document
    if has_instances and has_inputs:
        raise CodecError(
            f"JSON Value: {debug_string(document)} Not formatted correctly expecting only one of "
            "'inputs' or 'instances' keys to exist "
        )
    if has_instances:
        instances = document["instances"]
        if not isinstance(instances, list):
            raise CodecError(f"JSON Value: {debug_string(document)} Expecting 'instances' to be an list/array")
        if not instances:
            raise CodecError(f"JSON Value: {debug_string(document)} No values in 'instances' array")
        return _tensors_from_instances(instances, dtypes, _booleans(document)), ROW_FORMAT
    if has_inputs:
        return _tensors_from_inputs(document["inputs"], dtypes, _booleans(document)), COLUMNAR_FORMAT
    raise CodecError("Missing 'inputs' or 'instances' key")


def _booleans(document: dict) -> bool:
    return getattr(document, "may_hold_booleans", True)


def is_b64(value: Any) -> bool:
    """{"b64": "<base64>"}: the only way to send binary strings (IsValBase64Object)."""
    return isinstance(value, dict) and len(value) == 1 and isinstance(value.get("b64"), str)


def _is_named(value: Any) -> bool:
    return isinstance(value, dict) and not is_b64(value)


def _tensors_from_instances(instances: list, dtypes: dict[str, np.dtype], booleans: bool) -> dict[str, np.ndarray]:
    """Row format (FillTensorMapFromInstancesList): every instance adds one row to each input."""
    if not isinstance(instances[0], dict) and len(dtypes) > 1:
        raise CodecError(
            "instances is a plain list, but expecting list of objects as multiple input tensors "
            "required as per tensorinfo_map"
        )
    if _is_named(instances[0]):
        if all(_is_named(i) and i.keys() == dtypes.keys() for i in instances):
            fast = {name: _fast_tensor([i[name] for i in instances], dtype, booleans) for name, dtype in dtypes.items()}
            if all(t is not None for t in fast.values()):
                return fast
        return _named_instances_exactly(instances, dtypes)
    name, dtype = next(iter(dtypes.items()))
    fast = _fast_tensor(instances, dtype, booleans)
    if fast is not None:
        return {name: fast}
    return _plain_instances_exactly(instances, name, dtype)


class _Rows:
    """Instances of one input seen so far: all must have the first one's size and shape."""

    def __init__(self, dtype: np.dtype):
        self.dtype = dtype
        self.shape: list[int] | None = None
        self.values: list = []

    def add(self, item: Any) -> None:
        shape = _dense_shape(item)
        values = _leaf_values(item, shape, self.dtype)
        if self.shape is None:
            self.shape = shape
        elif math.prod(self.shape) != len(values):
            raise CodecError(f"Expecting tensor size: {math.prod(self.shape)} but got: {len(values)}")
        elif self.shape != shape:
            raise CodecError(f"Expecting shape {shape_string(self.shape)} but got: {shape_string(shape)}")
        self.values.extend(values)

    def tensor(self, batch: int) -> np.ndarray:
        return _to_array(self.values, [batch, *self.shape], self.dtype)


def _plain_instances_exactly(instances: list, name: str, dtype: np.dtype) -> dict[str, np.ndarray]:
    rows = _Rows(dtype)
    for i, item in enumerate(instances):
        if _is_named(item):
            raise CodecError(f"Expecting value/list but got object at item {i} of input list")
        try:
            rows.add(item)
        except ServingError as e:
            raise CodecError(
                f"Failed to process element: {i} of 'instances' list. Error: {e.status_string()}"
            ) from None
    return {name: rows.tensor(len(instances))}


def _named_instances_exactly(instances: list, dtypes: dict[str, np.dtype]) -> dict[str, np.ndarray]:
    rows = {name: _Rows(dtype) for name, dtype in dtypes.items()}
    for i, item in enumerate(instances):
        if not _is_named(item):
            raise CodecError(f"Expecting object but got list at item {i} of input list")
        for key, value in item.items():
            try:
                if key not in rows:
                    raise CodecError(f"JSON object: does not have named input: {key}")
                rows[key].add(value)
            except ServingError as e:
                raise CodecError(
                    f"Failed to process element: {i} key: {key} of 'instances' list. Error: {e.status_string()}"
                ) from None
        if item.keys() != rows.keys():
            raise CodecError(
                f"Failed to process element: {i} of 'instances' list. JSON object: {debug_string(item)} "
                f"keys must be equal to: {','.join(rows)}"
            )
    return {name: r.tensor(len(instances)) for name, r in rows.items()}


def _tensors_from_inputs(value: Any, dtypes: dict[str, np.dtype], booleans: bool) -> dict[str, np.ndarray]:
    """Columnar format (FillTensorMapFromInputsMap): each input is given whole."""
    if not _is_named(value):
        if len(dtypes) > 1:
            raise CodecError(
                "inputs is a plain value/list, but expecting an object as multiple input tensors "
                "required as per tensorinfo_map"
            )
        name, dtype = next(iter(dtypes.items()))
        return {name: _tensor(value, dtype, booleans)}
    tensors = {}
    for name, dtype in dtypes.items():
        if name not in value:
            raise CodecError(f"Missing named input: {name} in 'inputs' object.")
        tensors[name] = _tensor(value[name], dtype, booleans)
    return tensors


def _tensor(value: Any, dtype: np.dtype, booleans: bool) -> np.ndarray:
    fast = _fast_tensor(value, dtype, booleans)
    if fast is not None:
        return fast
    shape = _dense_shape(value)
    return _to_array(_leaf_values(value, shape, dtype), shape, dtype)


def _fast_tensor(value: Any, dtype: np.dtype, booleans: bool) -> np.ndarray | None:
    """`value` as an array in one numpy call when it is a rectangular nest of plain JSON numbers.

    Returns None whenever the exact walk (_leaf_values) could disagree or fail, so that one
    produces every error message. numpy gives a numeric dtype only for numbers and booleans
    (strings, null and objects do not), so booleans are the one thing to rule out: by the body
    having none (`booleans` False), else by re-serializing the value with orjson and looking.
    """
    if dtype not in FLOAT_DTYPES and dtype not in INT_INPUT_RANGES:
        return None
    if booleans:
        try:
            if b"true" in orjson.dumps(value) or b"false" in orjson.dumps(value):
                return None
        except orjson.JSONEncodeError:
            return None
    try:
        array = sliced_array(value)
    except (ValueError, OverflowError):
        return None  # ragged
    if array.dtype.kind not in "fiu" or array.dtype == np.bool_:
        return None  # strings, null, objects, integers beyond 64 bits
    if dtype in FLOAT_DTYPES:
        with np.errstate(over="ignore"):  # like a C cast: too large becomes +-inf
            return array.astype(dtype)
    if array.dtype.kind == "f" and array.size:
        return None  # a JSON double is never an integer for rapidjson (empty lists are float64)
    low, high = INT_INPUT_RANGES[dtype]
    if array.size and (array.min() < low or array.max() > high):
        return None
    return array.astype(dtype)


_MAX_DIMS = 254  # TensorShape::MaxDimensions(); TF Serving fails later on deeper lists


def _dense_shape(value: Any) -> list[int]:
    """Shape read along first elements, as GetDenseTensorShape; the walk then checks the rest. Lists nested deeper
    than the parser keeps are counted from the DeepValue that stands for them."""
    shape = []
    while isinstance(value, list):
        shape.append(len(value))
        if not value:
            break
        value = value[0]
    rank = len(shape) + (value.nested_arrays if isinstance(value, DeepValue) else 0)
    if rank > _MAX_DIMS:
        raise CodecError(f"Lists nested {rank} deep exceed the {_MAX_DIMS} dimensions a tensor can have")
    return shape


def _leaf_values(value: Any, shape: list[int], dtype: np.dtype) -> list:
    """All leaves of `value` converted to `dtype`, with FillTensorProto's checks and messages."""
    values: list = []
    _walk(value, 0, shape, dtype, values)
    return values


def _walk(item: Any, level: int, shape: list[int], dtype: np.dtype, values: list) -> None:
    """Append `item`'s leaves to `values` (a plain function: a recursive closure is a reference cycle per call,
    garbage only a full collection frees)."""
    rank = len(shape)
    if not isinstance(item, list):
        if level != rank:
            raise CodecError(
                f"JSON Value: {debug_string(item)} found at incorrect level: {level + 1} "
                f"in the JSON DOM. Expected at level: {rank}"
            )
        values.append(_leaf_value(item, dtype))
        return
    if level >= rank:
        raise CodecError(f"Encountered list at unexpected level: {level} expected < {rank}")
    if len(item) != shape[level]:
        raise CodecError(
            f"Encountered list at unexpected size: {len(item)} at level: {level} "
            f"expected size: {shape[level]}"
        )
    for element in item:
        _walk(element, level + 1, shape, dtype, values)


def _leaf_value(value: Any, dtype: np.dtype) -> Any:
    """One JSON scalar as a value of `dtype` (AddValueToTensor, plus base64 objects for strings)."""
    if isinstance(value, dict):
        if dtype == STRING:
            return decode_b64_object(value)
        raise _type_error(value, dtype)
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if dtype in FLOAT_DTYPES:
        if not is_number:
            raise _type_error(value, dtype)
        return float(value)
    if dtype in INT_INPUT_RANGES:
        low, high = INT_INPUT_RANGES[dtype]
        if not (is_number and isinstance(value, int) and low <= value <= high):
            raise _type_error(value, dtype)
        return value
    if dtype == np.bool_:
        if not isinstance(value, bool):
            raise _type_error(value, dtype)
        return value
    if dtype == STRING:
        if not isinstance(value, str):
            raise _type_error(value, dtype)
        return utf8(value)
    raise Unimplemented(f"Conversion of JSON Value: {debug_string(value)} to type: {dtype_name(dtype)}")


def _type_error(value: Any, dtype: np.dtype) -> CodecError:
    return CodecError(
        f"JSON Value: {debug_string(value)} Type: {json_type(value)} "
        f"is not of expected type: {dtype_name(dtype)}"
    )


def _to_array(values: list, shape: list[int], dtype: np.dtype) -> np.ndarray:
    if len(shape) > MAX_RANK:  # numpy's limit (TF's is 254): past it, a ValueError would be a 500
        raise CodecError(f"JSON Value nests lists {len(shape)} levels deep; a tensor here has at most {MAX_RANK} "
                         f"dimensions")
    if dtype == STRING:
        array = np.empty(len(values), dtype=object)
        array[:] = values
        return array.reshape(shape)
    if dtype in FLOAT_DTYPES:
        with np.errstate(over="ignore"):
            return np.array(values, dtype=np.float64).astype(dtype).reshape(shape)
    if dtype == np.bool_:
        return np.array(values, dtype=np.bool_).reshape(shape)
    wide = np.uint64 if dtype == np.uint64 else np.int64
    return np.array(values, dtype=wide).astype(dtype).reshape(shape)


def utf8(text: str) -> bytes:
    """A JSON string's bytes: invalid UTF-8 in the body is passed through, as rapidjson does."""
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # an escaped lone surrogate such as "\ud800"
        raise CodecError("JSON Parse error: The surrogate pair in string is invalid.") from None


_B64_BODY = re.compile(r"([A-Za-z0-9+/]*)([=.]*)")


_B64_SPACE = re.compile(r"[ \t\n\v\f\r]")


def decode_b64_object(value: Any) -> bytes:
    """JsonDecodeBase64Object, decoding like absl::Base64Unescape."""
    if not is_b64(value):
        raise CodecError(f"JSON Value: {debug_string(value)} not formatted correctly for base64 data")
    decoded = _base64_decode(value["b64"])
    if decoded is None:
        raise CodecError("Unable to base64 decode")
    return decoded


def _base64_decode(text: str) -> bytes | None:
    """absl::Base64Unescape: whitespace ignored, padding ('=' or '.') optional but never wrong."""
    match = _B64_BODY.fullmatch(_B64_SPACE.sub("", text))
    if match is None:
        return None
    data, padding = match.groups()
    missing = -len(data) % 4
    if len(data) % 4 == 1 or (padding and len(padding) != missing):
        return None
    return base64.b64decode(data + "=" * missing)
