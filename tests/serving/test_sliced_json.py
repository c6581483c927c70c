"""Large bodies are decoded, and large outputs written, a slice at a time (serving.codec.slices), so that the event
loop gets the GIL between slices; the slices must change nothing. Here they are made tiny (every body sliced, arrays
of 2 rows, 3 values of text), and the same bodies and outputs give the same documents, tensors, errors and bytes as
in one call: test_numeric_json's generated predict bodies, and documents of named rows, objects and strings."""
import random
from types import SimpleNamespace

import numpy as np
import pytest

from serving import codec
from serving.codec import COLUMNAR_FORMAT, ROW_FORMAT, document, response, slices
from test_numeric_json import DTYPES, body, outcome

DOCUMENTS = [
    b'{"instances": [' + b",".join(b'{"x": [%d.5], "s": "r%d"}' % (i, i) for i in range(40)) + b"]}",
    b'{"instances": [{"x": 1, "x": 2}, {"x": 3}], "a": {"b": {"c": [1, 2, 3]}, "b": 4}}',  # repeated keys: the last
    b'{"inputs": {"a": [[1, 2], [3, 4], [5, 6]], "b": ["\\u00e9", "\\"q\\"", "\\ud83d\\ude00"]}, "n": null}',
    b'{"instances": ' + b"[" * 100 + b"1" + b"]" * 100 + b"}",  # deeper than the slices' own recursion
    b'{"instances": [' + b",".join(b'{"k%d": %d}' % (i, i) for i in range(100)) + b"]}",
    b'{"big": {' + b",".join(b'"k%d": [%d]' % (i, i) for i in range(100)) + b"}}",  # more members than looked up
    b'{"instances": [1, 2, NaN]}', b'{"instances": [1, 2]} trailing', b'{"instances": [18446744073709551616, -0]}',
    b'{"instances": ["\\ud800"]}', b'{"instances": [1e-400, 1e400]}', b'["not an object"]', b'{"instances": [1,]}',
    b'{"instances": [true, false, null, 1, 2.5, "x", [], {}], "signature_name": "s"}',
]


@pytest.fixture
def tiny_slices(monkeypatch):
    def on():
        monkeypatch.setattr(document, "SLICED_BYTES", 0)
        monkeypatch.setattr(slices, "_FEW", 1)
        monkeypatch.setattr(slices, "SLICE_ROWS", 2)
        monkeypatch.setattr(response, "SLICE_VALUES", 3)
    return on


def decoded(data: bytes):
    try:
        return "ok", codec.decode_json(data)
    except codec.CodecError as e:
        return "error", str(e)


def test_generated_bodies_give_the_same_tensors_and_errors_in_slices(tiny_slices):
    rng = random.Random(20261206)
    cases = []
    for _ in range(3000):
        dtypes = [rng.choice(DTYPES)] if rng.random() < 0.9 else [rng.choice(DTYPES), rng.choice(DTYPES)]
        cases.append((body(rng), {f"x{i}": SimpleNamespace(dtype=np.dtype(d)) for i, d in enumerate(dtypes)}))
    whole = [outcome(codec.decode_json, data, inputs) for data, inputs in cases]
    tiny_slices()
    assert slices.SLICE_ROWS == 2 and document.SLICED_BYTES == 0
    for (data, inputs), expected in zip(cases, whole):
        assert outcome(codec.decode_json, data, inputs) == expected, data[:300]


def test_documents_are_the_same_in_slices(tiny_slices):
    whole = [decoded(data) for data in DOCUMENTS]
    tiny_slices()
    for data, expected in zip(DOCUMENTS, whole):
        got = decoded(data)
        assert repr(got) == repr(expected), data[:200]  # repr: 1 and 1.0, -0.0 and 0.0, nan differ


@pytest.mark.parametrize("values", [
    [[1, 2]] * 4 + [[3.5, 4]] * 2,  # integers, then floats in the last slice: float64 over the whole, as numpy says
    [[1, 2]] * 4 + [[3, 4, 5]] * 2,  # each slice rectangular, the whole ragged
    [[1, 2]] * 5 + [[3, 4, 5]],  # ragged inside the last slice
    [2**63] * 4 + [-1] * 2,  # uint64 slices, then an int64 one: numpy's own answer over the whole
    [1] * 2 + [2**63] * 2 + ["a"] * 2,  # int64, uint64, then strings: joined, the strings would be 21 wide, not 32
    [[1.5]] * 7, [True, False] * 3, ["a", "bc"] * 3,
])
def test_long_lists_become_numpys_array_or_error_in_slices(tiny_slices, values):
    def made(make):
        try:
            array = make(values)
            return array.dtype, array.shape, array.tolist()
        except (ValueError, OverflowError) as e:
            return type(e).__name__, str(e)
    expected = made(np.array)
    tiny_slices()
    assert made(slices.array) == expected


def test_outputs_are_written_the_same_in_slices(tiny_slices):
    rng = np.random.default_rng(7)
    specials = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-7, 3.4e38, 123456.7, 1e6, 0.1], np.float32)
    outputs = []
    for rows in (1, 2, 3, 7, 20):
        for shape in ((rows,), (rows, 3), (rows, 2, 2), (rows, 0)):
            size = int(np.prod(shape))
            outputs += [
                {"y": rng.choice(specials, size).reshape(shape)},
                {"y": (rng.standard_normal(size) * 10.0 ** rng.integers(-8, 9, size)).reshape(shape)},
                {"a": rng.integers(-2**40, 2**40, size).reshape(shape), "b": rng.random(rows) < 0.5},
            ]
    whole = [[codec.format_predict_response(out, fmt) for fmt in (ROW_FORMAT, COLUMNAR_FORMAT)] for out in outputs]
    tiny_slices()
    for out, expected in zip(outputs, whole):
        assert [codec.format_predict_response(out, fmt) for fmt in (ROW_FORMAT, COLUMNAR_FORMAT)] == expected, out
