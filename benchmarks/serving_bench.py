"""Serving throughput and latency, ours against the in-process limit and against peers, in one run.

    python benchmarks/serving_bench.py [--model mid] [--seconds 8] [--quick]
    python benchmarks/serving_bench.py --logging [--model mid] [--seconds 8]   # request logging's cost

Measured side by side on this machine, in one run (the host drifts, so only ratios within a run
mean anything), twice: "pinned" (the server, and the in-process limit, on core 0; load generators on the
other cores, with `sched_setaffinity`, as `taskset` would) and "shared" (everything on every core):
  limit      the SavedModel's serving signature called in-process through the same session the server runs
             (prepared callables): batch 1 sequential (latency), and the best batch size with one calling
             thread per core (throughput)
  ours       `python -m serving` REST with batching (--enable_batching and no parameters file: the adaptive
             defaults) and without, gRPC with batching
  flask      Flask + gunicorn (2 workers) with the model loaded once per worker
  naive      Flask loading the model on every request (the tutorial pattern)
  floor      aiohttp and grpc's thread pool servers answering a fixed response (floor_servers.py): the stacks' own
             cost per request, from which the ceiling a handler on them can reach follows (ratio *_ceiling_vs_limit)
  tf_serving tensorflow_model_server with the same model and batching file, when it is on PATH
Load comes from wrk (REST) and h2load (gRPC), C programs, closed loop with 32 connections (and 1
connection, with and without batching in turn for 4 rounds, medians: latency at low load), and
localhost/loadgen.py, open loop at fixed arrival rates (latency from the scheduled send time), swept to find
the knee: the highest rate whose p99 stays under --p99-bound-ms. The client's CPU share is reported.
Only 127.0.0.1. Writes
benchmarks/results/serving_<model>.json, .md and a latency-vs-throughput plot (_latency.png).

With --logging it measures only what request logging costs (issue #29's target: >= 0.9 of the throughput with
logging off), pinned (the servers on CPU 0, the load on the others): two servers with batching, one serving the
model as it is, the other a copy that ships a schema.json (every input value a float32 feature, so each request is
also counted against it) with a logging_config at sampling_rate 1.0; closed-loop REST and gRPC load in
alternating rounds (medians), from localhost.loadgen's Python clients (wrk and h2load are not needed); then the
records written and dropped. Writes benchmarks/results/logging.json and .md.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import numpy as np  # noqa: E402
from tensorflow_serving.apis import predict_pb2  # noqa: E402

import bench_models as models  # noqa: E402
from localhost import loadgen  # noqa: E402
from localhost.loadgen import knee  # noqa: E402
from localhost.machine import described, machine  # noqa: E402
from localhost.ports import free_port  # noqa: E402
from serving.process import ServerProcess, wait_available  # noqa: E402
from serving.servable import Servable, session_config  # noqa: E402

CONNECTIONS = 32
LOW_LOAD_ROUNDS = 4  # alternating 1-connection runs per server, medians reported
WRK_REPORT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local f = io.open("{body}", "rb"); wrk.body = f:read("*all"); f:close()
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('RESULT {{"requests": %d, "seconds": %f, "non2xx": %d, "socket_errors": %d, ' ..
    '"p50_ms": %f, "p90_ms": %f, "p99_ms": %f, "max_ms": %f}}\\n', summary.requests, summary.duration / 1e6,
    e.status, e.connect + e.read + e.write + e.timeout, latency:percentile(50) / 1e3,
    latency:percentile(90) / 1e3, latency:percentile(99) / 1e3, latency.max / 1e3))
end
"""


# -- the in-process limit ------------------------------------------------------------------------

def measure_limit(model_dir: Path, name: str, seconds: float) -> dict:
    """in_process_limit in a fresh process on this process's CPUs: TF sizes its thread pools once per process."""
    output = subprocess.run([sys.executable, __file__, "--seconds", str(seconds), "--limit-of", str(model_dir), name],
                            capture_output=True, text=True, check=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def in_process_limit(model_dir: Path, name: str, seconds: float) -> dict:
    """The model's own speed on the CPUs this process may use, through the server's Servable (one TF session, the
    server's default thread counts)."""
    servable = Servable(name, 1, model_dir, session_config(0, 0))
    one = {"x": models.sample(name, 1)}
    for _ in range(20):
        servable.run("serving_default", one)
    latencies = []
    deadline = time.perf_counter() + seconds / 2
    while time.perf_counter() < deadline:
        started = time.perf_counter()
        servable.run("serving_default", one)
        latencies.append((time.perf_counter() - started) * 1000)
    result = {"batch1_p50_ms": float(np.percentile(latencies, 50)), "batch1_p99_ms": float(np.percentile(latencies, 99)),
              "batch1_per_s": 1000 / float(np.mean(latencies)), "threads": len(os.sched_getaffinity(0)), "by_batch": {}}
    for batch in (1, 8, 16, 32, 64):
        x = {"x": models.sample(name, batch)}
        result["by_batch"][batch] = threaded_throughput(lambda: servable.run("serving_default", x), batch,
                                                         result["threads"], seconds / 2)
    best = max(result["by_batch"], key=result["by_batch"].get)
    result.update(best_batch=best, items_per_s=result["by_batch"][best])
    return result


def threaded_throughput(call, batch: int, threads: int, seconds: float) -> float:
    """Rows per second of `call` (a batch of `batch` rows) called back to back from `threads` threads."""
    call()
    counts = [0] * threads
    deadline = time.perf_counter() + seconds

    def work(i):
        while time.perf_counter() < deadline:
            call()
            counts[i] += 1

    workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return sum(counts) * batch / seconds


@contextlib.contextmanager
def on_cpus(cpus: set[int]):
    """Run this process (every thread, and what it starts meanwhile) on `cpus`; all CPUs again afterwards."""
    every = set(range(os.cpu_count()))

    def pin(allowed: set[int]) -> None:
        for task in os.listdir("/proc/self/task"):
            try:
                os.sched_setaffinity(int(task), allowed)
            except ProcessLookupError:  # a thread that just ended
                pass

    pin(cpus)
    try:
        yield
    finally:
        pin(every)


# -- load generators -------------------------------------------------------------------------------

def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_measured(command: list[str]) -> tuple[str, float]:
    """Run a load generator; returns its output and the CPU seconds it used."""
    with tempfile.TemporaryFile() as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        used = 0.0
        while process.poll() is None:
            try:
                used = cpu_seconds(process.pid)
            except (FileNotFoundError, ProcessLookupError):
                break
            time.sleep(0.05)
        process.wait()
        out.seek(0)
        return out.read().decode(), used


def wrk(url: str, body: Path, connections: int, seconds: float, workdir: Path) -> dict:
    script = workdir / "post.lua"
    script.write_text(WRK_REPORT.format(body=body))
    threads = min(2, connections)
    output, cpu = run_measured(["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds:.0f}s", "--timeout", "30s",
                                "-s", str(script), url])
    match = re.search(r"^RESULT (.*)$", output, re.M)
    if not match:
        raise RuntimeError(f"wrk failed:\n{output}")
    result = json.loads(match.group(1))
    result["per_s"] = (result["requests"] - result["non2xx"]) / result["seconds"]
    result["client_cpu_share"] = cpu / (result["seconds"] * os.cpu_count())
    return result


def h2load_grpc(target: str, request: predict_pb2.PredictRequest, connections: int, seconds: float,
                workdir: Path) -> dict:
    """gRPC Predict over HTTP/2 with h2load: the body is the length-prefixed protobuf message."""
    message = request.SerializeToString()
    body = workdir / "grpc_body.bin"
    body.write_bytes(b"\x00" + struct.pack(">I", len(message)) + message)
    output, cpu = run_measured([
        "h2load", f"-c{connections}", "-m1", f"-D{seconds:.0f}", "-d", str(body),
        "-H", "content-type: application/grpc", "-H", "te: trailers",
        f"http://{target}/tensorflow.serving.PredictionService/Predict"])
    done = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed", output)
    if not done:
        raise RuntimeError(f"h2load failed:\n{output}")
    p = {k: _h2load_ms(output, k) for k in ("time for request",)}
    return {"requests": int(done.group(2)), "failed": int(done.group(3)), "seconds": seconds,
            "per_s": int(done.group(2)) / seconds, "mean_ms": p["time for request"],
            "client_cpu_share": cpu / (seconds * os.cpu_count())}


def _h2load_ms(output: str, label: str) -> float:
    match = re.search(rf"{label}:\s+\S+\s+\S+\s+(\S+)", output)
    value = match.group(1) if match else "nan"
    scale = 1e-3 if value.endswith("us") else (1e3 if value.endswith("s") and not value.endswith("ms") else 1)
    return float(re.sub(r"[a-z]+$", "", value)) * scale


def open_loop(url: str, body: Path, rate: float, seconds: float) -> dict:
    """One open-loop run of localhost.loadgen in its own process, so its CPU can be measured."""
    output, cpu = run_measured([sys.executable, "-m", "localhost.loadgen", "--url", url, "--body", str(body),
                                "--rate", f"{rate:.1f}", "--seconds", f"{seconds:.1f}"])
    result = json.loads(output.strip().splitlines()[-1])
    result["client_cpu_share"] = cpu / (seconds * os.cpu_count())
    return result


def sweep(url: str, body: Path, closed_loop_per_s: float, seconds: float) -> list[dict]:
    """Open-loop runs at fractions of the closed-loop throughput, to find where latency turns up."""
    return [open_loop(url, body, max(1.0, closed_loop_per_s * f), seconds) for f in (0.25, 0.5, 0.75, 0.9, 1.0, 1.2)]


def plot(points: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    rates = [p["achieved_per_s"] for p in points]
    for key in ("p50_ms", "p90_ms", "p99_ms"):
        ax.plot(rates, [p[key] for p in points], marker="o", label=key.replace("_ms", ""))
    ax.set(xlabel="achieved requests/s (open loop)", ylabel="latency from scheduled send, ms", yscale="log",
           title=title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


# -- servers ---------------------------------------------------------------------------------------

def start_ours(repo: Path, name: str, workdir: Path, batching: str | None, grpc_port: int = 0,
               model_config: Path | None = None, flags: list[str] = ()) -> ServerProcess:
    """`batching`: None for none, "" for --enable_batching with its defaults, else a BatchingParameters text;
    `model_config` serves that --model_config_file instead of repo/name; `flags` are more of them."""
    models_flags = ([f"--model_config_file={model_config}"] if model_config else
                    [f"--model_name={name}", f"--model_base_path={repo / name}"])
    flags = [*models_flags, f"--port={grpc_port}", "--file_system_poll_wait_seconds=0", *flags]
    if batching is not None:
        flags.append("--enable_batching")
    if batching:
        params = workdir / "batching.txt"
        params.write_text(batching)
        flags.append(f"--batching_parameters_file={params}")
    server = ServerProcess(*flags, log_dir=workdir)
    server.wait_available(name)
    return server


class ExternalServer:
    """A peer server process listening on a REST port on 127.0.0.1."""

    def __init__(self, command: list[str], port: int, log: Path, env: dict | None = None, cwd: Path | None = None):
        import requests

        self.url = f"http://127.0.0.1:{port}"
        self.log = log.open("w")
        self.process = subprocess.Popen(command, env=env, cwd=cwd, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                requests.get(self.url, timeout=5)
                return
            except requests.RequestException:  # not listening yet, or still importing TF
                if self.process.poll() is not None:
                    raise RuntimeError(f"{command[0]} exited with {self.process.returncode}, see {log}")
                time.sleep(0.2)
        raise TimeoutError(f"{command[0]} did not start, see {log}")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)
        self.log.close()


def start_tf_serving(repo: Path, name: str, workdir: Path) -> ExternalServer:
    """The real tensorflow_model_server on the same model, batching with its defaults as ours does."""
    port = free_port()
    command = ["tensorflow_model_server", f"--port={free_port()}", f"--rest_api_port={port}", f"--model_name={name}",
               f"--model_base_path={repo / name}", "--enable_batching"]
    server = ExternalServer(command, port, workdir / "tf_serving.log")
    wait_available(server.url, name, alive=lambda: server.process.poll() is None)
    return server


class FloorServer:
    """floor_servers.py (REST or gRPC) listening on a port of 127.0.0.1."""

    def __init__(self, kind: str, workdir: Path):
        self.port = free_port()
        self.url, self.target = f"http://127.0.0.1:{self.port}", f"127.0.0.1:{self.port}"
        self.log = (workdir / f"floor-{kind}.log").open("w")
        self.process = subprocess.Popen([sys.executable, str(HERE / "floor_servers.py"), kind, str(self.port)],
                                        stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"floor_servers.py {kind} did not start, see {self.log.name}") from None
                time.sleep(0.1)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)
        self.log.close()


def start_gunicorn(model_dir: Path, workdir: Path, naive: bool) -> ExternalServer:
    """Flask peer under gunicorn, 2 workers (flask_peer.py)."""
    port = free_port()
    env = {**os.environ, "MODEL_DIR": str(model_dir), "PEER_MODE": "naive" if naive else "once",
           "PYTHONPATH": str(HERE)}
    command = [sys.executable, "-m", "gunicorn", "-w", "2", "--timeout", "120", "-b", f"127.0.0.1:{port}",
               "flask_peer:app"]
    return ExternalServer(command, port, workdir / f"gunicorn-{port}.log", env=env, cwd=HERE)


# -- the run ---------------------------------------------------------------------------------------

LAYOUTS = {  # name: (server and limit CPUs, load generator CPUs)
    "pinned": ({0}, set(range(1, os.cpu_count()))),
    "shared": (set(range(os.cpu_count())), set(range(os.cpu_count()))),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mid", choices=sorted(models.MODELS))
    parser.add_argument("--seconds", type=float, default=8.0, help="per measurement (1 to 60)")
    parser.add_argument("--quick", action="store_true", help="3-second measurements, no naive peer")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--p99-bound-ms", type=float, default=100.0, help="latency bound that defines the knee")
    parser.add_argument("--logging", action="store_true", help="measure request logging's cost only")
    parser.add_argument("--limit-of", nargs=2, metavar=("MODEL_DIR", "NAME"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    seconds = 3.0 if args.quick else args.seconds
    if args.limit_of:
        print(json.dumps(in_process_limit(Path(args.limit_of[0]), args.limit_of[1], seconds)))
        return 0
    if not 1 <= seconds <= 60:
        parser.error(f"--seconds must be within 1..60 (a bounded run), received {seconds}")
    if args.logging:
        return logging_cost(args.model, seconds, args.out)
    missing = [tool for tool in ("wrk", "h2load") if shutil.which(tool) is None]
    if missing:
        parser.error(f"{' and '.join(missing)} not found: apt-get install wrk nghttp2-client")
    if os.cpu_count() < 2:
        parser.error("the pinned layout needs 2 CPUs or more (server on one, load generators on the others)")
    workdir = Path(tempfile.mkdtemp(prefix="serving-bench-"))
    repo = workdir / "repo"
    model_dir = models.build(args.model, repo)
    x1 = models.sample(args.model, 1)
    body = workdir / "body.json"
    body.write_bytes(models.json_body(x1))
    results = {"machine": machine(), "model": args.model, "seconds": seconds, "request_bytes": body.stat().st_size,
               "connections": CONNECTIONS, "p99_bound_ms": args.p99_bound_ms, "layouts": {}, "ratios": {}}
    for layout, cpus in LAYOUTS.items():
        measured = measure_layout(layout, cpus, repo, model_dir, args.model, body, seconds, workdir)
        results["layouts"][layout] = measured
        results["ratios"][layout] = ratios(measured)
        results["ratios"][layout]["knee_per_s"] = knee(measured["rest_open_loop"], args.p99_bound_ms)
    if not args.quick:
        print("[+] Flask, model loaded per request", flush=True)
        peer = start_gunicorn(model_dir, workdir, naive=True)
        try:
            results["flask_naive"] = wrk(peer.url + predict_url(args.model), body, 2, seconds, workdir)
        finally:
            peer.stop()
        results["ratios"]["shared"]["rest_vs_naive"] = (results["layouts"]["shared"]["rest_batching"]["per_s"]
                                                        / max(results["flask_naive"]["per_s"], 1e-9))
    write(results, args.out / f"serving_{args.model}")
    plot(results["layouts"]["shared"]["rest_open_loop"], args.out / f"serving_{args.model}_latency.png",
         f"ours, REST with batching, {args.model}, all cores shared")
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


def predict_url(model: str) -> str:
    return f"/v1/models/{model}:predict"


def measure_layout(layout: str, cpus: tuple[set[int], set[int]], repo: Path, model_dir: Path, model: str, body: Path,
                   seconds: float, workdir: Path) -> dict:
    """Everything measured with the server (and the in-process limit) on cpus[0] and the load on cpus[1]."""
    server_cpus, client_cpus = cpus
    url = predict_url(model)
    step = lambda text: print(f"[{layout}: server on CPUs {sorted(server_cpus)}] {text}", flush=True)  # noqa: E731
    r = {"server_cpus": sorted(server_cpus), "client_cpus": sorted(client_cpus)}

    step(f"in-process limit of {model_dir}")
    with on_cpus(server_cpus):
        r["limit"] = measure_limit(model_dir, model, seconds)
    step("ours, REST and gRPC, with batching (its defaults) and without")
    grpc_port = free_port()
    with on_cpus(server_cpus):  # the servers' threads inherit these CPUs
        batching = start_ours(repo, model, workdir, batching="", grpc_port=grpc_port)
        plain = start_ours(repo, model, workdir, batching=None)
    try:
        with on_cpus(client_cpus):
            r["rest_batching"] = wrk(batching.url + url, body, CONNECTIONS, seconds, workdir)
            r["rest_open_loop"] = sweep(batching.url + url, body, r["rest_batching"]["per_s"], seconds / 2)
            request = models.grpc_request(model, models.sample(model, 1))
            r["grpc_batching"] = h2load_grpc(f"127.0.0.1:{grpc_port}", request, CONNECTIONS, seconds, workdir)
            r["rest_no_batching"] = wrk(plain.url + url, body, CONNECTIONS, seconds, workdir)
            rounds: dict[str, list[dict]] = {"rest_low_load": [], "rest_low_load_no_batching": []}
            for _ in range(LOW_LOAD_ROUNDS):  # one connection, the two servers in turn: their difference is small
                rounds["rest_low_load"].append(wrk(batching.url + url, body, 1, seconds / 2, workdir))
                rounds["rest_low_load_no_batching"].append(wrk(plain.url + url, body, 1, seconds / 2, workdir))
            for key, runs in rounds.items():
                r[key] = {field: statistics.median(run[field] for run in runs)
                          for field in ("per_s", "p50_ms", "p99_ms", "client_cpu_share")} | {"rounds": runs}
    finally:
        batching.stop()
        plain.stop()
    step("Flask + gunicorn, model loaded once")
    with on_cpus(server_cpus):
        peer = start_gunicorn(model_dir, workdir, naive=False)
    try:
        with on_cpus(client_cpus):
            r["flask_once"] = wrk(peer.url + url, body, CONNECTIONS, seconds, workdir)
    finally:
        peer.stop()
    step("the stacks' floor: aiohttp and grpc's thread pool server answering a fixed response")
    for kind in ("rest", "grpc"):
        with on_cpus(server_cpus):
            floor = FloorServer(kind, workdir)
        try:
            with on_cpus(client_cpus):
                r[f"floor_{kind}"] = (wrk(floor.url + url, body, CONNECTIONS, seconds, workdir) if kind == "rest" else
                                      h2load_grpc(floor.target, request, CONNECTIONS, seconds, workdir))
        finally:
            floor.stop()
    if shutil.which("tensorflow_model_server"):
        step("tensorflow_model_server, REST, batching")
        with on_cpus(server_cpus):
            server = start_tf_serving(repo, model, workdir)
        try:
            with on_cpus(client_cpus):
                r["tf_serving_rest_batching"] = wrk(server.url + url, body, CONNECTIONS, seconds, workdir)
        finally:
            server.stop()
    return r


# -- request logging's cost ---------------------------------------------------------------------------

LOGGING_ROUNDS = 5


def logged_copy(model_dir: Path, name: str, workdir: Path, sampling_rate: float) -> Path:
    """The model again, shipping a schema.json with each value of its (flattened) input a float32 feature seen in
    [0, 1] (what bench_models.sample draws), and a --model_config_file logging it; returns the config file."""
    version = workdir / "logged" / name / "1"
    shutil.copytree(model_dir, version)
    width = int(np.prod(models.MODELS[name][1]))
    features = [{"name": f"v{j}", "dtype": "float32", "min": 0.0, "max": 1.0, "mean": 0.5, "std": 0.29}
                for j in range(width)]
    (version / "assets.extra").mkdir(exist_ok=True)
    (version / "assets.extra" / "schema.json").write_text(json.dumps({"kind": "numeric", "features": features}))
    config = workdir / "logged.config"
    config.write_text(f'model_config_list {{ config {{ name: "{name}" base_path: "{version.parent}" '
                      f'logging_config {{ log_collector_config {{ type: "tfrecord" '
                      f'filename_prefix: "{workdir / "logs" / name}" }} '
                      f'sampling_config {{ sampling_rate: {sampling_rate} }} }} }} }}')
    return config


def logging_cost(model: str, seconds: float, out: Path) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="logging-bench-"))
    server_cpus, client_cpus = LAYOUTS["pinned"]
    model_dir = models.build(model, workdir / "repo")
    x1 = models.sample(model, 1)
    body = models.json_body(x1)
    request = models.grpc_request(model, x1)
    monitoring = workdir / "monitoring.config"
    monitoring.write_text("prometheus_config { enable: true }")
    config = logged_copy(model_dir, model, workdir, 1.0)
    results = {"machine": machine(), "model": model, "seconds": seconds, "request_bytes": len(body),
               "connections": CONNECTIONS, "rounds": LOGGING_ROUNDS, "server_cpus": sorted(server_cpus),
               "client_cpus": sorted(client_cpus), "runs": {}}
    ports = {"off": free_port(), "on": free_port()}
    print(f"[logging] {model}: servers on CPUs {sorted(server_cpus)}, load on {sorted(client_cpus)}", flush=True)
    with on_cpus(server_cpus):
        servers = {"off": start_ours(workdir / "repo", model, workdir, "", ports["off"]),
                   "on": start_ours(workdir / "repo", model, workdir, "", ports["on"], model_config=config,
                                    flags=[f"--monitoring_config_file={monitoring}",
                                           "--request_log_max_disk_bytes=8589934592"])}
    try:
        with on_cpus(client_cpus):
            for round_ in range(LOGGING_ROUNDS):
                for api in ("rest", "grpc"):
                    for which in (("off", "on") if round_ % 2 == 0 else ("on", "off")):
                        load = (loadgen.closed_loop(servers[which].url + predict_url(model), body, CONNECTIONS,
                                                    seconds) if api == "rest" else
                                loadgen.grpc_closed_loop(f"127.0.0.1:{ports[which]}",
                                                         "/tensorflow.serving.PredictionService/Predict",
                                                         request.SerializeToString(), CONNECTIONS, seconds))
                        server_cpu = cpu_seconds(servers[which].process.pid)
                        run, cpu = _with_cpu(load)
                        run["client_cpu_share"] = cpu / (run["seconds"] * len(client_cpus))
                        run["server_cpu_ms"] = (cpu_seconds(servers[which].process.pid) - server_cpu) * 1000 / max(
                            run["ok"], 1)  # per request: what other work on the host does not change much
                        results["runs"].setdefault(f"{api}_{which}", []).append(run)
                        print(f"  round {round_ + 1} {api} logging {which}: {run['per_s']:.0f}/s, "
                              f"p50 {run['p50_ms']:.1f} ms, errors {run['errors'] or 0}", flush=True)
        time.sleep(2)  # the logging thread flushes within a second
        results["logged"] = _log_counts(servers["on"].url, workdir / "logs", model)
        results["rss_mib"] = {which: server.rss_mib() for which, server in servers.items()}
    finally:
        for server in servers.values():
            server.stop()
    results["load_average_end"] = os.getloadavg()
    for api in ("rest", "grpc"):  # each round's two runs are neighbours in time: their ratio is the least drifted
        offs, ons = ([r["per_s"] for r in results["runs"][f"{api}_{w}"]] for w in ("off", "on"))
        off, on = statistics.median(offs), statistics.median(ons)
        cpu_off, cpu_on = (statistics.median(r["server_cpu_ms"] for r in results["runs"][f"{api}_{w}"])
                           for w in ("off", "on"))
        results[api] = {"off_per_s": off, "on_per_s": on, "ratio": statistics.median(b / a for a, b in zip(offs, ons)),
                        "ratio_of_medians": on / off, "cost_us": (1 / on - 1 / off) * 1e6,
                        "server_cpu_ms_off": cpu_off, "server_cpu_ms_on": cpu_on, "cpu_ratio": cpu_off / cpu_on}
    write_logging(results, out / "logging")
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


def _with_cpu(load) -> tuple[dict, float]:
    """Run a load coroutine here; its result and the CPU seconds this process spent on it."""
    started = time.process_time()
    result = asyncio.run(load)
    return result, time.process_time() - started


def _log_counts(url: str, logs: Path, model: str) -> dict:
    import requests

    text = requests.get(f"{url}/monitoring/prometheus/metrics", timeout=30).text
    count = lambda pattern: sum(float(v) for v in re.findall(pattern, text))  # noqa: E731
    files = sorted(logs.glob(f"{model}-*.tfrecord"))
    return {"written": count(rf':tensorflow:serving:request_log_count{{model_name="{model}",status_code="OK"}} (\d+)'),
            "dropped": count(rf'serving_request_log_dropped_total{{model="{model}",reason="\w+"}} (\S+)'),
            "rows_counted": count(rf'serving_feature_rows_total{{model="{model}"}} (\S+)'),
            "rows_not_counted": count(rf'serving_feature_rows_skipped_total{{model="{model}"}} (\S+)'),
            "files": len(files), "bytes": sum(f.stat().st_size for f in files)}


def write_logging(results: dict, stem: Path) -> None:
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(results, indent=2))
    m, logged = results["machine"], results["logged"]
    lines = [f"# Request logging's cost: {results['model']} ({results['request_bytes']} B JSON request)", "",
             f"Machine: {described(m)}; "
             f"load average {m['load_average_1m']:g} at the start and {results['load_average_end'][0]:.2f} at the "
             f"end (other work shared the host: re-run on a quiet one). `python benchmarks/serving_bench.py "
             f"--logging --model {results['model']} --seconds {results['seconds']:g}`.", "",
             f"Both servers with batching (its defaults) on CPU {results['server_cpus']}, the Python load generators "
             f"(localhost.loadgen, {results['connections']} connections or calls, closed loop) on CPUs "
             f"{results['client_cpus']}; {results['rounds']} rounds of {results['seconds']:g} s, the two servers in "
             f"turn, medians. Logging on: the same SavedModel shipping a schema.json (every input value a feature, "
             f"counted per request) and a logging_config with sampling_rate 1.0 (every request a PredictionLog "
             f"record).", "",
             "| API | logging off, req/s | logging on, req/s | on / off, median of the rounds' (target >= 0.9) | "
             "of the medians | server CPU per request, off / on | throughput its CPU allows, on / off |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for api in ("rest", "grpc"):
        r = results[api]
        lines.append(f"| {api.upper() if api == 'rest' else 'gRPC'} | {r['off_per_s']:.0f} | {r['on_per_s']:.0f} | "
                     f"**{r['ratio']:.2f}** | {r['ratio_of_medians']:.2f} | {r['server_cpu_ms_off']:.2f} / "
                     f"{r['server_cpu_ms_on']:.2f} ms | **{r['cpu_ratio']:.2f}** |")
    lines += ["", f"Records written {logged['written']:.0f}, dropped {logged['dropped']:.0f}, in {logged['files']} "
              f"files of {logged['bytes'] / 2**20:.0f} MiB; rows counted against the schema "
              f"{logged['rows_counted']:.0f}, not counted (queue full) {logged['rows_not_counted']:.0f}. Server RSS "
              f"at the end: {results['rss_mib']['off']:.0f} MiB off, {results['rss_mib']['on']:.0f} MiB on.", "",
              "The server's CPU time per request (utime + stime from /proc, over each run) is what the host's other "
              "work changes least: its ratio is the throughput ratio a server alone on its core would see.", "",
              "| run | per s | p50 ms | p99 ms | errors | server CPU ms per request | client CPU share |",
              "|---|---:|---:|---:|---|---:|---:|"]
    for key, runs in results["runs"].items():
        lines += [f"| {key} | {r['per_s']:.0f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['errors'] or ''} | "
                  f"{r['server_cpu_ms']:.2f} | {r['client_cpu_share']:.2f} |" for r in runs]
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def ratios(r: dict) -> dict:
    limit = r["limit"]["items_per_s"]
    out = {
        "rest_vs_limit": r["rest_batching"]["per_s"] / limit,
        "grpc_vs_limit": r["grpc_batching"]["per_s"] / limit,
        "rest_vs_flask": r["rest_batching"]["per_s"] / r["flask_once"]["per_s"],
        "batching_on_vs_off": r["rest_batching"]["per_s"] / r["rest_no_batching"]["per_s"],
        "p99_overhead_low_load_ms": r["rest_low_load_no_batching"]["p99_ms"] - r["limit"]["batch1_p99_ms"],
        "batching_low_load_p50_cost_ms": r["rest_low_load"]["p50_ms"] - r["rest_low_load_no_batching"]["p50_ms"],
        "batching_low_load_p99_cost_ms": r["rest_low_load"]["p99_ms"] - r["rest_low_load_no_batching"]["p99_ms"],
    }
    for api in ("rest", "grpc"):  # the most a handler on this stack could reach: the model's time plus the stack's
        out[f"{api}_ceiling_vs_limit"] = 1 / (1 + limit / r[f"floor_{api}"]["per_s"])
    if "tf_serving_rest_batching" in r:
        out["rest_vs_tf_serving"] = r["rest_batching"]["per_s"] / r["tf_serving_rest_batching"]["per_s"]
    return out


def write(results: dict, stem: Path) -> None:
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(results, indent=2))
    m = results["machine"]
    lines = [f"# Serving benchmark: {results['model']} ({results['request_bytes']} B JSON request)", "",
             f"Machine: {described(m)}; "
             f"{results['seconds']:.0f} s per measurement, {results['connections']} connections (closed loop). "
             "Pinned: the server and the in-process limit on CPU 0, the load generators on the others; shared: "
             "everything on every CPU."]
    for layout, q in results["layouts"].items():
        lines += ["", f"## {layout}", "", "| what | per s | p50 ms (gRPC: mean) | p99 ms | client CPU share |",
                  "|---|---:|---:|---:|---:|"]
        lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in _rows(q)]
        lines += ["", f"Open loop, REST with batching (latency from the scheduled send time; knee = highest rate "
                  f"with p99 under {results['p99_bound_ms']:.0f} ms and no errors):", "",
                  "| offered/s | achieved/s | p50 ms | p90 ms | p99 ms | errors | client CPU share |",
                  "|---:|---:|---:|---:|---:|---|---:|"]
        lines += [f"| {p['offered_per_s']:.0f} | {p['achieved_per_s']:.0f} | {p['p50_ms']:.1f} | {p['p90_ms']:.1f} | "
                  f"{p['p99_ms']:.1f} | {p['errors'] or ''} | {p['client_cpu_share']:.2f} |" for p in q["rest_open_loop"]]
    if "flask_naive" in results:
        naive = results["flask_naive"]
        lines += ["", f"Flask loading the model per request (shared): {naive['per_s']:.2f}/s, p50 {naive['p50_ms']:.0f} ms."]
    layouts = list(results["ratios"])
    names = list(dict.fromkeys(k for r in results["ratios"].values() for k in r))
    lines += ["", "## Ratios", "", "| ratio | " + " | ".join(layouts) + " |", "|---|" + "---:|" * len(layouts)]
    lines += [f"| {name} | " + " | ".join(_cell(results["ratios"][layout].get(name, "")) for layout in layouts) + " |"
              for name in names]
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def _rows(q: dict) -> list[tuple]:
    limit = q["limit"]
    rows = [(f"in-process limit (best batch {limit['best_batch']}, {limit['threads']} threads)", limit["items_per_s"],
             "", "", ""),
            ("in-process batch 1, sequential", limit["batch1_per_s"], limit["batch1_p50_ms"], limit["batch1_p99_ms"], "")]
    for key, label in [("rest_batching", "ours REST, batching"), ("rest_no_batching", "ours REST, no batching"),
                       ("rest_low_load", "ours REST, batching, 1 connection"),
                       ("rest_low_load_no_batching", "ours REST, no batching, 1 connection"),
                       ("grpc_batching", "ours gRPC, batching"), ("flask_once", "Flask + gunicorn, model once"),
                       ("floor_rest", "aiohttp, fixed answer (the stack's floor)"),
                       ("floor_grpc", "grpc thread pool server, fixed answer (the stack's floor)"),
                       ("tf_serving_rest_batching", "tensorflow_model_server REST, batching")]:
        if key in q:
            v = q[key]
            rows.append((label, v["per_s"], v.get("p50_ms", v.get("mean_ms")), v.get("p99_ms", ""),
                         v["client_cpu_share"]))
    return rows


def _cell(value) -> str:
    return f"{value:.2f}" if isinstance(value, float) else str(value)


if __name__ == "__main__":
    sys.exit(main())
