"""report.html for a run: one self-contained page (images inlined) with everything the run knows.

Sections, each present when its artefacts are: the run (status, config source and overrides, and for a
failed run the failing stage's reason and log tail), stages (timings, cache hits), data (per-feature
statistics, label distribution, rejected rows), tuning (trials), training (curves), evaluation
(metrics, confusion matrix), explanations (the explain signature on a few test rows: attribution maps,
a table row's largest shares or a text's tokens, beside the predictions; its completeness error), compression
(table and plot), serving (infra-validation and smoke-test latencies, the pushed version and a command to query
it), signatures, config.
"""
from __future__ import annotations

import base64
import csv
import html
import io
import json
import shlex
import sys
from pathlib import Path

from pipeline.artifacts import (COMPRESSION_PLOT, COMPRESSION_REPORT, CONFUSION, EVALUATION, EXPLANATIONS, HISTORY,
                                INFRA_VALIDATION, PUSHED, REJECTS, SAVED_MODEL_EVALUATION, SCHEMA,
                                SHIPPED_SAMPLE_REQUEST, SIGNATURES, TRIALS, RunFile)
from pipeline.compression import summary
from pipeline.errors import StageFailed
from pipeline.metrics import format_metrics
from pipeline.runner import MANIFEST, StageRecord

STYLE = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px;color:#222}
h1{margin-bottom:.2em} h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;font-size:13px;margin:.5em 0} td,th{padding:2px 8px;text-align:right;
border-bottom:1px solid #eee} th{background:#f5f5f5} td.l,th.l{text-align:left}
.scroll{overflow-x:auto} pre{background:#f7f7f7;padding:.8em;overflow-x:auto;font-size:12px}
.failed{color:#b00} .ok{color:#070} img{max-width:100%} pre.command{white-space:pre-wrap;overflow-wrap:anywhere}
"""
LOG_TAIL_LINES = 40
TOP_FEATURES = 5  # a table row's largest shares shown


def write_report(run_dir: Path, records: list[StageRecord], failure: StageFailed | None = None) -> Path:
    """Write run_dir/report.html (a failed run gets one too, with the failing stage's log tail)."""
    manifest = json.loads((run_dir / MANIFEST).read_text()) if (run_dir / MANIFEST).is_file() else {}
    sections = [
        ("run", "Run", _run(run_dir, manifest, failure)),
        ("stages", "Stages", _stages(records)),
        ("data", "Data", _data(run_dir)),
        ("tuning", "Tuning", _tuning(run_dir)),
        ("training", "Training", _training(run_dir)),
        ("evaluation", "Evaluation (test split)", _evaluation(run_dir)),
        ("explanations", "Explanations (the explain signature on test rows)", _explanations(run_dir)),
        ("compression", "Compression (measured on the validation split)", _compression(run_dir)),
        ("serving", "Serving", _serving(run_dir)),
        ("signatures", "Signatures", _signatures(run_dir)),
        ("config", "Config", f"<pre>{html.escape((run_dir / 'config.json').read_text())}</pre>"),
    ]
    body = "".join(f"<section id='{key}'><h2>{title}</h2>{content}</section>"
                   for key, title, content in sections if content)
    page = (f"<!doctype html><meta charset=utf-8><title>Run {html.escape(run_dir.name)}</title><style>{STYLE}</style>"
            f"<h1>Run {html.escape(run_dir.name)}</h1>{body}")
    path = run_dir / "report.html"
    path.write_text(page)
    return path


def _table(header: list[str], rows: list[list], left: str = "l") -> str:
    """An HTML table; `left` marks with "l" the left-aligned columns (names; the rest are numbers)."""
    def cell(tag: str, i: int, value) -> str:
        return f"<{tag}{' class=l' if left[i:i + 1] == 'l' else ''}>{value}</{tag}>"
    head = "".join(cell("th", i, html.escape(h)) for i, h in enumerate(header))
    body = "".join("<tr>" + "".join(cell("td", i, v) for i, v in enumerate(row)) + "</tr>" for row in rows)
    return f"<div class=scroll><table><tr>{head}</tr>{body}</table></div>"


def _number(value, digits: int = 4) -> str:
    if isinstance(value, bool) or value is None:
        return html.escape(str(value))
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) >= 1e4 or (value and abs(value) < 1e-3) else f"{value:.{digits}f}"
    return html.escape(str(value))


def _read(run_file: RunFile, run_dir: Path):
    """The JSON a stage of this run wrote, or None where that stage did not run (or wrote none)."""
    path = run_file.of_run(run_dir)
    return json.loads(path.read_text()) if path.is_file() else None


def _image(png: bytes, alt: str) -> str:
    return f"<img alt='{alt}' src='data:image/png;base64,{base64.b64encode(png).decode()}'>"


def _run(run_dir: Path, manifest: dict, failure: StageFailed | None) -> str:
    status = manifest.get("status", "unknown")
    overrides = manifest.get("overrides", [])
    parts = [f"<p>Status: <b class={'ok' if status == 'succeeded' else 'failed'}>{html.escape(status)}</b>; "
             f"updated {html.escape(manifest.get('updated', ''))}; overrides: "
             f"<code>{html.escape(' '.join(overrides)) or 'none'}</code></p>"]
    if failure is not None:
        parts.append(f"<p class=failed>Stage <b>{html.escape(failure.stage)}</b> failed: "
                     f"{html.escape(failure.reason)}</p>")
        log = failure.kept / "log.txt" if failure.kept else None
        if log is not None and log.is_file():
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:])
            parts.append(f"<p>Last {LOG_TAIL_LINES} lines of {html.escape(str(log))}:</p>"
                         f"<pre>{html.escape(tail)}</pre>")
    return "".join(parts)


def _stages(records: list[StageRecord]) -> str:
    rows = [[r.name, f"<span class={'failed' if r.status in ('failed', 'interrupted') else 'ok'}>{r.status}</span>",
             f"{r.wall_s:.1f} s", html.escape(r.produced_by), html.escape(format_metrics(r.metrics))]
            for r in records]
    return _table(["stage", "status", "time", "made by run", "metrics"], rows, left="ll-ll")


def _data(run_dir: Path) -> str:
    schema = _read(SCHEMA, run_dir)
    if schema is None:
        return ""
    parts = [f"<p>Source <code>{html.escape(schema['source'])}</code>, task {schema['task']}, rows "
             f"{', '.join(f'{k} {v}' for k, v in schema['rows'].items())}, rejected {schema['rejected']}.</p>"]
    features = schema["features"] if schema.get("kind") != "text" else []
    if "text" in schema:
        parts.append(f"<p>Text column <code>{html.escape(schema['features'][0]['name'])}</code>: a vocabulary of "
                     f"{len(schema['text']['vocabulary'])} tokens adapted on the train split, "
                     f"{schema['text']['sequence_length']} tokens per example.</p>")
    numeric = [f for f in features if f.get("dtype") != "category"]
    shown = numeric if len(numeric) <= 40 else numeric[:20] + numeric[-20:]
    parts.append(_table(["feature", "min", "max", "mean", "std", "missing"],
                        [[html.escape(f["name"]), *(_number(f[k]) for k in ("min", "max", "mean", "std", "missing"))]
                         for f in shown]) if shown else "")
    if len(shown) < len(numeric):
        parts.append(f"<p>({len(numeric) - len(shown)} features in the middle left out; all are in schema.json.)</p>")
    categories = [f for f in features if f.get("dtype") == "category"]
    if categories:
        parts.append(_table(["categorical feature", "values (train split)", "rows of each", "unseen in train", "missing"],
                            [[html.escape(f["name"]), _number(len(f["vocabulary"])),
                              html.escape(", ".join(f"{v} {n}" for v, n in list(f["counts"].items())[:8])
                                          + (", ..." if len(f["counts"]) > 8 else "")),
                              _number(f["unseen_in_train"]), _number(f["missing"])] for f in categories],
                            left="l-l"))
    if "label_distribution" in schema:
        distribution = schema["label_distribution"]
        parts.append(_table(["split", *schema["classes"]],
                            [[split, *(_number(counts[c]) for c in schema["classes"])]
                             for split, counts in distribution.items()]))
    elif "label_stats" in schema:
        stats = schema["label_stats"]
        parts.append("<p>Label: " + ", ".join(f"{k} {_number(v)}" for k, v in stats.items()) + "</p>")
    rejects = REJECTS.of_run(run_dir)
    if rejects.is_file():
        with rejects.open(newline="") as f:
            rows = list(csv.reader(f))[1:]
        parts.append(f"<p>{len(rows)} rejected rows{' (first 20)' if len(rows) > 20 else ''}:</p>" if rows
                     else "<p>No row was rejected.</p>")
        if rows:
            parts.append(_table(["row", "split", "reason"], [[*map(html.escape, r)] for r in rows[:20]], left="-ll"))
    return "".join(parts)


def _tuning(run_dir: Path) -> str:
    rows = _read(TRIALS, run_dir)
    if rows is None:
        return ""
    names = sorted({k for t in rows for k in t["hyperparameters"]})
    return _table(["trial", *names, "score"], [[str(i + 1), *(_number(t["hyperparameters"].get(n)) for n in names),
                                               _number(t["score"])] for i, t in enumerate(rows)])


def _training(run_dir: Path) -> str:
    history = _read(HISTORY, run_dir)
    if history is None:
        return ""
    from matplotlib.figure import Figure  # a Figure object: no pyplot, no global backend (a notebook keeps its own)

    metrics = [m for m in ("loss", "accuracy", "mae") if m in history]
    fig = Figure(figsize=(5 * len(metrics), 3.5))
    axes = fig.subplots(1, len(metrics), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        ax.plot(range(1, len(history[metric]) + 1), history[metric], label="train")
        ax.plot(range(1, len(history.get(f"val_{metric}", [])) + 1), history.get(f"val_{metric}", []),
                label="validation")
        ax.set(title=metric, xlabel="epoch")
        ax.legend()
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80)
    return _image(buffer.getvalue(), "training curves")


def _evaluation(run_dir: Path) -> str:
    parts = []
    for title, run_file in (("The trained model", EVALUATION),
                            ("The exported SavedModel, as published (what the registry records)", SAVED_MODEL_EVALUATION)):
        metrics = _read(run_file, run_dir)
        if metrics is not None:
            parts.append(f"<p>{title}: " + ", ".join(f"{k} {_number(v)}" for k, v in metrics.items()) + ".</p>")
    confusion = _read(CONFUSION, run_dir)
    if confusion is not None:
        classes, matrix = confusion["classes"], confusion["matrix"]
        rows = [[f"<b>{html.escape(c)}</b>", *(f"<span style='background:{'#cfc' if i == j else ('#fcc' if v else '')}'>"
                                              f"{v}</span>" for j, v in enumerate(row))]
                for i, (c, row) in enumerate(zip(classes, matrix))]
        parts.append("<p>Confusion matrix: rows are the true class, columns the predicted one.</p>"
                     + _table(["true \\ predicted", *classes], rows))
    return "".join(parts)


def _explanations(run_dir: Path) -> str:
    explained = _read(EXPLANATIONS, run_dir)
    if explained is None:
        return ""
    if "skipped" in explained:
        return f"<p>The model has no <code>explain</code> signature: {html.escape(explained['skipped'])}</p>"
    said, figures = explained["described"], explained["completeness"]
    intro = (f"<p>Each input's share of the score ({html.escape(said['score'])}): {html.escape(said['method'])}, "
             f"{html.escape(said['rule'])} over {said['steps']} steps, from the baseline: "
             f"{html.escape(said['baseline'])}. Shares add up to the score's move from the baseline "
             f"(completeness) within {_percent(figures['median'])} on the median row, {_percent(figures['p95'])} "
             f"at the 95th percentile and {_percent(figures['max'])} at most, on the {figures['rows']} test rows "
             f"whose score moved at least {figures['least_move']:.3g}.</p>")
    show = {"image": _attribution_maps, "table": _largest_shares, "text": _token_shares}[explained["kind"]]
    return intro + show(explained)


def _percent(fraction: float | None) -> str:
    return "–" if fraction is None else f"{100 * fraction:.1f} %"


def _prediction(row: dict) -> str:
    """What a shown row's model said, and what it was: "predicted 3 (score 0.99, baseline 0.02), true 3"."""
    predicted = row["predicted"] if isinstance(row["predicted"], str) else f"{row['predicted']:.4g}"
    label = row["label"] if isinstance(row["label"], str) else f"{row['label']:.4g}"
    return f"predicted {predicted} (score {row['score']:.3g}, baseline {row['baseline_score']:.3g}), true {label}"


def _attribution_maps(explained: dict) -> str:
    """Each shown image above its shares per pixel (channels summed): red raised the score, blue lowered it."""
    from matplotlib.figure import Figure
    import numpy as np

    rows = explained["rows"]
    fig = Figure(figsize=(2.4 * len(rows), 5))
    axes = fig.subplots(2, len(rows), squeeze=False)
    for column, row in enumerate(rows):
        pixels = np.asarray(row["pixels"])
        shares = np.asarray(row["attributions"]).sum(axis=-1)
        image, heat = axes[0][column], axes[1][column]
        image.imshow(pixels[..., 0] if pixels.shape[-1] == 1 else pixels / max(pixels.max(), 1e-9),
                     cmap="gray_r" if pixels.shape[-1] == 1 else None)
        image.set_title(f"predicted {row['predicted']} ({row['score']:.2f})\ntrue {row['label']}", fontsize=8)
        limit = max(float(np.abs(shares).max()), 1e-9)
        heat.imshow(shares, cmap="RdBu_r", vmin=-limit, vmax=limit)
        heat.set_title(f"shares, sum {shares.sum():.3g}", fontsize=8)
        for ax in (image, heat):
            ax.set_xticks([])
            ax.set_yticks([])
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80)
    return _image(buffer.getvalue(), "attribution maps")


def _largest_shares(explained: dict) -> str:
    rows = [[html.escape(_prediction(row)), *(f"{html.escape(name)} = {_number(value)}: {share:+.3g}"
                                              for name, value, share in row["features"][:TOP_FEATURES])]
            for row in explained["rows"]]
    width = max(len(r) for r in rows)
    return _table(["row", *(f"share {i}" for i in range(1, width))], [r + [""] * (width - len(r)) for r in rows],
                  left="l" * width)


def _token_shares(explained: dict) -> str:
    """Each shown text, its tokens shaded by their share: green raised the score, red lowered it."""
    parts = []
    for row in explained["rows"]:
        largest = max((abs(share) for _, share in row["tokens"]), default=0.0) or 1.0
        tokens = " ".join(f"<span title='{share:+.3g}' style='background:rgba("
                          f"{'0,150,0' if share >= 0 else '200,0,0'},{abs(share) / largest:.2f})'>"
                          f"{html.escape(token)}</span>" for token, share in row["tokens"])
        parts.append(f"<p>{tokens}<br><small>{html.escape(_prediction(row))}</small></p>")
    return "".join(parts)


def _compression(run_dir: Path) -> str:
    report = _read(COMPRESSION_REPORT, run_dir)
    if report is None:
        return ""
    columns = [("agreement_with_baseline", 3), ("sparsity", 3)]
    header = ["variant", "gate", "accuracy", "drop [95% interval]", "rows lost / gained", "agreement", "sparsity",
              "params", "SavedModel gzip KiB", "tflite KiB", "tflite gzip KiB", "b1 ms", "b32 ms"]
    rows = []
    for name, entry in report["variants"].items():
        kib = [_number(entry[k] / 1024, 1) if k in entry else "–"
               for k in ("savedmodel_gzip_bytes", "tflite_bytes", "tflite_gzip_bytes")]
        mark = " ★" if name == report["selected"] else ""
        gate = entry.get("status", "ok")
        low, high = entry["drop_interval"]
        rows.append([html.escape(name) + mark, f"<span class={'ok' if gate == 'ok' else 'failed'}>"
                     f"{html.escape(gate.split(':')[0])}</span>", _number(entry["accuracy"], 4),
                     f"{entry['accuracy_drop']:+.4f} [{low:+.4f}, {high:+.4f}]",
                     f"{entry['rows_lost']} / {entry['rows_gained']}",
                     *(_number(entry[k], d) for k, d in columns), _number(entry["params"]), *kib,
                     _number(entry["latency_ms_b1"], 3), _number(entry["latency_ms_b32"], 3)])
    trained = (f" (the trained model's: {report['trained_test_accuracy']:.4f})"
               if "trained_test_accuracy" in report else "")
    held_out = (f"<p>Selected <b>{html.escape(report['selected'])}</b> ★: held-out test accuracy "
                f"{report['selected_test_accuracy']:.4f}{trained}; shipped .tflite: "
                f"{html.escape(', '.join(report.get('shipped_tflite', [])) or 'none')}.</p>"
                if "selected_test_accuracy" in report else "")
    int8 = report.get("smallest_int8_within")
    smallest = (f"<p>The smallest int8 .tflite within the gate, <b>{html.escape(int8['name'])}</b>, is "
                f"{int8['ratio']:.1f}x smaller (gzip) than the float .tflite of the trained model.</p>" if int8 else "")
    skipped = "".join(f"<p>Skipped {html.escape(k)}: {html.escape(v)}</p>" for k, v in report.get("skipped", {}).items())
    rule = summary.rule(report['max_accuracy_drop'], report['rows'])
    rule = f"<p>{html.escape(rule[0].upper() + rule[1:])}</p>"
    plot = COMPRESSION_PLOT.of_run(run_dir)
    image = _image(plot.read_bytes(), "accuracy against size and latency") if plot.is_file() else ""
    return held_out + smallest + skipped + rule + _table(header, rows, left="ll") + image


def _serving(run_dir: Path) -> str:
    parts = []
    result = _read(INFRA_VALIDATION, run_dir)
    if result is not None:
        parts.append("<p>Infra validation: skipped.</p>" if result.get("skipped") else
                     f"<p>Infra validation: {result['rows']} test rows served over REST and gRPC as computed in "
                     f"process (largest difference {max(result['max_abs_difference'].values()):.2g}"
                     + (f"; explain's {max(result['explain_max_abs_difference'].values()):.2g}"
                        if "explain_max_abs_difference" in result else "")
                     + f"); single-row latency over {result['requests']} requests: p50 {result['p50_ms']:.2f} ms, p99 "
                       f"{result['p99_ms']:.2f} ms.</p>")
    pushed = _read(PUSHED, run_dir)
    if pushed is not None:
        path = Path(pushed["path"]).resolve()
        if "smoke_latency_ms" in pushed:
            parts.append(f"<p>Smoke test before publishing: answered in {pushed['smoke_latency_ms']:.1f} ms.</p>")
        parts.append(f"<p>Published: <code>{html.escape(str(path))}</code> (version {pushed['version']}"
                     f"{'' if pushed.get('published', True) else ', already published before'}). Serve it and "
                     f"send it the test row it ships with:</p>")
        parts.append("<pre class=command>" + html.escape(
            f"{shlex.quote(sys.executable)} -m serving --rest_api_port=8501 --model_name={path.parent.name} \\\n"
            f"    --model_base_path={path.parent}\n"
            f"curl -d @{path / SHIPPED_SAMPLE_REQUEST} \\\n"
            f"    http://localhost:8501/v1/models/{path.parent.name}:predict") + "</pre>")
    return "".join(parts)


def _signatures(run_dir: Path) -> str:
    signatures = _read(SIGNATURES, run_dir)
    if signatures is None:
        return ""
    rows = [[html.escape(key), html.escape(signature["method"].rsplit("/", 1)[-1]), direction, html.escape(name),
             tensor["dtype"], html.escape(str(tensor["shape"]))]
            for key, signature in signatures.items()
            for direction in ("inputs", "outputs") for name, tensor in signature[direction].items()]
    return _table(["signature", "method", "", "tensor", "dtype", "shape"], rows, left="llllll")
