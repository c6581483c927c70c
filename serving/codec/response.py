"""Responses: output tensors -> the JSON TF Serving's rapidjson PrettyWriter writes (MakeJsonFromTensors, ...)."""
from __future__ import annotations

import base64
import math
from collections.abc import Mapping

import numpy as np
import orjson

from serving.codec.dtypes import INT_OUTPUT_DTYPES, dtype_name, is_string
from serving.codec.floats import float32_text, float64_token, per_value_text
from serving.codec.rapidjson import indent, json_string
from serving.codec.slices import SLICE_VALUES
from serving.codec.request import COLUMNAR_FORMAT, ROW_FORMAT
from serving.errors import CodecError


def format_predict_response(outputs: Mapping[str, np.ndarray], fmt: str) -> bytes:
    """{"predictions": ...} for ROW_FORMAT, {"outputs": ...} for COLUMNAR_FORMAT (MakeJsonFromTensors).

    With one output its name is left out. With several, row format gives one object per batch
    item and columnar one object keyed by output name; keys are in name order. String outputs
    whose name ends in "_bytes" are written as {"b64": ...}; so are strings that are not UTF-8.
    """
    if not outputs:
        raise CodecError("Cannot convert empty tensor map to JSON")
    arrays = {name: np.asarray(outputs[name]) for name in sorted(outputs)}
    if fmt == ROW_FORMAT:
        return _row_json(arrays)
    if fmt == COLUMNAR_FORMAT:
        return _columnar_json(arrays)
    raise CodecError("Invalid request format")


def _row_json(arrays: dict[str, np.ndarray]) -> bytes:
    batch = -1
    for name, array in arrays.items():
        if array.ndim == 0:
            raise CodecError(f"Tensor name: {name} has no shape information ")
        if batch >= 0 and array.shape[0] != batch:
            raise CodecError(f"Tensor name: {name} has inconsistent batch size: {array.shape[0]} expecting: {batch}")
        batch = array.shape[0]
    if batch == 0:
        return b'{\n    "predictions": []\n}'
    if len(arrays) == 1:
        ((name, array),) = arrays.items()
        if is_string(array.dtype):
            items = _nested(_tokens(name, array, 1 + array.ndim), batch, array.shape[1:], 2, pretty=False)
            return b'{\n    "predictions": [' + b", ".join(items) + b"\n    ]\n}"
        text = _numbers_text(array).replace(b",", b", ")  # the whole array, arrays on one line
        return b'{\n    "predictions": ' + text[:-1] + b"\n    ]\n}"
    per_output = {  # levels: document, "predictions" array, item object
        json_string(name.encode()): _nested(_tokens(name, a, 2 + a.ndim), batch, a.shape[1:], 3, pretty=False)
        for name, a in arrays.items()
    }
    items = (
        b"\n        {"
        + b",".join(b"\n            " + key + b": " + values[i] for key, values in per_output.items())
        + b"\n        }"
        for i in range(batch)
    )
    return b'{\n    "predictions": [' + b",".join(items) + b"\n    ]\n}"


def _columnar_json(arrays: dict[str, np.ndarray]) -> bytes:
    if len(arrays) == 1:
        ((name, array),) = arrays.items()
        (text,) = _nested(_tokens(name, array, 1 + array.ndim), 1, array.shape, 1, pretty=True)
        return b'{\n    "outputs": ' + text + b"\n}"
    fields = (
        b"\n        " + json_string(name.encode()) + b": "
        + _nested(_tokens(name, array, 2 + array.ndim), 1, array.shape, 2, pretty=True)[0]
        for name, array in arrays.items()
    )
    return b'{\n    "outputs": {' + b",".join(fields) + b"\n    }\n}"


def _nested(tokens: list[bytes], count: int, dims: tuple[int, ...], level: int, pretty: bool) -> list[bytes]:
    """Group flat (C-order) value tokens into `count` JSON arrays of shape `dims`.

    `level` is how many containers are open around each returned text, which PrettyWriter uses
    for indentation. Single-line arrays are rapidjson's kFormatSingleLineArray (row format);
    pretty ones put every element on its own line (columnar format).
    """
    items = tokens
    for axis in reversed(range(len(dims))):
        size, arrays = dims[axis], count * math.prod(dims[:axis])
        if size == 0:
            items = [b"[]"] * arrays
            continue
        if pretty:
            inner = b"\n" + indent(level + axis + 1).encode()
            start, separator, end = b"[" + inner, b"," + inner, b"\n" + indent(level + axis).encode() + b"]"
        else:
            start, separator, end = b"[", b", ", b"]"
        items = [start + separator.join(items[i * size:(i + 1) * size]) + end for i in range(arrays)]
    return items


def _tokens(name: str, array: np.ndarray, level: int) -> list[bytes]:
    """Each value of `array` (C order) as TF Serving writes it (AddSingleValueAndAdvance).

    `level` is the number of containers open around a value, for the indentation of
    {"b64": ...} objects.
    """
    flat = np.ascontiguousarray(array).reshape(-1)
    if is_string(flat.dtype):
        return _string_tokens(flat, name.endswith("_bytes"), level)
    return _numbers_text(flat)[1:-1].split(b",") if flat.size else []


def _numbers_text(array: np.ndarray) -> bytes:
    """A numeric or bool array (rank >= 1) as compact JSON, "[[1.0,2.5],[3.0,4.0]]", in TF's formats.

    orjson writes the array; for floats it is given the decimal value TF Serving prints where
    orjson's text is the same, and NaN (written null) where it is not, replaced afterwards.
    """
    array = np.ascontiguousarray(array)
    rows = max(1, SLICE_VALUES // max(1, math.prod(array.shape[1:])))
    if len(array) > rows:  # written a slice of rows at a time: no C call holds the GIL for the whole array
        parts = [_numbers_text(array[start:start + rows]) for start in range(0, len(array), rows)]
        return b"[" + b",".join(part[1:-1] for part in parts) + b"]"
    dtype = array.dtype
    if dtype == np.float32:
        return float32_text(array)
    if dtype == np.float64:
        return per_value_text(array, float64_token)
    if dtype in INT_OUTPUT_DTYPES or dtype == np.bool_:
        return orjson.dumps(array, option=orjson.OPT_SERIALIZE_NUMPY)
    if array.size:
        raise CodecError(f"Failed to write JSON value for tensor type: {dtype_name(dtype)}")
    return orjson.dumps(np.zeros(array.shape), option=orjson.OPT_SERIALIZE_NUMPY)  # nested empty arrays


def _string_tokens(flat: np.ndarray, as_bytes: bool, level: int) -> list[bytes]:
    tokens = []
    for item in flat.tolist():
        data = item.encode() if isinstance(item, str) else bytes(item)
        if not as_bytes and _is_utf8(data):
            tokens.append(json_string(data))
        else:
            tokens.append(_b64_object(data, level))
    return tokens


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _b64_object(data: bytes, level: int) -> bytes:
    """{"b64": ...} as PrettyWriter lays out an object `level` containers deep."""
    return (
        b"{\n" + indent(level + 1).encode() + b'"b64": "' + base64.b64encode(data) + b'"\n'
        + indent(level).encode() + b"}"
    )


def format_classify_response(classes: np.ndarray | None, scores: np.ndarray | None) -> bytes:
    """{"results": [[[label, score], ...], ...]} (MakeJsonFromClassificationResult).

    `classes` ([batch, k] strings) or `scores` ([batch, k] float32) may be missing, as in TF
    Serving's ClassificationResult: labels are then "" and scores 0.0.
    """
    reference = classes if classes is not None else scores
    if reference is None or reference.shape[0] == 0:
        raise CodecError("Cannot convert empty ClassificationResults to JSON")
    batch, k = reference.shape
    if classes is None:
        labels = [b'""'] * (batch * k)
    else:
        labels = [json_string(_label_bytes(c)) for c in np.asarray(classes).reshape(-1).tolist()]
    if scores is None:
        values = [b"0.0"] * (batch * k)
    else:
        values = _tokens("scores", np.asarray(scores, dtype=np.float32), 0)
    pairs = [b"[" + label + b", " + value + b"]" for label, value in zip(labels, values)]
    rows = (b"[" + b", ".join(pairs[i * k:(i + 1) * k]) + b"]" for i in range(batch))
    return b'{\n    "results": [' + b", ".join(rows) + b"\n    ]\n}"


def _label_bytes(label: bytes | str) -> bytes:
    """A class label; one that is not UTF-8 gets U+FFFD where TF Serving would emit raw bytes."""
    if isinstance(label, str):
        return label.encode()
    return label.decode("utf-8", "replace").encode()


def format_regress_response(values: np.ndarray) -> bytes:
    """{"results": [value, ...]} (MakeJsonFromRegressionResult), one float32 per example."""
    flat = np.asarray(values, dtype=np.float32).reshape(-1)
    if not flat.size:
        raise CodecError("Cannot convert empty RegressionResults to JSON")
    return b'{\n    "results": ' + _numbers_text(flat).replace(b",", b", ") + b"\n}"


def format_error_response(message: str) -> bytes:
    """{"error": message} as MakeJsonFromStatus writes it."""
    return b'{\n    "error": ' + json_string(message.encode("utf-8", "replace")) + b"\n}"
