"""The model repository: what a version is, and publishing: next version, atomic, never overwriting."""
import os
import threading

import pytest

from repository import name_problem, publish, versions


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
