"""How the embedded server's cost grows with the model and the request: where it is near the in-process limit and
where it is not (issue #31, item 4).

    python benchmarks/cost_growth_bench.py [--seconds 6] [--models digits mid big] [--rows 1 8 64]

For each model (digits: tiny; mid: a 32x32x3 CNN; big: the same with four times the filters, over 10 ms a row)
and each request size (1, 8 and 64 rows), in the pinned layout of serving_bench.py (the server and the in-process
limit on CPU 0, the load generators on the others, so the server's figures are one core's):
  limit     the model's best in-process throughput, rows/s, through the server's Servable (serving_bench's)
  served    our server with batching (its defaults), closed loop: wrk (REST, JSON) and h2load (gRPC), rows/s
  ratio     served / limit
  overhead  the server's CPU per request (read from /proc before and after the load) minus the model's own time
            for its rows at the limit, in ms: what the server spends on a request beyond the model, whether or not
            the load kept it busy; and, as the issue defines it on one busy core, rows x (1/served - 1/limit)
  busy      the server's CPU seconds over the measurement's seconds: near 1, the load kept its core busy
Closed-loop connections: 32 / rows (at least 4), so that batching has rows to merge; each measurement lasts long
enough for 10 requests per connection (requests still in flight at the end are not counted). Writes
benchmarks/results/cost_growth.json and .md.
"""
from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from serving_bench import (LAYOUTS, cpu_seconds, h2load_grpc, measure_limit, on_cpus, predict_url,  # noqa: E402
                           start_ours, wrk)
import bench_models as models  # noqa: E402
from localhost.machine import described, machine  # noqa: E402
from localhost.ports import free_port  # noqa: E402

REQUESTS_PER_CONNECTION = 10


def connections_for(rows: int) -> int:
    return max(4, math.ceil(32 / rows))


def measure_model(name: str, rows_per_request: list[int], seconds: float, workdir: Path) -> dict:
    server_cpus, client_cpus = LAYOUTS["pinned"]
    repo = workdir / "repo"
    model_dir = models.build(name, repo)
    print(f"[{name}] in-process limit on CPU 0", flush=True)
    with on_cpus(server_cpus):
        limit = measure_limit(model_dir, name, seconds)
    row_ms = 1000 / limit["items_per_s"]
    grpc_port = free_port()
    with on_cpus(server_cpus):
        server = start_ours(repo, name, workdir, batching="", grpc_port=grpc_port)
    cells = []
    try:
        for rows in rows_per_request:
            connections = connections_for(rows)
            duration = max(seconds, REQUESTS_PER_CONNECTION * connections * rows * row_ms / 1000)
            x = models.sample(name, rows)
            body = workdir / f"{name}-{rows}.json"
            body.write_bytes(models.json_body(x))
            request = models.grpc_request(name, x)
            print(f"[{name}] {rows} row(s) per request, {connections} connections, {duration:.0f} s each", flush=True)
            with on_cpus(client_cpus):
                rest = measured(server.process.pid, lambda: wrk(server.url + predict_url(name), body, connections,
                                                                  duration, workdir))
                grpc = measured(server.process.pid, lambda: h2load_grpc(f"127.0.0.1:{grpc_port}", request,
                                                                          connections, duration, workdir))
            cells.append({"rows": rows, "connections": connections, "seconds": duration,
                          "request_bytes": {"rest": body.stat().st_size, "grpc": request.ByteSize()},
                          "rest": summary(rest, rows, limit["items_per_s"], rest["non2xx"] + rest["socket_errors"]),
                          "grpc": summary(grpc, rows, limit["items_per_s"], grpc["failed"])})
    finally:
        server.stop()
    return {"limit": limit, "ms_per_row": row_ms, "cells": cells}


def measured(pid: int, load) -> dict:
    """`load()`'s result, with the CPU seconds the server process used meanwhile."""
    before = cpu_seconds(pid)
    result = load()
    return {**result, "server_cpu_s": cpu_seconds(pid) - before}


def summary(load: dict, rows: int, limit_rows_per_s: float, errors: int) -> dict:
    served, requests = load["per_s"] * rows, load["per_s"] * load["seconds"]
    model_ms = rows / limit_rows_per_s * 1000
    return {"rows_per_s": served, "ratio": served / limit_rows_per_s,
            "server_cpu_ms_per_request": load["server_cpu_s"] * 1000 / requests if requests else None,
            "overhead_cpu_ms": load["server_cpu_s"] * 1000 / requests - model_ms if requests else None,
            "overhead_busy_core_ms": rows * 1000 / served - model_ms if served else None,
            "busy": load["server_cpu_s"] / load["seconds"], "errors": errors,
            "client_cpu_share": load["client_cpu_share"]}


def write(results: dict, stem: Path) -> None:
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(results, indent=2))
    m = results["machine"]
    lines = ["# How the server's cost grows with the model and the request", "",
             f"Machine: {described(m)}; load "
             f"average (1 min) {m['load_average_1m']} at the start. `python benchmarks/cost_growth_bench.py`: the "
             "server (batching on, its defaults) and the in-process limit pinned to CPU 0, wrk (REST) and h2load "
             "(gRPC) on the other CPU, closed loop.", "",
             "Ratio: rows/s served over the model's best in-process rows/s on the same core. Overhead: the server's "
             "CPU per request (from /proc) minus the model's time for its rows at the limit, in ms; in brackets, "
             "rows x (1/served - 1/limit), which equals it when the load keeps the server's core busy (busy near 1). "
             "Requests still in flight when a measurement ends are not counted: a few % on the big model's largest "
             "requests.", "",
             "| model | in-process ms/row (best batch) | rows/request | connections | REST ratio | REST overhead ms | "
             "REST busy | gRPC ratio | gRPC overhead ms | gRPC busy | errors | JSON / proto bytes |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, model in results["models"].items():
        for cell in model["cells"]:
            rest, grpc = cell["rest"], cell["grpc"]
            lines.append(f"| {name} | {model['ms_per_row']:.3f} (batch {model['limit']['best_batch']}) | "
                         f"{cell['rows']} | {cell['connections']} | {rest['ratio']:.2f} | {_overhead(rest)} | "
                         f"{rest['busy']:.2f} | {grpc['ratio']:.2f} | {_overhead(grpc)} | {grpc['busy']:.2f} | "
                         f"{rest['errors'] + grpc['errors']} | "
                         f"{cell['request_bytes']['rest']:,} / {cell['request_bytes']['grpc']:,} |")
    lines += ["", "Reading it:"]
    for name, model in results["models"].items():
        first, last = model["cells"][0], model["cells"][-1]
        by_batch = ", ".join(f"{1000 / rate:.3f} at {batch}" for batch, rate in model["limit"]["by_batch"].items())
        lines.append(f"- {name}: REST {first['rest']['ratio']:.2f} of the limit at {first['rows']} row(s) a request, "
                     f"{last['rest']['ratio']:.2f} at {last['rows']}; gRPC {first['grpc']['ratio']:.2f} and "
                     f"{last['grpc']['ratio']:.2f}. In process, ms a row by batch size: {by_batch}.")
    lines += ["", "Where the model's time per request is small beside the server's own (a tiny model, one row), the "
              "server's cost per request decides the throughput; the overhead of a request grows with its bytes "
              "(JSON decoding: REST's grows faster than gRPC's). On a big model the overhead grows with the rows while "
              "the ratio stays near 0.8: part of it is the model's own time, as the batches the server runs (what "
              "the requests in flight merge into) are not the in-process best and the time a row takes depends on "
              "the batch (the lines above)."]
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def _overhead(side: dict) -> str:
    if side["overhead_cpu_ms"] is None:
        return "-"
    return f"{side['overhead_cpu_ms']:.3f} ({side['overhead_busy_core_ms']:.3f})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=6.0, help="shortest measurement (1 to 60)")
    parser.add_argument("--models", nargs="+", default=["digits", "mid", "big"], choices=sorted(models.MODELS))
    parser.add_argument("--rows", nargs="+", type=int, default=[1, 8, 64], help="rows per request")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args(argv)
    if not 1 <= args.seconds <= 60:
        parser.error(f"--seconds must be within 1..60 (a bounded run), received {args.seconds}")
    missing = [tool for tool in ("wrk", "h2load") if shutil.which(tool) is None]
    if missing:
        parser.error(f"{' and '.join(missing)} not found: apt-get install wrk nghttp2-client")
    workdir = Path(tempfile.mkdtemp(prefix="cost-growth-"))
    try:
        results = {"machine": machine(), "models": {name: measure_model(name, args.rows, args.seconds, workdir)
                                                    for name in args.models}}
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    write(results, args.out / "cost_growth")
    return 0


if __name__ == "__main__":
    sys.exit(main())
