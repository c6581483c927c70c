"""Servers run on this machine by tests, the pipeline and the local launcher: free 127.0.0.1 ports,
and child processes that never outlive their parent."""
from __future__ import annotations

import contextlib
import ctypes
import signal
import socket
from pathlib import Path

PR_SET_PDEATHSIG = 1  # linux/prctl.h


def free_ports(n: int) -> list[int]:
    """`n` ports free on 127.0.0.1 now (held open together so they differ)."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]


def free_port() -> int:
    return free_ports(1)[0]


def rss_mib(pid: int) -> float:
    """A process's resident memory (VmRSS) in MiB, 0 once it has exited: what memory checks under load sample."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except FileNotFoundError:
        return 0.0
    return next((int(line.split()[1]) / 1024 for line in lines if line.startswith("VmRSS:")), 0.0)


def die_with_parent() -> None:
    """Popen's preexec_fn: the kernel kills the child when its parent dies, even by SIGKILL."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
