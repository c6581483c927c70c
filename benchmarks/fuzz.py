"""The full fuzz run against a real server, its figures written to benchmarks/results/fuzz.json and .md.

    python benchmarks/fuzz.py [--cases 10000] [--seed 1]        # or: make fuzz

The cases, the server (half_plus_two on 127.0.0.1, batching and metrics on, a 1 MB body limit) and the checks
are tests/serving/fuzzing.py's, the same as `pytest -m fuzz_full`, which asserts what this run reports: every
answer a 4xx or a gRPC client error code, the server alive, its RSS after the run within 10 % of the RSS after
the first 200 cases (the warm-up). About 1 minute on 2 vCPUs.
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
sys.path.insert(0, str(HERE.parent / "tests" / "serving"))

import fuzzing  # noqa: E402
import half_plus_two  # noqa: E402
import tensorflow as tf  # noqa: E402

from localhost.machine import machine  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=1, help="the fuzz_full test's seed; the default test uses 0")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "fuzz")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="fuzz-") as work:
        base = Path(work) / "repo" / "half_plus_two"
        half_plus_two.build(base / "123")
        process, target = fuzzing.start_server(Path(work), base)
        try:
            result = fuzzing.run(process, target, args.seed, args.cases, log=print)
        finally:
            result_code = process.stop()
    result["exit_code"] = result_code
    result["machine"] = {**machine(), "gpus": len(tf.config.list_physical_devices("GPU"))}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    args.out.with_suffix(".md").write_text(report(result))
    print(report(result))
    return 0 if result["bad_answers"] == 0 and result["alive"] else 1


def report(result: dict) -> str:
    m, rss = result["machine"], result["rss_mib"]
    answers = sorted({answer for by in result["by_category"].values() for answer in by},
                     key=lambda a: (not a.isdigit(), a))
    lines = [
        f"# Fuzzing: {result['cases']:,} malformed and edge-case requests, REST and gRPC", "",
        f"Machine: {m['cpu']}, {m['cores']} vCPU, {m['gpus'] or 'no'} GPU, Python {m['python']}, TF {m['tensorflow']}, "
        f"{m['date']}; seed {result['seed']}, {result['seconds']:.0f} s. `python benchmarks/fuzz.py` (`make fuzz`); "
        f"the cases are `tests/serving/fuzzing.py`'s.", "",
        f"- HTTP 5xx: **{result['http_5xx']}**; gRPC UNKNOWN: **{result['grpc_unknown']}**, INTERNAL: "
        f"**{result['grpc_internal']}**; REST requests left without an answer: {result['no_answer']}; answers that "
        f"are not a client error (or a success) in all: **{result['bad_answers']}**.",
        f"- Server alive after the run: {'yes' if result['alive'] else 'NO'}; it then stopped with exit code "
        f"{result['exit_code']}.",
        f"- Server RSS: {rss['start']:.0f} MiB at the start, {rss.get('baseline', 0):.0f} MiB after the first 200 "
        f"cases (the baseline), {rss['after']:.0f} MiB after the last "
        f"({rss['after'] / rss.get('baseline', 1) - 1:+.1%}; the test allows +10 %), {rss['peak']:.0f} MiB at the "
        f"highest sample (every 100 cases).", "",
        "Answers per category (HTTP status or gRPC code; 200/OK: a mutation that is still a valid request):", "",
        "| category | cases | " + " | ".join(answers) + " |", "|---|---:|" + "---:|" * len(answers),
    ]
    for category, by in result["by_category"].items():
        lines.append(f"| {category} | {sum(by.values())} | " + " | ".join(str(by.get(a, "")) for a in answers) + " |")
    if result["problems"]:
        lines += ["", "First problems:", "", "```", *(json.dumps(p, ensure_ascii=False) for p in result["problems"]),
                  "```"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
