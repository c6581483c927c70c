"""Fuzzing a real server on 127.0.0.1: malformed and edge-case REST bodies and gRPC messages (made by fuzzing.py)
all get a client error, never a 5xx nor UNKNOWN/INTERNAL; the server lives on and its memory comes back to where
it was after warm-up. 1,000 cases by default; `pytest -m fuzz_full` runs 10,000 (`make fuzz` writes the figures of
that run to benchmarks/results/fuzz.*). What the fuzzer found is kept below as named regression cases.
"""
from __future__ import annotations

import json

import grpc
import pytest
from tensorflow.core.framework import types_pb2

import fuzzing
from fuzzing import HPT, PREDICTION, GrpcCase, RestCase, field_bytes, predict_request, tensor

pytestmark = pytest.mark.xdist_group("test_fuzz")  # its module-scoped server starts once, in one worker
RSS_TOLERANCE = 0.10  # RSS after the run may exceed the after-warm-up baseline by this much: allocator slack


@pytest.fixture(scope="module")
def server(tmp_path_factory, half_plus_two_base):
    process, target = fuzzing.start_server(tmp_path_factory.mktemp("fuzz"), half_plus_two_base)
    yield process, target
    assert process.stop() == 0, process.log_tail()


def check_run(server, seed: int, cases: int) -> None:
    process, target = server
    result = fuzzing.run(process, target, seed, cases)
    assert result["bad_answers"] == 0, result["problems"]
    assert result["alive"], process.log_tail()
    rss = result["rss_mib"]
    assert rss["after"] <= rss["baseline"] * (1 + RSS_TOLERANCE), rss
    status, _, body = fuzzing.send_rest(process.url, RestCase("POST", f"{HPT}:predict".encode(), b'{"instances": [1]}'))
    assert status == 200 and json.loads(body) == {"predictions": [2.5]}, body
    with grpc.insecure_channel(target) as channel:
        assert fuzzing.send_grpc(channel, fuzzing.valid_grpc_requests()[0]) == ("OK", "")


def test_fuzzed_requests_get_client_errors_and_the_server_lives_on(server):
    check_run(server, seed=0, cases=1000)


@pytest.mark.slow
@pytest.mark.fuzz_full
def test_full_fuzz_run(server):
    check_run(server, seed=1, cases=10_000)


# (name, request, HTTP status or gRPC code, substring of the error; None: no body) -- each was a crash, a 500,
# UNKNOWN or INTERNAL
REGRESSIONS = [
    ("grpc-string-tensor-of-33-dimensions",  # the server died: TF segfaults converting such an array
     predict_request({"inputs": tensor(types_pb2.DT_STRING, [1] * 33, string_val=[b""])}, "regress_x_to_y"),
     "INVALID_ARGUMENT", "input 'inputs' is a string tensor of 33 dimensions; at most 32 are supported"),
    ("rest-strings-nested-33-deep",  # the same crash from a 100-byte body
     RestCase("POST", f"{HPT}:predict".encode(),
              b'{"signature_name": "regress_x_to_y", "instances": ' + b"[" * 33 + b'"a"' + b"]" * 33 + b"}"),
     400, "input 'inputs' is a string tensor of 33 dimensions; at most 32 are supported"),
    ("grpc-bytes-not-a-message", GrpcCase(PREDICTION + "Predict", b"\xff\xff\xff"), "INVALID_ARGUMENT",
     "Request cannot be parsed: Error parsing message with type 'tensorflow.serving.PredictRequest'"),  # UNKNOWN
    ("grpc-model-name-not-utf8", GrpcCase(PREDICTION + "Predict", field_bytes(1, field_bytes(1, b"half\xff"))),
     "INVALID_ARGUMENT", "Request cannot be parsed"),  # UNKNOWN: protobuf refuses a string field that is not UTF-8
    ("grpc-int-val-beyond-uint8", predict_request({"x": tensor(types_pb2.DT_UINT8, [1, 1], int_val=[2**31 - 1])}),
     "INVALID_ARGUMENT", "Expects arg[0] to be float but uint8 is provided"),  # INTERNAL: OverflowError in make_ndarray
    ("grpc-variant-ref-dtype", predict_request({"x": tensor(121, [1])}), "INVALID_ARGUMENT",
     "tensor parsing error: x"),  # INTERNAL: DT_VARIANT_REF has no numpy dtype (found when dtypes were checked first)
    ("grpc-string-tensor-quoted-by-tf-not-utf8",
     predict_request({"inputs": tensor(types_pb2.DT_STRING, [1], string_val=[b"\xff\xfe"])}, "regress_x_to_y"),
     "INVALID_ARGUMENT", "Could not parse example input, value: '\ufffd\ufffd'"),  # INTERNAL: UnicodeDecodeError
    ("rest-b64-string-input-quoted-by-tf-not-utf8",
     RestCase("POST", f"{HPT}:predict".encode(),
              b'{"signature_name": "regress_x_to_y", "instances": [{"b64": "//4="}]}'),
     400, "Could not parse example input"),  # 500: the same UnicodeDecodeError
    ("rest-version-of-5000-digits", RestCase("POST", f"{HPT}/versions/{'9' * 5000}:predict".encode(), b"{}"), 400,
     None),  # 500: int() refuses more than 4,300 digits; now TF Serving's answer to a version beyond int64, no body
    ("rest-feature-name-not-utf8",
     RestCase("POST", f"{HPT}:regress".encode(), b'{"signature_name": "regress_x_to_y", "examples": [{"\xff": 1.0}]}'),
     400, 'Feature name "\ufffd" is not valid UTF-8'),  # 500: UnicodeEncodeError setting the proto map key
    ("rest-scalar-input-with-batching", RestCase("POST", f"{HPT}:predict".encode(), b'{"inputs": 1.0}'), 400,
     "Batching Run() input tensors must have at least one dimension"),  # 500: len() of a scalar in a metric
]


@pytest.mark.parametrize("request_case, expected, message", [row[1:] for row in REGRESSIONS],
                         ids=[row[0] for row in REGRESSIONS])
def test_what_the_fuzzer_found_is_a_client_error(server, request_case, expected, message):
    process, target = server
    if isinstance(request_case, RestCase):
        status, _, body = fuzzing.send_rest(process.url, request_case)
        assert status == expected and (body == b"" if message is None else message in json.loads(body)["error"]), body
    else:
        with grpc.insecure_channel(target) as channel:
            code, details = fuzzing.send_grpc(channel, request_case)
        assert code == expected and message in details, details
