"""Predict bodies whose one tensor is a plain numeric array, decoded in C (simdjson) straight to numpy.

A 32x32x3 `instances` body is 23 KB of JSON; orjson builds 3,000 Python floats and 1,000 lists that
numpy then walks again (~400 us), while simdjson's `as_buffer` writes the numbers into one flat buffer
(~70 us). Flat is the catch: `[[1,2],[3],[4,5,6]]` flattens like a 3x2. So the nesting is proved
rectangular from the body's structural characters: with no backslash in the body (so every string is
one plain `"..."`), the `[`, `]` and `,` outside strings must be exactly those of a dense array of
the shape read along first elements. Anything else, and every body this cannot decide (NaN tokens,
numbers beyond 64 bits or double range, duplicate keys, other keys, empty dimensions, booleans,
a dtype that is not a float or integer), goes to the exact path (`decode_json` and
`parse_predict_request`), which gives TF Serving's answer and its error messages.
"""
from __future__ import annotations

import functools
import math
import re
from collections.abc import Mapping
from typing import Any

import numpy as np
import simdjson

from serving.codec.document import Document, decode_json
from serving.codec.dtypes import FLOAT_DTYPES, INT_INPUT_RANGES, TensorSpecLike, input_dtype

_STRUCTURE = b"[],\""
_NOT_STRUCTURE = bytes(c for c in range(256) if c not in _STRUCTURE)
_STRING = re.compile(rb'"[^"]*"')
_TENSOR_KEYS = ("instances", "inputs")
_MAX_RANK = 64  # as serving.codec.request.MAX_RANK: deeper goes to the exact path and its message


class NumericDocument(Document):
    """A predict body decoded by simdjson: its signature_name (the one other key allowed) as a dict, and the
    numeric tensor kept in simdjson's form until the signature says which dtype it must be."""

    may_hold_booleans = False

    def __init__(self, body: bytes, key: str, array: simdjson.Array, floats: np.ndarray, shape: tuple[int, ...],
                 signature_name: str | None):
        super().__init__({} if signature_name is None else {"signature_name": signature_name})
        self.body, self.key, self.array, self.floats, self.shape = body, key, array, floats, shape

    def tensors(self, signature_inputs: Mapping[str, TensorSpecLike]) -> dict[str, np.ndarray] | None:
        """The input tensors parse_predict_request would give, or None when only its exact path can tell."""
        if len(signature_inputs) != 1:
            return None  # several inputs need objects, which never come here; let the exact path say so
        (name, spec), = signature_inputs.items()
        dtype = input_dtype(spec)
        if dtype in FLOAT_DTYPES:
            with np.errstate(over="ignore"):  # like a C cast: too large for float32 becomes +-inf
                tensor = self.floats.astype(dtype)
        elif dtype in INT_INPUT_RANGES:
            try:
                values = np.frombuffer(self.array.as_buffer(of_type="i"), dtype=np.int64)
            except (TypeError, ValueError):  # a double, or beyond int64: the exact path's message or uint64
                return None
            low, high = INT_INPUT_RANGES[dtype]
            if values.min() < low or values.max() > high:
                return None
            tensor = values.astype(dtype)
        else:
            return None
        return {name: tensor.reshape(self.shape)}

    def exact(self) -> Document:
        return decode_json(self.body)


def decode_predict_json(body: bytes) -> Document:
    """A predict body as a NumericDocument when it qualifies, else as `decode_json` decodes it (a large one from
    this parse, not a second one)."""
    parsed = _parsed(body)
    document = _numeric_document(body, parsed)
    return decode_json(body, parsed) if document is None else document  # (an empty dict is falsy: no `or`)


def _parsed(body: bytes) -> Any:
    """simdjson's parse of the body; None where it refuses it (malformed, NaN, too deep, beyond 64 bits: the exact
    path's messages), or where the body holds a backslash (an escape, which _is_dense cannot read)."""
    if b"\\" in body:
        return None
    try:
        return simdjson.Parser().parse(body)
    except (ValueError, RuntimeError):
        return None


def _numeric_document(body: bytes, document: Any) -> NumericDocument | None:
    if not isinstance(document, simdjson.Object):
        return None
    keys = list(document.keys())
    tensor_keys = [k for k in keys if k in _TENSOR_KEYS]
    others = [k for k in keys if k not in _TENSOR_KEYS]
    if len(tensor_keys) != 1 or others not in ([], ["signature_name"]):
        return None
    key = tensor_keys[0]
    array = document[key]
    signature_name = document["signature_name"] if others else None  # (simdjson's get of a missing key raises
    #                                                                   and catches: 2.6 us, ~20 under load)
    if not isinstance(array, simdjson.Array) or not (signature_name is None or isinstance(signature_name, str)):
        return None
    shape = _first_element_shape(array)
    if not shape or 0 in shape or len(shape) > _MAX_RANK:
        return None
    try:  # every leaf a number: no bool, null, string or object
        floats = np.frombuffer(array.as_buffer(of_type="d"), dtype=np.float64)
    except (TypeError, ValueError):
        return None
    if len(floats) != math.prod(shape) or not _is_dense(body, shape, extra_members=len(keys) - 1):
        return None
    return NumericDocument(body, key, array, floats, shape, signature_name)


def _first_element_shape(array: simdjson.Array) -> tuple[int, ...]:
    shape = []
    value = array
    while isinstance(value, simdjson.Array) and len(shape) <= _MAX_RANK:
        shape.append(len(value))
        if not len(value):
            break
        value = value[0]
    return tuple(shape)


def _is_dense(body: bytes, shape: tuple[int, ...], extra_members: int) -> bool:
    """Whether the brackets and commas outside strings are those of a dense `shape` array, plus the comma
    that separates it from a signature_name member (before or after it)."""
    structure = _STRING.sub(b"", body.translate(None, _NOT_STRUCTURE))
    dense = _dense_structure(shape)
    if extra_members == 0:
        return structure == dense
    return structure in (b"," + dense, dense + b",")


@functools.lru_cache(maxsize=64)
def _dense_structure(shape: tuple[int, ...]) -> bytes:
    """`[[,,],[,,]]` for shape (2, 3): the structural characters of a dense array, numbers left out."""
    if not shape:
        return b""
    inner = _dense_structure(shape[1:])
    return b"[" + b",".join([inner] * shape[0]) + b"]"
