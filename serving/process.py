"""Run `python -m serving` as a child process and wait until a model version is AVAILABLE.

Used by the pipeline's smoke test after push, by notebooks and by the tests: always the real
server, on 127.0.0.1 and a free port.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from serving.client import RestClient, ServingClientError
from serving.local import die_with_parent, free_port

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def wait_available(url: str, model: str, version: int | None = None, timeout_s: float = 60,
                   alive: Callable[[], bool] = lambda: True, describe: Callable[[], str] = str) -> None:
    """Poll a TF Serving-compatible server's REST status until `model` is AVAILABLE (any server:
    ours or tensorflow_model_server); `alive` says whether its process still runs."""
    deadline = time.monotonic() + timeout_s
    with RestClient(url, timeout_s=2) as client:
        while time.monotonic() < deadline:
            if not alive():
                raise RuntimeError(f"the server exited:\n{describe()}")
            try:
                states = client.status(model)
                if any(s["state"] == "AVAILABLE" and version in (None, int(s["version"])) for s in states):
                    return
            except (ServingClientError, OSError):  # not started yet, or the model not loaded yet
                pass
            time.sleep(0.1)
    raise TimeoutError(f"{model} was not AVAILABLE after {timeout_s}s:\n{describe()}")


class ServerProcess:
    """`python -m serving <flags>` on 127.0.0.1 with a free REST port; `url` is its REST base URL.
    Its output goes to `log` (in `log_dir`). It runs in a process group of its own (a Ctrl-C meant
    for its parent reaches it through `stop`) and dies with its parent, even one killed by SIGKILL."""

    def __init__(self, *flags: str, log_dir: Path):
        self.rest_port = free_port()
        self.url = f"http://127.0.0.1:{self.rest_port}"
        self.log = Path(log_dir) / f"server-{self.rest_port}.log"
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(PROJECT_ROOT), os.environ.get("PYTHONPATH")]))}
        command = [sys.executable, "-m", "serving", f"--rest_api_port={self.rest_port}", "--host=127.0.0.1", *flags]
        with self.log.open("w") as log:
            self.process = subprocess.Popen(command, cwd=log_dir, env=env, stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True, preexec_fn=die_with_parent)

    def wait_available(self, model: str, version: int | None = None, timeout_s: float = 60) -> None:
        """Block until `model` (at `version`, if given) is AVAILABLE; raise with the log if not."""
        wait_available(self.url, model, version, timeout_s, alive=lambda: self.process.poll() is None,
                       describe=self.log_tail)

    def log_tail(self, chars: int = 3000) -> str:
        return self.log.read_text()[-chars:]

    def stop(self) -> int:
        """SIGTERM, then wait for a clean exit (SIGKILL to its process group after 20 s); returns the exit code."""
        self.process.terminate()
        try:
            return self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            raise
