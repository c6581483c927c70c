"""Hostile clients against a real server (issue #27), at the issue's scale; figures to benchmarks/results/hostile_clients.*

    python benchmarks/hostile_clients.py [--scale 1.0] [--only WORD ...]

One server on 127.0.0.1 as production runs it (tests/serving/hostile.py's start_server: a token, status open with
--auth_allow_status, TLS on both ports, the audit log), default limits but --rest_api_idle_timeout_s 5 (so REST
lifetimes are seconds), its descriptor limit lowered to 1,300 once it runs (as the issue's probe had it). Each
attack runs in turn while a watcher samples the server's RSS (every 20 ms) and makes a status call on another
client's keep-alive connection (every 50 ms); after each: the RSS once the attack's connections are closed, the
open descriptors, whether a fresh authenticated client is served on both ports. Last, SIGTERM with gRPC calls in
flight. The tests (tests/serving/test_hostile.py) assert each fix on a smaller scale. About 2 minutes on 2 vCPUs.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parent / "tests" / "serving"))

import grpc  # noqa: E402
import numpy as np  # noqa: E402
import requests  # noqa: E402
from tensorflow.core.framework import types_pb2  # noqa: E402
from tensorflow_serving.apis import predict_pb2  # noqa: E402

import half_plus_two  # noqa: E402
import hostile  # noqa: E402
from localhost.machine import machine  # noqa: E402
from serving.__main__ import build_parser  # noqa: E402
from serving.codec.deep import LEVEL_COST_BYTES  # noqa: E402
from serving.core import LARGE_REQUEST_BYTES  # noqa: E402
from serving.client import GrpcClient, RestClient, ServingClientError  # noqa: E402
from serving.process import ServerProcess  # noqa: E402

TOKEN = "b" * 24 + "-benchmark-admin"
MODEL = "half_plus_two"
DESCRIPTOR_LIMIT = 1300
IDLE_TIMEOUT_S = 5  # --rest_api_idle_timeout_s for this run (30 by default)
DEFAULTS = build_parser().parse_args([])
TARGET_MB = 50
TARGETS = ("20 gzip bombs", "20 oversized gRPC declarations", "1,000 unfinished OPTIONS",
           "1,500 handshake-less TLS connections")


class Bench:
    def __init__(self, server: ServerProcess):
        self.server = server
        self.session = requests.Session()
        self.auth = {"Authorization": f"Bearer {TOKEN}"}

    def served(self) -> dict:
        """Whether a fresh authenticated client gets an answer now, on each port."""
        answers = {}
        for name, client in (("rest", RestClient(self.server.url, token=TOKEN, ca_cert=self.server.ca, timeout_s=30)),
                             ("grpc", GrpcClient(self.server.grpc_target, token=TOKEN, ca_cert=self.server.ca,
                                                 timeout_s=30))):
            try:
                with client:
                    client.predict(MODEL, np.array([[1.0]], np.float32))
                answers[name] = "OK"
            except ServingClientError as e:
                answers[name] = f"{e.status}"
            except Exception as e:  # a client that gets no answer at all (a timeout)
                answers[name] = type(e).__name__
        return answers

    def run(self, name: str, attack) -> dict:
        """One attack under watch: its answers, then the server's state once its connections are closed."""
        before = self.server.rss_mib()
        watch = hostile.Watch(self.server.process.pid, f"{self.server.url}/v1/models/{MODEL}", self.session,
                              str(self.server.ca))
        started = time.perf_counter()
        with watch:
            detail = attack()
            seconds = time.perf_counter() - started
            time.sleep(1)  # what the server does once the attack's connections are gone
        row = {"attack": name, "seconds": round(seconds, 1), "rss_before_mib": round(before),
               "rss_peak_mib": round(watch.peak_mib), "rss_after_mib": round(self.server.rss_mib()),
               "descriptors_after": hostile.descriptors(self.server.process.pid),
               "worst_status_call_s": round(watch.worst_status_s, 2),
               "status_call_failures": dict(Counter(watch.status_failures)), "served_after": self.served(), **detail}
        print(json.dumps(row), flush=True)
        return row

    def send(self, method: str, path: str, body: bytes, headers: dict, timeout_s: float = 120) -> hostile.Answer:
        return hostile.exchange(self.server.rest_port, hostile.request(method, path, body, headers), self.server.tls,
                                timeout_s)


def gzip_bombs(bench: Bench, n: int) -> dict:
    """300 KB bodies that inflate to 300 MiB: without a token to OPTIONS and to a path no route matches, and with
    one to :predict, in turn."""
    bomb = hostile.gzip_bomb(300 * 2**20)
    cases = [("OPTIONS", f"/v1/models/{MODEL}:predict", {}), ("POST", "/v1/foo", {}),
             ("POST", f"/v1/models/{MODEL}:predict", bench.auth)]
    answers = Counter()
    for i in range(n):
        method, path, headers = cases[i % len(cases)]
        answer = bench.send(method, path, bomb, {"Content-Encoding": "gzip", "Origin": "https://x", **headers})
        answers[f"{method} {path.split('/')[-1]}: {answer.status}"] += 1
    return {"requests": n, "body_bytes": len(bomb), "answers": dict(answers)}


def grpc_declarations(bench: Bench, n: int) -> dict:
    """41-byte Predicts declaring 2^26 - 1 values (floats; strings, to the float input), two at a time."""
    credentials = grpc.ssl_channel_credentials(bench.server.ca.read_bytes())
    answers, seconds = Counter(), []
    with grpc.secure_channel(bench.server.grpc_target, credentials) as channel:
        predict = channel.unary_unary("/tensorflow.serving.PredictionService/Predict",
                                      request_serializer=predict_pb2.PredictRequest.SerializeToString,
                                      response_deserializer=predict_pb2.PredictResponse.FromString)

        def call(dtype: int) -> None:
            started = time.perf_counter()
            try:
                predict(hostile.declaration(dtype, 2**26 - 1), timeout=120,
                        metadata=[("authorization", f"Bearer {TOKEN}")])
                answers["OK"] += 1
            except grpc.RpcError as e:
                answers[e.code().name] += 1
            seconds.append(time.perf_counter() - started)

        for _ in range(n // 2):
            pair = [threading.Thread(target=call, args=(dtype,)) for dtype in (types_pb2.DT_FLOAT, types_pb2.DT_STRING)]
            for thread in pair:
                thread.start()
            for thread in pair:
                thread.join()
    return {"requests": n, "request_bytes": hostile.declaration(types_pb2.DT_FLOAT, 2**26 - 1).ByteSize(),
            "answers": dict(answers), "slowest_answer_s": round(max(seconds), 2)}


def unfinished_options(bench: Bench, n: int) -> dict:
    """OPTIONS without a token, each announcing a 100-byte body and sending 10; meanwhile an authenticated client."""
    head = hostile.request("OPTIONS", f"/v1/models/{MODEL}:predict", b"x" * 100, {"Origin": "https://x"})[:-90]
    held = []
    try:
        for _ in range(n):
            sock = hostile.connect(bench.server.rest_port, bench.server.tls)
            sock.sendall(head)
            held.append(sock)
        time.sleep(0.5)
        return {"connections": n, "served_meanwhile": bench.served()}
    finally:
        for sock in held:
            sock.close()


def silent_connections(bench: Bench, port: int, n: int, lifetime_s: float) -> dict:
    """`n` TCP connections to `port` that send nothing (no TLS ClientHello, no HTTP/2 preface): how many the server
    accepts, what it holds meanwhile, whether others are served, how many it has closed after `lifetime_s`."""
    held = hostile.open_connections(port, n)
    try:
        time.sleep(0.5)
        meanwhile = {"served_meanwhile": bench.served(),
                     "descriptors_meanwhile": hostile.descriptors(bench.server.process.pid)}
        time.sleep(lifetime_s)
        return {"connections": n, "connected": len(held), **meanwhile,
                f"closed_by_server_after_{lifetime_s:.0f}s": hostile.closed_by_server(held)}
    finally:
        for sock in held:
            sock.close()


def oversized_headers(bench: Bench, n: int) -> dict:
    """One request with 100 headers of 8,000 bytes; then `n` connections sending such a header block, unfinished."""
    block = "".join(f"X-Pad-{i}: {'p' * 8000}\r\n" for i in range(100)).encode()
    start = f"GET /v1/models/{MODEL} HTTP/1.1\r\nHost: x\r\n".encode()
    whole = hostile.exchange(bench.server.rest_port, start + block + b"\r\n", bench.server.tls)
    held = []
    try:
        for _ in range(n):
            sock = hostile.connect(bench.server.rest_port, bench.server.tls)
            try:
                sock.sendall(start + block)
            except OSError:  # refused (431) part way
                pass
            held.append(sock)
        time.sleep(0.5)
    finally:
        for sock in held:
            sock.close()
    return {"header_bytes": len(block), "whole_block_answer": whole.status, "unfinished_blocks": n}


def declared_length(bench: Bench) -> dict:
    """Content-Length 999,999,999,999 with Expect: 100-continue, and nothing sent after the headers."""
    head = hostile.request("POST", f"/v1/models/{MODEL}:predict", b"", {**bench.auth, "Expect": "100-continue"})
    answer = hostile.exchange(bench.server.rest_port, head.replace(b"Content-Length: 0", b"Content-Length: 999999999999"),
                              bench.server.tls, timeout_s=15)
    return {"answer": answer.status or "none within 15 s", "answer_s": round(answer.seconds, 2)}


def body_at_the_limit(bench: Bench, limit: int) -> dict:
    """A predict body of rows of named inputs (the slowest JSON to parse) up to `limit` bytes."""
    body = b'{"instances": [' + b'{"x": [1.5]},' * ((limit - 100) // 13) + b'{"x": [1.5]}]}'
    answer = bench.send("POST", f"/v1/models/{MODEL}:predict", body, bench.auth)
    return {"body_bytes": len(body), "answer": answer.status, "answer_s": round(answer.seconds, 1)}


def deep_bodies(bench: Bench, limit: int) -> dict:
    """JSON nested past the recursive parsers: TF Serving's own case (a 500,000-deep array under a key the request
    ignores, json_tensor_test.cc), then `[1,[1,...` (the slowest nesting per byte to parse) at the most levels the
    server decodes on its event loop, and up to `limit` bytes; each well formed, so parsed to its end."""
    prefix, suffix = b'{"instances": [1.0], "nested": ', b"}"
    inline_levels = (LARGE_REQUEST_BYTES - len(prefix) - 100) // (3 + 1 + LEVEL_COST_BYTES)
    bodies = {"tf_serving_500k": prefix + b"[" * 500_000 + b"]" * 500_000 + suffix,
              f"inline_{inline_levels}_levels": prefix + b"[1," * inline_levels + b"1" + b"]" * inline_levels + suffix,
              "at_the_limit": prefix + b"[1," * ((limit - 100) // 4) + b"1" + b"]" * ((limit - 100) // 4) + suffix}
    answers = {}
    for name, body in bodies.items():
        answer = bench.send("POST", f"/v1/models/{MODEL}:predict", body, bench.auth)
        answers[name] = {"body_bytes": len(body), "answer": answer.status, "answer_s": round(answer.seconds, 2)}
    return answers


def log_and_echo(bench: Bench) -> dict:
    """A bearer token with a stray CR, one that is not UTF-8, and a body falsely marked gzip: their answers, whether
    the token comes back or reaches the log, and the log lines each adds."""
    log = bench.server.log
    rows = {}
    for name, headers, body in [
        ("token_with_cr", {"Authorization": f"Bearer {TOKEN}\rjunk".encode()}, b""),
        ("token_not_utf8", {"Authorization": b"Bearer \xff\xfe" + TOKEN.encode()}, b""),
        ("false_gzip", {**bench.auth, "Content-Encoding": "gzip"}, b'{"instances": [1.0]}'),
    ]:
        before = len(log.read_text())
        answer = bench.send("POST", f"/v1/models/{MODEL}:predict", body, headers)
        time.sleep(0.2)
        added = log.read_text()[before:]
        rows[name] = {"answer": answer.status, "token_echoed": TOKEN.encode() in answer.body + answer.head.encode(),
                      "token_logged": TOKEN in added, "log_lines": added.count("\n")}
    return rows


def sigterm(server: ServerProcess, calls: int) -> dict:
    """`calls` gRPC Predicts sent at once, SIGTERM right after them, then 20 more on the same connection once it
    settled: how each was answered, and when the process exited."""
    credentials = grpc.ssl_channel_credentials(server.ca.read_bytes())
    request = hostile.declaration(types_pb2.DT_FLOAT, 1)
    metadata = [("authorization", f"Bearer {TOKEN}")]
    with grpc.secure_channel(server.grpc_target, credentials) as channel:
        predict = channel.unary_unary("/tensorflow.serving.PredictionService/Predict",
                                      request_serializer=predict_pb2.PredictRequest.SerializeToString,
                                      response_deserializer=predict_pb2.PredictResponse.FromString)
        predict(request, timeout=30, metadata=metadata)
        before = [predict.future(request, timeout=30, metadata=metadata) for _ in range(calls)]
        server.process.terminate()
        signalled = time.monotonic()
        time.sleep(1.5)
        after = [predict.future(request, timeout=30, metadata=metadata) for _ in range(20)]
        codes = {name: dict(Counter(_code(f) for f in futures)) for name, futures in (("before", before),
                                                                                      ("after", after))}
    exit_code = server.process.wait(timeout=60)
    return {"drain_timeout_s": DEFAULTS.drain_timeout_s, "calls_before": codes["before"],
            "calls_after_1.5s": codes["after"], "exit_code": exit_code,
            "exit_after_s": round(time.monotonic() - signalled, 2)}


def _code(future) -> str:
    try:
        future.result()
        return "OK"
    except grpc.RpcError as e:
        return e.code().name


def report(result: dict) -> str:
    m = result["machine"]
    lines = [
        "# Hostile clients (issue #27): what each costs the server", "",
        f"Machine: {m['cpu']}, {m['cores']} vCPU, Python {m['python']}, TF {m['tensorflow']}, {m['date']}, load "
        f"{m['load_average_1m']} at the start; scale {result['scale']}. `python benchmarks/hostile_clients.py`.", "",
        f"One server with a token (status open), TLS on both ports, the audit log, default limits (REST body "
        f"{DEFAULTS.rest_api_max_body_bytes // 2**20} MiB, gRPC tensors {DEFAULTS.grpc_max_tensor_bytes // 2**20} MiB, "
        f"1,024 connections a port) but an idle timeout of {IDLE_TIMEOUT_S} s, and {result['descriptor_limit']:,} "
        "descriptors. RSS of the server process; the worst latency of another client's status call (every 50 ms, "
        "its own keep-alive connection) during the attack; 'served after': a fresh authenticated client, REST and "
        "gRPC, once the attack's connections closed.", "",
        "| attack | s | RSS before | peak | after (MiB) | worst status call (s) | descriptors after | served after |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in result["rows"]:
        lines.append(f"| {row['attack']} | {row['seconds']} | {row['rss_before_mib']} | {row['rss_peak_mib']} | "
                     f"{row['rss_after_mib']} ({row['rss_after_mib'] - row['rss_before_mib']:+d}) | "
                     f"{row['worst_status_call_s']} | {row['descriptors_after']} | "
                     f"{row['served_after']['rest']} / {row['served_after']['grpc']} |")
    lines += ["", f"Issue #27's targets, RSS back within {TARGET_MB} MB of before once the connections closed:", ""]
    for row in result["rows"]:
        if row["attack"] in TARGETS:
            grown_mb = (row["rss_after_mib"] - row["rss_before_mib"]) * 2**20 / 1e6
            lines.append(f"- {row['attack']}: {grown_mb:+.0f} MB, {'met' if grown_mb < TARGET_MB else '**not met**'}")
    lines += ["", "What each attack got:", ""]
    for row in result["rows"]:
        detail = {k: v for k, v in row.items() if k not in ("attack", "seconds", "rss_before_mib", "rss_peak_mib",
                                                           "rss_after_mib", "descriptors_after", "worst_status_call_s",
                                                           "served_after")}
        lines.append(f"- {row['attack']}: `{json.dumps(detail)}`")
    lines += ["", f"SIGTERM: `{json.dumps(result['sigterm'])}`", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0, help="fewer requests and connections (e.g. 0.25)")
    parser.add_argument("--only", nargs="*", help="run only the attacks whose names contain one of these words")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "hostile_clients")
    args = parser.parse_args(argv)
    scaled = lambda n: max(2, int(n * args.scale))  # noqa: E731
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # this process holds thousands of connections
    with tempfile.TemporaryDirectory(prefix="hostile-") as work:
        base = Path(work) / "repo" / MODEL
        half_plus_two.build(base / "123")
        server = hostile.start_server(Path(work), MODEL, base, TOKEN, f"--rest_api_idle_timeout_s={IDLE_TIMEOUT_S}")
        resource.prlimit(server.process.pid, resource.RLIMIT_NOFILE, (DESCRIPTOR_LIMIT, DESCRIPTOR_LIMIT))
        bench = Bench(server)
        try:
            bench.served()  # warm both ports and the model
            attacks = {
                "20 gzip bombs": lambda: gzip_bombs(bench, scaled(20)),
                "20 oversized gRPC declarations": lambda: grpc_declarations(bench, scaled(20)),
                "1,000 unfinished OPTIONS": lambda: unfinished_options(bench, scaled(1000)),
                "1,500 handshake-less TLS connections": lambda: silent_connections(
                    bench, server.rest_port, scaled(1500), IDLE_TIMEOUT_S + 1),
                "2,500 silent gRPC connections": lambda: silent_connections(
                    bench, server.grpc_port, scaled(2500), 31),
                "300 unfinished 0.8 MB header blocks": lambda: oversized_headers(bench, scaled(300)),
                "Content-Length 999,999,999,999": lambda: declared_length(bench),
                "a body at the limit": lambda: body_at_the_limit(bench, DEFAULTS.rest_api_max_body_bytes),
                "tokens and bodies that were logged or echoed": lambda: log_and_echo(bench),
                "deep JSON bodies": lambda: deep_bodies(bench, DEFAULTS.rest_api_max_body_bytes),
            }
            rows = [bench.run(name, attack) for name, attack in attacks.items()
                    if not args.only or any(word in name for word in args.only)]
            stopped = sigterm(server, scaled(400))
        finally:
            if server.process.poll() is None:
                server.stop()
    result = {"machine": machine(), "scale": args.scale, "descriptor_limit": DESCRIPTOR_LIMIT, "rows": rows,
              "sigterm": stopped}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(report(result))
    print(report(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
