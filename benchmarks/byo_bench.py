"""Bring-your-own figures, in one run: train.loop=custom against model.fit on digits (test accuracy over
seeds, 20 epochs without early stopping: where each run stops early is noise of its own), and the time
each example config in pipeline/configs takes to reach the figure it states.

    python benchmarks/byo_bench.py [--seeds 5]

Runs the real pipeline CLI from the repository root (the example configs' data paths are relative to
it), each run in a temporary output directory. Writes benchmarks/results/byo.json and .md.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from localhost.machine import machine  # noqa: E402

EXAMPLES = ("digits", "images", "tabular_regression", "text_rnn", "custom_model")


def run(config: str, overrides: list[str], until: str | None = None) -> tuple[float, dict[str, dict]]:
    """(seconds, stages by name) of one CLI run, from the repository root."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_USE_LEGACY_KERAS": "1"}
    env.pop("TF_CONFIG", None)
    with tempfile.TemporaryDirectory() as tmp:
        command = [sys.executable, "-m", "pipeline.run", "--config", config, f"output_dir={tmp}/runs",
                   f"push.repository={tmp}/repo", "train.verbose=0", *overrides, *(["--until", until] if until else [])]
        started = time.perf_counter()
        result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
        seconds = time.perf_counter() - started
        if result.returncode:
            raise RuntimeError(result.stderr[-3000:])
        stages = json.loads((Path(tmp) / "runs" / "latest" / "manifest.json").read_text())["stages"]
    return seconds, {s["name"]: s for s in stages}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args(argv)
    results = {"machine": machine(), "loops": {}, "examples": {}}
    for loop in ("fit", "custom"):
        accuracies = []
        for seed in range(1, args.seeds + 1):
            print(f"digits, train.loop={loop}, seed {seed}", flush=True)
            _, stages = run("digits", [f"train.loop={loop}", f"seed={seed}", "train.early_stopping_patience=0"],
                            until="evaluate")
            accuracies.append(stages["evaluate"]["metrics"]["accuracy"])
        results["loops"][loop] = {"test_accuracy": accuracies, "mean": statistics.mean(accuracies)}
    results["custom_minus_fit_points"] = 100 * (results["loops"]["custom"]["mean"] - results["loops"]["fit"]["mean"])
    results["fit_seed_spread_points"] = 100 * (max(results["loops"]["fit"]["test_accuracy"]) -
                                               min(results["loops"]["fit"]["test_accuracy"]))
    for name in EXAMPLES:
        print(f"example config {name}", flush=True)
        seconds, stages = run(name, [])
        results["examples"][name] = {"whole_run_s": round(seconds, 1), "train_s": stages["train"]["wall_s"],
                                     "evaluate": stages["evaluate"]["metrics"]}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "byo.json").write_text(json.dumps(results, indent=2))
    lines = ["# Bring your own: custom loop vs fit, and the example configs",
             "", "Machine: {cpu}, {cores} cores, Python {python}, TF {tensorflow}, {date}.".format(**results["machine"]),
             "", f"## digits, test accuracy over seeds 1..{args.seeds} (default strategy, 20 epochs, no early stopping)", "",
             "| loop | test accuracy per seed | mean |", "|---|---|---:|"]
    lines += [f"| {loop} | {', '.join(f'{a:.4f}' for a in r['test_accuracy'])} | {r['mean']:.4f} |"
              for loop, r in results["loops"].items()]
    lines += ["", f"custom - fit: {results['custom_minus_fit_points']:+.2f} points (fit's own spread over the seeds: "
                  f"{results['fit_seed_spread_points']:.2f} points).", "",
              "## Example configs as shipped (whole run includes compression, export, infra-validation, push)", "",
              "| config | whole run s | train s | evaluate |", "|---|---:|---:|---|"]
    lines += [f"| {name} | {r['whole_run_s']:.1f} | {r['train_s']:.1f} | "
              f"{', '.join(f'{k} {v:.4g}' for k, v in r['evaluate'].items())} |" for name, r in results["examples"].items()]
    (args.out / "byo.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
