"""Export the selected model as a SavedModel with TF Serving's signatures (pipeline.saved_model).

The model is the one the compress stage selected (the trained one when compression is off). Its
.tflite files go beside it in assets.extra/ for edge use; `sample_request.json` is a predict
body for `curl -d @...`. With `export.explain`, the `explain` signature is added (pipeline.explain), or left out
with the reason when the model has an input it cannot attribute to; assets.extra/explain.json says which, and
how it explains (baseline, steps); `explanations.json` holds its answers for a few test rows (the report shows them)
and how well they add up on the test rows it explained (completeness).
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
from pipeline.artifacts import (COMPRESSED_MODEL, COMPRESSED_TFLITE, EXPLANATIONS, SAMPLE_REQUEST,
                                SAVED_MODEL_EVALUATION, SCHEMA, SHIPPED_EXPLAIN, SHIPPED_SAMPLE_REQUEST, SHIPPED_SCHEMA,
                                SHIPPED_TRAIN_STATISTICS, SIGNATURES, TRAIN_STATISTICS, Inputs, categorical_names,
                                raw_inputs, read_schema, read_split, write_json)
from pipeline.metrics import classification_metrics, format_metrics, regression_metrics
from pipeline.views import ExportView


SPEC = specs.EXPORT
EXPLAINED_ROWS = 64  # test rows explained at export, for the completeness figures
SHOWN_ROWS = 4  # of which the report shows these


def external_inputs(cfg: ExportView) -> list[Path]:
    """A user builder's file: its classes are rebuilt from it when the model loads."""
    return model_code_files(cfg.model.name)


def run(cfg: ExportView, inputs: Inputs, out: Path) -> dict:
    from pipeline import saved_model
    from pipeline.saved_model import INPUT
    from pipeline.compression import loading

    schema = read_schema(inputs["schema"])
    import_model_code(cfg.model.name)
    model = loading.load(COMPRESSED_MODEL.in_artefact(inputs["compressed"]))  # served: not compiled, no training state
    path = out / "saved_model"
    test = raw_inputs(inputs["dataset"], schema)  # every test row as a client sends it (an image file, a text...)
    sample = {name: value[:1] for name, value in test.items()}  # the warmup request, and the sample for curl
    plan, explain_said = _explain_plan(cfg.export, model, schema, inputs["dataset"])
    saved_model.save(model, schema, path, cfg.export.warmup, cfg.export.reject_nonfinite, sample, plan)
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
    if explain_said:
        (path / SHIPPED_EXPLAIN).write_text(json.dumps(explain_said, indent=2))
    y = read_split(inputs["dataset"], "test").y
    held_out = _held_out(path, schema, test, y)
    write_json(SAVED_MODEL_EVALUATION, out, held_out)
    print(f"export: the SavedModel on the {len(y)} test rows, as a client sends them: {format_metrics(held_out)}")
    explanations = explain_said  # {} with export.explain off, {"skipped": why} for a model it cannot explain
    if plan is not None:
        explanations = _explanations(path, schema, test, read_split(inputs["dataset"], "test"), explain_said)
    if explanations:
        write_json(EXPLANATIONS, out, explanations)
    explained = {"explain_completeness_error": explanations["completeness"]["median"]} if plan is not None else {}
    size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    label = schema["classes"][y[0]] if schema["task"] == "classification" else f"{y[0]:.6g}"
    return {"saved_model_bytes": size, "signatures": described, "sample_label": label, **explained,
            **{k if k.startswith("test_") else f"test_{k}": v for k, v in held_out.items()}}


def _explain_plan(export, model, schema: dict, dataset: Path) -> tuple:
    """(the explain signature's plan, what explain.json says of it): (None, {}) with export.explain off, (None,
    {"skipped": why}) for a model with an input it cannot attribute to, which is exported without it."""
    from pipeline import explain

    if not export.explain:
        return None, {}
    try:
        plan = explain.plan(model, schema, read_split(dataset, "train").x, export.explain_steps)
    except explain.NotExplainable as e:
        print(f"export: no explain signature: {e}")
        return None, {"skipped": str(e)}
    return plan, {"signature": "explain", **plan.description()}


def _explanations(path: Path, schema: dict, rows: dict[str, np.ndarray], test, said: dict) -> dict:
    """The SavedModel's explain signature on the first test rows, as a client sends them: how closely each row's
    shares add up to its score's move from the baseline (completeness), and the first rows as the report shows them."""
    import tensorflow as tf

    from pipeline.explain import completeness, reads_images

    explain = tf.saved_model.load(str(path)).signatures["explain"]
    answer = {name: value.numpy() for name, value in
              explain(**{name: tf.constant(value[:EXPLAINED_ROWS]) for name, value in rows.items()}).items()}
    classification = schema["task"] == "classification"
    least = 0.05 if classification else 0.05 * schema["label_stats"]["train_std"]  # a move worth sharing out
    figures = completeness(answer, least)
    print(f"export: explain on {len(answer['score'])} test rows: completeness error median {figures['median']}, "
          f"95th percentile {figures['p95']} (relative to each score's move from the baseline, on the "
          f"{figures['rows']} rows where it is at least {least:.3g})")
    shown_as = "text" if schema.get("kind") == "text" else "image" if reads_images(schema) else "table"

    def shown(i: int) -> dict:
        return {"label": schema["classes"][test.y[i]] if classification else float(test.y[i]),
                "predicted": schema["classes"][answer["class_id"][i]] if classification else float(answer["score"][i]),
                "score": float(answer["score"][i]), "baseline_score": float(answer["baseline_score"][i]),
                **_shares(shown_as, schema, rows, test, answer, i)}

    return {"kind": shown_as, "input_shape": schema["input_shape"], "described": said, "completeness": figures,
            "rows": [shown(i) for i in range(min(SHOWN_ROWS, len(answer["score"])))]}


def _shares(shown_as: str, schema: dict, rows: dict[str, np.ndarray], test, answer: dict[str, np.ndarray],
            i: int) -> dict:
    """Row i's shares as the report shows them: its tokens, its pixels, or its features (numbers, then categorical
    columns), largest share first."""
    if shown_as == "text":
        return {"tokens": [[t.decode(), float(s)] for t, s in zip(answer["tokens"][i], answer["token_attributions"][i])
                           if t]}
    if shown_as == "image":
        return {"pixels": test.x[i].reshape(schema["input_shape"]).tolist(),
                "attributions": answer["attributions"][i].reshape(schema["input_shape"]).tolist()}
    names = [f["name"] for f in schema["features"]]
    features = [[name, float(value), float(share)] for name, value, share in
                zip(names, rows["x"][i], answer["attributions"][i])]
    features += [[name, str(rows[name][i]), float(answer[f"attributions_{name}"][i])]
                 for name in categorical_names(schema)]
    return {"features": sorted(features, key=lambda f: -abs(f[2]))}


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
