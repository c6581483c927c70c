"""The server's ports: what it says when one is taken, and the check that they are free before several processes
share them (serving.supervisor). Imports nothing heavy: the supervisor runs it without TensorFlow."""
from __future__ import annotations

import argparse
import os
import socket


def port_in_use(flag: str, port: int, reason: str | None) -> str:
    return f"({flag}={port}: {reason}); another server is probably using it: stop it, or choose another port."


def check_ports_free(args: argparse.Namespace) -> None:
    """SystemExit, in the server's words, when --port or --rest_api_port is taken: bound here without SO_REUSEPORT,
    as the processes that share them would fail on a port another program holds, and share silently one that another
    server holds with SO_REUSEPORT too."""
    for flag, port in (("--port", args.port), ("--rest_api_port", args.rest_api_port)):
        if not port:
            continue
        family = socket.getaddrinfo(args.host, port, type=socket.SOCK_STREAM)[0][0]
        try:
            socket.create_server((args.host, port), family=family).close()
        except OSError as e:
            raise SystemExit(f"Failed to start server at {args.host}:{port} "
                             f"{port_in_use(flag, port, os.strerror(e.errno))}") from None
