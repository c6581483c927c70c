"""The explain signature's figures, in one run: how closely its shares add up (completeness) per model kind and
integration rule, what it costs per request, and how much it adds to the SavedModel.

    python benchmarks/explain_bench.py [--workdir DIR] [--seconds 3]

Models: the pipeline's own, trained by the real pipeline in --workdir (a second run reuses its cache): digits
(the CNN, with the test suite's shared settings: tuning, pruned and qat variants), a table with a categorical
column (an MLP; the label depends on a temperature and a city), diabetes (an MLP, regression) and text_rnn (a GRU
over TextVectorization).
- Completeness: on every test row whose score moves at least 0.05 (regression: 0.05 train-split standard
  deviations) from the baseline's, |sum of the shares - the move| / |move|, for the shipped rule (a Riemann sum at
  the midpoints) and the trapezoid rule at 16, 32 and 64 steps; and, on digits and the table, what the tests'
  criteria see when a step weight, the path or the steps are wrong (pipeline.explain.path_points replaced here).
- Cost: the SavedModel's explain and serving_default signatures run through the server's own session
  (serving.servable.Servable, its default threads), 1, 8 and 64 digits rows per call at 16, 32 and 64 steps,
  median of --rounds interleaved rounds of --seconds each; and one row over REST through our server, p50.
- Size: the SavedModel as export writes it, with explain and without (the same model, saved twice), and the
  published digits version as export measures it (.tflite, schema and sample included).
Writes benchmarks/results/explain.json and .md (with the machine and its load average: on a shared host, run it
again on a quiet one).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import numpy as np  # noqa: E402

from localhost.machine import described, machine  # noqa: E402

DIGITS = ["tune.algorithm=random", "tune.max_trials=2", "tune.epochs=1", "train.epochs=6",
          "compress.variants=[pruned, qat]", "compress.fine_tune_epochs=2", "compress.tflite=[int8]",
          "compress.max_accuracy_drop=0.05"]  # tests/pipeline_cli.py's DIGITS_RUN
TABLE = ["data.categorical=[city]", "data.input_shape=[]", "model.name=mlp", "train.epochs=15", "compress.variants=[]"]
KINDS = {  # name -> (config, overrides, the outputs that hold shares)
    "digits (CNN)": ("digits", DIGITS, ["attributions"]),
    "table with a categorical column (MLP)": ("digits", TABLE, ["attributions", "attributions_city"]),
    "diabetes (MLP, regression)": ("tabular_regression", ["compress.variants=[]"], ["attributions"]),
    "text_rnn (GRU)": ("text_rnn", ["compress.variants=[]"], ["token_attributions"]),
}
STEPS = (16, 32, 64)
ROWS = (1, 8, 64)


def weather_csv(path: Path) -> Path:
    """600 rows of a temperature and a city; warm when the temperature plus the city's offset is above 0, so both
    columns earn shares."""
    rng = np.random.default_rng(0)
    offsets = {"paris": -1.0, "oslo": -2.0, "rome": 1.0, "lima": 2.0}
    rows = [(rng.normal(scale=2.0), city) for city in rng.choice(list(offsets), 600)]
    with path.open("w", newline="") as f:
        csv.writer(f).writerows([("temperature", "city", "label"), *(
            (f"{t:.3f}", city, "warm" if t + offsets[city] > 0 else "cold") for t, city in rows)])
    return path


def trained(name: str, workdir: Path, explain: bool = True, until: str | None = None):
    """The pipeline run of model kind `name` in `workdir` (cached when it ran before)."""
    import pipeline

    config, overrides, _ = KINDS[name]
    slug = name.split(" ")[0]
    if slug == "table":
        overrides = [f"data.source={weather_csv(workdir / 'weather.csv')}", *overrides]
    os.chdir(ROOT)  # the example configs' data paths are relative to the repository
    return pipeline.run(config, [*overrides, f"output_dir={workdir / 'runs'}", f"push.repository={workdir / 'repo'}",
                                 f"push.model_name={slug}", "train.verbose=0", f"export.explain={str(explain).lower()}"],
                        until=until, stage_output=None)


def run_parts(run_dir: Path):
    """(model, schema, train split, test rows as a client sends them, the test split) of a run."""
    from pipeline.artifacts import (COMPRESSED_MODEL, DATASET, SCHEMA, TRAINED_MODEL, raw_inputs, read_schema,
                                    read_split)
    from pipeline.compression import loading

    compressed = COMPRESSED_MODEL.of_run(run_dir)
    model = loading.load(compressed if compressed.is_file() else TRAINED_MODEL.of_run(run_dir))
    schema = read_schema(SCHEMA.of_run(run_dir).parent)
    dataset = DATASET.of_run(run_dir)
    return model, schema, read_split(dataset, "train"), raw_inputs(dataset, schema), read_split(dataset, "test")


def trapezoid(steps: int):
    """The trapezoid rule's points and weights, both ends included (the shipped rule is pipeline.explain's)."""
    weights = np.full(steps + 1, 1.0 / steps)
    weights[[0, -1]] /= 2
    return np.linspace(0.0, 1.0, steps + 1), weights


def mutated(rule, how: str):
    """The shipped rule made wrong, as a bug would: each step weighed 1/(steps+1), or a curved path (alpha^1.5)."""
    def points(steps: int):
        alphas, weights = rule(steps)
        alphas, weights = alphas.copy(), weights.copy()
        if how == "weight":
            weights[1:-1] = 1.0 / (steps + 1)
        else:
            alphas[1:-1] = alphas[1:-1] ** 1.5
        return alphas, weights

    return points


def completeness(parts, shares: list[str], steps: int, rule) -> dict:
    """The completeness errors of the explain computation (in process, as the signature runs it) on the test rows."""
    import tensorflow as tf

    from pipeline import explain
    from pipeline.artifacts import categorical_names

    model, schema, train, rows, _ = parts
    shipped = explain.path_points
    explain.path_points = rule
    try:
        plan = explain.plan(model, schema, train.x, steps)
        names = categorical_names(schema)
        x = rows["x"]
        indices = None
        if names:  # the indices the SavedModel computes from the strings: the test split's last columns
            indices = tf.constant(parts[4].x[:, -len(names):])
        attribute = tf.function(lambda x, indices: explain.attribute(model, plan, x, indices), autograph=False)
        answer = {k: v.numpy() for k, v in attribute(tf.constant(x), indices).items()}
    finally:
        explain.path_points = shipped
    move = answer["score"].astype(np.float64) - answer["baseline_score"]
    least = 0.05 if schema["task"] == "classification" else 0.05 * schema["label_stats"]["train_std"]
    moved = np.abs(move) >= least
    total = sum(answer[name].reshape(len(move), -1).sum(axis=1, dtype=np.float64) for name in shares)
    errors = np.abs(total[moved] - move[moved]) / np.abs(move[moved])
    return {"rows": int(moved.sum()), "of": len(move), "median": float(np.median(errors)),
            "p95": float(np.percentile(errors, 95)), "max": float(errors.max()),
            "within_5_percent": float(np.mean(errors <= 0.05))}


def saved(parts, path: Path, steps: int | None) -> int:
    """Bytes of the SavedModel export writes for this model, with the explain signature at `steps` or without."""
    from pipeline import explain, saved_model

    model, schema, train, rows, _ = parts
    plan = explain.plan(model, schema, train.x, steps) if steps else None
    saved_model.save(model, schema, path, True, True, {k: v[:1] for k, v in rows.items()}, plan)
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def timings(paths: dict[int, Path], rows: np.ndarray, seconds: float, rounds: int) -> dict:
    """Milliseconds per call through the server's session: explain at each step count and predict, per batch size,
    median over interleaved rounds."""
    from serving.servable import Servable, session_config

    servables = {steps: Servable("digits", 1, path, session_config(0, 0)) for steps, path in paths.items()}
    calls = {f"explain_{steps}": (servable, "explain") for steps, servable in servables.items()}
    calls["predict"] = (servables[32], "serving_default")
    samples: dict[str, list[float]] = {}
    for _ in range(rounds):
        for name, (servable, signature) in calls.items():
            for n in ROWS:
                inputs = {"x": rows[:n]}
                for _ in range(3):
                    servable.run(signature, inputs)
                took, started = [], time.perf_counter()
                while time.perf_counter() - started < seconds / len(ROWS):
                    began = time.perf_counter()
                    servable.run(signature, inputs)
                    took.append((time.perf_counter() - began) * 1000)
                samples.setdefault(f"{name}@{n}", []).append(statistics.median(took))
    return {key: round(statistics.median(values), 3) for key, values in samples.items()}


def over_rest(base: Path, row: np.ndarray, requests_n: int) -> dict:
    """p50 and p99 of one-row explain and predict requests to our server, in turn."""
    import requests

    from serving.process import ServerProcess

    server = ServerProcess("--model_name=digits", f"--model_base_path={base}", "--port=0", log_dir=base.parent)
    try:
        server.wait_available("digits")
        took = {"explain": [], "predict": []}
        with requests.Session() as session:
            for i in range(requests_n + 10):
                for name, body in (("explain", {"signature_name": "explain", "instances": [row.tolist()]}),
                                   ("predict", {"instances": [row.tolist()]})):
                    started = time.perf_counter()
                    answer = session.post(f"{server.url}/v1/models/digits:predict", json=body, timeout=30)
                    assert answer.status_code == 200, answer.text
                    if i >= 10:
                        took[name].append((time.perf_counter() - started) * 1000)
    finally:
        server.stop()
    return {f"{name}_{q}_ms": round(float(np.percentile(values, q)), 3) for name, values in took.items()
            for q in (50, 99)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=None, help="where the pipeline runs go (default: a temporary "
                                                                    "directory)")
    parser.add_argument("--seconds", type=float, default=3.0, help="per timing cell and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args(argv)
    host = machine()  # before the runs: its load average is the machine's, not ours
    from pipeline import explain

    with tempfile.TemporaryDirectory() as tmp:
        workdir = (args.workdir or Path(tmp)).resolve()
        workdir.mkdir(parents=True, exist_ok=True)
        results = {"machine": host, "completeness": {}, "sensitivity": {}, "size": {}}
        for name, (_, _, shares) in KINDS.items():
            print(f"{name}: training, then completeness", flush=True)
            run = trained(name, workdir)
            parts = run_parts(run.run_dir)
            results["completeness"][name] = {
                f"{rule_name} {steps}": completeness(parts, shares, steps, rule)
                for rule_name, rule in (("midpoint", explain.path_points), ("trapezoid", trapezoid)) for steps in STEPS}
            if name.startswith(("digits", "table")):
                results["sensitivity"][name] = {
                    "shipped, 32 steps": completeness(parts, shares, 32, explain.path_points),
                    "each step weighed 1/33": completeness(parts, shares, 32, mutated(explain.path_points, "weight")),
                    "a curved path (alpha^1.5)": completeness(parts, shares, 32, mutated(explain.path_points, "path")),
                    "8 steps": completeness(parts, shares, 8, explain.path_points)}
            sizes = {"without": saved(parts, workdir / "sizes" / name / "without", None),
                     "with": saved(parts, workdir / "sizes" / name / "with", 32)}
            results["size"][name] = {**sizes, "growth": round(sizes["with"] / sizes["without"] - 1, 4)}
            if name.startswith("digits"):
                digits_parts, published = parts, run.metrics["export"]["saved_model_bytes"]
                without = trained(name, workdir, explain=False, until="export").metrics["export"]["saved_model_bytes"]
                results["size"]["digits, the published version"] = {"without": without, "with": published,
                                                                      "growth": round(published / without - 1, 4)}
        print("digits: timings", flush=True)
        paths = {}
        for steps in STEPS:
            paths[steps] = workdir / "timing" / str(steps) / "1"
            shutil.rmtree(paths[steps], ignore_errors=True)
            saved(digits_parts, paths[steps], steps)
        rows = digits_parts[3]["x"]
        results["latency_ms"] = timings(paths, rows, args.seconds, args.rounds)
        results["rest_one_row"] = over_rest(paths[32].parent, rows[0], args.requests)
    results["load_average_1m_after"] = round(os.getloadavg()[0], 2)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "explain.json").write_text(json.dumps(results, indent=1) + "\n")
    (args.out / "explain.md").write_text(markdown(results))
    print(markdown(results))
    return 0


def markdown(results: dict) -> str:
    m = results["machine"]
    lines = ["# The explain signature: completeness, cost, size", "",
             f"Machine: {described(m)}; load "
             f"average {m['load_average_1m']} before, {results['load_average_1m_after']} after (a shared host: run "
             f"`python benchmarks/explain_bench.py` again on a quiet one). `benchmarks/explain_bench.py`.", "",
             "## Completeness", "",
             "|sum of a row's shares - (score - baseline_score)| / |score - baseline_score|, on the test rows whose "
             "score moved at least 0.05 from the baseline's (regression: 0.05 standard deviations of the label). "
             "Shipped: the midpoint rule.", "",
             "| model | rule | steps | rows | median | 95th percentile | largest | within 5 % |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for name, cells in results["completeness"].items():
        for key, c in cells.items():
            rule, steps = key.split()
            lines.append(f"| {name} | {rule} | {steps} | {c['rows']} of {c['of']} | {100 * c['median']:.2f} % | "
                         f"{100 * c['p95']:.2f} % | {100 * c['max']:.2f} % | {100 * c['within_5_percent']:.1f} % |")
    lines += ["", "What the tests' criteria see when the computation is wrong (tests/integration: digits needs a median "
              "within 2.5 % and 90 % of rows within 5 %, the table every row within 5 % and a median within 1 %):", "",
              "| model | computation | median | within 5 % | largest |", "|---|---|---:|---:|---:|"]
    for name, cells in results["sensitivity"].items():
        for key, c in cells.items():
            lines.append(f"| {name} | {key} | {100 * c['median']:.2f} % | {100 * c['within_5_percent']:.1f} % | "
                         f"{100 * c['max']:.2f} % |")
    latency = results["latency_ms"]
    lines += ["", "## Cost (digits CNN)", "",
              "Milliseconds per call through the server's session (median of rounds); each explain row runs the model "
              "forward and back at steps + 2 points.", "",
              "| signature | 1 row | 8 rows | 64 rows |", "|---|---:|---:|---:|"]
    for name in [*(f"explain_{s}" for s in STEPS), "predict"]:
        label = f"explain, {name.split('_')[1]} steps" if name != "predict" else "predict (serving_default)"
        lines.append(f"| {label} | " + " | ".join(f"{latency[f'{name}@{n}']:.2f}" for n in ROWS) + " |")
    rest = results["rest_one_row"]
    lines += ["", f"One row over REST through our server, 32 steps: explain p50 {rest['explain_50_ms']:.2f} ms, p99 "
              f"{rest['explain_99_ms']:.2f} ms; predict p50 {rest['predict_50_ms']:.2f} ms, p99 "
              f"{rest['predict_99_ms']:.2f} ms.", "", "## Size", "",
              "| SavedModel | without explain | with explain (32 steps) | growth |", "|---|---:|---:|---:|"]
    for name, s in results["size"].items():
        lines.append(f"| {name} | {s['without']:,} | {s['with']:,} | {100 * s['growth']:+.1f} % |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
