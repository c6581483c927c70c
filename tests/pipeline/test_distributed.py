"""Distributed training: local multi_worker and parameter_server clusters, kill and resume, bad clusters.

The slow tests run the real CLI (`python -m pipeline.run`) on digits with a tiny model, and
check after each that every process the launcher started has exited.
"""
import json
import os
import re
import signal
import subprocess
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from pipeline.artifacts import Inputs, RunInfo
from pipeline.config import ConfigError, load_config
from pipeline.runner import stage_view
from pipeline.errors import StageError
from pipeline.stages import train
from pipeline.training import launcher
from pipeline.training.distribute import is_chief, parse_tf_config, shard_bound_problem
from tests.pipeline_cli import assert_training_artefacts, newest_run, pipeline_command, pipeline_env, run_pipeline

ROOT = Path(__file__).resolve().parents[2]
TINY = ["model.width=8", "train.learning_rate=0.01", "train.early_stopping_patience=0", "train.epochs=6",
        "evaluate.min_accuracy=0"]
TWO_WORKERS = ["train.strategy=multi_worker", "train.workers=2"]


def cli(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    result = run_pipeline(workdir, *TINY, *args, "--until", "evaluate", timeout_s=300)
    assert_all_exited(launched_pids(result.stdout))
    return result


def launched_pids(output: str) -> dict[str, int]:
    return {name: int(pid) for name, pid in re.findall(r"\[launcher\] started (\w+ \d+) \(pid (\d+)\)", output)}


def assert_all_exited(pids: dict[str, int]) -> None:
    for name, pid in pids.items():
        stat = Path(f"/proc/{pid}/stat")
        alive = stat.exists() and stat.read_text().split(")")[-1].split()[0] != "Z"
        assert not alive, f"{name} (pid {pid}) is still running"


def evaluated_accuracy(workdir: Path) -> float:
    run = json.loads((workdir / "runs" / "latest" / "manifest.json").read_text())
    return next(s for s in run["stages"] if s["name"] == "evaluate")["metrics"]["accuracy"]


def epochs_logged(train_dir: Path) -> list[int]:
    return [json.loads(line)["epoch"] for line in (train_dir / "epochs.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory) -> Path:
    """An uninterrupted 2-worker run through the CLI."""
    workdir = tmp_path_factory.mktemp("two_workers")
    result = cli(workdir, *TWO_WORKERS)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert len(launched_pids(result.stdout)) == 2
    return workdir


# -- bad input: fast ---------------------------------------------------------------------------

def test_workers_below_one_is_a_config_error():
    with pytest.raises(ConfigError) as info:
        load_config(None, ["train.workers=0", "train.ps=-1"])
    assert "train.workers: expected a positive integer, received 0." in str(info.value)
    assert "train.ps: expected a positive integer, received -1." in str(info.value)
    with pytest.raises(ValueError, match="workers: expected an integer >= 1, received 0"):
        launcher.launch("os:getcwd", "", workers=0)


@pytest.mark.parametrize("text, message", [
    ("{not json", "TF_CONFIG is not valid JSON"),
    ('["worker"]', "TF_CONFIG needs a 'cluster' mapping and a 'task' mapping"),
    ('{"cluster": {"evaluator": ["a:1"]}, "task": {"type": "evaluator", "index": 0}}',
     "job(s) ['evaluator'], which multi_worker does not use"),
    ('{"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": 2}}',
     "TF_CONFIG task worker:2 is not in the cluster"),
    ('{"cluster": {"chief": ["a:1"]}, "task": {"type": "worker", "index": 0}}',
     "TF_CONFIG task worker:0 is not in the cluster"),
])
def test_malformed_tf_config_says_what_is_wrong(text, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_tf_config(text, "multi_worker")


def test_parameter_server_cluster_without_a_chief_is_rejected():
    text = '{"cluster": {"worker": ["a:1"], "ps": ["b:1"]}, "task": {"type": "worker", "index": 0}}'
    with pytest.raises(ValueError, match=re.escape("for parameter_server has no ['chief'] job")):
        parse_tf_config(text, "parameter_server")


def test_worker_0_is_chief_only_without_a_chief_job():
    worker0 = {"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": 0}}
    assert is_chief(worker0)
    assert not is_chief({**worker0, "task": {"type": "worker", "index": 1}})
    assert not is_chief({**worker0, "cluster": {"chief": ["c:1"], **worker0["cluster"]}})


def test_the_stage_reports_a_bad_tf_config_before_training(tmp_path, monkeypatch):
    monkeypatch.setenv("TF_CONFIG", '{"cluster": {"worker": ["127.0.0.1:1"]}}')
    cfg = stage_view(load_config(None, ["train.strategy=multi_worker"]), train)
    for artefact, file, text in (("hyperparameters", "best.json", "{}"), ("schema", "schema.json", '{"rows": {"train": 1000}}')):
        (tmp_path / artefact).mkdir()
        (tmp_path / artefact / file).write_text(text)
    inputs = Inputs({name: tmp_path / name for name in ("hyperparameters", "schema")}, RunInfo("test", {}))
    with pytest.raises(StageError, match="TF_CONFIG needs a 'cluster' mapping and a 'task' mapping"):
        train.run(cfg, inputs, tmp_path / "out")


FAILING_TASK = """
import json, os, sys, time
def fail_on_worker_1(arg):
    index = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
    print(f"worker {index} says {arg}", flush=True)
    if index == 1:
        sys.exit(3)
    time.sleep(600)
"""


def test_a_failing_worker_stops_the_others_and_is_named(tmp_path, monkeypatch):
    (tmp_path / "failing_task.py").write_text(FAILING_TASK)
    monkeypatch.setenv("PYTHONPATH", f"{tmp_path}{os.pathsep}{ROOT}")
    lines = []
    with pytest.raises(launcher.TaskFailed) as info:
        launcher.launch("failing_task:fail_on_worker_1", "hello", workers=3, log=lines.append)
    assert str(info.value).startswith("worker 1 exited with code 3; the other tasks were stopped.")
    assert "worker 1 says hello" in str(info.value)
    assert "[worker 1] worker 1 says hello" in lines
    pids = launched_pids("\n".join(lines))
    assert len(pids) == 3
    assert_all_exited(pids)


@pytest.mark.parametrize("overrides, message", [
    (["train.partition=fixed"], "train.partition: 'fixed' shards variables across parameter servers; it needs "
                                "train.strategy=parameter_server, received 'default'"),
    (["train.strategy=parameter_server", "train.ps=2", "train.partition=fixed", "train.partition_shards=3"],
     "train.partition_shards: 3 shards over train.ps=2 parameter servers: TensorFlow would place them round robin"),
    (["train.partition_shards=2"], "train.partition_shards: set (2) but train.partition is 'none'"),
    (["train.strategy=parameter_server", "train.partition=min_size", "train.partition_max_shard_bytes=64"],
     "train.partition_max_shard_bytes: applies to train.partition='max_size', not 'min_size'"),
    (["train.strategy=parameter_server", "train.partition=max_size"],
     "train.partition_max_shard_bytes: expected a positive number of bytes, received 0"),
])
def test_bad_partition_settings_are_config_errors(overrides, message):
    with pytest.raises(ConfigError) as info:
        load_config(None, overrides)
    assert message in str(info.value)


def test_a_max_shard_size_below_one_row_is_refused_with_the_row_size():
    import tensorflow as tf

    table = tf.Variable(tf.zeros([1000, 16]), name="embedding/embeddings")
    too_small = load_config(None, ["train.strategy=parameter_server", "train.partition=max_size",
                                   "train.partition_max_shard_bytes=32"]).train
    assert shard_bound_problem(too_small, [table]) == (
        "train.partition_max_shard_bytes: 32 bytes is less than one row of embedding/embeddings:0 (64 bytes: [16] x "
        "float32); a shard holds whole rows: expected at least 64.")
    assert shard_bound_problem(replace(too_small, partition_max_shard_bytes=64), [table]) is None


def test_a_dead_parameter_server_ends_the_run_and_says_how_to_resume(tmp_path, monkeypatch):
    (tmp_path / "failing_task.py").write_text(FAILING_TASK)
    monkeypatch.setenv("PYTHONPATH", f"{tmp_path}{os.pathsep}{ROOT}")
    lines = []

    def log(line):
        lines.append(line)
        if line.startswith("[launcher] started ps 0"):
            os.kill(int(re.search(r"pid (\d+)", line).group(1)), signal.SIGKILL)

    with pytest.raises(launcher.TaskFailed) as info:
        launcher.launch("failing_task:fail_on_worker_1", "hello", workers=1, ps=1, log=log)
    assert str(info.value).startswith("ps 0 was killed by SIGKILL; TensorFlow cannot go on without a parameter "
                                      "server (the variables it held are gone); run the stage again: it resumes "
                                      "after the last epoch it backed up")
    assert_all_exited(launched_pids("\n".join(lines)))


# -- real training through the CLI: slow -------------------------------------------------------

@pytest.mark.slow
@pytest.mark.xdist_group("two_workers")  # the fixture they share runs once, on one worker
def test_two_workers_match_one_at_the_same_global_batch(two_workers, tmp_path):
    one = cli(tmp_path, "train.strategy=default")
    assert one.returncode == 0, one.stderr[-3000:]
    log = (two_workers / "runs" / "latest" / "train" / "log.txt").read_text()
    assert "[worker 0] train: cnn" in log and "[worker 1] train: cnn" in log
    assert "strategy multi_worker with 2 replica(s), global batch 64" in log
    assert epochs_logged(two_workers / "runs" / "latest" / "train") == [1, 2, 3, 4, 5, 6]
    assert abs(evaluated_accuracy(two_workers) - evaluated_accuracy(tmp_path)) <= 0.01


@pytest.mark.slow
@pytest.mark.xdist_group("two_workers")  # the fixture they share runs once, on one worker
def test_the_custom_loop_on_two_workers_matches_fit(two_workers, tmp_path):
    result = cli(tmp_path, *TWO_WORKERS, "train.loop=custom")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    log = (tmp_path / "runs" / "latest" / "train" / "log.txt").read_text()
    assert "[worker 1] train: cnn" in log and "strategy multi_worker with 2 replica(s)" in log
    assert epochs_logged(tmp_path / "runs" / "latest" / "train") == [1, 2, 3, 4, 5, 6]
    assert abs(evaluated_accuracy(tmp_path) - evaluated_accuracy(two_workers)) <= 0.02
    for run in (tmp_path, two_workers):  # the same artefacts as fit's
        assert_training_artefacts(run / "runs" / "latest" / "train", epochs=6)


def interactions(path: Path, users: int = 200, items: int = 3000, rows: int = 6000) -> Path:
    """Clicks decided by the user's tendency and the item's appeal: two categorical columns, so the
    recommender embeds a user table and an item table (one row per value seen in the train split)."""
    rng = np.random.default_rng(0)
    tendency, appeal = rng.normal(size=users), rng.normal(size=items)
    with path.open("w") as f:
        f.write("user,hour,item,label\n")
        for user, item, hour in zip(rng.integers(users, size=rows), rng.integers(items, size=rows),
                                    rng.uniform(0, 24, size=rows)):
            f.write(f"u{user},{hour:.2f},i{item},{'click' if 2 * tendency[user] + appeal[item] > 0 else 'skip'}\n")
    return path


@pytest.mark.slow
def test_parameter_servers_hold_shards_of_the_embedding_and_a_killed_worker_is_survived(tmp_path):
    source = interactions(tmp_path / "interactions.csv")
    process = subprocess.Popen(pipeline_command(
        f"data.source={source}", "data.label=label", "data.categorical=[user, item]", "data.input_shape=[]",
        "model.name=recommender", "model.width=8", "model.depth=1", "train.learning_rate=0.01",
        "train.early_stopping_patience=0", "train.epochs=5", "train.strategy=parameter_server", "train.workers=2",
        "train.ps=2", "train.partition=min_size", "train.partition_min_shard_bytes=16384",
        "evaluate.min_accuracy=0.7", "compress.variants=[]", "compress.tflite=[]", "--until", "infra_validate"),
        cwd=tmp_path, env=pipeline_env(), text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    output = []
    for line in process.stdout:
        output.append(line)
        if line.startswith("[chief 0] Epoch 3/5"):  # mid-training: the coordinator must move its steps
            os.kill(launched_pids("".join(output))["worker 1"], signal.SIGKILL)
    output, stderr = "".join(output), process.stderr.read()
    assert process.wait(timeout=60) == 0, output[-3000:] + stderr[-3000:]
    assert "[launcher] worker 1 was killed by SIGKILL; the coordinator reschedules its steps on the 1 worker(s) left" \
        in output
    assert_all_exited(launched_pids(output))
    train_dir = tmp_path / "runs" / "latest" / "train"
    placement = {v["name"]: v for v in json.loads((train_dir / "placement.json").read_text())}
    assert len(placement["embedding/embeddings"]["shards"]) == 1  # 201 users x 8 x 4 bytes < 16 KiB: whole
    table = placement["embedding_1/embeddings"]  # the items
    assert sorted(s["device"] for s in table["shards"]) == [f"/job:ps/replica:0/task:{i}/device:CPU:0" for i in (0, 1)]
    rows = table["shape"][0]  # the vocabulary seen in the train split, and row 0 for values out of it
    assert rows > 2000 and [s["rows"] for s in table["shards"]] == [[0, rows // 2 + rows % 2 - 1], [rows // 2 + rows % 2, rows - 1]]
    assert all(len(v["shards"]) == 1 for name, v in placement.items() if name.startswith("dense"))
    assert epochs_logged(train_dir) == [1, 2, 3, 4, 5]
    assert evaluated_accuracy(tmp_path) >= 0.7  # evaluated on one machine, from the joined table
    served = json.loads((tmp_path / "runs" / "latest" / "infra_validate" / "infra_validation" / "report.json").read_text())
    assert max(served["max_abs_difference"].values()) <= served["tolerance"]  # the server answers as in training


@pytest.mark.slow
@pytest.mark.xdist_group("two_workers")  # the fixture they share runs once, on one worker
def test_a_killed_worker_resumes_without_repeating_or_losing_epochs(two_workers, tmp_path):
    first = subprocess.Popen(pipeline_command(*TINY, *TWO_WORKERS, "--until", "evaluate"), cwd=tmp_path,
                             env=pipeline_env(), text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    output = []
    for line in first.stdout:  # "Epoch 3/6" is printed once epoch 2 is backed up and logged
        output.append(line)
        if line.startswith("[worker 0] Epoch 3/6"):
            os.kill(launched_pids("".join(output))["worker 1"], signal.SIGKILL)
    output.append(first.stdout.read())
    stderr = first.stderr.read()
    assert first.wait(timeout=60) == 1
    assert "Stage 'train' failed: worker 1 was killed by SIGKILL; the other tasks were stopped." in stderr
    assert_all_exited(launched_pids("".join(output)))
    run_id = newest_run(tmp_path / "runs").name
    before = epochs_logged(tmp_path / "runs" / run_id / "train.failed")

    second = cli(tmp_path, *TWO_WORKERS)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    after = epochs_logged(tmp_path / "runs" / "latest" / "train")
    assert before[-1] >= 2 and after[0] == before[-1] + 1
    assert before + after == [1, 2, 3, 4, 5, 6]
    assert abs(evaluated_accuracy(tmp_path) - evaluated_accuracy(two_workers)) <= 0.01
