"""Load a Keras model the pipeline saved, whatever variant it is, importing TFMOT only for one that needs it.

A quantization-aware variant keeps its TFMOT wrappers, which load only inside TFMOT's scope; importing TFMOT costs
a process 1.5 s of CPU (scikit-learn comes with it), which a run without compression (evaluate, export) or a
pipeline worker should not pay for a plain model. A .keras file says in its config.json whether it holds a TFMOT
object (its module path); any other format (a published SavedModel, for a warm start) is loaded inside the scope.
"""
from __future__ import annotations

import contextlib
import zipfile
from pathlib import Path

import tf_keras as keras

TFMOT_PACKAGE = "tensorflow_model_optimization"


def tfmot_scope() -> contextlib.AbstractContextManager:
    """Custom objects needed to load a model saved with TFMOT wrappers (QAT keeps them)."""
    import tensorflow_model_optimization as tfmot

    return tfmot.quantization.keras.quantize_scope()


def needs_tfmot(path: Path) -> bool:
    """Whether loading `path` may need TFMOT's custom objects: a .keras file whose config names a TFMOT module, or
    a model in another format (its config is not read here)."""
    if Path(path).suffix != ".keras" or not zipfile.is_zipfile(path):
        return True
    with zipfile.ZipFile(path) as archive:
        return TFMOT_PACKAGE.encode() in archive.read("config.json")


def load(path: Path, compile: bool = False) -> keras.Model:
    """A model the pipeline saved (model.keras, or a published version's SavedModel), whatever variant it is."""
    with tfmot_scope() if needs_tfmot(path) else contextlib.nullcontext():
        return keras.models.load_model(path, compile=compile)
