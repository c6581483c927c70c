"""Read the request logs a server wrote: TF Serving's PredictionLog records in TFRecord files `<prefix>-*`.

Each record holds one request and its answer (a Predict, Classify, Regress or MultiInference); this module turns
the records of one model into batches of the inputs the model took (`x`, and each categorical column by name), with
the version that answered, the prediction and the time. What cannot be used is said, once per kind, and skipped: a
file that ends in a partial record (the one being written) or is corrupt keeps the records before the damage;
records of another model, of another version than the one asked for, or without the model's inputs are counted.
"""
from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tensorflow as tf
from google.protobuf.message import DecodeError
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import prediction_log_pb2

READ_BATCH = 1024  # records read at once: per-record calls into TensorFlow cost more than the records
ROWS_PER_BATCH = 8192  # rows handed on at once


@dataclass
class Rows:
    """Logged rows of one version: the inputs as the model takes them, and what it answered."""

    version: int
    inputs: dict[str, np.ndarray]
    predictions: list[str]
    logged_at: list[int]  # seconds since the epoch

    def __len__(self) -> int:
        return len(self.predictions)


@dataclass
class Tally:
    """What the logs held, and what of it could not be used."""

    files: int = 0
    records: int = 0
    by_version: Counter = field(default_factory=Counter)  # rows per version of the model
    other_models: Counter = field(default_factory=Counter)  # records per other model
    unusable: Counter = field(default_factory=Counter)  # records per reason
    unknown_inputs: Counter = field(default_factory=Counter)  # records per input the schema does not have


def log_files(prefix: str) -> list[Path]:
    """The files a collector with `filename_prefix: prefix` wrote, oldest name first."""
    base = Path(prefix)
    folder = base.parent if str(base.parent) else Path(".")
    return sorted(p for p in folder.glob(f"{base.name}-*") if p.is_file()) if folder.is_dir() else []


class LogReader:
    """The rows of `model` in the log files of `prefix`, with the inputs its `schema` (validate's) names: `x` (rows of
    numbers, or texts) and each categorical column; `say` is told each problem once."""

    def __init__(self, prefix: str, model: str, schema: dict, say: Callable[[str], None]):
        self.files = log_files(prefix)
        self.model = model
        self.inputs = ["x", *(f["name"] for f in schema["features"] if f["dtype"] == "category")]
        self.width = sum(f["dtype"] == "float32" for f in schema["features"]) if schema["kind"] == "numeric" else None
        self.say = say
        self.tally = Tally(files=len(self.files))

    def newest(self) -> set[tuple[str, int]]:
        """(model, version) of the records in the newest file: whom the server answers now."""
        return {(log.log_metadata.model_spec.name, log.log_metadata.model_spec.version.value)
                for log in self._records(self.files[-1:])}

    def rows(self, version: int | None = None) -> Iterator[Rows]:
        """Batches of rows answered by `version` (any, when None), in file order."""
        pending: dict[int, list] = {}
        pending_rows: Counter = Counter()
        for record in self._records(self.files):
            found = self._rows_of(record)
            if found is None:
                continue
            rows_version, inputs, predictions, when = found
            self.tally.by_version[rows_version] += len(predictions)
            if version is not None and rows_version != version:
                continue
            pending.setdefault(rows_version, []).append((inputs, predictions, when))
            pending_rows[rows_version] += len(predictions)
            if pending_rows[rows_version] >= ROWS_PER_BATCH:
                del pending_rows[rows_version]
                yield _joined(rows_version, pending.pop(rows_version))
        for rows_version, batch in pending.items():
            yield _joined(rows_version, batch)

    def _records(self, files: list[Path]) -> Iterator[prediction_log_pb2.PredictionLog]:
        for path in files:
            done = 0
            try:
                for chunk in tf.data.TFRecordDataset(str(path)).batch(READ_BATCH).as_numpy_iterator():
                    yield from self._parsed(path, chunk)
                    done += len(chunk)
            except tf.errors.DataLossError:  # a partial last record, or damage: keep what precedes it
                kept = 0
                try:
                    for serialized in tf.data.TFRecordDataset(str(path)).skip(done).as_numpy_iterator():
                        yield from self._parsed(path, [serialized])
                        kept += 1
                except tf.errors.DataLossError:
                    pass
                self.say(f"{path}: truncated or corrupt after record {done + kept} (a file still being written ends "
                         f"so); the records before it are used")
            except tf.errors.OpError as e:
                self.say(f"{path}: cannot be read ({e.message.splitlines()[0]}); skipped")

    def _parsed(self, path: Path, chunk) -> Iterator[prediction_log_pb2.PredictionLog]:
        for serialized in chunk:
            self.tally.records += 1
            try:
                yield prediction_log_pb2.PredictionLog.FromString(serialized)
            except DecodeError:
                self._unusable(f"not a PredictionLog (in {path.name})")

    def _unknown(self, names: list[str]) -> None:
        """Inputs the training schema does not have: said once each, the rest of the request still used."""
        new = [name for name in names if name not in self.tally.unknown_inputs]
        if new:
            self.say(f"requests carry inputs the model's training schema does not have, not compared: {new}")
        self.tally.unknown_inputs.update(names)

    def _unusable(self, reason: str) -> None:
        if not self.tally.unusable[reason]:
            self.say(f"skipping records: {reason}")
        self.tally.unusable[reason] += 1

    def _rows_of(self, log: prediction_log_pb2.PredictionLog):
        """(version, inputs, predictions, logged_at) of a record of this model, or None."""
        spec = log.log_metadata.model_spec
        if spec.name != self.model:
            if not self.tally.other_models[spec.name]:
                self.say(f"skipping records of model {spec.name!r} (not {self.model!r})")
            self.tally.other_models[spec.name] += 1
            return None
        kind = log.WhichOneof("log_type")
        if kind == "predict_log" and len(log.predict_log.request.inputs) > len(self.inputs):
            unknown = sorted(set(log.predict_log.request.inputs) - set(self.inputs))
            self._unknown(unknown)
        try:
            if kind == "predict_log":
                inputs, predictions = _predict_rows(log.predict_log, self.inputs)
            elif kind in ("classify_log", "regress_log", "multi_inference_log"):
                inputs, predictions = _example_rows(getattr(log, kind), kind, self.inputs)
            else:
                self._unusable(f"{kind or 'no request'} records hold no model inputs")
                return None
        except KeyError as e:
            self._unusable(f"a request without the model's input {e.args[0]!r}")
            return None
        except ValueError as e:
            self._unusable(str(e))
            return None
        x = inputs["x"]
        shape = (len(x), self.width) if self.width is not None else (len(x),)
        if x.shape != shape:
            self._unusable(f"x of shape {list(x.shape[1:])} per request, the model takes {list(shape[1:])}")
            return None
        rows = len(predictions)
        return spec.version.value, inputs, predictions, [log.log_metadata.timestamp_secs] * rows


def _predict_rows(log, names: list[str]) -> tuple[dict[str, np.ndarray], list[str]]:
    sent = log.request.inputs
    absent = [name for name in names if name not in sent]
    if absent:
        raise KeyError(absent[0])
    inputs = {name: _array(sent[name]) for name in names}
    outputs = log.response.outputs
    if "class_name" in outputs:
        predictions = _array(outputs["class_name"]).tolist()
    elif "class_id" in outputs:
        predictions = [str(v) for v in _array(outputs["class_id"]).tolist()]
    elif "value" in outputs:
        predictions = [f"{v:.6g}" for v in _array(outputs["value"]).tolist()]
    else:
        predictions = [""] * len(inputs[names[0]])
    if len(predictions) != len(inputs[names[0]]):
        predictions = [""] * len(inputs[names[0]])  # an error answer, or an output filter: inputs only
    return inputs, predictions


NUMBERS = {types_pb2.DT_FLOAT: (np.float32, "float_val"), types_pb2.DT_DOUBLE: (np.float64, "double_val"),
           types_pb2.DT_INT32: (np.int32, "int_val"), types_pb2.DT_INT64: (np.int64, "int64_val")}


def _array(tensor) -> np.ndarray:
    """A TensorProto as numpy. Numbers are read straight from tensor_content or their repeated field, when that holds
    every value: tf.make_ndarray spends 15 µs on each tensor, most of the time it takes to read a one-row request."""
    shape = [d.size for d in tensor.tensor_shape.dim]
    if tensor.dtype in NUMBERS:
        dtype, field = NUMBERS[tensor.dtype]
        if tensor.tensor_content:
            return np.frombuffer(tensor.tensor_content, dtype).reshape(shape)
        values = getattr(tensor, field)
        if len(values) == math.prod(shape):
            return np.array(values, dtype).reshape(shape)
    values = tf.make_ndarray(tensor)
    return values.astype(str) if values.dtype == object else values


def _example_rows(log, kind: str, names: list[str]) -> tuple[dict[str, np.ndarray], list[str]]:
    """The rows of the tf.Examples a Classify/Regress/MultiInference sent, with what it answered."""
    request_input = log.request.input
    which = request_input.WhichOneof("kind")
    if which == "example_list":
        examples = list(request_input.example_list.examples)
    elif which == "example_list_with_context":
        context = request_input.example_list_with_context.context
        examples = []
        for example in request_input.example_list_with_context.examples:
            merged = tf.train.Example()
            merged.CopyFrom(context)
            merged.MergeFrom(example)
            examples.append(merged)
    else:
        raise ValueError("a request without examples")
    absent = [name for name in names if not all(name in e.features.feature for e in examples)]
    if absent:
        raise KeyError(absent[0])
    inputs = {name: _feature_column([e.features.feature[name] for e in examples], name) for name in names}
    result = log.response.result
    if kind == "classify_log":
        predictions = [max(c.classes, key=lambda k: k.score).label if c.classes else ""
                       for c in result.classifications]
    elif kind == "regress_log":
        predictions = [f"{r.value:.6g}" for r in result.regressions]
    else:
        predictions = [""] * len(examples)
    if len(predictions) != len(examples):
        predictions = [""] * len(examples)
    return inputs, predictions


def _feature_column(features: list, name: str) -> np.ndarray:
    kinds = {f.WhichOneof("kind") for f in features}
    if kinds == {"bytes_list"}:
        return np.array([f.bytes_list.value[0].decode("utf-8", "replace") if f.bytes_list.value else ""
                         for f in features], dtype=str)
    if kinds <= {"float_list", "int64_list"}:
        return np.array([list(f.float_list.value) or list(f.int64_list.value) for f in features], np.float32)
    raise ValueError(f"feature {name!r} holds {sorted(k or 'nothing' for k in kinds)}, not numbers or strings")


def _joined(version: int, batch: list) -> Rows:
    names = batch[0][0].keys()
    inputs = {name: np.concatenate([inputs[name] for inputs, _, _ in batch]) for name in names}
    return Rows(version, inputs, [p for _, predictions, _ in batch for p in predictions],
                [t for _, _, when in batch for t in when])
