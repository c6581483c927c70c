"""Measure a model variant the same way whatever it is: accuracy, sparsity, sizes, CPU latency.

Keras variants are measured as the SavedModel that would be served (its serving function called
directly); TFLite variants through ai-edge-litert's interpreter. Sparsity is counted from the
weights (zeros in kernels), never taken from a pruning schedule.
"""
from __future__ import annotations

import gzip
import io
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import tensorflow as tf
import tf_keras as keras

from pipeline.compression.tflite import interpreter, invoke, tflite_predictions

LATENCY_RUNS = 30
BOOTSTRAP_RESAMPLES = 2000


def gzip_size(data: bytes) -> int:
    return len(gzip.compress(data, compresslevel=9))


def directory_gzip_size(path: Path) -> int:
    """Size of the directory as a .tar.gz: what shipping the SavedModel costs."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", compresslevel=9) as tar:
        tar.add(path, arcname=".")
    return len(buffer.getvalue())


def sparsity(model: keras.Model) -> tuple[float, dict[str, float]]:
    """The fraction of exact zeros among all kernel weights (weights with 2 or more dimensions), and per layer."""
    zeros, total, by_layer = 0, 0, {}
    for layer in model.layers:
        kernels = [w for w in layer.get_weights() if w.ndim >= 2]
        if kernels:
            layer_zeros, layer_total = sum(int((k == 0).sum()) for k in kernels), sum(k.size for k in kernels)
            by_layer[layer.name] = layer_zeros / layer_total
            zeros, total = zeros + layer_zeros, total + layer_total
    return (zeros / total if total else 0.0), by_layer


def _latency_ms(run, batch: np.ndarray) -> float:
    run(batch)
    times = []
    for _ in range(LATENCY_RUNS):
        started = time.perf_counter()
        run(batch)
        times.append(time.perf_counter() - started)
    return float(np.median(times) * 1000)


def measure_keras(model: keras.Model, x: np.ndarray, y: np.ndarray) -> dict:
    """Accuracy on (x, y), parameters, sparsity, SavedModel gzip size, latency at batch 1 and 32."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "saved_model"
        tf.saved_model.save(model, str(path))
        serve = tf.saved_model.load(str(path))
        function = serve.signatures["serving_default"]
        input_name = next(iter(function.structured_input_signature[1]))

        def run(batch):
            return next(iter(function(**{input_name: tf.constant(batch)}).values())).numpy()

        predictions = run(x)
        overall, per_layer = sparsity(model)
        return {
            "format": "keras",
            "accuracy": float((predictions.argmax(axis=1) == y).mean()),
            "params": int(model.count_params()),
            "sparsity": overall,
            "sparsity_by_layer": per_layer,
            "savedmodel_gzip_bytes": directory_gzip_size(path),
            "latency_ms_b1": _latency_ms(run, x[:1]),
            "latency_ms_b32": _latency_ms(run, x[:32]),
            "predictions": predictions.argmax(axis=1),
        }


def measure_tflite(model: bytes, x: np.ndarray, y: np.ndarray, base: dict) -> dict:
    """Accuracy, sizes and single-threaded latency of a .tflite; params and sparsity from `base`,
    the Keras variant it was converted from."""
    predictions = tflite_predictions(model, x)
    one, thirty_two = interpreter(model, 1), interpreter(model, 32)
    return {
        "format": "tflite",
        "accuracy": float((predictions.argmax(axis=1) == y).mean()),
        "params": base["params"],
        "sparsity": base["sparsity"],
        "tflite_bytes": len(model),
        "tflite_gzip_bytes": gzip_size(model),
        "latency_ms_b1": _latency_ms(lambda b: invoke(one, b, 1), x[:1].astype(np.float32)),
        "latency_ms_b32": _latency_ms(lambda b: invoke(thirty_two, b, 32), x[:32].astype(np.float32)),
        "predictions": predictions.argmax(axis=1),
    }


def paired_drop(baseline_correct: np.ndarray, variant_correct: np.ndarray, seed: int) -> dict:
    """How much accuracy a variant loses against the model it came from, on the same rows: the drop, the rows it
    gets wrong that the baseline got right (`rows_lost`) and the reverse (`rows_gained`), and a 95 % interval
    (percentile bootstrap over the rows). Paired, the noise is only in the rows where the two disagree: a variant
    that agrees with the baseline everywhere has an interval of zero width, however few the rows."""
    difference = baseline_correct.astype(np.int8) - variant_correct.astype(np.int8)  # +1 lost, -1 gained
    resampled = difference[np.random.default_rng(seed).integers(0, len(difference), (BOOTSTRAP_RESAMPLES,
                                                                                          len(difference)))]
    low, high = np.percentile(resampled.mean(axis=1), [2.5, 97.5])
    return {"accuracy_drop": float(difference.mean()), "drop_interval": [float(low), float(high)],
            "rows_lost": int((difference == 1).sum()), "rows_gained": int((difference == -1).sum())}
