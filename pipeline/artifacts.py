"""What stages hand each other, and where it lies: one place for artefact names and paths.

A stage's outputs are directories in its output dir (`<out>/<artefact>/`); a stage receives its
inputs as paths to them. The schema and the dataset splits are read through the functions here,
and the files read outside the stage that wrote them (by the report, the API, the tests) are
named here as `RunFile`s, so no module hard-codes another stage's layout.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from models.config import DataSpec

SPLITS = ("train", "val", "test")


class Split(NamedTuple):
    x: np.ndarray  # float32 [rows, features], or str [rows] for text
    y: np.ndarray  # int64 class indices, or float32 values for regression


def read_split(dataset: Path, split: str) -> Split:
    with np.load(dataset / f"{split}.npz") as arrays:
        return Split(arrays["x"], arrays["y"])


def write_split(dataset: Path, split: str, x: np.ndarray, y: np.ndarray, **extra: np.ndarray) -> None:
    """`extra`: arrays beside x and y, e.g. the categorical columns' strings (`categorical`)."""
    np.savez(dataset / f"{split}.npz", x=x, y=y, **extra)


ENCODED_TEST = "test_encoded.npz"  # in the dataset, for image folders: the test rows' files as clients send them


def raw_inputs(dataset: Path, schema: dict, n: int | None = None) -> dict[str, np.ndarray]:
    """The first `n` test rows (all by default) as a client sends them to the served model, by input name: `x` holds rows of
    numbers, texts, or encoded image files (bytes, whose pixels the SavedModel computes itself), and each
    categorical column its strings."""
    if schema.get("kind") == "image":
        from pipeline import images

        with np.load(dataset / ENCODED_TEST) as arrays:
            return {"x": np.array(images.unpack(arrays)[:n], dtype=object)}
    with np.load(dataset / "test.npz") as arrays:
        names = categorical_names(schema)
        x = arrays["x"][:n, :arrays["x"].shape[1] - len(names)] if names else arrays["x"][:n]
        return {"x": x, **{name: arrays["categorical"][:n, j] for j, name in enumerate(names)}}


def categorical_features(schema: dict) -> list[dict]:
    """The categorical columns' entries (name, vocabulary, ...): the last features, each a serving input of its own."""
    return [f for f in schema["features"] if f.get("dtype") == "category"]


def categorical_names(schema: dict) -> list[str]:
    return [f["name"] for f in categorical_features(schema)]


def read_schema(schema: Path) -> dict:
    return read_json(SCHEMA, schema)


def write_examples(out: Path, arrays: dict[str, np.ndarray], meta: dict, encoded: dict[str, np.ndarray] | None) -> None:
    """Ingest's artefact: every row read (`arrays`: x, label, row, problem, split[, categorical]), what they are
    (`meta`: source, task, kind, feature names, ...), and for images the files as clients send them (`encoded`)."""
    EXAMPLES.in_output(out).parent.mkdir(parents=True)
    np.savez(EXAMPLES.in_output(out), **arrays)
    write_json(EXAMPLES_META, out, meta)
    if encoded is not None:
        np.savez(ENCODED.in_output(out), **encoded)


def read_examples(examples: Path) -> tuple[dict[str, np.ndarray], dict]:
    """(arrays, meta) as ingest wrote them."""
    with np.load(EXAMPLES.in_artefact(examples)) as arrays:
        return dict(arrays), read_json(EXAMPLES_META, examples)


def read_encoded(examples: Path) -> dict[str, np.ndarray] | None:
    """The image files as clients send them (pipeline.images packs them), None for data that is not images."""
    path = ENCODED.in_artefact(examples)
    if not path.is_file():
        return None
    with np.load(path) as arrays:
        return dict(arrays)


def data_spec(schema: dict) -> DataSpec:
    """What a model builder needs to know about the data, from the validate stage's schema."""
    features = schema["features"]
    text = schema.get("text", {})
    return DataSpec(
        categories=tuple(len(f["vocabulary"]) for f in categorical_features(schema)),
        n_features=len(features),
        input_shape=tuple(schema["input_shape"]),
        task=schema["task"],
        n_outputs=len(schema.get("classes", [None])),
        mean=np.array([f.get("mean", 0.0) for f in features], dtype=np.float32),  # a category's index: as it is
        variance=np.array([f.get("std", 1.0) ** 2 for f in features], dtype=np.float32),
        target_mean=schema.get("label_stats", {}).get("train_mean", 0.0),
        target_std=schema.get("label_stats", {}).get("train_std", 1.0),
        kind=schema.get("kind", "numeric"),
        vocabulary=tuple(text.get("vocabulary", ())),
        sequence_length=text.get("sequence_length", 0),
    )


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def dir_fingerprint(path: Path) -> str:
    """SHA-256 over every file's relative path and content: equal for equal artefacts, wherever they lie."""
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(f.relative_to(path).as_posix().encode() + b"\0" + file_digest(f).encode())
    return h.hexdigest()



@dataclass(frozen=True)
class RunFile:
    """A file (or directory) a stage writes in its output dir that another stage, the report or the API reads.
    An artefact's files start with the artefact's name: `EVALUATION` is `evaluation/metrics.json`."""

    stage: str
    path: str

    def of_run(self, run_dir: Path) -> Path:
        return run_dir / self.stage / self.path

    def in_output(self, out: Path) -> Path:
        """Where the writing stage puts it, in its own output dir."""
        return out / self.path

    def in_artefact(self, artefact: Path) -> Path:
        """Where it lies in the artefact directory a reading stage was handed."""
        return artefact.joinpath(*Path(self.path).parts[1:])


EXAMPLES = RunFile("ingest", "examples/examples.npz")
EXAMPLES_META = RunFile("ingest", "examples/meta.json")
ENCODED = RunFile("ingest", "examples/encoded.npz")  # image files as clients send them
SCHEMA = RunFile("validate", "schema/schema.json")
TRAIN_STATISTICS = RunFile("validate", "schema/train_statistics.pb")  # tensorflow_metadata's, for drift (monitor)
REJECTS = RunFile("validate", "rejects.csv")
DATASET = RunFile("validate", "dataset")
BEST_HYPERPARAMETERS = RunFile("tune", "hyperparameters/best.json")
TRIALS = RunFile("tune", "trials.json")
TRAINED_MODEL = RunFile("train", "model/model.keras")
HISTORY = RunFile("train", "history.json")
EVALUATION = RunFile("evaluate", "evaluation/metrics.json")
CONFUSION = RunFile("evaluate", "evaluation/confusion_matrix.json")
COMPRESSED_MODEL = RunFile("compress", "compressed/model.keras")
COMPRESSED_TFLITE = RunFile("compress", "compressed/tflite")  # the .tflite files shipped with the selected variant
SELECTION = RunFile("compress", "compressed/selection.json")  # which variant the compressed model is
COMPRESSION_REPORT = RunFile("compress", "report.json")
COMPRESSION_PLOT = RunFile("compress", "compression.png")
SIGNATURES = RunFile("export", "signatures.json")
SAVED_MODEL_EVALUATION = RunFile("export", "saved_model_evaluation/metrics.json")  # the SavedModel's own test figures
SAMPLE_REQUEST = RunFile("export", "sample_request.json")
SHIPPED_SAMPLE_REQUEST = "assets.extra/sample_request.json"  # the same, inside the SavedModel: push's smoke test
SHIPPED_SCHEMA = "assets.extra/schema.json"  # validate's schema, inside the SavedModel: what the server checks inputs by
SHIPPED_TRAIN_STATISTICS = "assets.extra/train_statistics.pb"  # the same for the statistics: what drift compares with
SHIPPED_EXPLAIN = "assets.extra/explain.json"  # how the explain signature explains (baseline, steps), or why it is not there
EXPLANATIONS = RunFile("export", "explanations.json")  # the explain signature's answers for a few test rows
INFRA_VALIDATION = RunFile("infra_validate", "infra_validation/report.json")
PUSHED = RunFile("push", "pushed.json")


def write_json(file: RunFile, out: Path, value) -> None:
    """Write a stage's JSON output file `file` in its output dir (its artefact directory made if need be)."""
    path = file.in_output(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=2))


def read_json(file: RunFile, artefact: Path):
    """Read JSON file `file` from the artefact directory a stage was handed."""
    return json.loads(file.in_artefact(artefact).read_text())


def read_data_origin(saved_model: Path) -> dict:
    """Where the exported model's training data came from, as its shipped schema says: `{"request_logs": {rows,
    versions, first, last}}` for rows exported from a server's request logs, else {}."""
    shipped = saved_model / SHIPPED_SCHEMA
    return json.loads(shipped.read_text()).get("origin", {}) if shipped.is_file() else {}


def read_best_hyperparameters(hyperparameters: Path) -> dict:
    """The tune stage's best values by name (learning_rate, width, ...): empty when nothing was searched."""
    return read_json(BEST_HYPERPARAMETERS, hyperparameters)


def read_evaluation(evaluation: Path) -> dict:
    """The trained model's held-out test metrics (accuracy, loss, ... or mae, ...)."""
    return read_json(EVALUATION, evaluation)


def read_saved_model_evaluation(saved_model_evaluation: Path) -> dict:
    """The exported SavedModel's held-out test metrics: the figures of exactly the model a version holds."""
    return read_json(SAVED_MODEL_EVALUATION, saved_model_evaluation)


def read_selection(compressed: Path) -> str:
    """The variant the compressed artefact holds: "baseline" (the trained model) or a variant's name."""
    return read_json(SELECTION, compressed)["selected"]


def read_infra_validation(infra_validation: Path) -> dict:
    """What infra_validate measured serving the candidate, or {"skipped": true}."""
    return read_json(INFRA_VALIDATION, infra_validation)


@dataclass(frozen=True)
class RunInfo:
    """What a stage may know of the run it is part of (lineage), without knowing where the runner keeps it."""

    run_id: str
    config: dict  # the run's whole resolved config


@dataclass(frozen=True)
class Inputs:
    """What the runner hands a stage: its input artefacts by name (`inputs["model"]`, a directory) and its run."""

    artefacts: dict[str, Path]
    run: RunInfo

    def __getitem__(self, name: str) -> Path:
        return self.artefacts[name]
