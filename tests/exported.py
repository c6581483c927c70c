"""A small classifier exported as the export stage exports one (pipeline.saved_model), with the explain signature or
without, in a second or two: for the tests of what takes SavedModels in (push, the TF Serving bundle)."""
from pathlib import Path

import numpy as np


def export(path: Path, n_features: int, seed: int = 0, explain: bool = False) -> Path:
    """An MLP of `n_features` inputs and classes "a" and "b", seeded weights, written as a SavedModel at `path`."""
    import tf_keras as keras

    from models import ModelConfig, build_model
    from pipeline import explain as explained, saved_model
    from pipeline.artifacts import data_spec

    keras.utils.set_random_seed(seed)
    schema = {"task": "classification", "input_shape": [n_features], "classes": ["a", "b"],
              "features": [{"mean": 0.0, "std": 1.0} for _ in range(n_features)]}
    model = build_model(ModelConfig(name="mlp", width=4, depth=1), data_spec(schema))
    plan = explained.plan(model, schema, np.zeros((4, n_features), np.float32), 8) if explain else None
    saved_model.save(model, schema, path, warmup=True, reject_nonfinite=True,
                     sample={"x": np.zeros((1, n_features), np.float32)}, explain=plan)
    return path
