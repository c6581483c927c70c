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


def raw_inputs(dataset: Path, schema: dict, n: int) -> dict[str, np.ndarray]:
    """The first `n` test rows as a client sends them to the served model, by input name: `x` holds rows of
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
    return json.loads((schema / "schema.json").read_text())


def write_schema(schema: Path, content: dict) -> None:
    schema.mkdir(parents=True, exist_ok=True)
    (schema / "schema.json").write_text(json.dumps(content, indent=2))


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
        mean=np.array([f["mean"] for f in features], dtype=np.float32),
        variance=np.array([f["std"] ** 2 for f in features], dtype=np.float32),
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
    """A file a stage writes in its output dir that others read from a run directory."""

    stage: str
    path: str

    def of_run(self, run_dir: Path) -> Path:
        return run_dir / self.stage / self.path

    def in_output(self, out: Path) -> Path:
        """Where the writing stage puts it, in its own output dir."""
        return out / self.path


SCHEMA = RunFile("validate", "schema/schema.json")
REJECTS = RunFile("validate", "rejects.csv")
TRIALS = RunFile("tune", "trials.json")
EVALUATION = RunFile("evaluate", "evaluation/metrics.json")
DATASET = RunFile("validate", "dataset")
HISTORY = RunFile("train", "history.json")
CONFUSION = RunFile("evaluate", "evaluation/confusion_matrix.json")
COMPRESSION_REPORT = RunFile("compress", "report.json")
COMPRESSION_PLOT = RunFile("compress", "compression.png")
SIGNATURES = RunFile("export", "signatures.json")
SAMPLE_REQUEST = RunFile("export", "sample_request.json")
SHIPPED_SAMPLE_REQUEST = "assets.extra/sample_request.json"  # the same, inside the SavedModel: push's smoke test
INFRA_VALIDATION = RunFile("infra_validate", "infra_validation/report.json")
PUSHED = RunFile("push", "pushed.json")
SELECTION = "selection.json"  # in the compressed artefact: which variant it holds


def run_dir_of(artefact: Path) -> Path:
    """The run directory an input artefact belongs to: the runner hands inputs to stages as
    <run dir>/<producing stage>/<artefact>, a link into the cache."""
    return artefact.parent.parent
