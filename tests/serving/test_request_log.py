"""Request logging (a model's logging_config) and the per-feature counts, against one real server: REST and gRPC
predict, classify, regress and MultiInference requests, their PredictionLog records read back from the TFRecord
files field by field, sampling, rotation, a directory that cannot be written, the disk bound, reloads, SIGTERM; and
bad logging configs refused at start."""
from __future__ import annotations

import re
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
import requests
import tabular_model
import tensorflow as tf
from google.protobuf import text_format
from repo_files import write_config
from tensorflow_serving.apis import (classification_pb2, inference_pb2, model_management_pb2, model_service_pb2_grpc,
                                     predict_pb2, prediction_log_pb2, prediction_service_pb2_grpc, regression_pb2)

from localhost.ports import free_port
from serving.__main__ import parse_settings
from serving.model_config import ModelServerConfig
from serving.process import PROJECT_ROOT, ServerProcess

pytestmark = pytest.mark.xdist_group("test_request_log")  # its module-scoped server starts once, in one worker
ROWS = [{"x": [0.5, 1.5, 2.5, 3.5, 12.5], "city": "rome"},  # spend above its [0, 10]
        {"x": [0.5, -1.5, 2.5, 3.5, 4.5], "city": "paris"}]  # income below it; a city training never saw
FILE_NAME = re.compile(r"(?P<model>\w+)-\d{8}T\d{6}Z-(?P<pid>\d+)-(?P<sequence>\d{6})\.tfrecord")
MAX_FILE_BYTES = 2000


def logging_config(prefix: Path, rate: float) -> str:
    return (f'logging_config {{ log_collector_config {{ type: "tfrecord" filename_prefix: "{prefix}" }} '
            f'sampling_config {{ sampling_rate: {rate} }} }}')


@pytest.fixture(scope="module")
def server(tmp_path_factory, tabular):
    """tabular four times: every request logged, half, none, and one whose directory will go away."""
    work = tmp_path_factory.mktemp("request_log")
    (work / "fragile").mkdir()
    models = [("tabular", tabular, logging_config(work / "logs" / "tabular", 1.0)),
              ("half", tabular, logging_config(work / "logs" / "half", 0.5)),
              ("none", tabular, logging_config(work / "logs" / "none", 0.0)),
              ("fragile", tabular, logging_config(work / "fragile" / "fragile", 1.0))]
    config = write_config(work / "models.config", models)
    (work / "monitoring.config").write_text("prometheus_config { enable: true }")
    grpc_port = free_port()
    process = ServerProcess(f"--model_config_file={config}", f"--port={grpc_port}", "--file_system_poll_wait_seconds=0",
                            f"--monitoring_config_file={work / 'monitoring.config'}",
                            f"--request_log_max_file_bytes={MAX_FILE_BYTES}", "--request_log_max_disk_bytes=200000",
                            log_dir=work)
    process.work, process.config = work, config
    process.channel = grpc.insecure_channel(f"127.0.0.1:{grpc_port}")
    for model, _, _ in models:
        process.wait_available(model)
    yield process
    process.channel.close()
    if process.process.poll() is None:
        assert process.stop() == 0, process.log_tail()


def records(prefix: Path, expected: int | None = None) -> list[prediction_log_pb2.PredictionLog]:
    """The records in the files of `prefix`, in the order written; waits (a flush is within a second) until there
    are `expected`."""
    deadline = time.monotonic() + 10
    while True:
        files = sorted(prefix.parent.glob(f"{prefix.name}-*.tfrecord"), key=lambda p: p.name)
        found = [prediction_log_pb2.PredictionLog.FromString(r.numpy())
                 for f in files for r in tf.data.TFRecordDataset(str(f))]
        if expected is None or len(found) >= expected or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def metrics(server) -> list[str]:
    return requests.get(f"{server.url}/monitoring/prometheus/metrics", timeout=10).text.splitlines()


def wait_for_metric(server, line: str) -> None:
    """Until the metrics hold `line` (the logging thread counts what it handles a moment after the answer)."""
    deadline = time.monotonic() + 5
    while line not in metrics(server):
        assert time.monotonic() < deadline, f"{line} not in the metrics:\n" + "\n".join(
            m for m in metrics(server) if "request_log" in m or "feature" in m)
        time.sleep(0.1)


def example(row: dict):
    proto = tf.train.Example()
    proto.features.feature["x"].float_list.value.extend(row["x"])
    proto.features.feature["city"].bytes_list.value.append(row["city"].encode())
    return proto


def post(server, path: str, body: dict) -> dict:
    answer = requests.post(f"{server.url}/v1/models/{path}", json=body, timeout=10)
    assert answer.status_code == 200, answer.text
    return answer.json()


@pytest.fixture(scope="module")
def traffic(server):
    """Each API once per port on ROWS (gRPC MultiInference too); the records of "tabular" in the order sent."""
    stub = prediction_service_pb2_grpc.PredictionServiceStub(server.channel)
    started = time.time()
    post(server, "tabular:predict", {"instances": ROWS})
    grpc_predict = predict_pb2.PredictRequest()
    grpc_predict.model_spec.name = "tabular"
    grpc_predict.inputs["x"].CopyFrom(tf.make_tensor_proto([row["x"] for row in ROWS], tf.float32))
    grpc_predict.inputs["city"].CopyFrom(tf.make_tensor_proto([row["city"] for row in ROWS]))
    stub.Predict(grpc_predict, timeout=10)
    for api, message, call in (("classify", classification_pb2.ClassificationRequest, stub.Classify),
                               ("regress", regression_pb2.RegressionRequest, stub.Regress)):
        post(server, f"tabular:{api}", {"signature_name": api, "examples": ROWS})
        request = message()
        request.model_spec.name, request.model_spec.signature_name = "tabular", api
        request.input.example_list.examples.extend(example(row) for row in ROWS)
        call(request, timeout=10)
    multi = inference_pb2.MultiInferenceRequest()
    for api in ("classify", "regress"):
        task = multi.tasks.add(method_name=f"tensorflow/serving/{api}")
        task.model_spec.name, task.model_spec.signature_name = "tabular", api
    multi.input.example_list.examples.extend(example(row) for row in ROWS)
    stub.MultiInference(multi, timeout=10)
    return started, time.time(), records(server.work / "logs" / "tabular", 7)


def without_time(log: prediction_log_pb2.PredictionLog) -> prediction_log_pb2.PredictionLog:
    copy = prediction_log_pb2.PredictionLog()
    copy.CopyFrom(log)
    copy.log_metadata.ClearField("timestamp_secs")
    return copy


def test_rest_and_grpc_requests_give_the_same_records_with_every_field(traffic):
    started, ended, logs = traffic
    assert [log.WhichOneof("log_type") for log in logs] == \
        ["predict_log"] * 2 + ["classify_log"] * 2 + ["regress_log"] * 2 + ["multi_inference_log"]
    for rest, grpc_ in (logs[0:2], logs[2:4], logs[4:6]):  # the same request by either port: the same record
        assert without_time(rest) == without_time(grpc_)
    signatures = ["serving_default"] * 2 + ["classify"] * 2 + ["regress"] * 2 + ["classify"]
    for log, signature in zip(logs, signatures):
        metadata = log.log_metadata
        assert (metadata.model_spec.name, metadata.model_spec.version.value) == ("tabular", 1)
        assert metadata.model_spec.signature_name == signature  # decided: the predict requests named none
        assert metadata.sampling_config.sampling_rate == 1.0 and list(metadata.saved_model_tags) == ["serve"]
        assert int(started) <= metadata.timestamp_secs <= ended
    predict = logs[0].predict_log
    assert (predict.request.model_spec.name, predict.request.model_spec.signature_name) == ("tabular", "")
    assert tf.make_ndarray(predict.request.inputs["x"]).tolist() == [row["x"] for row in ROWS]
    assert tf.make_ndarray(predict.request.inputs["city"]).tolist() == [b"rome", b"paris"]
    assert predict.response.model_spec.signature_name == "serving_default"
    assert tf.make_ndarray(predict.response.outputs["score"]).tolist() == pytest.approx(
        [tabular_model.score(row["x"], row["city"]) for row in ROWS], rel=1e-6)
    classify = logs[2].classify_log
    assert list(classify.request.input.example_list.examples) == [example(row) for row in ROWS]
    assert [[c.label for c in entry.classes] for entry in classify.response.result.classifications] == \
        [["low", "high"]] * 2
    regress = logs[4].regress_log
    assert [r.value for r in regress.response.result.regressions] == pytest.approx(
        [tabular_model.score(row["x"], row["city"]) for row in ROWS], rel=1e-6)
    multi = logs[6].multi_inference_log
    assert [t.model_spec.signature_name for t in multi.request.tasks] == ["classify", "regress"]
    assert len(multi.request.input.example_list.examples) == 2
    assert [r.WhichOneof("result") for r in multi.response.results] == ["classification_result", "regression_result"]


def test_out_of_range_values_and_unseen_categories_are_counted_per_feature(server, traffic):
    lines = metrics(server)
    for line in ['serving_feature_rows_total{model="tabular"} 14.0',  # 7 requests of 2 rows
                 'serving_feature_out_of_range_total{feature="spend",model="tabular"} 7.0',
                 'serving_feature_out_of_range_total{feature="income",model="tabular"} 7.0',
                 'serving_feature_out_of_range_total{feature="age",model="tabular"} 0.0',
                 'serving_feature_unseen_total{feature="city",model="tabular"} 7.0',
                 ':tensorflow:serving:request_log_count{model_name="tabular",status_code="OK"} 7']:
        assert line in lines, line


@pytest.fixture(scope="module")
def sampled(server) -> int:
    """200 requests to "half" and 50 to "none", answered and flushed; how many "half" logged."""
    for _ in range(200):
        post(server, "half:predict", {"instances": ROWS[:1]})
    for _ in range(50):
        post(server, "none:predict", {"instances": ROWS[:1]})
    wait_for_metric(server, 'serving_feature_rows_total{model="none"} 50.0')  # the thread is past them
    time.sleep(1.2)  # and has flushed
    return len(records(server.work / "logs" / "half"))


def test_each_model_samples_at_its_rate(server, sampled):
    assert 60 <= sampled <= 140  # binomial(200, 0.5): 6 standard deviations either way
    assert f':tensorflow:serving:request_log_count{{model_name="half",status_code="OK"}} {sampled}' in metrics(server)
    assert records(server.work / "logs" / "none") == []  # but its rows are counted all the same (the fixture)


def test_files_rotate_complete_private_and_in_order(server, sampled):
    files = sorted((server.work / "logs").glob("half-*.tfrecord"))
    assert len(files) >= 5  # 60 records or more of about 300 bytes, rotated before 2000
    names = [FILE_NAME.fullmatch(f.name) for f in files]
    assert all(names) and {n["pid"] for n in names} == {str(server.process.pid)}
    sequences = [int(n["sequence"]) for n in names]
    assert sequences == sorted(sequences) and len(set(sequences)) == len(sequences)
    for rotated in files[:-1]:  # complete: every record reads back, within the size
        assert 0 < rotated.stat().st_size <= MAX_FILE_BYTES
        assert sum(1 for _ in tf.data.TFRecordDataset(str(rotated))) >= 1
    assert {stat.S_IMODE(f.stat().st_mode) for f in files} == {0o600}


def test_a_directory_that_cannot_be_written_drops_and_counts_and_requests_answer(server):
    fragile = server.work / "fragile"
    shutil.rmtree(fragile)
    fragile.write_text("the log directory was replaced by a file")
    for _ in range(3):
        post(server, "fragile:predict", {"instances": ROWS})  # 200 all the same
    wait_for_metric(server, 'serving_request_log_dropped_total{model="fragile",reason="write_error"} 3.0')
    assert "Request log" in server.log_tail() and "cannot write" in server.log_tail()


def reload(server, config: ModelServerConfig):
    request = model_management_pb2.ReloadConfigRequest()
    request.config.CopyFrom(config)
    return model_service_pb2_grpc.ModelServiceStub(server.channel).HandleReloadConfigRequest(request, timeout=30)


def test_reloads_check_logging_first_and_apply_it_with_the_disk_bound(server, traffic):
    config = text_format.Parse(server.config.read_text(), ModelServerConfig())
    tabular = config.model_config_list.config[0]
    not_a_directory = server.work / "models.config"
    tabular.logging_config.log_collector_config.filename_prefix = str(not_a_directory / "tabular")
    with pytest.raises(grpc.RpcError) as refused:
        reload(server, config)
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert f"model 'tabular': logging_config.log_collector_config.filename_prefix '{not_a_directory}/tabular'" \
        in refused.value.details()
    post(server, "tabular:predict", {"instances": ROWS})  # the previous config is in force
    assert len(records(server.work / "logs" / "tabular", 8)) == 8
    full = server.work / "full"
    full.mkdir()
    (full / "tabular-20200101T000000Z-1-000000.tfrecord").write_bytes(b"\0" * 200_000)  # an earlier run's
    tabular.logging_config.log_collector_config.filename_prefix = str(full / "tabular")
    reload(server, config)
    for _ in range(3):
        post(server, "tabular:predict", {"instances": ROWS})
    wait_for_metric(server, 'serving_request_log_dropped_total{model="tabular",reason="disk_bound"} 3.0')
    assert sorted(p.name for p in full.iterdir()) == ["tabular-20200101T000000Z-1-000000.tfrecord"]
    assert len(records(server.work / "logs" / "tabular")) == 8  # its file closed, nothing more in it


def test_sigterm_flushes_what_was_answered(server, traffic):
    reload(server, text_format.Parse(server.config.read_text(), ModelServerConfig()))  # "tabular" logs to logs/
    before = len(records(server.work / "logs" / "tabular"))
    for _ in range(5):
        post(server, "tabular:predict", {"instances": ROWS[:1]})
    assert server.stop() == 0, server.log_tail()  # at once: before the next periodic flush
    assert len(records(server.work / "logs" / "tabular")) == before + 5
    assert "could not be" not in server.log.read_text()  # no record failed to be made, no row to be counted


BAD = {  # logging_config -> what the refusal says after "model 'hpt': logging_config."
    'log_collector_config { type: "kafka" filename_prefix: "/tmp/x" }':
        "log_collector_config.type: 'kafka' is not a log collector this server has; expected one of ['tfrecord']",
    'log_collector_config { type: "tfrecord" }': "log_collector_config.filename_prefix is empty",
    'log_collector_config { type: "tfrecord" filename_prefix: "/tmp/x" } sampling_config { sampling_rate: 1.5 }':
        "sampling_config.sampling_rate: expected a fraction of requests within [0, 1], received 1.5",
    'log_collector_config { type: "tfrecord" filename_prefix: "/tmp/x" } '
    'sampling_config { per_task_sampling_configs { sampling_rate: 1 } }':
        "sampling_config.per_task_sampling_configs is not supported by this server",
}


@pytest.mark.parametrize("bad", sorted(BAD))
def test_a_bad_logging_config_is_refused_at_start(bad, tmp_path, half_plus_two_base, capsys):
    config = write_config(tmp_path / "models.config", [("hpt", half_plus_two_base, f"logging_config {{ {bad} }}")])
    with pytest.raises(SystemExit) as exited:
        parse_settings([f"--model_config_file={config}", "--port=0", "--rest_api_port=1"])
    assert exited.value.code == 2
    assert f"--model_config_file '{config}': model 'hpt': logging_config.{BAD[bad]}" in capsys.readouterr().err


def test_a_directory_that_cannot_be_written_is_refused_at_start(tmp_path, half_plus_two_base):
    (tmp_path / "file").write_text("not a directory")
    prefix = tmp_path / "file" / "hpt"
    config = write_config(tmp_path / "models.config", [("hpt", half_plus_two_base, logging_config(prefix, 1.0))])
    started = subprocess.run([sys.executable, "-m", "serving", f"--model_config_file={config}", "--port=0",
                              f"--rest_api_port={free_port()}", "--host=127.0.0.1"], cwd=PROJECT_ROOT,
                             capture_output=True, text=True, timeout=120)
    assert started.returncode == 1, started.stderr[-2000:]
    assert (f"Failed to start server. Error: FAILED_PRECONDITION: model 'hpt': logging_config.log_collector_config."
            f"filename_prefix '{prefix}': cannot write files in '{tmp_path / 'file'}'") in started.stderr
    assert "Loaded hpt" not in started.stderr  # refused before any model loads
