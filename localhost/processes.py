"""Child processes started on this machine (servers, training workers): they never outlive their parent, and
their memory can be sampled under load."""
from __future__ import annotations

import ctypes
import signal
from pathlib import Path

PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent() -> None:
    """Popen's preexec_fn: the kernel kills the child when its parent dies, even by SIGKILL."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def how_it_ended(code: int) -> str:
    """A child's return code in words: "was killed by SIGKILL", "exited with code 1"."""
    return f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}"


def rss_mib(pid: int) -> float:
    """A process's resident memory (VmRSS) in MiB, 0 once it has exited: what memory checks under load sample."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except FileNotFoundError:
        return 0.0
    return next((int(line.split()[1]) / 1024 for line in lines if line.startswith("VmRSS:")), 0.0)
