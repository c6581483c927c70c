"""Model builders, listed once in MODELS. Each is a function of (ModelConfig, DataSpec).

Importing this package is cheap (no TensorFlow): a builder's module is imported when it builds.
"""
from __future__ import annotations

import importlib
import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")  # see pipeline/__init__.py

from models.config import DataSpec, ModelConfig, input_shape_problem  # noqa: E402

MODELS = {
    "cnn": "models.cnn:build",  # small images, e.g. 8x8 digits: data.input_shape [H, W, C]
    "mlp": "models.mlp:build",  # tabular features
    "rnn": "models.rnn:build",  # sequences: data.input_shape [steps, features]; model.cell lstm | gru
}


def build_model(cfg: ModelConfig, spec: DataSpec):
    """The configured model, uncompiled, taking flat float32 features [batch, n_features]."""
    problem = input_shape_problem(cfg.name, spec.input_shape)
    if problem:
        raise ValueError(problem)
    module, _, function = MODELS[cfg.name].partition(":")
    return getattr(importlib.import_module(module), function)(cfg, spec)


__all__ = ["MODELS", "DataSpec", "ModelConfig", "build_model"]
