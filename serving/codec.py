"""TF Serving's REST JSON <-> numpy tensors, byte for byte as tensorflow_serving/util/json_tensor.cc.

Requests: `decode_json` parses a body the way TF Serving's rapidjson is set up (NaN/Infinity
accepted, bytes after the document ignored, invalid UTF-8 passed through), then
`parse_predict_request` / `parse_examples_request` turn the document into tensors or tf.Examples
with TF Serving's checks and error messages. Responses: the `format_*` functions write what TF
Serving's rapidjson PrettyWriter writes, including its float formatting (6 significant digits when
they round-trip, else 9 for float32 / 17 for float64, "1.0" for whole numbers, bare NaN/Infinity).
Every bad input raises `CodecError`, whose message is TF Serving's.
"""
from __future__ import annotations

import base64
import json
import math
import re
from collections.abc import Iterator, Mapping
from fractions import Fraction
from typing import Any, Protocol

import numpy as np
import orjson

from serving import errors

ROW_FORMAT = "row"  # request had "instances": answer {"predictions": ...}
COLUMNAR_FORMAT = "columnar"  # request had "inputs": answer {"outputs": ...}


class CodecError(errors.InvalidArgument):
    """A request or response TF Serving would refuse (INVALID_ARGUMENT, HTTP 400).

    The message is TF Serving's own wording, so clients matching on error text keep working.
    """

    def status_string(self) -> str:
        """absl::Status::ToString(), which TF Serving embeds in errors about one instance."""
        return f"{self.code.name}: {self.message}"


class UnsupportedConversion(CodecError):
    """Converting JSON to a dtype TF Serving's JSON codec does not handle (UNIMPLEMENTED, HTTP 501)."""

    http_status = errors.Unimplemented.http_status
    code = errors.Unimplemented.code


class TensorSpecLike(Protocol):
    """A signature input: only its dtype matters here (e.g. tf.TensorSpec, serving.servable.TensorSpec).

    TF Serving's JSON decoding converts values to the input's dtype but never looks at the
    signature's shape; the shape is checked when the model runs.
    """

    @property
    def dtype(self) -> Any: ...


# ---------------------------------------------------------------------------------------------
# Parsing the body
# ---------------------------------------------------------------------------------------------

_UTF8_BOM = b"\xef\xbb\xbf"  # rapidjson's UTF-8 input stream skips it
_JSON_WHITESPACE = " \t\n\r"
_INT64_MIN, _UINT64_MAX = -(2**63), 2**64 - 1


class _NumberTooBig(ValueError):
    def __init__(self, literal: str):
        super().__init__(literal)
        self.literal = literal


def _parse_int(literal: str) -> int | float:
    """rapidjson keeps integers in [int64 min, uint64 max]; any other integer becomes a double."""
    value = int(literal)
    return value if _INT64_MIN <= value <= _UINT64_MAX else _parse_float(literal)


def _parse_float(literal: str) -> float:
    value = float(literal)
    if math.isinf(value):
        raise _NumberTooBig(literal)
    return value


_LENIENT_DECODER = json.JSONDecoder(parse_int=_parse_int, parse_float=_parse_float)

# Python's json messages -> rapidjson's GetParseError_En() text for the same mistake.
_PARSE_ERRORS = (
    ("Expecting value", "Invalid value."),
    ("Expecting property name enclosed in double quotes", "Missing a name for object member."),
    ("Expecting ':' delimiter", "Missing a colon after a name of object member."),
    ("Unterminated string starting at", "Missing a closing quotation mark in string."),
    ("Invalid control character", "Invalid encoding in string."),
    ("Invalid \\uXXXX escape", "Incorrect hex digit after \\u escape in string."),
    ("Invalid \\escape", "Invalid escape character in string."),
)


class Document(dict):
    """A decoded request body; remembers whether the body has a JSON true/false anywhere, so the
    fast numeric path can skip looking for booleans (the only non-number numpy would accept)."""

    may_hold_booleans = True


def decode_json(body: bytes) -> Document:
    """The request document, parsed with TF Serving's rapidjson settings (util/json_tensor.cc ParseJson).

    orjson handles the usual strict, UTF-8, single-document body; anything it refuses is parsed
    again leniently, because TF Serving accepts NaN/Infinity, ignores what follows the document
    (kParseStopWhenDoneFlag) and does not validate UTF-8.
    """
    if not body:
        raise CodecError("JSON Parse error: The document is empty")
    if body.startswith(_UTF8_BOM):
        body = body[len(_UTF8_BOM):]
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        document = _decode_leniently(body)
    if not isinstance(document, dict):
        raise CodecError(f"JSON Value: {_debug_string(document)} Is not object")
    document = Document(document)
    document.may_hold_booleans = b"true" in body or b"false" in body
    return document


def _decode_leniently(body: bytes) -> Any:
    text = body.decode("utf-8", "surrogateescape")  # invalid bytes survive as U+DC80..U+DCFF
    start = len(text) - len(text.lstrip(_JSON_WHITESPACE))
    if start == len(text):
        raise CodecError(f"JSON Parse error: The document is empty. at offset: {len(body)}")
    try:
        document, _ = _LENIENT_DECODER.raw_decode(text, start)
    except RecursionError:  # rapidjson parses iteratively; Python's json recurses
        raise CodecError("JSON Parse error: Arrays and objects nested too deep (limit: about 1000 levels)") from None
    except _NumberTooBig as e:
        offset = _byte_offset(text, text.find(e.literal, start))
        raise CodecError(f"JSON Parse error: Number too big to be stored in double. at offset: {offset}") from None
    except json.JSONDecodeError as e:
        raise CodecError(
            f"JSON Parse error: {_rapidjson_message(e, text)} at offset: {_byte_offset(text, e.pos)}"
        ) from None
    for escape in _ESCAPE.finditer(text):  # Python accepts "\ud800" alone, rapidjson does not
        if escape.group(1):
            offset = _byte_offset(text, escape.start())
            raise CodecError(f"JSON Parse error: The surrogate pair in string is invalid. at offset: {offset}")
    return document


# One backslash escape: a surrogate pair, a lone surrogate (group 1), or anything else.
_ESCAPE = re.compile(
    r"\\(?:u[dD][89abAB][0-9a-fA-F]{2}\\u[dD][c-fC-F][0-9a-fA-F]{2}|(u[dD][89a-fA-F][0-9a-fA-F]{2})|.)", re.S
)


def _byte_offset(text: str, position: int) -> int:
    return len(text[:position].encode("utf-8", "surrogateescape"))


def _rapidjson_message(error: json.JSONDecodeError, text: str) -> str:
    if error.msg.startswith("Expecting ',' delimiter"):
        if _innermost_container(text[: error.pos]) == "{":
            return "Missing a comma or '}' after an object member."
        return "Missing a comma or ']' after an array element."
    for python_message, rapidjson_message in _PARSE_ERRORS:
        if error.msg.startswith(python_message):
            return rapidjson_message
    return error.msg


def _innermost_container(prefix: str) -> str:
    """'{' or '[' for the innermost object/array still open at the end of `prefix`."""
    without_strings = re.sub(r'"(?:[^"\\]|\\.)*"', "", prefix)
    open_containers: list[str] = []
    for bracket in re.findall(r"[\[\]{}]", without_strings):
        if bracket in "[{":
            open_containers.append(bracket)
        elif open_containers:
            open_containers.pop()
    return open_containers[-1] if open_containers else ""


def signature_name(document: dict) -> str:
    """The request's "signature_name", "" when absent (meaning the default signature)."""
    name = document.get("signature_name", "")
    if not isinstance(name, str):
        raise CodecError(
            f"JSON Value: {_debug_string(document)} not formatted correctly. "
            "'signature_name' key must be a string value."
        )
    return name


# ---------------------------------------------------------------------------------------------
# How TF Serving quotes JSON in error messages (JsonValueToDebugString)
# ---------------------------------------------------------------------------------------------

_DEBUG_LIMIT_BYTES = 256


def _debug_string(value: Any) -> str:
    """rapidjson's PrettyWriter output (arrays on one line), cut off once 256 bytes are written.

    Like rapidjson, it stops at the first event past the limit and at NaN/Infinity, which its
    writer refuses (after having written the separator before them).
    """
    pieces: list[str] = []
    size = 0
    for piece in _debug_events(value, 0, ""):
        if size >= _DEBUG_LIMIT_BYTES or piece is None:
            break
        pieces.append(piece)
        size += len(piece.encode("utf-8", "surrogatepass"))
    return "".join(pieces)


def _debug_events(value: Any, level: int, prefix: str) -> Iterator[str | None]:
    """One string per rapidjson writer call; None where the writer fails."""
    if isinstance(value, dict):
        yield prefix + "{"
        for i, (key, item) in enumerate(value.items()):
            yield ("\n" if i == 0 else ",\n") + _indent(level + 1) + _debug_json_string(key)
            yield from _debug_events(item, level + 1, ": ")
        yield ("\n" + _indent(level) if value else "") + "}"
    elif isinstance(value, list):
        yield prefix + "["
        for i, item in enumerate(value):
            yield from _debug_events(item, level + 1, "" if i == 0 else ", ")
        yield "]"
    elif isinstance(value, float) and not math.isfinite(value):
        yield prefix
        yield None
    else:
        yield prefix + _debug_scalar(value)


def _indent(level: int) -> str:
    return " " * (4 * level)


def _debug_scalar(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return _rapidjson_double(value)
    return _debug_json_string(value)


def _debug_json_string(text: str) -> str:
    return _json_string(text.encode("utf-8", "surrogateescape")).decode("utf-8", "replace")


def _rapidjson_double(value: float) -> str:
    """rapidjson Writer::Double: shortest digits laid out by its dtoa Prettify()."""
    if value == 0:
        return "-0.0" if math.copysign(1.0, value) < 0 else "0.0"
    sign = "-" if value < 0 else ""
    mantissa, _, exponent = repr(abs(value)).partition("e")
    whole, _, fraction = mantissa.partition(".")
    digits = (whole + fraction).lstrip("0")
    k = int(exponent or 0) - len(fraction)  # value == digits * 10**k
    stripped = digits.rstrip("0")
    k += len(digits) - len(stripped)
    digits = stripped
    kk = len(digits) + k  # 10**(kk-1) <= value < 10**kk
    if 0 <= k and kk <= 21:
        return f"{sign}{digits}{'0' * k}.0"
    if 0 < kk <= 21:
        return f"{sign}{digits[:kk]}.{digits[kk:]}"
    if -6 < kk <= 0:
        return f"{sign}0.{'0' * -kk}{digits}"
    if len(digits) == 1:
        return f"{sign}{digits}e{kk - 1}"
    return f"{sign}{digits[0]}.{digits[1:]}e{kk - 1}"


def _json_type(value: Any) -> str:
    """rapidjson's type names, as TF Serving prints them (JsonTypeString)."""
    if value is None:
        return "Null"
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, dict):
        return "Object"
    if isinstance(value, list):
        return "Array"
    if isinstance(value, str):
        return "String"
    return "Number"


# ---------------------------------------------------------------------------------------------
# dtypes
# ---------------------------------------------------------------------------------------------

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
_INT_INPUT_RANGES = {
    np.dtype(np.int8): (-(2**31), 2**31 - 1),
    np.dtype(np.int16): (-(2**31), 2**31 - 1),
    np.dtype(np.int32): (-(2**31), 2**31 - 1),
    np.dtype(np.uint8): (-(2**31), 2**31 - 1),
    np.dtype(np.int64): (_INT64_MIN, 2**63 - 1),
    np.dtype(np.uint32): (0, 2**32 - 1),
    np.dtype(np.uint64): (0, _UINT64_MAX),
}
_FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
_INT_OUTPUT_DTYPES = tuple(_INT_INPUT_RANGES)  # AddSingleValueAndAdvance writes exactly these
_STRING = np.dtype(object)


def _is_string(dtype: np.dtype) -> bool:
    return dtype.kind in "OSU"


def _dtype_name(dtype: np.dtype) -> str:
    return "string" if _is_string(dtype) else _DTYPE_NAMES.get(dtype, str(dtype))


def _input_dtype(spec: TensorSpecLike) -> np.dtype:
    """numpy dtype of a tf.DType or numpy dtype-like; DT_STRING inputs become object (bytes) arrays."""
    dtype = np.dtype(getattr(spec.dtype, "as_numpy_dtype", spec.dtype))
    return _STRING if _is_string(dtype) else dtype


# ---------------------------------------------------------------------------------------------
# Predict requests: JSON -> tensors
# ---------------------------------------------------------------------------------------------


def parse_predict_request(
    document: dict, signature_inputs: Mapping[str, TensorSpecLike]
) -> tuple[dict[str, np.ndarray], str]:
    """Input tensors of a predict request, and its format (ROW_FORMAT or COLUMNAR_FORMAT).

    Follows FillPredictRequestFromJson: exactly one of "instances" (row format: one entry per
    batch item, objects keyed by input name unless the signature has a single input) and "inputs"
    (columnar: one value per input, or an object keyed by input name; unknown keys are ignored).
    The format is returned because the response must use the same one.
    """
    name = signature_name(document)
    if not signature_inputs:
        raise CodecError(f"Failed to get input map for signature: {name or 'DEFAULT'}")
    dtypes = {key: _input_dtype(spec) for key, spec in sorted(signature_inputs.items())}
    has_instances, has_inputs = "instances" in document, "inputs" in document
    if has_instances and has_inputs:
        raise CodecError(
            f"JSON Value: {_debug_string(document)} Not formatted correctly expecting only one of "
            "'inputs' or 'instances' keys to exist "
        )
    if has_instances:
        instances = document["instances"]
        if not isinstance(instances, list):
            raise CodecError(f"JSON Value: {_debug_string(document)} Expecting 'instances' to be an list/array")
        if not instances:
            raise CodecError(f"JSON Value: {_debug_string(document)} No values in 'instances' array")
        return _tensors_from_instances(instances, dtypes, _booleans(document)), ROW_FORMAT
    if has_inputs:
        return _tensors_from_inputs(document["inputs"], dtypes, _booleans(document)), COLUMNAR_FORMAT
    raise CodecError("Missing 'inputs' or 'instances' key")


def _booleans(document: dict) -> bool:
    return getattr(document, "may_hold_booleans", True)


def _is_b64(value: Any) -> bool:
    """{"b64": "<base64>"}: the only way to send binary strings (IsValBase64Object)."""
    return isinstance(value, dict) and len(value) == 1 and isinstance(value.get("b64"), str)


def _is_named(value: Any) -> bool:
    return isinstance(value, dict) and not _is_b64(value)


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
            raise CodecError(f"Expecting shape {_shape_string(self.shape)} but got: {_shape_string(shape)}")
        self.values.extend(values)

    def tensor(self, batch: int) -> np.ndarray:
        return _to_array(self.values, [batch, *self.shape], self.dtype)


def _shape_string(shape: list[int]) -> str:
    return "[" + ",".join(map(str, shape)) + "]"


def _plain_instances_exactly(instances: list, name: str, dtype: np.dtype) -> dict[str, np.ndarray]:
    rows = _Rows(dtype)
    for i, item in enumerate(instances):
        if _is_named(item):
            raise CodecError(f"Expecting value/list but got object at item {i} of input list")
        try:
            rows.add(item)
        except CodecError as e:
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
            except CodecError as e:
                raise CodecError(
                    f"Failed to process element: {i} key: {key} of 'instances' list. Error: {e.status_string()}"
                ) from None
        if item.keys() != rows.keys():
            raise CodecError(
                f"Failed to process element: {i} of 'instances' list. JSON object: {_debug_string(item)} "
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
    if dtype not in _FLOAT_DTYPES and dtype not in _INT_INPUT_RANGES:
        return None
    if booleans:
        try:
            if b"true" in orjson.dumps(value) or b"false" in orjson.dumps(value):
                return None
        except orjson.JSONEncodeError:
            return None
    try:
        array = np.array(value)
    except (ValueError, OverflowError):
        return None  # ragged
    if array.dtype.kind not in "fiu" or array.dtype == np.bool_:
        return None  # strings, null, objects, integers beyond 64 bits
    if dtype in _FLOAT_DTYPES:
        with np.errstate(over="ignore"):  # like a C cast: too large becomes +-inf
            return array.astype(dtype)
    if array.dtype.kind == "f" and array.size:
        return None  # a JSON double is never an integer for rapidjson (empty lists are float64)
    low, high = _INT_INPUT_RANGES[dtype]
    if array.size and (array.min() < low or array.max() > high):
        return None
    return array.astype(dtype)


_MAX_DIMS = 254  # TensorShape::MaxDimensions(); TF Serving fails later on deeper lists


def _dense_shape(value: Any) -> list[int]:
    """Shape read along first elements, as GetDenseTensorShape; the walk then checks the rest."""
    shape = []
    while isinstance(value, list):
        shape.append(len(value))
        if not value:
            break
        value = value[0]
    if len(shape) > _MAX_DIMS:
        raise CodecError(f"Lists nested {len(shape)} deep exceed the {_MAX_DIMS} dimensions a tensor can have")
    return shape


def _leaf_values(value: Any, shape: list[int], dtype: np.dtype) -> list:
    """All leaves of `value` converted to `dtype`, with FillTensorProto's checks and messages."""
    values: list = []
    rank = len(shape)

    def walk(item: Any, level: int) -> None:
        if not isinstance(item, list):
            if level != rank:
                raise CodecError(
                    f"JSON Value: {_debug_string(item)} found at incorrect level: {level + 1} "
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
            walk(element, level + 1)

    walk(value, 0)
    return values


def _leaf_value(value: Any, dtype: np.dtype) -> Any:
    """One JSON scalar as a value of `dtype` (AddValueToTensor, plus base64 objects for strings)."""
    if isinstance(value, dict):
        if dtype == _STRING:
            return _decode_b64_object(value)
        raise _type_error(value, dtype)
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if dtype in _FLOAT_DTYPES:
        if not is_number:
            raise _type_error(value, dtype)
        return float(value)
    if dtype in _INT_INPUT_RANGES:
        low, high = _INT_INPUT_RANGES[dtype]
        if not (is_number and isinstance(value, int) and low <= value <= high):
            raise _type_error(value, dtype)
        return value
    if dtype == np.bool_:
        if not isinstance(value, bool):
            raise _type_error(value, dtype)
        return value
    if dtype == _STRING:
        if not isinstance(value, str):
            raise _type_error(value, dtype)
        return _utf8(value)
    raise UnsupportedConversion(f"Conversion of JSON Value: {_debug_string(value)} to type: {_dtype_name(dtype)}")


def _type_error(value: Any, dtype: np.dtype) -> CodecError:
    return CodecError(
        f"JSON Value: {_debug_string(value)} Type: {_json_type(value)} "
        f"is not of expected type: {_dtype_name(dtype)}"
    )


def _to_array(values: list, shape: list[int], dtype: np.dtype) -> np.ndarray:
    if dtype == _STRING:
        array = np.empty(len(values), dtype=object)
        array[:] = values
        return array.reshape(shape)
    if dtype in _FLOAT_DTYPES:
        with np.errstate(over="ignore"):
            return np.array(values, dtype=np.float64).astype(dtype).reshape(shape)
    if dtype == np.bool_:
        return np.array(values, dtype=np.bool_).reshape(shape)
    wide = np.uint64 if dtype == np.uint64 else np.int64
    return np.array(values, dtype=wide).astype(dtype).reshape(shape)


def _utf8(text: str) -> bytes:
    """A JSON string's bytes: invalid UTF-8 in the body is passed through, as rapidjson does."""
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # an escaped lone surrogate such as "\ud800"
        raise CodecError("JSON Parse error: The surrogate pair in string is invalid.") from None


_B64_BODY = re.compile(r"([A-Za-z0-9+/]*)([=.]*)")
_B64_SPACE = re.compile(r"[ \t\n\v\f\r]")


def _decode_b64_object(value: Any) -> bytes:
    """JsonDecodeBase64Object, decoding like absl::Base64Unescape."""
    if not _is_b64(value):
        raise CodecError(f"JSON Value: {_debug_string(value)} not formatted correctly for base64 data")
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


# ---------------------------------------------------------------------------------------------
# Classify / regress requests: JSON -> tf.Example
# ---------------------------------------------------------------------------------------------


def parse_examples_request(document: dict) -> tuple[list[bytes], str]:
    """(serialized tf.Examples, signature name) of a classify or regress request.

    Follows FillClassifyRegressRequestFromJson. The optional "context" is merged into every
    example the way TF Serving feeds ExampleListWithContext to the model: its serialized bytes
    are prepended, so an example's own feature wins over a context feature of the same name.
    """
    name = signature_name(document)
    context = b""
    if "context" in document:
        context = _example(document["context"]).SerializeToString(deterministic=True)
    if "examples" not in document:
        raise CodecError(
            f"JSON Value: {_debug_string(document)} When method is classify, key 'examples' is expected "
            "and was not found"
        )
    examples = document["examples"]
    if not isinstance(examples, list):
        raise CodecError(f"JSON Value: {_debug_string(document)} Expecting 'examples' value to be an list/array")
    if not examples:
        raise CodecError(f"JSON Value: {_debug_string(document)} 'examples' value is an empty array")
    serialized = [context + _example(e).SerializeToString(deterministic=True) for e in examples]
    return serialized, name


def _example(value: Any) -> Any:
    """MakeExampleFromJsonObject: each key is a feature, its value one element or a list of them."""
    from tensorflow.core.example import example_pb2  # importing TensorFlow takes seconds: only here

    if not isinstance(value, dict):
        raise CodecError(f"Example must be JSON object but got JSON {_json_type(value)}")
    example = example_pb2.Example()
    for name, content in value.items():
        kind, values = _feature_values(name, content if isinstance(content, list) else [content])
        feature = example.features.feature[name]  # an empty list still adds an (empty) feature
        if kind is not None:
            getattr(feature, f"{kind}_list").value.extend(values)
    return example


def _feature_values(name: str, items: list) -> tuple[str | None, list]:
    """The feature kind ("bytes", "float", "int64") and values; AddValueToFeature's rules."""
    kind: str | None = None
    values: list = []
    for item in items:
        if item is None or isinstance(item, list) or (isinstance(item, dict) and not _is_b64(item)):
            raise CodecError(f"Feature: {name} has element with unexpected JSON type: {_json_type(item)}")
        if isinstance(item, (str, dict)):
            item_kind = "bytes"
        elif isinstance(item, float):
            item_kind = "float"
        else:
            item_kind = "int64"  # integers, and booleans as 1/0
        if kind is not None and item_kind != kind:
            raise CodecError(f"Unexpected element type in feature: {name} expecting type: {kind}")
        kind = item_kind
        if isinstance(item, dict):
            values.append(_decode_b64_object(item))
        elif isinstance(item, str):
            values.append(_utf8(item))
        elif isinstance(item, int) and item > 2**63 - 1:
            raise CodecError(f"Feature: {name} has uint64_t element. Only int64_t is supported.")
        else:
            values.append(int(item) if isinstance(item, bool) else item)
    return kind, values


# ---------------------------------------------------------------------------------------------
# Responses: tensors -> JSON
# ---------------------------------------------------------------------------------------------


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
        if _is_string(array.dtype):
            items = _nested(_tokens(name, array, 1 + array.ndim), batch, array.shape[1:], 2, pretty=False)
            return b'{\n    "predictions": [' + b", ".join(items) + b"\n    ]\n}"
        text = _numbers_text(array).replace(b",", b", ")  # the whole array, arrays on one line
        return b'{\n    "predictions": ' + text[:-1] + b"\n    ]\n}"
    per_output = {  # levels: document, "predictions" array, item object
        _json_string(name.encode()): _nested(_tokens(name, a, 2 + a.ndim), batch, a.shape[1:], 3, pretty=False)
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
        b"\n        " + _json_string(name.encode()) + b": "
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
            inner = b"\n" + _indent(level + axis + 1).encode()
            start, separator, end = b"[" + inner, b"," + inner, b"\n" + _indent(level + axis).encode() + b"]"
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
    if _is_string(flat.dtype):
        return _string_tokens(flat, name.endswith("_bytes"), level)
    return _numbers_text(flat)[1:-1].split(b",") if flat.size else []


def _numbers_text(array: np.ndarray) -> bytes:
    """A numeric or bool array (rank >= 1) as compact JSON, "[[1.0,2.5],[3.0,4.0]]", in TF's formats.

    orjson writes the array; for floats it is given the decimal value TF Serving prints where
    orjson's text is the same, and NaN (written null) where it is not, replaced afterwards.
    """
    array = np.ascontiguousarray(array)
    dtype = array.dtype
    if dtype == np.float32:
        return _float32_text(array)
    if dtype == np.float64:
        tokens = [_float64_token(v) for v in array.reshape(-1).tolist()]
        return _splice(orjson.dumps(np.full(array.shape, np.nan), option=orjson.OPT_SERIALIZE_NUMPY), tokens)
    if dtype in _INT_OUTPUT_DTYPES or dtype == np.bool_:
        return orjson.dumps(array, option=orjson.OPT_SERIALIZE_NUMPY)
    if array.size:
        raise CodecError(f"Failed to write JSON value for tensor type: {_dtype_name(dtype)}")
    return orjson.dumps(np.zeros(array.shape), option=orjson.OPT_SERIALIZE_NUMPY)  # nested empty arrays


def _splice(text: bytes, tokens: list[bytes]) -> bytes:
    """Replace the nulls of orjson's `text`, in order, by `tokens`."""
    pieces = text.split(b"null")
    merged = [b""] * (2 * len(pieces) - 1)
    merged[0::2], merged[1::2] = pieces, tokens
    return b"".join(merged)


def _string_tokens(flat: np.ndarray, as_bytes: bool, level: int) -> list[bytes]:
    tokens = []
    for item in flat.tolist():
        data = item.encode() if isinstance(item, str) else bytes(item)
        if not as_bytes and _is_utf8(data):
            tokens.append(_json_string(data))
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
        b"{\n" + _indent(level + 1).encode() + b'"b64": "' + base64.b64encode(data) + b'"\n'
        + _indent(level).encode() + b"}"
    )


_JSON_ESCAPES = {
    bytes([c]): {0x08: b"\\b", 0x09: b"\\t", 0x0A: b"\\n", 0x0C: b"\\f", 0x0D: b"\\r"}.get(c, b"\\u%04X" % c)
    for c in range(0x20)
} | {b'"': b'\\"', b"\\": b"\\\\"}
_NEEDS_ESCAPE = re.compile(rb'[\x00-\x1f"\\]')


def _json_string(data: bytes) -> bytes:
    """A JSON string as rapidjson's Writer escapes it: only quotes, backslashes and controls."""
    return b'"' + _NEEDS_ESCAPE.sub(lambda m: _JSON_ESCAPES[m.group()], data) + b'"'


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
        labels = [_json_string(_label_bytes(c)) for c in np.asarray(classes).reshape(-1).tolist()]
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
    return b'{\n    "error": ' + _json_string(message.encode("utf-8", "replace")) + b"\n}"


# ---------------------------------------------------------------------------------------------
# Float formatting (WriteDecimal)
# ---------------------------------------------------------------------------------------------
#
# TF Serving writes a float with absl::StrCat (printf "%g": 6 significant digits) when that text
# parses back to the same value, else with "%.9g" (float) / "%.17g" (double), and appends ".0"
# when the text has neither "." nor "e". `_float32_text` computes this with array arithmetic;
# values it cannot decide with certainty (a decimal digit or the round trip too close to call)
# go through the exact per-value path, `_float32_token`.


def _float64_token(value: float) -> bytes:
    """Exact: Python's float() rounds correctly, like absl::SimpleAtod."""
    if not math.isfinite(value):
        return _non_finite_token(value)
    text = "%.6g" % value
    if float(text) != value:
        text = "%.17g" % value
    return _with_point(text)


def _float32_token(value: float) -> bytes:
    """Exact but slow: `value` is a float32 as a Python float."""
    if not math.isfinite(value):
        return _non_finite_token(value)
    text = "%.6g" % value
    if not _parses_to_float32(text, value):
        text = "%.9g" % value
    return _with_point(text)


def _non_finite_token(value: float) -> bytes:
    if math.isnan(value):
        return b"NaN"
    return b"Infinity" if value > 0 else b"-Infinity"


def _with_point(text: str) -> bytes:
    """TF Serving marks whole numbers as decimals: "3" -> "3.0", but "9e+06" stays."""
    if "." not in text and "e" not in text:
        text += ".0"
    return text.encode()


def _parses_to_float32(text: str, value: float) -> bool:
    """Whether decimal `text` rounds to float32 `value` (correctly, ties to even, like absl::SimpleAtof)."""
    decimal, magnitude = abs(Fraction(text)), abs(Fraction(value))
    single = np.float32(abs(value))
    below = Fraction(float(np.nextafter(single, np.float32(0))))
    with np.errstate(over="ignore"):
        above = np.nextafter(single, np.float32(np.inf))
    above = 2 * magnitude - below if np.isinf(above) else Fraction(float(above))
    low, high = (magnitude + below) / 2, (magnitude + above) / 2
    if low < decimal < high:
        return True
    return decimal in (low, high) and int(single.view(np.uint32)) % 2 == 0


_POWER_RANGE = 60  # float32 values need 10**k for |k| <= 8 + 45


def _power_tables() -> tuple[np.ndarray, np.ndarray]:
    """(10**k or 1, 10**-k or 1) for k in +-_POWER_RANGE: scaling multiplies or divides, never both."""
    exponents = range(-_POWER_RANGE, _POWER_RANGE + 1)
    multiply = np.array([float(f"1e{k}") if k > 0 else 1.0 for k in exponents])
    divide = np.array([float(f"1e{-k}") if k < 0 else 1.0 for k in exponents])
    return multiply, divide


_MULTIPLY, _DIVIDE = _power_tables()
_EXPONENTS = np.array([b"e%+03d" % x for x in range(-45, 39)])  # float32: 1e-45 .. 3.4e+38


def _scale(magnitudes: np.ndarray, exponents: np.ndarray) -> np.ndarray:
    """magnitudes * 10**exponents, within 2 ulps (1/2 ulp when 10**|exponent| is exact)."""
    index = exponents + _POWER_RANGE
    return magnitudes * _MULTIPLY[index] / _DIVIDE[index]


def _float32_text(values: np.ndarray) -> bytes:
    """`_numbers_text` for float32: numpy and orjson do the work for almost every value.

    `_decimal_digits` picks each value's digits and decimal exponent. Values "%g" writes without
    exponent (1e-4 <= |x| < 1e6, or < 1e9 when 9 digits are needed) are exactly what orjson
    prints for the double nearest those digits; the others get "d.ddde±XX" built from digit
    characters.
    """
    single = values.reshape(-1)
    sure, digits, exp10, plain = _decimal_digits(single)
    with np.errstate(invalid="ignore"):
        decimal = np.copysign(digits / _DIVIDE[_POWER_RANGE + exp10 - 8], single)  # exact 10**(8-exp10)
    decimal = np.where(plain, decimal, np.nan).reshape(values.shape)  # NaN is written as null
    others = np.flatnonzero(~plain)
    tokens = np.zeros(others.size, "S16")
    scientific = sure[others]
    rows = others[scientific]
    tokens[scientific] = _scientific_tokens(digits[rows], exp10[rows], np.signbit(single[rows]))
    value = single[others]
    negative = np.signbit(value)
    tokens[(value == 0) & ~negative] = b"0.0"
    tokens[(value == 0) & negative] = b"-0.0"
    tokens[np.isnan(value)] = b"NaN"
    tokens[value == np.inf] = b"Infinity"
    tokens[value == -np.inf] = b"-Infinity"
    other_tokens = tokens.tolist()
    for i in np.flatnonzero(~scientific & np.isfinite(value) & (value != 0)).tolist():
        other_tokens[i] = _float32_token(float(value[i]))
    return _splice(orjson.dumps(decimal, option=orjson.OPT_SERIALIZE_NUMPY), other_tokens)


def _scientific_tokens(digits: np.ndarray, exp10: np.ndarray, negative: np.ndarray) -> np.ndarray:
    """"d.ddde±XX" ("de±XX" for one digit) from 9-digit integers and decimal exponents."""
    if not digits.size:
        return np.zeros(0, "S16")
    chars = np.frombuffer(orjson.dumps(digits, option=orjson.OPT_SERIALIZE_NUMPY), np.uint8)
    chars = chars[1:].reshape(-1, 10)[:, :9]  # "[123456789,234567890,...]": 9 digits and a comma each
    mantissa = np.zeros((digits.size, 10), np.uint8)  # digit, point, 8 digits
    mantissa[:, 0] = chars[:, 0]
    trailing = np.ones(digits.size, bool)
    for column in range(8, 0, -1):  # blank trailing zeros; the point goes if no digit follows it
        trailing &= chars[:, column] == ord("0")
        mantissa[:, column + 1] = np.where(trailing, 0, chars[:, column])
    mantissa[:, 1] = np.where(trailing, 0, ord("."))
    text = np.strings.add(mantissa.view("S10").reshape(-1), _EXPONENTS[exp10 + 45]).astype("S16")
    text[negative] = np.strings.add(b"-", text[negative])
    return text


_CHUNK = 8192  # values per pass: the temporaries stay in cache (and under malloc's mmap threshold)


def _decimal_digits(single: np.ndarray) -> tuple[np.ndarray, ...]:
    """`_chunk_digits` over the array a cache-sized chunk at a time: measured twice as fast as all at once."""
    chunks = [_chunk_digits(single[i:i + _CHUNK]) for i in range(0, max(single.size, 1), _CHUNK)]
    return tuple(np.concatenate(parts) for parts in zip(*chunks))


def _chunk_digits(single: np.ndarray) -> tuple[np.ndarray, ...]:
    """Per float32: (sure, 9-digit integer, decimal exponent of its first digit, plain).

    The digits are the 6-digit rounding padded with zeros when it parses back to the float,
    else the 9-digit rounding. `sure` is False for zero/NaN/inf and for values this double
    arithmetic cannot decide: within its error of a rounding tie or of the float's rounding
    interval. `plain` marks values "%g" writes without an exponent.
    """
    with np.errstate(all="ignore"):  # zero, NaN and inf are computed on, then masked out
        x = single.astype(np.float64)
        magnitude = np.abs(x)
        exponent = np.floor(np.log10(magnitude))
        regular = np.isfinite(exponent)
        magnitude = np.where(regular, magnitude, 1.0)
        exponent = np.where(regular, exponent, 0.0).astype(np.int64)
        nine = _scale(magnitude, 8 - exponent)  # log10 can be one off at powers of ten
        exponent += (nine >= 1e9).astype(np.int64) - (nine < 1e8)
        nine, six = _scale(magnitude, 8 - exponent), _scale(magnitude, 5 - exponent)
        digits9, digits6 = np.rint(nine), np.rint(six)
        unsure = (np.abs(nine - np.floor(nine) - 0.5) < 5e-7) | (np.abs(six - np.floor(six) - 0.5) < 1e-9)
        exponent9 = exponent + (digits9 == 1e9)
        digits9 = np.where(digits9 == 1e9, 1e8, digits9)
        exponent6 = exponent + (digits6 == 1e6)
        digits6 = np.where(digits6 == 1e6, 1e5, digits6)
        # The 6 digits parse back to the float iff they fall inside its rounding interval,
        # whose bounds (halfway to the neighbouring floats) are exact doubles.
        decimal6 = _scale(digits6, exponent6 - 5)
        below = np.nextafter(np.abs(single), np.float32(0)).astype(np.float64)
        above = np.nextafter(np.abs(single), np.float32(np.inf)).astype(np.float64)
        above = np.where(np.isinf(above), 2 * magnitude - below, above)  # past 3.4e38: the gap below
        low, high = (magnitude + below) / 2, (magnitude + above) / 2
        tolerance = decimal6 * 1e-15
        unsure |= (np.abs(decimal6 - low) <= tolerance) | (np.abs(decimal6 - high) <= tolerance)
        six_digits = (low < decimal6) & (decimal6 < high)
    sure = regular & ~unsure
    exp10 = np.where(six_digits, exponent6, exponent9)
    digits = np.where(sure, np.where(six_digits, digits6 * 1000, digits9), 1e8).astype(np.int64)
    plain = sure & (exp10 >= -4) & (exp10 < np.where(six_digits, 6, 9))
    return sure, digits, exp10, plain
