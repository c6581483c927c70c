"""Model builders: the built-in ones, listed once in MODELS, or a user's, named as
`package.module:function` or `path/to/file.py:function` (models.user). Each is a function of
(ModelConfig, DataSpec) returning a tf_keras model.

Importing this package is cheap (no TensorFlow): a builder's module is imported when it builds.
"""
from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")  # see pipeline/__init__.py

from models import user  # noqa: E402
from models.config import DataSpec, ModelConfig, input_shape_problem  # noqa: E402

MODELS = {
    "cnn": "models.cnn:build",  # small images, e.g. 8x8 digits: data.input_shape [H, W, C]
    "mlp": "models.mlp:build",  # tabular features
    "rnn": "models.rnn:build",  # sequences: data.input_shape [steps, features]; model.cell lstm | gru
    "recommender": "models.recommender:build",  # interactions: data.categorical columns embedded, e.g. [user, item]
}
BUILDER_SIGNATURE = "build(cfg: models.ModelConfig, spec: models.DataSpec) -> tf_keras.Model"


def build_model(cfg: ModelConfig, spec: DataSpec):
    """The configured model, uncompiled, taking the data as the schema describes it (flat float32 rows)."""
    problem = input_shape_problem(cfg.name, spec.input_shape, spec.kind)
    if problem:
        raise ValueError(problem)
    reference = MODELS.get(cfg.name, cfg.name)
    model = _checked(user.call(reference, user.load(reference), BUILDER_SIGNATURE, cfg, spec), reference)
    if not model.built:  # a subclassed model: its weights exist once it has seen a batch of the schema's shape
        import numpy as np

        sample = np.array([""]) if spec.kind == "text" else np.zeros((1, spec.n_features), np.float32)
        user.call(reference, model, f"model(x) with x {sample.dtype} {[None, *sample.shape[1:]]}", sample)
    return model


def import_model_code(name: str) -> None:
    """Import a user builder's module, so the Keras classes it registers load from model.keras."""
    if name not in MODELS:
        user.load(name)


def model_code_files(name: str) -> list[Path]:
    """The user builder's source file (a stage's cache key includes it), none for a built-in one."""
    found = None if name in MODELS else user.source_file(name)
    return [found] if found else []


def _checked(model, reference: str):
    import tf_keras as keras

    if isinstance(model, keras.Model):
        return _reloadable(model, reference)
    kind = f"{type(model).__module__}.{type(model).__qualname__}"
    hint = (" It is a Keras 3 model: this project uses Keras 2 (TFMOT needs it); build it with "
            "`import tf_keras as keras`." if type(model).__module__.startswith("keras") else "")
    raise user.UserCodeError(f"{reference} returned a {kind}, not a tf_keras.Model.{hint} "
                             f"A builder is {BUILDER_SIGNATURE}: functional, Sequential or subclassed.")


def _reloadable(model, reference: str):
    """A subclassed model is rebuilt from its registered class and get_config() by every later stage
    (model.keras): found out now, not after training."""
    import tf_keras as keras

    if model._is_graph_network or isinstance(model, keras.Sequential):
        return model
    cls = type(model)
    registered = keras.saving.get_registered_object(keras.saving.get_registered_name(cls)) is cls
    # tf_keras's own get_config falls back to an empty config (a warning) when __init__'s arguments are not plain
    configurable = cls.get_config is not keras.Model.get_config or getattr(model, "_auto_get_config", False)
    if not (registered and configurable):
        raise user.UserCodeError(
            f"{reference} returned subclassed model {cls.__qualname__}, which later stages cannot reload from "
            f"model.keras: decorate the class with @tf_keras.saving.register_keras_serializable(package=...)"
            f"{'' if registered else ' (missing)'} and give it get_config() returning its __init__ arguments"
            f"{'' if configurable else ' (missing)'}. See examples/custom_model.py.")
    return model


__all__ = ["BUILDER_SIGNATURE", "MODELS", "DataSpec", "ModelConfig", "build_model", "import_model_code",
           "model_code_files"]
