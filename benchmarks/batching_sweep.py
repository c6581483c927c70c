"""The batching sweep on a benchmark model: the parameters it chooses against no batching, in one run.

    python benchmarks/batching_sweep.py [--model mid] [--seconds 3] [--grid small] [--p99-ms 100] [--repeats 3]

Builds the model (bench_models.py) in a temporary repository and runs `python -m serving.tfserving sweep`'s
measurement on it: our server with batching off and with each candidate, open-loop REST load at a ladder of
rates, knee = the highest rate with p99 under the bound and no errors. One knee is one noisy number, so the
chosen parameters are then measured against batching off again, alternately, --repeats times, and the
median of those ratios is the result. Writes benchmarks/results/batching_sweep.json (every run) and .md
(the sweep's table, the chosen parameters as the batching_parameters.txt it writes, the repeated pairs).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import bench_models as models  # noqa: E402
from serving.tfserving import sweep  # noqa: E402


def cpu_seconds() -> tuple[float, float]:
    """(busy CPU seconds of the whole machine since boot, of this process and its finished children): their
    difference over a run is what other work took from it."""
    user, nice, system, _idle, _iowait, irq, softirq = map(int, Path("/proc/stat").read_text().split()[1:8])
    own = os.times()
    return ((user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK"),
            own.user + own.system + own.children_user + own.children_system)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mid", choices=sorted(models.MODELS))
    parser.add_argument("--seconds", type=float, default=3.0, help="load per rate")
    parser.add_argument("--grid", default="small", choices=sweep.GRIDS)
    parser.add_argument("--p99-ms", type=float, default=100.0, help="latency bound that defines the knee")
    parser.add_argument("--repeats", type=int, default=3, help="chosen vs no batching pairs after the sweep")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "batching_sweep")
    args = parser.parse_args(argv)
    started, (busy, own) = time.monotonic(), cpu_seconds()
    with tempfile.TemporaryDirectory(prefix="batching-sweep-bench-") as work:
        model = models.build(args.model, Path(work)).parent
        result = sweep.sweep(model, sweep.grid(args.grid, os.cpu_count() or 1), args.seconds, args.p99_ms)
        parameters = Path(work) / "batching_parameters.txt"
        sweep.write(result, parameters)
        written = parameters.read_text()
        chosen = sweep.Candidate(**result["chosen"])
        pairs = []
        for i in range(args.repeats):
            print(f"-- repeat {i + 1}/{args.repeats}: no batching, then {chosen}", flush=True)
            pairs.append(sweep.sweep(model, [chosen], args.seconds, args.p99_ms))
    elapsed, (busy_end, own_end) = time.monotonic() - started, cpu_seconds()
    result["other_cpu_share"] = max(0.0, (busy_end - busy) - (own_end - own)) / (elapsed * (os.cpu_count() or 1))
    result["model"] = f"{args.model} (benchmarks/bench_models.py)"
    result["repeats"] = [{"no_batching": p["no_batching"], "chosen": p["candidates"][0],
                          "ratio": p["chosen_vs_no_batching"]} for p in pairs]
    ratios = [p["ratio"] for p in result["repeats"] if p["ratio"]]
    result["median_ratio"] = statistics.median(ratios) if ratios else None
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2))
    lines = [f"# Batching sweep: {args.model}", "",
             f"The sweep's chosen batching parameters ({chosen}: max_batch_size, batch_timeout_micros, "
             f"num_batch_threads) against no batching, measured alternately in the same run: knee ratio "
             f"**{result['median_ratio'] or float('nan'):.2f}x** (median of {len(ratios)}; the sweep's own pass: "
             f"{result['chosen_vs_no_batching'] or float('nan'):.2f}x). Knee = highest open-loop REST rate with p99 "
             f"<= {args.p99_ms:g} ms and no errors. Other work on the machine took "
             f"{result['other_cpu_share']:.0%} of its CPU during the run ({elapsed / 60:.1f} min).", "",
             "| pair | no batching knee/s | chosen knee/s | ratio |", "|---:|---:|---:|---:|",
             *[f"| {i + 1} | {p['no_batching']['knee_per_s']:.0f} | {p['chosen']['knee_per_s']:.0f} | "
               f"{p['ratio'] or float('nan'):.2f} |" for i, p in enumerate(result["repeats"])], "",
             f"The sweep (as `python -m serving.tfserving sweep --seconds {args.seconds:g} --grid {args.grid}` "
             f"on this model):", "",
             "```", *sweep.summary(result), "```", "",
             "The batching_parameters.txt it writes (what `python -m serving.tfserving build` puts in the bundle):",
             "", "```", *[line for line in written.splitlines() if not line.startswith("#")], "```"]
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
