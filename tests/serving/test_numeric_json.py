"""The simdjson fast path (serving.codec.numeric) against the exact path, on generated predict bodies.

Every body must give the same tensors (dtype, shape, bits) or the same error (type and message)
through `decode_predict_json` as through `decode_json`; the bodies mix what the fast path takes
(dense numeric arrays, exponents, whitespace, a signature_name) with what it must hand over
(NaN/Infinity, numbers beyond 64 bits or double range, ragged arrays, wrong depths, booleans,
strings, duplicate keys, escapes).
"""
import random
from types import SimpleNamespace

import numpy as np
import pytest

from serving import codec
from serving.codec import numeric
from serving.codec.numeric import NumericDocument
from serving.errors import ServingError

CASES = 10_000
DTYPES = [np.float32] * 4 + [np.float64, np.int32, np.int32, np.int64, np.int8, np.uint8, np.uint32, np.uint64,
                             np.bool_, object]
EDGE_INTEGERS = [2**31 - 1, 2**31, -(2**31) - 1, 2**53 + 1, 2**63 - 1, 2**63, 2**64 - 1, 2**64, -(2**63),
                 -(2**63) - 1, 10**25, 0, -1]
FLOAT_TEXTS = ["1.5e10", "1E-5", "-2.5e+3", "1e308", "1.8e308", "4e-324", "2.4e-324", "1e-400", "-0", "-0.0", "0e0",
               "3.4028235e38", "3.5e38", "0.1", "123456789012345678", "1.0000000000000002"]
RARE_TOKENS = ["NaN", "Infinity", "-Infinity", "true", "false", "null", '"s"', '{"b64": "YQ=="}', "{}"]
SPACE = ["", "", "", " ", "\n", "\t ", "  "]


def leaf(rng: random.Random, profile: str) -> str:
    """A number's text: integers only, or also decimals and exponents, or ("messy") also edge values,
    NaN/Infinity and non-numbers."""
    kind = {"integers": 0, "numbers": 0.8, "messy": 1}[profile] * rng.random()
    if kind < 0.45:
        return str(rng.randint(-1000, 1000))
    if kind < 0.80:
        return f"{rng.uniform(-1e3, 1e3):.{rng.randint(0, 9)}f}"
    if kind < 0.90:
        return rng.choice(FLOAT_TEXTS)
    if kind < 0.97:
        return str(rng.choice(EDGE_INTEGERS))
    return rng.choice(RARE_TOKENS)


def nest(rng: random.Random, shape: list[int], profile: str):
    """A nested list of JSON number texts; if "messy", sometimes ragged or a level too deep or too shallow."""
    if not shape:
        return leaf(rng, profile)
    items = [nest(rng, shape[1:], profile) for _ in range(shape[0])]
    mutation = rng.random() if profile == "messy" else 1
    if mutation < 0.03 and items:
        items.pop()
    elif mutation < 0.06:
        items.append(nest(rng, shape[1:], profile))
    elif mutation < 0.08 and items:
        items[rng.randrange(len(items))] = leaf(rng, profile) if shape[1:] else [leaf(rng, profile)]
    return items


def text(value, rng: random.Random) -> str:
    if isinstance(value, str):
        return value
    space = rng.choice(SPACE)
    return "[" + space + ("," + rng.choice(SPACE)).join(text(v, rng) for v in value) + rng.choice(SPACE) + "]"


def body(rng: random.Random) -> bytes:
    shape = [rng.choice([1, 1, 2, 3, 4, 0] if rng.random() < 0.1 else [1, 2, 3, 4]) for _ in range(rng.randint(1, 4))]
    tensor = text(nest(rng, shape, rng.choice(["integers", "numbers", "messy", "messy"])), rng)
    members = [(rng.choice(["instances"] * 8 + ["inputs"] * 4 + ["examples"]), tensor)]
    extra = rng.random()
    if extra < 0.25:
        members.append(("signature_name", rng.choice(['"serving_default"', '"a[,]b"', '"q\\"x"', "7"])))
    elif extra < 0.28:
        members.append(("instances", "[[1]]"))
    elif extra < 0.30:
        members.append(("inputs", tensor))
    rng.shuffle(members)
    return ("{" + ",".join(f'{rng.choice(SPACE)}"{k}"{rng.choice(SPACE)}:{v}' for k, v in members) + "}").encode()


def outcome(decode, body: bytes, inputs) -> tuple:
    try:
        tensors, form = codec.parse_predict_request(decode(body), inputs)
    except ServingError as e:
        return "error", type(e).__name__, str(e)
    return form, {name: (t.dtype, t.shape, t.tolist() if t.dtype == object else t.tobytes())
                  for name, t in tensors.items()}


def test_fast_and_exact_decoding_agree_on_generated_bodies():
    rng = random.Random(20261202)
    fast_taken = 0
    for case in range(CASES):
        data = body(rng)
        dtypes = [rng.choice(DTYPES)] if rng.random() < 0.9 else [rng.choice(DTYPES), rng.choice(DTYPES)]
        inputs = {f"x{i}": SimpleNamespace(dtype=np.dtype(d)) for i, d in enumerate(dtypes)}
        exact = outcome(codec.decode_json, data, inputs)
        fast = outcome(codec.decode_predict_json, data, inputs)
        assert fast == exact, f"case {case}: {data[:300]!r} with {dtypes}"
        document = numeric._numeric_document(data, numeric._parsed(data))
        fast_taken += document is not None and document.tensors(inputs) is not None
    assert fast_taken > CASES // 5, f"only {fast_taken} of {CASES} bodies took the fast path"


@pytest.mark.parametrize("data", [
    b'{"instances": [[1, 2], [3], [4, 5, 6]]}',  # six numbers, like a 3x2
    b'{"instances": [[1, 2], 3]}', b'{"inputs": [[1], [[2]]]}', b'{"instances": [1, 2], "instances": [[3]]}',
    b'{"instances": [{}, {}]}', b'{"instances": [1, NaN]}', b'{"instances": [1e999]}', b'{"instances": [1, 2]} x',
    b'{"instances": [1, 2], "signature_name": "a\\"b"}', b'{"instances": []}', b'{"instances": [[]]}',
])
def test_bodies_the_fast_path_hands_to_the_exact_one(data):
    document = numeric._numeric_document(data, numeric._parsed(data))
    assert document is None or document.tensors({"x": SimpleNamespace(dtype=np.dtype(np.float32))}) is None


@pytest.mark.parametrize("data, shape", [
    (b'{"instances": [[1, 2.5], [3e2, -4]]}', (2, 2)), (b'{ "signature_name" : "a[,]", "inputs" :[ [ 1 ] ] }', (1, 1)),
    (b'{"instances": [[[1, 2, 3]]], "signature_name": "s"}', (1, 1, 3)), (b'{"inputs": [7]}', (1,)),
])
def test_dense_numeric_bodies_take_the_fast_path(data, shape):
    document = codec.decode_predict_json(data)
    assert isinstance(document, NumericDocument)
    tensors = document.tensors({"x": SimpleNamespace(dtype=np.dtype(np.float32))})
    assert tensors["x"].shape == shape and tensors["x"].dtype == np.float32
