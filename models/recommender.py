"""A recommender over interactions: each categorical column (say user and item) embedded `model.width` wide,
the first two towers' dot product (their affinity), and the numeric features, into an MLP head.

Its embedding tables (one row per user or item seen in the train split) are the variables too large for one
machine in real use: train.strategy=parameter_server with train.partition shards them across the parameter
servers (pipeline/configs/recommender.yaml).
"""
import tf_keras as keras

from models.config import DataSpec, ModelConfig
from models.layers import embedded_categories, normalized_numeric, output_head


def build(cfg: ModelConfig, spec: DataSpec) -> keras.Model:
    if not spec.categories:
        raise ValueError("model 'recommender' embeds categorical columns (data.categorical, e.g. [user, item]); "
                         "the data has none.")
    inputs = keras.Input(shape=(spec.n_features,), name="x")
    towers = embedded_categories(spec, inputs, cfg.width)
    parts = list(towers)
    if len(towers) >= 2:
        parts.append(keras.layers.Dot(axes=1, name="affinity")(towers[:2]))
    if spec.n_features > len(spec.categories):
        parts.append(normalized_numeric(spec, inputs))
    x = keras.layers.Concatenate()(parts) if len(parts) > 1 else parts[0]
    for _ in range(cfg.depth):
        x = keras.layers.Dense(cfg.width, activation="relu")(x)
        x = keras.layers.Dropout(cfg.dropout)(x)
    return keras.Model(inputs, output_head(spec, x), name="recommender")
