"""Model builders, listed once in MODELS. Each is a function of (ModelConfig, DataSpec)."""
import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")  # see pipeline/__init__.py

from models.common import DataSpec, ModelConfig  # noqa: E402
from models import cnn, mlp, rnn  # noqa: E402

MODELS = {
    "cnn": cnn.build,  # small images, e.g. 8x8 digits: data.input_shape [H, W, C]
    "mlp": mlp.build,  # tabular features
    "rnn": rnn.build,  # sequences: data.input_shape [steps, features]; model.cell lstm | gru
}


def build_model(cfg: ModelConfig, spec: DataSpec):
    """The configured model, uncompiled, taking flat float32 features [batch, n_features]."""
    return MODELS[cfg.name](cfg, spec)


__all__ = ["MODELS", "DataSpec", "ModelConfig", "build_model"]
