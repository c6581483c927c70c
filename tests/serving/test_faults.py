"""Faults around a serving model, each under an open-loop predict load on the real server: hot swaps, versions
copied in slowly or broken, late variables, a removed version directory, a publisher SIGKILLed during push, a
config file rewritten with errors. No request may fail, nothing half-loaded may serve, and the status says
what happened without a traceback or a path outside the model base path.

One server (module fixture) serves one model per fault, from a config file it re-reads every second."""
from __future__ import annotations

import asyncio
import random
import re
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from repo_files import write_config

from localhost import loadgen
import repository
from pipeline.registry import Registry
from serving.process import ServerProcess

pytestmark = pytest.mark.xdist_group("test_faults")  # its module-scoped server starts once, in one worker
RETRY_FLAGS = ("--max_num_load_retries=2", "--load_retry_interval_micros=500000")  # retries after 0.5 s, then 1 s


class OpenLoad:
    """Predict requests for one model at a fixed rate whether or not earlier ones were answered
    (localhost.loadgen, in runs of 1 s on a thread) while in the `with` block; counts requests and
    failures by kind."""

    def __init__(self, url: str, model: str, rate: float = 50):
        self.requests, self.errors = 0, Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(f"{url}/v1/models/{model}:predict", rate))

    def __enter__(self) -> OpenLoad:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self, target: str, rate: float) -> None:
        while not self._stop.is_set():
            try:
                result = asyncio.run(loadgen.open_loop(target, b'{"instances": [1.0]}', rate, 1.0, connections=8))
            except Exception as e:  # noqa: BLE001 -- the generator itself failed on an answer: count it, stop
                self.errors[f"load generator: {type(e).__name__}: {e}"] += 1
                return
            self.requests += result["requests"]
            self.errors.update(result["errors"])


@dataclass
class Faults:
    server: ServerProcess
    config: Path
    models: list[tuple[str, Path, str]]  # (name, base path, ModelConfig text) as in the config file
    plus_three: Path  # a half_plus_two SavedModel answering 0.5 * x + 3, to tell a new version's answers
    pusher: subprocess.Popen

    def base(self, model: str) -> Path:
        return next(base for name, base, _ in self.models if name == model)

    def push(self, saved_model: Path, kill_after_s: float) -> tuple[str, float]:
        """One run of the push stage in the pusher (pusher.py), SIGKILLed after `kill_after_s` if still running:
        finished, killed or failed, and how long it ran."""
        self.pusher.stdin.write(f"{saved_model} {kill_after_s}\n")
        self.pusher.stdin.flush()
        outcome, seconds = self.pusher.stdout.readline().split()
        return outcome, float(seconds)


@pytest.fixture(scope="module")
def faults(tmp_path_factory, half_plus_two_base) -> Faults:
    """The server, with version 1 of swap, slow and removed AVAILABLE (retry and pushed have none yet), and the
    pusher ready."""
    from tests.serving import half_plus_two

    root = tmp_path_factory.mktemp("faults")
    models = [(name, root / name, "") for name in ("swap", "slow", "retry", "removed")]
    models.append(("pushed", root / "push" / "repo" / "digits", "model_version_policy { all {} }"))  # load every one
    for name in ("swap", "slow", "removed"):
        repository.publish(half_plus_two_base / "123", root / name)
    shutil.copytree(half_plus_two_base / "123", root / "slow" / "²")  # a digit to str.isdigit, but no number
    monitoring = root / "monitoring.config"
    monitoring.write_text("prometheus_config { enable: true }")
    config = write_config(root / "models.config", models)
    # The pusher imports TensorFlow while the server does: started together they take the time of one.
    with (root / "pusher.log").open("w") as log:
        pusher = subprocess.Popen([sys.executable, str(Path(__file__).parent / "pusher.py"), str(root / "push")],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True)
    server = ServerProcess(f"--model_config_file={config}", "--model_config_file_poll_wait_seconds=1", "--port=0",
                           "--file_system_poll_wait_seconds=0.25", f"--monitoring_config_file={monitoring}",
                           *RETRY_FLAGS, log_dir=root)
    try:
        for name in ("swap", "slow", "removed"):
            server.wait_available(name, 1)
        yield Faults(server, config, models, half_plus_two.build(root / "plus_three", offset=3.0), pusher)
    finally:
        pusher.stdin.close()
        pusher.wait(timeout=30)
        assert server.stop() == 0


def status(faults: Faults, model: str) -> dict[str, dict]:
    """Version -> its entry in GET /v1/models/<model> ({} before the model has any version)."""
    response = requests.get(f"{faults.server.url}/v1/models/{model}", timeout=10)
    return {s["version"]: s for s in response.json()["model_version_status"]} if response.ok else {}


def state(faults: Faults, model: str, version: int) -> str | None:
    return status(faults, model).get(str(version), {}).get("state")


def message(faults: Faults, model: str, version: int) -> str:
    return status(faults, model)[str(version)]["status"]["error_message"]


def wait_for(condition, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met")
        time.sleep(0.1)


def predict(faults: Faults, model: str) -> float:
    response = requests.post(f"{faults.server.url}/v1/models/{model}:predict", data='{"instances": [1.0]}', timeout=10)
    assert response.status_code == 200, response.text
    return response.json()["predictions"][0]


def paths_outside(text: str, base: Path) -> list[str]:
    """Absolute paths in `text` that do not lie in the model base path `base`."""
    paths = re.findall(r"(?:^|[\s'\"(])(/[^\s'\":)]+)", text)
    return [p for p in paths if not p.startswith(f"{base}/")]


def copy_files(source: Path, target: Path, names: list[str]) -> None:
    for name in names:
        (target / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source / name, target / name)


@pytest.mark.slow
def test_20_hot_swaps_under_open_loop_load_fail_no_request(faults, half_plus_two_base):
    with OpenLoad(faults.server.url, "swap") as load:
        for version in range(2, 22):
            assert repository.publish(half_plus_two_base / "123", faults.base("swap"))[0] == version
            wait_for(lambda: state(faults, "swap", version) == "AVAILABLE"
                     and state(faults, "swap", version - 1) == "END")
    assert load.errors == {} and load.requests >= 200
    assert [s["state"] for s in status(faults, "swap").values()] == ["AVAILABLE"] + ["END"] * 20


@pytest.mark.slow
def test_versions_copied_in_file_by_file_or_corrupt_are_never_served_and_the_previous_one_serves_on(faults):
    """Also: the directory named '²' in this base path (a digit to str.isdigit, but no number) is ignored by every
    poll."""
    base = faults.base("slow")
    with OpenLoad(faults.server.url, "slow") as load:
        (base / "2").mkdir()  # copied in without the staging rename, one file at a time
        time.sleep(1.2)  # a poll sees a version directory with no SavedModel in it yet: not a version
        assert "2" not in status(faults, "slow")
        copy_files(faults.plus_three, base / "2", ["saved_model.pb"])
        wait_for(lambda: state(faults, "slow", 2) == "END")  # the graph without its variables: a failed load
        text = message(faults, "slow", 2)
        assert "checkpoint" in text and "attempt 1 of 3, next retry in 0.5 s" in text
        assert paths_outside(text, base) == []
        copy_files(faults.plus_three, base / "2", ["variables/variables.data-00000-of-00001"])
        time.sleep(1.2)  # a poll tries again at once (the directory changed): the variables' index is still missing
        assert state(faults, "slow", 2) == "END"
        copy_files(faults.plus_three, base / "2", ["variables/variables.index"])
        wait_for(lambda: state(faults, "slow", 2) == "AVAILABLE" and state(faults, "slow", 1) == "END")
        assert predict(faults, "slow") == 3.5

        broken = base / ".tmp-broken"
        broken.mkdir()
        (broken / "saved_model.pb").write_bytes(b"not a SavedModel")
        broken.rename(base / "3")
        wait_for(lambda: "no retries left" in status(faults, "slow").get("3", {}).get("status", {}).get(
            "error_message", ""))
    assert load.errors == {} and load.requests >= 50
    entry = status(faults, "slow")["3"]
    assert entry["state"] == "END" and entry["status"]["error_code"] != "OK"
    text = entry["status"]["error_message"]
    assert "Cannot parse file" in text and "attempt 3, no retries left (--max_num_load_retries=2)" in text
    assert "Traceback" not in text and paths_outside(text, base) == []
    assert state(faults, "slow", 2) == "AVAILABLE" and predict(faults, "slow") == 3.5
    assert "Polling the model repository failed" not in faults.server.log.read_text()


@pytest.mark.slow
def test_a_version_whose_variables_arrive_late_loads_on_a_retry(faults, half_plus_two_base):
    base = faults.base("retry")
    staged = base / ".tmp-late"
    copy_files(half_plus_two_base / "123", staged, ["saved_model.pb"])
    (staged / "variables").mkdir()  # the copy tool made the directory; its files come later
    staged.rename(base / "1")
    wait_for(lambda: state(faults, "retry", 1) == "END")
    text = message(faults, "retry", 1)
    assert "attempt 1 of 3, next retry in 0.5 s" in text and paths_outside(text, base) == []
    mtime = (base / "1").stat().st_mtime
    copy_files(half_plus_two_base / "123", base / "1",
               ["variables/variables.data-00000-of-00001", "variables/variables.index"])
    assert (base / "1").stat().st_mtime == mtime  # the version directory did not change: only a retry loads it
    wait_for(lambda: state(faults, "retry", 1) == "AVAILABLE")
    assert message(faults, "retry", 1) == "" and predict(faults, "retry") == 2.5


@pytest.mark.slow
def test_a_removed_version_directory_keeps_serving_from_memory_and_says_so(faults, half_plus_two_base):
    base = faults.base("removed")
    with OpenLoad(faults.server.url, "removed") as load:
        shutil.rmtree(base / "1")
        wait_for(lambda: message(faults, "removed", 1) != "")
        entry = status(faults, "removed")["1"]
        assert entry["state"] == "AVAILABLE" and entry["status"]["error_code"] == "OK"
        assert entry["status"]["error_message"].startswith(
            "serving from memory: version directory 1 is gone from the base path")
        assert "/" not in entry["status"]["error_message"]
        assert predict(faults, "removed") == 2.5
        assert repository.publish(half_plus_two_base / "123", base)[0] == 2  # a new version replaces it as usual
        wait_for(lambda: state(faults, "removed", 2) == "AVAILABLE" and state(faults, "removed", 1) == "END")
    assert message(faults, "removed", 2) == ""
    assert load.errors == {} and load.requests >= 50


@pytest.mark.slow
def test_sigkill_during_push_leaves_only_complete_versions_and_the_server_never_errs(faults, half_plus_two_base):
    """Push stages SIGKILLed at random moments of their run (seeded) until 20 were killed before they ended."""
    candidates = (half_plus_two_base / "123", faults.plus_three)
    contents = [files(c) for c in candidates]
    base = faults.base("pushed")

    def new_candidate() -> Path:  # the one the newest version is not: push would not publish the same again
        return candidates[1 - contents.index(files(base / str(repository.latest(base))))]

    assert faults.push(candidates[0], 60)[0] == "finished"
    outcome, push_s = faults.push(new_candidate(), 60)  # a whole run, the signature check included
    assert outcome == "finished"
    wait_for(lambda: state(faults, "pushed", 2) == "AVAILABLE")
    rng = random.Random(18)
    with OpenLoad(faults.server.url, "pushed") as load:
        outcomes = Counter()
        while outcomes["killed"] < 20 and outcomes.total() < 60:  # a kill timed after a run's end is no trial
            outcomes[faults.push(new_candidate(), rng.uniform(0, push_s))[0]] += 1
        assert faults.push(new_candidate(), 60)[0] == "finished"  # it publishes, and removes what killed ones left
        on_disk = repository.versions(base)
        wait_for(lambda: all(state(faults, "pushed", v) == "AVAILABLE" for v in on_disk))  # every one loads
    assert load.errors == {} and load.requests >= 50
    assert outcomes["failed"] == 0 and outcomes["killed"] == 20, outcomes
    assert repository.taken(base) == set(on_disk)  # no version-named directory that is not a complete version
    assert list(base.glob(".tmp-*")) == []
    for path in on_disk.values():
        assert files(path) in contents and repository.lineage(path)["content"]
    with Registry(base.parent) as registry:  # repaired on opening where a kill came between rename and record
        assert [r["version"] for r in registry.versions("digits")] == sorted(on_disk, reverse=True)
    assert all(s["status"]["error_code"] == "OK" for s in status(faults, "pushed").values())


def files(version_dir: Path) -> dict[str, bytes]:
    """A SavedModel's files and contents, without the lineage push adds."""
    return {str(f.relative_to(version_dir)): f.read_bytes() for f in version_dir.rglob("*")
            if f.is_file() and f.name != repository.LINEAGE}


def config_file_error(faults: Faults) -> float:
    metrics = requests.get(f"{faults.server.url}/monitoring/prometheus/metrics", timeout=10).text
    return float(re.search(r"^serving_model_config_file_error (\S+)$", metrics, re.M).group(1))


def rewrite(path: Path, text: str) -> None:
    """Replace a file at once, as an editor or config manager does (a reader never sees half of it)."""
    temp = path.with_name(f".{path.name}.new")
    temp.write_text(text)
    temp.replace(path)


@pytest.mark.slow
def test_a_broken_config_file_keeps_the_config_in_force_and_says_so(faults):
    log = faults.server.log
    good = faults.config.read_text()
    assert config_file_error(faults) == 0
    rewrite(faults.config, good + "config {")
    wait_for(lambda: config_file_error(faults) == 1)
    time.sleep(1.2)  # another poll of the same broken file
    assert log.read_text().count("Keeping the model config in force, the changed file cannot be applied") == 1
    assert "not a valid tensorflow.serving.ModelServerConfig text proto" in log.read_text()
    assert predict(faults, "swap") == 2.5  # still served
    labelled = write_config(faults.config.with_name("labelled.config"),
                            [(n, b, e) if n != "swap" else (n, b, 'version_labels { key: "stable" value: 99 }')
                             for n, b, e in faults.models])
    rewrite(faults.config, labelled.read_text())  # refused as a whole: version 99 is not available
    wait_for(lambda: "Request to assign label to version 99 of model swap" in log.read_text())
    assert config_file_error(faults) == 1
    fixed = write_config(faults.config.with_name("fixed.config"), [*faults.models, ("added", faults.base("swap"), "")])
    rewrite(faults.config, fixed.read_text())
    faults.server.wait_available("added", timeout_s=30)
    wait_for(lambda: config_file_error(faults) == 0)
    assert predict(faults, "added") == 2.5


# What TensorFlow says when a checkpoint's data file is missing (index present), paths shortened.
RESTORE_FAILED = """Restoring from checkpoint failed. This is most likely due to a Variable name or other graph \
key that is missing from the checkpoint. Original error:

Graph execution error:

Detected at node 'save/RestoreV2' defined at (most recent call last):
  File "/usr/lib/python3.11/runpy.py", line 198, in _run_module_as_main

  File "/venv/site-packages/tensorflow/python/saved_model/loader_impl.py", line 5, in load

Node: 'save/RestoreV2'
/models/m/1/variables/variables.data-00000-of-00001; No such file or directory
\t [[{{node save/RestoreV2}}]]

Original stack trace for 'save/RestoreV2':
  File "/usr/lib/python3.11/runpy.py", line 198, in _run_module_as_main
    return _run_code(code, main_globals, None,
"""


def test_a_load_error_is_one_line_without_stack_or_graph_markers():
    from serving.manager import load_error

    assert load_error(FileNotFoundError(RESTORE_FAILED)) == (
        "FileNotFoundError: Restoring from checkpoint failed. This is most likely due to a Variable name or other "
        "graph key that is missing from the checkpoint. Original error: Graph execution error: "
        "/models/m/1/variables/variables.data-00000-of-00001; No such file or directory")
