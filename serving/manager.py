"""Which model versions are loaded: poll the base paths, load new versions, then unload old ones;
and which version each version label names.

A new version is loaded and warmed up before it takes traffic, and an old one is unloaded only
after that, so "latest" never points at nothing. Requests hold a reference to the Servable they
resolved, so a version unloaded mid-request finishes that request. A version that fails to load
is reported in its status (state END with the error) and does not affect the others (the version
it was meant to replace keeps serving). Like TF Serving (--max_num_load_retries, --load_retry_interval_micros)
a failed load is retried, here on the polls after a backoff (the interval, doubled after each failure) so that
other models never wait for it; a change of the version's directory starts its retries afresh. Versions stay in
the status after unloading, as END. A version whose directory is removed while it serves the last one of its
model keeps serving from memory, and its status says so. A base path that does not exist or holds no versions is
logged in TF Serving's words once per change (the model's status is NOT_FOUND until a version appears, as there).

Labels follow TF Serving's ServerCore::UpdateModelVersionLabelMap: a config may only point a label
at a version that is AVAILABLE; a config that does not is refused whole (FAILED_PRECONDITION) and
the previous config and labels stay. With --allow_version_labels_for_unavailable_models a new label,
or one that keeps its version, may name a version still loading (TF Serving needs it to start with
labels at all, since nothing is loaded when the first config is read).
"""
from __future__ import annotations

import gc
import logging
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from tensorflow.core.protobuf.config_pb2 import ConfigProto

from serving import warmup
from serving.errors import FailedPrecondition, InvalidArgument, NotFound, ServingError
from serving.metrics import Metrics
import repository
from serving.model_config import ModelServerConfig, aspired_versions
from serving.servable import Servable

log = logging.getLogger("serving")


@dataclass
class VersionStatus:
    state: str = "START"  # START | LOADING | AVAILABLE | UNLOADING | END (TF Serving's ManagerState)
    error_code: str = "OK"  # a gRPC status code name
    error_message: str = ""


@dataclass(frozen=True)
class LoadFailure:
    """When to try a version that failed to load again."""

    attempts: int
    mtime: float | None  # its directory's at the failure: a change retries at once
    retry_at: float | None  # time.monotonic() of the next retry; None when retries are exhausted


class ModelManager:
    def __init__(self, config: ModelServerConfig, metrics: Metrics, enable_warmup: bool = True,
                 session_config: ConfigProto | None = None, allow_labels_for_unavailable: bool = False,
                 max_load_retries: int = 5, load_retry_interval_s: float = 60.0, path_root: str = ""):
        self._config = config
        self._path_root = path_root
        self._escaped: set[Path] = set()  # version directories outside path_root, reported once each
        self._allow_labels_for_unavailable = allow_labels_for_unavailable
        self._labels: dict[str, dict[str, int]] = {}
        self._session_config = session_config
        self._metrics = metrics
        self._warmup = enable_warmup
        self._lock = threading.Lock()  # guards the dicts below; loading happens outside it
        self._poll_lock = threading.Lock()  # one poll at a time
        self._reload_lock = threading.Lock()  # one config change at a time
        self._available: dict[str, dict[int, Servable]] = {}  # replaced, never mutated: lock-free reads
        self._status: dict[str, dict[int, VersionStatus]] = {}
        self._max_load_retries = max_load_retries
        self._load_retry_interval_s = load_retry_interval_s
        self._failed: dict[tuple[str, int], LoadFailure] = {}
        self._base_path_problems: dict[str, str] = {}  # model -> why it has no versions on disk ("" if it has)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- lookups (request path) -------------------------------------------------------------

    def servable(self, name: str, version: int | None = None, label: str | None = None) -> Servable:
        """The servable a request names, with TF Serving's errors."""
        if label is not None:
            version = self._label_version(name, label)
        versions = self._available.get(name, {})
        if version is None:
            if not versions:
                raise NotFound(f"Servable not found for request: Latest({name})")
            return versions[max(versions)]
        servable = versions.get(version)
        if servable is None:
            raise NotFound(f"Servable not found for request: Specific({name}, {version})")
        return servable

    def _label_version(self, name: str, label: str) -> int:
        version = self._labels.get(name, {}).get(label)
        if version is None:
            raise InvalidArgument(f"Unrecognized servable version label: {label}")
        return version

    def status(self, name: str, version: int | None = None) -> list[tuple[int, VersionStatus]]:
        """(version, status) newest first, as TF Serving's GetModelStatus lists them."""
        with self._lock:
            versions = dict(self._status.get(name, {}))
        if version is not None:
            if version not in versions:
                raise NotFound(f"Could not find version {version} of model {name}")
            return [(version, versions[version])]
        if not versions:
            raise NotFound(f"Could not find any versions of model {name}")
        return sorted(versions.items(), reverse=True)

    def labels(self) -> dict[str, dict[str, int]]:
        """Model -> {label: version} in force (a copy)."""
        return {name: dict(labels) for name, labels in self._labels.items()}

    def model_names(self) -> list[str]:
        return [m.name for m in self._config.model_config_list.config]

    @property
    def config(self) -> ModelServerConfig:
        return self._config

    # -- changes ------------------------------------------------------------------------------

    def reload_config(self, config: ModelServerConfig) -> None:
        """Apply a new ModelServerConfig now: new models load, removed ones unload, labels move.
        A config whose labels name versions that are not AVAILABLE is refused, and nothing changes."""
        with self._reload_lock:
            self._labels = self._checked_labels(config)
            self._config = config
            self.poll()

    def _checked_labels(self, config: ModelServerConfig) -> dict[str, dict[str, int]]:
        labels: dict[str, dict[str, int]] = {}
        for model in config.model_config_list.config:
            available = self._available.get(model.name, {})
            for label, version in model.version_labels.items():
                unchanged = self._labels.get(model.name, {}).get(label, version) == version
                if version not in available and not (self._allow_labels_for_unavailable and unchanged):
                    raise FailedPrecondition(f"Request to assign label to version {version} of model {model.name}, "
                                             f"which is not currently available for inference")
                labels.setdefault(model.name, {})[label] = version
        return labels

    def poll(self) -> None:
        """One pass over the config: load what the policies want and is not loaded, then unload."""
        with self._poll_lock:
            configured = {m.name: m for m in self._config.model_config_list.config}
            for name in list(self._available):
                if name not in configured:
                    for version in list(self._available[name]):
                        self._unload(name, version)
            problems = {}
            for name, model in configured.items():
                on_disk = self._versions(name, model.base_path)
                problems[name] = self._check_base_path(name, model.base_path, on_disk)
                wanted = aspired_versions(list(on_disk), model)
                for version in sorted(wanted - set(self._available.get(name, {}))):
                    if self._should_try(name, version, on_disk[version]):
                        self._load(name, version, on_disk[version])
                for version in self._unwanted(set(self._available.get(name, {})), wanted):
                    self._unload(name, version)
                self._report_removed(name, set(on_disk))
            self._base_path_problems = problems

    def _check_base_path(self, name: str, base_path: str, on_disk: dict[int, Path]) -> str:
        """Why a model has no versions to load, logged in TF Serving's words (file_system_storage_path_source.cc)
        when it changes, not on every poll as TF Serving does; "" when it has versions."""
        if on_disk:
            return ""
        missing = not Path(base_path).exists()
        problem = (f"FileSystemStoragePathSource encountered a filesystem access error: Could not find base path "
                   f"{base_path} for servable {name} with error NOT_FOUND: {base_path} not found" if missing else
                   f"No versions of servable {name} found under base path {base_path}. Did you forget to name your "
                   f"leaf directory as a number (eg. '/1/')?")
        if problem != self._base_path_problems.get(name):
            log.log(logging.ERROR if missing else logging.WARNING, "%s", problem)
        return problem

    def _versions(self, name: str, base_path: str) -> dict[int, Path]:
        """The complete versions under `base_path`; with --model_base_path_root, those whose directory resolves
        (symlinks followed) outside it are ignored: a link must not make the server load a model from elsewhere."""
        found = repository.versions(base_path)
        if not self._path_root:
            return found
        inside = {v: p for v, p in found.items() if repository.resolves_inside(p, self._path_root)}
        for version in found.keys() - inside.keys():
            if found[version] not in self._escaped:
                self._escaped.add(found[version])
                log.warning("Ignoring %s version %d: its directory resolves outside --model_base_path_root", name, version)
        return inside

    @staticmethod
    def _unwanted(available: set[int], wanted: set[int]) -> list[int]:
        """Versions to unload, keeping the newest one while no wanted version is available
        (TF Serving's AvailabilityPreservingPolicy): a failed new version leaves the old serving."""
        unwanted = available - wanted
        if unwanted and not available & wanted:
            unwanted.discard(max(unwanted))
        return sorted(unwanted)

    def _report_removed(self, name: str, on_disk: set[int]) -> None:
        """A version kept serving after its directory went away (see `_unwanted`) stays AVAILABLE, as TF Serving
        clients check the state, with a message saying it serves from memory (gone if the directory returns)."""
        for version in self._available.get(name, {}):
            message = "" if version in on_disk else (
                f"serving from memory: version directory {version} is gone from the base path (removed, or no "
                f"SavedModel in it any more); it is unloaded once another version is available")
            if self._status[name][version].error_message != message:
                if message:
                    log.warning("Serving %s version %d from memory: its directory is gone", name, version)
                self._set_status(name, version, VersionStatus("AVAILABLE", "OK", message))

    def _should_try(self, name: str, version: int, path: Path) -> bool:
        failure = self._failed.get((name, version))
        if failure is None or _mtime(path) != failure.mtime:
            return True
        return failure.retry_at is not None and time.monotonic() >= failure.retry_at

    def _record_failure(self, name: str, version: int, path: Path) -> str:
        """Count one more failed load of a version (the first, if its directory changed since the last) and
        schedule its retry; returns what its status says about retrying."""
        mtime = _mtime(path)
        previous = self._failed.get((name, version))
        attempts = previous.attempts + 1 if previous and previous.mtime == mtime else 1
        if attempts > self._max_load_retries:
            self._failed[(name, version)] = LoadFailure(attempts, mtime, None)
            return (f"attempt {attempts}, no retries left (--max_num_load_retries={self._max_load_retries}); "
                    f"tried again when its directory changes")
        delay = self._load_retry_interval_s * 2 ** (attempts - 1)
        self._failed[(name, version)] = LoadFailure(attempts, mtime, time.monotonic() + delay)
        return f"attempt {attempts} of {self._max_load_retries + 1}, next retry in {delay:g} s"

    def _set_status(self, name: str, version: int, status: VersionStatus) -> None:
        with self._lock:
            self._status.setdefault(name, {})[version] = status
        self._metrics.version_state(name, version, status.state)

    def _load(self, name: str, version: int, path: Path) -> None:
        self._set_status(name, version, VersionStatus("LOADING"))
        started = time.perf_counter()
        try:
            servable = self._read(name, version, path)
            replayed = self._warm_up(servable) if self._warmup else 0
        except Exception as e:  # any load failure is this version's, not the server's
            code = e.code.name if isinstance(e, ServingError) else "UNKNOWN"
            message = f"{load_error(e)} ({self._record_failure(name, version, path)})"
            self._set_status(name, version, VersionStatus("END", code, message))
            log.error("Failed to load %s version %d from %s: %s", name, version, path, message)
            return
        seconds = time.perf_counter() - started
        gc.freeze()  # the graph's many Python objects live as long as the version: keep the collector off them
        self._failed.pop((name, version), None)
        with self._lock:
            self._available = {**self._available, name: {**self._available.get(name, {}), version: servable}}
        self._set_status(name, version, VersionStatus("AVAILABLE"))
        self._metrics.model_loaded(name, seconds)
        log.info("Loaded %s version %d in %.2fs (%d warmup requests)", name, version, seconds, replayed)

    def _read(self, name: str, version: int, path: Path) -> Servable:
        """Load the SavedModel, each attempt counted as TF's LoadSavedModel counts it (/tensorflow/cc/saved_model/)."""
        started, ok = time.perf_counter(), False
        try:
            servable = Servable(name, version, path, self._session_config)
            ok = True
            return servable
        finally:
            self._metrics.saved_model_read(str(path), time.perf_counter() - started, ok)

    def _warm_up(self, servable: Servable) -> int:
        started = time.perf_counter()
        replayed = warmup.replay(servable)
        if replayed:
            self._metrics.warmed_up(str(servable.path), time.perf_counter() - started, replayed)
        return replayed

    def _unload(self, name: str, version: int) -> None:
        self._set_status(name, version, VersionStatus("UNLOADING"))
        with self._lock:
            remaining = {v: s for v, s in self._available.get(name, {}).items() if v != version}
            self._available = {**self._available, name: remaining}
        self._set_status(name, version, VersionStatus("END"))
        log.info("Unloaded %s version %d", name, version)

    # -- polling thread -------------------------------------------------------------------------

    def start(self, poll_wait_seconds: float) -> None:
        """Apply the first config (its labels checked as TF Serving does at startup) and poll once now;
        then every `poll_wait_seconds` (0: never again), like TF Serving."""
        self.reload_config(self._config)
        if poll_wait_seconds > 0:
            self._thread = threading.Thread(target=self._poll_forever, args=(poll_wait_seconds,), daemon=True,
                                            name="model-poller")
            self._thread.start()

    def _poll_forever(self, wait: float) -> None:
        while not self._stop.wait(wait):
            try:
                self.poll()
            except Exception:  # a broken poll must not stop future polls
                log.exception("Polling the model repository failed")

    def stop(self) -> None:
        """No more polls; one under way (a version loading, perhaps for minutes) is not waited for: the thread is
        a daemon, and the server exits."""
        self._stop.set()


def _mtime(path: Path) -> float | None:
    try:
        return path.stat().st_mtime
    except OSError:  # removed meanwhile
        return None


def load_error(e: Exception) -> str:
    """A load failure in one line for a version's status. TensorFlow's messages carry graph-node markers and the
    Python stack where the failing op was defined: nothing a client can use, and paths outside the base path."""
    text = str(e).split("Original stack trace")[0]
    text = re.sub(r"Detected at node .*?\nNode: '[^']*'", "", text, flags=re.S)
    lines = [line.strip() for line in text.splitlines()]
    return f"{type(e).__name__}: " + " ".join(line for line in lines if line and not line.startswith(("[[", 'File "')))
