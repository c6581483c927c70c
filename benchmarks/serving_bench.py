"""Serving throughput and latency, ours against the in-process limit and against peers, in one run.

    python benchmarks/serving_bench.py [--model mid] [--seconds 8] [--quick]

Measured side by side on this machine, in one run (the host drifts, so only ratios within a run
mean anything):
  limit      the SavedModel's serving function called in-process: batch 1 sequential (latency), and
             the best batch size with one thread per core (throughput)
  ours       `python -m serving` REST with and without batching, gRPC with batching
  flask      Flask + gunicorn (2 workers) with the model loaded once per worker
  naive      Flask loading the model on every request (the tutorial pattern)
  tf_serving tensorflow_model_server with the same model and batching file, when it is on PATH
Load comes from wrk (REST) and h2load (gRPC), C programs, closed loop with 32 connections, and
serving/loadgen.py, open loop at fixed arrival rates (latency from the scheduled send time), swept to find
the knee: the highest rate whose p99 stays under --p99-bound-ms. The client shares the 2 cores
with the server and its CPU share is reported. Only 127.0.0.1. Writes
benchmarks/results/serving_<model>.json, .md and a latency-vs-throughput plot (_latency.png).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
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
import tensorflow as tf  # noqa: E402
from tensorflow_serving.apis import predict_pb2  # noqa: E402

import bench_models as models  # noqa: E402
from serving.loadgen import knee  # noqa: E402
from serving.local import free_port  # noqa: E402
from serving.machine import machine  # noqa: E402
from serving.process import ServerProcess, wait_available  # noqa: E402

CONNECTIONS = 32
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

def in_process_limit(model_dir: Path, name: str, seconds: float) -> dict:
    function = tf.saved_model.load(str(model_dir)).signatures["serving_default"]
    one = tf.constant(models.sample(name, 1))
    for _ in range(20):
        function(x=one)
    latencies = []
    deadline = time.perf_counter() + seconds / 2
    while time.perf_counter() < deadline:
        started = time.perf_counter()
        function(x=one)
        latencies.append((time.perf_counter() - started) * 1000)
    result = {"batch1_p50_ms": float(np.percentile(latencies, 50)), "batch1_p99_ms": float(np.percentile(latencies, 99)),
              "batch1_per_s": 1000 / float(np.mean(latencies)), "by_batch": {}}
    for batch in (1, 8, 16, 32, 64):
        result["by_batch"][batch] = _threaded_throughput(function, tf.constant(models.sample(name, batch)),
                                                         os.cpu_count(), seconds / 2)
    best = max(result["by_batch"], key=result["by_batch"].get)
    result.update(best_batch=best, items_per_s=result["by_batch"][best])
    return result


def _threaded_throughput(function, x, threads: int, seconds: float) -> float:
    function(x=x)
    counts = [0] * threads
    deadline = time.perf_counter() + seconds

    def work(i):
        while time.perf_counter() < deadline:
            function(x=x)
            counts[i] += 1

    workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return sum(counts) * int(x.shape[0]) / seconds


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
    """One open-loop run of serving.loadgen in its own process, so its CPU can be measured."""
    output, cpu = run_measured([sys.executable, "-m", "serving.loadgen", "--url", url, "--body", str(body),
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

def start_ours(repo: Path, name: str, workdir: Path, batching: bool, grpc_port: int = 0) -> ServerProcess:
    flags = [f"--model_name={name}", f"--model_base_path={repo / name}", f"--port={grpc_port}",
             "--file_system_poll_wait_seconds=0"]
    if batching:
        params = workdir / "batching.txt"
        params.write_text("max_batch_size { value: 32 } batch_timeout_micros { value: 1000 } "
                          f"num_batch_threads {{ value: {os.cpu_count()} }}")
        flags += ["--enable_batching", f"--batching_parameters_file={params}"]
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
    """The real tensorflow_model_server on the same model and batching parameters as ours."""
    port = free_port()
    command = ["tensorflow_model_server", f"--port={free_port()}", f"--rest_api_port={port}", f"--model_name={name}",
               f"--model_base_path={repo / name}", "--enable_batching",
               f"--batching_parameters_file={workdir / 'batching.txt'}"]
    server = ExternalServer(command, port, workdir / "tf_serving.log")
    wait_available(server.url, name, alive=lambda: server.process.poll() is None)
    return server


def start_gunicorn(model_dir: Path, workdir: Path, naive: bool) -> ExternalServer:
    """Flask peer under gunicorn, 2 workers (flask_peer.py)."""
    port = free_port()
    env = {**os.environ, "MODEL_DIR": str(model_dir), "PEER_MODE": "naive" if naive else "once",
           "PYTHONPATH": str(HERE)}
    command = [sys.executable, "-m", "gunicorn", "-w", "2", "--timeout", "120", "-b", f"127.0.0.1:{port}",
               "flask_peer:app"]
    return ExternalServer(command, port, workdir / f"gunicorn-{port}.log", env=env, cwd=HERE)


# -- the run ---------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mid", choices=sorted(models.MODELS))
    parser.add_argument("--seconds", type=float, default=8.0, help="per measurement (1 to 60)")
    parser.add_argument("--quick", action="store_true", help="3-second measurements, no naive peer")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--p99-bound-ms", type=float, default=100.0, help="latency bound that defines the knee")
    args = parser.parse_args(argv)
    seconds = 3.0 if args.quick else args.seconds
    if not 1 <= seconds <= 60:
        parser.error(f"--seconds must be within 1..60 (a bounded run), received {seconds}")
    missing = [tool for tool in ("wrk", "h2load") if shutil.which(tool) is None]
    if missing:
        parser.error(f"{' and '.join(missing)} not found: apt-get install wrk nghttp2-client")
    workdir = Path(tempfile.mkdtemp(prefix="serving-bench-"))
    repo = workdir / "repo"
    model_dir = models.build(args.model, repo)
    x1 = models.sample(args.model, 1)
    body = workdir / "body.json"
    body.write_text(json.dumps({"instances": np.round(x1.astype(np.float64), 3).tolist()}))
    url = f"/v1/models/{args.model}:predict"
    results = {"machine": machine(), "model": args.model, "seconds": seconds, "request_bytes": body.stat().st_size,
               "connections": CONNECTIONS}

    print(f"[1/6] in-process limit of {model_dir}", flush=True)
    results["limit"] = in_process_limit(model_dir, args.model, seconds)

    print("[2/6] ours, REST, batching", flush=True)
    grpc_port = free_port()
    server = start_ours(repo, args.model, workdir, batching=True, grpc_port=grpc_port)
    try:
        results["rest_batching"] = wrk(server.url + url, body, CONNECTIONS, seconds, workdir)
        results["rest_low_load"] = wrk(server.url + url, body, 1, seconds, workdir)
        results["rest_open_loop"] = sweep(server.url + url, body, results["rest_batching"]["per_s"], seconds / 2)
        print("[3/6] ours, gRPC, batching", flush=True)
        request = predict_pb2.PredictRequest()
        request.model_spec.name = args.model
        request.inputs["x"].CopyFrom(tf.make_tensor_proto(x1))
        results["grpc_batching"] = h2load_grpc(f"127.0.0.1:{grpc_port}", request, CONNECTIONS, seconds, workdir)
    finally:
        server.stop()

    print("[4/6] ours, REST, no batching", flush=True)
    server = start_ours(repo, args.model, workdir, batching=False)
    try:
        results["rest_no_batching"] = wrk(server.url + url, body, CONNECTIONS, seconds, workdir)
        results["rest_low_load_no_batching"] = wrk(server.url + url, body, 1, seconds, workdir)
    finally:
        server.stop()

    print("[5/6] Flask + gunicorn, model loaded once", flush=True)
    peer = start_gunicorn(model_dir, workdir, naive=False)
    try:
        results["flask_once"] = wrk(peer.url + url, body, CONNECTIONS, seconds, workdir)
    finally:
        peer.stop()
    if not args.quick:
        print("[6/6] Flask, model loaded per request", flush=True)
        peer = start_gunicorn(model_dir, workdir, naive=True)
        try:
            results["flask_naive"] = wrk(peer.url + url, body, 2, seconds, workdir)
        finally:
            peer.stop()

    if shutil.which("tensorflow_model_server"):
        print("[+] tensorflow_model_server, REST, batching", flush=True)
        server = start_tf_serving(repo, args.model, workdir)
        try:
            results["tf_serving_rest_batching"] = wrk(server.url + url, body, CONNECTIONS, seconds, workdir)
        finally:
            server.stop()
    else:
        print("tensorflow_model_server is not on PATH: that peer is skipped", flush=True)

    results["ratios"] = ratios(results)
    results["ratios"]["knee_per_s"] = knee(results["rest_open_loop"], args.p99_bound_ms)
    results["p99_bound_ms"] = args.p99_bound_ms
    write(results, args.out / f"serving_{args.model}")
    plot(results["rest_open_loop"], args.out / f"serving_{args.model}_latency.png",
         f"ours, REST with batching, {args.model}")
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


def ratios(r: dict) -> dict:
    limit = r["limit"]["items_per_s"]
    out = {
        "rest_vs_limit": r["rest_batching"]["per_s"] / limit,
        "grpc_vs_limit": r["grpc_batching"]["per_s"] / limit,
        "rest_vs_flask": r["rest_batching"]["per_s"] / r["flask_once"]["per_s"],
        "batching_on_vs_off": r["rest_batching"]["per_s"] / r["rest_no_batching"]["per_s"],
        "p99_overhead_low_load_ms": r["rest_low_load_no_batching"]["p99_ms"] - r["limit"]["batch1_p99_ms"],
        "p99_overhead_low_load_batching_ms": r["rest_low_load"]["p99_ms"] - r["limit"]["batch1_p99_ms"],
    }
    if "flask_naive" in r:
        out["rest_vs_naive"] = r["rest_batching"]["per_s"] / max(r["flask_naive"]["per_s"], 1e-9)
    if "tf_serving_rest_batching" in r:
        out["rest_vs_tf_serving"] = r["rest_batching"]["per_s"] / r["tf_serving_rest_batching"]["per_s"]
    return out


def write(results: dict, stem: Path) -> None:
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(results, indent=2))
    m, r, q = results["machine"], results["ratios"], results
    rows = [
        ("in-process limit (best batch %d, %d threads)" % (q["limit"]["best_batch"], m["cores"]),
         q["limit"]["items_per_s"], "", "", ""),
        ("in-process batch 1, sequential", q["limit"]["batch1_per_s"], q["limit"]["batch1_p50_ms"],
         q["limit"]["batch1_p99_ms"], ""),
        ("ours REST, batching", q["rest_batching"]["per_s"], q["rest_batching"]["p50_ms"], q["rest_batching"]["p99_ms"],
         q["rest_batching"]["client_cpu_share"]),
        ("ours REST, no batching", q["rest_no_batching"]["per_s"], q["rest_no_batching"]["p50_ms"],
         q["rest_no_batching"]["p99_ms"], q["rest_no_batching"]["client_cpu_share"]),
        ("ours REST, batching, 1 connection", q["rest_low_load"]["per_s"], q["rest_low_load"]["p50_ms"],
         q["rest_low_load"]["p99_ms"], q["rest_low_load"]["client_cpu_share"]),
        ("ours REST, no batching, 1 connection", q["rest_low_load_no_batching"]["per_s"],
         q["rest_low_load_no_batching"]["p50_ms"], q["rest_low_load_no_batching"]["p99_ms"],
         q["rest_low_load_no_batching"]["client_cpu_share"]),
        ("ours gRPC, batching", q["grpc_batching"]["per_s"], q["grpc_batching"]["mean_ms"], "",
         q["grpc_batching"]["client_cpu_share"]),
        ("Flask + gunicorn, model once", q["flask_once"]["per_s"], q["flask_once"]["p50_ms"], q["flask_once"]["p99_ms"],
         q["flask_once"]["client_cpu_share"]),
    ]
    if "flask_naive" in q:
        rows.append(("Flask, model per request", q["flask_naive"]["per_s"], q["flask_naive"]["p50_ms"],
                     q["flask_naive"]["p99_ms"], q["flask_naive"]["client_cpu_share"]))
    fmt = lambda v: f"{v:.2f}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = [f"# Serving benchmark: {results['model']} ({results['request_bytes']} B JSON request)", "",
             f"Machine: {m['cpu']}, {m['cores']} cores, Python {m['python']}, TF {m['tensorflow']}, {m['date']}; "
             f"{results['seconds']:.0f} s per measurement, {results['connections']} connections (closed loop).", "",
             "| what | per s | p50 ms (gRPC: mean) | p99 ms | client CPU share |", "|---|---:|---:|---:|---:|"]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    lines += ["", f"Open loop, REST with batching (latency from the scheduled send time; knee = highest rate "
              f"with p99 under {results['p99_bound_ms']:.0f} ms and no errors):", "",
              "| offered/s | achieved/s | p50 ms | p90 ms | p99 ms | errors | client CPU share |",
              "|---:|---:|---:|---:|---:|---|---:|"]
    lines += [f"| {p['offered_per_s']:.0f} | {p['achieved_per_s']:.0f} | {p['p50_ms']:.1f} | {p['p90_ms']:.1f} | "
              f"{p['p99_ms']:.1f} | {p['errors'] or ''} | {p['client_cpu_share']:.2f} |" for p in q["rest_open_loop"]]
    lines += ["", "| ratio | value |", "|---|---:|"] + [f"| {k} | {v:.2f} |" for k, v in r.items()]
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
