"""Start local TensorFlow tasks on 127.0.0.1, each with its own TF_CONFIG, like torchrun for TF.

`launch("pipeline.training.worker:run_task", spec, workers=2)` runs `run_task(spec)` in two
processes that form one MultiWorkerMirroredStrategy cluster; with `ps=1` a chief runs it as
the ParameterServerStrategy coordinator of worker and ps servers. Each process's output is
streamed with a "[worker i] " prefix. If a task fails the others are stopped, and no task outlives its
launcher: every child is stopped on the way out and dies with the launcher (PR_SET_PDEATHSIG).

Inside a task: `python -m pipeline.training.launcher worker MODULE:FUNCTION ARG` or `... server`.
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import importlib
import json
import os
import queue
import subprocess
import sys
import threading
from collections.abc import Callable

from localhost.ports import free_ports
from localhost.processes import die_with_parent, how_it_ended
from pipeline.errors import StageError

TAIL_LINES = 20


class TaskFailed(StageError):
    """A task exited non-zero; says which, how, and its last lines of output."""

    def __init__(self, name: str, code: int, tail: list[str], consequence: str = ""):
        lines = "\n".join(f"  {line}" for line in tail)
        super().__init__(f"{name} {how_it_ended(code)}; {consequence}the other tasks were stopped. Its last "
                         f"{len(tail)} lines:\n{lines}")


PS_LOST = ("TensorFlow cannot go on without a parameter server (the variables it held are gone); run the stage "
           "again: it resumes after the last epoch it backed up (BackupAndRestore); ")


class Task:
    """One child process and the last lines it printed."""

    def __init__(self, name: str, argv: list[str], config: str):
        self.name = name
        self.tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        self.process = subprocess.Popen(
            [sys.executable, *argv], env={**os.environ, "TF_CONFIG": config, "PYTHONUNBUFFERED": "1"}, text=True, bufsize=1,
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, preexec_fn=die_with_parent)


def tf_config(cluster: dict[str, list[str]], task_type: str, index: int) -> str:
    """The TF_CONFIG one task of `cluster` runs with."""
    return json.dumps({"cluster": cluster, "task": {"type": task_type, "index": index}})


def local_cluster(**jobs: int) -> dict[str, list[str]]:
    """E.g. local_cluster(worker=2, ps=1): addresses on free 127.0.0.1 ports for each job."""
    ports = iter(free_ports(sum(jobs.values())))
    return {job: [f"127.0.0.1:{next(ports)}" for _ in range(n)] for job, n in jobs.items() if n}


def launch(target: str, arg: str, workers: int, ps: int = 0, log: Callable[[str], None] = print) -> None:
    """Run `target(arg)` ("module:function") as a local cluster; return when it has finished.

    ps == 0: `workers` processes all run the target (MultiWorkerMirroredStrategy).
    ps > 0: a chief runs the target (the ParameterServerStrategy coordinator) while `workers`
    and `ps` processes serve it (tf.distribute.Server); they are stopped when the chief is done.
    A worker that dies is reported and the run goes on: the coordinator reschedules its steps on the
    others (while one is left). Raises TaskFailed, after stopping the rest, as soon as any other
    process exits non-zero: the chief, any multi_worker task, or a ps (which TF cannot survive).
    """
    for name, n, least in (("workers", workers, 1), ("ps", ps, 0)):
        if n < least:
            raise ValueError(f"{name}: expected an integer >= {least}, received {n}.")
    run = ["-m", "pipeline.training.launcher", "worker", target, arg]
    serve = ["-m", "pipeline.training.launcher", "server"]
    if ps:
        cluster, argv = local_cluster(chief=1, worker=workers, ps=ps), {"chief": run, "worker": serve, "ps": serve}
    else:
        cluster, argv = local_cluster(worker=workers), {"worker": run}
    running_target = 1 if ps else workers
    serving_workers = workers if ps else 0
    with _running(cluster, argv, log) as finished:
        while running_target:
            task, code = finished.get()
            if code != 0 and task.name.startswith("worker") and serving_workers > 1:
                serving_workers -= 1
                log(f"[launcher] {task.name} {how_it_ended(code)}; the coordinator reschedules its steps on "
                    f"the {serving_workers} worker(s) left")
                continue
            if code != 0:
                raise TaskFailed(task.name, code, list(task.tail), PS_LOST if task.name.startswith("ps") else "")
            running_target -= 1


@contextlib.contextmanager
def _running(cluster: dict[str, list[str]], argv: dict[str, list[str]], log: Callable[[str], None]):
    """Start one process per address (running its job's argv); on the way out stop any still running."""
    tasks: list[Task] = []
    finished: queue.Queue[tuple[Task, int]] = queue.Queue()
    lock = threading.Lock()
    readers = []
    try:
        for job, addresses in cluster.items():
            for index in range(len(addresses)):
                task = Task(f"{job} {index}", argv[job], tf_config(cluster, job, index))
                tasks.append(task)
                log(f"[launcher] started {task.name} (pid {task.process.pid}) on {addresses[index]}")
                reader = threading.Thread(target=_stream, args=(task, finished, lock, log), daemon=True)
                reader.start()
                readers.append(reader)
        yield finished
    finally:
        for task in tasks:
            if task.process.poll() is None:
                task.process.terminate()
        for task in tasks:
            try:
                task.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                task.process.kill()
                task.process.wait()
        for reader in readers:
            reader.join(timeout=10)


def _stream(task: Task, finished: queue.Queue, lock: threading.Lock, log: Callable[[str], None]) -> None:
    """Echo a task's output line by line with its name, then report its exit code."""
    for line in task.process.stdout:
        line = line.rstrip()
        task.tail.append(line)
        with lock:
            log(f"[{task.name}] {line}")
    finished.put((task, task.process.wait()))


def _serve() -> None:
    """Run this task's tf.distribute.Server (a parameter-server worker or ps) until stopped."""
    import tensorflow as tf  # here, not at the top: workers that fail fast need not load it

    resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
    tf.distribute.Server(resolver.cluster_spec(), job_name=resolver.task_type, task_index=resolver.task_id,
                         protocol="grpc", start=True).join()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pipeline.training.launcher", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    worker = commands.add_parser("worker", help="run MODULE:FUNCTION(ARG) as the task TF_CONFIG names")
    worker.add_argument("target", metavar="MODULE:FUNCTION")
    worker.add_argument("arg")
    commands.add_parser("server", help="run a tf.distribute.Server for the task TF_CONFIG names")
    args = parser.parse_args(argv)
    if args.command == "server":
        _serve()
        return
    module, _, function = args.target.partition(":")
    getattr(importlib.import_module(module), function)(args.arg)


if __name__ == "__main__":
    main()
