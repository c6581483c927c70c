"""Fixtures for the server tests: TF Serving's half_plus_two model and a trained digits model.
The server itself runs per test module (server_process.ServerProcess)."""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))  # half_plus_two, repo_files
import half_plus_two  # noqa: E402


@pytest.fixture(scope="session")
def half_plus_two_base(tmp_path_factory) -> Path:
    """TF Serving's test model as version 123 of model base path .../half_plus_two."""
    base = tmp_path_factory.mktemp("repo") / "half_plus_two"
    half_plus_two.build(base / "123")
    return base


@dataclass
class Digits:
    base: Path  # the model base path, with version 1
    x_test: np.ndarray
    y_test: np.ndarray


@pytest.fixture(scope="session")
def digits(tmp_path_factory) -> Digits:
    """A small digits model trained and exported by the pipeline itself, as version 1."""
    from pipeline.config import load_config
    from pipeline.runner import Runner

    workdir = tmp_path_factory.mktemp("digits")
    cfg = load_config(None, [f"output_dir={workdir / 'runs'}", f"push.repository={workdir / 'repo'}",
                             "train.epochs=3", "evaluate.min_accuracy=0.5", "train.verbose=0"])
    Runner(cfg).run(log=lambda _: None)
    test = np.load(workdir / "runs" / "latest" / "validate" / "dataset" / "test.npz")
    return Digits(workdir / "repo" / "digits", test["x"], test["y"])


