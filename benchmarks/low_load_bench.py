"""Latency at one connection (issue #31 item 3): ours with batching and without, against the in-process batch-1 call.

    python benchmarks/low_load_bench.py [--model mid] [--requests 3000]

Targets: the p99 at one connection at most 2 ms over the in-process batch-1 p99, and batching no slower than no
batching there (a lone request must not pay for the batcher). Four servers (`python -m serving` with --enable_batching
and its defaults, two of them, and two without), each asked over REST and over gRPC, and the in-process call (the
server's Servable, in this process) take turns request by request (in a new random order each turn), so that the
host's drift and the other users of the CPUs weigh on all nine alike. Reported: percentiles, and per protocol the
median of the paired differences (request by request) for each of the four pairings of a batching server with one
without, beside those of the two servers of the same kind: two identical servers differ too (where a process's
memory landed, its TF threads: up to 0.03 ms on mid), and a difference within theirs is not resolved. With the load
average before and after.
The REST client is a raw keep-alive socket (one `sendall`, reads to Content-Length: ~30 us of Python per request,
counted in the REST figures); the gRPC client one channel sending the serialized PredictRequest (tensor_content).
Only 127.0.0.1. Writes benchmarks/results/low_load_<model>.json and .md.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import socket
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import grpc  # noqa: E402
import numpy as np  # noqa: E402
from tensorflow_serving.apis import predict_pb2  # noqa: E402

import bench_models as models  # noqa: E402
from localhost.machine import machine  # noqa: E402
from localhost.ports import free_port  # noqa: E402
from serving.api_protos import request_tensor_proto  # noqa: E402
from serving.process import ServerProcess  # noqa: E402
from serving.servable import Servable, session_config  # noqa: E402

TARGET_P99_OVER_IN_PROCESS_MS = 2.0
KINDS = ("batching", "no_batching")  # two servers of each
PROTOCOLS = ("rest", "grpc")


class Connection:
    """One keep-alive HTTP/1.1 connection to 127.0.0.1 sending the same POST."""

    def __init__(self, port: int, path: str, body: bytes):
        self.socket = socket.create_connection(("127.0.0.1", port))
        self.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.request = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                        f"Content-Length: {len(body)}\r\n\r\n").encode() + body

    def post(self) -> bytes:
        self.socket.sendall(self.request)
        received = b""
        while b"\r\n\r\n" not in received:
            received += self.socket.recv(65536)
        head, _, body = received.partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(f"expected 200, received {head.splitlines()[0]!r}")
        length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")))
        while len(body) < length:
            body += self.socket.recv(65536)
        return body

    def close(self) -> None:
        self.socket.close()


class GrpcConnection:
    """One channel to 127.0.0.1 sending the same serialized PredictRequest."""

    def __init__(self, port: int, request: bytes):
        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        self.predict = self.channel.unary_unary("/tensorflow.serving.PredictionService/Predict")  # bytes in and out
        self.request = request

    def post(self) -> bytes:
        return self.predict(self.request, timeout=30)

    def close(self) -> None:
        self.channel.close()


def start(repo: Path, name: str, workdir: Path, batching: bool) -> tuple[ServerProcess, int]:
    """A server of `name` and its gRPC port."""
    grpc_port = free_port()
    flags = [f"--model_name={name}", f"--model_base_path={repo / name}", f"--port={grpc_port}",
             "--file_system_poll_wait_seconds=0", *(["--enable_batching"] if batching else [])]
    server = ServerProcess(*flags, log_dir=workdir)
    server.wait_available(name)
    return server, grpc_port


def percentiles(ms: list[float]) -> dict:
    return {"p50_ms": round(float(np.percentile(ms, 50)), 3), "p90_ms": round(float(np.percentile(ms, 90)), 3),
            "p99_ms": round(float(np.percentile(ms, 99)), 3), "requests": len(ms)}


def measure(model: str, requests: int, workdir: Path) -> dict:
    repo = workdir / "repo"
    model_dir = models.build(model, repo)
    x = models.sample(model, 1)
    body = models.json_body(x)
    servable = Servable(model, 1, model_dir, session_config(0, 0))  # the server's defaults (no thread flag)
    inputs = {"x": np.round(x.astype(np.float64), 3).astype(np.float32)}
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.inputs["x"].CopyFrom(request_tensor_proto(inputs["x"]))
    servers = {f"{kind}_{i}": start(repo, model, workdir, batching=kind == "batching")
               for kind in KINDS for i in (1, 2)}
    path = f"/v1/models/{model}:predict"
    connections = {
        **{f"rest_{key}": Connection(server.rest_port, path, body) for key, (server, _) in servers.items()},
        **{f"grpc_{key}": GrpcConnection(port, request.SerializeToString()) for key, (_, port) in servers.items()}}
    calls = {"in_process": lambda: servable.run("serving_default", inputs), **{
        key: connection.post for key, connection in connections.items()}}
    latencies: dict[str, list[float]] = {key: [] for key in calls}
    load_before = os.getloadavg()[0]
    try:
        for key, call in calls.items():  # warm up: kernels, caches, connections
            for _ in range(50):
                call()
        order, shuffle = list(calls), random.Random(0).shuffle
        for _ in range(requests):
            shuffle(order)  # each in every position, after each of the others: a call after one that ran the model
            for key in order:  # (TF's threads still spinning) is slower, which a fixed order gave the same few
                started = time.perf_counter()
                calls[key]()
                latencies[key].append((time.perf_counter() - started) * 1000)
    finally:
        for connection in connections.values():
            connection.close()
        for server, _ in servers.values():
            server.stop()
    pooled = {f"{protocol}_{kind}": latencies[f"{protocol}_{kind}_1"] + latencies[f"{protocol}_{kind}_2"]
              for protocol in PROTOCOLS for kind in KINDS}
    result = {key: percentiles(ms) for key, ms in latencies.items()}
    in_process_p99 = result["in_process"]["p99_ms"]

    def paired(protocol: str, a: str, b: str) -> float:
        """The median of the request-by-request differences, server a minus server b."""
        return round(float(np.median(np.subtract(latencies[f"{protocol}_{a}"], latencies[f"{protocol}_{b}"]))), 3)

    return {"model": model, "body_bytes": len(body), "requests": requests,
            "load_average_1m": {"before": round(load_before, 2), "after": round(os.getloadavg()[0], 2)},
            "results": result,
            "p99_over_in_process_ms": {key: round(percentiles(ms)["p99_ms"] - in_process_p99, 3)
                                       for key, ms in pooled.items()},
            "batching_minus_no_batching_ms": {protocol: {
                "pairings": [paired(protocol, f"batching_{i}", f"no_batching_{j}") for i in (1, 2) for j in (1, 2)],
                "same_kind": {kind: paired(protocol, f"{kind}_2", f"{kind}_1") for kind in KINDS}}
                for protocol in PROTOCOLS}}


def report(r: dict) -> str:
    m = r["machine"]
    lines = [f"# Latency at one connection: {r['model']} ({r['body_bytes']} B JSON request)", "",
             f"Machine: {m['cpu']}, {m['cores']} vCPU, Python {m['python']}, TF {m['tensorflow']}, {m['date']}; load "
             f"average (1 min) {r['load_average_1m']['before']} before, {r['load_average_1m']['after']} after (other "
             f"users of the CPUs: re-run on a quiet machine). `python benchmarks/low_load_bench.py --model "
             f"{r['model']} --requests {r['requests']}`: the nine take turns, request by request, "
             f"{r['requests']} each.", "",
             "| what | p50 ms | p90 ms | p99 ms |", "|---|---:|---:|---:|"]
    for key, q in r["results"].items():
        lines.append(f"| {key.replace('_', ' ')} | {q['p50_ms']} | {q['p90_ms']} | {q['p99_ms']} |")
    over = r["p99_over_in_process_ms"]
    lines.append("")
    for protocol, diff in r["batching_minus_no_batching_ms"].items():
        pairings, same = diff["pairings"], diff["same_kind"]
        lines += [f"- {protocol.upper()}: p99 over the in-process batch-1 p99 (target at most "
                  f"{TARGET_P99_OVER_IN_PROCESS_MS} ms; both servers of a kind pooled): batching "
                  f"{over[f'{protocol}_batching']} ms, no batching {over[f'{protocol}_no_batching']} ms. Batching "
                  f"minus no batching, the median of the paired differences for each pairing of servers: "
                  f"{' / '.join(str(d) for d in pairings)} ms, mean {np.mean(pairings):.3f} (target: not above 0); "
                  f"two servers of the same kind: {same['no_batching']} ms without batching, {same['batching']} ms "
                  f"with (a difference within those is not resolved)."]
    return "\n".join(lines + [""])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mid", choices=sorted(models.MODELS))
    parser.add_argument("--requests", type=int, default=3000, help="sequential requests to each of the nine")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="low-load-") as work:
        result = {"machine": machine(), **measure(args.model, args.requests, Path(work))}
    stem = args.out / f"low_load_{args.model}"
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    stem.with_suffix(".md").write_text(report(result))
    print(report(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
