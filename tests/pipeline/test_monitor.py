"""python -m pipeline.monitor on the shared digits run's version (which ships its train split's statistics), with
request logs written as a logging server writes them (tests/pipeline/request_logs.py; tests/serving has the server
writing them itself): TFDV's distances, drift found where the traffic moved and nowhere else, exit codes, every
kind of bad log named in one line, and the export of logged rows as training data."""
import csv
import json
import shutil

import numpy as np
import pytest
import tensorflow as tf
from tensorflow_metadata.proto.v0 import statistics_pb2

from pipeline.cli import main as pipeline_main
from pipeline.monitor.__main__ import main
from pipeline.monitor.distances import jensen_shannon, l_infinity
from tests.pipeline.request_logs import digits_logs, predict_log, write_logs

SHIFTED = 20  # the pixel the drifted traffic brightens


def histogram(*buckets, nan=0):
    h = statistics_pb2.Histogram(type=statistics_pb2.Histogram.STANDARD, num_nan=nan)
    for low, high, count in buckets:
        h.buckets.add(low_value=low, high_value=high, sample_count=count)
    return h


def test_the_distances_are_tfdv_s_on_its_own_test_cases():
    """tensorflow_data_validation/anomalies/metrics_test.cc's cases and expected figures."""
    assert jensen_shannon(histogram((1, 2, 2), (2, 3, 2)), histogram((2, 4, 2), (4, 6, 2))) == pytest.approx(0.65563906222)
    assert jensen_shannon(histogram((0, 1, 2), (1, 2, 2)), histogram((3, 4, 2), (4, 6, 2))) == pytest.approx(1)  # NoOverlap
    assert jensen_shannon(histogram((1, 1, 4)), histogram((2.33, 2.33, 4))) == pytest.approx(1)  # two points
    assert jensen_shannon(histogram((10, 10, 21)), histogram((0, 4, 150), (4, 12, 200), (12, 20, 20))) == pytest.approx(1)
    assert jensen_shannon(histogram((0, 1, 3), nan=1), histogram((0, 1, 3), nan=1)) > 0  # NaN is not equal to itself
    assert jensen_shannon(histogram((0, 1, 3), (1, 2, 1)), histogram((0, 1, 3), (1, 2, 1))) == 0
    assert l_infinity({"hello": 0.1, "world": 0.9}, {"hello": 0.3, "world": 0.7})[1] == pytest.approx(0.2)
    assert l_infinity({"b": 0.9, "c": 0.1}, {"a": 0.3, "b": 0.7}) == ("a", pytest.approx(0.3))
    assert l_infinity({}, {}) == ("", 0.0)


@pytest.fixture(scope="module")
def served(digits, tmp_path_factory):
    """A repository holding the shared run's digits version 1, and the run's test rows."""
    work = tmp_path_factory.mktemp("monitor")
    shutil.copytree(digits.base / "1", work / "repo" / "digits" / "1")
    return work / "repo", digits.x_test


def drift(repo, logs, out, *more) -> int:
    return main(["drift", "--logs", str(logs), "--repository", str(repo), "--out", str(out), *more])


@pytest.mark.slow  # the shared digits run: a real pipeline run (tests/conftest.py)
def test_the_version_ships_its_train_split_statistics_as_tfdv_reads_them(served):
    repo, _ = served
    shipped = repo / "digits" / "1" / "assets.extra"
    statistics = statistics_pb2.DatasetFeatureStatisticsList.FromString((shipped / "train_statistics.pb").read_bytes())
    train_rows = json.loads((shipped / "schema.json").read_text())["rows"]["train"]
    (dataset,) = statistics.datasets
    assert dataset.name == "train" and dataset.num_examples == train_rows
    assert [f.path.step[0] for f in dataset.features] == [f"pixel_{i}" for i in range(64)]
    for feature in dataset.features:
        assert feature.type == statistics_pb2.FeatureNameStatistics.FLOAT
        (standard,) = feature.num_stats.histograms
        assert sum(b.sample_count for b in standard.buckets) == train_rows
        assert standard.buckets[0].low_value == feature.num_stats.min
        assert standard.buckets[-1].high_value == feature.num_stats.max


@pytest.mark.slow  # the shared digits run: a real pipeline run (tests/conftest.py)
def test_test_like_traffic_has_not_drifted_and_a_shifted_pixel_has(served, tmp_path, capsys):
    repo, x = served
    digits_logs(tmp_path / "logs" / "same-1.tfrecord", x)
    assert drift(repo, tmp_path / "logs" / "same", tmp_path / "same") == 0
    printed = capsys.readouterr().out
    assert f"{len(x)} logged rows of 'digits' version 1" in printed and "no feature drifted" in printed
    same = json.loads((tmp_path / "same" / "drift.json").read_text())
    assert same["totals"] == {"features": 64, "drifted": 0} and same["rows"] == len(x)
    assert max(f["distance"] for f in same["features"]) < 0.05  # the test split is the train split's kind of data

    shifted = x.copy()
    shifted[:, SHIFTED] = np.clip(shifted[:, SHIFTED] + 6, 0, 16)
    digits_logs(tmp_path / "logs" / "moved-1.tfrecord", shifted, rows_per_request=4)
    assert drift(repo, tmp_path / "logs" / "moved", tmp_path / "moved") == 3
    printed = capsys.readouterr().out
    assert f"1 feature(s) drifted: pixel_{SHIFTED}" in printed
    moved = json.loads((tmp_path / "moved" / "drift.json").read_text())
    assert moved["drifted"] == [f"pixel_{SHIFTED}"]
    feature = next(f for f in moved["features"] if f["feature"] == f"pixel_{SHIFTED}")
    assert feature["kind"] == "numeric" and feature["measure"] == "jensen_shannon"
    assert feature["distance"] > 2 * feature["threshold"] and feature["drifted"] is True
    assert {f["feature"]: f["distance"] for f in moved["features"] if f["feature"] != f"pixel_{SHIFTED}"} == {
        f["feature"]: f["distance"] for f in same["features"] if f["feature"] != f"pixel_{SHIFTED}"}  # the rest unmoved
    page = (tmp_path / "moved" / "drift.html").read_text()
    assert page.count("<img") == 1 and f"pixel_{SHIFTED}" in page  # one plot: the drifted feature's
    serving = statistics_pb2.DatasetFeatureStatisticsList.FromString(
        (tmp_path / "moved" / "serving_statistics.pb").read_bytes())
    assert serving.datasets[0].num_examples == len(x)


@pytest.mark.slow  # the shared digits run: a real pipeline run (tests/conftest.py)
def test_a_threshold_from_the_command_line_or_per_feature_decides(served, tmp_path, capsys):
    repo, x = served
    shifted = x.copy()
    shifted[:, SHIFTED] = np.clip(shifted[:, SHIFTED] + 6, 0, 16)
    digits_logs(tmp_path / "logs" / "moved-1.tfrecord", shifted)
    logs = tmp_path / "logs" / "moved"
    assert drift(repo, logs, tmp_path / "out", f"monitor.feature_thresholds=[pixel_{SHIFTED}=0.9]") == 0
    assert drift(repo, logs, tmp_path / "out", "monitor.numeric_threshold=0.012") == 3  # the test split's own noise
    assert len(json.loads((tmp_path / "out" / "drift.json").read_text())["drifted"]) > 2
    assert drift(repo, logs, tmp_path / "out", "monitor.numeric_threshold=7", "train.epochs=3") == 2
    error = capsys.readouterr().err
    assert "monitor.numeric_threshold: expected a number in (0, 1], received 7" in error
    assert "'train.epochs=3': only monitor.* keys can be set here" in error


@pytest.mark.slow  # the shared digits run: a real pipeline run (tests/conftest.py)
def test_bad_logs_are_named_in_one_line_each_and_the_rest_is_used(served, tmp_path, capsys):
    repo, x = served
    logs = tmp_path / "logs" / "mixed"
    digits_logs(tmp_path / "logs" / "mixed-1.tfrecord", x[:100])
    write_logs(tmp_path / "logs" / "mixed-2.tfrecord", [
        predict_log("other", 1, {"x": x[:3]}),  # another model's
        predict_log("digits", 1, {"x": x[:2], "extra": np.array([b"a", b"b"])}),  # an input the schema lacks
        predict_log("digits", 1, {"x": x[:2, :10]}),  # a row of 10 numbers
        predict_log("digits", 1, {"pixels": x[:2]}),  # no x at all
    ])
    last = digits_logs(tmp_path / "logs" / "mixed-3.tfrecord", x[100:110])
    last.write_bytes(last.read_bytes()[:-7])  # the file being written: its last record cut short
    with tf.io.TFRecordWriter(str(tmp_path / "logs" / "mixed-0.tfrecord")) as writer:
        writer.write(b"\xff\xff\xff")  # a record that is not a PredictionLog
    assert drift(repo, logs, tmp_path / "out", "--model", "digits", "--version", "1") == 0
    error = capsys.readouterr().err.splitlines()
    assert len(error) == 6 and all(line.startswith("monitor: ") for line in error)  # one line per kind of problem
    for said in ("not a PredictionLog (in mixed-0.tfrecord)", "skipping records of model 'other' (not 'digits')", "inputs the model's training schema does not have, "
                 "not compared: ['extra']", "x of shape [10] per request, the model takes [64]",
                 "a request without the model's input 'x'", "mixed-3.tfrecord: truncated or corrupt after record 9"):
        assert sum(said in line for line in error) == 1, said
    rows = json.loads((tmp_path / "out" / "drift.json").read_text())["rows"]
    assert rows == 100 + 2 + 9  # the first file, the request with an extra input, the complete records of the last


@pytest.mark.slow  # the shared digits run: a real pipeline run (tests/conftest.py)
def test_nothing_usable_exits_1_with_what_was_found(served, tmp_path, capsys):
    repo, x = served
    assert drift(repo, tmp_path / "none", tmp_path / "out") == 1
    assert "no log files match" in capsys.readouterr().err
    write_logs(tmp_path / "other-1.tfrecord", [predict_log("other", 1, {"x": x[:3]})])
    assert drift(repo, tmp_path / "other", tmp_path / "out", "--model", "digits", "--version", "1") == 1
    assert "none of the 1 records in 1 log file(s) is a usable request to 'digits' version 1" in capsys.readouterr().err
    digits_logs(tmp_path / "v2-1.tfrecord", x, version=2)
    assert drift(repo, tmp_path / "v2", tmp_path / "out") == 2  # the version that answered is not in the repository
    assert "version 2 of 'digits', which answered the logged requests, is not in" in capsys.readouterr().err
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(repo, elsewhere)
    (elsewhere / "digits" / "1" / "assets.extra" / "train_statistics.pb").unlink()
    digits_logs(tmp_path / "ok-1.tfrecord", x)
    assert drift(elsewhere, tmp_path / "ok", tmp_path / "out") == 1
    error = capsys.readouterr().err
    assert "version 1 of 'digits' ships no training statistics" in error and error.count("\n") == 1


@pytest.mark.slow  # the shared digits run: a real pipeline run (tests/conftest.py)
def test_logged_rows_export_as_training_data_that_ingest_takes(served, tmp_path, capsys, monkeypatch):
    repo, x = served
    digits_logs(tmp_path / "logs" / "requests-1.tfrecord", x[:50], rows_per_request=5)
    out = tmp_path / "labelled.csv"
    assert main(["export", "--logs", str(tmp_path / "logs" / "requests"), "--repository", str(repo),
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "wrote 50 logged rows of 'digits'" in printed  # and the command that trains on them, from version 1:
    assert f"python -m pipeline.run --config CONFIG data.source={out} push.model_name=digits train.init_from=1" in printed
    with out.open() as f:
        header, *rows = list(csv.reader(f))
    assert header == [f"pixel_{i}" for i in range(64)] + ["label", "logged_prediction", "logged_version", "logged_at"]
    assert len(rows) == 50 and all(r[64] == "" and r[65] == "0" and r[66] == "1" for r in rows)
    np.testing.assert_array_equal(np.array([r[:64] for r in rows], np.float32), x[:50])

    for i, row in enumerate(rows):  # a person labels them
        row[64] = str(i % 10)
    with out.open("w", newline="") as f:
        csv.writer(f).writerows([header, *rows])
    monkeypatch.chdir(tmp_path)
    assert pipeline_main([f"data.source={out}", "data.val_fraction=0.2", "data.test_fraction=0.2",
                          "--until", "validate"]) == 0
    schema = json.loads(next((tmp_path / "runs").glob("*/validate/schema/schema.json")).read_text())
    assert [f["name"] for f in schema["features"]] == [f"pixel_{i}" for i in range(64)]  # no logged_* feature
    assert schema["origin"] == {"request_logs": {"rows": 50, "versions": [1], "first": "2026-11-30T00:53:20Z",
                                                 "last": "2026-11-30T00:54:05Z"}}
