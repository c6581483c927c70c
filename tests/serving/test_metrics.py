"""TF Serving's Prometheus metrics (names, labels, units, the exporter's text) beside ours, and a model whose base
path is missing or empty, as TF Serving reports it."""
from __future__ import annotations

import re
import shutil
import time

import grpc
import pytest
import requests
import tensorflow as tf
from repo_files import write_config
from tensorflow_serving.apis import inference_pb2, model_pb2, prediction_log_pb2, prediction_service_pb2_grpc

from localhost.ports import free_port
from serving.client import GrpcClient
from serving.metrics import TFMetric, exponential
from serving.process import ServerProcess

# its tests start servers: in one worker they run in turn (spread over two, their starts overlap)
pytestmark = pytest.mark.xdist_group("test_metrics")

# TF Serving's util/prometheus_exporter_test.cc, as (metric, samples, the exact lines its exporter writes)
EXPORTER_CASES = [
    (TFMetric("/test/path/total", ("name",)), [(2, "abc")],
     ['# TYPE :test:path:total counter', ':test:path:total{name="abc"} 2']),
    (TFMetric("/test/path/histogram", ("status",), exponential(1, 2, 10)), [(2, "good"), (20, "good"), (200, "good")],
     ["# TYPE :test:path:histogram histogram"]
     + [f':test:path:histogram_bucket{{status="good",le="{le}"}} {n}' for le, n in
        [(1, 0), (2, 0), (4, 1), (8, 1), (16, 1), (32, 2), (64, 2), (128, 2), (256, 3), (512, 3), ("+Inf", 3)]]
     + [':test:path:histogram_sum{status="good"} 222', ':test:path:histogram_count{status="good"} 3']),
    (TFMetric("/test/path/total", ("name",)), [(2, '"abc\\"')],
     ['# TYPE :test:path:total counter', ':test:path:total{name="\\"abc\\\\\\""} 2']),
    (TFMetric("/test/path/count"), [(1,), (1,)], ['# TYPE :test:path:count counter', ':test:path:count{} 2']),
]


@pytest.mark.parametrize("metric, samples, lines", EXPORTER_CASES)
def test_tf_metrics_are_written_as_tf_servings_exporter_writes_them(metric, samples, lines):
    for value, *labels in samples:
        metric.add(value, *labels)
    assert metric.lines() == lines


def test_tf_servings_latency_buckets_print_with_six_digits():
    latency = TFMetric("/tensorflow/serving/request_latency", ("model_name", "API", "entrypoint"),
                       exponential(10, 1.8, 33))
    latency.add(1500, "m", "Predict", "GRPC")
    limits = re.findall(r'le="([^"]+)"', "\n".join(latency.lines()))
    assert limits[:6] == ["10", "18", "32.4", "58.32", "104.976", "188.957"]
    assert limits[-2:] == ["1.47476e+09", "+Inf"] and len(limits) == 34


def _write_warmup(version_dir) -> None:
    log = prediction_log_pb2.PredictionLog()
    log.predict_log.request.inputs["x"].CopyFrom(tf.make_tensor_proto([[1.0]], tf.float32))
    (version_dir / "assets.extra").mkdir()
    with tf.io.TFRecordWriter(str(version_dir / "assets.extra" / "tf_serving_warmup_requests")) as writer:
        writer.write(log.SerializeToString())


def _wait_for(predicate, what: str, server: ServerProcess, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen in {timeout_s} s; server log:\n{server.log_tail()}")
        time.sleep(0.1)


@pytest.mark.slow
def test_tf_serving_metrics_and_a_base_path_without_versions(tmp_path, half_plus_two_base):
    hpt = tmp_path / "hpt"
    shutil.copytree(half_plus_two_base / "123", hpt / "1")
    _write_warmup(hpt / "1")
    later = tmp_path / "later"  # does not exist yet
    config = write_config(tmp_path / "models.config", [("hpt", hpt, ""), ("later", later, "")])
    (tmp_path / "batching.config").write_text("max_batch_size { value: 4 } allowed_batch_sizes: 2 "
                                              "allowed_batch_sizes: 4 batch_timeout_micros { value: 1000 }")
    (tmp_path / "monitoring.config").write_text("prometheus_config { enable: true }")
    grpc_port = free_port()
    server = ServerProcess(f"--model_config_file={config}", f"--port={grpc_port}", "--file_system_poll_wait_seconds=0.2",
                           "--enable_batching", f"--batching_parameters_file={tmp_path / 'batching.config'}",
                           f"--monitoring_config_file={tmp_path / 'monitoring.config'}", log_dir=tmp_path)
    try:
        server.wait_available("hpt")
        missing = (f"Could not find base path {later} for servable later with error NOT_FOUND: {later} not found")
        empty = (f"No versions of servable later found under base path {later}. Did you forget to name your leaf "
                 f"directory as a number (eg. '/1/')?")
        time.sleep(0.6)  # a few more polls: the warning is not repeated
        assert server.log.read_text().count(missing) == 1
        status = requests.get(f"{server.url}/v1/models/later", timeout=10)  # TF Serving's answer for no versions
        assert (status.status_code, status.json()) == (404, {"error": "Could not find any versions of model later"})
        later.mkdir()
        _wait_for(lambda: empty in server.log.read_text(), "the 'No versions' warning", server)
        time.sleep(0.6)
        assert server.log.read_text().count(empty) == 1

        predict = f"{server.url}/v1/models/hpt:predict"
        assert requests.post(predict, json={"instances": [[1.0]]}, timeout=10).json() == {"predictions": [[2.5]]}
        assert requests.post(predict, json={"instances": [["a"]]}, timeout=10).status_code == 400
        with GrpcClient(f"127.0.0.1:{grpc_port}") as client:
            assert client.predict("hpt", [[1.0], [2.0], [3.0]])["y"].tolist() == [[2.5], [3.0], [3.5]]
        text = requests.get(f"{server.url}/monitoring/prometheus/metrics", timeout=10).text
        multi = inference_pb2.MultiInferenceRequest()
        for signature in ("regress_x_to_y", "regress_x_to_y2"):
            multi.tasks.add(method_name="tensorflow/serving/regress").model_spec.CopyFrom(
                model_pb2.ModelSpec(name="hpt", signature_name=signature))
        for x in (1.0, 2.0, 3.0):
            multi.input.example_list.examples.add().features.feature["x"].float_list.value.append(x)
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            prediction_service_pb2_grpc.PredictionServiceStub(channel).MultiInference(multi, timeout=10)
        after_multi_inference = requests.get(f"{server.url}/monitoring/prometheus/metrics", timeout=10).text
    finally:
        server.stop()
    path = hpt / "1"
    for line in [
        "# TYPE :tensorflow:serving:request_count counter",
        ':tensorflow:serving:request_count{model_name="hpt",status="INVALID_ARGUMENT"} 1',
        ':tensorflow:serving:request_count{model_name="later",status="NOT_FOUND"} 1',
        "# TYPE :tensorflow:serving:request_latency histogram",
        ':tensorflow:serving:request_latency_count{model_name="hpt",API="predict",entrypoint="REST"} 1',
        ':tensorflow:serving:request_latency_count{model_name="hpt",API="Predict",entrypoint="GRPC"} 1',
        ':tensorflow:serving:runtime_latency_count{model_name="hpt",API="Predict",runtime="TF1"} 2',
        ':tensorflow:serving:runtime_latency_bucket{model_name="hpt",API="Predict",runtime="TF1",le="+Inf"} 2',
        ":tensorflow:serving:batching_session:wrapped_run_count{} 2",
        ':tensorflow:serving:batching_session:queuing_latency_count{thread_pool_name="batch_threads"} 2',
        ":tensorflow:serving:batching_session:input_batch_size_sum{} 4",  # 1 row, then 3 rows padded to 4
        ":tensorflow:serving:batching_session:processed_batch_size_sum{} 6",
        ':tensorflow:serving:batching_session:padding_size_sum{execution_batch_size="4"} 1',
        f':tensorflow:cc:saved_model:load_attempt_count{{model_path="{path}",status="success"}} 1',
        f':tensorflow:serving:model_warmup_records_read{{model_path="{path}",status="OK"}} 1',
        f':tensorflow:serving:model_warmup_latency_count{{model_path="{path}",status="OK"}} 1',
    ]:
        assert line in text.splitlines(), line
    for line in [':tensorflow:serving:request_example_counts_sum{model="hpt"} 3',
                 ':tensorflow:serving:request_example_count_total{model="hpt"} 3',  # MultiInference only
                 ":tensorflow:serving:batching_session:wrapped_run_count{} 3"]:  # its two tasks: one session call
        assert line in after_multi_inference.splitlines(), line
    assert 'API="Regress"' not in after_multi_inference  # multi_inference.cc records no runtime latency
    ok_gets = re.search(r':tensorflow:serving:request_latency_count\{model_name="hpt",API="",entrypoint="REST"\} (\d+)',
                        text)
    assert ok_gets and int(ok_gets[1]) >= 1  # status GETs, counted under the empty API as TF Serving counts them
    assert int(re.search(rf':tensorflow:cc:saved_model:load_latency{{model_path="{path}"}} (\d+)', text)[1]) > 1000
    assert "# HELP :tensorflow" not in text and ":tensorflow:serving:request_count_total" not in text
    assert 'serving_requests_total{api="predict",entrypoint="GRPC",model="hpt",status="OK",version="1"} 1.0' in text

