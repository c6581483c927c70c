"""Publish the exported SavedModel into a model repository in TF Serving's layout.

`<repository>/<model_name>/<version>/saved_model.pb`, version = the next integer. The copy is
written to a hidden directory and renamed into place, so a server polling the repository (ours or
tensorflow_model_server) never sees a half-copied version, and an existing version is never
overwritten. With `serve.smoke`, the embedded server is started on the pushed version and must
answer one predict request before the stage succeeds.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import repository
from pipeline.artifacts import PUSHED
from pipeline.errors import StageError


@dataclass(frozen=True)
class Config:
    repository: str = "model_repository"  # the model base path's parent, as in --model_base_path
    model_name: str = "digits"

    def problems(self) -> list[str]:
        problem = repository.name_problem(self.model_name)
        return [f"model_name: {problem}"] if problem else []


@dataclass(frozen=True)
class ServeConfig:
    smoke: bool = False  # after pushing, serve the new version and send it one predict request
    timeout_s: float = 120.0  # for the server to report the version AVAILABLE

    def problems(self) -> list[str]:
        return [] if self.timeout_s > 0 else [f"timeout_s: expected a positive number, received {self.timeout_s}."]


CONFIG = ("push", "serve.smoke")
RUNTIME = ("serve.timeout_s",)
INPUTS = ("saved_model",)
OUTPUTS = ()


def run(cfg, inputs: dict[str, Path], out: Path) -> dict:
    model_dir = Path(cfg.push.repository) / cfg.push.model_name
    version, path = repository.publish(inputs["saved_model"], model_dir)
    print(f"push: published {path}")
    result = {"version": version, "path": str(path.resolve())}
    if cfg.serve.smoke:
        result["smoke_latency_ms"] = smoke_test(cfg.push.model_name, model_dir, version, cfg.serve.timeout_s, out)
    PUSHED.in_output(out).write_text(json.dumps(result))
    return result


def smoke_test(model_name: str, model_dir: Path, version: int, timeout_s: float, out: Path) -> float:
    """Serve `version` with the embedded server and predict on one all-zeros row; returns the ms."""
    from serving.client import RestClient, ServingClientError
    from serving.process import ServerProcess

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
