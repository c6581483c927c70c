"""The push stage on real exported SavedModels: nothing reaches the repository unchecked, nothing twice,
nothing that breaks the clients of the served version, and no smoke-test server outlives the pipeline."""
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import repository
from pipeline.artifacts import Inputs, RunInfo
from pipeline.config import load_config
from pipeline.errors import StageError
from pipeline.runner import stage_view
from pipeline.stages import push
from tests.exported import export

pytestmark = pytest.mark.xdist_group("test_push")  # its module-scoped fixture runs once, on one worker


ROOT = Path(__file__).resolve().parents[2]


def view(repo: Path, *overrides: str):
    return stage_view(load_config(None, [f"push.repository={repo}", "push.smoke_test=false", *overrides]), push)


def stage_inputs(run_dir: Path, candidate: Path) -> Inputs:
    """What push reads, laid out as the runner hands it over: <run dir>/<stage>/<artefact>, and the run."""
    files = {"evaluation/metrics.json": '{"accuracy": 0.9}', "saved_model_evaluation/metrics.json": '{"accuracy": 0.8}',
             "compressed/selection.json": '{"selected": "baseline"}', "dataset/train.npz": "rows",
             "infra_validation/report.json": '{"skipped": true}'}
    for name, text in files.items():
        (run_dir / "stage" / name).parent.mkdir(parents=True, exist_ok=True)
        (run_dir / "stage" / name).write_text(text)
    (run_dir / "export").mkdir(exist_ok=True)
    if not (run_dir / "export" / "saved_model").exists():
        (run_dir / "export" / "saved_model").symlink_to(candidate)
    artefacts = {"saved_model": run_dir / "export" / "saved_model",
                 **{a: run_dir / "stage" / a for a in ("evaluation", "saved_model_evaluation", "compressed",
                                                       "infra_validation", "dataset")}}
    return Inputs(artefacts, RunInfo(run_dir.name, {"seed": 42}))


def push_run(tmp_path: Path, candidate: Path, *overrides: str) -> dict:
    run_dir = tmp_path / f"run-{time.monotonic_ns()}"
    (run_dir / "out").mkdir(parents=True)
    return push.run(view(tmp_path / "repo", *overrides), stage_inputs(run_dir, candidate), run_dir / "out")


def entries(model_dir: Path) -> list[str]:
    return sorted(p.name for p in model_dir.iterdir() if p.name != repository.LAST_ISSUED)


@pytest.fixture(scope="module")
def candidates(tmp_path_factory):
    root = tmp_path_factory.mktemp("candidates")
    return {"64": export(root / "64", 64), "64b": export(root / "64b", 64, seed=1), "30": export(root / "30", 30),
            "64e": export(root / "64e", 64, explain=True)}


def test_a_push_that_would_break_clients_is_refused_with_the_differences(tmp_path, candidates):
    assert push_run(tmp_path, candidates["64"])["version"] == 1
    with pytest.raises(StageError) as info:
        push_run(tmp_path, candidates["30"])
    message = str(info.value)
    assert "clients of version 1 would break" in message
    assert "signature 'serving_default': input 'x' was float32 [-1, 64], is now float32 [-1, 30]" in message
    assert "push.model_name=" in message and "push.allow_signature_change=true" in message
    assert entries(tmp_path / "repo" / "digits") == ["1"]
    assert push_run(tmp_path, candidates["30"], "push.allow_signature_change=true")["version"] == 2


def test_adding_the_explain_signature_breaks_no_client_and_removing_it_does(tmp_path, candidates):
    assert push_run(tmp_path, candidates["64"])["version"] == 1
    assert push_run(tmp_path, candidates["64e"])["version"] == 2  # a new signature: clients of 1 keep working
    assert "explain" in repository.signatures(tmp_path / "repo" / "digits" / "2")
    with pytest.raises(StageError, match="signature 'explain' is gone"):
        push_run(tmp_path, candidates["64b"])  # its clients may call explain (export.explain=false, say)


def test_the_same_model_is_not_published_twice(tmp_path, candidates):
    first = push_run(tmp_path, candidates["64"])
    again = push_run(tmp_path, candidates["64"])
    assert (first["version"], first["published"]) == (1, True)
    assert (again["version"], again["published"]) == (1, False)
    assert push_run(tmp_path, candidates["64b"])["version"] == 2
    assert entries(tmp_path / "repo" / "digits") == ["1", "2"]
    assert repository.lineage(tmp_path / "repo" / "digits" / "2")["content"] != \
        repository.lineage(tmp_path / "repo" / "digits" / "1")["content"]
    lineage = repository.lineage(tmp_path / "repo" / "digits" / "1")  # its own figures, and the trained model's
    assert (lineage["metrics"], lineage["trained_metrics"]) == ({"accuracy": 0.8}, {"accuracy": 0.9})


def test_a_cached_push_holds_only_while_its_version_holds_its_model(tmp_path, candidates):
    result = push_run(tmp_path, candidates["64"])
    cfg = view(tmp_path / "repo")
    assert push.check_cached(cfg, result) is None
    version_dir = Path(result["path"])
    repository.write_lineage(version_dir, {**repository.lineage(version_dir), "content": "another model"})
    assert push.check_cached(cfg, result) == f"version 1 in {version_dir.parent} no longer holds the model it published"
    shutil.rmtree(version_dir)  # as `registry gc` deletes it
    assert push.check_cached(cfg, result) == f"version 1 it published is gone from {version_dir.parent}"


def test_a_candidate_that_does_not_serve_is_never_published(tmp_path, candidates):
    with pytest.raises(StageError, match="did not serve, so it was not published"):
        push_run(tmp_path, candidates["64"], "push.smoke_test=true", "push.smoke_test_timeout_s=0.01")
    assert entries(tmp_path / "repo" / "digits") == []


def test_no_second_smoke_test_for_a_candidate_infra_validate_served(tmp_path, candidates, capsys):
    run_dir = tmp_path / "run"
    (run_dir / "out").mkdir(parents=True)
    inputs = stage_inputs(run_dir, candidates["64"])
    (inputs["infra_validation"] / "report.json").write_text('{"p99_ms": 3.0, "rows": 8}')
    result = push.run(view(tmp_path / "repo", "push.smoke_test=true"), inputs, run_dir / "out")
    assert result["version"] == 1 and "smoke_latency_ms" not in result
    assert "infra_validate served this SavedModel over REST and gRPC in this run; no second smoke test" in \
        capsys.readouterr().out


@pytest.mark.slow
def test_concurrent_pushes_each_smoke_test_their_own_candidate(tmp_path, candidates):
    results, errors = [], []

    def push_one(candidate):
        try:
            results.append(push_run(tmp_path, candidate, "push.smoke_test=true"))
        except Exception as e:  # noqa: BLE001 -- collected and asserted below
            errors.append(e)

    threads = [threading.Thread(target=push_one, args=(candidates[name],)) for name in ("64", "64b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sorted(r["version"] for r in results) == [1, 2] and all(r["smoke_latency_ms"] > 0 for r in results)
    assert entries(tmp_path / "repo" / "digits") == ["1", "2"]


PUSH_WITH_SMOKE = """
import sys
from pathlib import Path
from pipeline.config import load_config
from pipeline.runner import stage_view
from pipeline.stages import push
from tests.exported import export
from tests.pipeline.test_push import stage_inputs
cfg = stage_view(load_config(None, [f"push.repository={sys.argv[1]}", "push.smoke_test=true"]), push)
push.run(cfg, stage_inputs(Path(sys.argv[3]), Path(sys.argv[2])), Path(sys.argv[3]))
"""


def smoke_servers(base: Path) -> list[int]:
    """Pids of `python -m serving` processes serving something under `base`."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        if b"serving" in args and any(a.startswith(f"--model_base_path={base}".encode()) for a in args):
            found.append(int(cmdline.parent.name))
    return found


@pytest.mark.slow
def test_a_pipeline_killed_during_the_smoke_test_leaves_no_server_and_no_version(tmp_path, candidates):
    out = tmp_path / "out"
    out.mkdir()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    pipeline = subprocess.Popen([sys.executable, "-c", PUSH_WITH_SMOKE, str(tmp_path / "repo"), str(candidates["64"]),
                                 str(out)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    model_dir = tmp_path / "repo" / "digits"
    deadline = time.monotonic() + 60
    while not smoke_servers(model_dir) and time.monotonic() < deadline:
        time.sleep(0.2)
    servers = smoke_servers(model_dir)
    assert servers, "the smoke-test server never started"
    pipeline.send_signal(signal.SIGKILL)
    pipeline.wait()
    deadline = time.monotonic() + 10
    while smoke_servers(model_dir) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert smoke_servers(model_dir) == []
    assert repository.versions(model_dir) == {}
    assert push_run(tmp_path, candidates["64"])["version"] == 1  # and the killed run's staging dir is gone
    assert entries(model_dir) == ["1"]


@pytest.mark.slow  # a server
def test_a_row_of_the_wrong_width_is_refused_by_the_model_itself_over_rest_grpc_and_classify(candidates, tmp_path):
    """The check is in the SavedModel's graph, so tensorflow_model_server answers the same 400 / INVALID_ARGUMENT,
    to predict, classify and explain alike."""
    import requests

    from localhost.ports import free_port
    from serving.client import GrpcClient, ServingClientError
    from serving.process import ServerProcess

    repository.publish(candidates["64e"], tmp_path / "digits")
    grpc_port = free_port()
    server = ServerProcess(f"--model_base_path={tmp_path / 'digits'}", "--model_name=digits", f"--port={grpc_port}",
                           log_dir=tmp_path)
    try:
        server.wait_available("digits")
        rest = requests.post(f"{server.url}/v1/models/digits:predict", json={"instances": [[1.0] * 63]}, timeout=30)
        assert rest.status_code == 400 and "x must hold 64 numbers per row, received 63" in rest.json()["error"]
        with GrpcClient(f"127.0.0.1:{grpc_port}") as client, pytest.raises(ServingClientError) as info:
            client.predict("digits", np.ones((1, 63), np.float32))
        assert info.value.status == "INVALID_ARGUMENT"
        assert "x must hold 64 numbers per row, received 63" in info.value.message
        classify = requests.post(f"{server.url}/v1/models/digits:classify", json={
            "signature_name": "classify", "examples": [{"x": [1.0] * 63}]}, timeout=30)
        assert classify.status_code == 400 and "Feature: x must hold 64 numbers" in classify.json()["error"]
        explain = requests.post(f"{server.url}/v1/models/digits:predict", json={
            "signature_name": "explain", "instances": [[1.0] * 63]}, timeout=30)  # explain: the same check, the same words
        assert explain.status_code == 400 and "x must hold 64 numbers per row, received 63" in explain.json()["error"]
        with GrpcClient(f"127.0.0.1:{grpc_port}") as client, pytest.raises(ServingClientError) as info:
            client.predict("digits", np.ones((1, 63), np.float32), signature_name="explain")
        assert info.value.status == "INVALID_ARGUMENT" and "x must hold 64 numbers per row" in info.value.message
    finally:
        server.stop()


def test_the_exported_signatures_take_whole_numbers_and_refuse_nan(candidates):
    import tensorflow as tf

    loaded = tf.saved_model.load(str(candidates["64"]))
    rows = np.arange(128, dtype=np.float32).reshape(2, 64)

    def example(values):
        feature = tf.train.Feature(int64_list=tf.train.Int64List(value=values)) if isinstance(values[0], int) \
            else tf.train.Feature(float_list=tf.train.FloatList(value=values))
        return tf.train.Example(features=tf.train.Features(feature={"x": feature})).SerializeToString()

    as_floats = loaded.signatures["classify"](inputs=tf.constant([example(r.tolist()) for r in rows]))["scores"]
    as_ints = loaded.signatures["classify"](inputs=tf.constant([example([int(v) for v in r]) for r in rows]))["scores"]
    np.testing.assert_array_equal(as_floats.numpy(), as_ints.numpy())
    predicted = loaded.signatures["serving_default"](x=tf.constant(rows))["probabilities"]
    np.testing.assert_allclose(predicted.numpy(), as_floats.numpy(), rtol=1e-6)
    with pytest.raises(tf.errors.InvalidArgumentError, match="input 'x' must hold finite numbers"):
        loaded.signatures["serving_default"](x=tf.constant(np.full((1, 64), np.nan, np.float32)))
    with pytest.raises(tf.errors.InvalidArgumentError, match="Feature: x must hold 64 numbers"):
        loaded.signatures["classify"](inputs=tf.constant([example([1.0, 2.0])]))
