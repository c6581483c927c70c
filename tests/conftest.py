"""Shared test set-up: Keras 2 for TensorFlow (must precede any TensorFlow import), one digits pipeline run per
test run (the real CLI, tuning and compression included) shared by every xdist worker, and TF Serving's
half_plus_two test model."""
import contextlib
import dataclasses
import fcntl
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from serving import quiet_tensorflow  # noqa: E402,F401 -- before any test imports TensorFlow
from tests.pipeline_cli import DIGITS_RUN, run_pipeline  # noqa: E402


@dataclass
class Digits:
    """A digits run as `python -m pipeline.run` leaves it (DIGITS_RUN): read it; to change it, change a copy."""

    workdir: Path  # holds runs/ and model_repository/, as after `make run`; the paths in its config are relative
    run_id: str
    base: Path  # the model base path, with version 1
    x_test: np.ndarray
    y_test: np.ndarray

    def copy(self, to: Path) -> "Digits":
        """The same run in `to`, to change at will (runs there reuse its cache)."""
        shutil.copytree(self.workdir, to, symlinks=True)
        return dataclasses.replace(self, workdir=to, base=to / self.base.relative_to(self.workdir))


@contextlib.contextmanager
def locked(path: Path):
    """One process at a time (xdist workers are processes), as pytest-xdist documents for shared fixtures."""
    with path.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@pytest.fixture(scope="session")
def shared_dir(tmp_path_factory, worker_id) -> Path:
    """A directory every xdist worker of this test run sees (its own temporary directory without xdist)."""
    base = tmp_path_factory.getbasetemp()
    return base if worker_id == "master" else base.parent


@pytest.fixture(scope="session")
def digits(shared_dir) -> Digits:
    """The digits pipeline run by the real CLI once per test run: the first worker to need it runs it under a
    file lock, the others wait for it and reuse it."""
    workdir = shared_dir / "digits"
    with locked(shared_dir / "digits.lock"):
        if not (workdir / "runs" / "latest" / "push" / "pushed.json").is_file():
            shutil.rmtree(workdir, ignore_errors=True)
            workdir.mkdir()
            result = run_pipeline(workdir, *DIGITS_RUN)
            assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
            (workdir / "printed.txt").write_text(result.stdout + result.stderr)  # what the user saw
    run_id = os.readlink(workdir / "runs" / "latest")
    test = np.load(workdir / "runs" / "latest" / "validate" / "dataset" / "test.npz")
    return Digits(workdir, run_id, workdir / "model_repository" / "digits", test["x"], test["y"])


@pytest.fixture(scope="session")
def half_plus_two_base(tmp_path_factory) -> Path:
    """TF Serving's test model as version 123 of model base path .../half_plus_two."""
    from tests.serving import half_plus_two

    base = tmp_path_factory.mktemp("repo") / "half_plus_two"
    half_plus_two.build(base / "123")
    return base


def pytest_collection_modifyitems(config, items):
    """`make test-quick` (-m 'not slow') stays quick: a test that needs the shared digits run (a real pipeline run,
    half a minute on 2 cores, every worker waiting for it) must be marked slow. (tests/serving has a `digits` of its
    own, a model built in a second.)"""
    here = Path(__file__).parent.relative_to(config.rootpath).as_posix()  # this conftest's fixtures' baseid

    def uses_the_shared_run(item) -> bool:
        definitions = item._fixtureinfo.name2fixturedefs.get("digits", ())
        return bool(definitions) and definitions[-1].baseid == here  # the last one is the one the test gets

    unmarked = [item.nodeid for item in items if item.get_closest_marker("slow") is None and uses_the_shared_run(item)]
    if unmarked:
        raise pytest.UsageError(f"{len(unmarked)} test(s) use the shared digits pipeline run without "
                                f"@pytest.mark.slow (make test-quick leaves slow tests out): {unmarked[:5]}")
