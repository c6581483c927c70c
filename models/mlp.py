"""A multi-layer perceptron for tabular features."""
import tf_keras as keras

from models.config import DataSpec, ModelConfig
from models.layers import normalized_input, output_head


def build(cfg: ModelConfig, spec: DataSpec) -> keras.Model:
    inputs, x = normalized_input(spec)
    x = keras.layers.Flatten()(x)
    for _ in range(cfg.depth):
        x = keras.layers.Dense(cfg.width, activation="relu")(x)
        x = keras.layers.Dropout(cfg.dropout)(x)
    return keras.Model(inputs, output_head(spec, x), name="mlp")
