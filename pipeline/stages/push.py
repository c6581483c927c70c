"""Publish the exported SavedModel into a model repository in TF Serving's layout.

`<repository>/<model_name>/<version>/saved_model.pb`, version = the next integer. The copy is
written to a hidden directory and renamed into place, so a server polling the repository (ours or
tensorflow_model_server) never sees a half-copied version, and an existing version is never
overwritten.
"""
from __future__ import annotations

import errno
import json
import os
import re
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


@dataclass(frozen=True)
class Config:
    repository: str = "model_repository"  # the model base path's parent, as in --model_base_path
    model_name: str = "digits"

    def problems(self) -> list[str]:
        if not MODEL_NAME.match(self.model_name) or ".." in self.model_name:
            return [
                f"model_name: expected letters, digits, '_', '.', '-' (up to 128, no '..'), "
                f"received {self.model_name!r}."
            ]
        return []


CONFIG = ("push",)
INPUTS = ("saved_model",)
OUTPUTS = ()


def run(cfg, inputs: dict[str, Path], out: Path) -> dict:
    model_dir = Path(cfg.push.repository) / cfg.push.model_name
    version, path = publish(inputs["saved_model"], model_dir)
    print(f"push: published {path}")
    (out / "pushed.json").write_text(json.dumps({"version": version, "path": str(path.resolve())}))
    return {"version": version, "path": str(path.resolve())}


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
