"""What a hostile client does to a real server on 127.0.0.1, and how the server is watched meanwhile: raw HTTP/1.1
(clear or TLS) with bytes as sent, gzip bombs, connections that never finish, gRPC tensors that declare more than
they carry, and a watcher that samples the server's RSS and the latency of another client's status call.

Shared by the tests of issue #27 (tests/serving/test_hostile.py) and the run whose figures are committed
(benchmarks/hostile_clients.py).
"""
from __future__ import annotations

import contextlib
import gzip
import os
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import requests
from certs import Authority
from google.protobuf import text_format
from tensorflow.core.framework import tensor_pb2, types_pb2
from tensorflow_serving.apis import predict_pb2

from localhost.ports import free_port
from localhost.processes import rss_mib
from serving import protos
from serving.process import ServerProcess


def start_server(work: Path, model: str, base_path: Path, token: str, *flags: str, tls: bool = True) -> ServerProcess:
    """`model` from `base_path` as production runs it: an admin `token` (status open: --auth_allow_status), TLS on
    both ports (a throwaway CA, no client certificates) unless `tls` is False, the audit log; `flags` more. The
    process has `work`, `ca` (the CA's file; None without TLS), `tls` (a client context trusting it; None without
    TLS), `grpc_port` and `grpc_target`."""
    (work / "tokens.yaml").write_text(f"tokens:\n  - {{id: admin, token: '{token}', role: admin}}\n")
    ca_file, secure = None, []
    if tls:
        ca = Authority(work)
        cert, key = ca.issue("server", server=True)
        ssl_config = protos.SSLConfig(server_key=key.read_text(), server_cert=cert.read_text())
        (work / "ssl.config").write_text(text_format.MessageToString(ssl_config))
        ca_file, secure = ca.cert_file, [f"--ssl_config_file={work / 'ssl.config'}"]
    grpc_port = free_port()
    process = ServerProcess(f"--model_name={model}", f"--model_base_path={base_path}", f"--port={grpc_port}",
                            f"--auth_token_file={work / 'tokens.yaml'}", "--auth_allow_status",
                            f"--audit_log_file={work / 'audit.jsonl'}", *secure,
                            *flags, log_dir=work, client_options={"ca_cert": ca_file})
    process.wait_available(model)
    process.work, process.ca, process.grpc_port = work, ca_file, grpc_port
    process.grpc_target = f"127.0.0.1:{grpc_port}"
    process.tls = ssl.create_default_context(cafile=str(ca_file)) if tls else None
    return process


@dataclass
class Answer:
    status: int  # 0: the connection closed (or timed out) without an answer
    head: str
    body: bytes
    seconds: float


def connect(port: int, tls: ssl.SSLContext | None = None, timeout_s: float = 30) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout_s)
    return tls.wrap_socket(sock, server_hostname="127.0.0.1") if tls is not None else sock


def exchange(port: int, request: bytes, tls: ssl.SSLContext | None = None, timeout_s: float = 30) -> Answer:
    """Send `request` as it is on a connection of its own and read until the server closes it (or one answer with a
    Content-Length is whole)."""
    started = time.perf_counter()
    received = b""
    try:
        with connect(port, tls, timeout_s) as sock:
            with contextlib.suppress(OSError):  # answered (and closed) before all was sent
                sock.sendall(request)
            while not _whole(received) and (chunk := sock.recv(1 << 16)):
                received += chunk
    except OSError:
        pass
    head, _, body = received.partition(b"\r\n\r\n")
    text = head.decode("latin-1")
    status = int(text.split()[1]) if text.startswith("HTTP/") and len(text.split()) > 1 else 0
    return Answer(status, text, body, time.perf_counter() - started)


def _whole(received: bytes) -> bool:
    head, found, body = received.partition(b"\r\n\r\n")
    for line in head.decode("latin-1").split("\r\n")[1:]:
        name, _, value = line.partition(":")
        if found and name.strip().lower() == "content-length":
            return len(body) >= int(value)
    return False


def request(method: str, path: str, body: bytes = b"", headers: dict[str, str | bytes] | None = None) -> bytes:
    """An HTTP/1.1 request's bytes; header values may be bytes (sent as they are, control characters included)."""
    lines = [f"{method} {path} HTTP/1.1".encode(), b"Host: 127.0.0.1", f"Content-Length: {len(body)}".encode()]
    for name, value in (headers or {}).items():
        lines.append(name.encode() + b": " + (value if isinstance(value, bytes) else value.encode()))
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


@cache
def gzip_bomb(inflated_bytes: int) -> bytes:
    """A valid gzip body (about 1/1000 of its size) that inflates to `inflated_bytes` of a JSON predict request."""
    head, tail = b'{"instances": [', b"0]}"
    return gzip.compress(head + b"0," * ((inflated_bytes - len(head) - len(tail)) // 2) + tail, 9)


def declaration(dtype: int, elements: int) -> predict_pb2.PredictRequest:
    """A Predict for half_plus_two (its float input `x`) whose one tensor declares `elements` values and carries
    one (TF fills the rest with it): about 40 bytes on the wire."""
    proto = tensor_pb2.TensorProto(dtype=dtype)
    proto.tensor_shape.dim.add(size=elements)
    if dtype == types_pb2.DT_STRING:
        proto.string_val.append(b"x")
    else:
        proto.float_val.append(1.0)
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "half_plus_two"
    request.inputs["x"].CopyFrom(proto)
    return request


def open_connections(port: int, n: int, first: bytes = b"") -> list[socket.socket]:
    """Up to `n` connections to `port` that send `first` (nothing: not even a TLS ClientHello) and then nothing
    more; fewer when the server stops accepting (its listen backlog full: out of descriptors)."""
    sockets = []
    for _ in range(n):
        try:
            sock = socket.create_connection(("127.0.0.1", port), timeout=2)
            if first:
                sock.sendall(first)
        except OSError:
            break
        sockets.append(sock)
    return sockets


def closed_by_server(sockets: list[socket.socket]) -> int:
    """How many of `sockets` the server has closed: what it said before is read, then the end (or a reset)."""
    closed = 0
    for sock in sockets:
        sock.setblocking(False)
        try:
            while sock.recv(1 << 16):
                pass
            closed += 1
        except (BlockingIOError, ssl.SSLWantReadError):  # open, nothing to read
            pass
        except OSError:
            closed += 1
    return closed


def all_closed_by_server(sockets: list[socket.socket], within_s: float) -> bool:
    """Whether the server closes every one of `sockets` within `within_s`."""
    deadline = time.monotonic() + within_s
    while closed_by_server(sockets) < len(sockets):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def settled_rss_mib(process, below: float, within_s: float = 3.0) -> float:
    """The process's RSS once it is under `below` MiB, or when `within_s` has passed: the server gives memory back
    on a thread of its own, a moment after a large request's answer or a burst of closed connections."""
    deadline = time.monotonic() + within_s
    while (rss := process.rss_mib()) >= below and time.monotonic() < deadline:
        time.sleep(0.05)
    return rss


def descriptors(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@dataclass
class Watch:
    """While a hostile client works: the server's RSS sampled every 20 ms (its peak) and a status call made every
    50 ms on another client's keep-alive connection (its worst latency, and any failure)."""

    pid: int
    status_url: str
    session: requests.Session
    verify: str | bool = True  # per request: a Session's own `verify` loses to $REQUESTS_CA_BUNDLE
    peak_mib: float = 0.0
    worst_status_s: float = 0.0
    status_failures: list[str] = field(default_factory=list)

    def __post_init__(self):
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._sample, daemon=True),
                         threading.Thread(target=self._probe, daemon=True)]

    def __enter__(self) -> Watch:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            self.peak_mib = max(self.peak_mib, rss_mib(self.pid))

    def _probe(self) -> None:
        while not self._stop.wait(0.05):
            started = time.perf_counter()
            try:
                status = self.session.get(self.status_url, timeout=60, verify=self.verify).status_code
                if status != 200:
                    self.status_failures.append(f"HTTP {status}")
            except requests.RequestException as e:
                self.status_failures.append(type(e).__name__)
            self.worst_status_s = max(self.worst_status_s, time.perf_counter() - started)
