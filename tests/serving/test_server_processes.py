"""--server_processes: several complete servers on the same ports under one parent (serving/supervisor.py), shown
on real processes: the kernel spreads connections over both, the metrics endpoint answers for the whole server, a
new version is hot-swapped in each with no failed request, reloads are refused, SIGTERM drains both, and a process
that dies takes the server down with its status.
"""
from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families
from tensorflow_serving.apis import model_management_pb2, model_service_pb2_grpc

import half_plus_two
from localhost.ports import free_port
from localhost.processes import rss_mib
from repo_files import copy_version
from serving.__main__ import build_parser, parse_settings
from serving.metrics import Metrics
from serving.process import ServerProcess
from serving import server as server_module
from serving.shared_metrics import PUBLISH_EVERY_S, SharedMetrics, merge
from serving.supervisor import cpu_shares, supervise

def predict(url: str, x: float) -> float:
    """One REST predict on a connection of its own (so the kernel chooses a process for each)."""
    body = json.dumps({"instances": [[x]]}).encode()
    request = urllib.request.Request(f"{url}/v1/models/half_plus_two:predict", body)
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())["predictions"][0][0]


def children_of(pid: int) -> list[int]:
    return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def predictions_counted(text: str) -> int:
    counts = re.findall(r'^serving_requests_total\{api="predict",entrypoint="REST",model="half_plus_two",status="OK",'
                        r'version="123"\} (\S+)$', text, re.M)
    return sum(int(float(n)) for n in counts)


def grpc_port(server: ServerProcess) -> int:
    return int(re.search(r"--port=(\d+)", " ".join(server.process.args)).group(1))


@pytest.fixture
def two_processes(tmp_path, half_plus_two_base):
    base = tmp_path / "half_plus_two"
    copy_version(half_plus_two_base, 123, base / "123")
    (tmp_path / "monitoring.config").write_text("prometheus_config { enable: true }\n")
    server = ServerProcess("--model_name=half_plus_two", f"--model_base_path={base}", f"--port={free_port()}",
                           "--server_processes=2", "--file_system_poll_wait_seconds=0.2",
                           f"--monitoring_config_file={tmp_path / 'monitoring.config'}", log_dir=tmp_path)
    server.base = base
    try:
        server.wait_available("half_plus_two")  # one process answers: the other may still be loading
        deadline = time.monotonic() + 60
        while server.log.read_text().count("Exporting HTTP/REST API") < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        yield server
    finally:
        if server.process.poll() is None:
            server.stop()


@pytest.mark.slow
def test_two_processes_share_the_ports_count_as_one_server_swap_versions_and_drain(two_processes):
    server = two_processes
    children = children_of(server.process.pid)
    assert len(children) == 2
    shares = cpu_shares(sorted(os.sched_getaffinity(0)), 2)
    assert [os.sched_getaffinity(child) for child in children] == shares
    # on one CPU each, every thread (the loop, gRPC's, the batch thread, TensorFlow's) takes turns: SCHED_BATCH
    one_cpu_each = all(len(share) == 1 for share in shares)
    assert {os.sched_getscheduler(int(task)) for child in children for task in os.listdir(f"/proc/{child}/task")} \
        == {os.SCHED_BATCH if one_cpu_each else os.SCHED_OTHER}
    assert os.sched_getscheduler(server.process.pid) == os.SCHED_OTHER  # the parent's, on every CPU
    assert rss_mib(server.process.pid) < 100  # the parent imports no TensorFlow (a server process: ~650 MiB)
    answers = [predict(server.url, x) for x in range(60)]
    assert answers == [0.5 * x + 2 for x in range(60)]
    time.sleep(2 * PUBLISH_EVERY_S)
    directory = Path(re.search(r"--server_processes_dir=(\S+)", Path(f"/proc/{children[0]}/cmdline").read_bytes()
                               .replace(b"\0", b" ").decode()).group(1))
    each = [predictions_counted((directory / f"{i}.prom").read_text()) for i in (0, 1)]
    assert all(n > 0 for n in each) and sum(each) == 60, each  # the kernel gave each process some connections
    for _ in range(4):  # whichever process answers the scrape, it answers for both
        with urllib.request.urlopen(f"{server.url}/monitoring/prometheus/metrics", timeout=10) as r:
            assert predictions_counted(r.read().decode()) == 60
    with grpc.insecure_channel(f"127.0.0.1:{grpc_port(server)}") as channel:
        with pytest.raises(grpc.RpcError) as refused:
            model_service_pb2_grpc.ModelServiceStub(channel).HandleReloadConfigRequest(
                model_management_pb2.ReloadConfigRequest(), timeout=10)
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "one of this server's 2 processes (--server_processes)" in refused.value.details()

    # a new version, hot-swapped in each process under load with no failed request; then SIGTERM drains both
    failures, swapped, stop = [], [], threading.Event()

    def load():
        while not stop.is_set():
            try:
                swapped.append(predict(server.url, 2.0))
            except Exception as e:  # noqa: BLE001 -- any failure is what this test counts
                failures.append(repr(e))

    threads = [threading.Thread(target=load) for _ in range(2)]
    for thread in threads:
        thread.start()
    time.sleep(0.5)
    half_plus_two.build(server.base.parent / "124", offset=3.0)  # y = 0.5 x + 3, then in place at once
    (server.base.parent / "124").rename(server.base / "124")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and swapped[-40:].count(4.0) < 40:  # 40 in a row from the new version
        time.sleep(0.1)
    stop.set()
    for thread in threads:
        thread.join()
    assert failures == []
    assert set(swapped) == {3.0, 4.0} and swapped[-40:] == [4.0] * 40
    children = children_of(server.process.pid)
    assert server.stop() == 0
    assert all(not Path(f"/proc/{child}").exists() for child in children)
    log = server.log.read_text()
    assert "[process 1]: Shutting down" in log and "[process 2]: Shutting down" in log


@pytest.mark.slow
def test_a_process_that_dies_stops_the_server_with_its_status(two_processes):
    server = two_processes
    doomed, other = children_of(server.process.pid)
    os.kill(doomed, signal.SIGKILL)
    assert server.process.wait(timeout=30) == 128 + signal.SIGKILL
    assert not Path(f"/proc/{other}").exists()
    assert re.search(rf"Server process \d \(pid {doomed}\) was killed by SIGKILL; stopping the other 1",
                     server.log.read_text())


@pytest.mark.slow
def test_what_is_wrong_with_the_flags_is_said_once(tmp_path, half_plus_two_base):
    result = subprocess.run([sys.executable, "-m", "serving", "--rest_api_port=0", f"--port={free_port()}",
                             "--server_processes=2", "--model_name=half_plus_two",
                             f"--model_base_path={half_plus_two_base}", "--batching_parameters_file=batching.txt"],
                            capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.count("--batching_parameters_file needs --enable_batching.") == 1, result.stderr[-2000:]


def test_a_taken_port_is_refused_before_any_process_starts(half_plus_two_base):
    with socket.create_server(("127.0.0.1", 0)) as taken:  # bound without SO_REUSEPORT, as most servers do
        port = taken.getsockname()[1]
        args = build_parser().parse_args([f"--rest_api_port={port}", "--port=0", "--host=127.0.0.1",
                                          "--server_processes=2", "--model_name=half_plus_two",
                                          f"--model_base_path={half_plus_two_base}"])
        with pytest.raises(SystemExit) as refused:
            supervise([], args)
    assert str(refused.value) == (f"Failed to start server at 127.0.0.1:{port} (--rest_api_port={port}: Address "
                                  "already in use); another server is probably using it: stop it, or choose another "
                                  "port.")


@pytest.mark.parametrize("cpus, processes, shares", [
    ([0, 1], 2, [{0}, {1}]), ([0, 1, 2, 3], 2, [{0, 1}, {2, 3}]), ([4, 5, 6], 2, [{4}, {5, 6}]),
    ([0, 1], 3, [{0}, {1}, {0}]), ([7], 2, [{7}, {7}]),
])
def test_each_process_runs_on_its_own_share_of_the_cpus(cpus, processes, shares):
    assert cpu_shares(cpus, processes) == shares


@pytest.mark.parametrize("cpus", [1, 2])
def test_a_server_on_one_cpu_runs_its_threads_under_sched_batch(cpus):
    if len(os.sched_getaffinity(0)) < cpus:
        pytest.skip(f"needs {cpus} CPUs")
    check = ("import os, sys, threading\n"
             "os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:int(sys.argv[1])])\n"
             "from serving.__main__ import on_one_cpu_take_turns\n"
             "switched = on_one_cpu_take_turns()\n"
             "started = threading.Thread(target=lambda: print(switched, os.sched_getscheduler(0) == os.SCHED_BATCH))\n"
             "started.start(); started.join()\n")
    result = subprocess.run([sys.executable, "-c", check, str(cpus)], capture_output=True, text=True, timeout=60)
    assert result.stdout.split() == (["True", "True"] if cpus == 1 else ["False", "False"]), result.stderr


def test_each_process_takes_its_share_of_the_cores_unless_threads_are_set(tmp_path, half_plus_two_base):
    flags = ["--model_name=half_plus_two", f"--model_base_path={half_plus_two_base}", "--server_processes=2"]
    cores = len(os.sched_getaffinity(0))
    shared = parse_settings(flags).session_config
    assert (shared.intra_op_parallelism_threads, shared.inter_op_parallelism_threads) == (1, max(1, cores // 2))
    chosen = parse_settings([*flags, "--tensorflow_intra_op_parallelism=3"]).session_config
    assert chosen.intra_op_parallelism_threads == 3
    assert parse_settings([*flags, "--enable_batching"]).batching.num_batch_threads == max(1, cores // 2)
    (tmp_path / "batching.txt").write_text("num_batch_threads { value: 3 }\n")
    set_in_file = parse_settings([*flags, "--enable_batching",
                                  f"--batching_parameters_file={tmp_path / 'batching.txt'}"])
    assert set_in_file.batching.num_batch_threads == 3
    assert parse_settings(flags[:2] + ["--enable_batching"]).batching.num_batch_threads == cores  # TF Serving's
    child = parse_settings([*flags, "--server_process_index=1"]).session_config  # pinned to its share: all its own
    assert (child.intra_op_parallelism_threads, child.inter_op_parallelism_threads) == (1, cores)


def test_merged_metrics_sum_counters_and_histograms_keep_the_largest_gauge_and_the_earliest_creation():
    first, second = Metrics(), Metrics()
    first.request("m", "1", "predict", "REST", "OK", 0.001)
    for metrics in (first, second):
        metrics.request("m", "1", "predict", "REST", "OK", 0.004)
        metrics.version_state("m", 1, "AVAILABLE")
    second.version_state("m", 2, "LOADING")
    second.config_file_error.set(1)
    texts = [first.render().decode(), second.render().decode()]
    merged = merge([text.encode() for text in texts]).decode()
    lines = merged.splitlines()
    assert ':tensorflow:serving:request_count{model_name="m",status="OK"} 3' in lines  # TF's, written as integers
    assert 'serving_requests_total{api="predict",entrypoint="REST",model="m",status="OK",version="1"} 3.0' in lines
    assert ('serving_request_latency_seconds_bucket{api="predict",entrypoint="REST",le="0.002",model="m",version="1"}'
            ' 1.0') in lines
    assert 'serving_model_version_state{model="m",state="AVAILABLE",version="1"} 1.0' in lines  # not 2
    assert 'serving_model_version_state{model="m",state="LOADING",version="2"} 1.0' in lines  # one process only
    assert "serving_model_config_file_error 1.0" in lines
    created = [re.search(r'^serving_requests_created\{.*\} (\S+)$', text, re.M).group(1) for text in texts]
    assert re.search(r'^serving_requests_created\{.*\} (\S+)$', merged, re.M).group(1) == min(created, key=float)
    comments = [line for line in lines if line.startswith("#")]
    assert len(comments) == len(set(comments)) and "# TYPE serving_requests_total counter" in comments
    assert len(list(text_string_to_metric_families(merged))) == len(list(text_string_to_metric_families(texts[1])))


def test_a_process_that_cannot_publish_its_metrics_says_so_once_and_publishes_once_it_can(tmp_path, monkeypatch,
                                                                                           caplog):
    monkeypatch.setattr(server_module, "PUBLISH_EVERY_S", 0.01)
    shared = SharedMetrics(tmp_path / "not yet", 0)
    metrics = Metrics()
    metrics.request("m", "1", "predict", "REST", "OK", 0.001)

    async def publish_for_a_while():
        task = asyncio.create_task(server_module.publish_metrics(SimpleNamespace(metrics=metrics), shared))
        await asyncio.sleep(0.2)
        (tmp_path / "not yet").mkdir()
        await asyncio.sleep(0.2)
        task.cancel()

    asyncio.run(publish_for_a_while())
    assert [r.getMessage() for r in caplog.records if "Cannot publish" in r.getMessage()] == [
        f"Cannot publish this process's metrics to the other server processes ([Errno 2] No such file or directory: "
        f"'{tmp_path / 'not yet' / '0.partial'}'): the server's metrics lack them until it can"]
    assert (tmp_path / "not yet" / "0.prom").read_bytes().startswith(b"# TYPE :tensorflow:")
