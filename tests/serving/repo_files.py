"""Model repositories and configs for the server tests."""
from __future__ import annotations

import shutil
from pathlib import Path


def write_config(path: Path, models: list[tuple[str, Path, str]]) -> Path:
    """A text-format ModelServerConfig: (name, base path, extra ModelConfig text) per model."""
    entries = "".join(
        f'  config {{\n    name: "{name}"\n    base_path: "{base}"\n    model_platform: "tensorflow"\n    {extra}\n  }}\n'
        for name, base, extra in models
    )
    path.write_text(f"model_config_list {{\n{entries}}}\n")
    return path


def copy_version(base: Path, version: int, to: Path) -> Path:
    shutil.copytree(base / str(version), to)
    return to
