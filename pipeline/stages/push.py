"""Publish the exported SavedModel into a model repository in TF Serving's layout.

`<repository>/<model_name>/<version>/saved_model.pb`, version = the next integer. The copy is
written to a hidden directory and renamed into place, so a server polling the repository (ours or
tensorflow_model_server) never sees a half-copied version, and an existing version is never
overwritten. With `serve.smoke`, the embedded server is started on the pushed version and must
answer one predict request before the stage succeeds.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import StageError
from serving.client import RestClient, ServingClientError
from serving.process import ServerProcess
from serving.repository import model_name_problem


@dataclass(frozen=True)
class Config:
    repository: str = "model_repository"  # the model base path's parent, as in --model_base_path
    model_name: str = "digits"

    def problems(self) -> list[str]:
        problem = model_name_problem(self.model_name)
        return [f"model_name: {problem}"] if problem else []


@dataclass(frozen=True)
class ServeConfig:
    smoke: bool = False  # after pushing, serve the new version and send it one predict request
    timeout_s: float = 120.0  # for the server to report the version AVAILABLE

    def problems(self) -> list[str]:
        return [] if self.timeout_s > 0 else [f"timeout_s: expected a positive number, received {self.timeout_s}."]


CONFIG = ("push", "serve")
INPUTS = ("saved_model",)
OUTPUTS = ()


def run(cfg, inputs: dict[str, Path], out: Path) -> dict:
    model_dir = Path(cfg.push.repository) / cfg.push.model_name
    version, path = publish(inputs["saved_model"], model_dir)
    print(f"push: published {path}")
    result = {"version": version, "path": str(path.resolve())}
    if cfg.serve.smoke:
        result["smoke_latency_ms"] = smoke_test(cfg.push.model_name, model_dir, version, cfg.serve.timeout_s, out)
    (out / "pushed.json").write_text(json.dumps(result))
    return result


def smoke_test(model_name: str, model_dir: Path, version: int, timeout_s: float, out: Path) -> float:
    """Serve `version` with the embedded server and predict on one all-zeros row; returns the ms."""
    server = ServerProcess(f"--model_name={model_name}", f"--model_base_path={model_dir.resolve()}", "--port=0",
                           "--file_system_poll_wait_seconds=0", log_dir=out)
    try:
        server.wait_available(model_name, version, timeout_s)
        with RestClient(server.url) as client:
            signature = client.metadata(model_name, version)["metadata"]["signature_def"]["signature_def"]
            n_features = int(signature["serving_default"]["inputs"]["x"]["tensor_shape"]["dim"][1]["size"])
            started = time.perf_counter()
            predictions = client.predict(model_name, instances=[[0.0] * n_features], version=version)
            latency_ms = (time.perf_counter() - started) * 1000
    except (RuntimeError, TimeoutError, ServingClientError) as e:
        raise StageError(f"serve.smoke: version {version} of {model_name!r} did not serve: {e}") from None
    finally:
        server.stop()
    if len(predictions) != 1:
        raise StageError(f"serve.smoke: expected 1 prediction for 1 row, received {len(predictions)}.")
    print(f"push: smoke test passed, version {version} answered in {latency_ms:.1f} ms")
    return round(latency_ms, 2)


def versions(model_dir: Path) -> list[int]:
    """Integer-named children, as TF Serving reads them (anything else is ignored)."""
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir() if p.name.isdigit())


def publish(saved_model: Path, model_dir: Path) -> tuple[int, Path]:
    """Copy `saved_model` in as the next version; safe against concurrent publishers."""
    model_dir.mkdir(parents=True, exist_ok=True)
    staging = model_dir / f".tmp-{uuid.uuid4().hex}"
    try:
        shutil.copytree(saved_model, staging)
        while True:
            version = max(versions(model_dir), default=0) + 1
            target = model_dir / str(version)
            try:
                os.rename(staging, target)
                return version, target
            except OSError as e:
                if e.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
