"""Shared test set-up: Keras 2 for TensorFlow (must precede any TensorFlow import), and a digits model
trained, exported and pushed by the pipeline itself, and TF Serving's half_plus_two test model, shared by
every test that needs them."""
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


@dataclass
class Digits:
    workdir: Path  # holds runs/ and model_repository/, as after `make run`
    run_id: str
    base: Path  # the model base path, with version 1
    x_test: np.ndarray
    y_test: np.ndarray


@pytest.fixture(scope="session")
def digits(tmp_path_factory) -> Digits:
    """A small digits model trained and exported by the pipeline itself, as version 1."""
    from pipeline.config import load_config
    from pipeline.progress import SilentReporter
    from pipeline.runner import Runner

    workdir = tmp_path_factory.mktemp("digits")
    cfg = load_config(None, [f"output_dir={workdir / 'runs'}", f"push.repository={workdir / 'model_repository'}",
                             "train.epochs=3", "evaluate.min_accuracy=0.5", "train.verbose=0", "compress.variants=[]"])
    runner = Runner(cfg)
    runner.run(reporter=SilentReporter())
    test = np.load(workdir / "runs" / "latest" / "validate" / "dataset" / "test.npz")
    return Digits(workdir, runner.run_id, workdir / "model_repository" / "digits", test["x"], test["y"])


@pytest.fixture(scope="session")
def half_plus_two_base(tmp_path_factory) -> Path:
    """TF Serving's test model as version 123 of model base path .../half_plus_two."""
    from tests.serving import half_plus_two

    base = tmp_path_factory.mktemp("repo") / "half_plus_two"
    half_plus_two.build(base / "123")
    return base
