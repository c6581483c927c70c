"""Load a pipeline config: a YAML file plus `a.b=value` overrides, into the frozen dataclasses of
pipeline.specs.

Every problem (unknown key, wrong type, value out of range) is collected before failing, so
one run shows them all, each with the key, what was received and what was expected.
Importing this module is cheap: stages import TensorFlow only when they run.
"""
from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml

import repository
from models import MODELS, user
from models.config import input_shape_problem
from pipeline.errors import ConfigError
from pipeline.specs import PipelineConfig

CONFIG_DIR = Path(__file__).parent / "configs"
DEFAULT_CONFIG = CONFIG_DIR / "digits.yaml"
RENAMED = {"serve.smoke": "push.smoke_test", "serve.timeout_s": "push.smoke_test_timeout_s"}  # old key -> new


def resolve_config_path(name_or_path: str | None) -> Path:
    """`digits` names pipeline/configs/digits.yaml; anything else is a path."""
    if name_or_path is None:
        return DEFAULT_CONFIG
    path = Path(name_or_path)
    if not path.suffix and not path.exists():
        return CONFIG_DIR / f"{name_or_path}.yaml"
    return path


def load_config(path: str | Path | None = None, overrides: list[str] = (),
                overrides_from: str = "the command line") -> PipelineConfig:
    """Read YAML at `path` (default digits.yaml), apply `key.sub=value` overrides, type-check. A problem in an
    override is said to come from `overrides_from` (the command line, or the overrides given to pipeline.run)."""
    path = resolve_config_path(None if path is None else str(path))
    problems: list[str] = []
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except OSError as e:
        raise ConfigError(str(path), [f"cannot read the config file: {e.strerror}."]) from None
    except yaml.YAMLError as e:
        raise ConfigError(str(path), [f"not valid YAML: {e}"]) from None
    if not isinstance(raw, dict):
        raise ConfigError(str(path), [f"expected a mapping of keys at the top, received {type(raw).__name__}."])
    for item in overrides:
        _apply_override(raw, item, problems)
    _renamed_keys(raw, problems)
    cfg = _with_derived_values(from_dict(PipelineConfig, raw, problems), problems)
    problems += _model_name_problems(cfg.model.name)
    problems += _model_and_data_problems(cfg) if not problems else []
    if problems:
        overridden = [item.partition("=")[0] for item in overrides]
        from_overrides = [p for p in problems if p.startswith("'") or any(
            key == k or k.startswith(key + ".") or key.startswith(k + ".")
            for k in overridden for key in [p.partition(":")[0]])]
        source = (overrides_from if len(from_overrides) == len(problems) else
                  f"{path} and {overrides_from}" if from_overrides else str(path))
        raise ConfigError(source, problems)
    return cfg


def _renamed_keys(raw: dict, problems: list[str]) -> None:
    """A key an older config used: named with its new name, and taken out so it is not also an unknown key."""
    for old, new in RENAMED.items():
        section, _, leaf = old.partition(".")
        if isinstance(raw.get(section), dict) and leaf in raw[section]:
            problems.append(f"{old}: renamed to {new}; write {new}={yaml.safe_dump(raw[section].pop(leaf)).split()[0]}.")
            if not raw[section]:
                del raw[section]


def _model_name_problems(name: str) -> list[str]:
    """model.name is a built-in builder, or a user's whose module can be found (it is not imported here)."""
    if ":" in name:
        problem = user.reference_problem(name)
        return [f"model.name: {problem}"] if problem else []
    if name in MODELS:
        return []
    close = difflib.get_close_matches(name, list(MODELS), n=1)
    maybe = f" (did you mean {close[0]!r}?)" if close else ""
    return [f"model.name: expected one of {', '.join(map(repr, MODELS))}{maybe} or a builder of yours as "
            f"{user.FORMS}; received {name!r}."]


def _model_and_data_problems(cfg: PipelineConfig) -> list[str]:
    """The model must fit the data's shape: found now, not when train runs. A CSV's rows are flat; an
    .npz's shape is known once it is read (ingest checks it then)."""
    kind = "text" if cfg.data.text_column else "image" if Path(cfg.data.source).is_dir() else "numeric"
    shape = cfg.data.input_shape or {"digits": (8, 8, 1)}.get(cfg.data.source)
    if kind == "image":
        shape = (*cfg.data.image_size, cfg.data.channels)
    elif not shape and cfg.data.source.endswith(".csv"):
        shape = ("features",)
    problem = (shape or kind == "text") and input_shape_problem(cfg.model.name, tuple(shape), kind)
    found = [f"model.name: {problem}"] if problem else []
    if cfg.data.augment and kind != "image":
        found.append(f"data.augment: {list(cfg.data.augment)} flips and crops images; data.source "
                     f"{cfg.data.source!r} is not a directory of image folders.")
    return found


def _with_derived_values(cfg: PipelineConfig, problems: list[str]) -> PipelineConfig:
    """Fields left empty that other fields decide: push.model_name is named after data.source, so a run
    on another data set never publishes into the digits model by default."""
    if cfg.push.model_name:
        return cfg
    name = "digits" if cfg.data.source == "digits" else re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(cfg.data.source).stem)
    name = name.strip("-.")
    problem = repository.name_problem(name)
    if problem:
        problems.append(f"push.model_name: not set, and data.source does not give a usable name ({problem}); "
                        f"set push.model_name.")
    return dataclasses.replace(cfg, push=dataclasses.replace(cfg.push, model_name=name))


def config_from_dict(raw: dict, source: str) -> PipelineConfig:
    """Rebuild a config saved with `to_dict` (used by --resume)."""
    problems: list[str] = []
    cfg = from_dict(PipelineConfig, raw, problems)
    if problems:
        raise ConfigError(source, problems)
    return cfg


def section_from_dict(name: str, raw: dict, overrides: list[str], source: str) -> Any:
    """Section `name` of a saved config (`raw`, as `to_dict` wrote it; a section it lacks takes its defaults) with
    `name.key=value` overrides, type-checked: what a tool outside the pipeline reads of the config a model was
    trained with (pipeline.monitor reads `monitor`)."""
    problems: list[str] = []
    hint = typing.get_type_hints(PipelineConfig)[name]
    section = {name: dict(raw.get(name, {}))}
    for item in overrides:
        if not item.startswith(f"{name}."):
            problems.append(f"{item!r}: only {name}.* keys can be set here, e.g. {all_keys(hint, name + '.')[0]}=...")
            continue
        _apply_override(section, item, problems)
    values = from_dict(hint, section[name], problems, f"{name}.")
    if problems:
        raise ConfigError(source, problems)
    return values


def all_keys(cls: type = PipelineConfig, prefix: str = "") -> list[str]:
    """Every valid dotted key, for suggestions and documentation."""
    keys = []
    for f in dataclasses.fields(cls):
        key = prefix + f.name
        hint = typing.get_type_hints(cls)[f.name]
        keys += all_keys(hint, key + ".") if dataclasses.is_dataclass(hint) else [key]
    return keys


def _apply_override(raw: dict, item: str, problems: list[str]) -> None:
    key, sep, text = item.partition("=")
    if not sep or not key:
        problems.append(f"{item!r}: an override must look like key.sub=value, e.g. train.epochs=5.")
        return
    try:
        value = yaml.safe_load(text) if text else ""
    except yaml.YAMLError:
        value = text
    node = raw
    *parents, leaf = key.split(".")
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            problems.append(f"{key}: '{part}' is a value, not a section, so it has no key '{leaf}'.")
            return
        node = child
    node[leaf] = value


def from_dict(cls: type, raw: Any, problems: list[str], prefix: str = "") -> Any:
    """Build dataclass `cls` from `raw`, appending every problem to `problems`."""
    if not isinstance(raw, dict):
        problems.append(f"{prefix.rstrip('.')}: expected a section (mapping), received {raw!r}.")
        return cls()
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in names:
            problems.append(_unknown_key(prefix + str(key)))
    values = {}
    for name in names & raw.keys():
        key = prefix + name
        if dataclasses.is_dataclass(hints[name]):
            values[name] = from_dict(hints[name], raw[name], problems, key + ".")
            continue
        value, error = _convert(raw[name], hints[name])
        if error:
            problems.append(f"{key}: expected {error}, received {raw[name]!r}.")
        else:
            values[name] = value
    obj = cls(**values)
    check = getattr(obj, "problems", None)
    if check:
        problems += [f"{prefix}{p}" for p in check()]
    return obj


def _unknown_key(key: str) -> str:
    """The key with a suggestion: the closest name in the same section (a misspelt section is matched
    first), else the section's valid keys. Names are compared part by part, so `train.loop` is not taken
    for `train.ps` just because both start with `train.p`."""
    hints = typing.get_type_hints(PipelineConfig)
    sections = {name: [f.name for f in dataclasses.fields(hint)] for name, hint in hints.items()
                if dataclasses.is_dataclass(hint)}
    section, _, leaf = key.rpartition(".")
    if not section:
        close = difflib.get_close_matches(leaf, list(hints), n=1, cutoff=0.6)
        return f"{key}: unknown key." + (f" Did you mean '{close[0]}'?" if close else "")
    if section not in sections:
        close = difflib.get_close_matches(section, list(sections), n=1, cutoff=0.6)
        section = close[0] if close else section
    leaves = sections.get(section, [])
    close = difflib.get_close_matches(leaf, leaves, n=1, cutoff=0.6)
    if close:
        return f"{key}: unknown key. Did you mean '{section}.{close[0]}'?"
    return f"{key}: unknown key." + (f" Valid keys in '{section}': {', '.join(leaves)}." if leaves else "")


def _convert(value: Any, hint: Any) -> tuple[Any, str | None]:
    """Return (converted value, None) or (None, description of the expected type)."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is Literal:
        if value in args:
            return value, None
        close = difflib.get_close_matches(str(value), [str(a) for a in args], n=1)
        maybe = f" (did you mean {close[0]!r}?)" if close else ""
        return None, "one of " + ", ".join(repr(a) for a in args) + maybe
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None, None
        (inner,) = [a for a in args if a is not type(None)]
        converted, error = _convert(value, inner)
        return converted, (error and f"{error} or null")
    if origin is tuple:
        items = value if isinstance(value, list | tuple) else None
        if items is None and isinstance(value, str) and "," in value:
            return None, f"a list of {args[0].__name__} in brackets, e.g. [{', '.join(map(str.strip, value.split(',')))}]"
        if items is None:
            return None, f"a list of {args[0].__name__}"
        converted = [_convert(v, args[0]) for v in items]
        if any(error for _, error in converted):
            return None, f"a list of {args[0].__name__}"
        return tuple(v for v, _ in converted), None
    if hint is bool:
        return (value, None) if isinstance(value, bool) else (None, "true or false")
    if hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
        return (value, None) if ok else (None, "an integer")
    if hint is float:
        if isinstance(value, str):  # YAML 1.1 reads `1e-3` as a string
            try:
                return float(value), None
            except ValueError:
                return None, "a number"
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        return (float(value), None) if ok else (None, "a number")
    if hint is str:
        if isinstance(value, int) and not isinstance(value, bool):  # e.g. train.init_from=7
            return str(value), None
        return (value, None) if isinstance(value, str) else (None, "a string")
    raise TypeError(f"config type {hint!r} is not supported by pipeline.config")
