"""A recurrent network (LSTM or GRU) for sequences of feature vectors, or for text (one string per example)."""
import tf_keras as keras

from models.config import DataSpec, ModelConfig
from models.layers import normalized_input, output_head, text_input

CELLS = {"lstm": keras.layers.LSTM, "gru": keras.layers.GRU}


def build(cfg: ModelConfig, spec: DataSpec) -> keras.Model:
    inputs, x = text_input(spec, cfg.width) if spec.kind == "text" else normalized_input(spec)
    cell = CELLS[cfg.cell]
    for layer in range(cfg.depth):
        # unroll: the steps are fixed by input_shape; a symbolic loop (TensorList ops with a dynamic
        # batch) does not convert to TFLite, an unrolled one converts to builtin ops at any batch.
        x = cell(cfg.width, return_sequences=layer < cfg.depth - 1, unroll=True)(x)
    x = keras.layers.Dropout(cfg.dropout)(x)
    return keras.Model(inputs, output_head(spec, x), name=f"rnn_{cfg.cell}")
