"""The model repository: TF Serving's layout, the contract between training and serving.

    <repository>/<model name>/<version>/saved_model.pb

The pipeline publishes into it; our server and tensorflow_model_server poll it. Both sides ask
this module what a version is, so they never disagree:

- a version is a directory whose name is an integer written in ASCII digits (TF Serving reads
  the name as an int64; a name such as '²' is a digit to `str.isdigit` but no number) and that
  holds a SavedModel (`saved_model.pb` or `saved_model.pbtxt`): a directory still being copied
  in is not a version yet, whatever its name;
- a new version is published under a hidden name and renamed into place, so a poller never
  sees it half-written, and it never takes a number that is already taken.
"""
from __future__ import annotations

import errno
import os
import re
import shutil
import uuid
from pathlib import Path

SAVED_MODEL_FILES = ("saved_model.pb", "saved_model.pbtxt")
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


def latest(model_dir: str | Path) -> int | None:
    """The newest complete version, or None."""
    return max(versions(model_dir), default=None)


def taken(model_dir: Path) -> set[int]:
    """Every version-named entry, complete or not: numbers a new version must not take."""
    if not model_dir.is_dir():
        return set()
    return {n for n in (version_number(child.name) for child in model_dir.iterdir()) if n is not None}


def publish(saved_model: Path, model_dir: Path) -> tuple[int, Path]:
    """Copy the SavedModel directory in as the next version; atomic, safe against concurrent publishers.

    The copy is written to a hidden directory and renamed into place; if another publisher
    takes the number first, the rename fails and the next number is tried.
    """
    if not is_saved_model(saved_model):
        raise ValueError(f"{saved_model} holds no saved_model.pb: not a SavedModel to publish.")
    model_dir.mkdir(parents=True, exist_ok=True)
    staging = model_dir / f".tmp-{uuid.uuid4().hex}"
    try:
        shutil.copytree(saved_model, staging)
        while True:
            version = max(taken(model_dir), default=0) + 1
            target = model_dir / str(version)
            try:
                os.rename(staging, target)
                return version, target
            except OSError as e:
                if e.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def signatures(version_dir: Path) -> dict:
    """Every serving signature of a version: its method name, and dtype and shape of each input and output."""
    import tensorflow as tf
    from tensorflow.core.protobuf import saved_model_pb2

    saved = saved_model_pb2.SavedModel.FromString((Path(version_dir) / "saved_model.pb").read_bytes())

    def tensors(infos) -> dict:
        return {name: {"dtype": tf.dtypes.as_dtype(info.dtype).name,
                       "shape": [d.size for d in info.tensor_shape.dim]}
                for name, info in infos.items()}

    return {key: {"method": sig.method_name, "inputs": tensors(sig.inputs), "outputs": tensors(sig.outputs)}
            for key, sig in saved.meta_graphs[0].signature_def.items() if not key.startswith("__")}
