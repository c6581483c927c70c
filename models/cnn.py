"""A small convolutional network for small images (digits are 8x8x1)."""
import tf_keras as keras

from models.config import DataSpec, ModelConfig
from models.layers import normalized_input, output_head


def build(cfg: ModelConfig, spec: DataSpec) -> keras.Model:
    inputs, x = normalized_input(spec)
    for block in range(cfg.depth):
        x = keras.layers.Conv2D(cfg.width * 2**block, 3, padding="same", activation="relu")(x)
        if min(x.shape[1], x.shape[2]) >= 4:
            x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dropout(cfg.dropout)(x)
    x = keras.layers.Dense(cfg.width * 2, activation="relu")(x)
    return keras.Model(inputs, output_head(spec, x), name="cnn")
