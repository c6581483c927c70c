"""Issue #31 item 2's other design, measured before building it: front-end processes handing decoded tensors to one
model process, against N complete processes (what --server_processes runs).

    python benchmarks/shared_model_probe.py [--model mid] [--seconds 8] [--rounds 3]

The two are built here alike, as small servers, so that only the design differs: an aiohttp front end per CPU on one
port (SO_REUSEPORT), decoding and answering with the server's codec (serving.codec) and running the model through
its Servable, with one greedy batcher (a batch thread takes every queued request, up to 64). In "complete" each
front end has its own model and batch thread, pinned to its CPU with one intra-op thread (--server_processes's
layout). In "shared" each front end sends its request's tensor over a Unix socket to one model process, which
batches the requests of every front end: the batches the issue hopes for, at the price of the hand-off; the model
process runs one batch at a time on every CPU (intra-op threads for each), or ("shared, 2 batch threads") two
at a time with one intra-op thread each. The tensors travel as bytes through the socket: shared memory would save
that copy (~12 KB a request on mid), not the notification each way. Every CPU is shared by the servers and wrk, 32
connections, rounds alternating; the ratio is to the in-process limit on every CPU, measured each round
(multicore_bench's).
Writes benchmarks/results/shared_model_probe.json and .md.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path

import numpy as np
from aiohttp import web

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from multicore_bench import load, prepare, round_limit, save  # noqa: E402
from serving_bench import predict_url, wrk  # noqa: E402
import bench_models as models  # noqa: E402
from localhost.ports import free_port  # noqa: E402
from serving import signatures  # noqa: E402
from serving.codec import decode_predict_json, format_predict_response, parse_predict_request  # noqa: E402
from serving.servable import Servable, session_config  # noqa: E402

MAX_BATCH = 64
FRAME = struct.Struct("<III")  # request id, rows, bytes of float32 values that follow
LAYOUTS = {  # label: (model process's intra-op threads, its batch threads); None: complete processes
    "complete": None,
    "shared": (0, 1),
    "shared, 2 batch threads": (1, 2),
}


class GreedyBatcher:
    """Batch threads that each take every queued request (up to MAX_BATCH) and run them as one batch; `answer(items,
    outputs)` is called on the batch thread with the rows of `outputs` in the items' order."""

    def __init__(self, run, answer, threads: int):
        self.run, self.answer = run, answer
        self.queue: deque = deque()
        self.ready = threading.Condition()
        self.batches = self.rows = 0
        for _ in range(threads):
            threading.Thread(target=self._loop, daemon=True).start()

    def submit(self, item, x) -> None:
        with self.ready:
            self.queue.append((item, x))
            self.ready.notify()

    def _loop(self) -> None:
        while True:
            with self.ready:
                while not self.queue:
                    self.ready.wait()
                taken = [self.queue.popleft() for _ in range(min(MAX_BATCH, len(self.queue)))]
                self.batches, self.rows = self.batches + 1, self.rows + len(taken)
            x = np.concatenate([x for _, x in taken])
            self.answer([item for item, _ in taken], self.run(x))


def load_model(model_dir: Path, name: str, intra_op_threads: int, inter_op_threads: int = 1):
    """The run function (a batch in, its first output out) and the inputs the codec parses against; inter-op
    threads: one for each batch thread (one thread would run concurrent batches in turn)."""
    servable = Servable(name, 1, model_dir, session_config(intra_op_threads, inter_op_threads))
    inputs = signatures.signature_inputs(servable, "serving_default")
    (input_name,) = inputs

    def run(x):
        (output,) = servable.run("serving_default", {input_name: x}).values()
        return output

    return run, inputs, input_name


def serve_front(args, inputs, input_name: str, call, connect=None) -> None:
    """The REST predict route on args.port (shared), `call(x)` awaiting the model's rows for `x`; `connect()` first,
    then args.stats's ".ready" file says it serves."""

    async def predict(request: web.Request) -> web.Response:
        tensors, fmt = parse_predict_request(decode_predict_json(await request.read()), inputs)
        outputs = await call(tensors[input_name])
        return web.Response(body=format_predict_response({"scores": outputs}, fmt), content_type="application/json")

    async def main() -> None:
        if connect is not None:
            await connect()
        app = web.Application()
        app.router.add_post("/v1/models/{name}:predict", predict)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", args.port, reuse_port=True).start()
        args.stats.with_suffix(".ready").touch()
        await asyncio.Event().wait()

    asyncio.run(main())


def role_complete(args) -> None:
    os.sched_setaffinity(0, {args.cpu})
    run, inputs, input_name = load_model(args.model_dir, args.model, 1)
    batcher = GreedyBatcher(run, _settle_on_loop, 1)
    _record_on_exit(args.stats, batcher)

    async def call(x):
        future = asyncio.get_running_loop().create_future()
        batcher.submit(future, x)
        return await future

    serve_front(args, inputs, input_name, call)


def _settle_on_loop(futures: list[asyncio.Future], outputs: np.ndarray) -> None:
    """From the batch thread: each future gets its row, on the event loop."""
    def settle() -> None:
        for i, future in enumerate(futures):
            future.set_result(outputs[i:i + 1])
    futures[0].get_loop().call_soon_threadsafe(settle)


class ModelLink(asyncio.Protocol):
    """A front end's connection to the model process: a frame out for each request, its rows back."""

    def __init__(self):
        self.pending: dict[int, asyncio.Future] = {}
        self.next_id = 0
        self.buffer = bytearray()

    def connection_made(self, transport) -> None:
        self.transport = transport

    def call(self, x) -> asyncio.Future:
        self.next_id += 1
        future = asyncio.get_running_loop().create_future()
        self.pending[self.next_id] = future
        data = x.tobytes()
        self.transport.write(FRAME.pack(self.next_id, len(x), len(data)) + data)
        return future

    def data_received(self, data: bytes) -> None:
        for request_id, rows, payload in _frames(self.buffer, data):
            self.pending.pop(request_id).set_result(np.frombuffer(payload, np.float32).reshape(rows, -1))


def _frames(buffer: bytearray, data: bytes):
    """The complete frames in `buffer` + `data` (consumed from `buffer`)."""
    buffer += data
    start = 0
    while len(buffer) - start >= FRAME.size:
        request_id, rows, size = FRAME.unpack_from(buffer, start)
        if len(buffer) - start - FRAME.size < size:
            break
        yield request_id, rows, bytes(buffer[start + FRAME.size:start + FRAME.size + size])
        start += FRAME.size + size
    del buffer[:start]


def role_front(args) -> None:
    os.sched_setaffinity(0, {args.cpu})
    inputs = signatures.signature_inputs(Servable(args.model, 1, args.model_dir, session_config(1, 1)),
                                         "serving_default")  # what the codec parses against; this model never runs
    (input_name,) = inputs
    link = ModelLink()

    async def connect():
        await asyncio.get_running_loop().create_unix_connection(lambda: link, str(args.socket))

    serve_front(args, inputs, input_name, link.call, connect)


def role_model(args) -> None:
    run, _, _ = load_model(args.model_dir, args.model, args.intra_op_threads, args.batch_threads)

    async def main() -> None:
        loop = asyncio.get_running_loop()

        def answer(items, outputs) -> None:
            by_link: dict = {}
            for i, (transport, request_id) in enumerate(items):
                data = np.ascontiguousarray(outputs[i:i + 1]).tobytes()
                by_link.setdefault(transport, []).append(FRAME.pack(request_id, 1, len(data)) + data)
            for transport, frames in by_link.items():
                loop.call_soon_threadsafe(transport.write, b"".join(frames))

        batcher = GreedyBatcher(run, answer, args.batch_threads)
        _record_on_exit(args.stats, batcher)

        class FrontLink(asyncio.Protocol):
            def connection_made(self, transport) -> None:
                self.transport, self.buffer = transport, bytearray()

            def data_received(self, data: bytes) -> None:
                for request_id, rows, payload in _frames(self.buffer, data):
                    x = np.frombuffer(payload, np.float32).reshape(rows, *models.MODELS[args.model][1])
                    batcher.submit((self.transport, request_id), x)

        await loop.create_unix_server(FrontLink, str(args.socket))
        await asyncio.Event().wait()

    asyncio.run(main())


def _record_on_exit(path: Path, batcher: GreedyBatcher) -> None:
    def record(*_):
        path.write_text(json.dumps({"batches": batcher.batches, "rows": batcher.rows}))
        os._exit(0)
    signal.signal(signal.SIGTERM, record)


# -- the driver --------------------------------------------------------------------------------------------------

def start(label: str, model_dir: Path, model: str, port: int, workdir: Path) -> list[subprocess.Popen]:
    """The processes of layout `label`, every front end serving once this returns."""
    base = [sys.executable, __file__, "--model", model, "--model-dir", str(model_dir), "--port", str(port)]
    stats, socket_path = workdir / "stats", workdir / "model.sock"
    shutil.rmtree(stats, ignore_errors=True)
    stats.mkdir()
    socket_path.unlink(missing_ok=True)
    processes, design = [], LAYOUTS[label]
    if design is not None:
        intra, batch_threads = design
        processes.append(subprocess.Popen([*base, "--role", "model", "--socket", str(socket_path), "--intra-op-threads",
                                           str(intra), "--batch-threads", str(batch_threads), "--stats",
                                           str(stats / "model.json")]))
    deadline = time.monotonic() + 120
    while design is not None and not socket_path.exists():  # the model process listens once its model is loaded
        _check_started(label, processes, deadline)
        time.sleep(0.2)
    for cpu in range(os.cpu_count()):
        role = ["--role", "complete"] if design is None else ["--role", "front", "--socket", str(socket_path)]
        processes.append(subprocess.Popen([*base, *role, "--cpu", str(cpu), "--stats", str(stats / f"{cpu}.json")]))
    while len(list(stats.glob("*.ready"))) < os.cpu_count():
        _check_started(label, processes, deadline)
        time.sleep(0.2)
    return processes


def _check_started(label: str, processes: list[subprocess.Popen], deadline: float) -> None:
    if time.monotonic() > deadline or any(p.poll() is not None for p in processes):
        stop(processes)
        raise RuntimeError(f"layout {label!r} did not start in time (or a process of it ended)")


def batch_counts(workdir: Path) -> float:
    """The mean batch of the layout just stopped, from what its batchers wrote."""
    counts = [json.loads(path.read_text()) for path in (workdir / "stats").glob("*.json")]
    return sum(c["rows"] for c in counts) / max(1, sum(c["batches"] for c in counts))


def stop(processes: list[subprocess.Popen]) -> None:
    for process in processes:
        process.send_signal(signal.SIGTERM)
    for process in processes:
        process.wait(timeout=30)


def measure(processes: list[subprocess.Popen], port: int, model: str, body: Path, seconds: float,
            workdir: Path) -> dict:
    url = f"http://127.0.0.1:{port}{predict_url(model)}"
    wrk(url, body, 8, 2, workdir)  # warm: TF's first batches of each size
    return load([p.pid for p in processes], url, None, "rest", model, body, seconds, workdir)


def drive(args) -> int:
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is needed: apt-get install wrk")
    workdir, model_dir, body, results = prepare("shared-model-probe-", args.model, args.seconds, args.rounds)
    runs: dict[str, list[dict]] = {label: [] for label in LAYOUTS}
    for round_ in range(args.rounds):
        limit = round_limit(results, model_dir, args.model, args.seconds)
        for label in (list(LAYOUTS) if round_ % 2 == 0 else list(reversed(LAYOUTS))):
            print(f"[round {round_ + 1}] {label}", flush=True)
            port = free_port()
            processes = start(label, model_dir, args.model, port, workdir)
            try:
                runs[label].append(measure(processes, port, args.model, body, args.seconds, workdir))
            finally:
                stop(processes)
            runs[label][-1] |= {"mean_batch": batch_counts(workdir), "ratio": runs[label][-1]["per_s"] / limit}
    results["layouts"] = {label: {key: statistics.median(run[key] for run in measured) for key in measured[0]}
                          | {"rounds": measured} for label, measured in runs.items()}
    write(results, args.out / "shared_model_probe")
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


def write(results: dict, stem: Path) -> None:
    lines = ["| layout | REST per s | ratio | server CPU ms/request | cores busy | mean batch | errors |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for label, r in results["layouts"].items():
        lines.append(f"| {label} | {r['per_s']:.0f} | {r['ratio']:.2f} | {r['server_cpu_ms_per_request']:.3f} | "
                     f"{r['server_cores_busy']:.2f} | {r['mean_batch']:.1f} | {r['errors']:.0f} |")
    save(results, stem, "Front ends and one model process, or complete processes", "benchmarks/shared_model_probe.py",
         "minimal servers built alike (the server's codec and Servable, a greedy batcher), every CPU shared by them "
         "and wrk", lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mid", choices=sorted(models.MODELS))
    parser.add_argument("--seconds", type=float, default=8.0, help="per measurement")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--role", choices=("complete", "front", "model"), help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--cpu", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--socket", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--intra-op-threads", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--batch-threads", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--stats", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    roles = {"complete": role_complete, "front": role_front, "model": role_model}
    if args.role:
        roles[args.role](args)
        return 0
    return drive(args)


if __name__ == "__main__":
    raise SystemExit(main())
