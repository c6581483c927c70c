"""`launch("pipeline.training.worker:run_task", task_file, ...)`: what each process of a local cluster runs.

pipeline.training.launcher starts the processes, each with its TF_CONFIG; each rebuilds the train stage's
view from the task file the trainer wrote and trains as its task. Only the chief writes to the stage's output;
the other workers save into a temporary dir, as TensorFlow requires every worker to take part in saving.
Nothing imports this module: it is an entry point, named by the trainer as a string.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from pipeline.training.distribute import is_chief
from pipeline.training.trainer import METRICS_FILE, read_task, run_cluster_task


def run_task(task_file: str) -> None:
    cfg, inputs, out, backup = read_task(Path(task_file))
    chief = is_chief(json.loads(os.environ["TF_CONFIG"]))
    with tempfile.TemporaryDirectory() as temp:
        metrics = run_cluster_task(cfg, inputs, out if chief else Path(temp), backup)
    if chief:
        (out / METRICS_FILE).write_text(json.dumps(metrics, indent=2))
