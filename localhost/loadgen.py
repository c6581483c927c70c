"""Open-loop HTTP load: requests are sent on a fixed schedule, whether or not earlier ones returned.

Latency is measured from each request's *scheduled* send time, so a server that falls behind shows
its queueing in the numbers instead of hiding it (closed-loop clients slow down with the server).

    python -m localhost.loadgen --url http://127.0.0.1:8501/v1/models/mid:predict --body body.json \
        --rate 500 --seconds 5

Prints one JSON line: achieved rate, p50/p90/p99/max latency, errors by kind. Only loopback
targets, at most 60 s and 20 000 requests/s: a load test never leaves this machine or runs on.
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
