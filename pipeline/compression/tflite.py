"""Post-training quantization of a Keras model to TFLite, and running .tflite files with ai-edge-litert."""
from __future__ import annotations

import warnings
from collections.abc import Iterator

import numpy as np
import tensorflow as tf
import tf_keras as keras
from ai_edge_litert.interpreter import Interpreter

from pipeline.compression import PTQ


def to_tflite(model: keras.Model, kind: str, representative: np.ndarray | None = None) -> bytes:
    """`float` (no quantization), `dynamic` (int8 weights), `float16` (fp16 weights) or `int8`
    (weights and activations, calibrated on `representative` rows; float input and output)."""
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if kind != "float":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if kind == "float16":
        converter.target_spec.supported_types = [tf.float16]
    elif kind == "int8":
        expected = tuple(model.input_shape[1:])
        if representative is None or tuple(representative.shape[1:]) != expected:
            received = None if representative is None else list(representative.shape)
            raise ValueError(f"int8 quantization needs representative rows shaped [n, {', '.join(map(str, expected))}] "
                             f"like the model's input; received {received}.")
        converter.representative_dataset = lambda: _representative(representative)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    elif kind not in ("float", "dynamic"):
        raise ValueError(f"unknown post-training quantization {kind!r}; expected one of {PTQ}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return converter.convert()


def _representative(rows: np.ndarray) -> Iterator[list[np.ndarray]]:
    for row in rows:
        yield [row[None, :].astype(np.float32)]


def tflite_predictions(model: bytes, x: np.ndarray, batch: int = 256) -> np.ndarray:
    """The model's output for every row of `x`, run `batch` rows at a time on one thread."""
    runner = interpreter(model, batch)
    outputs = [invoke(runner, x[i : i + batch], batch) for i in range(0, len(x), batch)]
    return np.concatenate(outputs)


def interpreter(model: bytes, batch: int) -> Interpreter:
    """A single-threaded interpreter whose input takes `batch` rows."""
    runner = Interpreter(model_content=model, num_threads=1)
    shape = runner.get_input_details()[0]["shape"]
    runner.resize_tensor_input(runner.get_input_details()[0]["index"], [batch, *shape[1:]])
    runner.allocate_tensors()
    return runner


def invoke(runner: Interpreter, rows: np.ndarray, batch: int) -> np.ndarray:
    """Run up to `batch` rows (zero-padded to `batch`) and return their outputs."""
    padded = np.zeros((batch, *rows.shape[1:]), np.float32)
    padded[: len(rows)] = rows
    runner.set_tensor(runner.get_input_details()[0]["index"], padded)
    runner.invoke()
    return runner.get_tensor(runner.get_output_details()[0]["index"])[: len(rows)]
