"""Tabular data a new user brings (scikit-learn's bundled breast_cancer set written as CSV; a table with a
categorical column): the task is inferred, int8 models stay accurate, categories are served as strings.
The diabetes regression is pipeline/configs/tabular_regression.yaml, tested in test_example_text.py."""
import csv
import json
from pathlib import Path

import numpy as np
import pytest
import requests

from localhost.ports import free_port
from pipeline.monitor.__main__ import main as monitor
from serving.client import GrpcClient, RestClient
from serving.process import ServerProcess
from tests.integration.completeness import assert_shares_add_up
from tests.pipeline.request_logs import predict_log, write_logs
from tests.pipeline_cli import run_pipeline

pytestmark = pytest.mark.slow

TABULAR = ("data.input_shape=[]", "model.name=mlp", "output_dir=runs", "push.repository=repo")


def write_csv(path: Path, loader) -> Path:
    data = loader()
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([*data.feature_names, "label"])
        writer.writerows([*map(float, row), label] for row, label in zip(data.data, data.target))
    return path


def stage(workdir: Path, name: str) -> dict:
    run = json.loads((workdir / "runs" / "latest" / "manifest.json").read_text())
    return next(s for s in run["stages"] if s["name"] == name)


def test_breast_cancer_int8_is_as_accurate_as_float(tmp_path):
    from sklearn.datasets import load_breast_cancer

    source = write_csv(tmp_path / "breast_cancer.csv", load_breast_cancer)
    result = run_pipeline(tmp_path, f"data.source={source}", *TABULAR, "train.epochs=10", "compress.variants=[cluster]",
                          "compress.tflite=[int8]", "compress.fine_tune_epochs=2", "push.smoke_test=false",
                          "compress.max_accuracy_drop=0.03")  # 86 validation rows: one is 1.2 points (issue #28)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "data.task=auto: classification, because the labels take 2 distinct values" in result.stdout
    report = json.loads((tmp_path / "runs" / "latest" / "compress" / "report.json").read_text())
    variants = report["variants"]
    assert report["measured_on"] == "val"
    assert variants["baseline+int8"]["accuracy"] >= variants["baseline"]["accuracy"] - 0.02  # was 0.459 vs 0.977
    assert variants["cluster+int8"]["status"] == "ok" and report["shipped_tflite"] == ["cluster+int8"]
    assert report["selected_test_accuracy"] >= 0.9
    pushed = tmp_path / "repo" / "breast_cancer" / "1"  # named after the data, not digits
    assert (pushed / "assets.extra" / "cluster+int8.tflite").is_file()


def test_categorical_columns_are_served_as_named_string_inputs(tmp_path):
    """The label depends on a categorical column only: clients send the city's name, the model looks it up, and
    explain gives the city (its embedding's share) nearly all of the score's move from the train split's mean row."""
    rng = np.random.default_rng(0)
    cities = {"paris": "cold", "oslo": "cold", "rome": "warm", "lima": "warm"}
    source = tmp_path / "weather.csv"
    with source.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["size", "city", "label"])
        for i in range(400):
            city = list(cities)[i % 4]
            writer.writerow([f"{rng.normal():.3f}", city, cities[city]])
    result = run_pipeline(tmp_path, f"data.source={source}", "data.categorical=[city]", *TABULAR, "train.epochs=15",
                          "compress.variants=[]", "infra_validate.enabled=false", "push.smoke_test=true")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert stage(tmp_path, "evaluate")["metrics"]["accuracy"] == 1.0
    import tensorflow as tf
    import tf_keras as keras

    run = tmp_path / "runs" / "latest"
    test = np.load(run / "validate" / "dataset" / "test.npz")
    expected = keras.models.load_model(run / "train" / "model" / "model.keras").predict(test["x"][:6], verbose=0)
    rows = {"x": test["x"][:6, :1], "city": test["categorical"][:6, 0]}
    explain = tf.saved_model.load(str(tmp_path / "repo" / "weather" / "1")).signatures["explain"]
    answer = {k: v.numpy() for k, v in explain(x=tf.constant(test["x"][:, :1]),
                                               city=tf.constant(test["categorical"][:, 0])).items()}
    assert_shares_add_up(answer, ["attributions", "attributions_city"])  # every test row within 5 %
    city, size = np.abs(answer["attributions_city"]), np.abs(answer["attributions"][:, 0])
    assert np.all(city > size) and city.sum() > 10 * size.sum()  # measured: 0.39 to 0.69 against 0.001 to 0.09
    grpc_port = free_port()
    server = ServerProcess("--model_name=weather", f"--model_base_path={tmp_path / 'repo' / 'weather'}",
                           f"--port={grpc_port}", log_dir=tmp_path)
    try:
        server.wait_available("weather")
        with RestClient(server.url) as rest, GrpcClient(f"127.0.0.1:{grpc_port}") as grpc_client:
            for client in (rest, grpc_client):
                predicted = client.predict("weather", rows)
                np.testing.assert_allclose(predicted["probabilities"], expected, rtol=1e-5, atol=1e-6)
                names = np.array(["cold", "warm"])[expected.argmax(axis=1)]  # the labels are names: served beside ids
                assert [n.decode() if isinstance(n, bytes) else n for n in predicted["class_name"]] == names.tolist()
            scores = rest.classify("weather", [{"x": [0.2], "city": "rome"}, {"x": [0.2], "city": "oslo"}],
                                   signature_name="classify")
            assert [max(s, key=lambda c: c[1])[0] for s in scores] == ["warm", "cold"]
            for client in (rest, grpc_client):  # explain: what it computes in process, over both protocols
                explained = client.predict("weather", rows, signature_name="explain")
                assert sorted(explained) == ["attributions", "attributions_city", "baseline_score", "class_id",
                                             "class_name", "score"]
                for name in ("attributions", "attributions_city", "score", "baseline_score"):
                    np.testing.assert_allclose(explained[name], answer[name][:6], rtol=1e-5, atol=1e-6, err_msg=name)
                assert explained["class_id"].tolist() == answer["class_id"][:6].tolist()
        answer = requests.post(f"{server.url}/v1/models/weather:predict", timeout=30,
                               json={"instances": [{"x": [0.2], "city": "atlantis"}]})  # unseen: index 0
        assert answer.status_code == 200 and len(answer.json()["predictions"]) == 1
        for api in ("predict", "classify"):  # a categorical input left out is an error on every API
            body = {"instances": [{"x": [0.2]}]} if api == "predict" else {"signature_name": "classify",
                                                                          "examples": [{"x": [0.2]}]}
            missing = requests.post(f"{server.url}/v1/models/weather:{api}", json=body, timeout=30)
            assert missing.status_code == 400 and "city" in missing.json()["error"], (api, missing.text)
        for body in ({"instances": [{"x": [0.2]}]}, {"instances": [{"x": [0.2, 0.3], "city": "rome"}]}):
            refused = requests.post(f"{server.url}/v1/models/weather:predict", timeout=30,
                                    json={"signature_name": "explain", **body})  # explain refuses what predict does
            predicted = requests.post(f"{server.url}/v1/models/weather:predict", json=body, timeout=30)
            assert refused.status_code == predicted.status_code == 400
            words = [reply.json()["error"].split("\n\t")[0] for reply in (refused, predicted)]  # then the graph's
            assert words[0] == words[1], words                                                  # node, of each
    finally:
        server.stop()
    _drift_is_found_in_the_city_column_only(run, tmp_path)


def _drift_is_found_in_the_city_column_only(run, tmp_path):
    """Every row as traffic has not drifted; the same rows all from rome have, in `city` (L-infinity), not `size`."""
    splits = [np.load(run / "validate" / "dataset" / f"{split}.npz") for split in ("train", "val", "test")]
    size = np.concatenate([split["x"][:, :1] for split in splits])
    city = np.concatenate([split["categorical"][:, 0] for split in splits]).astype(bytes)
    for name, cities in (("same", city), ("moved", np.full_like(city, b"rome"))):
        write_logs(tmp_path / "logs" / f"{name}-1.tfrecord", [predict_log("weather", 1, {"x": size, "city": cities})])
    out = tmp_path / "drift"
    for name, code in (("same", 0), ("moved", 3)):
        assert monitor(["drift", "--logs", str(tmp_path / "logs" / name), "--repository", str(tmp_path / "repo"),
                        "--out", str(out)]) == code
    features = {f["feature"]: f for f in json.loads((out / "drift.json").read_text())["features"]}
    assert features["city"]["measure"] == "l_infinity" and features["city"]["value"] == "rome"
    assert features["city"]["distance"] == pytest.approx(0.75, abs=0.05)  # rome's share: a quarter, then all
    assert not features["size"]["drifted"] and features["size"]["distance"] < 0.01
