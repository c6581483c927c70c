"""The model repository: TF Serving's layout, the contract between training and serving.

    <repository>/<model name>/<version>/saved_model.pb

The pipeline publishes into it; our server and tensorflow_model_server poll it. Both sides ask
this module what a version is, so they never disagree:

- a version is a directory whose name is an integer written in ASCII digits (TF Serving reads
  the name as an int64; a name such as '²' is a digit to `str.isdigit` but no number) and that
  holds a SavedModel (`saved_model.pb` or `saved_model.pbtxt`): a directory still being copied
  in is not a version yet, whatever its name;
- a new version is prepared under a hidden name in the model's base path and renamed into place,
  so a poller never sees it half-written; its number is above every version there and every
  number ever issued there (kept in `.last_version`), so a removed version's number never returns;
- a version may carry `maas.json` (who published it, a digest of its content): its lineage.

Hidden names (starting with '.') are ignored by TF Serving and by `versions`.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

SAVED_MODEL_FILES = ("saved_model.pb", "saved_model.pbtxt")
LAST_ISSUED = ".last_version"  # the highest version number ever issued in a model's base path
LINEAGE = "maas.json"
INT64_MAX = 2**63 - 1
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
_VERSION = re.compile(r"[0-9]+")


def name_problem(name: str) -> str | None:
    """Model names and version labels become directory names and URL parts: no traversal, nothing exotic."""
    if isinstance(name, str) and _NAME.fullmatch(name) and ".." not in name:
        return None
    return f"expected letters, digits, '_', '.', '-' (up to 128, no '..'), received {name!r}."


def version_number(name: str) -> int | None:
    """The version a directory name stands for, or None when it names no version."""
    if not _VERSION.fullmatch(name):
        return None
    number = int(name)
    return number if number <= INT64_MAX else None


def is_saved_model(path: Path) -> bool:
    return any((path / name).is_file() for name in SAVED_MODEL_FILES)


def versions(model_dir: str | Path) -> dict[int, Path]:
    """Version number -> directory, for every complete version under a model's base path."""
    base = Path(model_dir)
    if not base.is_dir():
        return {}
    found = {}
    for child in base.iterdir():
        number = version_number(child.name)
        if number is not None and is_saved_model(child):
            found[number] = child
    return dict(sorted(found.items()))


def resolves_inside(path: str | Path, root: str | Path) -> bool:
    """Whether `path`, symlinks followed, lies in `root` (a server's --model_base_path_root)."""
    return Path(path).resolve().is_relative_to(Path(root).resolve())


def latest(model_dir: str | Path) -> int | None:
    """The newest complete version, or None."""
    return max(versions(model_dir), default=None)


def taken(model_dir: Path) -> set[int]:
    """Every version-named entry, complete or not: numbers a new version must not take."""
    if not model_dir.is_dir():
        return set()
    return {n for n in (version_number(child.name) for child in model_dir.iterdir()) if n is not None}


@contextlib.contextmanager
def staging(model_dir: Path) -> Iterator[Path]:
    """A new hidden directory in the model's base path (so publishing from it is a rename), removed
    on exit with whatever was not published from it. Its name carries this process's pid, so the
    staging dirs of publishers that were killed are recognised, and removed here."""
    model_dir.mkdir(parents=True, exist_ok=True)
    for stale in model_dir.glob(".tmp-*-*"):
        pid = stale.name.split("-")[1]
        if pid.isdigit() and not process_alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)
    area = model_dir / f".tmp-{os.getpid()}-{uuid.uuid4().hex}"
    area.mkdir()
    try:
        yield area
    finally:
        shutil.rmtree(area, ignore_errors=True)


def process_alive(pid: int) -> bool:
    """Whether process `pid` still runs (staging dirs carry their writer's pid)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def publish(saved_model: Path, model_dir: Path) -> tuple[int, Path]:
    """Copy a SavedModel directory in as the next version; atomic, safe against concurrent publishers."""
    if not is_saved_model(saved_model):
        raise ValueError(f"{saved_model} holds no saved_model.pb: not a SavedModel to publish.")
    with staging(model_dir) as area:
        shutil.copytree(saved_model, area / "candidate")
        return publish_prepared(area / "candidate", model_dir)


def publish_prepared(candidate: Path, model_dir: Path) -> tuple[int, Path]:
    """Rename a complete SavedModel directory that lies in the model's base path into place as the next version.

    Publishers lock the base path to choose the number; a publisher that does not (another tool) makes
    the rename fail, and the next number is tried.
    """
    if not is_saved_model(candidate):
        raise ValueError(f"{candidate} holds no saved_model.pb: not a SavedModel to publish.")
    with _locked(model_dir):
        while True:
            version = max(taken(model_dir) | {last_issued(model_dir)}) + 1
            target = model_dir / str(version)
            try:
                os.rename(candidate, target)
            except OSError as e:
                if e.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    raise
                continue
            _write_atomic(model_dir / LAST_ISSUED, str(version))
            return version, target


def last_issued(model_dir: Path) -> int:
    """The highest version number ever issued in this base path (0 if none)."""
    try:
        return int((model_dir / LAST_ISSUED).read_text())
    except (FileNotFoundError, ValueError):
        return 0


@contextlib.contextmanager
def _locked(model_dir: Path) -> Iterator[None]:
    """An exclusive lock on the base path directory itself (no lock file beside the versions)."""
    fd = os.open(model_dir, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _write_atomic(path: Path, text: str) -> None:
    temp = path.with_name(f"{path.name}.{uuid.uuid4().hex}")
    temp.write_text(text)
    temp.replace(path)


def write_lineage(version_dir: Path, lineage: dict) -> None:
    """Record who made a version (run id, content digest, ...) inside it, before it is published."""
    (version_dir / LINEAGE).write_text(json.dumps(lineage, indent=2))


def lineage(version_dir: Path) -> dict:
    """What `write_lineage` recorded in a version, or {} for a version published by other means."""
    try:
        return json.loads((version_dir / LINEAGE).read_text())
    except (FileNotFoundError, ValueError):
        return {}


def signature_changes(published: dict, candidate: dict) -> list[str]:
    """What a client of `published` would find broken in `candidate` (both as `signatures` gives them):
    a signature gone or with another method, an input or output added, gone, or of another dtype or
    shape. New signatures break nobody, nor does an output added beside two or more: clients read those by name
    (TF Serving's REST answers them as an object per row either way)."""
    changes = []
    for key, old in sorted(published.items()):
        new = candidate.get(key)
        if new is None:
            changes.append(f"signature '{key}' is gone")
            continue
        if old["method"] != new["method"]:
            changes.append(f"signature '{key}': method was {old['method']}, is now {new['method']}")
        for part in ("inputs", "outputs"):
            for name in sorted(old[part].keys() | new[part].keys()):
                was, now = old[part].get(name), new[part].get(name)
                what = f"signature '{key}': {part[:-1]} '{name}'"
                if was is None:
                    if part == "inputs" or len(old["outputs"]) < 2:
                        changes.append(f"{what} is new ({_tensor(now)})")
                elif now is None:
                    changes.append(f"{what} ({_tensor(was)}) is gone")
                elif was != now:
                    changes.append(f"{what} was {_tensor(was)}, is now {_tensor(now)}")
    return changes


def _tensor(spec: dict) -> str:
    return f"{spec['dtype']} {spec['shape']}"


def signatures(version_dir: Path) -> dict:
    """Every serving signature of a version: its method name, and dtype and shape of each input and output."""
    from tensorflow.core.protobuf import saved_model_pb2

    saved = saved_model_pb2.SavedModel.FromString((Path(version_dir) / "saved_model.pb").read_bytes())
    return describe_signature_defs(saved.meta_graphs[0].signature_def)


def describe_signature_defs(signature_defs) -> dict:
    """SignatureDef protos by key as plain data: {key: {"method", "inputs": {name: {"dtype", "shape"}},
    "outputs": ...}} (dtype as TensorFlow names it, e.g. float32; -1 for an unknown dimension)."""
    def tensors(infos) -> dict:
        return {name: {"dtype": dtype_name(info),
                       "shape": None if info.tensor_shape.unknown_rank else [d.size for d in info.tensor_shape.dim]}
                for name, info in sorted(infos.items())}

    return {key: {"method": sig.method_name, "inputs": tensors(sig.inputs), "outputs": tensors(sig.outputs)}
            for key, sig in sorted(signature_defs.items()) if not key.startswith("__")}


def dtype_name(tensor_info) -> str:
    """TensorFlow's name for a TensorInfo's dtype (`tf.as_dtype(...).name`: DT_FLOAT is float32, DT_HALF_REF
    float16_ref), from the DataType enum's own names: no TensorFlow import."""
    enum = tensor_info.DESCRIPTOR.fields_by_name["dtype"].enum_type.values_by_number.get(tensor_info.dtype)
    if enum is None:
        return str(tensor_info.dtype)
    base, ref, _ = enum.name.removeprefix("DT_").lower().partition("_ref")
    return {"float": "float32", "double": "float64", "half": "float16"}.get(base, base) + ref
