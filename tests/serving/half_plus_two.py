"""Rebuild TF Serving's `half_plus_two` test SavedModel (y = 0.5 * x + 2), the fixture its own
REST and gRPC tests use, with the same graph, tensor names and signatures (TF1 graph builder,
as tensorflow_serving/servables/tensorflow/testdata/saved_model_half_plus_two.py does), plus three
malformed signatures for the error paths of Classify and Regress.
"""
from __future__ import annotations

from pathlib import Path

import tensorflow as tf

v1 = tf.compat.v1


def _signature(inputs: dict, outputs: dict, method: str):
    return v1.saved_model.signature_def_utils.build_signature_def(
        {k: v1.saved_model.utils.build_tensor_info(t) for k, t in inputs.items()},
        {k: v1.saved_model.utils.build_tensor_info(t) for k, t in outputs.items()},
        method,
    )


def build(export_dir: Path, offset: float = 2.0) -> Path:
    """Write the model to `export_dir` (a version directory, e.g. .../half_plus_two/123). With another
    `offset` (y = 0.5 * x + offset) it is a version whose answers tell it from TF Serving's."""
    predict, regress, classify = (f"tensorflow/serving/{m}" for m in ("predict", "regress", "classify"))
    graph = tf.Graph()
    with graph.as_default(), v1.Session(graph=graph) as session:
        a, b, c = v1.Variable(0.5, name="a"), v1.Variable(offset, name="b"), v1.Variable(3.0, name="c")
        serialized = v1.placeholder(tf.string, name="tf_example", shape=[None])
        features = v1.parse_example(serialized, {
            "x": v1.FixedLenFeature([1], dtype=tf.float32),
            "x2": v1.FixedLenFeature([1], dtype=tf.float32, default_value=[0.0]),
        })
        x = tf.identity(features["x"], name="x")
        y = tf.identity(a * x + b, name="y")
        y2 = tf.identity(a * x + c, name="y2")
        x2 = tf.identity(features["x2"], name="x2")
        a2, c2 = v1.Variable(0.5, name="a2"), v1.Variable(3.0, name="c2")
        y3 = tf.identity(a2 * x2 + c2, name="y3")
        signatures = {
            "regress_x_to_y": _signature({"inputs": serialized}, {"outputs": y}, regress),
            "regress_x_to_y2": _signature({"inputs": serialized}, {"outputs": y2}, regress),
            "regress_x2_to_y3": _signature({"inputs": x2}, {"outputs": y3}, regress),
            "classify_x_to_y": _signature({"inputs": serialized}, {"scores": y}, classify),
            "serving_default": _signature({"x": x}, {"y": y}, predict),
            # Not in TF Serving's model: signatures Classify and Regress refuse, each failing one check of
            # classifier.cc / regressor.cc before the next (the first two also misname their input)
            "regress_x_to_y_and_y2": _signature({"x": serialized}, {"y": y, "y2": y2}, regress),
            "classify_x_to_y_y2_y3": _signature({"x": serialized}, {"y": y, "y2": y2, "y3": y3}, classify),
            "regress_x_to_misnamed_output": _signature({"inputs": serialized}, {"y": y}, regress),
        }
        session.run(v1.global_variables_initializer())
        builder = v1.saved_model.builder.SavedModelBuilder(str(export_dir))
        builder.add_meta_graph_and_variables(session, ["serve"], signature_def_map=signatures)
        builder.save()
    return Path(export_dir)
