"""Run the stages in order with content-hash caching, atomic outputs and manifests.

Layout under `output_dir`:
  .cache/<stage>/<key>/   a finished stage: its output dirs, log.txt, manifest.json (written last)
  <run_id>/config.json    the resolved config of the run
  <run_id>/<stage>        a link to the cache entry the run used
  <run_id>/<stage>.failed the partial output and log of a stage that failed
  <run_id>/manifest.json  the run: each stage's status, key, metrics and time
  latest                  a link to the newest run that succeeded

A stage's key is SHA-256 of its code (its module and the project modules it imports), the config
fields it declares (its view, minus runtime-only fields), the fingerprints of its input artefacts
and of the external files it reads. An input's fingerprint hashes the files themselves, so a re-trained model that differs
re-runs what follows, and one that is bit-identical does not.
"""
from __future__ import annotations

import ast
import contextlib
import ctypes
import hashlib
import json
import os
import platform
import re
import secrets
import shutil
import signal
import sys
import threading
import time
import traceback
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from types import ModuleType
from typing import Any, Literal, TextIO

from pipeline.artifacts import Inputs, RunInfo, dir_fingerprint, file_digest
from pipeline.cleanup import remove_stale_staging, staging_name
from pipeline.errors import CommandLineError, Interrupted, StageError, StageFailed
from pipeline.metrics import format_metrics
from pipeline.progress import LineReporter, Reporter, reporting
from pipeline.specs import PipelineConfig
from pipeline.stages import STAGES
from pipeline.views import keyed, make_view, to_dict

PROJECT_ROOT = Path(__file__).resolve().parents[1]
PROJECT_PACKAGES = ("pipeline", "models", "serving", "repository")
# Not followed when fingerprinting code: the two packages' __init__ modules, re-exports of their APIs
# (pipeline.run, serving.Server): following them would make every stage depend on every other stage's code.
API_REEXPORTS = ("pipeline", "serving")
MANIFEST = "manifest.json"


@dataclass
class StageRecord:
    """One stage of one run, as written to the run manifest and printed in the summary."""

    name: str
    status: str  # ran | cached | resumed | failed | interrupted
    key: str = ""
    wall_s: float = 0.0
    metrics: dict = field(default_factory=dict)
    produced_by: str = ""  # the run that actually executed the stage
    outputs: dict = field(default_factory=dict)  # artefact name -> content fingerprint


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(2)


def stage_view(cfg: PipelineConfig, stage: ModuleType) -> Any:
    """What `stage` is given: the view of the fields its spec reads, passed through its `resolve` (if it has one)
    to make a value concrete before hashing, e.g. train.init_from=latest -> a path. `resolve` may raise
    StageError."""
    view = make_view(cfg, stage.SPEC)
    resolve = getattr(stage, "resolve", None)
    return resolve(view) if resolve else view


def stale_reason(stage: ModuleType, view: Any, record: StageRecord) -> str | None:
    """Why the cached result of a stage with side effects no longer holds in the world it changed (its
    `check_cached`, e.g. push's version was deleted), or None: then the cache entry stands."""
    check = getattr(stage, "check_cached", None)
    return check(view, record.metrics) if check else None


def stages_until(until: str | None) -> list[str]:
    names = list(STAGES)
    if until is None:
        return names
    if until not in STAGES:
        raise CommandLineError(f"--until {until!r}: unknown stage; stages are {', '.join(names)}")
    return names[: names.index(until) + 1]


class Runner:
    def __init__(self, cfg: PipelineConfig, run_id: str | None = None, force: tuple[str, ...] = (),
                 overrides: tuple[str, ...] = ()):
        unknown = [s for s in force if s not in STAGES]
        if unknown:
            raise CommandLineError(f"--force {unknown[0]!r}: unknown stage; stages are {', '.join(STAGES)}")
        self.cfg = cfg
        self.force = set(force)
        self.stale: set[str] = set()  # stages whose cache entry no longer held (stale_reason): run, then replaced
        self.overrides = list(overrides)  # as given (the config has them applied): for the manifest and report
        self.root = Path(cfg.output_dir)
        self.resuming = run_id is not None
        self.run_id = run_id or new_run_id()
        self.run_dir = self.root / self.run_id
        self.records: dict[str, StageRecord] = {}
        if self.resuming:
            previous = json.loads((self.run_dir / MANIFEST).read_text())
            self.previous = {r["name"]: StageRecord(**r) for r in previous["stages"]}
        else:
            self.previous = {}

    # -- planning -------------------------------------------------------------------------

    def stage_key(self, name: str, view: Any) -> str | None:
        """The cache key, or None while an input has not been produced yet."""
        stage = STAGES[name]
        inputs = {}
        for artefact in stage.SPEC.inputs:
            producer = producer_of(artefact)
            record = self.records.get(producer)
            if record is None or artefact not in record.outputs:
                return None
            inputs[artefact] = record.outputs[artefact]
        external = {str(p): file_digest(p) for p in getattr(stage, "external_inputs", lambda c: [])(view)}
        return digest_json({
            "stage": name,
            "code": code_fingerprint(stage),
            "config": keyed(view),
            "inputs": inputs,
            "external": external,
        })

    def cache_entry(self, name: str, key: str) -> Path:
        return self.root / ".cache" / name / key

    def plan(self, until: str | None = None) -> list[tuple[str, str]]:
        """(stage, state) for --list: what a run would reuse and what it would execute."""
        states = []
        for name in stages_until(until):
            try:
                view = stage_view(self.cfg, STAGES[name])
                key = self.stage_key(name, view)
            except StageError as e:
                states.append((name, f"will fail: {e}"))
                continue
            entry = key and self.cache_entry(name, key)
            if key is None:
                states.append((name, "will run (after its inputs are rebuilt)"))
            elif name in self.force or not (entry / MANIFEST).is_file():
                states.append((name, f"will run (key {key[:12]})"))
            else:
                record = StageRecord(**json.loads((entry / MANIFEST).read_text())["record"])
                self.records[name] = record
                stale = stale_reason(STAGES[name], view, record)
                states.append((name, f"will run again (key {key[:12]}): {stale}" if stale else
                               f"cached (key {key[:12]}, from run {record.produced_by})"))
        return states

    # -- running --------------------------------------------------------------------------

    def run(self, until: str | None = None, reporter: Reporter | None = None,
            stage_output: TextIO | None | Literal["stdout"] = "stdout") -> list[StageRecord]:
        """Run the stages up to `until`, telling `reporter` (default: a line per event) as they go; what
        stages print goes to their log.txt and to `stage_output` (None: the log only). SIGTERM and SIGINT
        stop it cleanly (Interrupted)."""
        reporter = LineReporter() if reporter is None else reporter
        self.run_dir.mkdir(parents=True, exist_ok=True)
        for stale in remove_stale_staging(self.root):
            reporter.message(f"removed {stale}, left by a run that was killed")
        if not self.resuming:
            (self.run_dir / "config.json").write_text(json.dumps(to_dict(self.cfg), indent=2))
        try:
            with signals_interrupt(), reporting(reporter):
                return self._run(stages_until(until), reporter, stage_output)
        except Interrupted as e:
            e.run_id = self.run_id  # for the message that says how to resume it
            raise

    def _run(self, names: list[str], reporter: Reporter, stage_output) -> list[StageRecord]:
        for i, name in enumerate(names, 1):
            record = self._resumed(name)
            if record is None:
                view, key = self._prepare(name)
                record = self._cached(name, view, key, reporter)
            if record is None:
                reporter.stage_started(i, len(names), name)
                record = self._execute(name, view, key, stage_output)
                reporter.stage_ended(i, len(names), name, record.status,
                                     f"in {record.wall_s:.1f}s {format_metrics(record.metrics)}")
            else:
                reporter.stage_ended(i, len(names), name, record.status,
                                     f"(key {record.key[:12]}, from run {record.produced_by})")
            self.records[name] = record
            self._write_manifest("running")
        self._write_manifest("succeeded")
        link(self.root / "latest", Path(self.run_id))  # what a failed or interrupted run leaves alone
        return list(self.records.values())

    def _resumed(self, name: str) -> StageRecord | None:
        previous = self.previous.get(name)
        if previous is None or previous.status in ("failed", "interrupted") or name in self.force:
            return None
        if not (self.run_dir / name / MANIFEST).is_file():
            return None
        return StageRecord(**{**asdict(previous), "status": "resumed"})

    def _prepare(self, name: str) -> tuple[Any, str]:
        """The stage's config view and cache key; a failure to resolve the view fails the stage."""
        try:
            view = stage_view(self.cfg, STAGES[name])
            return view, self.stage_key(name, view)
        except StageError as e:
            self.records[name] = StageRecord(name=name, status="failed", produced_by=self.run_id)
            self._write_manifest("failed")
            raise StageFailed(name, str(e), None, expected=True) from e

    def _cached(self, name: str, view: Any, key: str, reporter: Reporter) -> StageRecord | None:
        entry = self.cache_entry(name, key)
        if name in self.force or not (entry / MANIFEST).is_file():
            return None
        record = StageRecord(**json.loads((entry / MANIFEST).read_text())["record"])
        stale = stale_reason(STAGES[name], view, record)
        if stale:
            reporter.message(f"{name}: its cached result no longer holds ({stale}); running it again")
            self.stale.add(name)
            return None
        link(self.run_dir / name, Path("..") / ".cache" / name / key)
        return StageRecord(**{**asdict(record), "status": "cached", "wall_s": 0.0})

    def _execute(self, name: str, view: Any, key: str, stage_output) -> StageRecord:
        stage = STAGES[name]
        entry = self.cache_entry(name, key)
        staging = entry.parent / staging_name(".tmp-", key, secrets.token_hex(2))
        staging.mkdir(parents=True)
        inputs = Inputs({a: self.run_dir / producer_of(a) / a for a in stage.SPEC.inputs},
                        RunInfo(self.run_id, to_dict(self.cfg)))
        started = time.perf_counter()
        with (staging / "log.txt").open("w") as log_file:
            try:
                echo = [sys.stdout if stage_output == "stdout" else stage_output]
                with contextlib.redirect_stdout(Tee(log_file, *filter(None, echo))):
                    metrics = stage.run(view, inputs, staging) or {}
                missing = [o for o in stage.SPEC.outputs if not (staging / o).is_dir()]
                if missing:
                    raise RuntimeError(f"stage did not write its declared outputs {missing}")
            except Exception as e:  # any failure: keep what it wrote, say where
                log_file.write(traceback.format_exc())
                self._fail(name, key, staging, e)
            except BaseException:  # interrupted: nothing half-written stays behind
                shutil.rmtree(staging, ignore_errors=True)
                self.records[name] = StageRecord(name=name, status="interrupted", key=key, produced_by=self.run_id)
                self._write_manifest("interrupted")
                raise
        record = StageRecord(
            name=name,
            status="ran",
            key=key,
            wall_s=round(time.perf_counter() - started, 3),
            metrics=json.loads(json.dumps(metrics, default=str)),
            produced_by=self.run_id,
            outputs={o: dir_fingerprint(staging / o) for o in stage.SPEC.outputs},
        )
        manifest = {"record": asdict(record), "config": to_dict(view), "versions": package_versions()}
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2))
        if (name in self.force or name in self.stale) and entry.exists():  # what it computed replaces the entry
            replace_directory(entry, staging)
        else:
            try:
                staging.rename(entry)
            except OSError:  # a concurrent run finished the same work first: use theirs
                shutil.rmtree(staging)
                record = StageRecord(**json.loads((entry / MANIFEST).read_text())["record"])
        link(self.run_dir / name, Path("..") / ".cache" / name / key)
        return record

    def _fail(self, name: str, key: str, staging: Path, error: Exception):
        kept = self.run_dir / f"{name}.failed"
        shutil.rmtree(kept, ignore_errors=True)
        shutil.move(str(staging), kept)
        self.records[name] = StageRecord(name=name, status="failed", key=key, produced_by=self.run_id)
        self._write_manifest("failed")
        expected = isinstance(error, StageError)
        reason = str(error) if expected else f"{type(error).__name__}: {error}"
        raise StageFailed(name, reason, kept, expected) from error

    def _write_manifest(self, status: str) -> None:
        manifest = {
            "run_id": self.run_id,
            "status": status,
            "overrides": self.overrides,
            "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "stages": [asdict(r) for r in self.records.values()],
            "versions": package_versions(),
        }
        write_atomic(self.run_dir / MANIFEST, json.dumps(manifest, indent=2))


@contextlib.contextmanager
def signals_interrupt():
    """While running, SIGTERM and SIGINT raise Interrupted in the main thread (else: left as they are)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise Interrupted(signum)

    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


AT_FDCWD, RENAME_EXCHANGE = -100, 2  # linux/fcntl.h, linux/fs.h


def replace_directory(target: Path, new: Path) -> None:
    """Put directory `new` where `target` is, atomically where the kernel can swap the two
    (renameat2 RENAME_EXCHANGE), then remove the old one."""
    libc = ctypes.CDLL(None, use_errno=True)
    swapped = hasattr(libc, "renameat2") and libc.renameat2(
        AT_FDCWD, os.fsencode(new), AT_FDCWD, os.fsencode(target), RENAME_EXCHANGE) == 0
    if not swapped:  # no atomic swap here: move the old one aside first
        aside = target.with_name(staging_name(".old-", target.name, secrets.token_hex(2)))
        target.rename(aside)
        new.rename(target)
        new = aside
    shutil.rmtree(new)


def producer_of(artefact: str) -> str:
    for name, stage in STAGES.items():
        if artefact in stage.SPEC.outputs:
            return name
    raise KeyError(f"no stage produces the artefact {artefact!r}")


class Tee:
    """Write to the terminal and to the stage's log file at once. A logging handler made while a stage ran (TensorFlow
    makes its logger on first use, on what sys.stdout is then) keeps this object after the stage and its log file
    are done: what it writes later goes to the streams still open, never to a closed one (a Jupyter kernel printed
    "--- Logging error --- ValueError: I/O operation on closed file" for each such line)."""

    def __init__(self, *streams):
        self.streams = streams

    def write(self, text: str) -> int:
        for s in self.streams:
            if not s.closed:
                s.write(text)
        return len(text)

    def flush(self) -> None:
        for s in self.streams:
            if not s.closed:
                s.flush()

    def isatty(self) -> bool:
        return False


def link(path: Path, target: Path) -> None:
    """Point the symlink `path` at `target`, replacing any older link atomically."""
    temp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    temp.symlink_to(target)
    temp.replace(path)


def write_atomic(path: Path, text: str) -> None:
    temp = path.with_name(f".{path.name}.tmp")
    temp.write_text(text)
    temp.replace(path)


def digest_json(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def code_fingerprint(module: ModuleType) -> str:
    return digest_json(project_sources(module))


def project_sources(module: ModuleType) -> dict[str, str]:
    """SHA-256 of the module's source and of every project module it imports, transitively.

    Modules are found by their path in the project, never imported: fingerprinting must stay
    cheap (`--list`) and must not run a module's import-time code (TensorFlow, keras-tuner).
    """
    seen: dict[str, str] = {}
    pending = [module.__name__]
    while pending:
        name = pending.pop()
        if name in seen or name in API_REEXPORTS:
            continue
        path = project_module_file(name)
        if path is None:  # `from module import function`: not a module
            continue
        source = path.read_text()
        seen[name] = hashlib.sha256(source.encode()).hexdigest()
        pending += [m for m in imported_modules(source) if m.split(".")[0] in PROJECT_PACKAGES]
    return seen


def project_module_file(name: str) -> Path | None:
    """The source file of project module `name` (a module, or a package's __init__.py), if there is one."""
    base = PROJECT_ROOT.joinpath(*name.split("."))
    return next((p for p in (base.with_suffix(".py"), base / "__init__.py") if p.is_file()), None)


REFERENCE = re.compile(r"([A-Za-z_][\w.]*):[A-Za-z_]\w*")  # "module:function", imported when used


def imported_modules(source: str) -> list[str]:
    """Modules the source imports (anywhere, also inside functions) or names as "module:function"
    (how MODELS and the launcher refer to code they import later)."""
    names = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
            names += [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and REFERENCE.fullmatch(node.value):
            names.append(node.value.partition(":")[0])
    return names


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for package in ("tensorflow", "tf-keras", "numpy"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions
