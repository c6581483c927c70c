"""The model repository: what a version is, and publishing: next version, atomic, never overwriting."""
import os
import shutil
import threading

import pytest

from repository import (dtype_name, lineage, name_problem, publish, publish_prepared, signature_changes, staging,
                        versions, write_lineage)


@pytest.fixture
def saved_model(tmp_path):
    src = tmp_path / "export"
    (src / "variables").mkdir(parents=True)
    (src / "saved_model.pb").write_bytes(b"graph")
    (src / "variables" / "variables.index").write_bytes(b"index")
    return src


def test_versions_increase_and_old_versions_are_untouched(tmp_path, saved_model):
    repo = tmp_path / "repo" / "digits"
    assert publish(saved_model, repo) == (1, repo / "1")
    (repo / "1" / "saved_model.pb").write_bytes(b"version one")
    assert publish(saved_model, repo)[0] == 2
    assert (repo / "1" / "saved_model.pb").read_bytes() == b"version one"
    assert (repo / "2" / "variables" / "variables.index").read_bytes() == b"index"


def test_non_integer_entries_are_ignored_like_tf_serving_does(tmp_path, saved_model):
    repo = tmp_path / "digits"
    (repo / "7").mkdir(parents=True)
    (repo / "7" / "saved_model.pb").write_bytes(b"x")
    (repo / "notes").mkdir()
    (repo / ".tmp-leftover").mkdir()
    assert list(versions(repo)) == [7]
    assert publish(saved_model, repo)[0] == 8


def test_concurrent_publishers_get_distinct_versions(tmp_path, saved_model):
    repo = tmp_path / "digits"
    results = []
    barrier = threading.Barrier(8)

    def push():
        barrier.wait()
        results.append(publish(saved_model, repo)[0])

    threads = [threading.Thread(target=push) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == list(range(1, 9))
    assert list(versions(repo)) == list(range(1, 9))
    assert not [p for p in repo.iterdir() if p.name.startswith(".tmp-")]


def test_a_failed_copy_leaves_no_version_and_no_staging_dir(tmp_path, saved_model):
    repo = tmp_path / "digits"
    os.symlink(tmp_path / "does-not-exist", saved_model / "dangling")
    with pytest.raises(Exception):
        publish(saved_model, repo)
    assert versions(repo) == {}
    assert list(repo.iterdir()) == []


def test_one_rule_for_a_version_ascii_digits_and_a_saved_model(tmp_path, saved_model):
    repo = tmp_path / "digits"
    for name in ("3", "²", "00012", "9" * 20, "4"):
        (repo / name).mkdir(parents=True)
    for name in ("3", "²", "00012", "9" * 20):
        (repo / name / "saved_model.pb").write_bytes(b"x")
    assert versions(repo) == {3: repo / "3", 12: repo / "00012"}  # "4" is still being copied in
    assert publish(saved_model, repo)[0] == 13  # and no number already taken is reused


def test_publish_refuses_a_directory_without_a_saved_model(tmp_path):
    with pytest.raises(ValueError, match="holds no saved_model.pb"):
        publish(tmp_path, tmp_path / "digits")


@pytest.mark.parametrize("name", ["digits", "bc-2.v1", "a_b"])
def test_good_names(name):
    assert name_problem(name) is None


@pytest.mark.parametrize("name", ["", "../x", "a/b", "a..b", ".hidden", "x" * 129, "ü"])
def test_bad_names_are_explained(name):
    assert "expected letters, digits" in name_problem(name)


def test_a_removed_versions_number_is_never_issued_again(tmp_path, saved_model):
    repo = tmp_path / "digits"
    for _ in range(3):
        publish(saved_model, repo)
    shutil.rmtree(repo / "3")
    shutil.rmtree(repo / "2")
    assert publish(saved_model, repo)[0] == 4
    assert sorted(versions(repo)) == [1, 4]


def test_staging_leaves_nothing_behind_and_is_invisible_to_pollers(tmp_path, saved_model):
    repo = tmp_path / "digits"
    with staging(repo) as area:
        shutil.copytree(saved_model, area / "1")
        assert versions(repo) == {} and versions(area) == {1: area / "1"}
        version, path = publish_prepared(area / "1", repo)
    assert (version, path) == (1, repo / "1")
    with pytest.raises(RuntimeError), staging(repo) as area:
        shutil.copytree(saved_model, area / "1")
        raise RuntimeError("the smoke test failed")
    assert sorted(p.name for p in repo.iterdir()) == [".last_version", "1"]


def test_lineage_is_kept_inside_the_version(tmp_path, saved_model):
    write_lineage(saved_model, {"content": "abc", "source": "runs/x/export"})
    _, path = publish(saved_model, tmp_path / "digits")
    assert lineage(path) == {"content": "abc", "source": "runs/x/export"}
    assert lineage(tmp_path) == {}


SIGNATURES = {"serving_default": {"method": "tensorflow/serving/predict",
                                  "inputs": {"x": {"dtype": "float32", "shape": [-1, 64]}},
                                  "outputs": {"class_id": {"dtype": "int64", "shape": [-1]}}}}


def test_signature_changes_name_what_breaks_a_client():
    assert signature_changes(SIGNATURES, SIGNATURES) == []
    more = {**SIGNATURES, "classify": {"method": "tensorflow/serving/classify", "inputs": {}, "outputs": {}}}
    assert signature_changes(SIGNATURES, more) == []  # a new signature breaks nobody
    wider = {"serving_default": {**SIGNATURES["serving_default"], "inputs": {"x": {"dtype": "float32", "shape": [-1, 30]}}}}
    assert signature_changes(SIGNATURES, wider) == [
        "signature 'serving_default': input 'x' was float32 [-1, 64], is now float32 [-1, 30]"]
    assert signature_changes(SIGNATURES, {}) == ["signature 'serving_default' is gone"]
    renamed = {"serving_default": {**SIGNATURES["serving_default"], "outputs": {"label": {"dtype": "int64", "shape": [-1]}}}}
    assert signature_changes(SIGNATURES, renamed) == [
        "signature 'serving_default': output 'class_id' (int64 [-1]) is gone",
        "signature 'serving_default': output 'label' is new (int64 [-1])"]  # one output: the REST answer's shape
    two = {"serving_default": {**SIGNATURES["serving_default"], "outputs": {
        "class_id": {"dtype": "int64", "shape": [-1]}, "probabilities": {"dtype": "float32", "shape": [-1, 10]}}}}
    named = {"serving_default": {**two["serving_default"], "outputs": {
        **two["serving_default"]["outputs"], "class_name": {"dtype": "string", "shape": [-1]}}}}
    assert signature_changes(two, named) == []  # beside two outputs, read by name: a client keeps working
    assert signature_changes(named, two) == ["signature 'serving_default': output 'class_name' (string [-1]) is gone"]


def test_dtype_names_are_tensorflows_without_importing_it():
    tf = pytest.importorskip("tensorflow")
    from tensorflow.core.framework import types_pb2
    from tensorflow.core.protobuf import meta_graph_pb2

    for number in types_pb2.DataType.values():
        if number != types_pb2.DT_INVALID:
            assert dtype_name(meta_graph_pb2.TensorInfo(dtype=number)) == tf.as_dtype(number).name
