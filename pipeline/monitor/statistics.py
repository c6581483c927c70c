"""Per-feature statistics of a dataset as tensorflow_metadata's DatasetFeatureStatistics (what TFDV, Facets and TFX
read), counted in a stream of batches, so a million logged rows cost a counter's memory, not a copy of them.

The features are the schema's (pipeline.stages.validate): numbers (the columns of `x`), categorical columns (each
its own string input), and text (its tokens, standardized as the model's TextVectorization does). A number's
histogram is TFDV's STANDARD one: HISTOGRAM_BUCKETS equal-width buckets between the train split's min and max (one
point bucket when they are equal). Serving data is counted on the training histogram's buckets, plus a bucket of
infinite width on each side for values outside the training range, so that the two compare bucket for bucket.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tensorflow_metadata.proto.v0 import path_pb2, statistics_pb2

HISTOGRAM_BUCKETS = 10  # TFDV's default (StatsOptions.num_histogram_buckets)
MAX_DISTINCT_VALUES = 10_000  # per categorical feature: values seen after these many others are counted as OTHER
OTHER = "__other__"
TOP_VALUES = 10
TEXT_VALUES = "tokens"  # the custom statistic saying that a text feature's values are its tokens
_PUNCTUATION = re.compile(r'[!"#$%&()\*\+,\-\./:;<=>?@\[\\\]^_`{|}~\']')  # TextVectorization's default standardize

Statistics = statistics_pb2.DatasetFeatureStatistics
StatisticsList = statistics_pb2.DatasetFeatureStatisticsList


def tokens(text: str) -> list[str]:
    """`text` split as TextVectorization's default does: lower case, punctuation removed, on whitespace."""
    return _PUNCTUATION.sub("", text.lower()).split()


@dataclass
class NumericCounts:
    """One number feature's running counts on fixed bucket edges (HISTOGRAM_BUCKETS + 1 of them, or two equal ones)."""

    name: str
    edges: np.ndarray
    buckets: np.ndarray = None  # the edges' buckets, then below, above, NaN
    count: int = 0
    total: float = 0.0
    squares: float = 0.0
    zeros: int = 0
    low: float = np.inf
    high: float = -np.inf

    def __post_init__(self):
        self.buckets = np.zeros(len(self.edges) - 1 + 3 if self.edges[0] < self.edges[-1] else 4, np.int64)

    def add(self, values: np.ndarray) -> None:
        values = values.astype(np.float64)
        finite = values[np.isfinite(values)]
        below, above, nan = len(self.buckets) - 3, len(self.buckets) - 2, len(self.buckets) - 1
        lo, hi = self.edges[0], self.edges[-1]
        if hi > lo:
            inside = np.clip(((values - lo) / (hi - lo) * (len(self.edges) - 1)), 0, len(self.edges) - 2)
            index = np.where(values < lo, below, np.where(values > hi, above, np.nan_to_num(inside).astype(np.int64)))
        else:
            index = np.where(values < lo, below, np.where(values > hi, above, 0))
        index = np.where(np.isnan(values), nan, index)
        self.buckets += np.bincount(index, minlength=len(self.buckets))
        self.count += len(finite)
        self.total += float(finite.sum())
        self.squares += float(np.square(finite).sum())
        self.zeros += int((finite == 0).sum())
        if len(finite):
            self.low, self.high = min(self.low, float(finite.min())), max(self.high, float(finite.max()))

    def statistics(self) -> statistics_pb2.FeatureNameStatistics:
        nan = int(self.buckets[-1])
        mean = self.total / self.count if self.count else 0.0
        histogram = statistics_pb2.Histogram(type=statistics_pb2.Histogram.STANDARD, num_nan=nan)
        below, above = int(self.buckets[-3]), int(self.buckets[-2])
        if below:
            histogram.buckets.add(low_value=-np.inf, high_value=self.edges[0], sample_count=below)
        for i, count in enumerate(self.buckets[:-3]):
            histogram.buckets.add(low_value=self.edges[i], high_value=self.edges[min(i + 1, len(self.edges) - 1)],
                                  sample_count=int(count))
        if above:
            histogram.buckets.add(low_value=self.edges[-1], high_value=np.inf, sample_count=above)
        numbers = statistics_pb2.NumericStatistics(
            common_stats=_common(self.count + nan, 0), mean=mean,
            std_dev=float(np.sqrt(max(self.squares / self.count - mean ** 2, 0.0))) if self.count else 0.0,
            num_zeros=self.zeros, min=self.low if self.count else 0.0, max=self.high if self.count else 0.0,
            histograms=[histogram])
        return statistics_pb2.FeatureNameStatistics(path=_path(self.name), type=statistics_pb2.FeatureNameStatistics.FLOAT,
                                                    num_stats=numbers)


@dataclass
class StringCounts:
    """One categorical (or text: its tokens) feature's running value counts."""

    name: str
    text: bool = False
    counts: dict[str, int] = field(default_factory=dict)
    examples: int = 0
    missing: int = 0

    def add(self, values: np.ndarray) -> None:
        values = np.asarray(values).astype(str)
        self.examples += len(values)
        if self.text:
            values = np.array([token for text in values for token in tokens(text)], dtype=str)
        else:
            self.missing += int((values == "").sum())
            values = values[values != ""]
        if not len(values):
            return
        distinct, counts = np.unique(values, return_counts=True)
        for value, count in zip(distinct.tolist(), counts.tolist()):
            if value not in self.counts and len(self.counts) >= MAX_DISTINCT_VALUES:
                value = OTHER
            self.counts[value] = self.counts.get(value, 0) + count

    def statistics(self) -> statistics_pb2.FeatureNameStatistics:
        ranked = sorted(self.counts.items(), key=lambda kv: (-kv[1], kv[0]))
        strings = statistics_pb2.StringStatistics(
            common_stats=_common(self.examples - self.missing, self.missing), unique=len(ranked),
            avg_length=(sum(len(v) * n for v, n in ranked) / max(sum(self.counts.values()), 1)),
            top_values=[statistics_pb2.StringStatistics.FreqAndValue(value=v, frequency=n) for v, n in ranked[:TOP_VALUES]])
        for rank, (value, count) in enumerate(ranked):
            strings.rank_histogram.buckets.add(low_rank=rank, high_rank=rank, label=value, sample_count=count)
        feature = statistics_pb2.FeatureNameStatistics(path=_path(self.name), type=statistics_pb2.FeatureNameStatistics.STRING,
                                                       string_stats=strings)
        if self.text:
            feature.custom_stats.add(name="values", str=TEXT_VALUES)
        return feature


class DatasetCounts:
    """Every feature of a schema, counted batch by batch: `add(inputs)` with a batch of model inputs by name (`x`: the
    number rows or the texts; each categorical column under its name)."""

    def __init__(self, schema: dict, edges: dict[str, np.ndarray]):
        self.kind = schema["kind"]
        features = schema["features"]
        self.numeric = [NumericCounts(f["name"], edges[f["name"]]) for f in features if f["dtype"] == "float32"]
        self.categorical = [StringCounts(f["name"]) for f in features if f["dtype"] == "category"]
        self.text = [StringCounts(f["name"], text=True) for f in features if f["dtype"] == "string"]
        self.examples = 0

    @classmethod
    def for_training(cls, schema: dict) -> DatasetCounts:
        """Counts on buckets spanning each number's train split range (the schema's min and max)."""
        return cls(schema, {f["name"]: np.linspace(f["min"], f["max"], HISTOGRAM_BUCKETS + 1)
                            if f["max"] > f["min"] else np.array([f["min"], f["max"]])
                            for f in schema["features"] if f["dtype"] == "float32"})

    @classmethod
    def like(cls, schema: dict, training: Statistics) -> DatasetCounts:
        """Counts on the bucket edges of the training statistics' histograms."""
        edges = {}
        for feature in training.features:
            buckets = [b for b in feature.num_stats.histograms[0].buckets] if feature.HasField("num_stats") else []
            if buckets:
                edges[feature.path.step[0]] = np.array([b.low_value for b in buckets] + [buckets[-1].high_value])
        return cls(schema, edges)

    def add(self, inputs: dict[str, np.ndarray]) -> None:
        x = inputs["x"]
        self.examples += len(x)
        if self.numeric:
            for j, counts in enumerate(self.numeric):
                counts.add(x[:, j])
        for counts in self.text:
            counts.add(x)
        for counts in self.categorical:
            counts.add(inputs[counts.name])

    def statistics(self, name: str) -> Statistics:
        features = [c.statistics() for c in (*self.numeric, *self.categorical, *self.text)]
        return Statistics(name=name, num_examples=self.examples, features=features)


def by_name(statistics: Statistics) -> dict[str, statistics_pb2.FeatureNameStatistics]:
    """Each feature's statistics by its name (its path's steps joined with dots, as TFDV prints them)."""
    return {".".join(f.path.step): f for f in statistics.features}


def value_counts(feature: statistics_pb2.FeatureNameStatistics) -> dict[str, float]:
    """A string feature's counts by value, from its rank histogram (what TFDV's GetStringValuesWithCounts reads)."""
    return {b.label: b.sample_count for b in feature.string_stats.rank_histogram.buckets}


def read_list(path: Path) -> StatisticsList:
    """A DatasetFeatureStatisticsList in binary proto form (TFDV: tfdv.load_stats_binary)."""
    return StatisticsList.FromString(Path(path).read_bytes())


def _common(present: int, missing: int) -> statistics_pb2.CommonStatistics:
    return statistics_pb2.CommonStatistics(num_non_missing=present, num_missing=missing, min_num_values=1,
                                           max_num_values=1, avg_num_values=1.0, tot_num_values=present)


def _path(name: str) -> path_pb2.Path:
    return path_pb2.Path(step=[name])
