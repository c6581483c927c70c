"""Free 127.0.0.1 ports for the servers and workers started on this machine (tests, the training launcher,
infra validation, benchmarks)."""
from __future__ import annotations

import contextlib
import socket


def free_ports(n: int) -> list[int]:
    """`n` ports free on 127.0.0.1 now (held open together so they differ)."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]


def free_port() -> int:
    return free_ports(1)[0]
