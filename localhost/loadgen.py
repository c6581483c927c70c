"""Open-loop HTTP load: requests are sent on a fixed schedule, whether or not earlier ones returned.

Latency is measured from each request's *scheduled* send time, so a server that falls behind shows
its queueing in the numbers instead of hiding it (closed-loop clients slow down with the server).

    python -m localhost.loadgen --url http://127.0.0.1:8501/v1/models/mid:predict --body body.json \
        --rate 500 --seconds 5

Prints one JSON line: achieved rate, p50/p90/p99/max latency, errors by kind. Only loopback
targets, at most 60 s and 20 000 requests/s: a load test never leaves this machine or runs on.

`closed_loop` (REST) and `grpc_closed_loop` are the other kind, for throughput where wrk and h2load are not
installed: a fixed number of connections (calls) each sending its next request when the last is answered.
"""
from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import socket
import sys
import time
from collections import Counter
from urllib.parse import urlsplit

import numpy as np

MAX_SECONDS = 60
MAX_RATE = 20_000


def check_target(url: str) -> tuple[str, int, str]:
    """(host, port, path) of a loopback http:// URL; anything else is refused."""
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"expected an http://127.0.0.1:PORT/... URL, received {url!r}")
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(parts.hostname, parts.port or 80)}
    except socket.gaierror as e:
        raise ValueError(f"cannot resolve {parts.hostname!r} ({e.strerror}); use 127.0.0.1") from None
    outside = [a for a in addresses if not ipaddress.ip_address(a).is_loopback]
    if outside:
        raise ValueError(f"refusing to load {parts.hostname} ({', '.join(sorted(outside))}): "
                         f"benchmarks only target loopback addresses (127.0.0.0/8, ::1)")
    return parts.hostname, parts.port or 80, parts.path or "/"


async def _request(reader, writer, payload: bytes) -> int:
    writer.write(payload)
    status_line = await reader.readline()
    if not status_line:  # the server closed the connection without answering
        raise ConnectionResetError("connection closed before a response")
    length = 0
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    await reader.readexactly(length)
    return int(status_line.split()[1])


async def open_loop(url: str, body: bytes, rate: float, seconds: float, connections: int = 64,
                    timeout_s: float = 30.0) -> dict:
    host, port, path = check_target(url)
    if not 0 < seconds <= MAX_SECONDS or not 0 < rate <= MAX_RATE:
        raise ValueError(f"a bounded run needs 0 < seconds <= {MAX_SECONDS} and 0 < rate <= {MAX_RATE}; "
                         f"received seconds={seconds}, rate={rate}")
    payload = (f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
               f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    idle: asyncio.Queue = asyncio.Queue()
    for _ in range(connections):
        idle.put_nowait(await asyncio.open_connection(host, port))
    latencies, errors = [], Counter()
    start = time.perf_counter() + 0.05
    total = int(rate * seconds)

    async def one(scheduled: float) -> None:
        reader, writer = await idle.get()
        try:
            status = await asyncio.wait_for(_request(reader, writer, payload), timeout_s)
            if status == 200:
                latencies.append(time.perf_counter() - scheduled)
            else:
                errors[f"http_{status}"] += 1
            idle.put_nowait((reader, writer))
        except (asyncio.TimeoutError, ConnectionError, asyncio.IncompleteReadError) as e:
            errors[type(e).__name__] += 1
            writer.close()
            idle.put_nowait(await asyncio.open_connection(host, port))

    tasks = []
    for i in range(total):
        scheduled = start + i / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(scheduled)))
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - start
    while not idle.empty():
        idle.get_nowait()[1].close()
    ms = np.array(latencies) * 1000 if latencies else np.array([np.nan])
    return {"offered_per_s": rate, "achieved_per_s": len(latencies) / elapsed, "requests": total,
            "ok": len(latencies), "errors": dict(errors), "p50_ms": float(np.percentile(ms, 50)),
            "p90_ms": float(np.percentile(ms, 90)), "p99_ms": float(np.percentile(ms, 99)), "max_ms": float(ms.max())}


def _checked_seconds(seconds: float) -> None:
    if not 0 < seconds <= MAX_SECONDS:
        raise ValueError(f"a bounded run needs 0 < seconds <= {MAX_SECONDS}; received seconds={seconds}")


def _summary(latencies: list[float], errors: Counter, elapsed: float) -> dict:
    ms = np.array(latencies) * 1000 if latencies else np.array([np.nan])
    return {"per_s": len(latencies) / elapsed, "requests": len(latencies) + sum(errors.values()), "ok": len(latencies),
            "errors": dict(errors), "seconds": elapsed, "p50_ms": float(np.percentile(ms, 50)),
            "p99_ms": float(np.percentile(ms, 99))}


async def closed_loop(url: str, body: bytes, connections: int, seconds: float) -> dict:
    """`connections` keep-alive HTTP connections, each posting `body` again as soon as it is answered, for
    `seconds`: answered 200 per second, latency percentiles, errors by kind."""
    host, port, path = check_target(url)
    _checked_seconds(seconds)
    payload = (f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
               f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    latencies, errors = [], Counter()
    deadline = time.perf_counter() + seconds

    async def connection() -> None:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while time.perf_counter() < deadline:
                sent = time.perf_counter()
                status = await _request(reader, writer, payload)
                if status == 200:
                    latencies.append(time.perf_counter() - sent)
                else:
                    errors[f"http_{status}"] += 1
        except (ConnectionError, asyncio.IncompleteReadError) as e:
            errors[type(e).__name__] += 1
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(connection() for _ in range(connections)))
    return _summary(latencies, errors, time.perf_counter() - started)


async def grpc_closed_loop(target: str, method: str, request: bytes, calls: int, seconds: float) -> dict:
    """`calls` concurrent unary calls of `method` ("/package.Service/Method") with the serialized `request` on one
    channel, each made again as soon as it is answered, for `seconds` (the messages are not parsed: the client's
    cost stays small)."""
    import grpc

    check_target(f"http://{target}/")
    _checked_seconds(seconds)
    latencies, errors = [], Counter()
    deadline = time.perf_counter() + seconds
    async with grpc.aio.insecure_channel(target, options=[("grpc.max_receive_message_length", -1)]) as channel:
        call = channel.unary_unary(method, request_serializer=None, response_deserializer=None)

        async def caller() -> None:
            while time.perf_counter() < deadline:
                sent = time.perf_counter()
                try:
                    await call(request, timeout=30)
                    latencies.append(time.perf_counter() - sent)
                except grpc.aio.AioRpcError as e:
                    errors[e.code().name] += 1

        started = time.perf_counter()
        await asyncio.gather(*(caller() for _ in range(calls)))
        return _summary(latencies, errors, time.perf_counter() - started)


def holds(point: dict, p99_bound_ms: float) -> bool:
    """Whether a run kept its p99 under the bound with no errors."""
    return point["p99_ms"] <= p99_bound_ms and not point["errors"]


def knee_point(points: list[dict], p99_bound_ms: float) -> dict | None:
    """The run with the highest achieved rate among those that held the bound (None if none did)."""
    return max((p for p in points if holds(p, p99_bound_ms)), key=lambda p: p["achieved_per_s"], default=None)


def knee(points: list[dict], p99_bound_ms: float) -> float:
    """The highest achieved rate among runs that held the bound (0 if none did)."""
    point = knee_point(points, p99_bound_ms)
    return point["achieved_per_s"] if point else 0.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--body", required=True, help="file with the JSON request body")
    parser.add_argument("--rate", type=float, required=True, help="requests per second")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=64)
    args = parser.parse_args(argv)
    try:
        with open(args.body, "rb") as f:
            body = f.read()
        result = asyncio.run(open_loop(args.url, body, args.rate, args.seconds, args.connections))
    except ValueError as e:
        parser.error(str(e))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
