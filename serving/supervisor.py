"""--server_processes N: N complete servers on the same ports, under one parent process.

One server process runs its Python (parsing, the event loop) on one core at a time: with a small model it leaves the
other cores idle (benchmarks/results/multicore_*.md). Here the parent starts N copies of itself, each a whole server
(its own models, batcher and TensorFlow threads) pinned to its share of the CPUs (`cpu_shares`: its threads, gRPC's
many among them, then contend for their process's GIL on its own cores, not across all of them; 1 intra-op thread,
and inter-op and batch threads for each CPU of its share, unless they are set) that binds the ports with
SO_REUSEPORT, so the kernel spreads the connections over them. The parent checks first that the ports are free (a
port some other server shares by SO_REUSEPORT too would be shared silently), forwards SIGTERM, SIGINT and SIGHUP
(each child drains, or reloads its tokens, as a lone server does) and waits for them; when one exits unbidden (a
model that cannot load, a crash) it stops the others and exits with that one's status, for the supervisor above it
(a container runtime, Kubernetes) to restart the whole. Each process polls the model base paths and
--model_config_file itself: a new version is hot-swapped in each, with no failed request; the metrics endpoint
answers for the whole server (serving.shared_metrics). What the processes cannot share is refused:
HandleReloadConfigRequest would change one process of N (change the polled --model_config_file instead). The parent
imports no TensorFlow (~20 MB, where a server process holds ~650 MB before any model): the flags it reads are parsed
without it, and the children check the rest, the first of them reporting what is wrong.
"""
from __future__ import annotations

import argparse
import functools
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from localhost.processes import die_with_parent, how_it_ended
from serving.ports import check_ports_free

log = logging.getLogger("serving")
POLL_S = 0.1


def supervise(argv: list[str], args: argparse.Namespace) -> int:
    """Run args.server_processes children of `python -m serving argv`; their exit status (0 when stopped by a
    signal and every child drained)."""
    check_ports_free(args)
    children: list[subprocess.Popen] = []
    stopping = False  # a signal came to stop the server, or the parent stops it

    def forward(signum, _frame) -> None:
        nonlocal stopping
        stopping = stopping or signum != signal.SIGHUP
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGHUP if signum == signal.SIGHUP else signal.SIGTERM)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, forward)
    directory = tempfile.mkdtemp(prefix="serving-processes-")
    shares = cpu_shares(sorted(os.sched_getaffinity(0)), args.server_processes)
    status = 0
    try:
        for index in range(args.server_processes):
            if stopping:  # those started were told already
                break
            command = [sys.executable, "-m", "serving", *argv, f"--server_process_index={index}",
                       f"--server_processes_dir={directory}"]
            children.append(subprocess.Popen(command, preexec_fn=functools.partial(start_child, shares[index])))
            log.info("Started server process %d of %d (pid %d)", index + 1, args.server_processes, children[-1].pid)
        while [child.poll() for child in children].count(None):  # each polled: poll() sets returncode
            ended = next((child for child in children if child.returncode is not None), None)
            if ended is not None and not stopping:
                status = exit_status(ended.returncode) or 1
                log.error("Server process %d (pid %d) %s; stopping the other %d", children.index(ended) + 1,
                          ended.pid, how_it_ended(ended.returncode), len(children) - 1)
                forward(signal.SIGTERM, None)
            time.sleep(POLL_S)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    return status or next((exit_status(child.returncode) for child in children if child.returncode), 0)


def cpu_shares(cpus: list[int], processes: int) -> list[set[int]]:
    """`cpus` split into one contiguous share per process (the last takes what does not divide); with fewer CPUs than
    processes, one CPU each, in turn."""
    if len(cpus) < processes:
        return [{cpus[i % len(cpus)]} for i in range(processes)]
    size = len(cpus) // processes
    return [set(cpus[i * size:(i + 1) * size if i < processes - 1 else None]) for i in range(processes)]


def start_child(cpus: set[int]) -> None:
    """In the child, before it runs the server: it dies with the parent, and runs on its share of the CPUs."""
    die_with_parent()
    os.sched_setaffinity(0, cpus)


def exit_status(returncode: int) -> int:
    """A child's return code as a shell reports it: 128 + the signal that killed it."""
    return 128 - returncode if returncode < 0 else returncode
