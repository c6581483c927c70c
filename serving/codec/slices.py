"""Large bodies decoded, and large outputs written, a slice at a time, so that no single C call holds the GIL for long.

A large body is decoded on a thread of its own while the event loop answers everyone else; but the loop can only run
between the decoder's C calls. orjson parsing 8 MB of rows (the default body limit) is one call of 0.2 s, numpy
building their tensor another of 0.1 s, stretched 3-4 times on a busy host. Here simdjson parses the body (in C, 40
ms for 8 MB), its long arrays become Python lists a value (a row) at a time, long lists become arrays in slices of
rows, and long outputs are written in slices of values (serving.codec.response), with the same results.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import simdjson

SLICE_ROWS = 4096  # rows of a long list made an array at once
SLICE_VALUES = 1 << 16  # values of an output written as JSON at once
_FEW = 16  # an array of up to this many values is split further, value by value (each may be large); a longer one
# has each of its values converted in one call
_MAX_DEPTH = 64  # deeper than this, a value is converted whole (Python's own recursion stops at ~1,000)
_MAX_KEYS = 64  # an object's members are looked up one by one (each lookup walks the object); past this, whole


def parse(body: bytes) -> Any:
    """The body's JSON value as orjson.loads gives it; raises ValueError or RuntimeError (simdjson's) for what simdjson
    refuses (malformed, NaN, deeper than 1,024, integers beyond 64 bits), for the caller's own parser to decide."""
    return to_python(simdjson.Parser().parse(body))


def to_python(value: Any, depth: int = 0) -> Any:
    """A simdjson value as Python objects (dict, list, str, int, float, bool, None), converted in slices."""
    if isinstance(value, simdjson.Object):
        keys = list(value.keys())
        if depth >= _MAX_DEPTH or len(keys) > _MAX_KEYS or len(set(keys)) < len(keys):  # a repeated key: the last
            return value.as_dict()  # one wins, as in orjson, where a lookup would find the first
        return {key: to_python(value[key], depth + 1) for key in keys}
    if isinstance(value, simdjson.Array):
        if depth >= _MAX_DEPTH:
            return value.as_list()
        if len(value) <= _FEW:
            return [to_python(item, depth + 1) for item in value]
        return _value_by_value(value)
    return value


def _value_by_value(array: simdjson.Array) -> list:
    """The array's values, each converted by one C call (a row at a time): iterating walks simdjson's tape once,
    where an index or a slice walks it from the start. A list of numbers or strings (its first value is) is
    converted in one call: a value at a time, Python's loop would cost 2.4 times the conversion (4 MB: 38 -> 93 ms)."""
    if not isinstance(array[0], (simdjson.Object, simdjson.Array)):
        return array.as_list()
    return [item.as_dict() if isinstance(item, simdjson.Object) else
            item.as_list() if isinstance(item, simdjson.Array) else item for item in array]


def array(values: Any) -> np.ndarray:
    """np.array(values), made SLICE_ROWS rows at a time when it is a long list; where the slices do not agree (ragged
    rows, rows whose numbers numpy types differently) or one fails, numpy decides over the whole list, so that the
    result, or the error, is np.array's own."""
    if not isinstance(values, list) or len(values) <= SLICE_ROWS:
        return np.array(values)
    try:
        parts = [np.array(values[start:start + SLICE_ROWS]) for start in range(0, len(values), SLICE_ROWS)]
    except (ValueError, OverflowError):
        return np.array(values)
    first = parts[0]
    if any(part.dtype != first.dtype or part.shape[1:] != first.shape[1:] for part in parts):
        return np.array(values)
    return np.concatenate(parts)
