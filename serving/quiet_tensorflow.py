"""TensorFlow as every process of the project imports it: Keras 2, and without the lines it prints on a machine
without a GPU.

Two kinds of line are noise there. TensorFlow's C++ log (`failed call to cuInit`): TF_CPP_MIN_LOG_LEVEL defaults to
3 here, since TensorFlow's errors reach Python as exceptions anyway. And the lines its libraries print while they
load (`oneDNN custom operations are on`, `Could not find cuda drivers`), before any log setting applies
(TensorFlow's own issue #100442): the first `import tensorflow` runs with the process's stderr closed. Both
packages' `__init__` import this module; TF_CPP_MIN_LOG_LEVEL=0 shows everything again.
"""
from __future__ import annotations

import contextlib
import importlib.abc
import importlib.machinery
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# Keras 2 (tf_keras) is the project's Keras, and TFMOT's. Without this, `import tensorflow` also imports Keras 3,
# which nothing here uses: 1.1 s of every process's start (a server's, a worker's), measured 4.7 vs 3.6 s of CPU.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")


@contextlib.contextmanager
def stderr_closed():
    """File descriptor 2 points at /dev/null (what C++ libraries write to), then back."""
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


class _QuietLoader(importlib.abc.Loader):
    """TensorFlow's own loader, run with stderr closed; once it ran, the module is left with its own loader."""

    def __init__(self, loader: importlib.abc.Loader):
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module) -> None:
        module.__spec__.loader = module.__loader__ = self.loader
        with stderr_closed():
            self.loader.exec_module(module)


class _QuietImport(importlib.abc.MetaPathFinder):
    """Finds `tensorflow` once, as the path finder does, with a quiet loader; then takes itself out."""

    def find_spec(self, name: str, path=None, target=None):
        if name != "tensorflow":
            return None
        sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _QuietLoader(spec.loader)
        return spec


if os.environ["TF_CPP_MIN_LOG_LEVEL"] != "0" and "tensorflow" not in sys.modules \
        and not any(isinstance(finder, _QuietImport) for finder in sys.meta_path):
    sys.meta_path.insert(0, _QuietImport())
