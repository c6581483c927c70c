"""Run `python -m serving` as a child process and wait until a model version is AVAILABLE.

Used by the pipeline's smoke test after push, by notebooks and by the tests: always the real
server, on 127.0.0.1 and a free port.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from localhost.ports import free_port
from localhost.processes import die_with_parent, rss_mib
from serving.client import GrpcClient, RestClient, ServingClientError

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def wait_available(url: str, model: str, version: int | None = None, timeout_s: float = 60,
                   alive: Callable[[], bool] = lambda: True, describe: Callable[[], str] = str,
                   client_options: dict | None = None) -> None:
    """Poll a TF Serving-compatible server's REST status until `model` is AVAILABLE (any server:
    ours or tensorflow_model_server); `alive` says whether its process still runs; `client_options`
    are RestClient's (token, ca_cert, client_cert)."""
    deadline = time.monotonic() + timeout_s
    with RestClient(url, timeout_s=2, **(client_options or {})) as client:
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
    for its parent reaches it through `stop`) and dies with its parent, even one killed by SIGKILL.
    `client_options` (RestClient's token, ca_cert, client_cert) are what waiting for it needs when its
    flags turn on authentication or TLS (then `url` is https)."""

    def __init__(self, *flags: str, log_dir: Path, client_options: dict | None = None):
        self.rest_port = free_port()
        self.client_options = client_options or {}
        scheme = "https" if any(f.startswith("--ssl_config_file") for f in flags) else "http"
        self.url = f"{scheme}://127.0.0.1:{self.rest_port}"
        self.log = Path(log_dir) / f"server-{self.rest_port}.log"
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(PROJECT_ROOT), os.environ.get("PYTHONPATH")]))}
        command = [sys.executable, "-m", "serving", f"--rest_api_port={self.rest_port}", "--host=127.0.0.1", *flags]
        with self.log.open("w") as log:
            self.process = subprocess.Popen(command, cwd=log_dir, env=env, stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True, preexec_fn=die_with_parent)

    def wait_available(self, model: str, version: int | None = None, timeout_s: float = 60) -> None:
        """Block until `model` (at `version`, if given) is AVAILABLE; raise with the log if not."""
        wait_available(self.url, model, version, timeout_s, alive=lambda: self.process.poll() is None,
                       describe=self.log_tail, client_options=self.client_options)

    def log_tail(self, chars: int = 3000) -> str:
        return self.log.read_text()[-chars:]

    def rss_mib(self) -> float:
        """Its resident memory in MiB, 0 once it has exited."""
        return rss_mib(self.process.pid)

    def stop(self) -> int:
        """SIGTERM, then wait for a clean exit (SIGKILL to its process group after 20 s); returns the exit code."""
        self.process.terminate()
        try:
            return self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            raise


class Server:
    """The embedded server as a context manager, for notebooks and scripts:

        with serving.Server("model_repository/digits") as server:   # model name: the directory's
            server.rest.predict("digits", rows)                      # a RestClient
            server.grpc.predict("digits", rows)                      # a GrpcClient, same answers

    (or `server = serving.Server(...).start()` ... `server.stop()`, across notebook cells).

    Starts `python -m serving` on free 127.0.0.1 ports (REST and gRPC), waits until every model it
    serves is AVAILABLE, and stops it (and closes the clients) on exit. `flags` are more of
    tensorflow_model_server's flags, e.g. ["--enable_batching"].
    """

    def __init__(self, model_base_path: str | Path | None = None, model_name: str | None = None, *,
                 model_config_file: str | Path | None = None, flags: list[str] = (), timeout_s: float = 120):
        from serving.model_config import load_model_server_config

        if (model_base_path is None) == (model_config_file is None):
            raise ValueError("pass model_base_path (one model) or model_config_file (several), not both or neither")
        if model_config_file is not None:
            self.models = [m.name for m in load_model_server_config(str(model_config_file)).model_config_list.config]
            self._flags = [f"--model_config_file={Path(model_config_file).resolve()}"]
        else:
            self.models = [model_name or Path(model_base_path).name]
            self._flags = [f"--model_name={self.models[0]}", f"--model_base_path={Path(model_base_path).resolve()}"]
        self._flags += list(flags)
        self.timeout_s = timeout_s

    def start(self) -> Server:
        return self.__enter__()

    def stop(self) -> None:
        self.__exit__()

    def __enter__(self) -> Server:
        self._logs = tempfile.TemporaryDirectory(prefix="maas-server-")
        self.grpc_port = free_port()
        self.process = ServerProcess(*self._flags, f"--port={self.grpc_port}", log_dir=Path(self._logs.name))
        self.url, self.grpc_target = self.process.url, f"127.0.0.1:{self.grpc_port}"
        try:
            for model in self.models:
                self.process.wait_available(model, timeout_s=self.timeout_s)
        except BaseException:
            self.__exit__()
            raise
        self.rest, self.grpc = RestClient(self.url), GrpcClient(self.grpc_target)
        return self

    def __exit__(self, *exc_info: object) -> None:
        for client in (getattr(self, "rest", None), getattr(self, "grpc", None)):
            if client is not None:
                client.close()
        self.process.stop()
        self._logs.cleanup()
