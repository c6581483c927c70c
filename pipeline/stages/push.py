"""Publish the exported SavedModel into a model repository in TF Serving's layout, safely.

`<repository>/<model_name>/<version>/saved_model.pb`, version = the next number never issued there.
Nothing reaches a server polling the repository (ours or tensorflow_model_server) before it is
checked: the candidate is copied into a hidden staging directory in the model's base path; its
serving signatures must match the newest version's (a client of the model keeps working); with
`push.smoke_test` the embedded server must serve it from there and answer a predict request (unless
infra_validate already served this SavedModel, over REST and gRPC, in the same run); only
then is it renamed into place, and recorded in the registry (pipeline.registry) with its lineage: the
run, its config, metrics, data, compression variant and infra-validation result, which also travel
inside the version as `maas.json`. A candidate identical to the newest version (a rerun after a
kill, say) is not published again.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path

import repository
from pipeline import specs
from pipeline.artifacts import (PUSHED, SHIPPED_SAMPLE_REQUEST, Inputs, dir_fingerprint, read_data_origin,
                                read_evaluation, read_infra_validation, read_saved_model_evaluation, read_selection,
                                write_json)
from pipeline.errors import StageError
from pipeline.registry import Registry
from pipeline.views import PushView


SPEC = specs.PUSH


def run(cfg: PushView, inputs: Inputs, out: Path) -> dict:
    name = cfg.push.model_name
    model_dir = Path(cfg.push.repository) / name
    digest = dir_fingerprint(inputs["saved_model"])
    newest = repository.latest(model_dir)
    if newest is not None:
        newest_dir = model_dir / str(newest)
        if repository.lineage(newest_dir).get("content") == digest:
            print(f"push: version {newest} of {name!r} already is this model; not publishing it again")
            return _result(out, newest, newest_dir, digest, published=False)
        _check_compatible(cfg.push, newest, newest_dir, inputs["saved_model"])
    lineage = _lineage(inputs, digest)
    with repository.staging(model_dir) as area:
        candidate = area / "1"  # the staging area is a model base path of its own, holding the candidate
        shutil.copytree(inputs["saved_model"], candidate)
        repository.write_lineage(candidate, lineage)
        smoke = {}
        if cfg.push.smoke_test and not read_infra_validation(inputs["infra_validation"]).get("skipped", False):
            print("push: infra_validate served this SavedModel over REST and gRPC in this run; no second smoke test")
        elif cfg.push.smoke_test:
            smoke = {"smoke_latency_ms": smoke_test(name, area, cfg.push.smoke_test_timeout_s, out)}
        version, path = repository.publish_prepared(candidate, model_dir)
    with Registry(cfg.push.repository) as registry:  # a crash before this is repaired when it is next opened
        registry.record(name, version, lineage)
        registry.write_models_config()  # what servers of the repository serve (make serve reads it)
    print(f"push: published {path} (run {lineage['run_id']})")
    return _result(out, version, path, digest, published=True, **smoke)


def check_cached(cfg: PushView, metrics: dict) -> str | None:
    """Push changes the world, so its cache entry is only as good as the world: why the version a cached push
    published no longer holds its model (deleted, say, by `registry gc`), or None when it does."""
    path = Path(cfg.push.repository) / cfg.push.model_name / str(metrics["version"])
    if not (path / "saved_model.pb").is_file():
        return f"version {metrics['version']} it published is gone from {path.parent}"
    if repository.lineage(path).get("content") != metrics["content"]:
        return f"version {metrics['version']} in {path.parent} no longer holds the model it published"
    return None


def _lineage(inputs: Inputs, digest: str) -> dict:
    """What the registry records of a version: where it came from and how good it is."""
    config_text = json.dumps(inputs.run.config, indent=2)  # as the run's config.json holds it
    return {
        "content": digest,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "run_id": inputs.run.run_id,
        "config": inputs.run.config,
        "config_hash": hashlib.sha256(config_text.encode()).hexdigest(),
        "metrics": read_saved_model_evaluation(inputs["saved_model_evaluation"]),  # of exactly this SavedModel
        "trained_metrics": read_evaluation(inputs["evaluation"]),  # of the trained model, before compression
        "data_fingerprint": dir_fingerprint(inputs["dataset"]),
        "data_origin": read_data_origin(inputs["saved_model"]),  # e.g. rows exported from request logs
        "variant": read_selection(inputs["compressed"]),
        "saved_model_bytes": sum(f.stat().st_size for f in inputs["saved_model"].rglob("*") if f.is_file()),
        "infra_validation": read_infra_validation(inputs["infra_validation"]),
    }


def _result(out: Path, version: int, path: Path, content: str, **more) -> dict:
    result = {"version": version, "path": str(path), "content": content, **more}  # as the config names it: a cached
    # push of a run directory that moved (or was copied) names its own repository
    write_json(PUSHED, out, result)
    return result


def _check_compatible(push, newest: int, newest_dir: Path, candidate: Path) -> None:
    """Refuse a candidate whose serving signatures would break the clients of the newest version."""
    changes = repository.signature_changes(repository.signatures(newest_dir), repository.signatures(candidate))
    if not changes:
        return
    if push.allow_signature_change:
        print(f"push: signatures differ from version {newest} (push.allow_signature_change=true): {'; '.join(changes)}")
        return
    raise StageError(
        f"push: not publishing to {str(newest_dir.parent)!r}: clients of version {newest} would break, its serving "
        f"signatures differ: {'; '.join(changes)}. Publish under another name (push.model_name=...), or set "
        f"push.allow_signature_change=true once clients are ready.")


def smoke_test(model_name: str, base_path: Path, timeout_s: float, out: Path) -> float:
    """Serve the one version under `base_path` with the embedded server and send it the request export ships in
    assets.extra/sample_request.json (a SavedModel made elsewhere gets one all-zeros row); returns the
    milliseconds it took."""
    import requests

    from serving.client import RestClient, ServingClientError
    from serving.process import ServerProcess

    sample = next(base_path.glob(f"*/{SHIPPED_SAMPLE_REQUEST}"), None)
    server = ServerProcess(f"--model_name={model_name}", f"--model_base_path={base_path.resolve()}", "--port=0",
                           "--file_system_poll_wait_seconds=0", log_dir=out)
    try:
        server.wait_available(model_name, timeout_s=timeout_s)
        with RestClient(server.url) as client:
            if sample:
                body = sample.read_text()
            else:
                shape = client.metadata(model_name)["signatures"]["serving_default"]["inputs"]["x"]["shape"]
                body = json.dumps({"instances": [[0.0] * shape[1]]})
        started = time.perf_counter()
        response = requests.post(f"{server.url}/v1/models/{model_name}:predict", data=body, timeout=timeout_s)
        latency_ms = (time.perf_counter() - started) * 1000
        if response.status_code != 200:
            raise RuntimeError(f"predict answered {response.status_code}: {response.text[:300]}")
        outputs = response.json()
    except (RuntimeError, TimeoutError, ServingClientError, requests.RequestException) as e:
        raise StageError(f"push.smoke_test: the candidate of {model_name!r} did not serve, so it was not published: "
                         f"{e}") from None
    finally:
        server.stop()
    rows = {name: len(value) for name, value in outputs.items()}
    if set(rows.values()) != {1}:
        raise StageError(f"push.smoke_test: expected 1 row of each output for 1 row in, received {rows}.")
    print(f"push: smoke test passed, the candidate answered in {latency_ms:.1f} ms")
    return round(latency_ms, 2)
