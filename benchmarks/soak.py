"""A soak: the server's knee rate, then minutes of open-loop load at half of it, with its memory sampled.

    python benchmarks/soak.py [--model mid] [--minutes 5] [--knee-seconds 3] [--p99-bound-ms 100]   # or: make soak
    python benchmarks/soak.py --logging    # the soak server logs every request (results/soak_logging.*)

The model and server are the serving benchmark's (bench_models.py's `mid` CNN, a 23 KB JSON request;
`python -m serving` with its batching: max_batch_size 32, batch_timeout_micros 1000, one batch thread per core).
The knee is found as the batching sweep finds it (serving.tfserving.sweep.measure: open-loop REST load at a ladder
of rates, knee = the highest rate with p99 under the bound and no errors) on one server; the soak runs on a fresh
one, in one-minute open-loop windows (localhost.loadgen runs at most 60 s) back to back, while a thread samples the
server's RSS every 2 s. Growth is the last sample against the first one after 30 s of load (the warm-up: buffers,
kernels and threads made on first use); the target is <= 5 %, with 0 errors. About 6-7 minutes. Writes
benchmarks/results/soak.json and .md.

With --logging the soak server (not the one the knee is found on) serves serving_bench.py's logged copy of the
model: a schema.json every request is counted against and a logging_config at sampling_rate 1.0, its files bounded
at 8 GiB; the records written and dropped are reported beside the memory. Writes results/soak_logging.json, .md.
"""
from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import sys
import tempfile
import threading
import time
from dataclasses import asdict
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import bench_models as models  # noqa: E402
import tensorflow as tf  # noqa: E402
from serving_bench import _log_counts, logged_copy, start_ours  # noqa: E402

from localhost import loadgen  # noqa: E402
from localhost.machine import machine  # noqa: E402
from serving.tfserving import sweep  # noqa: E402

WARMUP_S = 30
SAMPLE_EVERY_S = 2
BATCHING = sweep.Candidate(max_batch_size=32, batch_timeout_micros=1000, num_batch_threads=os.cpu_count() or 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mid", choices=sorted(models.MODELS))
    parser.add_argument("--minutes", type=int, default=5)
    parser.add_argument("--knee-seconds", type=float, default=3.0, help="load per rate while finding the knee")
    parser.add_argument("--p99-bound-ms", type=float, default=100.0, help="latency bound that defines the knee")
    parser.add_argument("--logging", action="store_true", help="the soak server logs every request")
    parser.add_argument("--out", type=Path, help="results/soak (results/soak_logging with --logging)")
    args = parser.parse_args(argv)
    args.out = args.out or HERE / "results" / ("soak_logging" if args.logging else "soak")
    host = {**machine(), "gpus": len(tf.config.list_physical_devices("GPU"))}
    with tempfile.TemporaryDirectory(prefix="soak-") as work:
        version_dir = models.build(args.model, Path(work) / "repo")
        body = sweep.request_body(version_dir)
        print(f"[1/2] the knee of {args.model}, batching {BATCHING}", flush=True)
        gc.freeze()  # TF's objects, out of this process's collections: their pauses would read as server latency
        knee = sweep.measure(version_dir.parent, BATCHING, body, args.knee_seconds, args.p99_bound_ms, Path(work),
                             print)
        if not knee["knee_per_s"]:
            raise SystemExit(f"no rate held p99 <= {args.p99_bound_ms} ms with no errors: nothing to soak at")
        rate = knee["knee_per_s"] / 2
        print(f"[2/2] {args.minutes} min at {rate:.0f}/s, half the knee ({knee['knee_per_s']:.0f}/s)", flush=True)
        logged = {}
        if args.logging:
            monitoring = Path(work) / "monitoring.config"
            monitoring.write_text("prometheus_config { enable: true }")
            logging_flags = dict(model_config=logged_copy(version_dir, args.model, Path(work), 1.0),
                           flags=[f"--monitoring_config_file={monitoring}", "--request_log_max_disk_bytes=8589934592"])
        server = start_ours(version_dir.parents[1], args.model, Path(work), batching=BATCHING.text(),
                            **(logging_flags if args.logging else {}))
        try:
            windows, samples = soak(server, f"{server.url}/v1/models/{args.model}:predict", body, rate, args.minutes)
            if args.logging:
                time.sleep(2)  # flushed
                logged = _log_counts(server.url, Path(work) / "logs", args.model)
        finally:
            exit_code = server.stop()
    result = summarize(host, args, knee, rate, windows, samples, exit_code, len(body)) | {"logged": logged}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(report(result))
    print(report(result))
    return 0 if result["errors"] == 0 and result["rss_growth"] <= 0.05 else 1


def soak(server, url: str, body: bytes, rate: float, minutes: int) -> tuple[list[dict], list[tuple[float, float]]]:
    """One-minute open-loop windows back to back; (the windows' results, (seconds since the start, RSS MiB) every
    SAMPLE_EVERY_S, the first before any load)."""
    started = time.monotonic()
    samples = [(0.0, server.rss_mib())]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(SAMPLE_EVERY_S):
            samples.append((round(time.monotonic() - started, 1), server.rss_mib()))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    windows = []
    try:
        for minute in range(minutes):
            windows.append(asyncio.run(loadgen.open_loop(url, body, rate, loadgen.MAX_SECONDS)))
            w = windows[-1]
            print(f"      minute {minute + 1}: {w['achieved_per_s']:.0f}/s, p50 {w['p50_ms']:.1f} ms, "
                  f"p99 {w['p99_ms']:.1f} ms, errors {w['errors'] or 0}, RSS {samples[-1][1]:.0f} MiB", flush=True)
    finally:
        done.set()
        sampler.join()
    samples.append((round(time.monotonic() - started, 1), server.rss_mib()))
    return windows, samples


def summarize(host: dict, args, knee: dict, rate: float, windows: list[dict], samples: list[tuple[float, float]],
              exit_code: int, request_bytes: int) -> dict:
    baseline = next(mib for t, mib in samples if t >= WARMUP_S)
    return {
        "machine": host, "model": f"{args.model} (benchmarks/bench_models.py)", "request_bytes": request_bytes,
        "batching": asdict(BATCHING), "p99_bound_ms": args.p99_bound_ms,
        "knee_per_s": knee["knee_per_s"], "knee_runs": knee["runs"], "rate_per_s": rate, "minutes": args.minutes,
        "requests": sum(w["requests"] for w in windows), "ok": sum(w["ok"] for w in windows),
        "errors": sum(sum(w["errors"].values()) for w in windows), "windows": windows,
        "rss_mib": {"before_load": samples[0][1], "after_warmup": baseline, "last": samples[-1][1],
                    "max": max(mib for _, mib in samples)},
        "rss_growth": samples[-1][1] / baseline - 1, "rss_samples": samples, "server_exit_code": exit_code,
        "load_average_end": os.getloadavg()[0],
    }


def report(r: dict) -> str:
    m, rss = r["machine"], r["rss_mib"]
    logged = r.get("logged")
    lines = [
        f"# Soak: {r['minutes']} minutes at half the knee rate{', every request logged' if logged else ''}", "",
        f"Machine: {m['cpu']}, {m['cores']} vCPU, {m['gpus'] or 'no'} GPU, Python {m['python']}, "
        f"TF {m['tensorflow']}, {m['date']}, load average {m['load_average_1m']:g} at the start and "
        f"{r['load_average_end']:.2f} at the end. `python benchmarks/soak.py{' --logging' if logged else ''}`"
        f"{'' if logged else ' (`make soak`)'}.", "",
        f"Model {r['model']}, a {r['request_bytes']:,}-byte REST predict request; `python -m serving` with batching "
        f"(max_batch_size {r['batching']['max_batch_size']}, batch_timeout_micros "
        f"{r['batching']['batch_timeout_micros']}, num_batch_threads {r['batching']['num_batch_threads']}). Knee "
        f"(highest open-loop rate with p99 <= {r['p99_bound_ms']:g} ms and no errors, serving.tfserving.sweep's "
        f"ladder): **{r['knee_per_s']:.0f} req/s**; soak at **{r['rate_per_s']:.0f} req/s** on a fresh server.", "",
        f"- Requests: {r['requests']:,}, answered 200: {r['ok']:,}, errors: **{r['errors']}** (target 0).",
        f"- Server RSS: {rss['before_load']:.0f} MiB before the load, {rss['after_warmup']:.0f} MiB after "
        f"{WARMUP_S} s of it, {rss['last']:.0f} MiB at the end: growth **{r['rss_growth']:+.1%}** (target <= 5 %); "
        f"highest sample {rss['max']:.0f} MiB (every {SAMPLE_EVERY_S} s).",
        *([f"- Request log (sampling_rate 1.0, and every row counted against a {r['model'].split()[0]} schema.json of "
           f"one float32 feature per input value): {logged['written']:,.0f} records written, {logged['dropped']:,.0f} "
           f"dropped, {logged['files']} files, {logged['bytes'] / 2**20:,.0f} MiB; rows counted "
           f"{logged['rows_counted']:,.0f}, not counted {logged['rows_not_counted']:,.0f}."] if logged else []),
        f"- The server then stopped with exit code {r['server_exit_code']}.", "",
        "| minute | offered/s | achieved/s | p50 ms | p90 ms | p99 ms | max ms | errors | RSS near its end, MiB |",
        "|---:|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for i, w in enumerate(r["windows"]):
        end = 60.0 * (i + 1)
        mib = min(r["rss_samples"], key=lambda s: abs(s[0] - end))[1]
        lines.append(f"| {i + 1} | {w['offered_per_s']:.0f} | {w['achieved_per_s']:.0f} | {w['p50_ms']:.1f} | "
                     f"{w['p90_ms']:.1f} | {w['p99_ms']:.1f} | {w['max_ms']:.1f} | {w['errors'] or ''} | {mib:.0f} |")
    lines += ["", "Knee search (offered/s: p50, p99 ms):", "",
              ", ".join(f"{p['offered_per_s']:.0f}: {p['p50_ms']:.1f}, {p['p99_ms']:.1f}" for p in r["knee_runs"])]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
