"""Malformed and edge-case requests for a real server, REST and gRPC, from a seeded generator, and the check that
every answer is a client error (4xx; a gRPC client error code), that the server lives on and gives memory back.

Shared by the fuzz test (tests/serving/test_fuzz.py, 1,000 cases; 10,000 with -m fuzz_full) and the run whose
figures are committed (benchmarks/fuzz.py). Case `i` of seed `s` comes from category i % len(CATEGORIES) with
random.Random(f"{s}:{i}"): any case can be made again alone from its seed and index (`make_case`).
"""
from __future__ import annotations

import base64
import gzip
import json
import math
import random
import re
import socket
import string
import time
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import grpc
from repo_files import copy_version, write_config
from tensorflow.core.example import example_pb2
from tensorflow.core.framework import tensor_pb2, types_pb2
from tensorflow_serving.apis import (classification_pb2, get_model_metadata_pb2, get_model_status_pb2,
                                     inference_pb2, model_management_pb2, predict_pb2, regression_pb2)

from localhost.ports import free_port
from serving.codec import example_from_json
from serving.process import ServerProcess

HPT = "/v1/models/half_plus_two"
CLIENT_ERRORS = {"INVALID_ARGUMENT", "NOT_FOUND", "FAILED_PRECONDITION", "RESOURCE_EXHAUSTED", "OUT_OF_RANGE",
                 "UNIMPLEMENTED", "PERMISSION_DENIED", "UNAUTHENTICATED"}  # gRPC codes that blame the request
MAX_BODY_BYTES = 1_000_000  # the server's --rest_api_max_body_bytes: larger bodies must get 413
PREDICTION = "/tensorflow.serving.PredictionService/"
MODEL_SERVICE = "/tensorflow.serving.ModelService/"


@dataclass
class RestCase:
    method: str
    path: bytes  # as sent on the request line: percent-encoded, raw UTF-8 or not UTF-8 at all
    body: bytes = b""
    headers: dict[str, str | bytes] = field(default_factory=dict)  # bytes: sent as they are (control characters)
    length: int | None = None  # the Content-Length declared, when it is not the body's (more is announced than sent)


@dataclass
class GrpcCase:
    method: str  # the full method name, e.g. /tensorflow.serving.PredictionService/Predict
    request: bytes  # the serialized message, or bytes that are not one


# -- server -------------------------------------------------------------------------------------------------------

def start_server(work: Path, half_plus_two_base: Path) -> tuple[ServerProcess, str]:
    """half_plus_two (version 123, label "stable") with batching, metrics and a 1 MB body limit; (process, gRPC
    target). Returns once the model is AVAILABLE."""
    copy_version(half_plus_two_base, 123, work / "hpt" / "123")
    config = write_config(work / "models.config",
                          [("half_plus_two", work / "hpt", 'version_labels { key: "stable" value: 123 }')])
    (work / "monitoring.config").write_text("prometheus_config { enable: true }")
    (work / "batching.config").write_text("max_batch_size { value: 8 } batch_timeout_micros { value: 500 }")
    grpc_port = free_port()
    process = ServerProcess(
        f"--model_config_file={config}", f"--port={grpc_port}", "--enable_batching",
        f"--batching_parameters_file={work / 'batching.config'}",
        f"--monitoring_config_file={work / 'monitoring.config'}", f"--rest_api_max_body_bytes={MAX_BODY_BYTES}",
        "--allow_version_labels_for_unavailable_models", log_dir=work)
    process.wait_available("half_plus_two")
    return process, f"127.0.0.1:{grpc_port}"


# -- sending ------------------------------------------------------------------------------------------------------

def send_rest(url: str, case: RestCase, timeout_s: float = 30) -> tuple[int, str, bytes]:
    """(status, content type, body) of one request on a connection of its own; raw bytes on the wire, so paths that
    are not UTF-8 get through as sent. Status 0: the connection closed without an answer."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    length = len(case.body) if case.length is None else case.length
    head = [case.method.encode() + b" " + case.path + b" HTTP/1.1", f"Host: {host}:{port}".encode(),
            b"Connection: close", f"Content-Length: {length}".encode(),
            *(k.encode() + b": " + (v if isinstance(v, bytes) else v.encode()) for k, v in case.headers.items())]
    received = b""
    try:
        sock = socket.create_connection((host, int(port)), timeout=timeout_s)
    except ConnectionRefusedError:
        return 0, "", b""
    with sock:
        try:
            sock.sendall(b"\r\n".join(head) + b"\r\n\r\n" + case.body)
        except (BrokenPipeError, ConnectionResetError):  # answered (413) before the whole body was sent
            pass
        try:
            while chunk := sock.recv(1 << 16):
                received += chunk
        except ConnectionResetError:
            pass
    header, _, body = received.partition(b"\r\n\r\n")
    while header.startswith(b"HTTP/1.1 100 "):  # an interim answer to Expect: 100-continue; the final one follows
        header, _, body = body.partition(b"\r\n\r\n")
    lines = header.decode("latin-1").split("\r\n")
    if not lines[0].startswith("HTTP/"):
        return 0, "", received
    content_type = next((line.split(":", 1)[1].strip() for line in lines[1:]
                         if line.lower().startswith("content-type:")), "")
    return int(lines[0].split()[1]), content_type, body


def send_grpc(channel: grpc.Channel, case: GrpcCase, timeout_s: float = 30) -> tuple[str, str]:
    """(status code name, details) of one call with the case's bytes as the request."""
    try:
        channel.unary_unary(case.method)(case.request, timeout=timeout_s)
        return "OK", ""
    except grpc.RpcError as e:
        return e.code().name, e.details() or ""


def rest_problem(case: RestCase, status: int, content_type: str, body: bytes) -> str | None:
    """What is wrong with a REST answer to a fuzzed request; None when it is an answer or a client error."""
    if not 200 <= status < 500:
        return f"HTTP {status}" if status else "no answer"
    if status == 400 and not body and beyond_int64_version(case.path):
        return None  # TF Serving's answer: ParseModelInfo's error, returned before a body is written
    if status >= 400 and content_type == "application/json" and case.method != "HEAD":  # HEAD: headers only
        try:
            if not json.loads(body).get("error"):
                return "an error answer without an 'error' message"
        except (ValueError, AttributeError):
            return "an error answer that is not a JSON object"
    return None


def beyond_int64_version(path: bytes) -> bool:
    """Whether the path names a version (/versions/<digits>) that does not fit in int64."""
    found = re.search(rb"/versions/(\d+)", path, re.IGNORECASE)
    return found is not None and (len(found[1].lstrip(b"0")) > 19 or int(found[1]) > 2**63 - 1)


def grpc_problem(code: str) -> str | None:
    return None if code == "OK" or code in CLIENT_ERRORS else code


# -- the run ------------------------------------------------------------------------------------------------------

def run(process: ServerProcess, target: str, seed: int, cases: int, warmup: int = 200,
        log: Callable[[str], None] = lambda line: None) -> dict:
    """Send cases 0..cases-1 of `seed` (up to the one the server dies on, if it does); tally answers per category, keep
    the first problems, and sample the server's RSS at the start, after the first `warmup` cases (the baseline:
    buffers, caches and code paths warmed), at its peak (every 100 cases) and after the last case."""
    tally: dict[str, Counter] = {name: Counter() for name in CATEGORIES}
    problems: list[dict] = []  # the first 20
    bad_answers = 0
    rss = {"start": process.rss_mib()}
    started = time.perf_counter()
    options = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
    with grpc.insecure_channel(target, options=options) as channel:
        for index in range(cases):
            category, case = make_case(seed, index)
            if isinstance(case, RestCase):
                status, content_type, body = send_rest(process.url, case)
                answer, problem = str(status), rest_problem(case, status, content_type, body)
            else:
                answer, details = send_grpc(channel, case)
                problem, body = grpc_problem(answer), details.encode()
            tally[category][answer] += 1
            bad_answers += problem is not None
            if problem is not None and len(problems) < 20:
                problems.append({"category": category, "seed": seed, "index": index, "problem": problem,
                                 "request": repr(case)[:300], "answer": body[:300].decode("utf-8", "replace")})
            if process.process.poll() is not None:  # it crashed: the cases after this one would say nothing
                problems.append({"category": category, "seed": seed, "index": index, "request": repr(case)[:300],
                                 "problem": f"the server exited with {process.process.returncode} on this case"})
                break
            if index + 1 == min(warmup, cases):
                rss["baseline"] = process.rss_mib()
            if index % 100 == 0:
                rss["peak"] = max(rss.get("peak", 0.0), process.rss_mib())
                log(f"{index}/{cases} cases, {time.perf_counter() - started:.0f} s, RSS {rss['peak']:.0f} MiB peak")
    rss["after"] = process.rss_mib()
    rss["peak"] = max(rss["peak"], rss["after"])
    seen = Counter()
    for answers in tally.values():
        seen.update(answers)
    return {"seed": seed, "cases": sum(seen.values()), "seconds": round(time.perf_counter() - started, 1),
            "http_5xx": sum(n for answer, n in seen.items() if answer.isdigit() and int(answer) >= 500),
            "no_answer": seen["0"], "grpc_unknown": seen["UNKNOWN"], "grpc_internal": seen["INTERNAL"],
            "bad_answers": bad_answers,
            "rss_mib": {k: round(v, 1) for k, v in rss.items()}, "alive": process.process.poll() is None,
            "by_category": {name: dict(sorted(answers.items())) for name, answers in tally.items()},
            "problems": problems}


def make_case(seed: int, index: int) -> tuple[str, RestCase | GrpcCase]:
    """(category, case) number `index` of `seed`."""
    category = list(CATEGORIES)[index % len(CATEGORIES)]
    return category, CATEGORIES[category](random.Random(f"{seed}:{index}"))


# -- building blocks ----------------------------------------------------------------------------------------------

PREDICT_PATHS = [f"{HPT}:predict", f"{HPT}/versions/123:predict", f"{HPT}/labels/stable:predict"]
VALID_BODIES = {  # path suffix -> bodies the server answers 200; mutations start from them
    "predict": ['{"instances": [[1.0], [2.0]]}', '{"inputs": {"x": [[3.0]]}}', '{"instances": [{"x": [1.5]}]}',
                '{"signature_name": "serving_default", "inputs": [[1.0]]}'],
    "regress": ['{"signature_name": "regress_x_to_y", "examples": [{"x": 80.0}]}',
                '{"signature_name": "regress_x_to_y2", "context": {"x": 4.0}, "examples": [{}, {"x": 2.0}]}'],
    "classify": ['{"signature_name": "classify_x_to_y", "examples": [{"x": 20.0}]}'],
}
SIGNATURES = ["", "serving_default", "regress_x_to_y", "regress_x_to_y2", "regress_x2_to_y3", "classify_x_to_y",
              "nope", "\u00e9\u00e8", "\U0001F600"]
INPUT_NAMES = ["x", "inputs", "x2", "y", "", "\u00e9", "X"]


@cache
def example_bytes() -> bytes:
    """A serialized tf.Example half_plus_two's example signatures accept."""
    return example_from_json({"x": 1.0}).SerializeToString()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def json_text(value) -> str:
    return json.dumps(value, ensure_ascii=False)


def random_json(rng: random.Random, depth: int = 3):
    """Any JSON value, small: the wrong type for whatever key it lands on, most of the time."""
    kind = rng.randrange(9 if depth > 0 else 6)
    if kind == 0:
        return None
    if kind == 1:
        return rng.random() < 0.5
    if kind == 2:
        return rng.choice([0, -1, 1, 2**31, 2**63 - 1, -2**63, 2**64 - 1])
    if kind == 3:
        return rng.choice([0.0, -0.0, 1.5, 1e308, -1e-308, 3.4028236e38])
    if kind == 4:
        return rng.choice(["", "a", "x", "\u00e9", "\U0001F600", "1.0", "NaN", "b64", " " * 5])
    if kind == 5:
        return rng.choice([[], {}, [[]], {"b64": ""}])
    if kind == 6:
        return [random_json(rng, depth - 1) for _ in range(rng.randint(1, 3))]
    if kind == 7:
        return {rng.choice(["x", "b64", "inputs", "instances", "", "\u00e9"]): random_json(rng, depth - 1)
                for _ in range(rng.randint(1, 3))}
    return {"b64": random_json(rng, depth - 1)}


def rest_post(rng: random.Random, api: str, body: str | bytes, headers: dict[str, str] | None = None) -> RestCase:
    path = rng.choice(PREDICT_PATHS) if api == "predict" else f"{HPT}:{api}"
    return RestCase("POST", path.encode(), body.encode() if isinstance(body, str) else body, headers or {})


def tensor(dtype: int, dims: list[int], **content) -> tensor_pb2.TensorProto:
    proto = tensor_pb2.TensorProto(dtype=dtype, **content)
    for size in dims:
        proto.tensor_shape.dim.add(size=size)
    return proto


def predict_request(inputs: dict[str, tensor_pb2.TensorProto], signature: str = "") -> GrpcCase:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "half_plus_two"
    request.model_spec.signature_name = signature
    for name, proto in inputs.items():
        request.inputs[name].CopyFrom(proto)
    return GrpcCase(PREDICTION + "Predict", request.SerializeToString())


@cache
def valid_grpc_requests() -> list[GrpcCase]:
    """One request per RPC (reload aside) that the server answers OK; mutations start from them."""
    predict = predict_pb2.PredictRequest()
    predict.model_spec.name = "half_plus_two"
    predict.inputs["x"].CopyFrom(tensor(types_pb2.DT_FLOAT, [1, 1], float_val=[1.0]))
    cases = [GrpcCase(PREDICTION + "Predict", predict.SerializeToString())]
    for rpc, message, signature in [("Classify", classification_pb2.ClassificationRequest(), "classify_x_to_y"),
                                    ("Regress", regression_pb2.RegressionRequest(), "regress_x_to_y")]:
        message.model_spec.name, message.model_spec.signature_name = "half_plus_two", signature
        message.input.example_list.examples.add().ParseFromString(example_bytes())
        cases.append(GrpcCase(PREDICTION + rpc, message.SerializeToString()))
    multi = inference_pb2.MultiInferenceRequest()
    task = multi.tasks.add(method_name="tensorflow/serving/regress")
    task.model_spec.name, task.model_spec.signature_name = "half_plus_two", "regress_x_to_y"
    multi.input.example_list.examples.add().ParseFromString(example_bytes())
    metadata = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    metadata.model_spec.name = "half_plus_two"
    status = get_model_status_pb2.GetModelStatusRequest()
    status.model_spec.name = "half_plus_two"
    return cases + [GrpcCase(PREDICTION + "MultiInference", multi.SerializeToString()),
                    GrpcCase(PREDICTION + "GetModelMetadata", metadata.SerializeToString()),
                    GrpcCase(MODEL_SERVICE + "GetModelStatus", status.SerializeToString())]


def mutate(rng: random.Random, data: bytes, inserts: list[bytes]) -> bytes:
    """1 to 4 random byte edits: overwrite, insert one of `inserts`, delete a few."""
    data = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        action, position = rng.random(), rng.randrange(len(data) + 1)
        if action < 0.4 and data:
            data[min(position, len(data) - 1)] = rng.randrange(256)
        elif action < 0.7:
            data[position:position] = rng.choice(inserts)
        else:
            del data[position:position + rng.randint(1, 5)]
    return bytes(data)


def nested(depth: int, leaf: str, opener: str) -> str:
    closer = "]" if opener == "[" else "}"
    return opener * depth + leaf + closer * depth


# -- REST categories ----------------------------------------------------------------------------------------------

def rest_mutated_body(rng: random.Random) -> RestCase:
    api = rng.choice(list(VALID_BODIES))
    body = mutate(rng, rng.choice(VALID_BODIES[api]).encode(),
                  [b"[", b"]", b"{", b"}", b'"', b",", b":", b"1e999", b"\x00", b"-", b"\xff", b"NaN", b"null"])
    return rest_post(rng, api, body)


def rest_deep_nesting(rng: random.Random) -> RestCase:
    depth = rng.choice([63, 64, 65, 70, 200, 254, 255, 256, 900, 1023, 1024, 1025, 5000, 100_000])
    deep = nested(depth, rng.choice(["1.0", "", '"a"', '{"b64": "YQ=="}']), rng.choice(["[", '{"a": ', '[{"x": ']))
    api, body = rng.choice([
        ("predict", '{"instances": ' + deep + "}"), ("predict", '{"inputs": ' + deep + "}"),
        ("predict", '{"instances": [{"x": ' + deep + "}]}"), ("predict", '{"instances": [1.0], "extra": ' + deep + "}"),
        ("predict", '{"instances": ' + deep + ', "inputs": [1.0]}'),  # an error message quoting the whole document
        ("predict", '{"signature_name": ' + deep + ', "instances": [1.0]}'),
        ("regress", '{"signature_name": "regress_x_to_y", "examples": [{"x": ' + deep + "}]}"),
        ("regress", '{"signature_name": "regress_x_to_y", "context": ' + deep + ', "examples": [{}]}'),
        ("classify", '{"examples": ' + deep + "}"),
    ])
    return rest_post(rng, api, body)


HUGE_NUMBERS = ["9" * 19, "9" * 20, "9" * 21, "1" + "0" * 308, "1" + "0" * 309, "9" * 4300, "9" * 4301, "9" * 20_000,
                "-" + "9" * 5000, "1e999", "-1e999", "1e-999", "1" + "0" * 400 + ".5", "0." + "0" * 5000 + "1",
                "18446744073709551615", "18446744073709551616", "-9223372036854775808", "-9223372036854775809",
                "4.9e-325", "1.7976931348623157e308", "1.7976931348623159e308", "3.4028236e38", "-0", "-0.0", "1E400"]


def rest_huge_numbers(rng: random.Random) -> RestCase:
    number = rng.choice(HUGE_NUMBERS)
    api, body = rng.choice([
        ("predict", '{"instances": [' + number + "]}"), ("predict", '{"instances": [[1.0], [' + number + "]]}"),
        ("predict", '{"inputs": {"x": [[' + number + "]]}}"), ("predict", '{"inputs": ' + number + "}"),
        ("predict", '{"signature_name": ' + number + ', "instances": [1.0]}'),
        ("predict", '{"signature_name": "regress_x2_to_y3", "instances": [[' + number + "]]}"),
        ("regress", '{"signature_name": "regress_x_to_y", "examples": [{"x": ' + number + "}]}"),
        ("regress", '{"signature_name": "regress_x_to_y", "examples": [{"x": [' + number + ", 1]}]}"),
        ("classify", '{"signature_name": "classify_x_to_y", "context": {"y": ' + number + '}, "examples": [{}]}'),
    ])
    if rng.random() < 0.1:  # and in the URL
        return RestCase("POST", f"{HPT}/versions/{number}:predict".encode(), b'{"instances": [1.0]}')
    return rest_post(rng, api, body)


NON_NUMBERS = ["NaN", "-NaN", "Infinity", "-Infinity", "+Infinity", "nan", "inf", "-inf", "Inf", "NAN", "infinity",
               "Infinit", "NaNa", "-", "+1", ".5", "01", "1.", "1e", "0x10", "1_000", "\u221e"]


def rest_nan_tokens(rng: random.Random) -> RestCase:
    token = rng.choice(NON_NUMBERS)
    api, body = rng.choice([
        ("predict", '{"instances": [' + token + "]}"), ("predict", '{"instances": [[1.0], [' + token + "]]}"),
        ("predict", '{"inputs": {"x": [[' + token + "], [2.0]]}}"), ("predict", '{"inputs": ' + token + "}"),
        ("predict", '{"instances": [' + token + ", " + token + "]}"),
        ("regress", '{"signature_name": "regress_x_to_y", "examples": [{"x": ' + token + "}]}"),
        ("classify", '{"signature_name": "classify_x_to_y", "context": {"x": ' + token + '}, "examples": [{}]}'),
    ])
    return rest_post(rng, api, body)


def rest_wrong_types(rng: random.Random) -> RestCase:
    api = rng.choice(list(VALID_BODIES))
    if rng.random() < 0.15:
        return rest_post(rng, api, json_text(random_json(rng)))  # a document that is not an object, or any object
    document = json.loads(rng.choice(VALID_BODIES[api]))
    key = rng.choice(["signature_name", "instances", "inputs", "examples", "context", "row"])
    value = random_json(rng)
    rows = document.get("instances", document.get("examples"))
    if key == "row" and rows is not None:  # one more instance or example, of the wrong type
        rows.append({"x": value} if isinstance(rows[0], dict) else value)
    else:
        document[key] = value
    return rest_post(rng, api, json_text(document))


BAD_BASE64 = ["!!!", "a", "ab=", "abc==", "a===", "====", "YQ", "YQ=", "YQ.", " Y Q = = ", "\u00e9", "", "YWJj\n",
              "YW Jj", "YWJj=", "Y=Q=", "YQ==YQ==", "_-_-", "YQ==\u0000", "Zm9v" * 1000 + "!"]


def rest_base64(rng: random.Random) -> RestCase:
    data = rng.choice([
        rng.choice(BAD_BASE64), rng.choice(BAD_BASE64), b64(rng.randbytes(rng.randrange(64))),
        b64(example_bytes()[: rng.randrange(len(example_bytes()))]), b64(b"\xff\xfe" * rng.randint(1, 8)),
        b64(example_bytes()),
    ])
    value = rng.choice([{"b64": data}, {"b64": data}, {"b64": data, "extra": 1}, {"b64": 1}, {"b64": None},
                        {"b64": [data]}, {"B64": data}])
    api, body = rng.choice([
        ("predict", {"signature_name": "regress_x_to_y", "instances": [value]}),
        ("predict", {"signature_name": "classify_x_to_y", "inputs": {"inputs": [value, value]}}),
        ("predict", {"signature_name": "regress_x_to_y", "inputs": [[value]]}),
        ("predict", {"instances": [value]}), ("predict", {"inputs": {"x": [[value]]}}),
        ("regress", {"signature_name": "regress_x_to_y", "examples": [{"x": value}]}),
        ("regress", {"signature_name": "regress_x_to_y", "examples": [{"x": [value, "a"]}]}),
        ("classify", {"signature_name": "classify_x_to_y", "context": {"x": value}, "examples": [{}]}),
    ])
    return rest_post(rng, api, json_text(body))


BAD_UTF8 = [b"\xff", b"\xfe", b"\xc0\xaf", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xe2\x82", b"\x80", b"\x00",
            b"\xf8\x88\x80\x80\x80", b"\xc3", b"\xef\xbb\xbf"]
BAD_ESCAPES = ["\\ud800", "\\udc00\\ud800", "\\u0000", "\\udbff\\udfff", "\\uD83D", "\\u00", "\\x41", "\\"]


def rest_utf8(rng: random.Random) -> RestCase:
    junk = rng.choice(BAD_UTF8) * rng.randint(1, 3)
    escape = rng.choice(BAD_ESCAPES).encode()
    api, body = rng.choice([
        ("predict", b'{"signature_name": "' + junk + b'", "instances": [1.0]}'),
        ("predict", b'{"instances": ["' + junk + b'"]}'), ("predict", b'{"' + junk + b'": [1.0]}'),
        ("predict", b'{"inputs": {"x' + junk + b'": [[1.0]]}}'),
        ("predict", b'{"signature_name": "regress_x_to_y", "instances": ["' + junk + b'"]}'),
        ("predict", b'{"signature_name": "regress_x_to_y", "instances": ["' + escape + b'"]}'),
        ("predict", b'{"signature_name": "' + escape + b'", "instances": [1.0]}'),
        ("regress", b'{"signature_name": "regress_x_to_y", "examples": [{"x": "' + junk + b'"}]}'),
        ("regress", b'{"signature_name": "regress_x_to_y", "examples": [{"' + junk + b'": 1.0, "x": 1.0}]}'),
        ("classify", b'{"signature_name": "classify_x_to_y", "examples": [{"x": ["' + escape + b'"]}]}'),
        ("predict", junk + b'{"instances": [1.0]}'), ("predict", b'{"instances": [1.0]}' + junk),
        ("predict", '{"instances": [1.0]}'.encode("utf-16")), ("predict", '{"instances": [1.0]}'.encode("utf-32")),
    ])
    return rest_post(rng, api, body)


def rest_shapes(rng: random.Random) -> RestCase:
    n = rng.choice([0, 1, 2, 1000, 10_000, 100_000, 300_000, 600_000])  # 600,000 zeros: over the 1 MB limit
    row = "[" + ", ".join(["0"] * n) + "]"
    api, body = rng.choice([
        ("predict", '{"instances": ' + row + "}"), ("predict", '{"instances": [' + row + "]}"),
        ("predict", '{"inputs": {"x": [' + row + ", " + row + "]}}"),
        ("predict", '{"instances": [[1.0], [1.0, 2.0]]}'), ("predict", '{"instances": [[[1.0]], [2.0]]}'),
        ("predict", '{"instances": [[]]}'), ("predict", '{"instances": [[], []]}'),
        ("predict", '{"instances": [[[]]]}'),
        ("predict", '{"inputs": []}'), ("predict", '{"inputs": [[]]}'), ("predict", '{"inputs": 1.0}'),
        ("predict", '{"instances": [{"x": [1.0]}, {"x": [1.0, 2.0]}]}'),
        ("predict", '{"instances": [{"x": [1.0]}, {"y": [1.0]}]}'),
        ("predict", '{"instances": [{"x": [1.0]}, [1.0]]}'), ("predict", '{"instances": [[1.0], {"x": [1.0]}]}'),
        ("regress", '{"signature_name": "regress_x_to_y", "examples": [' + ", ".join(['{"x": 1.0}'] * min(n, 50_000))
         + "]}"),
        ("regress", '{"signature_name": "regress_x_to_y", "examples": [{"x": ' + row + "}]}"),
    ])
    return rest_post(rng, api, body)


NAMES = ["half_plus_two", "HALF_PLUS_TWO", "\u00e9", "\u6a21\u578b", "\U0001F600", "\u0645\u0648\u062f\u064a\u0644",
         "a b", "..", ".", "x/../half_plus_two", "%00", "%ff", "%FF%FE", "%2F", "%C3%A9", "%ZZ", "%", "%E2%82",
         "\u0000", "\u00b2", "\u0663", "a" * 1000, "a" * 5000, "b" * 8000, "c" * 20_000, "\u00e9" * 3000]
VERSIONS = ["0", "1", "123", "124", "-1", "99999999999999999999999", "9223372036854775807", "9223372036854775808",
            "\u0661\u0662\u0663", "\u00b2", "1e3", "", "0123", "123 ", "\uff11\uff12\uff13"]


def rest_names(rng: random.Random) -> RestCase:
    name, label, version = rng.choice(NAMES), rng.choice(NAMES), rng.choice(VERSIONS)
    suffix = rng.choice([":predict", ":regress", ":classify", "", "/metadata", ":PREDICT", ":predict:predict", ":"])
    path = rng.choice([f"/v1/models/{name}{suffix}", f"/v1/models/{name}/versions/{version}{suffix}",
                       f"/v1/models/half_plus_two/labels/{label}{suffix}", f"/v1/models/{name}/labels/{label}{suffix}",
                       f"/v1/models/half_plus_two/versions/{version}/labels/{label}{suffix}", f"/V1/MODELS/{name}",
                       f"/v1/{name}", f"/{name}", f"/v1/models/{name}?{label}", f"/v1/models/{name}#{label}"])
    encoding = rng.random()
    if encoding < 0.5:
        raw = "".join(c if c in string.ascii_letters + string.digits + "/:%_.-?#" else
                      "".join(f"%{b:02X}" for b in c.encode("utf-8")) for c in path).encode()
    elif encoding < 0.8:
        raw = path.encode("utf-8")
    else:
        raw = path.encode("utf-8").replace(b"a", rng.choice(BAD_UTF8), 1)
    method = "POST" if suffix.startswith(":") else "GET"
    method = rng.choice([method] * 6 + ["PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "TRACE"])
    return RestCase(method, raw, b'{"instances": [1.0]}' if method != "GET" else b"")


@cache
def gzip_bomb() -> bytes:
    """A valid gzip body that decompresses to twice the body limit."""
    return gzip.compress(b'{"instances": [' + b"1.0, " * (2 * MAX_BODY_BYTES // 5) + b"1.0]}", 9)


def rest_content_encoding(rng: random.Random) -> RestCase:
    valid = rng.choice(VALID_BODIES["predict"]).encode()
    encoding = rng.choice(["gzip", "deflate", "br", "zstd", "identity", "gzip, gzip", "GZIP", "x-gzip", "compress",
                           "gzip;q=1", "", "\u00e9".encode().decode("latin-1")])
    body = rng.choice([
        valid, rng.randbytes(rng.randrange(1, 200)), gzip.compress(valid)[: rng.randrange(1, 30)],
        gzip.compress(valid)[:-4] + b"\0\0\0\0", gzip.compress(rng.randbytes(100)), gzip.compress(b""),
        zlib.compress(valid), zlib.compress(valid)[2:], gzip.compress(valid) + b"trailing", gzip.compress(valid),
        gzip_bomb(), gzip.compress(gzip.compress(valid)),
    ])
    return rest_post(rng, "predict", body, {"Content-Encoding": encoding})


def rest_headers(rng: random.Random) -> RestCase:
    """What issue #27's clients sent in headers: control characters and bytes that are not UTF-8 in a bearer token
    (a CRLF token file), header blocks past the 64 KiB cap, a Content-Length past the body limit (with Expect:
    100-continue or not), both framings at once, encodings the server does not inflate."""
    path = rng.choice([f"{HPT}:predict", HPT, f"{HPT}/metadata", "/v1/foo"])
    method = "POST" if path.endswith(("predict", "foo")) else "GET"
    body = rng.choice(VALID_BODIES["predict"]).encode() if method == "POST" else b""
    kind = rng.randrange(6)
    if kind == 0:
        token = rng.choice([b"tok\rjunk", b"\xff\xfe" + b"t" * 20, b"a\x00b", b"x" * 9000, b"\x7f", b"\xc3\xa9" * 10])
        return RestCase(method, path.encode(), body, {"Authorization": b"Bearer " + token})
    if kind == 1:
        lines = rng.choice([10, 60, 120])
        return RestCase(method, path.encode(), body, {f"X-Pad-{i}": "p" * rng.choice([100, 1000, 8000])
                                                      for i in range(lines)})
    if kind == 2:
        return RestCase(method, path.encode(), body, {"X-" + "n" * rng.choice([100, 9000]): "v"})
    if kind == 3:
        return RestCase(method, path.encode(), body[:rng.randrange(len(body) + 1)],
                        {"Expect": "100-continue"} if rng.random() < 0.5 else {},
                        length=rng.choice([MAX_BODY_BYTES + 1, 10**12, 2**63 - 1]))
    if kind == 4:
        return RestCase(method, path.encode(), body, {"Transfer-Encoding": rng.choice(["chunked", "gzip, chunked"])})
    return RestCase(method, path.encode(), body, {"Content-Encoding": rng.choice(["br", "zstd", "compress", "gzip"]),
                                                  "Expect": rng.choice(["100-continue", "nonsense"])})


def rest_unread_bodies(rng: random.Random) -> RestCase:
    """Bodies the server must not read: to CORS preflights, paths no route matches, status, metadata and metrics,
    gzip bombs among them, and bodies announced longer than sent (waiting for them would hold the connection)."""
    method, path = rng.choice([("OPTIONS", f"{HPT}:predict"), ("OPTIONS", HPT), ("POST", "/v1/foo"),
                               ("POST", f"{HPT}:explain"), ("GET", HPT), ("PUT", HPT), ("DELETE", f"{HPT}/metadata"),
                               ("POST", "/monitoring/prometheus/metrics"), ("POST", "/nowhere")])
    body = rng.choice([gzip_bomb(), rng.randbytes(rng.randrange(1, 5000)),
                       rng.choice(VALID_BODIES["predict"]).encode(), b""])
    headers = {"Content-Encoding": "gzip"} if body == gzip_bomb() else {}
    if rng.random() < 0.5:
        headers["Origin"] = rng.choice(["https://example.com", "null", ""])
    longer = len(body) + rng.randrange(1, 100_000) if rng.random() < 0.3 else None
    return RestCase(method, path.encode(), body, headers, length=longer)


def rest_examples(rng: random.Random) -> RestCase:
    signature = rng.choice(["regress_x_to_y", "regress_x_to_y2", "classify_x_to_y", "serving_default",
                            "regress_x2_to_y3", "nope", ""])
    feature = rng.choice([1.0, 1, -1, 2**63 - 1, 2**63, 2**64 - 1, -2**63, True, "a", "", [], [1.0, 2.0], [1, 1.0],
                          [1, "a"], [[1.0]], None, {}, {"x": 1}, {"b64": "YQ=="}, [{"b64": "YQ=="}, "a"], [None]])
    example = rng.choice([{"x": feature}, {"y": feature}, {"x": 1.0, "x2": feature}, {}, {"\u00e9": feature}])
    examples = rng.choice([[example], [example, {"x": 1.0}], example, [], "examples", None, [[example]], [1.0],
                           [example] * 100])
    document = {"signature_name": signature, "examples": examples}
    if rng.random() < 0.3:
        document["context"] = rng.choice([example, [example], "context", None, {"x": [1.0, 2.0]}])
    if rng.random() < 0.1:
        del document["examples"]
    return rest_post(rng, rng.choice(["classify", "regress"]), json_text(document))


# -- gRPC categories ----------------------------------------------------------------------------------------------

DATA_TYPES = list(types_pb2.DataType.values()) + [99, 100, 199, 200, 999, 2**31 - 1, -1]
TYPED_FIELDS = ["float_val", "double_val", "int_val", "int64_val", "string_val", "bool_val", "half_val",
                "scomplex_val", "dcomplex_val", "uint32_val", "uint64_val"]


def typed_values(rng: random.Random, name: str, count: int) -> list:
    if name == "string_val":
        return [rng.randbytes(rng.randrange(8)) for _ in range(count)]
    if name == "bool_val":
        return [rng.random() < 0.5 for _ in range(count)]
    if name in ("float_val", "double_val", "scomplex_val", "dcomplex_val"):
        return [rng.choice([0.0, 1.0, float("nan"), float("inf"), -1e38, 1e-45]) for _ in range(count)]
    if name in ("uint32_val", "uint64_val"):
        return [rng.choice([0, 1, 65535, 65536, 2**32 - 1]) for _ in range(count)]
    return [rng.choice([0, 1, -1, 2**31 - 1, -2**31]) for _ in range(count)]


def random_content(rng: random.Random, proto: tensor_pb2.TensorProto, elements: int) -> None:
    """Fill `proto` with content that may or may not fit its dtype and shape."""
    count = rng.choice([0, 1, max(elements - 1, 0), elements, elements + 1, 2 * elements + 3])
    if rng.random() < 0.4:
        width = rng.choice([1, 2, 4, 8, 16])
        proto.tensor_content = rng.randbytes(min(rng.choice([count * width, count * width + 1, count]), 1 << 16))
    for name in rng.sample(TYPED_FIELDS, rng.choice([0, 1, 1, 1, 2])):
        getattr(proto, name).extend(typed_values(rng, name, min(count, 10_000)))


def grpc_tensor_dtype(rng: random.Random) -> GrpcCase:
    dims = rng.choice([[1, 1], [1], [], [2, 1], [0, 1]])
    proto = tensor(rng.choice(DATA_TYPES), dims)
    random_content(rng, proto, math.prod(dims))
    return predict_request({rng.choice(INPUT_NAMES[:2]): proto}, rng.choice(SIGNATURES[:3]))


def grpc_tensor_content(rng: random.Random) -> GrpcCase:
    dtype = rng.choice([types_pb2.DT_FLOAT, types_pb2.DT_DOUBLE, types_pb2.DT_INT32, types_pb2.DT_INT64,
                        types_pb2.DT_HALF, types_pb2.DT_BFLOAT16, types_pb2.DT_BOOL, types_pb2.DT_COMPLEX64,
                        types_pb2.DT_UINT8, types_pb2.DT_QINT8, types_pb2.DT_STRING, types_pb2.DT_FLOAT8_E4M3FN])
    dims = [rng.choice([1, 2, 3, 7]), 1]
    proto = tensor(dtype, dims)
    random_content(rng, proto, dims[0])
    return predict_request({"x": proto}, rng.choice(SIGNATURES[:3]))


# Not 2**26, the element cap itself: decoding one such tensor holds the event loop 1.5-4.6 s and takes 0.5-1 GB
HUGE_DIMS = [-1, -2, -2**63, 0, 1, 2**20, 2**26 + 1, 2**31, 2**40, 2**62, 2**63 - 1]


def grpc_tensor_shape(rng: random.Random) -> GrpcCase:
    if rng.random() < 0.2:
        dims = [1] * rng.choice([33, 64, 65, 254, 255, 256, 1000])
    else:
        dims = [rng.choice(HUGE_DIMS) for _ in range(rng.randint(1, 4))]
    proto = tensor(rng.choice([types_pb2.DT_FLOAT, types_pb2.DT_STRING, types_pb2.DT_INT64]), dims)
    proto.tensor_shape.unknown_rank = rng.random() < 0.1
    random_content(rng, proto, 1)
    return predict_request({rng.choice(["x", "inputs"]): proto}, rng.choice(SIGNATURES[:3]))


def grpc_declarations(rng: random.Random) -> GrpcCase:
    """Tensors that carry one value (or none) and declare many: TF fills the shape with the last one, so a 41-byte
    request declared 256 MiB. Within --grpc_max_tensor_bytes they are decoded; past it, refused unexpanded."""
    dtype = rng.choice([types_pb2.DT_FLOAT, types_pb2.DT_STRING, types_pb2.DT_INT64, types_pb2.DT_DOUBLE,
                        types_pb2.DT_HALF, types_pb2.DT_BOOL])
    elements = rng.choice([2**10, 2**16, 2**20, 2**24 + 1, 2**26 - 1, 2**31 - 1, 2**40] if dtype != types_pb2.DT_STRING
                          else [2**10, 2**16, 2**21, 2**26 - 1, 2**40])
    dims = rng.choice([[elements], [elements, 1], [1, elements]])
    content = {"string_val": [rng.choice([b"", b"a", b"x" * 1000, example_bytes()])]} if dtype == types_pb2.DT_STRING \
        else {"float_val": [1.0]} if dtype == types_pb2.DT_FLOAT else {}
    if rng.random() < 0.2:
        content = {}  # no value: TF fills zeros
    signature, name = rng.choice([("", "x"), ("regress_x_to_y", "inputs"), ("", "inputs")])
    return predict_request({name: tensor(dtype, dims, **content)}, signature)


def grpc_string_tensor(rng: random.Random) -> GrpcCase:
    count = rng.choice([0, 1, 2, 3, 100, 10_000])
    values = rng.choice([
        [rng.choice(BAD_UTF8) * rng.randint(1, 4) for _ in range(count)], [rng.randbytes(20) for _ in range(count)],
        [example_bytes()[: rng.randrange(len(example_bytes()) + 1)] for _ in range(count)], [b""] * count,
        [example_bytes() + rng.choice(BAD_UTF8)] * count, ["\u00e9\U0001F600".encode()] * count,
    ])
    dims = rng.choice([[count], [count, 1], [max(count - 1, 0)], [count + 1], [], [1, count]])
    proto = tensor(types_pb2.DT_STRING, dims, string_val=values)
    if rng.random() < 0.1:
        proto.tensor_content = b"".join(values)[:1000]
    signature = rng.choice(["regress_x_to_y", "classify_x_to_y", "regress_x_to_y2", "", "regress_x2_to_y3"])
    return predict_request({rng.choice(["inputs", "inputs", "x", "x2"]): proto}, signature)


LONG_NAMES = ["", "\u00e9", "\U0001F600" * 10, "a" * 1001, "a" * 100_000, "\u0000", "half_plus_two\u0000",
              "HALF_PLUS_TWO", "half_plus_two ", "../half_plus_two", "\ud7ff", "\uffff", "a" * 1_000_000]


def grpc_model_spec(rng: random.Random) -> GrpcCase:
    base = rng.choice(valid_grpc_requests())  # field 1: the spec (MultiInference: a task, read as one)
    name = rng.choice(LONG_NAMES + ["half_plus_two"] * 3).encode()
    if rng.random() < 0.2:
        name = name[:3] + rng.choice(BAD_UTF8) + name[3:]  # a proto string field that is not UTF-8
    spec = field_bytes(1, name)
    choice = rng.random()
    if choice < 0.3:
        spec += field_bytes(2, varint_field(1, rng.choice([0, 1, 123, 124, 2**63 - 1, 2**64 - 1, 2**63])))
    elif choice < 0.6:
        spec += field_bytes(4, rng.choice(LONG_NAMES + ["stable"]).encode("utf-8", "surrogatepass")[:200_000])
    if rng.random() < 0.5:
        spec += field_bytes(3, rng.choice(SIGNATURES).encode())
    if rng.random() < 0.1:
        spec += field_bytes(2, varint_field(1, 123)) + field_bytes(4, b"stable")  # both in the oneof: last wins
    rest = base.request[2 + base.request[1]:]  # the valid request after its field 1 (all shorter than 128 bytes)
    request = field_bytes(1, spec) + rest
    if base.method.endswith("Predict") and rng.random() < 0.3:
        request += b"".join(field_bytes(3, rng.choice(["y", "", "x", "\u00e9", "y"]).encode())
                            for _ in range(rng.randint(1, 3)))  # output_filter
    return GrpcCase(base.method, request)


def varint(value: int) -> bytes:
    value &= (1 << 64) - 1
    out = bytearray()
    while True:
        out.append((value & 0x7F) | (0x80 if value > 0x7F else 0))
        value >>= 7
        if not value:
            return bytes(out)


def varint_field(number: int, value: int) -> bytes:
    return varint(number << 3) + varint(value)


def field_bytes(number: int, data: bytes) -> bytes:
    """A length-delimited protobuf field: strings, bytes and sub-messages."""
    return varint(number << 3 | 2) + varint(len(data)) + data


def grpc_examples(rng: random.Random) -> GrpcCase:
    examples = []
    for _ in range(rng.choice([0, 1, 2, 5, 1000])):
        example = example_pb2.Example()
        feature = example.features.feature[rng.choice(["x", "x", "x2", "y", "", "\u00e9"])]
        kind = rng.choice(["float_list", "int64_list", "bytes_list", "none"])
        values = {"float_list": [1.0, float("nan")], "int64_list": [2**63 - 1, -1],
                  "bytes_list": [b"\xff", example_bytes()]}.get(kind, [])
        if kind != "none":
            getattr(feature, kind).value.extend(values[: rng.randint(0, 2)])
        examples.append(example)
    signature = rng.choice(["regress_x_to_y", "regress_x_to_y2", "classify_x_to_y", "serving_default",
                            "regress_x2_to_y3", "", "nope"])
    rpc = rng.choice(["Classify", "Regress", "MultiInference"])
    if rpc == "MultiInference":
        message = inference_pb2.MultiInferenceRequest()
        for _ in range(rng.choice([0, 1, 2, 3])):
            method = rng.choice(["regress", "classify", "predict", "", "x"])
            task = message.tasks.add(method_name=f"tensorflow/serving/{method}" if method else "")
            task.model_spec.name = rng.choice(["half_plus_two", "half_plus_two", "other", ""])
            task.model_spec.signature_name = rng.choice([signature, "regress_x_to_y", "classify_x_to_y"])
    else:
        kind = classification_pb2.ClassificationRequest if rpc == "Classify" else regression_pb2.RegressionRequest
        message = kind()
        message.model_spec.name, message.model_spec.signature_name = "half_plus_two", signature
    if rng.random() < 0.5:
        message.input.example_list.examples.extend(examples)
    else:
        with_context = message.input.example_list_with_context
        with_context.examples.extend(examples)
        with_context.context.CopyFrom(rng.choice(examples) if examples else
                                      example_pb2.Example.FromString(example_from_json({"x": "a"}).SerializeToString()))
    return GrpcCase(PREDICTION + rpc, message.SerializeToString())


def grpc_wire(rng: random.Random) -> GrpcCase:
    """Bytes that may not parse as the method's message at all."""
    base = rng.choice(valid_grpc_requests())
    choice = rng.random()
    if choice < 0.2:
        request = rng.randbytes(rng.randrange(1, 64))
    elif choice < 0.7:
        request = mutate(rng, base.request, [b"\xff", b"\x0a", b"\x12\x7f", b"\x80\x80\x80", b"\x00", b"\x08\xff"])
    elif choice < 0.8:
        request = base.request[: rng.randrange(len(base.request))]
    elif choice < 0.9:
        request = base.request + rng.randbytes(rng.randrange(1, 16))
    else:
        request = field_bytes(1, field_bytes(1, b"half" + rng.choice(BAD_UTF8)))  # a spec name that is not UTF-8
    method = base.method if rng.random() < 0.9 else PREDICTION + rng.choice(["Nope", "predict", ""])
    return GrpcCase(method, request)


def grpc_reload(rng: random.Random) -> GrpcCase:
    """ReloadConfigRequests that are all invalid: a valid one would change what the rest of the run talks to."""
    request = model_management_pb2.ReloadConfigRequest()
    models = request.config.model_config_list
    model = models.config.add(name="half_plus_two", base_path="/nonexistent", model_platform="tensorflow")
    problem = rng.choice(["no_base_path", "name", "duplicate", "platform", "label", "label_version", "custom"])
    if problem == "no_base_path":
        model.base_path = ""
    elif problem == "name":
        model.name = rng.choice(["", "..", "a/b", "\u00e9", "a" * 200, "x y", "\U0001F600"])
    elif problem == "duplicate":
        models.config.add().CopyFrom(model)
    elif problem == "platform":
        model.model_platform = rng.choice(["pytorch", "\u00e9", "TENSORFLOW"])
    elif problem == "label":
        model.version_labels[rng.choice(["..", "a/b", "", "\u00e9"])] = 1
    elif problem == "label_version":
        model.version_labels["stable"] = rng.choice([-1, -2**63])
    else:
        request.config.custom_model_config.type_url = "x"
    return GrpcCase(MODEL_SERVICE + "HandleReloadConfigRequest", request.SerializeToString())


def grpc_metadata_and_status(rng: random.Random) -> GrpcCase:
    if rng.random() < 0.5:
        request = get_model_metadata_pb2.GetModelMetadataRequest(
            metadata_field=rng.choice([[], ["signature_def"], ["other"], ["signature_def"] * 3, ["", "\u00e9"]]))
        request.model_spec.name = rng.choice(["half_plus_two", "nope", "", "\u00e9"])
        if rng.random() < 0.3:
            request.model_spec.version.value = rng.choice([-1, 0, 123, 2**63 - 1])
        return GrpcCase(PREDICTION + "GetModelMetadata", request.SerializeToString())
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = rng.choice(["half_plus_two", "nope", "", "\u00e9", "a" * 2000])
    if rng.random() < 0.5:
        request.model_spec.version.value = rng.choice([-1, 0, 123, 2**63 - 1])
    elif rng.random() < 0.5:
        request.model_spec.version_label = rng.choice(["stable", "nope", ""])
    return GrpcCase(MODEL_SERVICE + "GetModelStatus", request.SerializeToString())


CATEGORIES: dict[str, Callable[[random.Random], RestCase | GrpcCase]] = {
    "rest_mutated_body": rest_mutated_body, "rest_deep_nesting": rest_deep_nesting,
    "rest_huge_numbers": rest_huge_numbers, "rest_nan_tokens": rest_nan_tokens, "rest_wrong_types": rest_wrong_types,
    "rest_base64": rest_base64, "rest_utf8": rest_utf8, "rest_shapes": rest_shapes, "rest_names": rest_names,
    "rest_content_encoding": rest_content_encoding, "rest_examples": rest_examples, "rest_headers": rest_headers,
    "rest_unread_bodies": rest_unread_bodies,
    "grpc_tensor_dtype": grpc_tensor_dtype, "grpc_tensor_content": grpc_tensor_content,
    "grpc_tensor_shape": grpc_tensor_shape, "grpc_declarations": grpc_declarations,
    "grpc_string_tensor": grpc_string_tensor,
    "grpc_model_spec": grpc_model_spec, "grpc_examples": grpc_examples, "grpc_wire": grpc_wire,
    "grpc_reload": grpc_reload, "grpc_metadata_and_status": grpc_metadata_and_status,
}
