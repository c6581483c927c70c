"""Training throughput: 2 local workers (MultiWorkerMirroredStrategy) against 1, in one run.

    python benchmarks/training_bench.py [--epochs 10] [--batch-size 256]

Runs the real pipeline CLI `--until train` on digits for each setting in a temporary directory
and reads examples/s from the train stage's manifest. On 2 shared CPU cores no speed-up is
expected; the point is the honest ratio, and that both produce a model. Writes
benchmarks/results/training.json and .md.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from localhost.machine import machine  # noqa: E402

SETTINGS = {"1 process (default strategy)": ["train.strategy=default"],
            "2 local workers (multi_worker)": ["train.strategy=multi_worker", "train.workers=2"]}


def train_metrics(workdir: Path, overrides: list[str]) -> dict:
    env = {**os.environ, "PYTHONPATH": str(HERE.parent), "TF_USE_LEGACY_KERAS": "1"}
    env.pop("TF_CONFIG", None)
    result = subprocess.run([sys.executable, "-m", "pipeline.run", *overrides, "--until", "train"], cwd=workdir,
                            env=env, capture_output=True, text=True, timeout=900)
    if result.returncode:
        raise RuntimeError(result.stderr[-3000:])
    stages = json.loads((workdir / "runs" / "latest" / "manifest.json").read_text())["stages"]
    return next(s for s in stages if s["name"] == "train")["metrics"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args(argv)
    common = [f"train.epochs={args.epochs}", f"train.batch_size={args.batch_size}", "train.verbose=0",
              "train.early_stopping_patience=0", "model.width=8"]
    results = {"machine": machine(), "epochs": args.epochs, "global_batch": args.batch_size, "settings": {}}
    for name, overrides in SETTINGS.items():
        with tempfile.TemporaryDirectory() as tmp:
            print(f"training: {name}", flush=True)
            results["settings"][name] = train_metrics(Path(tmp), common + overrides)
    one, two = (results["settings"][name]["examples_per_s"] for name in SETTINGS)
    results["two_workers_vs_one"] = two / one
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "training.json").write_text(json.dumps(results, indent=2))
    lines = [f"# Training throughput on digits ({args.epochs} epochs, global batch {args.batch_size}, model.width=8)",
             "", "Machine: {cpu}, {cores} cores, Python {python}, TF {tensorflow}, {date}.".format(**results["machine"]),
             "", "| setting | examples/s | val_accuracy |", "|---|---:|---:|"]
    lines += [f"| {name} | {m['examples_per_s']:.0f} | {m.get('val_accuracy', float('nan')):.4f} |"
              for name, m in results["settings"].items()]
    lines += ["", f"2 workers / 1 process: {results['two_workers_vs_one']:.2f}x (2 shared cores: no speed-up "
              "expected; the workers share the cores and all-reduce over gRPC every step)."]
    (args.out / "training.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
