"""MultiInference runs all its tasks in one session call, as TF Serving's multi_inference.cc does (the union of the
signatures' outputs fetched at once): shown on a model whose classify and regress signatures read one stateful
counter that each session call increments once, run through the real request path (ServingCore, a real Servable),
with and without the batcher.
"""
from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import tensorflow as tf

from serving.batching import BatchingParameters
from serving.codec import example_from_json
from serving.core import ServingCore
from serving.manager import ModelManager
from serving.metrics import Metrics
from serving.model_config import single_model_config
from serving.servable import Servable
from serving.signatures import CLASSIFY, REGRESS

v1 = tf.compat.v1


def build_counter_model(export_dir: Path) -> Path:
    """A TF1 graph on serialized tf.Examples with a float feature x: `regress_calls` answers, for every example, how
    many session calls have fetched it or `classify_calls` (their one counter, incremented once per call),
    `classify_calls` scores [calls, x], `regress_x` answers x."""
    graph = tf.Graph()
    with graph.as_default(), v1.Session(graph=graph) as session:
        serialized = v1.placeholder(tf.string, shape=[None], name="tf_example")
        x = v1.parse_example(serialized, {"x": v1.FixedLenFeature([1], tf.float32)})["x"][:, 0]
        calls = v1.assign_add(v1.Variable(0.0, name="calls"), 1.0) + 0.0 * x  # one per call, per example
        info = v1.saved_model.utils.build_tensor_info
        signatures = {
            name: v1.saved_model.signature_def_utils.build_signature_def(
                {"inputs": info(serialized)}, {key: info(tensor)}, f"tensorflow/serving/{method}")
            for name, method, key, tensor in [("regress_calls", "regress", "outputs", calls),
                                              ("classify_calls", "classify", "scores", tf.stack([calls, x], axis=1)),
                                              ("regress_x", "regress", "outputs", x)]}
        session.run(v1.global_variables_initializer())
        builder = v1.saved_model.builder.SavedModelBuilder(str(export_dir))
        builder.add_meta_graph_and_variables(session, ["serve"], signature_def_map=signatures)
        builder.save()
    return export_dir


@pytest.mark.parametrize("batching", [None, BatchingParameters(num_batch_threads=1)], ids=["unbatched", "batched"])
def test_the_tasks_of_a_multi_inference_run_in_one_session_call(tmp_path, batching):
    servable = Servable("counter", 1, build_counter_model(tmp_path / "counter" / "1"))
    metrics = Metrics()
    core = ServingCore(ModelManager(single_model_config("counter", str(tmp_path / "counter")), metrics), metrics,
                       batching, num_threads=1)
    tasks = [(CLASSIFY, "classify_calls"), (REGRESS, "regress_calls"), (REGRESS, "regress_x")]
    examples = [example_from_json({"x": x}).SerializeToString() for x in (2.0, 5.0)]
    try:
        for call in (1, 2):
            (classes, scores), counted, xs = asyncio.run(core.multi_inference(servable, tasks, examples))
            assert classes is None and scores.tolist() == [[call, 2.0], [call, 5.0]]
            assert counted.tolist() == [call, call] and xs.tolist() == [2.0, 5.0]  # each task saw the same call
        assert asyncio.run(core.regress(servable, "regress_calls", examples)).tolist() == [3.0, 3.0]
        text = metrics.render().decode()
    finally:
        core.close()
    assert ':tensorflow:serving:request_example_counts_sum{model="counter"} 4' in text.splitlines()
    runtimes = [line for line in text.splitlines() if line.startswith(":tensorflow:serving:runtime_latency_count")]
    assert runtimes == [':tensorflow:serving:runtime_latency_count{model_name="counter",API="Regress",runtime="TF1"} 1']
