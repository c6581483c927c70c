"""pipeline/configs/text_rnn.yaml and tabular_regression.yaml as shipped: each meets the figure it states,
pushes a model named after itself, and the served model takes raw text (vectorized inside the SavedModel)
or rows of numbers and answers exactly as the model it published computes."""
import functools
import json
from pathlib import Path

import numpy as np
import pytest
import requests
from sklearn.linear_model import LinearRegression

from pipeline.artifacts import read_split
from pipeline.monitor.__main__ import main as monitor
from serving.client import GrpcClient, RestClient
from tests.integration.completeness import assert_shares_add_up
from tests.integration.example_configs import assert_meets_its_stated_figure, example_fixture
from tests.pipeline.request_logs import predict_log, write_logs

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("test_example_text")]  # module fixture: once, on one worker
text = example_fixture("text_rnn")
tabular = example_fixture("tabular_regression")

SENTENCES = ["Rain and wind in the forecast today", "The team scored a late goal", "Bake it in the oven with sugar",
             "Our flight left the airport after the hotel", "zzz unknown words only"]


def test_text_rnn_meets_its_stated_accuracy(text):
    assert_meets_its_stated_figure(text)


def test_clients_send_raw_text_and_get_the_published_models_answer(text):
    model = text.published_model()
    expected = model.predict(np.array(SENTENCES), verbose=0)
    assert [int(i) for i in expected[:4].argmax(axis=1)] == [3, 1, 0, 2]  # weather, sport, cooking, travel
    server, grpc_port = text.serve()
    try:
        answer = requests.post(f"{server.url}/v1/models/text_rnn:predict", json={"instances": SENTENCES}, timeout=30)
        assert answer.status_code == 200, answer.text
        served = np.array([p["probabilities"] for p in answer.json()["predictions"]])
        np.testing.assert_allclose(served, expected, rtol=1e-5, atol=1e-6)
        with GrpcClient(f"127.0.0.1:{grpc_port}") as grpc_client:
            np.testing.assert_allclose(grpc_client.predict("text_rnn", SENTENCES)["probabilities"], expected,
                                       rtol=1e-5, atol=1e-6)
        with RestClient(server.url) as rest:
            scores = rest.classify("text_rnn", [{"x": SENTENCES[0]}], signature_name="classify")[0]
            assert max(scores, key=lambda c: c[1])[0] == "weather"
        mine = explained(text, SENTENCES)  # explain: the same over both protocols as in process
        answer = requests.post(f"{server.url}/v1/models/text_rnn:predict", timeout=30,
                               json={"signature_name": "explain", "instances": SENTENCES})
        assert answer.status_code == 200, answer.text
        rows = answer.json()["predictions"]
        assert [row["tokens"][:3] for row in rows[:2]] == [["rain", "and", "wind"], ["the", "team", "scored"]]
        np.testing.assert_allclose([row["token_attributions"] for row in rows], mine["token_attributions"], rtol=1e-5,
                                   atol=1e-6)
        with GrpcClient(f"127.0.0.1:{grpc_port}") as grpc_client:
            served = grpc_client.predict("text_rnn", SENTENCES, signature_name="explain")
        for name in ("token_attributions", "score", "baseline_score"):
            np.testing.assert_allclose(served[name], mine[name], rtol=1e-5, atol=1e-6, err_msg=name)
        assert served["tokens"].tolist() == mine["tokens"].tolist()
    finally:
        server.stop()


def test_text_drift_is_measured_on_tokens(text, tmp_path):
    """Test texts as traffic have not drifted; texts of a new vocabulary have, by the L-infinity distance of their
    tokens' shares (an unseen token takes the largest share)."""
    texts = np.concatenate([read_split(text.run_dir / "validate" / "dataset", split).x for split in ("val", "test")])
    repository = str(text.workdir / "repo")
    for name, sent in (("same", texts), ("moved", np.array(["quantum entanglement of the qubit"] * len(texts)))):
        write_logs(tmp_path / f"{name}-1.tfrecord", [predict_log("text_rnn", 1, {"x": sent.astype(bytes)})])
    assert monitor(["drift", "--logs", str(tmp_path / "same"), "--repository", repository, "--out", str(tmp_path)]) == 0
    assert monitor(["drift", "--logs", str(tmp_path / "moved"), "--repository", repository, "--out", str(tmp_path)]) == 3
    (feature,) = json.loads((tmp_path / "drift.json").read_text())["features"]
    assert feature["kind"] == "text" and feature["measure"] == "l_infinity" and feature["drifted"]
    assert feature["value"] in ("quantum", "entanglement", "of", "the", "qubit")


@functools.cache
def explain_signature(version_dir: Path):
    import tensorflow as tf

    return tf.saved_model.load(str(version_dir)).signatures["explain"]


def explained(run, texts) -> dict:
    """The published version's explain signature on `texts`, in process (the SavedModel loaded once)."""
    import tensorflow as tf

    explain = explain_signature(run.workdir / "repo" / "text_rnn" / "1")
    return {name: value.numpy() for name, value in explain(x=tf.constant(texts)).items()}


def test_explain_shares_each_texts_score_out_among_its_tokens(text):
    """Per token, the share of its embedding (integrated gradients from zero embeddings): the words as the model
    split them beside their shares, 0 for padding, every test row's shares adding up to its score's move within
    5 % (served over REST and gRPC: the test above)."""
    assert_shares_add_up(explained(text, read_split(text.run_dir / "validate" / "dataset", "test").x),
                         ["token_attributions"])
    mine = explained(text, SENTENCES)
    assert [t.decode() for t in mine["tokens"][0]] == ["rain", "and", "wind", "in", "the", "forecast", "today"] + [""] * 9
    assert np.all(mine["token_attributions"][mine["tokens"] == b""] == 0)
    largest = mine["tokens"][0][np.argsort(-mine["token_attributions"][0])[:3]]
    assert sorted(largest) == [b"forecast", b"rain", b"wind"]  # what makes it weather (measured: 0.30, 0.28, 0.24;
    # the other words within 0.04 of 0)


def test_tabular_regression_meets_its_stated_mae_and_beats_the_baselines(tabular):
    assert_meets_its_stated_figure(tabular)
    log = (tabular.run_dir / "ingest" / "log.txt").read_text()
    assert "data.task=auto: regression, because the labels are 214 distinct whole numbers" in log
    dataset = tabular.run_dir / "validate" / "dataset"
    train, test = (read_split(dataset, split) for split in ("train", "test"))
    linear = float(np.abs(LinearRegression().fit(train.x, train.y).predict(test.x) - test.y).mean())
    metrics = tabular.stages["evaluate"]["metrics"]
    assert metrics["mae"] < 0.85 * metrics["mean_baseline_mae"]  # measured: 47.8 vs 63.0 for the mean
    assert metrics["mae"] < 1.1 * linear, (metrics["mae"], linear)  # and 50.4 for LinearRegression


def test_the_served_regressor_takes_rows_whole_numbers_and_refuses_nan(tabular):
    test = read_split(tabular.run_dir / "validate" / "dataset", "test")
    model = tabular.published_model()
    expected = model.predict(test.x[:4], verbose=0)[:, 0]
    whole = [round(v) for v in (test.x[0] * 1000).tolist()]  # the diabetes features are small: scale them up
    server, grpc_port = tabular.serve()
    try:
        with RestClient(server.url) as rest, GrpcClient(f"127.0.0.1:{grpc_port}") as grpc_client:
            values = rest.regress("tabular_regression", [{"x": row.tolist()} for row in test.x[:4]],
                                  signature_name="regress")
            np.testing.assert_allclose(values, expected, rtol=1e-5, atol=1e-4)
            for client in (rest, grpc_client):  # JSON whole numbers arrive as an int64_list
                by_ints = client.regress("tabular_regression", [{"x": whole}], signature_name="regress")
                by_floats = client.regress("tabular_regression", [{"x": [float(v) for v in whole]}],
                                           signature_name="regress")
                assert by_ints == by_floats and np.isfinite(by_ints[0])
        answer = requests.post(f"{server.url}/v1/models/tabular_regression:predict", timeout=30,
                               data='{"instances": [[NaN, 1, 2, 3, 4, 5, 6, 7, 8, 9]]}')
        assert answer.status_code == 400 and "input 'x' must hold finite numbers" in answer.json()["error"]
    finally:
        server.stop()
