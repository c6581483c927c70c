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
from pipeline.artifacts import (COMPRESSED_MODEL, COMPRESSED_TFLITE, SAMPLE_REQUEST, SHIPPED_SAMPLE_REQUEST, SIGNATURES,
                                Inputs, categorical_names, raw_inputs, read_schema, write_json)
from pipeline.views import ExportView


SPEC = specs.EXPORT


def external_inputs(cfg: ExportView) -> list[Path]:
    """A user builder's file: its classes are rebuilt from it when the model loads."""
    return model_code_files(cfg.model.name)


def run(cfg: ExportView, inputs: Inputs, out: Path) -> dict:
    import tf_keras as keras

    from pipeline import saved_model
    from pipeline.saved_model import INPUT
    from pipeline.compression.variants import tfmot_scope

    schema = read_schema(inputs["schema"])
    import_model_code(cfg.model.name)
    with tfmot_scope():  # a QAT variant keeps its quantization wrappers
        model = keras.models.load_model(COMPRESSED_MODEL.in_artefact(inputs["compressed"]))
    path = out / "saved_model"
    sample = raw_inputs(inputs["dataset"], schema, 1)  # a test row as a client sends it (an image file, a text...)
    if schema.get("kind", "numeric") == "numeric":  # numbers: the average row, easier to read and edit
        numeric = schema["features"][:len(schema["features"]) - len(categorical_names(schema))]
        sample[INPUT] = np.array([[f["mean"] for f in numeric]], np.float32)
    saved_model.save(model, schema, path, cfg.export.warmup, cfg.export.reject_nonfinite, sample)
    for tflite in sorted(COMPRESSED_TFLITE.in_artefact(inputs["compressed"]).glob("*.tflite")):  # for edge use, beside the model
        (path / "assets.extra").mkdir(exist_ok=True)
        shutil.copy(tflite, path / "assets.extra" / tflite.name)
    described = repository.signatures(path)
    write_json(SIGNATURES, out, described)
    row = {name: _as_json(value[0]) for name, value in sample.items()}
    request = json.dumps({"instances": [row if len(row) > 1 else row[INPUT]]})  # for curl -d @..., and push's smoke test
    SAMPLE_REQUEST.in_output(out).write_text(request)
    (path / "assets.extra").mkdir(exist_ok=True)
    (path / SHIPPED_SAMPLE_REQUEST).write_text(request)
    size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return {"saved_model_bytes": size, "signatures": described}


def _as_json(value):
    """A request value as TF Serving's REST API takes it: numbers rounded for people, bytes as {"b64": ...}."""
    if isinstance(value, bytes):
        return {"b64": base64.b64encode(value).decode()}
    return [round(float(v), 3) for v in value] if isinstance(value, np.ndarray) else str(value)
