"""The batching sweep: which BatchingParameters let the server sustain the highest request rate with its p99
latency under a bound, against the same server with batching off, measured in one run on this machine.

For batching off and then each candidate, `python -m serving` serves the model on 127.0.0.1 and open-loop
REST load (localhost.loadgen: latency from each request's scheduled send time) finds its knee: the highest
rate whose p99 stays under the bound with no errors. After one run at the first rate, discarded (the first
seconds under load are slower), the ladder of rates starts at the best knee so far (the
first one, at an estimate made from one request's latency), doubles until a rate breaks the bound (halves
while the first ones do; a break after a hold is run twice, as one stall breaks a short run's p99), then
tries three rates between the last that held and the first that broke, which pins the knee to about 9 %.
The host's speed drifts, so knees within 10-15 % of each other are a tie in all but name.

The winner is written as TF Serving's batching_parameters.txt, its leading comments holding the table.
"""
from __future__ import annotations

import asyncio
import gc
import json
import math
import os
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

import repository
from localhost import loadgen
from localhost.machine import machine
from serving.tfserving.errors import UsageError

GRIDS = ("small", "full")
REFINEMENTS = 3  # rates tried between the last that held and the first that broke: the knee to 2**(1/8), 9 %
PROBE_RATE = 20  # requests/s on one connection, before the load: one request's latency
MIN_RATE = 1.0


@dataclass(frozen=True)
class Candidate:
    """The BatchingParameters fields the sweep varies; the others keep TF Serving's defaults."""

    max_batch_size: int
    batch_timeout_micros: int
    num_batch_threads: int

    def text(self) -> str:
        """As a BatchingParameters text proto."""
        return "".join(f"{field} {{ value: {value} }}\n" for field, value in asdict(self).items())

    def __str__(self) -> str:
        return ", ".join(str(value) for value in asdict(self).values())


def grid(name: str, cores: int) -> list[Candidate]:
    """small: five points around TF Serving's advice for CPUs (threads = cores, timeouts of a few ms);
    full: 3 batch sizes x 3 timeouts x (1 thread, one per core)."""
    if name == "small":
        return [Candidate(8, 500, cores), Candidate(16, 1000, cores), Candidate(32, 2000, cores),
                Candidate(32, 2000, 1), Candidate(64, 5000, cores)]
    return [Candidate(size, timeout, threads) for size in (8, 32, 128) for timeout in (0, 1000, 5000)
            for threads in sorted({1, cores})]


def sweep(model: Path, candidates: list[Candidate], seconds: float, p99_ms: float,
          log: Callable[[str], None] = print) -> dict:
    """Measure batching off and each candidate on the model's latest version; the result, with the chosen one."""
    versions = repository.versions(model)
    if not versions:
        raise UsageError(f"--model {model}: no versions there; expected a model base path holding "
                         f"<version number>/saved_model.pb, e.g. model_repository/digits.")
    problem = repository.name_problem(model.name)
    if problem:
        raise UsageError(f"--model {model}: the directory's name is the model's name: {problem}")
    version = max(versions)
    host = machine()
    body = request_body(versions[version])
    # Reading the signature imported TensorFlow: a full collection walking its objects pauses this process,
    # the load generator, for a tenth of a second or more, which would read as server latency.
    gc.freeze()
    results = []
    with tempfile.TemporaryDirectory(prefix="batching-sweep-") as work:
        for i, candidate in enumerate([None, *candidates]):
            log(f"[{i + 1}/{len(candidates) + 1}] {candidate or 'no batching'}")
            best = max((r["knee_per_s"] for r in results), default=0.0)
            result = measure(model, candidate, body, seconds, p99_ms, Path(work), log, start=best or None)
            log(f"      knee {result['knee_per_s']:.0f}/s")
            results.append(result)
    no_batching, measured = results[0], results[1:]
    chosen = max(measured, key=lambda r: (r["knee_per_s"], -(r["p99_ms"] or 0)))
    if not chosen["knee_per_s"]:
        raise UsageError(f"no candidate kept p99 under {p99_ms} ms with no errors, even at the lowest rate "
                         f"tried; raise --p99-ms (nothing written).")
    return {"model": str(model), "version": version, "request_bytes": len(body), "machine": host,
            "seconds": seconds, "p99_bound_ms": p99_ms, "no_batching": no_batching, "candidates": measured,
            "chosen": chosen["parameters"],
            "chosen_vs_no_batching": chosen["knee_per_s"] / no_batching["knee_per_s"] if no_batching["knee_per_s"]
            else None}


def request_body(version_dir: Path) -> bytes:
    """One row-format predict instance for serving_default, with fixed pseudo-random values."""
    signature = repository.signatures(version_dir).get("serving_default")
    if signature is None:
        raise UsageError(f"{version_dir}: no serving_default signature; the sweep sends predict requests to it.")
    rng = np.random.default_rng(0)
    row = {}
    for name, spec in signature["inputs"].items():
        shape, dtype = spec["shape"], spec["dtype"]
        if not shape or any(size < 0 for size in shape[1:]):
            raise UsageError(f"{version_dir}: serving_default input {name!r} has shape {shape}; the sweep needs a "
                             f"batch dimension and fixed sizes after it, e.g. [-1, 32, 32, 3].")
        if dtype.startswith("float"):
            row[name] = np.round(rng.random(shape[1:]), 3).tolist()
        elif dtype.startswith(("int", "uint")):
            row[name] = np.zeros(shape[1:], int).tolist()
        else:
            raise UsageError(f"{version_dir}: serving_default input {name!r} is {dtype}; the sweep makes float "
                             f"and integer inputs only.")
    instance = next(iter(row.values())) if len(row) == 1 else row
    return json.dumps({"instances": [instance]}).encode()


def measure(model: Path, candidate: Candidate | None, body: bytes, seconds: float, p99_ms: float, work: Path,
            log: Callable[[str], None], start: float | None = None) -> dict:
    """The knee of one server configuration, with the runs that found it; the ladder starts at `start`, or
    at an estimate from one request's latency."""
    from serving.process import ServerProcess  # imports TensorFlow (its client does): not for `build`

    flags = [f"--model_name={model.name}", f"--model_base_path={model.resolve()}", "--port=0",
             "--file_system_poll_wait_seconds=0"]
    if candidate is not None:
        params = work / "batching_parameters.txt"
        params.write_text(candidate.text())
        flags += ["--enable_batching=true", f"--batching_parameters_file={params}"]
    server = ServerProcess(*flags, log_dir=work)
    try:
        server.wait_available(model.name, timeout_s=300)
        url = f"{server.url}/v1/models/{model.name}:predict"
        probe = asyncio.run(loadgen.open_loop(url, body, PROBE_RATE, min(1.0, seconds), connections=1))
        if start is None:  # without batching a server answers about one request per core per latency
            start = (os.cpu_count() or 1) * 1000 / probe["p50_ms"] / 2 if probe["ok"] else MIN_RATE
        start = min(start, loadgen.MAX_RATE / 2)
        # Discarded: a server's first seconds under load are slower (measured: p99 ~8x the next run's on mid,
        # batching on) while kernels, buffers and threads are made on first use.
        asyncio.run(loadgen.open_loop(url, body, start, seconds))

        def run(rate: float) -> dict:
            point = asyncio.run(loadgen.open_loop(url, body, rate, seconds))
            log(f"      {rate:8.1f}/s offered: p50 {point['p50_ms']:7.1f} ms, p99 {point['p99_ms']:7.1f} ms"
                + (f", errors {point['errors']}" if point["errors"] else ""))
            return point

        runs = ladder(run, start, p99_ms)
    finally:
        server.stop()
    knee = loadgen.knee_point(runs, p99_ms)
    return {"parameters": asdict(candidate) if candidate else None, "runs": runs,
            **{key: knee[key] if knee else None for key in ("p50_ms", "p99_ms")},
            "knee_per_s": knee["achieved_per_s"] if knee else 0.0}


def ladder(run: Callable[[float], dict], start: float, p99_ms: float) -> list[dict]:
    """Runs at rates doubling from `start` until one breaks the bound (halving while the first ones break), then
    REFINEMENTS geometric midpoints between the last rate that held and the first that broke. A rate that
    breaks the bound after one that held is run again before it counts: one stall breaks a short run's p99."""
    runs: list[dict] = []

    def holds_at(rate: float, confirm: bool) -> bool:
        runs.append(run(rate))
        if confirm and not loadgen.holds(runs[-1], p99_ms):
            runs.append(run(rate))
        return loadgen.holds(runs[-1], p99_ms)

    held, broke, rate = None, None, start
    while held is None or broke is None:
        if holds_at(rate, confirm=held is not None):
            held, rate = rate, rate * 2
        else:
            broke, rate = rate, rate / 2
        if not MIN_RATE <= rate <= loadgen.MAX_RATE:
            return runs
    for _ in range(REFINEMENTS):
        rate = math.sqrt(held * broke)
        if holds_at(rate, confirm=False):
            held = rate
        else:
            broke = rate
    return runs


def summary(result: dict) -> list[str]:
    """The measured table in plain text: the batching file's comments and the benchmark report."""
    m = result["machine"]
    lines = [
        f"Batching sweep (python -m serving.tfserving sweep) of {result['model']}, version {result['version']}, "
        f"a {result['request_bytes']}-byte REST predict request.",
        f"Machine: {m['cpu']}, {m['cores']} cores, Python {m['python']}, TensorFlow {m['tensorflow']}, {m['date']}, "
        f"load average {m['load_average_1m']:g} at the start.",
        f"Open-loop load on 127.0.0.1, {result['seconds']:g} s per rate; knee = the highest rate with p99 <= "
        f"{result['p99_bound_ms']:g} ms and no errors (knees within 10-15 % are a tie: the host drifts).",
        f"{'candidate (max_batch_size, batch_timeout_micros, num_batch_threads)':<68}{'knee/s':>8}"
        f"{'p50 ms':>9}{'p99 ms':>9}   rates tried (/s)",
    ]
    for r in [result["no_batching"], *result["candidates"]]:
        name = str(Candidate(**r["parameters"])) if r["parameters"] else "no batching"
        rates = " ".join(f"{p['offered_per_s']:.0f}" for p in r["runs"])
        p50, p99 = (f"{r[key]:.1f}" if r[key] is not None else "-" for key in ("p50_ms", "p99_ms"))
        lines.append(f"{name:<68}{r['knee_per_s']:>8.0f}{p50:>9}{p99:>9}   {rates}")
    ratio = result["chosen_vs_no_batching"]
    lines.append(f"Chosen: {Candidate(**result['chosen'])}: knee "
                 + (f"{ratio:.2f}x the no-batching knee." if ratio else "> 0, while no batching never held the bound."))
    return lines


def write(result: dict, path: Path) -> None:
    """The chosen parameters as TF Serving's batching_parameters.txt, the table in its comments."""
    comments = "".join(f"# {line}\n" for line in summary(result))
    temp = path.with_name(f".{path.name}.tmp")  # then renamed: `build` never reads half a file
    temp.write_text(comments + Candidate(**result["chosen"]).text())
    temp.replace(path)
