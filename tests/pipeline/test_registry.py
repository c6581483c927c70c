"""The model registry: records, labels and their history, repair after a crash, bad input, and label
changes reaching a running server with load in flight (no failed request, visible at once)."""
import asyncio
import re
import shutil
import sqlite3
import threading
import time
from pathlib import Path

import pytest
import requests

import repository
from localhost import loadgen
from localhost.ports import free_port
from pipeline.registry import MIGRATIONS, NotInRegistry, Registry, RegistryError
from pipeline.registry.__main__ import main
from serving.model_config import load_model_server_config
from serving.process import ServerProcess


@pytest.fixture
def repo(tmp_path, half_plus_two_base) -> Path:
    """hpt versions 1-3 published with lineage, as push leaves them; the registry opened once."""
    root = tmp_path / "repo"
    for version in (1, 2, 3):
        source = tmp_path / f"v{version}"
        shutil.copytree(half_plus_two_base / "123", source)
        repository.write_lineage(source, {"run_id": f"run-{version}", "metrics": {"accuracy": 0.9 + version / 100},
                                          "config": {"train": {"epochs": 10 * version}, "seed": 42},
                                          "saved_model_bytes": 1000 * version, "variant": "baseline"})
        repository.publish(source, root / "hpt")
    Registry(root).close()
    return root


def run_cli(repo: Path, *args: str) -> int:
    return main(["--repository", str(repo), *args])


def test_versions_are_recorded_from_their_lineage_and_a_crash_is_repaired(repo):
    with Registry(repo) as registry:
        assert [(r["version"], r["run_id"], r["metrics"]["accuracy"]) for r in registry.versions("hpt")] == \
            [(3, "run-3", 0.93), (2, "run-2", 0.92), (1, "run-1", 0.91)]
    shutil.rmtree(repo / "hpt" / "2")  # deleted behind the registry's back
    source = repo.parent / "v4"
    shutil.copytree(repo / "hpt" / "3", source)
    repository.write_lineage(source, {"run_id": "run-4", "metrics": {"accuracy": 0.99}})
    repository.publish(source, repo / "hpt")  # published, then the pipeline died before recording it
    with Registry(repo) as registry:
        assert [r["version"] for r in registry.versions("hpt")] == [4, 3, 1]
        assert registry.get("hpt", 4)["run_id"] == "run-4"
        assert registry.versions("hpt", include_deleted=True)[2]["deleted"]


def test_labels_have_a_history_and_become_the_servers_config(repo, capsys):
    assert run_cli(repo, "label", "hpt", "stable", "1") == 0
    assert run_cli(repo, "label", "hpt", "canary", "3") == 0
    assert run_cli(repo, "promote", "hpt") == 0
    assert "hpt: stable -> version 3 (acc 0.9300; was 1)" in capsys.readouterr().out  # its own test figure
    config = load_model_server_config(str(repo / "models.config"))
    (model,) = config.model_config_list.config
    assert dict(model.version_labels) == {"stable": 3, "canary": 3}
    assert list(model.model_version_policy.specific.versions) == [3]
    assert run_cli(repo, "rollback", "hpt") == 0
    with Registry(repo) as registry:
        assert registry.labels("hpt") == {"stable": 1, "canary": 3}
        assert [(h["previous"], h["version"], h["action"]) for h in registry.history("hpt", "stable")] == [
            (None, 1, "label"), (1, 3, "promote from canary"), (3, 1, "rollback")]
    assert run_cli(repo, "list", "hpt") == 0
    listing = capsys.readouterr().out
    assert "acc 0.9100" in listing and "stable" in listing and "run-3" in listing


def test_a_models_logging_is_set_kept_through_label_changes_and_turned_off(repo, capsys, monkeypatch):
    monkeypatch.chdir(repo.parent)
    assert run_cli(repo, "logging", "hpt", "--filename-prefix", "logs/hpt", "--sampling-rate", "0.25") == 0
    prefix = str(repo.parent / "logs" / "hpt")  # as given, from where the command ran: a server runs elsewhere
    assert f"hpt: 25% of requests logged to {prefix}-* (PredictionLog TFRecords)" in capsys.readouterr().out
    assert run_cli(repo, "label", "hpt", "stable", "2") == 0  # models.config rewritten: the logging stays
    (model,) = load_model_server_config(str(repo / "models.config")).model_config_list.config
    assert (model.logging_config.log_collector_config.type, model.logging_config.log_collector_config.filename_prefix,
            model.logging_config.sampling_config.sampling_rate) == ("tfrecord", prefix, 0.25)
    assert dict(model.version_labels) == {"stable": 2}
    assert run_cli(repo, "logging", "hpt", "--off") == 0
    (model,) = load_model_server_config(str(repo / "models.config")).model_config_list.config
    assert not model.HasField("logging_config") and dict(model.version_labels) == {"stable": 2}
    assert run_cli(repo, "logging", "hpt", "--filename-prefix", "x", "--sampling-rate", "2") == 2
    assert "--sampling-rate: expected a share of requests from 0 to 1, received 2.0" in capsys.readouterr().err


@pytest.mark.parametrize("args, message", [
    (("label", "nope", "stable", "1"), "no model 'nope' in"),
    (("label", "hpt", "stable", "9"), "version 9 of model 'hpt' does not exist; versions: [3, 2, 1]"),
    (("label", "hpt", "7up", "1"), None),  # a label may start with a digit, just not be a number
    (("label", "hpt", "12", "1"), "a label cannot be a number"),
    (("label", "hpt", "../x", "1"), "expected letters, digits"),
    (("promote", "hpt", "--from", "beta"), "model 'hpt' has no label 'beta'; its labels: none"),
    (("show", "hpt", "latest"), "model 'hpt' has no label 'latest'"),
])
def test_bad_names_are_one_line_and_exit_2(repo, capsys, args, message):
    code = run_cli(repo, *args)
    if message is None:
        assert code == 0
        return
    error = capsys.readouterr().err
    assert code == 2 and message in error and error.count("\n") == 1


def test_rollback_without_history_and_a_label_on_a_deleted_version_are_refused(repo, capsys):
    assert run_cli(repo, "rollback", "hpt") == 1
    assert "label 'stable' of 'hpt' has no earlier version to go back to" in capsys.readouterr().err
    run_cli(repo, "label", "hpt", "stable", "1")
    run_cli(repo, "label", "hpt", "stable", "2")
    shutil.rmtree(repo / "hpt" / "1")
    assert run_cli(repo, "rollback", "hpt") == 2
    assert "version 1 of model 'hpt' was deleted" in capsys.readouterr().err


def test_gc_keeps_labelled_and_newest_versions(repo, capsys):
    run_cli(repo, "label", "hpt", "stable", "1")
    source = repo.parent / "v4"
    shutil.copytree(repo / "hpt" / "3", source)
    repository.publish(source, repo / "hpt")
    assert run_cli(repo, "gc", "hpt", "--keep", "1", "--no-server") == 0  # no server asked: said so below
    assert "deleted versions [2, 3]" in capsys.readouterr().out
    assert sorted(repository.versions(repo / "hpt")) == [1, 4]
    assert [p.name for p in (repo / "hpt").iterdir() if p.name.startswith(".deleting")] == []


def test_diff_shows_metrics_and_config_changes_whole(repo, capsys):
    assert main(["diff", "hpt", "1", "3", "--repository", str(repo)]) == 0  # options after the command too
    out = capsys.readouterr().out
    assert "metrics.accuracy" in out and "0.91" in out and "0.93" in out
    assert "config: 1 key(s) differ" in out and "train.epochs" in out
    with Registry(repo) as registry:
        created = registry.get("hpt", 1)["created"]
    assert re.search(rf"^[* ] created +{re.escape(created)} +\S+$", out, re.M)  # whole, not cut to 20 characters


def test_a_locked_or_corrupt_database_is_explained(repo, capsys):
    holder = sqlite3.connect(repo / "registry.sqlite", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(RegistryError, match="is locked by another process"):
            Registry(repo, timeout_s=0.2)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    run_cli(repo, "label", "hpt", "stable", "2")
    (repo / "registry.sqlite").write_bytes(b"this is not a database" * 100)
    assert run_cli(repo, "list") == 1
    assert "is not a readable SQLite database" in capsys.readouterr().err
    (repo / "registry.sqlite").rename(repo / "broken.sqlite")  # as the message says: move it aside
    with Registry(repo) as registry:  # rebuilt from the versions' maas.json and models.config
        assert [r["version"] for r in registry.versions("hpt")] == [3, 2, 1]
        assert registry.labels("hpt") == {"stable": 2}


def test_a_newer_schema_is_refused(repo):
    with sqlite3.connect(repo / "registry.sqlite") as db:
        db.execute("UPDATE schema_version SET version = 99")
    with pytest.raises(RegistryError, match=f"schema version 99, newer than this program's {len(MIGRATIONS)}"):
        Registry(repo)


def test_unknown_names_raise_not_in_registry(repo):
    with Registry(repo) as registry, pytest.raises(NotInRegistry):
        registry.resolve("hpt", "label:stable")


def visible_within(url: str, label: str, version: int, limit_s: float = 2.0) -> float:
    """Seconds until `label` answers with `version` (asserting it does within `limit_s`)."""
    started = time.monotonic()
    while True:
        answer = requests.get(f"{url}/v1/models/hpt/labels/{label}/metadata", timeout=5)
        if answer.status_code == 200 and answer.json()["model_spec"]["version"] == str(version):
            return time.monotonic() - started
        assert time.monotonic() - started < limit_s, answer.text
        time.sleep(0.02)


@pytest.mark.slow
def test_canary_promote_and_rollback_on_a_live_server_drop_nothing(repo, capsys):
    """push -> label canary -> promote to stable -> roll back, each applied to a running server while an
    open-loop load asks the stable label: zero failed requests, each change visible when the command returns."""
    assert run_cli(repo, "label", "hpt", "stable", "1") == 0
    grpc_port = free_port()
    server = ServerProcess(f"--model_config_file={repo / 'models.config'}", f"--port={grpc_port}",
                           "--allow_version_labels_for_unavailable_models", log_dir=repo.parent)
    target = ["--server", f"127.0.0.1:{grpc_port}"]
    try:
        server.wait_available("hpt", 1)
        load = {}
        thread = threading.Thread(target=lambda: load.update(asyncio.run(loadgen.open_loop(
            f"{server.url}/v1/models/hpt/labels/stable:predict", b'{"instances": [1.0]}', rate=100, seconds=12))))
        thread.start()
        seen = {}
        for command, label, version in [(("label", "hpt", "canary", "3"), "canary", 3),
                                        (("promote", "hpt"), "stable", 3),
                                        (("rollback", "hpt"), "stable", 1)]:
            assert run_cli(repo, *command, *target) == 0, capsys.readouterr().err
            seen[command[0]] = visible_within(server.url, label, version)
        thread.join()
        status = {s["version"]: s["state"] for s in requests.get(f"{server.url}/v1/models/hpt", timeout=5).json()[
            "model_version_status"]}
    finally:
        server.stop()
    assert load["errors"] == {} and load["ok"] == load["requests"] == 1200, load
    assert all(seconds < 2.0 for seconds in seen.values()), seen
    assert status == {"3": "AVAILABLE", "1": "AVAILABLE", "2": "END"} or status["1"] == "AVAILABLE"
    print(f"label changes visible after {seen} s; {load['ok']} requests, p99 {load['p99_ms']:.1f} ms")


@pytest.mark.slow
def test_a_server_that_cannot_be_reached_changes_nothing(repo, capsys):
    run_cli(repo, "label", "hpt", "stable", "1")
    config = (repo / "models.config").read_text()
    assert run_cli(repo, "label", "hpt", "stable", "2", "--server", f"127.0.0.1:{free_port()}", "--timeout-s", "2") == 1
    assert "refused moving label 'stable' of 'hpt' to version 2 (UNAVAILABLE" in capsys.readouterr().err
    with Registry(repo) as registry:
        assert registry.labels("hpt") == {"stable": 1}
    assert (repo / "models.config").read_text() == config


@pytest.mark.slow
def test_gc_deletes_no_version_a_server_serves_or_models_config_names_and_says_what_it_checked(repo, capsys):
    """gc --keep 1 without --server deleted version 2 while a server served it (185 of 299 requests then 404) and
    said it had kept what was "served". Now without --server it deletes nothing unless told --no-server, keeps
    what models.config names, and asks the server it is given."""
    assert run_cli(repo, "gc", "hpt", "--keep", "1") == 2
    assert "gc would delete versions [1, 2] of 'hpt', but no server was asked" in capsys.readouterr().err
    assert sorted(repository.versions(repo / "hpt")) == [1, 2, 3]
    config = repo.parent / "served.config"  # a server of its own config: every version
    config.write_text(f'model_config_list {{ config {{ name: "hpt" base_path: "{repo / "hpt"}" '
                          f'model_platform: "tensorflow" model_version_policy {{ all {{}} }} }} }}')
    grpc_port = free_port()
    server = ServerProcess(f"--model_config_file={config}", f"--port={grpc_port}", log_dir=repo.parent)
    try:
        server.wait_available("hpt", 1)
        server.wait_available("hpt", 2)
        assert run_cli(repo, "gc", "hpt", "--keep", "1", "--server", f"127.0.0.1:{grpc_port}") == 0
        assert capsys.readouterr().out.strip() == (f"hpt: deleted versions none; kept [1, 2, 3] (newest 1, labelled, "
                                                   f"named by models.config, served by 127.0.0.1:{grpc_port})")
    finally:
        server.stop()
    (repo / "models.config").write_text(f'model_config_list {{ config {{ name: "hpt" base_path: "{repo / "hpt"}" '
                                        f'model_platform: "tensorflow" model_version_policy {{ specific {{ '
                                        f'versions: 1 }} }} }} }}')
    assert run_cli(repo, "gc", "hpt", "--keep", "1", "--no-server") == 0
    assert capsys.readouterr().out.strip() == ("hpt: deleted versions [2]; kept [1, 3] (newest 1, labelled, named by "
                                               "models.config); no server asked (--no-server)")

