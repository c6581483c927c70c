"""What a stage is given: a frozen view of exactly the config fields its spec declares.

A stage declares the fields it reads (`StageSpec.reads`, e.g. ("seed", "model", "train.epochs")) and those it
reads without their changing its output (`StageSpec.runtime`, e.g. ("train.verbose",)). It is given a frozen
view holding exactly those, typed as in the config; reading anything else is an AttributeError. The cache key
hashes `keyed(view)`: the declared fields minus the runtime ones. Each stage's view class is named here
(`TrainView`, ...), so its `run` is annotated with what it really receives, and a launched training worker
rebuilds its view from JSON without importing the stage or the config loader.
"""
from __future__ import annotations

import dataclasses
import functools
import typing
from typing import Any

from pipeline import specs
from pipeline.specs import PipelineConfig, StageSpec


def to_dict(cfg: Any) -> dict:
    """A config or view as plain values (what config.json and task files hold)."""
    return dataclasses.asdict(cfg)


def make_view(cfg: PipelineConfig, spec: StageSpec) -> Any:
    """The frozen view of `cfg` holding the fields `spec` reads (a section name means all its fields)."""
    return view_from_dict(view_class(spec), to_dict(cfg))


def view_class(spec: StageSpec) -> type:
    """The frozen dataclass of a stage's view."""
    marks = {path: False for path in _expand(spec.reads)} | {path: True for path in _expand(spec.runtime)}
    name = "".join(part.capitalize() for part in spec.name.split("_")) + "View"
    return _view_class(name, tuple(sorted(marks.items())))


def view_from_dict(cls: type, values: dict) -> Any:
    """Rebuild a view of class `cls` from a dict holding (at least) its fields, e.g. `to_dict(view)`."""
    hints = typing.get_type_hints(cls)
    fields = {}
    for f in dataclasses.fields(cls):
        value = values[f.name]
        fields[f.name] = view_from_dict(hints[f.name], value) if dataclasses.is_dataclass(hints[f.name]) else \
            _as_declared(value, hints[f.name])
    return cls(**fields)


def keyed(view: Any) -> dict:
    """The view's fields that decide a stage's output: what its cache key hashes."""
    values = {}
    for f in dataclasses.fields(view):
        if f.metadata.get("runtime"):
            continue
        value = getattr(view, f.name)
        values[f.name] = keyed(value) if dataclasses.is_dataclass(value) else value
    return values


def _expand(paths: typing.Sequence[str]) -> list[str]:
    expanded = []
    hints = typing.get_type_hints(PipelineConfig)
    for path in paths:
        section, _, name = path.partition(".")
        if section not in hints or (name and name not in typing.get_type_hints(hints[section])):
            raise ValueError(f"a stage declares config field {path!r}, which the config does not have")
        if not name and dataclasses.is_dataclass(hints[section]):
            expanded += [f"{section}.{f.name}" for f in dataclasses.fields(hints[section])]
        else:
            expanded.append(path)
    return expanded


@functools.cache
def _view_class(class_name: str, marks: tuple[tuple[str, bool], ...]) -> type:
    """A frozen dataclass for these (field path, runtime) marks, with one nested class per section."""
    hints = typing.get_type_hints(PipelineConfig)
    sections: dict[str, list] = {}
    top = []
    for path, runtime in marks:
        section, _, name = path.partition(".")
        meta = {"runtime": runtime}
        if name:
            field_type = typing.get_type_hints(hints[section])[name]
            sections.setdefault(section, []).append((name, field_type, dataclasses.field(metadata=meta)))
        else:
            top.append((section, hints[section], dataclasses.field(metadata=meta)))
    for section, fields in sections.items():
        runtime = all(f.metadata["runtime"] for _, _, f in fields)
        cls = dataclasses.make_dataclass(f"{section.capitalize()}View", fields, frozen=True)
        cls.__module__ = __name__
        top.append((section, cls, dataclasses.field(metadata={"runtime": runtime})))
    view = dataclasses.make_dataclass(class_name, top, frozen=True)
    view.__module__ = __name__
    return view


def _as_declared(value: Any, hint: Any) -> Any:
    """A JSON list back to the tuple a config field holds."""
    return tuple(value) if typing.get_origin(hint) is tuple and isinstance(value, list) else value


IngestView = view_class(specs.INGEST)
ValidateView = view_class(specs.VALIDATE)
TuneView = view_class(specs.TUNE)
TrainView = view_class(specs.TRAIN)
EvaluateView = view_class(specs.EVALUATE)
CompressView = view_class(specs.COMPRESS)
ExportView = view_class(specs.EXPORT)
InfraValidateView = view_class(specs.INFRA_VALIDATE)
PushView = view_class(specs.PUSH)
