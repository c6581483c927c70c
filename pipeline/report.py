"""report.html for a run: the stage table, metrics, training curves and the confusion matrix."""
from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

from pipeline.artifacts import COMPRESSION_PLOT, COMPRESSION_REPORT, CONFUSION, HISTORY, SIGNATURES
from pipeline.runner import StageRecord, format_metrics


def write_report(run_dir: Path, records: list[StageRecord]) -> Path:
    parts = [f"<h1>Run {html.escape(run_dir.name)}</h1>", _stage_table(records)]
    history = HISTORY.of_run(run_dir)
    if history.is_file():
        parts.append("<h2>Training</h2>" + _curves(json.loads(history.read_text())))
    confusion = CONFUSION.of_run(run_dir)
    if confusion.is_file():
        parts.append("<h2>Confusion matrix (test split)</h2>" + _confusion(json.loads(confusion.read_text())))
    compression = COMPRESSION_REPORT.of_run(run_dir)
    if compression.is_file():
        parts.append("<h2>Compression (measured on the validation split)</h2>" + _compression(
            json.loads(compression.read_text()), COMPRESSION_PLOT.of_run(run_dir)))
    signatures = SIGNATURES.of_run(run_dir)
    if signatures.is_file():
        parts.append(f"<h2>Signatures</h2><pre>{html.escape(signatures.read_text())}</pre>")
    config = (run_dir / "config.json").read_text()
    parts.append(f"<h2>Config</h2><pre>{html.escape(config)}</pre>")
    style = "body{font-family:sans-serif;margin:2em}td,th{padding:2px 8px;text-align:right}table{border-collapse:collapse}"
    page = f"<!doctype html><meta charset=utf-8><title>Run {run_dir.name}</title><style>{style}</style>{''.join(parts)}"
    path = run_dir / "report.html"
    path.write_text(page)
    return path


def _stage_table(records: list[StageRecord]) -> str:
    rows = "".join(
        f"<tr><td>{r.name}</td><td>{r.status}</td><td>{r.wall_s:.1f}s</td><td>{r.produced_by}</td>"
        f"<td style='text-align:left'>{html.escape(format_metrics(r.metrics))}</td></tr>"
        for r in records
    )
    return f"<table><tr><th>stage</th><th>status</th><th>time</th><th>run</th><th>metrics</th></tr>{rows}</table>"


def _curves(history: dict) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [m for m in ("loss", "accuracy", "mae") if m in history]
    fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 3.5), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        ax.plot(history[metric], label="train")
        ax.plot(history.get(f"val_{metric}", []), label="validation")
        ax.set(title=metric, xlabel="epoch")
        ax.legend()
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80)
    plt.close(fig)
    return f"<img alt='training curves' src='data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}'>"



def _compression(report: dict, plot: Path) -> str:
    keys = ("format", "accuracy", "accuracy_drop", "agreement_with_baseline", "sparsity", "params",
            "savedmodel_gzip_bytes", "tflite_bytes", "tflite_gzip_bytes", "latency_ms_b1", "latency_ms_b32", "status")
    head = "<tr><th>variant</th>" + "".join(f"<th>{k}</th>" for k in keys) + "</tr>"
    rows = "".join(
        f"<tr><th>{html.escape(name)}{' (selected)' if name == report['selected'] else ''}</th>"
        + "".join(f"<td>{_cell(entry.get(k, ''))}</td>" for k in keys) + "</tr>"
        for name, entry in report["variants"].items()
    )
    image = f"<img alt='accuracy vs size and latency' src='data:image/png;base64,{_base64(plot)}'>" if plot.is_file() else ""
    held_out = (f"<p>Selected: {html.escape(report['selected'])}, held-out test accuracy "
                f"{report['selected_test_accuracy']:.4f}.</p>" if "selected_test_accuracy" in report else "")
    return f"{held_out}<table>{head}{rows}</table>{image}"


def _cell(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else html.escape(str(value))


def _base64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def _confusion(confusion: dict) -> str:
    classes, matrix = confusion["classes"], confusion["matrix"]
    head = "<tr><th>true \\ predicted</th>" + "".join(f"<th>{html.escape(c)}</th>" for c in classes) + "</tr>"
    body = "".join(
        f"<tr><th>{html.escape(c)}</th>"
        + "".join(f"<td style='{'background:#cfc' if i == j else ('background:#fcc' if v else '')}'>{v}</td>"
                  for j, v in enumerate(row))
        + "</tr>"
        for i, (c, row) in enumerate(zip(classes, matrix))
    )
    return f"<table>{head}{body}</table>"
