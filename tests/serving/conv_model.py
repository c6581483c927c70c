"""A small convolution as a SavedModel, built directly: its input a placeholder of rank 4, where TF's oneDNN Conv2D
aborts the process on a tensor of lower rank (the server refuses one, signatures.py)."""
from __future__ import annotations

from pathlib import Path

import tensorflow as tf


class _Convolution(tf.Module):
    def __init__(self):
        super().__init__()
        self.kernel = tf.Variable(tf.ones([3, 3, 3, 2]) / 27.0)

    @tf.function(input_signature=[tf.TensorSpec([None, 8, 8, 3], tf.float32, name="x")])
    def serve(self, x):
        return {"y": tf.reduce_mean(tf.nn.relu(tf.nn.conv2d(x, self.kernel, 1, "SAME")), axis=[1, 2])}


def build(base: Path) -> Path:
    """Version 1 of the model under `base` (returned): x float32 [-1, 8, 8, 3] -> y float32 [-1, 2]."""
    module = _Convolution()
    tf.saved_model.save(module, str(base / "1"), signatures={"serving_default": module.serve})
    return base
