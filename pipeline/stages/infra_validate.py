"""Serve the exported candidate as production will, before anything is published: TFX's InfraValidator.

The embedded server loads a temporary copy of the SavedModel (replaying its warmup requests, as TF
Serving does), answers a sample of test rows over REST and over gRPC, and must give what the model
computes in process (within `tolerance`), and so must its `explain` signature, asked once over each protocol for
the same rows (its numbers also within EXPLAIN_NOISE of the largest of the output and of what the shares add up to,
a row's score move: gradients summed over thousands of path points in the server's thread layout differ from this
process's in their last digits); then single-row requests measure the latency a client sees.
The run fails when p99 is above `max_p99_ms`, with the numbers. The result goes into the registry.
"""
from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

import repository
from pipeline import specs
from pipeline.artifacts import INFRA_VALIDATION, Inputs, raw_inputs, read_schema, write_json
from pipeline.errors import StageError
from pipeline.views import InfraValidateView

NAME = "candidate"
EXPLAIN_NOISE = 5e-3  # of an explain output's scale: the in-process reference (TF2, a thread per core) and the
# server's session (one intra-op thread) sum in other orders; measured on the images config 6e-5 to 2e-4 of its
# largest share, once 1.02e-3 in CI (two test workers sharing the cores); a share 1 % of the score's move off fails


SPEC = specs.INFRA_VALIDATE


def run(cfg: InfraValidateView, inputs: Inputs, out: Path) -> dict:
    c = cfg.infra_validate
    if not c.enabled:
        result = {"skipped": True}
    else:
        rows = raw_inputs(inputs["dataset"], read_schema(inputs["schema"]), c.rows)  # as clients send them
        found = repository.signatures(inputs["saved_model"])
        signatures = [key for key in ("serving_default", "explain") if key in found]
        with tempfile.TemporaryDirectory(dir=out) as base:
            shutil.copytree(inputs["saved_model"], Path(base) / "1")
            result = _validate(c, Path(base), rows, _in_process(inputs["saved_model"], rows, signatures), out)
    write_json(INFRA_VALIDATION, out, result)
    return result


def _in_process(saved_model: Path, rows: dict[str, np.ndarray], signatures: list[str]) -> dict[str, dict]:
    """What each of `signatures` answers for `rows` in this process, by signature."""
    import tensorflow as tf

    loaded = tf.saved_model.load(str(saved_model))
    return {key: {name: value.numpy() for name, value in
                  loaded.signatures[key](**{k: tf.constant(v) for k, v in rows.items()}).items()}
            for key in signatures}


def _validate(c, base: Path, rows: dict[str, np.ndarray], expected: dict[str, dict], out: Path) -> dict:
    from serving.client import GrpcClient, RestClient, ServingClientError
    from localhost.ports import free_port
    from serving.process import ServerProcess

    n = len(rows["x"])
    grpc_port = free_port()
    server = ServerProcess(f"--model_name={NAME}", f"--model_base_path={base.resolve()}", f"--port={grpc_port}",
                           "--file_system_poll_wait_seconds=0", log_dir=out)
    try:
        server.wait_available(NAME, timeout_s=c.timeout_s)
        with RestClient(server.url) as rest, GrpcClient(f"127.0.0.1:{grpc_port}") as grpc_client:
            clients = (("REST", rest), ("gRPC", grpc_client))
            worst = {name: _worst_difference(client.predict(NAME, rows), expected["serving_default"], c.tolerance, name)
                     for name, client in clients}
            explained = {name: _worst_difference(client.predict(NAME, rows, signature_name="explain"),
                                                 expected["explain"], c.tolerance, f"{name} (explain)",
                                                 _score_move(expected["explain"]))
                         for name, client in clients if "explain" in expected}
            latencies = []
            for i in np.arange(c.requests) % n:
                started = time.perf_counter()
                rest.predict(NAME, {name: value[i:i + 1] for name, value in rows.items()})
                latencies.append((time.perf_counter() - started) * 1000)
    except (RuntimeError, TimeoutError, ServingClientError) as e:
        raise StageError(f"infra_validate: the candidate did not serve: {e}") from None
    finally:
        server.stop()
    p50, p99 = (float(np.percentile(latencies, q)) for q in (50, 99))
    result = {"rows": n, "max_abs_difference": worst, "tolerance": c.tolerance, "p50_ms": round(p50, 3),
              "p99_ms": round(p99, 3), "requests": c.requests,
              **({"explain_max_abs_difference": explained} if explained else {})}
    print(f"infra_validate: {n} rows served over REST and gRPC as computed in process"
          f"{' (predict and explain)' if explained else ''}; "
          f"single-row latency p50 {p50:.2f} ms, p99 {p99:.2f} ms over {c.requests} requests")
    if p99 > c.max_p99_ms:
        raise StageError(f"infra_validate: p99 latency {p99:.2f} ms (p50 {p50:.2f} ms, {c.requests} single-row "
                         f"requests) is above infra_validate.max_p99_ms={c.max_p99_ms}.")
    return result


def _score_move(explained: dict[str, np.ndarray]) -> float:
    """The largest |score - baseline_score| of an explain answer: what a row's shares add up to."""
    return float(np.max(np.abs(explained["score"].astype(np.float64) - explained["baseline_score"]), initial=0))


def _worst_difference(served: dict[str, np.ndarray], expected: dict[str, np.ndarray], tolerance: float,
                      protocol: str, explain_scale: float | None = None) -> float:
    """The largest |served - expected| over the numeric outputs (strings, class names, must be equal), each within
    `tolerance` relative and 1e-6 absolute, or for an explain answer EXPLAIN_NOISE of the larger of `explain_scale`
    (its score move) and the output's largest value; StageError naming the output when one disagrees."""
    if served.keys() != expected.keys():
        raise StageError(f"infra_validate: over {protocol} the server returned outputs {sorted(served)}, "
                         f"the model computes {sorted(expected)}.")
    worst = 0.0
    for name, value in expected.items():
        if not np.issubdtype(value.dtype, np.number):
            if served[name].tolist() != value.tolist():
                raise StageError(f"infra_validate: over {protocol}, output {name!r} is {served[name][:3].tolist()}..., "
                                 f"the in-process model's {value[:3].tolist()}...")
            continue
        largest = float(np.max(np.abs(value), initial=0))
        atol = 1e-6 if explain_scale is None else max(1e-6, EXPLAIN_NOISE * max(explain_scale, largest))
        if not np.allclose(served[name], value, rtol=tolerance, atol=atol):
            raise StageError(f"infra_validate: over {protocol}, output {name!r} differs from the in-process model "
                             f"by up to {float(np.max(np.abs(served[name] - value))):.3g} (tolerance {tolerance}"
                             f"{f', and {atol:.3g} absolute' if explain_scale is not None else ''}).")
        worst = max(worst, float(np.max(np.abs(served[name].astype(np.float64) - value), initial=0)))
    return worst
