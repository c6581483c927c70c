"""Publishing into the model repository: next version, atomic, never overwriting."""
import os
import threading

import pytest

from pipeline.stages.push import publish, versions


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
    assert versions(repo) == [7]
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
    assert versions(repo) == list(range(1, 9))
    assert not [p for p in repo.iterdir() if p.name.startswith(".tmp-")]


def test_a_failed_copy_leaves_no_version_and_no_staging_dir(tmp_path, saved_model):
    repo = tmp_path / "digits"
    os.symlink(tmp_path / "does-not-exist", saved_model / "dangling")
    with pytest.raises(Exception):
        publish(saved_model, repo)
    assert versions(repo) == []
    assert list(repo.iterdir()) == []
