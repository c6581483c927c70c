"""Model parallel figures, in one run, on pipeline/configs/recommender.yaml (a 108,028-row item table):
each parameter server's memory with the tables whole on 1 ps vs sharded over 2, training throughput with 1
and 2 ps, and a worker SIGKILLed mid-training against an undisturbed run.

    python benchmarks/model_parallel_bench.py [--width 64]

`--width` widens the embeddings (the shipped config: 16) so the tables weigh more next to TensorFlow's own
~300 MB per process. Runs the real pipeline CLI from the repository root, sampling every ps process's RSS
(VmRSS, every 0.2 s) from the pids the launcher prints. Writes benchmarks/results/model_parallel.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from localhost.machine import machine  # noqa: E402
from localhost.processes import rss_mib  # noqa: E402

STARTED = re.compile(r"\[launcher\] started (\w+ \d+) \(pid (\d+)\)")


def run(workdir: Path, overrides: list[str], kill_worker_at_epoch: int | None = None) -> dict:
    """One CLI run of the recommender config up to evaluate: its train and evaluate metrics and each ps's peak RSS."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_USE_LEGACY_KERAS": "1"}
    env.pop("TF_CONFIG", None)
    command = [sys.executable, "-m", "pipeline.run", "--config", "recommender", f"output_dir={workdir}/runs",
               f"push.repository={workdir}/repo", "train.verbose=2", *overrides, "--until", "evaluate"]
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    pids, peaks, done = {}, {}, threading.Event()

    def sample() -> None:
        while not done.wait(0.2):
            for name, pid in list(pids.items()):
                if name.startswith("ps"):
                    peaks[name] = max(peaks.get(name, 0.0), rss_mib(pid))

    sampler = threading.Thread(target=sample)
    sampler.start()
    killed = None
    output = []
    for line in process.stdout:
        output.append(line)
        if match := STARTED.search(line):
            pids[match.group(1)] = int(match.group(2))
        if kill_worker_at_epoch and killed is None and line.startswith(f"[chief 0] Epoch {kill_worker_at_epoch}/"):
            os.kill(pids["worker 1"], signal.SIGKILL)
            killed = "worker 1"
    done.set()
    sampler.join()
    if process.wait() != 0:
        raise RuntimeError(f"the run failed: {command}\n{''.join(output[-40:])}")
    stages = {s["name"]: s for s in json.loads((workdir / "runs" / "latest" / "manifest.json").read_text())["stages"]}
    placement = json.loads((workdir / "runs" / "latest" / "train" / "placement.json").read_text())
    table = next(v for v in placement if v["shape"][0] > 100_000)
    return {"overrides": overrides, "killed": killed, "train_s": stages["train"]["wall_s"],
            "examples_per_s": stages["train"]["metrics"]["examples_per_s"],
            "test_accuracy": stages["evaluate"]["metrics"]["accuracy"],
            "item_table": {"shape": table["shape"], "shards": len(table["shards"])},
            "ps_peak_rss_mib": {name: round(value, 1) for name, value in sorted(peaks.items())}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=64)
    args = parser.parse_args()
    host = machine()  # before the runs: its load average is the machine's, not ours
    width = [f"model.width={args.width}"]
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:  # one output dir: ingest and validate run once, then are cached
        work = Path(tmp)
        runs["1 ps, tables whole"] = run(work / "a", [*width, "train.ps=1", "train.partition=none",
                                                      "train.partition_min_shard_bytes=262144"])
        runs["2 ps, tables sharded"] = run(work / "a", [*width])
        # its own output dir: the same config in the first would be a cache hit, not a second training
        runs["2 ps, worker 1 SIGKILLed in epoch 2"] = run(work / "b", [*width], kill_worker_at_epoch=2)
    if runs["2 ps, worker 1 SIGKILLed in epoch 2"]["killed"] is None:
        raise RuntimeError("worker 1 was not killed: the chief never printed epoch 2")
    one, two, killed = runs.values()
    ratios = {"ps_rss_2_shards_over_1": round(max(two["ps_peak_rss_mib"].values()) /
                                              one["ps_peak_rss_mib"]["ps 0"], 3),
              "throughput_2ps_over_1ps": round(two["examples_per_s"] / one["examples_per_s"], 3),
              "accuracy_killed_minus_undisturbed": round(killed["test_accuracy"] - two["test_accuracy"], 4)}
    result = {"machine": host, "width": args.width, "runs": runs, "ratios": ratios}
    out = HERE / "results"
    (out / "model_parallel.json").write_text(json.dumps(result, indent=2))
    rows = "\n".join(f"| {name} | {r['item_table']['shards']} | {', '.join(f'{k}: {v:.0f}' for k, v in r['ps_peak_rss_mib'].items())} "
                     f"| {r['examples_per_s']:.0f} | {r['train_s']:.1f} | {r['test_accuracy']:.4f} |"
                     for name, r in runs.items())
    m = result["machine"]
    (out / "model_parallel.md").write_text(f"""# Model parallel: the recommender's tables on 1 and 2 parameter servers

Machine: {m['cpu']}, {m['cores']} cores, no GPU, TF {m['tensorflow']}, {m['date']} (load {m['load_average_1m']} at the
start). `python benchmarks/model_parallel_bench.py --width {args.width}`: pipeline/configs/recommender.yaml with
model.width={args.width} (item table {runs['2 ps, tables sharded']['item_table']['shape']}, float32, plus Adam's two
slots), 2 workers, up to evaluate. All processes share the machine's {m['cores']} cores.

| run | item table shards | peak RSS per ps, MiB | examples/s | train s | test accuracy |
|---|---:|---|---:|---:|---:|
{rows}

- Largest ps with the tables sharded over 2 / the one ps holding them whole: **{ratios['ps_rss_2_shards_over_1']}**
  (most of a ps process is TensorFlow itself; the tables are what moves).
- Throughput, 2 ps / 1 ps: **{ratios['throughput_2ps_over_1ps']}**.
- Worker 1 SIGKILLed at the start of epoch 2: the run finished on the other worker; test accuracy
  {ratios['accuracy_killed_minus_undisturbed']:+.4f} against the undisturbed 2-ps run (target: within 0.01).
""")
    print(json.dumps(ratios, indent=2))


if __name__ == "__main__":
    main()
