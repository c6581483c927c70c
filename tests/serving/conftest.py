"""Fixtures for the server tests: TF Serving's half_plus_two model (and, from tests/conftest.py, a
trained digits model). The server itself runs per test module (serving.process.ServerProcess)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # half_plus_two, repo_files
import half_plus_two  # noqa: E402


@pytest.fixture(scope="session")
def half_plus_two_base(tmp_path_factory) -> Path:
    """TF Serving's test model as version 123 of model base path .../half_plus_two."""
    base = tmp_path_factory.mktemp("repo") / "half_plus_two"
    half_plus_two.build(base / "123")
    return base
