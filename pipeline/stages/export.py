"""Export the selected model as a SavedModel with TF Serving's signatures (pipeline.saved_model).

The model is the one the compress stage selected (the trained one when compression is off). Its
.tflite files go beside it in assets.extra/ for edge use; `sample_request.json` is a predict
body for `curl -d @...`.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import repository
from models import import_model_code, model_code_files
from pipeline.artifacts import SAMPLE_REQUEST, SIGNATURES, read_schema


@dataclass(frozen=True)
class Config:
    warmup: bool = True  # write assets.extra/tf_serving_warmup_requests (TF Serving replays it on load)
    reject_nonfinite: bool = True  # a request with NaN or Infinity in `x` fails (400) instead of being answered


CONFIG = ("export", "model.name")
INPUTS = ("compressed", "schema")
OUTPUTS = ("saved_model",)


def external_inputs(cfg) -> list[Path]:
    """A user builder's file: its classes are rebuilt from it when the model loads."""
    return model_code_files(cfg.model.name)


def run(cfg, inputs: dict[str, Path], out: Path) -> dict:
    import tf_keras as keras

    from pipeline import saved_model
    from pipeline.compression.variants import tfmot_scope

    schema = read_schema(inputs["schema"])
    import_model_code(cfg.model.name)
    with tfmot_scope():  # a QAT variant keeps its quantization wrappers
        model = keras.models.load_model(inputs["compressed"] / "model.keras")
    path = out / "saved_model"
    saved_model.save(model, schema, path, cfg.export.warmup, cfg.export.reject_nonfinite)
    for tflite in sorted((inputs["compressed"] / "tflite").glob("*.tflite")):  # for edge use, beside the model
        (path / "assets.extra").mkdir(exist_ok=True)
        shutil.copy(tflite, path / "assets.extra" / tflite.name)
    described = repository.signatures(path)
    SIGNATURES.in_output(out).write_text(json.dumps(described, indent=2))
    means = [round(f["mean"], 3) for f in schema["features"]]
    SAMPLE_REQUEST.in_output(out).write_text(json.dumps({"instances": [means]}))  # for curl -d @...
    size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return {"saved_model_bytes": size, "signatures": described}
