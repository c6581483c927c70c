"""The batching sweep on a benchmark model: the parameters it chooses against no batching, in one run.

    python benchmarks/batching_sweep.py [--model mid] [--seconds 3] [--grid small] [--p99-ms 100]

Builds the model (bench_models.py) in a temporary repository and runs `python -m serving.tfserving sweep`'s
measurement on it: our server with batching off and with each candidate, open-loop REST load at a ladder of
rates, knee = the highest rate with p99 under the bound and no errors. Writes
benchmarks/results/batching_sweep.json (every run) and .md (the table, the chosen parameters as the
batching_parameters.txt the sweep writes, and the ratio chosen knee / no-batching knee).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import bench_models as models  # noqa: E402
from serving.tfserving import sweep  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mid", choices=sorted(models.MODELS))
    parser.add_argument("--seconds", type=float, default=3.0, help="load per rate")
    parser.add_argument("--grid", default="small", choices=sweep.GRIDS)
    parser.add_argument("--p99-ms", type=float, default=100.0, help="latency bound that defines the knee")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "batching_sweep")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="batching-sweep-bench-") as work:
        model = models.build(args.model, Path(work)).parent
        result = sweep.sweep(model, sweep.grid(args.grid, os.cpu_count() or 1), args.seconds, args.p99_ms)
        parameters = Path(work) / "batching_parameters.txt"
        sweep.write(result, parameters)
        written = parameters.read_text()
    result["model"] = f"{args.model} (benchmarks/bench_models.py)"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2))
    ratio = result["chosen_vs_no_batching"]
    lines = [f"# Batching sweep: {args.model}", "",
             f"Chosen batching parameters vs no batching, same run: **{ratio or float('nan'):.2f}x** the no-batching knee "
             f"(knee = highest open-loop REST rate with p99 <= {args.p99_ms:g} ms and no errors).", "",
             "```", *sweep.summary(result), "```", "",
             "The batching_parameters.txt it writes (what `python -m serving.tfserving build` puts in the bundle):",
             "", "```", *[line for line in written.splitlines() if not line.startswith("#")], "```"]
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
