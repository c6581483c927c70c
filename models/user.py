"""Code a user names in the config instead of editing the project: `package.module:function` or
`path/to/file.py:function` (a model builder in model.name, a training step in train.step).

The config only checks that the module can be found (no import: user code may import TensorFlow);
the stage that needs the function imports it. Whatever the user's code raises is reported with the
user's own traceback and the signature the pipeline calls it with.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

FORMS = "'package.module:function' or 'path/to/file.py:function'"


class UserCodeError(ValueError):
    """User code that cannot be found, imported or called, or that returned the wrong thing."""


def is_reference(name: str) -> bool:
    return ":" in name


def reference_problem(reference: str) -> str | None:
    """Why `reference` cannot name a function (None when its module can be found); nothing is imported."""
    module, _, function = reference.rpartition(":")
    if not module or not function.isidentifier():
        return f"expected {FORMS}, received {reference!r}."
    if module.endswith(".py"):
        path = Path(module)
        return None if path.is_file() else f"{reference!r}: no such file {str(path.resolve())!r}."
    try:
        found = importlib.util.find_spec(module)
    except (ImportError, ValueError):  # a parent package is missing
        found = None
    if found is None:
        return (f"{reference!r}: cannot import module {module!r}: it is not on the Python path "
                f"(searched, in order: {[p or '.' for p in sys.path]}). Run from the directory that holds "
                f"{module.split('.')[0]!r}, add that directory to PYTHONPATH, or name the file: "
                f"path/to/{module.replace('.', '/')}.py:{function}.")
    return None


def source_file(reference: str) -> Path | None:
    """The file that defines a reference's function, for cache keys: its edits re-run the stages using it."""
    module = reference.rpartition(":")[0]
    if module.endswith(".py"):
        return Path(module)
    spec = importlib.util.find_spec(module)
    return Path(spec.origin) if spec and spec.origin and spec.origin.endswith(".py") else None


def load(reference: str) -> Callable:
    """The function `reference` names, its module imported (so the Keras classes it registers load too)."""
    problem = reference_problem(reference)
    if problem:
        raise UserCodeError(problem)
    module_name, _, function = reference.rpartition(":")
    module = _import(module_name, reference)
    found = getattr(module, function, None)
    if not callable(found):
        public = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_"))
        raise UserCodeError(f"{reference!r}: {module.__file__} has no function {function!r}; "
                            f"it defines {public or 'no public functions'}.")
    return found


def call(reference: str, function: Callable, expected: str, *args):
    """`function(*args)`, with an exception it raises reported as the user's, with `expected` (the call's
    signature) to compare against."""
    try:
        return function(*args)
    except Exception as e:
        frames = traceback.extract_tb(e.__traceback__)[1:]  # from the user's function down
        where = "".join(traceback.format_list(frames))
        raise UserCodeError(f"{reference} raised {type(e).__name__}: {e}\n"
                            f"Traceback (the user code's frames):\n{where}"
                            f"It is called as {expected}.") from e


def _import(module_name: str, reference: str) -> ModuleType:
    try:
        if not module_name.endswith(".py"):
            return importlib.import_module(module_name)
        return _import_file(Path(module_name).resolve())
    except UserCodeError:
        raise
    except Exception as e:
        frames = "".join(traceback.format_list(traceback.extract_tb(e.__traceback__)[-3:]))
        raise UserCodeError(f"{reference!r}: importing {module_name!r} failed with {type(e).__name__}: {e}\n"
                            f"{frames}") from e


def _import_file(path: Path) -> ModuleType:
    """A module loaded from a file, once per process (a second load would register its Keras classes twice)."""
    name = f"_maas_user_{path.stem}_{hashlib.sha256(str(path).encode()).hexdigest()[:8]}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module
