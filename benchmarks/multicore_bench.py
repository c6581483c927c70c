"""Using both cores (issue #31, item 2): one server process against --server_processes N, every CPU shared.

    python benchmarks/multicore_bench.py [--model mid] [--seconds 8] [--rounds 3] [--processes 2]

One process runs its Python (parsing, the event loop) on one core at a time. --server_processes N runs N complete
servers on the same ports (serving/supervisor.py: SO_REUSEPORT spreads the connections; each process pinned to its
share of the CPUs, with 1 intra-op TensorFlow thread and inter-op threads for each CPU of its share). Against one
server with its defaults (one intra-op thread per op, one op per core). Both with batching (its defaults); closed
loop, CONNECTIONS connections, from wrk (REST) and h2load (gRPC), C programs; the layouts take turns, round by round
(medians). The ratio is to the in-process limit on every CPU (serving_bench's: the model's best batch, one calling
thread per core), measured again each round (this host's TensorFlow drifts by ~10 % within minutes); beside it the
server's CPU per request (every process, from /proc) and the cores it kept busy: near the machine's count, the CPUs
are spent and only a cheaper request goes faster. Only 127.0.0.1.
Writes benchmarks/results/multicore_<model>.json and .md.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from serving_bench import (CONNECTIONS, cpu_seconds, h2load_grpc, measure_limit, predict_url, start_ours,  # noqa: E402
                           wrk)
import bench_models as models  # noqa: E402
from localhost.machine import described, machine  # noqa: E402
from localhost.ports import free_port  # noqa: E402
from serving.process import ServerProcess  # noqa: E402


def start_layout(processes: int, repo: Path, name: str, workdir: Path) -> tuple[ServerProcess, int]:
    """The server (with `processes` processes, each serving once this returns) and its gRPC port."""
    port = free_port()
    server = start_ours(repo, name, workdir, batching="", grpc_port=port, flags=[f"--server_processes={processes}"])
    deadline = time.monotonic() + 120
    while processes > 1 and server.log.read_text().count("Exporting HTTP/REST API") < processes:
        if time.monotonic() > deadline:
            raise TimeoutError(f"not every process of the server started:\n{server.log_tail()}")
        time.sleep(0.1)
    return server, port


def server_pids(server: ServerProcess) -> list[int]:
    """The server's process and its children (the processes of --server_processes)."""
    pid = server.process.pid
    return [pid, *map(int, Path(f"/proc/{pid}/task/{pid}/children").read_text().split())]


def load(pids: list[int], rest_url: str, grpc_target: str | None, protocol: str, name: str, body: Path,
         seconds: float, workdir: Path) -> dict:
    """CONNECTIONS connections to a server (REST at `rest_url`, gRPC at `grpc_target`); its rate, and the CPU per
    request of all its processes (`pids`)."""
    before = sum(cpu_seconds(pid) for pid in pids)
    if protocol == "rest":
        result = wrk(rest_url, body, CONNECTIONS, seconds, workdir)
        errors = result["non2xx"] + result["socket_errors"]
    else:
        result = h2load_grpc(grpc_target, models.grpc_request(name, models.sample(name, 1)), CONNECTIONS, seconds,
                             workdir)
        errors = result["failed"]
    server_cpu_s = sum(cpu_seconds(pid) for pid in pids) - before
    return {"per_s": result["per_s"], "errors": errors,
            "server_cpu_ms_per_request": server_cpu_s * 1000 / (result["per_s"] * seconds),
            "server_cores_busy": server_cpu_s / seconds, "client_cpu_share": result["client_cpu_share"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mid", choices=sorted(models.MODELS))
    parser.add_argument("--seconds", type=float, default=8.0, help="per measurement")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--processes", type=int, default=os.cpu_count(), help="server processes of the other layout")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args(argv)
    if args.processes < 2:
        parser.error(f"--processes must be at least 2; received {args.processes}")
    if shutil.which("wrk") is None or shutil.which("h2load") is None:
        parser.error("wrk and h2load are needed: apt-get install wrk nghttp2-client")
    workdir, model_dir, body, results = prepare("multicore-bench-", args.model, args.seconds, args.rounds)
    repo = model_dir.parent.parent
    layouts = {"1 process": 1, f"--server_processes={args.processes}": args.processes}
    started = {label: start_layout(n, repo, args.model, workdir) for label, n in layouts.items()}
    runs: dict[str, dict[str, list[dict]]] = {label: {"rest": [], "grpc": []} for label in layouts}
    try:
        for round_ in range(args.rounds):
            limit = round_limit(results, model_dir, args.model, args.seconds)
            order = list(layouts) if round_ % 2 == 0 else list(reversed(layouts))
            for label in order:
                for protocol in ("rest", "grpc"):
                    print(f"[round {round_ + 1}] {label}, {protocol}", flush=True)
                    server, port = started[label]
                    run = load(server_pids(server), server.url + predict_url(args.model), f"127.0.0.1:{port}",
                               protocol, args.model, body, args.seconds, workdir)
                    runs[label][protocol].append(run | {"limit": limit, "ratio": run["per_s"] / limit})
    finally:
        for server, _ in started.values():
            server.stop()
    results["layouts"] = {label: {protocol: {
        "per_s": statistics.median(run["per_s"] for run in measured),
        "ratio": statistics.median(run["ratio"] for run in measured),
        "server_cpu_ms_per_request": statistics.median(run["server_cpu_ms_per_request"] for run in measured),
        "server_cores_busy": statistics.median(run["server_cores_busy"] for run in measured),
        "errors": sum(run["errors"] for run in measured), "rounds": measured}
        for protocol, measured in by_protocol.items()} for label, by_protocol in runs.items()}
    write(results, args.out / f"multicore_{args.model}")
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


def prepare(prefix: str, model: str, seconds: float, rounds: int) -> tuple[Path, Path, Path, dict]:
    """A work directory with `model` built and a one-row REST body for it; the results begun: the machine and the
    settings."""
    workdir = Path(tempfile.mkdtemp(prefix=prefix))
    model_dir = models.build(model, workdir / "repo")
    body = workdir / "body.json"
    body.write_bytes(models.json_body(models.sample(model, 1)))
    results = {"machine": machine(), "model": model, "seconds": seconds, "rounds": rounds, "connections": CONNECTIONS,
               "limits": []}
    return workdir, model_dir, body, results


def round_limit(results: dict, model_dir: Path, model: str, seconds: float) -> float:
    """The in-process limit on every CPU, measured again each round: this host's TensorFlow drifts by ~10 % within
    minutes, so a round's ratios are to the limit of that round. results["limit"] is the rounds' median."""
    print(f"[limit] in-process, {model}, every CPU", flush=True)
    results["limits"].append(measure_limit(model_dir, model, seconds))
    ordered = sorted(results["limits"], key=lambda limit: limit["items_per_s"])
    results["limit"] = ordered[(len(ordered) - 1) // 2]
    return results["limits"][-1]["items_per_s"]


def save(results: dict, stem: Path, title: str, script: str, setting: str, table: list[str]) -> None:
    """`results` as stem.json, and as stem.md (printed too): `title`, how `script` measured (`setting`: what shared
    the CPUs, with what), the limit, then `table`'s lines."""
    m, limit = results["machine"], results["limit"]
    each_round = ", ".join(f"{each['items_per_s']:.0f}" for each in results["limits"])
    lines = [f"# {title} ({results['model']})", "",
             f"Machine: {described(m)}; load average (1 min) {m['load_average_1m']} at the start. `python {script} "
             f"--model {results['model']}`: {setting}, {results['connections']} connections in all, "
             f"{results['seconds']:.0f} s a measurement, medians of {results['rounds']} rounds (the layouts "
             f"alternating).", "",
             f"In-process limit on every CPU: {limit['items_per_s']:.0f} rows/s (batch {limit['best_batch']}, "
             f"{limit['threads']} calling threads), {1000 * limit['threads'] / limit['items_per_s']:.3f} CPU ms a row: "
             f"the median of the rounds' ({each_round}); "
             f"each ratio is to its own round's limit.", "", *table]
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(results, indent=2))
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def write(results: dict, stem: Path) -> None:
    lines = ["| layout | REST per s | REST ratio | REST server CPU ms/request | gRPC per s | gRPC ratio | "
             "gRPC server CPU ms/request | server cores busy (REST / gRPC) | errors |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for label, r in results["layouts"].items():
        rest, grpc = r["rest"], r["grpc"]
        lines.append(f"| {label} | {rest['per_s']:.0f} | {rest['ratio']:.2f} | {rest['server_cpu_ms_per_request']:.3f} "
                     f"| {grpc['per_s']:.0f} | {grpc['ratio']:.2f} | {grpc['server_cpu_ms_per_request']:.3f} | "
                     f"{rest['server_cores_busy']:.2f} / {grpc['server_cores_busy']:.2f} | "
                     f"{rest['errors'] + grpc['errors']} |")
    save(results, stem, "Every core: one server process or several", "benchmarks/multicore_bench.py",
         "every CPU shared by the servers and the load generators, batching on", lines)


if __name__ == "__main__":
    raise SystemExit(main())
