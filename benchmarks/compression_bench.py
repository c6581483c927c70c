"""What the compress stage delivers on the shipped configs: digits on seeds 1-5, images and text_rnn.

    python benchmarks/compression_bench.py [--seeds 1 2 3 4 5] [--configs digits images text_rnn] [--markdown-only]

Runs the real pipeline CLI `--until compress` for each config and seed in a temporary directory, one run at a
time (the compress stage's wall time is one of the figures), and reads each run's compress report.json and
manifest. Writes benchmarks/results/compression.json and .md: per seed the trained model's accuracy, each
variant's paired accuracy drop with its 95 % interval and gzip sizes, the variant selected and why, the
smallest int8 .tflite within the gate against the float .tflite, and the stage's wall time.
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

from localhost.machine import machine  # noqa: E402

RESULTS = HERE / "results"


def compress_run(config: str, seed: int, workdir: Path) -> dict:
    """One pipeline run up to compress; the figures the tables need."""
    env = {**os.environ, "PYTHONPATH": str(HERE.parent), "TF_USE_LEGACY_KERAS": "1"}
    command = [sys.executable, "-m", "pipeline.run", "--config", config, f"seed={seed}",
               f"output_dir={workdir / f'{config}-{seed}'}", "--until", "compress"]
    print(" ".join(command[1:]), flush=True)
    result = subprocess.run(command, cwd=HERE.parent, env=env, capture_output=True, text=True, timeout=1800)
    if result.returncode:
        raise RuntimeError(f"{config} seed {seed} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    run = workdir / f"{config}-{seed}" / "latest"
    stages = {s["name"]: s for s in json.loads((run / "manifest.json").read_text())["stages"]}
    report = json.loads((run / "compress" / "report.json").read_text())
    return {"config": config, "seed": seed, "trained_test_accuracy": stages["evaluate"]["metrics"]["accuracy"],
            "compress_wall_s": stages["compress"]["wall_s"], "report": report}


def _kb(size: int | None) -> str:
    return "-" if size is None else f"{size / 1000:.1f} KB"


def _drop(entry: dict) -> str:
    low, high = entry["drop_interval"]
    return f"{entry['accuracy_drop'] * 100:+.1f} [{low * 100:+.1f}, {high * 100:+.1f}]"


def _size(entry: dict) -> int:
    return entry["savedmodel_gzip_bytes"] if entry["format"] == "keras" else entry["tflite_gzip_bytes"]


def why_selected(report: dict) -> str:
    """The selection rule applied to this run's figures: the selected variant's size against the next smallest
    that passed, and what the smaller ones that failed lost."""
    variants, selected = report["variants"], report["selected"]
    servable = sorted(((n, e) for n, e in variants.items() if e["format"] == "keras" and n != "baseline"),
                      key=lambda item: item[1]["savedmodel_gzip_bytes"])
    passed = [n for n, e in servable if e["status"] == "ok"]
    size = variants[selected]["savedmodel_gzip_bytes"]
    smaller_failed = [f"{n} ({_kb(e['savedmodel_gzip_bytes'])}, lost {e['rows_lost']} rows, gained "
                      f"{e['rows_gained']})" for n, e in servable
                      if e["status"] != "ok" and e["savedmodel_gzip_bytes"] < size]
    runner_up = next((n for n in passed if n != selected), None)
    why = f"smallest SavedModel within the gate ({_kb(size)})"
    if runner_up:
        why += f"; next: {runner_up} ({_kb(variants[runner_up]['savedmodel_gzip_bytes'])})"
    if smaller_failed:
        why += f"; smaller but failed: {', '.join(smaller_failed)}"
    return why


def markdown(runs: list[dict], host: dict) -> str:
    lines = ["# Compression on the shipped configs", "",
             f"Machine: {host['cpu']}, {host['cores']} cores, Python {host['python']}, TF {host['tensorflow']}, "
             f"{host['date']} (load average {host['load_average_1m']} at the start). Produced by "
             "`python benchmarks/compression_bench.py`: the real pipeline, `--until compress`, one run at a time.", "",
             "Drops are in accuracy points against the trained model, measured paired on the same validation rows, "
             "with the 95 % bootstrap interval in brackets; the gate (compress.max_accuracy_drop, 1 point) is on the "
             "measured drop. Sizes are gzip. The float .tflite is the trained model converted without quantization.",
             ""]
    for config in dict.fromkeys(r["config"] for r in runs):
        mine = [r for r in runs if r["config"] == config]
        first = mine[0]["report"]
        lines += [f"## {config} (pipeline/configs/{config}.yaml, {first['rows']} validation rows: one row is "
                  f"{100 / first['rows']:.2f} points)", "",
                  "| seed | trained val / test accuracy | selected (drop) | its test accuracy | smallest int8 "
                  "within the gate | float .tflite | ratio | compress wall |", "|---|---|---|---:|---|---:|---:|---:|"]
        for r in mine:
            report = r["report"]
            variants = report["variants"]
            int8 = report["smallest_int8_within"]
            float_tflite = variants.get("baseline+float", {}).get("tflite_gzip_bytes")
            lines.append(
                f"| {r['seed']} | {variants['baseline']['accuracy']:.4f} / {r['trained_test_accuracy']:.4f} | "
                f"{report['selected']} ({_drop(variants[report['selected']])}) | "
                f"{report['selected_test_accuracy']:.4f} | "
                + (f"{int8['name']} {_kb(int8['tflite_gzip_bytes'])} | {_kb(float_tflite)} | {int8['ratio']:.1f}x | "
                   if int8 else "none | - | - | ")
                + f"{r['compress_wall_s']:.1f} s |")
        names = list(dict.fromkeys(n for r in mine for n in r["report"]["variants"]))
        lines += ["", "Each variant, seed by seed: drop [95 % interval] in points, gzip size, gate.", "",
                  "| variant | " + " | ".join(f"seed {r['seed']}" for r in mine) + " |",
                  "|---|" + "---|" * len(mine)]
        for name in names:
            cells = []
            for r in mine:
                entry = r["report"]["variants"].get(name)
                cells.append("-" if entry is None else
                             f"{_drop(entry)} {_kb(_size(entry))} {'ok' if entry['status'] == 'ok' else 'FAILED'}")
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        skipped = first.get("skipped") or {}
        if skipped:
            lines += ["", "Skipped before any fine-tuning:", ""] + [f"- {n}: {why}" for n, why in skipped.items()]
        lines += ["", "Why each seed's variant was selected:", ""]
        lines += [f"- seed {r['seed']}: {r['report']['selected']}: {why_selected(r['report'])}" for r in mine]
        ratios = [r["report"]["smallest_int8_within"]["ratio"] for r in mine if r["report"]["smallest_int8_within"]]
        if ratios:
            lines += ["", f"Smallest int8 within the gate against the float .tflite: {min(ratios):.1f}x at worst, "
                      f"{statistics.median(ratios):.1f}x median; compress wall time "
                      f"{max(r['compress_wall_s'] for r in mine):.1f} s at most."]
        test_drops = [100 * (r["trained_test_accuracy"] - r["report"]["selected_test_accuracy"]) for r in mine]
        lines += ["", f"On the test rows, which the gate never sees, the selected variant's drop against the trained "
                  f"model is {min(test_drops):+.1f} to {max(test_drops):+.1f} points "
                  f"({statistics.mean(test_drops):+.1f} on average)."]
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5], help="digits seeds")
    parser.add_argument("--configs", nargs="+", default=["digits", "images", "text_rnn"],
                        help="configs; those other than digits run once, on their own seed")
    parser.add_argument("--markdown-only", action="store_true",
                        help="rewrite compression.md from the runs in compression.json, running nothing")
    args = parser.parse_args(argv)
    if args.markdown_only:
        recorded = json.loads((RESULTS / "compression.json").read_text())
        host, runs = recorded["machine"], recorded["runs"]
    else:
        host = machine()
        with tempfile.TemporaryDirectory() as tmp:
            runs = [compress_run(config, seed, Path(tmp)) for config in args.configs
                    for seed in (args.seeds if config == "digits" else [42])]
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "compression.json").write_text(json.dumps({"machine": host, "runs": runs}, indent=1) + "\n")
    (RESULTS / "compression.md").write_text(markdown(runs, host))
    print((RESULTS / "compression.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
