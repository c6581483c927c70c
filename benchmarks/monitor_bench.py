"""`python -m pipeline.monitor drift` over 1,000,000 logged digits rows: its wall time and peak memory (target:
≤ 60 s on 2 cores, memory bounded: it streams, so its peak should not grow with the rows).

The logs are written as a logging server writes them (PredictionLog TFRecords, rotated at 64 MiB): the digits
test rows, repeated, as one-row requests (the worst case: a record each) and as 16-row ones. The version compared
with is a digits version this script trains (1 epoch) unless --repository names one. Each measurement runs drift
as a subprocess, so its time includes starting Python and TensorFlow, as a cron job's would.

    python benchmarks/monitor_bench.py [--rows 1000000] [--repository R]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from serving import quiet_tensorflow  # noqa: E402,F401 -- before TensorFlow loads
from localhost.machine import machine  # noqa: E402
from tests.pipeline.request_logs import predict_log  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
FILE_BYTES = 64 << 20  # a rotated log file's size


def env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "TF_USE_LEGACY_KERAS": "1"}


def trained_repository(work: Path) -> Path:
    subprocess.run([sys.executable, "-m", "pipeline.run", "train.epochs=1", "compress.variants=[]", "evaluate.min_accuracy=0",
                    "infra_validate.enabled=false"], cwd=work, env=env(), check=True, capture_output=True)
    return work / "model_repository"


def write_logs(prefix: Path, x: np.ndarray, rows: int, per_request: int) -> int:
    """`rows` rows of `x` (repeated) as requests of `per_request` rows, in files of FILE_BYTES; the files' bytes."""
    import tensorflow as tf

    log = predict_log("digits", 1, {"x": x[:per_request]}, np.zeros(per_request))
    written, index, total = 0, 0, 0
    writer = None
    while written < rows:
        if writer is None or total >= FILE_BYTES * (index):
            if writer:
                writer.close()
            index += 1
            writer = tf.io.TFRecordWriter(f"{prefix}-{index:05d}.tfrecord")
        start = written % (len(x) - per_request)
        log.predict_log.request.inputs["x"].tensor_content = x[start:start + per_request].tobytes()
        log.log_metadata.timestamp_secs = 1_796_000_000 + written
        record = log.SerializeToString()
        writer.write(record)
        total += len(record) + 16
        written += per_request
    writer.close()
    return total


# `python -m pipeline.monitor ARGS`, then its own peak memory and CPU time on stderr's last line
MEASURED = ("import resource, sys; from pipeline.monitor.__main__ import main; code = main(sys.argv[1:]); "
            "usage = resource.getrusage(resource.RUSAGE_SELF); "
            "print(usage.ru_maxrss, usage.ru_utime + usage.ru_stime, file=sys.stderr); sys.exit(code)")


def drift_run(repository: Path, prefix: Path, out: Path) -> dict:
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", MEASURED, "drift", "--logs", str(prefix), "--repository",
                             str(repository), "--out", str(out)], env=env(), capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if result.returncode not in (0, 3):
        raise SystemExit(result.stdout + result.stderr)
    peak_kib, cpu_seconds = result.stderr.split()[-2:]
    report = json.loads((out / "drift.json").read_text())
    return {"seconds": round(seconds, 1), "cpu_seconds": round(float(cpu_seconds), 1),
            "peak_rss_mib": round(int(peak_kib) / 1024), "rows": report["rows"], "drifted": report["drifted"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repository", help="a repository holding digits version 1 made by this pipeline")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        repository = Path(args.repository) if args.repository else trained_repository(work)
        from sklearn.datasets import load_digits

        x = load_digits().data.astype(np.float32)
        results = {"machine": machine(), "rows": args.rows, "runs": []}
        for per_request in (1, 16):
            prefix = work / f"logs-{per_request}" / "requests"
            prefix.parent.mkdir()
            size = write_logs(prefix, x, args.rows, per_request)
            run = drift_run(repository, prefix, work / f"drift-{per_request}")
            run |= {"rows_per_request": per_request, "log_mib": round(size / 2**20), "files": len(list(prefix.parent.iterdir()))}
            results["runs"].append(run)
            print(json.dumps(run))
            # the same with a tenth of the rows: whether memory grows with them
            small = work / f"small-{per_request}" / "requests"
            small.parent.mkdir()
            write_logs(small, x, args.rows // 10, per_request)
            run["peak_rss_mib_at_a_tenth"] = drift_run(repository, small, work / f"drift-small-{per_request}")["peak_rss_mib"]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "monitor.json").write_text(json.dumps(results, indent=2))
    m = results["machine"]
    lines = [f"# pipeline.monitor drift over {args.rows:,} logged digits rows", "",
             f"{m['cpu']}, {m['cores']} cores, TensorFlow {m['tensorflow']}, {m['date']}, load average "
             f"{m['load_average_1m']} at the start. Target: ≤ 60 s, memory not growing with the rows.", "",
             "| rows per request | log files | MiB of logs | wall s | CPU s | peak RSS MiB | at a tenth of the rows |",
             "|---:|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['rows_per_request']} | {r['files']} | {r['log_mib']} | {r['seconds']} | {r['cpu_seconds']} | "
              f"{r['peak_rss_mib']} | {r['peak_rss_mib_at_a_tenth']} |" for r in results["runs"]]
    (RESULTS / "monitor.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
