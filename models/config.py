"""What every builder is given: its config section and the shape of the data (numpy only, no TensorFlow)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np


@dataclass(frozen=True)
class ModelConfig:
    name: str = "cnn"  # cnn | mlp | rnn | recommender (models.MODELS), or a builder of yours: package.module:function or
    # path/to/file.py:function, called as build(cfg: ModelConfig, spec: DataSpec) -> tf_keras.Model
    width: int = 32  # conv filters (cnn) or units (mlp, rnn) of the first layer
    depth: int = 2  # conv blocks (cnn), hidden layers (mlp), recurrent layers (rnn)
    dropout: float = 0.2  # fraction of units dropped while training
    cell: Literal["lstm", "gru"] = "lstm"  # rnn only

    def problems(self) -> list[str]:
        found = []
        if self.width < 1:
            found.append(f"width: expected a positive integer, received {self.width}.")
        if self.depth < 1:
            found.append(f"depth: expected a positive integer, received {self.depth}.")
        if not 0 <= self.dropout < 1:
            found.append(f"dropout: expected a number in [0, 1), received {self.dropout}.")
        return found


INPUT_RANKS = {"cnn": (3, "images: data.input_shape [height, width, channels]"),
               "rnn": (2, "sequences: data.input_shape [steps, features]")}


def input_shape_problem(name: str, input_shape: tuple[int, ...], kind: str = "numeric") -> str | None:
    """Why builder `name` cannot take rows reshaped to `input_shape` (None when it can)."""
    if kind == "text":
        return None if name not in ("cnn", "mlp") else \
            f"model '{name}' takes numbers; text (data.text_column) needs model.name=rnn or a builder of yours."
    rank, needs = INPUT_RANKS.get(name, (None, ""))
    if rank is None or len(input_shape) == rank:
        return None
    fix = " Use model.name=mlp for flat features." if len(input_shape) == 1 else ""
    return f"model '{name}' needs {needs}, received {list(input_shape)}.{fix}"


@dataclass(frozen=True)
class DataSpec:
    """The shape of the data a model is built for, read from the validate stage's schema."""

    n_features: int
    input_shape: tuple[int, ...]  # each flat row is reshaped to this inside the model
    task: Literal["classification", "regression"]
    n_outputs: int  # classes, or 1 for regression
    mean: np.ndarray  # per-feature statistics of the train split, for the Normalization layer
    variance: np.ndarray
    target_mean: float = 0.0  # regression: the train split's target statistics, for the output head
    target_std: float = 1.0
    kind: Literal["numeric", "image", "text"] = "numeric"  # image: pixels of resized images; text: one string
    vocabulary: tuple[str, ...] = ()  # text: the tokens adapted on the train split, for TextVectorization
    sequence_length: int = 0  # text: tokens per example
    categories: tuple[int, ...] = ()  # vocabulary sizes of the last features, categorical: 1 + their position in
    # the vocabulary, 0 for a value not in it

    def __post_init__(self):
        if math.prod(self.input_shape) != self.n_features:
            raise ValueError(
                f"input_shape {list(self.input_shape)} holds {math.prod(self.input_shape)} values, "
                f"but each row has {self.n_features} features."
            )
