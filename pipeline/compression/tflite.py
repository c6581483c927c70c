"""Post-training quantization of a Keras model to TFLite, and running .tflite files with ai-edge-litert."""
from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import warnings
from collections.abc import Iterator

import numpy as np
import tensorflow as tf
import tf_keras as keras
from ai_edge_litert.interpreter import Interpreter
from tensorflow.lite.python import convert as tflite_convert

from pipeline.specs import PTQ


class ConversionFailed(Exception):
    """TFLite cannot convert the model; the message is one line (the converter's first error)."""


def to_tflite(model: keras.Model, kind: str, representative: np.ndarray | None = None) -> bytes:
    """`float` (no quantization), `dynamic` (int8 weights), `float16` (fp16 weights) or `int8`
    (weights and activations after the input normalization, calibrated on `representative` rows;
    float input and output). Raises ConversionFailed when TFLite cannot convert the model."""
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
    elif kind not in ("float", "dynamic"):
        raise ValueError(f"unknown post-training quantization {kind!r}; expected one of {PTQ}")
    try:
        with warnings.catch_warnings(), _converter_output_kept_aside():
            warnings.simplefilter("ignore")
            return _int8_after_normalization(converter, model) if kind == "int8" else converter.convert()
    except Exception as e:  # ConverterError and friends carry a multi-KB MLIR dump: keep its first error
        lines = str(e).splitlines() or [type(e).__name__]
        first = next((line for line in lines if "error:" in line), lines[0]).split("error:", 1)[-1].strip()[:300]
        if any(tensor.dtype == tf.string for tensor in model.inputs):
            first += ("; the model reads strings (text preprocessing such as TextVectorization), which TFLite's "
                      "builtin ops cannot: it is served as a SavedModel")
        raise ConversionFailed(first) from None


def _int8_after_normalization(converter: tf.lite.TFLiteConverter, model: keras.Model) -> bytes:
    """Full int8 quantization, except the ops that read the raw input row, which stay float: the Normalization
    layer's (SUB, MUL), and for categorical columns the slices that pick them out and their Embedding lookups.

    TFLite quantizes activations per tensor: one int8 scale for the raw input row. Tabular features
    span very different ranges (breast_cancer: 0.001 to 4000), so a scale that fits the largest
    feature rounds the small ones to a constant (every int8 variant scored 0.459 against 0.988
    float), and the mean and 1/std constants are quantized per tensor too. Standardised values
    share one range, so quantization starts after the Normalization layer: calibrate, then quantize
    with its ops denylisted (what tf.lite.experimental.QuantizationDebugger's selective quantization
    does, without its deprecated tf.lite.Interpreter). A categorical column's vocabulary index shares the row
    with the numbers: quantized on their scale, indices 0 to 3 all became 0, every lookup read the same
    embedding, and a penguins model scored 0.53 at int8 against 0.98 in float.
    """
    converter._experimental_calibrate_only = True  # calibrated, not yet quantized
    calibrated = converter.convert()
    reads_input = (keras.layers.Normalization, keras.layers.Embedding)
    layers = [layer.name for layer in model.layers
              if isinstance(layer, reads_input) or type(layer).__name__ == "SlicingOpLambda"]
    tensors = Interpreter(model_content=calibrated).get_tensor_details()
    float_nodes = [t["name"] for t in tensors if any(f"/{name}/" in t["name"] for name in layers)]
    return tflite_convert.mlir_quantize(calibrated, fully_quantize=False, denylisted_nodes=float_nodes or None)


@contextlib.contextmanager
def _converter_output_kept_aside():
    """The converter's C++ code prints its MLIR diagnostics straight to file descriptor 2; send them to
    a temporary file, so a failure shows as the one line ConversionFailed carries."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


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
