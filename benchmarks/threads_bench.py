"""TensorFlow's thread counts (--tensorflow_intra_op_parallelism / --tensorflow_inter_op_parallelism) against
throughput, measured in one run on the served session, as the server runs it.

    python benchmarks/threads_bench.py [--models mid] [--seconds 3] [--rounds 3]

For each model and each (intra, inter) pair, in a fresh process (TF sizes its thread pools once per
process): batch 1 from one caller (a lone request's latency), batch 1 from one caller per core (unbatched
load), and batches of 32 and 64 from one caller per core (what the batcher feeds it). The host's speed
drifts by tens of percent within minutes, so the pairs take turns, round after round, and each cell is
the median of the rounds. Writes benchmarks/results/threads.json and .md.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

PAIRS = [(0, 0), (1, 1), (1, 2), (2, 1)]  # (intra, inter); 0 lets TF choose: one thread per core each
BATCHES = (32, 64)


def measure(model_dir: Path, name: str, intra: int, inter: int, seconds: float) -> dict:
    """Run in a child process: rows per second for each load shape."""
    import bench_models as models
    from serving.servable import Servable, session_config
    from serving_bench import threaded_throughput

    servable = Servable(name, 1, model_dir, session_config(intra, inter))
    cores = len(os.sched_getaffinity(0))

    def rate(batch: int, callers: int) -> float:
        x = {"x": models.sample(name, batch)}
        for _ in range(2):
            servable.run("serving_default", x)
        return threaded_throughput(lambda: servable.run("serving_default", x), batch, callers, seconds)

    result = {"batch1_one_caller": rate(1, 1), "batch1_per_core": rate(1, cores)}
    for batch in BATCHES:
        result[f"batch{batch}_per_core"] = rate(batch, cores)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["mid"])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=3.0, help="per measurement (1 to 30)")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--child", nargs=4, metavar=("MODEL_DIR", "NAME", "INTRA", "INTER"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        model_dir, name, intra, inter = args.child
        print(json.dumps(measure(Path(model_dir), name, int(intra), int(inter), args.seconds)))
        return 0
    if not 1 <= args.seconds <= 30:
        parser.error(f"--seconds must be within 1..30 (a bounded run), received {args.seconds}")
    import bench_models as models
    from localhost.machine import machine

    repo = Path(tempfile.mkdtemp(prefix="threads-bench-"))
    results = {"machine": machine(), "seconds": args.seconds, "rounds": args.rounds, "rows": []}
    for name in args.models:
        model_dir = models.build(name, repo)
        runs: dict[tuple[int, int], list[dict]] = {pair: [] for pair in PAIRS}
        for round_ in range(1, args.rounds + 1):
            for intra, inter in PAIRS:
                print(f"{name}, round {round_}/{args.rounds}: intra {intra}, inter {inter}", flush=True)
                output = subprocess.run([sys.executable, __file__, "--seconds", str(args.seconds), "--child",
                                         str(model_dir), name, str(intra), str(inter)],
                                        capture_output=True, text=True, check=True).stdout
                runs[(intra, inter)].append(json.loads(output.strip().splitlines()[-1]))
        for (intra, inter), measured in runs.items():
            results["rows"].append({"model": name, "intra": intra, "inter": inter,
                                    **{key: statistics.median(m[key] for m in measured) for key in measured[0]},
                                    "rounds": measured})
    write(results, args.out / "threads")
    return 0


def write(results: dict, stem: Path) -> None:
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
    m = results["machine"]
    lines = [
        "# TensorFlow thread counts against throughput",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, Python {m['python']}, TF {m['tensorflow']}, {m['date']}; "
        f"{results['seconds']:.0f} s per measurement, median of {results['rounds']} interleaved rounds; rows (items) "
        "per second through the served session (`benchmarks/threads_bench.py`). intra/inter 0: TF chooses (one "
        "thread per core each).",
        "",
        "| model | intra | inter | batch 1, one caller | batch 1, caller per core | "
        + " | ".join(f"batch {b}, caller per core" for b in BATCHES) + " |",
        "|---|---:|---:|---:|---:|" + "---:|" * len(BATCHES),
    ]
    for row in results["rows"]:
        cells = [row["batch1_one_caller"], row["batch1_per_core"], *(row[f"batch{b}_per_core"] for b in BATCHES)]
        lines.append(f"| {row['model']} | {row['intra']} | {row['inter']} | " + " | ".join(f"{c:.0f}" for c in cells)
                     + " |")
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    raise SystemExit(main())
