"""Export the selected model as a SavedModel with TF Serving's signatures (pipeline.saved_model).

The model is the one the compress stage selected (the trained one when compression is off). Its
.tflite files go beside it in assets.extra/ for edge use; `sample_request.json` is a predict
body for `curl -d @...`.
"""
from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path

import repository
from models import import_model_code, model_code_files
import numpy as np

from pipeline import specs
from pipeline.artifacts import (COMPRESSED_MODEL, COMPRESSED_TFLITE, SAMPLE_REQUEST, SAVED_MODEL_EVALUATION, SCHEMA,
                                SHIPPED_SAMPLE_REQUEST, SHIPPED_SCHEMA, SHIPPED_TRAIN_STATISTICS, SIGNATURES,
                                TRAIN_STATISTICS, Inputs, raw_inputs, read_schema, read_split, write_json)
from pipeline.metrics import classification_metrics, format_metrics, regression_metrics
from pipeline.views import ExportView


SPEC = specs.EXPORT


def external_inputs(cfg: ExportView) -> list[Path]:
    """A user builder's file: its classes are rebuilt from it when the model loads."""
    return model_code_files(cfg.model.name)


def run(cfg: ExportView, inputs: Inputs, out: Path) -> dict:
    from pipeline import saved_model
    from pipeline.saved_model import INPUT
    from pipeline.compression import variants

    schema = read_schema(inputs["schema"])
    import_model_code(cfg.model.name)
    model = variants.load(COMPRESSED_MODEL.in_artefact(inputs["compressed"]))  # served: not compiled, no training state
    path = out / "saved_model"
    test = raw_inputs(inputs["dataset"], schema)  # every test row as a client sends it (an image file, a text...)
    sample = {name: value[:1] for name, value in test.items()}  # the warmup request, and the sample for curl
    saved_model.save(model, schema, path, cfg.export.warmup, cfg.export.reject_nonfinite, sample)
    for tflite in sorted(COMPRESSED_TFLITE.in_artefact(inputs["compressed"]).glob("*.tflite")):  # for edge use
        (path / "assets.extra").mkdir(exist_ok=True)
        shutil.copy(tflite, path / "assets.extra" / tflite.name)
    described = repository.signatures(path)
    write_json(SIGNATURES, out, described)
    row = {name: _as_json(value[0]) for name, value in sample.items()}
    request = json.dumps({"instances": [row if len(row) > 1 else row[INPUT]]})  # for curl -d @..., and push's smoke test
    SAMPLE_REQUEST.in_output(out).write_text(request)
    (path / "assets.extra").mkdir(exist_ok=True)
    (path / SHIPPED_SAMPLE_REQUEST).write_text(request)
    shutil.copy(SCHEMA.in_artefact(inputs["schema"]), path / SHIPPED_SCHEMA)  # the server's per-feature counts
    statistics = TRAIN_STATISTICS.in_artefact(inputs["schema"])
    if statistics.is_file():  # what drift compares served requests with (not kept for image pixels)
        shutil.copy(statistics, path / SHIPPED_TRAIN_STATISTICS)
    y = read_split(inputs["dataset"], "test").y
    held_out = _held_out(path, schema, test, y)
    write_json(SAVED_MODEL_EVALUATION, out, held_out)
    print(f"export: the SavedModel on the {len(y)} test rows, as a client sends them: {format_metrics(held_out)}")
    size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    label = schema["classes"][y[0]] if schema["task"] == "classification" else f"{y[0]:.6g}"
    return {"saved_model_bytes": size, "signatures": described, "sample_label": label,
            **{k if k.startswith("test_") else f"test_{k}": v for k, v in held_out.items()}}


def _held_out(path: Path, schema: dict, rows: dict[str, np.ndarray], y: np.ndarray) -> dict:
    """The figures of exactly the model a version will hold: the SavedModel's serving signature on the test split."""
    import tensorflow as tf

    predict = tf.saved_model.load(str(path)).signatures["serving_default"]
    batches = [predict(**{name: tf.constant(value[i:i + 256]) for name, value in rows.items()})
               for i in range(0, len(y), 256)]
    if schema["task"] == "classification":
        return classification_metrics(np.concatenate([b["probabilities"].numpy() for b in batches]), y)
    return regression_metrics(np.concatenate([b["value"].numpy() for b in batches]), y,
                              schema["label_stats"]["train_mean"])


def _as_json(value):
    """A request value as TF Serving's REST API takes it: numbers as float32 prints them (6 digits), bytes as
    {"b64": ...}."""
    if isinstance(value, bytes):
        return {"b64": base64.b64encode(value).decode()}
    return [float(f"{v:.6g}") for v in value] if isinstance(value, np.ndarray) else str(value)
