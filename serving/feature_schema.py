"""The schema a version ships (`assets.extra/schema.json`, the pipeline's validate schema written by its export) as
what served values are counted against: numbers outside their feature's training [min, max] and categories
outside their vocabulary, per feature.

Numeric features are the float32 entries of `features`, in order: the columns of the predict input `x` (`x[:, j]`
is the j-th; an `x` of more dimensions is read flattened per row, an image's pixels in order); in a tf.Example
(classify, regress) they are the values of its feature `x`. A categorical feature (dtype "category") is the string
input named after it, or the bytes feature of that name. A value that is not finite is out of range; an empty
string is a missing category, not an unseen one. Versions without the file (made elsewhere) are not counted; a
file that does not parse is logged once and ignored.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tensorflow.core.example import example_pb2

log = logging.getLogger("serving")

SCHEMA_FILE = "assets.extra/schema.json"  # pipeline.artifacts.SHIPPED_SCHEMA: where export puts it
NUMERIC_INPUT = "x"  # the predict input (and tf.Example feature) that holds the numeric features


@dataclass(frozen=True, eq=False)
class FeatureSchema:
    numeric: tuple[str, ...]  # float32 feature names, in x's column order
    low: np.ndarray  # their training minimum and maximum (float64)
    high: np.ndarray
    categorical: dict[str, frozenset[bytes]]  # input name -> vocabulary
    categorical_names: tuple[str, ...]  # its keys, in order

    @classmethod
    def read(cls, version_dir: Path) -> FeatureSchema | None:
        """The schema shipped in a version directory; None when it ships none (or one that does not parse)."""
        path = Path(version_dir) / SCHEMA_FILE
        if not path.is_file():
            return None
        try:
            return cls.parse(json.loads(path.read_text()))
        except (OSError, ValueError, KeyError, TypeError) as e:
            log.warning("%s: not a schema served values can be counted against (%s: %s); this version's values are "
                        "not counted", path, type(e).__name__, e)
            return None

    @classmethod
    def parse(cls, document: dict) -> FeatureSchema:
        features = document["features"]
        numeric = [f for f in features if f["dtype"] == "float32"]
        categorical = {f["name"]: frozenset(str(v).encode() for v in f["vocabulary"])
                       for f in features if f["dtype"] == "category"}
        return cls(tuple(f["name"] for f in numeric), np.array([float(f["min"]) for f in numeric]),
                   np.array([float(f["max"]) for f in numeric]), categorical, tuple(categorical))

    def count(self, columns: dict[str, np.ndarray]) -> tuple[int, np.ndarray, np.ndarray]:
        """(rows, out-of-range values per numeric feature, unseen values per categorical feature) of a request's
        inputs by name. An `x` whose rows do not hold one value per numeric feature is not counted."""
        out_of_range = np.zeros(len(self.numeric), np.int64)
        rows = 0
        x = columns.get(NUMERIC_INPUT)
        if self.numeric and x is not None and x.dtype.kind in "fiu" and x.ndim >= 1 and len(x):
            flat = x.reshape(len(x), -1)
            if flat.shape[1] == len(self.numeric):
                inside = (flat >= self.low) & (flat <= self.high)
                out_of_range = len(flat) - np.count_nonzero(inside, axis=0)
                rows = len(flat)
        unseen = np.zeros(len(self.categorical), np.int64)
        for j, (name, vocabulary) in enumerate(self.categorical.items()):
            values = columns.get(name)
            if values is not None and values.dtype == object:
                unseen[j] = sum(1 for v in values.ravel() if v and v not in vocabulary)
                rows = max(rows, len(values))
        return rows, out_of_range, unseen

    def example_columns(self, examples: list[bytes]) -> dict[str, np.ndarray]:
        """The columns `count` reads, from serialized tf.Examples: `x` from the examples whose feature `x` holds one
        number per numeric feature, each categorical feature's first bytes value (b"" where it has none)."""
        parsed = [example_pb2.Example.FromString(e).features.feature for e in examples]
        columns = {}
        if self.numeric:
            rows = []
            for feature in parsed:
                found = feature.get(NUMERIC_INPUT)
                values = (found.float_list.value or found.int64_list.value) if found is not None else ()
                if len(values) == len(self.numeric):
                    rows.append(values)
            columns[NUMERIC_INPUT] = np.array(rows, np.float64).reshape(len(rows), len(self.numeric))
        for name in self.categorical:
            column = np.empty(len(parsed), object)
            for i, feature in enumerate(parsed):
                found = feature.get(name)
                column[i] = found.bytes_list.value[0] if found is not None and found.bytes_list.value else b""
            columns[name] = column
        return columns
