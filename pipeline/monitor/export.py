"""Logged requests as training data: a CSV in the columns the model was trained on, one row per logged instance,
with an empty label column to fill in and what the served model answered.

The `logged_*` columns (prediction, version, time) say where each row came from; ingest never takes them as
features, and a run on such a file records in the registry that its data came from request logs.
"""
from __future__ import annotations

import csv
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from pipeline.monitor.logs import Rows

LOGGED_COLUMNS = ("logged_prediction", "logged_version", "logged_at")  # ingest: never features (specs.DataConfig)


def columns(schema: dict, label: str) -> list[str]:
    """The training columns: the numbers (x's columns), the categorical columns, the text; then the label."""
    return [f["name"] for f in schema["features"]] + [label]


def write_csv(path: Path, schema: dict, label: str, batches: Iterable[Rows]) -> int:
    """Write every row of `batches` to `path` (replaced only once complete); the number of rows."""
    numbers = sum(f["dtype"] == "float32" for f in schema["features"]) if schema["kind"] == "numeric" else 0
    categorical = [f["name"] for f in schema["features"] if f["dtype"] == "category"]
    written = 0
    partial = path.with_name(path.name + ".partial")
    path.parent.mkdir(parents=True, exist_ok=True)
    with partial.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow([*columns(schema, label), *LOGGED_COLUMNS])
        for rows in batches:
            x = rows.inputs["x"]
            cells = [x.astype(np.float32).astype(str)] if numbers else [x.astype(str)[:, None]]
            cells += [rows.inputs[name].astype(str).reshape(-1, 1) for name in categorical]
            when = [time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t)) for t in rows.logged_at]
            table = np.concatenate(cells, axis=1).tolist()
            writer.writerows([*row, "", prediction, rows.version, at]
                             for row, prediction, at in zip(table, rows.predictions, when))
            written += len(rows)
    partial.replace(path)
    return written
