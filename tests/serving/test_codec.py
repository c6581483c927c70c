"""serving.codec against TF Serving: its json_tensor_test.cc and http_rest_api_handler_test.cc cases.

Each table row is one case, so adding a case is adding a row. Expected response bytes and float
texts were produced by rapidjson's PrettyWriter and absl (StrCat/SimpleAtof/StrFormat) driven
with json_tensor.cc's call sequence; expected error texts follow json_tensor.cc's messages.
"""
import json
import math
import random
import sys
from types import SimpleNamespace

import numpy as np
import tensorflow as tf
import pytest

import fuzzing
from serving import codec
from serving.codec import COLUMNAR_FORMAT, ROW_FORMAT, CodecError, deep, floats, request, response
from serving.codec.deep import KEPT_DEPTH, LEVEL_COST_BYTES, DeepValue
from serving.errors import Unimplemented

F32, F64, I32, I64, U32, STR, BOOL = np.float32, np.float64, np.int32, np.int64, np.uint32, object, np.bool_


def specs(**dtypes):
    """A signature's inputs: only the dtype is read."""
    return {name: SimpleNamespace(dtype=np.dtype(dtype)) for name, dtype in dtypes.items()}


def tensor(values, dtype, shape=None):
    if dtype is STR:
        array = np.empty(len(values), dtype=object)
        array[:] = values
    else:
        array = np.array(values, dtype=dtype)
    return array.reshape(shape if shape is not None else array.shape)


def assert_same_tensor(got: np.ndarray, want: np.ndarray):
    assert got.dtype == want.dtype
    assert got.shape == want.shape
    np.testing.assert_array_equal(got, want)
    if got.dtype.kind == "f":  # -0.0 == 0.0, but TF Serving keeps the sign
        np.testing.assert_array_equal(np.signbit(got), np.signbit(want))


def parse(body: bytes, inputs):
    return codec.parse_predict_request(codec.decode_json(body), inputs)


# ---------------------------------------------------------------------------------------------
# Predict requests
# ---------------------------------------------------------------------------------------------

NESTED_500K = b"[" * 500000 + b"]" * 500000

PREDICT_REQUESTS = [
    # (case, signature inputs, body, format, expected tensors)
    ("SingleUnnamedTensor", specs(default=I32), b'{"instances": [[1,2],[3,4],[5,6]]}', ROW_FORMAT,
     {"default": tensor([1, 2, 3, 4, 5, 6], I32, [3, 2])}),
    ("MixedInputForFloatTensor", specs(default=F32), b'{"instances": [1, 2.0, 3, 4, 5.003, 0.007, 0.0]}', ROW_FORMAT,
     {"default": tensor([1, 2, 3, 4, 5.003, 0.007, 0], F32)}),
    ("MixedInputForDoubleTensor", specs(default=F64), b'{"instances": [1.0, 2, 3, 4, 0.662, 0, 0.0]}', ROW_FORMAT,
     {"default": tensor([1, 2, 3, 4, 0.662, 0, 0], F64)}),
    ("FloatTensorWithPrecisionLoss", specs(default=F32), b'{"instances": [1435774380]}', ROW_FORMAT,
     {"default": tensor([1435774336], F32)}),
    ("FloatTensorWithPrecisionLoss decimal", specs(default=F32), b'{"instances": [1435774380.0]}', ROW_FORMAT,
     {"default": tensor([1435774336], F32)}),
    ("FloatTensorThatExceedsMaxReturnsInf", specs(default=F32), b'{ "instances": [1.79769e+308] }', ROW_FORMAT,
     {"default": tensor([np.inf], F32)}),
    ("FloatTensorThatExceedsMaxReturnsInf negative", specs(default=F32), b'{ "instances": [-1.79769e+308] }',
     ROW_FORMAT, {"default": tensor([-np.inf], F32)}),
    ("FloatTensorThatExceedsMinReturnsZero", specs(default=F32), b'{ "instances": [2.22507e-308] }', ROW_FORMAT,
     {"default": tensor([0.0], F32)}),
    ("FloatTensorThatExceedsMinReturnsZero negative", specs(default=F32), b'{ "instances": [-2.22507e-308] }',
     ROW_FORMAT, {"default": tensor([-0.0], F32)}),
    ("SingleUnnamedTensorWithSignature", specs(default=I32),
     b'{"signature_name": "predict_images", "instances": [[1,2]]}', ROW_FORMAT,
     {"default": tensor([1, 2], I32, [1, 2])}),
    ("TensorFromNonNullTerminatedBuffer: bytes after the document are ignored", specs(default=I32),
     b'{"instances": [[1,2],[3,4],[5,6]]}X', ROW_FORMAT, {"default": tensor([1, 2, 3, 4, 5, 6], I32, [3, 2])}),
    ("DeeplyNestedWellFormed", specs(default=I32), b'{"instances":[1], "nested":' + NESTED_500K + b"}", ROW_FORMAT,
     {"default": tensor([1], I32)}),
    ("SingleUnnamedTensorBase64Scalars", specs(default=STR),
     b'{"instances": [ { "b64" : "aGVsbG8=" }, { "b64": "d29ybGQ=" } ]}', ROW_FORMAT,
     {"default": tensor([b"hello", b"world"], STR)}),
    ("SingleUnnamedTensorBase64Lists", specs(default=STR),
     b'{"instances": [ [{ "b64" : "aGVsbG8=" }], [{ "b64": "d29ybGQ=" }] ]}', ROW_FORMAT,
     {"default": tensor([b"hello", b"world"], STR, [2, 1])}),
    ("SingleNamedTensorBase64", specs(default=STR),
     b'{"instances": [{"default": [ [{ "b64" : "aGVsbG8=" }], [{ "b64": "d29ybGQ=" }] ]}]}', ROW_FORMAT,
     {"default": tensor([b"hello", b"world"], STR, [1, 2, 1])}),
    ("MultipleNamedTensor", specs(int_tensor=I32, str_tensor=STR, float_tensor=F32, dbl_tensor=F64),
     b'''{"instances": [
          {"int_tensor": [[1,2],[3,4],[5,6]], "str_tensor": ["foo", "bar"], "float_tensor": [1.0, NaN],
           "dbl_tensor": [NaN]},
          {"int_tensor": [[7,8],[9,0],[1,2]], "str_tensor": ["baz", "bat"], "float_tensor": [2.0, Infinity],
           "dbl_tensor": [2.0]}]}''', ROW_FORMAT,
     {"int_tensor": tensor([1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1, 2], I32, [2, 3, 2]),
      "str_tensor": tensor([b"foo", b"bar", b"baz", b"bat"], STR, [2, 2]),
      "float_tensor": tensor([1.0, np.nan, 2.0, np.inf], F32, [2, 2]),
      "dbl_tensor": tensor([np.nan, 2.0], F64, [2, 1])}),
    ("SingleUnnamedTensorColumnarFormat", specs(int_tensor=I32), b'{"inputs": {"int_tensor": [[[1,2],[3,4],[5,6]]]}}',
     COLUMNAR_FORMAT, {"int_tensor": tensor([1, 2, 3, 4, 5, 6], I32, [1, 3, 2])}),
    ("SingleUnnamedTensorColumnarFormat without name", specs(int_tensor=I32), b'{"inputs": [[[1,2],[3,4],[5,6]]]}',
     COLUMNAR_FORMAT, {"int_tensor": tensor([1, 2, 3, 4, 5, 6], I32, [1, 3, 2])}),
    ("MultipleNamedTensorColumnarFormat", specs(int_tensor=I32, str_tensor=STR, bin_tensor=STR),
     b'{"inputs": {"int_tensor": [[[1,2],[3,4],[5,6]]], "str_tensor": ["foo", "bar"],'
     b' "bin_tensor": { "b64" : "aGVsbG8=" }}}', COLUMNAR_FORMAT,
     {"int_tensor": tensor([1, 2, 3, 4, 5, 6], I32, [1, 3, 2]), "str_tensor": tensor([b"foo", b"bar"], STR),
      "bin_tensor": tensor([b"hello"], STR, [])}),
    # http_rest_api_handler_test.cc Predict requests (half_plus_two takes float x)
    ("handler row", specs(x=F32), b'{"instances": [[1.0, 2.0], [3.0, 4.0]]}', ROW_FORMAT,
     {"x": tensor([1, 2, 3, 4], F32, [2, 2])}),
    ("handler columnar", specs(x=F32), b'{"signature_name": "serving_default", "inputs": [3.0, 4.0]}',
     COLUMNAR_FORMAT, {"x": tensor([3, 4], F32)}),
    # FillTensorMapFromInputsMap: keys of "inputs" that are no input are ignored
    ("columnar extra key ignored", specs(a=I32), b'{"inputs": {"a": [1], "unused": "x"}}', COLUMNAR_FORMAT,
     {"a": tensor([1], I32)}),
    ("columnar scalar", specs(a=F32), b'{"inputs": 2.5}', COLUMNAR_FORMAT, {"a": tensor([2.5], F32, [])}),
    ("empty inner lists", specs(a=F32), b'{"instances": [[], []]}', ROW_FORMAT, {"a": tensor([], F32, [2, 0])}),
    ("named instances, scalars", specs(a=I64, b=BOOL), b'{"instances": [{"a": 1, "b": true}, {"b": false, "a": -2}]}',
     ROW_FORMAT, {"a": tensor([1, -2], I64), "b": tensor([True, False], BOOL)}),
    # int8/int16/uint8 go through TensorProto.int_val: a value in int32 range wraps like a C cast
    ("int8 wraps", specs(a=np.int8), b'{"instances": [1, 300, -129]}', ROW_FORMAT,
     {"a": tensor([1, 44, 127], np.int8)}),
    ("uint64 full range", specs(a=np.uint64), b'{"instances": [0, 18446744073709551615]}', ROW_FORMAT,
     {"a": tensor([0, 2**64 - 1], np.uint64)}),
    ("uint32 and strings", specs(a=U32, s=STR), b'{"inputs": {"a": [4294967295], "s": [["x", "\\u00e9"]]}}',
     COLUMNAR_FORMAT, {"a": tensor([2**32 - 1], U32), "s": tensor([b"x", "\u00e9".encode()], STR, [1, 2])}),
    ("NaN and infinities", specs(a=F64), b'{"instances": [NaN, Infinity, -Infinity, 1e308]}', ROW_FORMAT,
     {"a": tensor([np.nan, np.inf, -np.inf, 1e308], F64)}),
    ("base64 like absl: no padding, whitespace, '.' pad", specs(a=STR),
     b'{"instances": [{"b64": "aGVsbG8"}, {"b64": "aGVs bG8="}, {"b64": "aGVsbA.."}]}', ROW_FORMAT,
     {"a": tensor([b"hello", b"hello", b"hell"], STR)}),
    ("invalid UTF-8 passes through as bytes", specs(a=STR), b'{"instances": ["\xff\xfe"]}', ROW_FORMAT,
     {"a": tensor([b"\xff\xfe"], STR)}),
    ("UTF-8 byte order mark skipped", specs(a=I32), b'\xef\xbb\xbf{"instances": [1]}', ROW_FORMAT,
     {"a": tensor([1], I32)}),
]


@pytest.mark.parametrize("case, inputs, body, fmt, expected", PREDICT_REQUESTS, ids=[c[0] for c in PREDICT_REQUESTS])
def test_parse_predict_request(case, inputs, body, fmt, expected):
    tensors, got_fmt = parse(body, inputs)
    assert got_fmt == fmt
    assert tensors.keys() == expected.keys()
    for name, want in expected.items():
        assert_same_tensor(tensors[name], want)


PREDICT_ERRORS = [
    # (case, signature inputs, body, exact message)
    ("empty body", specs(default=I32), b"", "JSON Parse error: The document is empty"),
    ("signature_name not a string", specs(default=I32),
     b'{"signature_name": 5, "instances": [[1,2],[3,4],[5,6,7]]}',
     'JSON Value: {\n    "signature_name": 5,\n    "instances": [[1, 2], [3, 4], [5, 6, 7]]\n} not formatted '
     "correctly. 'signature_name' key must be a string value."),
    ("both instances and inputs", specs(default=I32),
     b'{"instances": [[1,2],[3,4],[5,6,7]], "inputs": [[1,2],[3,4],[5,6,7]]}',
     'JSON Value: {\n    "instances": [[1, 2], [3, 4], [5, 6, 7]],\n    "inputs": [[1, 2], [3, 4], [5, 6, 7]]\n} '
     "Not formatted correctly expecting only one of 'inputs' or 'instances' keys to exist "),
    ("neither instances nor inputs", specs(default=I32), b'{"signature_name": "x"}',
     "Missing 'inputs' or 'instances' key"),
    ("ragged instances: size", specs(default=I32), b'{"instances": [[1,2],[3,4],[5,6,7]]}',
     "Failed to process element: 2 of 'instances' list. Error: INVALID_ARGUMENT: Expecting tensor size: 2 but got: 3"),
    ("ragged instances: shape", specs(default=I32), b'{"instances": [[1,2],[3,4],[[5,6]]]}',
     "Failed to process element: 2 of 'instances' list. Error: INVALID_ARGUMENT: Expecting shape [2] but got: [1,2]"),
    ("scalar then list", specs(default=I32), b'{"instances": [1, [1]]}',
     "Failed to process element: 1 of 'instances' list. Error: INVALID_ARGUMENT: Expecting shape [] but got: [1]"),
    ("string for int", specs(default=I32), b'{"instances": [[1,2],["a", "b"]]}',
     "Failed to process element: 1 of 'instances' list. Error: INVALID_ARGUMENT: "
     'JSON Value: "a" Type: String is not of expected type: int32'),
    ("named: shape differs", specs(int_tensor=I32, str_tensor=STR),
     b'{"instances": [{"int_tensor": [[1,2],[3,4],[5,6]], "str_tensor": ["foo", "bar"]},'
     b' {"int_tensor": [[[7,8],[9,0],[1,2]]], "str_tensor": ["baz", "bat"]}]}',
     "Failed to process element: 1 key: int_tensor of 'instances' list. Error: INVALID_ARGUMENT: "
     "Expecting shape [3,2] but got: [1,3,2]"),
    ("named: size differs", specs(int_tensor=I32, str_tensor=STR),
     b'{"instances": [{"int_tensor": [[1,2],[3,4],[5,6],[7,8]], "str_tensor": ["foo", "bar"]},'
     b' {"int_tensor": [[7,8],[9,0],[1,2]], "str_tensor": ["baz", "bat"]}]}',
     "Failed to process element: 1 key: int_tensor of 'instances' list. Error: INVALID_ARGUMENT: "
     "Expecting tensor size: 8 but got: 6"),
    ("object then list", specs(int_tensor=I32, str_tensor=STR),
     b'{"instances": [{"int_tensor": [[1,2],[3,4],[5,6]], "str_tensor": ["foo", "bar"]}, [1, 20, 30],'
     b' {"int_tensor": [[[7,8],[9,0],[1,2]]], "str_tensor": ["baz", "bat"]}]}',
     "Expecting object but got list at item 1 of input list"),
    ("list then object", specs(str_tensor=STR), b'{"instances": [["baz", "bar"], {"str_tensor": ["baz", "bat"]}]}',
     "Expecting value/list but got object at item 1 of input list"),
    ("handler: not JSON", specs(x=F32), b"instances = [1, 2]", "JSON Parse error: Invalid value. at offset: 0"),
    ("handler: strings for float", specs(x=F32), b'{ "instances": ["x", "y"] }',
     "Failed to process element: 0 of 'instances' list. Error: INVALID_ARGUMENT: "
     'JSON Value: "x" Type: String is not of expected type: float'),
    ("handler: signature_name 100", specs(x=F32), b'{ "signature_name": 100 }',
     'JSON Value: {\n    "signature_name": 100\n} not formatted correctly. '
     "'signature_name' key must be a string value."),
    ("not an object", specs(x=F32), b"[1,2]", "JSON Value: [1, 2] Is not object"),
    ("empty instances", specs(x=F32), b'{"instances": []}',
     "JSON Value: {\n    \"instances\": []\n} No values in 'instances' array"),
    ("instances not a list", specs(x=F32), b'{"instances": 5}',
     "JSON Value: {\n    \"instances\": 5\n} Expecting 'instances' to be an list/array"),
    ("no inputs in signature", {}, b'{"instances": [1]}', "Failed to get input map for signature: DEFAULT"),
    ("plain list, several inputs", specs(a=F32, b=F32), b'{"instances": [1, 2]}',
     "instances is a plain list, but expecting list of objects as multiple input tensors required as per "
     "tensorinfo_map"),
    ("plain inputs, several inputs", specs(a=F32, b=F32), b'{"inputs": [1, 2]}',
     "inputs is a plain value/list, but expecting an object as multiple input tensors required as per "
     "tensorinfo_map"),
    ("columnar: missing input", specs(a=F32, b=F32), b'{"inputs": {"a": [1]}}',
     "Missing named input: b in 'inputs' object."),
    ("instance with unknown key", specs(a=F32, b=F32), b'{"instances": [{"a": 1, "c": 2}]}',
     "Failed to process element: 0 key: c of 'instances' list. Error: INVALID_ARGUMENT: "
     "JSON object: does not have named input: c"),
    ("instance missing a key", specs(a=F32, b=F32), b'{"instances": [{"a": 1}]}',
     "Failed to process element: 0 of 'instances' list. JSON object: {\n    \"a\": 1\n} keys must be equal to: a,b"),
    ("bool for float", specs(x=F32), b'{"inputs": [true]}',
     "JSON Value: true Type: True is not of expected type: float"),
    ("double for int", specs(x=I32), b'{"inputs": [1.5]}',
     "JSON Value: 1.5 Type: Number is not of expected type: int32"),
    ("int32 overflow", specs(x=I32), b'{"inputs": [2147483648]}',
     "JSON Value: 2147483648 Type: Number is not of expected type: int32"),
    ("negative uint32", specs(x=U32), b'{"inputs": [-1]}',
     "JSON Value: -1 Type: Number is not of expected type: uint32"),
    ("null for string", specs(x=STR), b'{"inputs": [null]}',
     "JSON Value: null Type: Null is not of expected type: string"),
    ("1 for bool", specs(x=BOOL), b'{"inputs": [1]}', "JSON Value: 1 Type: Number is not of expected type: bool"),
    ("object for float", specs(x=F32), b'{"inputs": [{"a": 1}]}',
     'JSON Value: {\n    "a": 1\n} Type: Object is not of expected type: float'),
    ("NaN for int: rapidjson cannot print it", specs(x=I32), b'{"inputs": [NaN]}',
     "JSON Value:  Type: Number is not of expected type: int32"),
    ("bad base64 object", specs(x=STR), b'{"inputs": [{"b64": 5}]}',
     'JSON Value: {\n    "b64": 5\n} not formatted correctly for base64 data'),
    ("bad base64 text", specs(x=STR), b'{"inputs": {"b64": "a"}}', "Unable to base64 decode"),
    ("base64 with excess padding", specs(x=STR), b'{"inputs": {"b64": "UT6v="}}', "Unable to base64 decode"),
    ("leaf above the bottom level", specs(x=I32), b'{"inputs": [[1], 2]}',
     "JSON Value: 2 found at incorrect level: 2 in the JSON DOM. Expected at level: 2"),
    ("list below the bottom level", specs(x=I32), b'{"inputs": [1, [2]]}',
     "Encountered list at unexpected level: 1 expected < 1"),
    ("inner list size", specs(x=I32), b'{"inputs": [[1, 2], [3]]}',
     "Encountered list at unexpected size: 1 at level: 1 expected size: 2"),
    ("lone surrogate escape", specs(x=STR), b'{"inputs": ["\\ud800"]}',
     "JSON Parse error: The surrogate pair in string is invalid. at offset: 13"),
    ("DeeplyNestedMalformed", specs(default=I32), b'{"signature_name":' + NESTED_500K + b"}",  # quoted to 256 bytes
     'JSON Value: {\n    "signature_name": ' + "[" * 232 + " not formatted correctly. 'signature_name' key must be a "
     "string value."),
    ("a tensor nested beyond the parser", specs(x=I32), b'{"inputs":' + b"[" * 500000 + b"1" + b"]" * 500000 + b"}",
     "Lists nested 500000 deep exceed the 254 dimensions a tensor can have"),
    ("the same as an instance", specs(x=I32), b'{"instances":[' + NESTED_500K + b"]}",
     "Failed to process element: 0 of 'instances' list. Error: INVALID_ARGUMENT: Lists nested 500000 deep exceed the "
     "254 dimensions a tensor can have"),
    ("the same after the first element: FillTensorProto's walk", specs(x=I32), b'{"inputs":[1, ' + NESTED_500K + b"]}",
     "Encountered list at unexpected level: 1 expected < 1"),
    ("more dimensions than a tensor", specs(x=I32), b'{"inputs":' + b"[" * 300 + b"1" + b"]" * 300 + b"}",
     "Lists nested 300 deep exceed the 254 dimensions a tensor can have"),
]


@pytest.mark.parametrize("case, inputs, body, message", PREDICT_ERRORS, ids=[c[0] for c in PREDICT_ERRORS])
def test_parse_predict_request_errors(case, inputs, body, message):
    with pytest.raises(CodecError) as error:
        parse(body, inputs)
    assert str(error.value) == message
    assert error.value.code.name == "INVALID_ARGUMENT"


def test_unsupported_input_dtype_is_unimplemented():
    with pytest.raises(Unimplemented) as error:
        parse(b'{"inputs": [1.0]}', specs(x=np.float16))
    assert str(error.value) == "Conversion of JSON Value: 1.0 to type: half"
    assert error.value.code.name == "UNIMPLEMENTED" and error.value.http_status == 501


def test_signature_name():
    assert codec.signature_name(codec.decode_json(b'{"instances": [1]}')) == ""
    assert codec.signature_name(codec.decode_json(b'{"signature_name": "classify_x"}')) == "classify_x"


def test_signature_inputs_may_be_tensorflow_specs():
    tf = pytest.importorskip("tensorflow")
    inputs = {"s": tf.TensorSpec([None], tf.string), "x": tf.TensorSpec([None, 2], tf.float32)}
    tensors, _ = parse(b'{"instances": [{"s": "a", "x": [1, 2]}]}', inputs)
    assert_same_tensor(tensors["s"], tensor([b"a"], STR))
    assert_same_tensor(tensors["x"], tensor([[1, 2]], F32))


# The fast path (orjson + one numpy call) must give what the exact element-by-element walk gives.
FAST_PATH_VALUES = [
    (F32, [[1, 2.5], [1e39, -3]]), (F32, [2**64 - 1, -(2**63)]), (F64, [[0.1, 7], [1e-320, 5]]), (F32, 3),
    (I32, [[-(2**31), 2**31 - 1]]), (np.int8, [255, -200]), (np.uint8, [[300]]), (I64, [2**63 - 1, -(2**63)]),
    (np.uint64, [2**64 - 1]), (U32, [[0], [4294967295]]), (np.int16, [[], []]),
]


@pytest.mark.parametrize("dtype, value", FAST_PATH_VALUES)
def test_fast_path_matches_exact_walk(dtype, value):
    dtype = np.dtype(dtype)
    shape = request._dense_shape(value)
    for booleans in (True, False):
        fast = request._fast_tensor(value, dtype, booleans)
        assert fast is not None
        assert_same_tensor(fast, request._to_array(request._leaf_values(value, shape, dtype), shape, dtype))


@pytest.mark.parametrize("body", [b'{"instances": [[1.5, true]]}', b'{"inputs": [false, 2.0]}',
                                  b'{"instances": [{"x": [true]}]}'])
def test_booleans_never_pass_for_numbers_on_the_fast_path(body):
    document = codec.decode_json(body)
    assert document.may_hold_booleans
    with pytest.raises(CodecError, match="is not of expected type: float"):
        codec.parse_predict_request(document, {"x": tf.TensorSpec([None], tf.float32)})


def test_a_body_without_booleans_takes_the_fast_path():
    document = codec.decode_json(b'{"instances": [[1, 2.5], [3, 4]]}')
    assert not document.may_hold_booleans
    inputs, _ = codec.parse_predict_request(document, {"x": tf.TensorSpec([None, 2], tf.float32)})
    assert inputs["x"].dtype == np.float32 and inputs["x"].tolist() == [[1.0, 2.5], [3.0, 4.0]]


# ---------------------------------------------------------------------------------------------
# Request bodies: rapidjson's parse errors and leniency
# ---------------------------------------------------------------------------------------------

DECODE_ERRORS = [
    (b"", "JSON Parse error: The document is empty"),
    (b"   ", "JSON Parse error: The document is empty. at offset: 3"),
    (b"instances = [1, 2]", "JSON Parse error: Invalid value. at offset: 0"),
    (b'{"a": 1 "b": 2}', "JSON Parse error: Missing a comma or '}' after an object member. at offset: 8"),
    (b"{\"a\": [1 2]}", "JSON Parse error: Missing a comma or ']' after an array element. at offset: 9"),
    (b'{"a" 1}', "JSON Parse error: Missing a colon after a name of object member. at offset: 5"),
    (b'{"a": 1,}', "JSON Parse error: Missing a name for object member. at offset: 8"),
    (b'{"a": [1, 2,]}', "JSON Parse error: Invalid value. at offset: 12"),
    (b'{"a": "x\\qy"}', "JSON Parse error: Invalid escape character in string. at offset: 8"),
    (b'{"a": "a\x01b"}', "JSON Parse error: Invalid encoding in string. at offset: 8"),
    (b'{"a": 1e400}', "JSON Parse error: Number too big to be stored in double. at offset: 6"),
    (b'"text"', 'JSON Value: "text" Is not object'),
]


@pytest.mark.parametrize("body, message", DECODE_ERRORS)
def test_decode_json_errors(body, message):
    with pytest.raises(CodecError) as error:
        codec.decode_json(body)
    assert str(error.value) == message


# Bodies nested past the recursive parsers (rapidjson parses iteratively): each of the errors above, inside 5,000
# arrays (the iterative loop reaches it) or 2,060 (the scanner, given the last levels, does), fails at the same place
DEEP_DECODE_ERRORS = [(body, message) for body, message in DECODE_ERRORS if body.startswith(b"{")] + [
    (b'{"a": [1, 2}', "JSON Parse error: Missing a comma or ']' after an array element. at offset: 11"),
    (b'{"a": {"b": 1]}', "JSON Parse error: Missing a comma or '}' after an object member. at offset: 13"),
    (b'{"a": [}', "JSON Parse error: Invalid value. at offset: 7"),
    (b"{]", "JSON Parse error: Missing a name for object member. at offset: 1"),
    (b'{"a":', "JSON Parse error: Invalid value. at offset: 5"),
    (b'{"a": "\\ud800"}', "JSON Parse error: The surrogate pair in string is invalid. at offset: 7"),
]


@pytest.mark.parametrize("depth", [5000, 2060])
@pytest.mark.parametrize("body, message", DEEP_DECODE_ERRORS)
def test_deep_bodies_fail_where_shallow_ones_do(body, message, depth):
    with pytest.raises(CodecError) as shallow:
        codec.decode_json(body)
    assert str(shallow.value) == message
    with pytest.raises(CodecError) as deep:
        codec.decode_json(b"[" * depth + body + b"]" * depth)
    offset = int(message.rsplit(" ", 1)[1])
    assert str(deep.value) == message.replace(f"offset: {offset}", f"offset: {offset + depth}")


N = 5000
DEEP_STRUCTURE_ERRORS = [  # where only a deep body can go wrong: long runs of brackets, the end of the body
    (b"[" * N + b"]" * (N - 1) + b"}", f"Missing a comma or ']' after an array element. at offset: {2 * N - 1}"),
    (b'{"a":' + b"[" * N + b"]" * N, f"Missing a comma or '}}' after an object member. at offset: {5 + 2 * N}"),
    (b'{"a":' + b"[" * N, f"Invalid value. at offset: {5 + N}"),
    (b'{"a":' + b'{"b":' * N + b"1" + b"}" * N + b"]", f"Missing a comma or '}}' after an object member. at offset: "
                                                       f"{6 + 6 * N}"),
    (b'{"a":' + b'[{"b": 1, "c":' * N + b"1" + b"}]" * N + b"}", None),  # well formed, to the end
    (b'{"a":' + b"[1," * N + b"]" * N + b"}", f"Invalid value. at offset: {5 + 3 * N}"),
    (b'{"a":' + b"[1 " * N, f"Missing a comma or ']' after an array element. at offset: {8}"),
]


@pytest.mark.parametrize("body, message", DEEP_STRUCTURE_ERRORS, ids=range(len(DEEP_STRUCTURE_ERRORS)))
def test_deep_bodies_are_checked_to_the_end(body, message):
    if message is None:
        assert codec.decode_json(body).keys() == {"a"}
        return
    with pytest.raises(CodecError) as error:
        codec.decode_json(body)
    assert str(error.value) == "JSON Parse error: " + message


def test_a_deep_body_is_kept_to_a_depth_and_counted_below():
    """What lies deeper than KEPT_DEPTH is checked, not kept; a DeepValue stands for it, counting the arrays that
    open it along first elements (a tensor's dimensions). The rest parses as it would shallow."""
    body = (b'{"deep": ' + b"[" * 500_000 + b"]" * 500_000 + b', "x": [NaN, 18446744073709551616], "objects": '
            + b'{"a": ' * 1000 + b"1" + b"}" * 1000 + b', "late": [1, [[2]]]} trailing bytes')
    document = codec.decode_json(body)
    assert json.dumps(document["x"]) == "[NaN, 1.8446744073709552e+19]" and document["late"] == [1, [[2]]]
    for key, arrays in (("deep", 500_000 - (KEPT_DEPTH - 1)), ("objects", 0)):
        value = document[key]  # one level down
        for _ in range(KEPT_DEPTH - 1):
            (value,) = value.values() if isinstance(value, dict) else value
        assert value == DeepValue(arrays)


# How each level of a deep chain opens and closes: arrays and objects, first elements and later ones, siblings
CHAIN_LEVELS = [(b"[", b"]"), (b"[1, ", b", 3]"), (b'{"k": ', b"}"), (b'{"s": "x", "k": ', b', "t": false}'),
                (b'[{"a": [2.5, null]}, ', b"]"), (b"[[true], ", b', {"b": [-0.0]}]'), (b"[\n ", b" ]")]


def _cut(value, level=0):
    """A document as the deep path keeps it: containers at KEPT_DEPTH become a DeepValue counting their arrays."""
    if not isinstance(value, (list, dict)):
        return value
    if level == KEPT_DEPTH:
        arrays = 0
        while isinstance(value, list):
            arrays, value = arrays + 1, value[0] if value else None
        return DeepValue(arrays)
    if isinstance(value, dict):
        return {k: _cut(v, level + 1) for k, v in value.items()}
    return [_cut(v, level + 1) for v in value]


def _outcome(body: bytes) -> dict | str:
    try:
        return codec.decode_json(body)
    except CodecError as e:
        return str(e)


def test_mutated_deep_bodies_parse_as_the_recursive_path_does_given_room():
    """Differential: 150 deep bodies (about 1,300 levels of mixed arrays and objects), each edited at random, give
    what the recursive path gives once the recursion limit lets it through: the same document to KEPT_DEPTH, or
    the same error at the same offset."""
    rng = random.Random(0)
    levels = [rng.choice(CHAIN_LEVELS) for _ in range(1300)]
    chain = b"".join(o for o, _ in levels) + b'"leaf"' + b"".join(c for _, c in reversed(levels))
    base = b'{"instances": [1], "deep": ' + chain + b', "after": [1, {"x": NaN}]}'
    inserts = [b"[", b"]", b"{", b"}", b",", b":", b'"', b"1e999", b"NaN", b" ", b"\\", b"[1]"]
    bodies = [base] + [fuzzing.mutate(rng, base, inserts) for _ in range(150)]
    deep = [_outcome(body) for body in bodies]
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(20_000)
    try:
        recursive = [_outcome(body) for body in bodies]
        assert [repr(_cut(o)) for o in deep] == [repr(_cut(o)) for o in recursive]
    finally:
        sys.setrecursionlimit(limit)
    assert "DeepValue" in repr(deep[0]) and sum(isinstance(o, str) for o in deep) > 50


DECODED = [
    (b'{"x": [NaN, Infinity, -Infinity]}', {"x": [math.nan, math.inf, -math.inf]}),
    (b'{"x": 1} trailing bytes', {"x": 1}),
    (b'{"x": 18446744073709551615, "y": 18446744073709551616}', {"x": 2**64 - 1, "y": 1.8446744073709552e19}),
    (b'{"x": -9223372036854775809}', {"x": -9.223372036854776e18}),
    (b'{"x": NaN, "y": 18446744073709551616, "z": -9223372036854775808}',  # the lenient parser
     {"x": math.nan, "y": 1.8446744073709552e19, "z": -(2**63)}),
]


@pytest.mark.parametrize("body, expected", DECODED)
def test_decode_json_like_rapidjson(body, expected):
    document = codec.decode_json(body)
    assert json.dumps(document) == json.dumps(expected)  # NaN-safe, and int/float-exact
    assert [type(v) for v in document.values()] == [type(v) for v in expected.values()]


# ---------------------------------------------------------------------------------------------
# Predict responses
# ---------------------------------------------------------------------------------------------

INT_2x3x2 = tensor([1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1, 2], I32, [2, 3, 2])
BYTES_2x2 = tensor([b"hello", b"world", b"tf", b"serving"], STR, [2, 2])
MULTIPLE = {
    "int_tensor": INT_2x3x2,
    "str_tensor": tensor([b"foo", b"bar", b"baz", b"bat"], STR, [2, 2]),
    "float_tensor": tensor([1.0, 2.0], F32, [2, 1]),
    "double_scalar_tensor": tensor([8.0, 9.0], F64),
    "str_tensor_bytes": BYTES_2x2,
}

PREDICT_RESPONSES = [
    # (case, outputs, format, exact response)
    ("FromJsonSingleTensor row", {"int_tensor": INT_2x3x2}, ROW_FORMAT,
     b'{\n    "predictions": [[[1, 2], [3, 4], [5, 6]], [[7, 8], [9, 0], [1, 2]]\n    ]\n}'),
    ("FromJsonSingleTensor columnar", {"int_tensor": INT_2x3x2}, COLUMNAR_FORMAT,
     b'{\n    "outputs": [\n        [\n            [\n                1,\n                2\n            ],\n'
     b'            [\n                3,\n                4\n            ],\n            [\n                5,\n'
     b'                6\n'
     b'            ]\n        ],\n        [\n            [\n                7,\n                8\n            ],\n'
     b'            [\n                9,\n                0\n            ],\n            [\n                1,\n'
     b'                2\n            ]\n        ]\n    ]\n}'),
    ("FromJsonSingleScalarTensor row", {"int_tensor": tensor([1, 2, 3, 4, 5], I32)}, ROW_FORMAT,
     b'{\n    "predictions": [1, 2, 3, 4, 5\n    ]\n}'),
    ("FromJsonSingleScalarTensor columnar", {"int_tensor": tensor([1, 2, 3, 4, 5], I32)}, COLUMNAR_FORMAT,
     b'{\n    "outputs": [\n        1,\n        2,\n        3,\n        4,\n        5\n    ]\n}'),
    ("FromJsonSingleBytesTensor", {"str_tensor_bytes": BYTES_2x2}, ROW_FORMAT,
     b'{\n    "predictions": [[{\n                "b64": "aGVsbG8="\n            }, {\n'
     b'                "b64": "d29ybGQ="\n            }], [{\n                "b64": "dGY="\n            }, {\n'
     b'                "b64": "c2VydmluZw=="\n'
     b'            }]\n    ]\n}'),
    ("FromJsonSingleFloatTensorSixDigitPrecision",
     {"float_tensor": tensor([9000000, 999999, 0.5, 0.0003, 0.00003, 555557.5], F32, [2, 3])}, ROW_FORMAT,
     b'{\n    "predictions": [[9e+06, 999999.0, 0.5], [0.0003, 3e-05, 555557.5]\n    ]\n}'),
    ("FromJsonSingleFloatTensorNonFinite", {"float_tensor": tensor([np.nan, np.inf, 3, -np.inf], F32, [2, 2])},
     ROW_FORMAT, b'{\n    "predictions": [[NaN, Infinity], [3.0, -Infinity]\n    ]\n}'),
    ("FromJsonMultipleNamedTensors row", MULTIPLE, ROW_FORMAT,
     b'{\n    "predictions": [\n        {\n            "double_scalar_tensor": 8.0,\n'
     b'            "float_tensor": [1.0],\n            "int_tensor": [[1, 2], [3, 4], [5, 6]],\n'
     b'            "str_tensor": ["foo", "bar"],\n'
     b'            "str_tensor_bytes": [{\n                    "b64": "aGVsbG8="\n                }, {\n'
     b'                    "b64": "d29ybGQ="\n                }]\n        },\n        {\n'
     b'            "double_scalar_tensor": 9.0,\n            "float_tensor": [2.0],\n'
     b'            "int_tensor": [[7, 8], [9, 0], [1, 2]],\n            "str_tensor": ["baz", "bat"],\n'
     b'            "str_tensor_bytes": [{\n                    "b64": "dGY="\n                }, {\n'
     b'                    "b64": "c2VydmluZw=="\n                }]\n        }\n    ]\n}'),
    ("FromJsonMultipleNamedTensors columnar", MULTIPLE, COLUMNAR_FORMAT,
     b'{\n    "outputs": {\n        "double_scalar_tensor": [\n            8.0,\n            9.0\n        ],\n'
     b'        "float_tensor": [\n            [\n                1.0\n            ],\n            [\n'
     b'                2.0\n            ]\n        ],\n        "int_tensor": [\n            [\n                [\n'
     b'                    1,\n                    2\n                ],\n                [\n                    3,\n'
     b'                    4\n                ],\n                [\n                    5,\n                    6\n'
     b'                ]\n            ],\n            [\n                [\n                    7,\n'
     b'                    8\n                ],\n                [\n                    9,\n                    0\n'
     b'                ],\n                [\n                    1,\n                    2\n                ]\n'
     b'            ]\n        ],\n        "str_tensor": [\n            [\n                "foo",\n'
     b'                "bar"\n            ],\n            [\n                "baz",\n                "bat"\n'
     b'            ]\n        ],\n        "str_tensor_bytes": [\n            [\n                {\n'
     b'                    "b64": "aGVsbG8="\n                },\n                {\n'
     b'                    "b64": "d29ybGQ="\n                }\n            ],\n            [\n                {\n'
     b'                    "b64": "dGY="\n                },\n                {\n'
     b'                    "b64": "c2VydmluZw=="\n                }\n            ]\n        ]\n    }\n}'),
    ("FromJsonSingleZeroBatchTensor", {"int_tensor": np.zeros((0, 2), I32)}, ROW_FORMAT,
     b'{\n    "predictions": []\n}'),
    ("FromJsonMultipleZeroBatchTensors",
     {"str_tensor": np.zeros((0, 1, 2), STR), "float_tensor": np.zeros((0, 3, 4), F32)}, ROW_FORMAT,
     b'{\n    "predictions": []\n}'),
    ("handler Predict row", {"y": tensor([2.5, 3.0, 3.5, 4.0], F32, [2, 2])}, ROW_FORMAT,
     b'{\n    "predictions": [[2.5, 3.0], [3.5, 4.0]\n    ]\n}'),
    ("handler Predict columnar", {"y": tensor([3.5, 4.0], F32)}, COLUMNAR_FORMAT,
     b'{\n    "outputs": [\n        3.5,\n        4.0\n    ]\n}'),
    ("columnar scalar", {"y": tensor([3.0], F32, [])}, COLUMNAR_FORMAT, b'{\n    "outputs": 3.0\n}'),
    ("row empty inner arrays", {"y": np.zeros((2, 0), F32)}, ROW_FORMAT, b'{\n    "predictions": [[], []\n    ]\n}'),
    ("columnar empty inner arrays", {"y": np.zeros((2, 0), F32)}, COLUMNAR_FORMAT,
     b'{\n    "outputs": [\n        [],\n        []\n    ]\n}'),
    ("strings escaped like rapidjson", {"s": tensor([b'a"b\\c', "tab\tnl\n\x01\u00e9".encode()], STR)}, ROW_FORMAT,
     b'{\n    "predictions": ["a\\"b\\\\c", "tab\\tnl\\n\\u0001\xc3\xa9"\n    ]\n}'),
    ("bools and int64", {"b": tensor([True, False], BOOL), "n": tensor([-(2**63), 2**63 - 1], I64)}, ROW_FORMAT,
     b'{\n    "predictions": [\n        {\n            "b": true,\n            "n": -9223372036854775808\n        },\n'
     b'        {\n            "b": false,\n            "n": 9223372036854775807\n        }\n    ]\n}'),
    ("not UTF-8: written as base64 (TF Serving writes the raw bytes)", {"s": tensor([b"\xff"], STR)}, ROW_FORMAT,
     b'{\n    "predictions": [{\n            "b64": "/w=="\n        }\n    ]\n}'),
    ("unsupported dtype without values", {"h": np.zeros((0,), np.float16)}, COLUMNAR_FORMAT,
     b'{\n    "outputs": []\n}'),
]


@pytest.mark.parametrize("case, outputs, fmt, expected", PREDICT_RESPONSES, ids=[c[0] for c in PREDICT_RESPONSES])
def test_format_predict_response(case, outputs, fmt, expected):
    assert codec.format_predict_response(outputs, fmt) == expected


PREDICT_RESPONSE_ERRORS = [
    ("empty tensor map", {}, ROW_FORMAT, "Cannot convert empty tensor map to JSON"),
    ("unsupported dtype", {"tensor": tensor([1, 2], np.complex64)}, ROW_FORMAT,
     "Failed to write JSON value for tensor type: complex64"),
    ("half", {"tensor": tensor([1, 2], np.float16)}, COLUMNAR_FORMAT,
     "Failed to write JSON value for tensor type: half"),
    ("no shape", {"tensor": tensor([1], I32, [])}, ROW_FORMAT, "Tensor name: tensor has no shape information "),
    ("inconsistent batch", {"int_tensor": tensor([1, 2, 3, 4, 5, 6], I32, [2, 3]),
                            "str_tensor": tensor([b"foo", b"bar", b"baz"], STR, [1, 3])}, ROW_FORMAT,
     "Tensor name: str_tensor has inconsistent batch size: 1 expecting: 2"),
    ("inconsistent zero batch", {"int_tensor": np.zeros((0, 2), I32), "str_tensor": tensor([b"a", b"b"], STR, [1, 2])},
     ROW_FORMAT, "Tensor name: str_tensor has inconsistent batch size: 1 expecting: 0"),
    ("unknown format", {"y": tensor([1.0], F32)}, "rows", "Invalid request format"),
]


@pytest.mark.parametrize("case, outputs, fmt, message", PREDICT_RESPONSE_ERRORS,
                         ids=[c[0] for c in PREDICT_RESPONSE_ERRORS])
def test_format_predict_response_errors(case, outputs, fmt, message):
    with pytest.raises(CodecError) as error:
        codec.format_predict_response(outputs, fmt)
    assert str(error.value) == message


# WriteDecimal: "%g" (6 digits) if it parses back to the value, else 9 (float) / 17 (double) digits.
FLOAT_TEXTS = [
    (F32, 9000000, "9e+06"), (F32, 999999, "999999.0"), (F32, 0.5, "0.5"), (F32, 0.0003, "0.0003"),
    (F32, 0.00003, "3e-05"), (F32, 555557.5, "555557.5"), (F32, 3, "3.0"), (F32, 0.1, "0.1"), (F32, 1e20, "1e+20"),
    (F32, 0.123456789, "0.123456791"), (F32, 1435774380, "1.43577434e+09"), (F32, 123456789, "123456792.0"),
    (F32, 1.4e-45, "1.4013e-45"), (F32, 3.4028234663852886e38, "3.40282347e+38"), (F32, -1.5, "-1.5"),
    (F32, 0.0, "0.0"), (F32, -0.0, "-0.0"), (F32, np.nan, "NaN"), (F32, np.inf, "Infinity"),
    (F32, -np.inf, "-Infinity"), (F32, 1e5, "100000.0"), (F32, 1e6, "1e+06"), (F32, 1e-4, "0.0001"),
    (F32, 1e-5, "1e-05"), (F32, 16777216, "16777216.0"), (F32, 1234567, "1234567.0"), (F32, 0.7, "0.7"),
    (F32, 1e-7, "1e-07"), (F32, 123.456, "123.456"), (F32, -0.000123456, "-0.000123456"),
    (F32, 99999.95, "99999.9531"), (F32, 999999.5, "999999.5"), (F32, 8.5e-10, "8.5e-10"),
    (F64, 0.1, "0.1"), (F64, 1 / 3, "0.33333333333333331"), (F64, 1e100, "1e+100"), (F64, 5e-324, "4.94066e-324"),
    (F64, 123456789.0, "123456789.0"), (F64, 1e21, "1e+21"), (F64, -0.0, "-0.0"), (F64, np.nan, "NaN"),
    (F64, 1.7976931348623157e308, "1.7976931348623157e+308"), (F64, 1e-5, "1e-05"),
]


@pytest.mark.parametrize("dtype, value, text", FLOAT_TEXTS)
def test_float_text(dtype, value, text):
    array = tensor([value], dtype)
    expected = b'{\n    "outputs": [\n        ' + text.encode() + b"\n    ]\n}"
    assert codec.format_predict_response({"x": array}, COLUMNAR_FORMAT) == expected
    exact = floats.float32_token if dtype is F32 else floats.float64_token
    assert exact(float(array[0])) == text.encode()


@pytest.mark.parametrize("seed", range(3))
def test_vectorised_float32_text_matches_exact_path(seed):
    rng = np.random.default_rng(seed)
    bits = rng.integers(0, 2**32, 3000, dtype=np.uint64).astype(np.uint32)
    values = np.concatenate([bits.view(np.float32), rng.random(1000).astype(np.float32),
                             np.float32(10.0) ** rng.integers(-45, 39, 500).astype(np.float32)])
    assert response._tokens("x", values, 0) == [floats.float32_token(float(v)) for v in values]


def test_float32_round_trip_shortcut_agrees_with_exact_arithmetic():
    """The per-value path decides "does this text read back as that float32" from three double roundings;
    exact fractions must agree, also on float32 ties (odd integers from 2**24 on) and decimals a hair from
    them, which double rounding would get wrong."""
    rng = np.random.default_rng(7)
    bits = rng.integers(0, 2**32, 4000, dtype=np.uint64).astype(np.uint32).view(np.float32)
    cases = [(text % v, v) for v in bits[np.isfinite(bits)].tolist() for text in ("%.6g", "%.5g")]
    ties = rng.integers(2**23, 2**25, 500) * 2 + 1
    near_ties = [str(t) for t in ties.tolist()] + [f"{t}.000000001" for t in ties.tolist()]
    near_ties += [f"{t - 1}.999999999" for t in ties.tolist()]  # these read as the tie itself in double
    cases += [(t, v) for t in near_ties for v in (float(np.float32(float(t) - 1)), float(np.float32(float(t) + 1)))]
    cases += [("3.40282e+38", float(np.finfo(np.float32).max)), ("3.4028236e38", float(np.finfo(np.float32).max))]
    for text, value in cases:
        assert floats._parses_to_float32(text, value) == floats._parses_to_float32_exactly(text, value), (text, value)


# ---------------------------------------------------------------------------------------------
# Classify and regress
# ---------------------------------------------------------------------------------------------

EXAMPLE_REQUESTS = [
    # (case, body, signature name, features of each example: name -> (kind, values))
    ("RequestNoContext", b'''{"examples": [{"names": [ "foo", "bar" ], "ratings": [ 8.0, 9.0 ], "age": 20},
                                         {"names": [ "baz" ], "ratings": 6.0}]}''', "",
     [{"names": ("bytes_list", [b"foo", b"bar"]), "ratings": ("float_list", [8.0, 9.0]), "age": ("int64_list", [20])},
      {"names": ("bytes_list", [b"baz"]), "ratings": ("float_list", [6.0])}]),
    ("RequestWithContextAndSignature", b'''{
        "signature_name": "custom_signture",
        "context": {"query": "pizza", "location": [ "sfo" ]},
        "examples": [
          {"names": [ "foo", "bar" ], "ratings": [ 8.0, 9.0, NaN, Infinity ], "age": 20},
          {"names": [ "baz", { "b64": "aGVsbG8=" } ], "ratings": 6.0, "intboolmix": [ 1, true, false ]},
          {"names": "bar", "ratings": -Infinity}]}''', "custom_signture",
     [{"query": ("bytes_list", [b"pizza"]), "location": ("bytes_list", [b"sfo"]),
       "names": ("bytes_list", [b"foo", b"bar"]), "ratings": ("float_list", [8.0, 9.0, math.nan, math.inf]),
       "age": ("int64_list", [20])},
      {"query": ("bytes_list", [b"pizza"]), "location": ("bytes_list", [b"sfo"]),
       "names": ("bytes_list", [b"baz", b"hello"]), "ratings": ("float_list", [6.0]),
       "intboolmix": ("int64_list", [1, 1, 0])},
      {"query": ("bytes_list", [b"pizza"]), "location": ("bytes_list", [b"sfo"]),
       "names": ("bytes_list", [b"bar"]), "ratings": ("float_list", [-math.inf])}]),
    ("an example's feature wins over the context's", b'{"context": {"a": 1, "b": 2}, "examples": [{"a": "x"}]}', "",
     [{"a": ("bytes_list", [b"x"]), "b": ("int64_list", [2])}]),
    ("empty list: feature without kind", b'{"examples": [{"a": []}]}', "", [{"a": (None, [])}]),
    ("handler Regress", b'{"signature_name": "regress_x_to_y", "examples": [ { "x": 80.0 } ] }', "regress_x_to_y",
     [{"x": ("float_list", [80.0])}]),
]


@pytest.mark.parametrize("case, body, signature, features", EXAMPLE_REQUESTS, ids=[c[0] for c in EXAMPLE_REQUESTS])
def test_parse_examples_request(case, body, signature, features):
    example_pb2 = pytest.importorskip("tensorflow.core.example.example_pb2")
    serialized, name = codec.parse_examples_request(codec.decode_json(body))
    assert name == signature
    got = []
    for data in serialized:
        feature_map = example_pb2.Example.FromString(data).features.feature
        kinds = {key: feature.WhichOneof("kind") for key, feature in feature_map.items()}
        got.append({key: (kind, list(getattr(feature_map[key], kind).value) if kind else [])
                    for key, kind in kinds.items()})
    assert repr([sorted(e.items()) for e in got]) == repr([sorted(e.items()) for e in features])  # NaN-safe


EXAMPLE_ERRORS = [
    ("JsonErrors signature_name", b'{"signature_name": [ "hello" ], "examples": [ { "names": [ "foo", "bar" ] } ]}',
     'JSON Value: {\n    "signature_name": ["hello"],\n    "examples": [{\n            "names": ["foo", "bar"]\n'
     "        }]\n} not formatted correctly. 'signature_name' key must be a string value."),
    ("JsonErrors context not an object", b'{"context": [ { "names": [ "foo", "bar" ] } ]}',
     "Example must be JSON object but got JSON Array"),
    ("JsonErrors examples not a list", b'{"examples": { "names": [ "foo", "bar" ] }}',
     'JSON Value: {\n    "examples": {\n        "names": ["foo", "bar"]\n    }\n} '
     "Expecting 'examples' value to be an list/array"),
    ("JsonErrors example not an object", b'{"examples": [ [ { "names": [ "foo", "bar" ] } ] ]}',
     "Example must be JSON object but got JSON Array"),
    ("JsonErrors null element", b'{"examples": [ { "names": [ 10, null ] } ]}',
     "Feature: names has element with unexpected JSON type: Null"),
    # TF's "JsonErrors int then float" ([10, 10.0]) is accepted here as a float_list: see the test below
    ("int then string", b'{"examples": [ { "names": [ 10, "a" ] } ]}',
     "Unexpected element type in feature: names expecting type: int64"),
    ("float then bool", b'{"examples": [ { "names": [ 1.5, true ] } ]}',
     "Unexpected element type in feature: names expecting type: float"),
    ("JsonErrors object element", b'{"examples": [ { "names": [ 10, { "test": 10 } ] } ]}',
     "Feature: names has element with unexpected JSON type: Object"),
    ("JsonErrors nested list", b'{"examples": [ { "names": [ [10], 20 ] } ]}',
     "Feature: names has element with unexpected JSON type: Array"),
    ("JsonErrors uint64", b'{"examples": [ { "names": [ 20, 18446744073709551603 ] } ]}',
     "Feature: names has uint64_t element. Only int64_t is supported."),
    ("missing examples", b'{"context": {}}',
     "JSON Value: {\n    \"context\": {}\n} When method is classify, key 'examples' is expected and was not found"),
    ("empty examples", b'{"examples": []}',
     "JSON Value: {\n    \"examples\": []\n} 'examples' value is an empty array"),
    ("string then b64 undecodable", b'{"examples": [{"a": ["x", {"b64": "a"}]}]}', "Unable to base64 decode"),
]


@pytest.mark.parametrize("values, kind, expected", [
    ([46.1, 13.2, 211.0, 4500.0, 2007], "float_list", [46.1, 13.2, 211.0, 4500.0, 2007.0]),
    ([10, 10.0], "float_list", [10.0, 10.0]),  # TF Serving: "expecting type: int64"
    ([10, 20], "int64_list", [10, 20]),  # whole numbers alone stay integers, as in TF Serving
    ([1.5], "float_list", [1.5]),
])
def test_whole_numbers_among_floats_are_a_float_list(values, kind, expected):
    feature = codec.example_from_json({"x": values}).features.feature["x"]
    assert feature.WhichOneof("kind") == kind and list(getattr(feature, kind).value) == pytest.approx(expected)


@pytest.mark.parametrize("case, body, message", EXAMPLE_ERRORS, ids=[c[0] for c in EXAMPLE_ERRORS])
def test_parse_examples_request_errors(case, body, message):
    pytest.importorskip("tensorflow.core.example.example_pb2")
    with pytest.raises(CodecError) as error:
        codec.parse_examples_request(codec.decode_json(body))
    assert str(error.value) == message


SCORES = tensor([0.2, 0.7, 0.1, 0.7, 0.1, 0.2], F32, [2, 3])
LABELS = tensor([b"car", b"bike", b"bus", b"car", b"bike", b"bus"], STR, [2, 3])
CLASSIFY_RESPONSES = [
    ("JsonFromClassificationResult", LABELS, SCORES,
     b'{\n    "results": [[["car", 0.2], ["bike", 0.7], ["bus", 0.1]], [["car", 0.7], ["bike", 0.1], ["bus", 0.2]]\n'
     b"    ]\n}"),
    ("handler Classify: no classes output", None, tensor([[12]], F32), b'{\n    "results": [[["", 12.0]]\n    ]\n}'),
    ("no scores output", tensor([b"a"], STR, [1, 1]), None, b'{\n    "results": [[["a", 0.0]]\n    ]\n}'),
    ("no classes per example", None, np.zeros((2, 0), F32), b'{\n    "results": [[], []\n    ]\n}'),
]


@pytest.mark.parametrize("case, classes, scores, expected", CLASSIFY_RESPONSES, ids=[c[0] for c in CLASSIFY_RESPONSES])
def test_format_classify_response(case, classes, scores, expected):
    assert codec.format_classify_response(classes, scores) == expected


REGRESS_RESPONSES = [
    ("JsonFromRegressionResult", tensor([0.2, 0.9, 1.0], F32), b'{\n    "results": [0.2, 0.9, 1.0]\n}'),
    ("JsonFromRegressionResultWithNonFinite", tensor([0.2, np.inf, 1.0, -np.inf, np.nan], F32),
     b'{\n    "results": [0.2, Infinity, 1.0, -Infinity, NaN]\n}'),
    ("handler Regress", tensor([42], F32), b'{\n    "results": [42.0]\n}'),
]


@pytest.mark.parametrize("case, values, expected", REGRESS_RESPONSES, ids=[c[0] for c in REGRESS_RESPONSES])
def test_format_regress_response(case, values, expected):
    assert codec.format_regress_response(values) == expected


@pytest.mark.parametrize("call, message", [
    (lambda: codec.format_classify_response(None, None), "Cannot convert empty ClassificationResults to JSON"),
    (lambda: codec.format_classify_response(None, np.zeros((0, 3), F32)),
     "Cannot convert empty ClassificationResults to JSON"),
    (lambda: codec.format_regress_response(np.zeros(0, F32)), "Cannot convert empty RegressionResults to JSON"),
])
def test_empty_results(call, message):
    with pytest.raises(CodecError) as error:
        call()
    assert str(error.value) == message


@pytest.mark.parametrize("message, expected", [
    ('Bad key: "key"', b'{\n    "error": "Bad key: \\"key\\""\n}'),
    ("Bad key: 'key'", b'{\n    "error": "Bad key: \'key\'"\n}'),
])
def test_format_error_response(message, expected):
    assert codec.format_error_response(message) == expected


@pytest.mark.parametrize("size", [10, 4095, 4096, 70_000])
def test_parse_cost_counts_every_opening_bracket_whatever_the_body_size(size):
    """Its length plus LEVEL_COST_BYTES per "[" or "{" (in strings too): counted by bytes.count or, from 4 KiB, by one
    numpy pass (which counts both as one: "[" and "{" differ only in 0x20); no other byte counts."""
    rng = random.Random(size)
    body = bytes(rng.choice(b"[{") if rng.random() < 0.3 else rng.randrange(256) for _ in range(size))
    expected = size + LEVEL_COST_BYTES * (body.count(b"[") + body.count(b"{"))
    assert deep.parse_cost(body) == expected > size


@pytest.mark.parametrize("size", [99, 100, 4096])
def test_parse_cost_leaves_uncounted_only_a_body_too_short_to_reach_the_threshold(size):
    """A body of nothing but "[" reaches 1,700 from 100 bytes (each costs 1 + LEVEL_COST_BYTES): shorter, its length
    stands for its cost; whatever the body, it is as far above or below the threshold as its counted cost."""
    threshold = 100 * (1 + LEVEL_COST_BYTES)
    for body in (b"[" * size, b"1" * size):
        cost = deep.parse_cost(body, threshold)
        assert (cost >= threshold) == (deep.parse_cost(body) >= threshold)
        assert cost == (size if size < 100 else deep.parse_cost(body))
