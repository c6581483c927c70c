"""Prometheus metrics, served at TF Serving's /monitoring/prometheus/metrics when enabled.

Two families side by side, recorded always (cheap), exposed only if the monitoring config asks:
- TF Serving's own, so dashboards made for it work unchanged: the names, labels, units (microseconds) and
  buckets of its monitoring::Counter and Sampler metrics (servables/tensorflow/util.cc, batching/
  batching_session.cc and batching_util.h, saved_model_warmup_util.cc, TF's cc/saved_model/loader.cc),
  written as its exporter writes them (util/prometheus_exporter.cc): a `# TYPE` line and no `# HELP`,
  counters without `_total`, `{}` on a metric without labels, `le` printed with 6 significant digits.
  prometheus_client cannot write that (it appends `_total` to counters), so `TFMetric` writes these lines.
- Ours (serving_*, prometheus_client): requests by model, version, API, entry point and status; request
  latency; batch sizes; model version state and load time; whether a rewritten --model_config_file could not
  be applied; request log records dropped and the bytes its files hold; served values outside the schema a
  version ships, per model and feature (`FeatureCounts`: kept as numpy arrays, so counting a row costs no Python
  per feature).
"""
from __future__ import annotations

import bisect
import collections
import re
import threading
from collections.abc import Callable

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily

STATES = ("START", "LOADING", "AVAILABLE", "UNLOADING", "END")
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
LATER_MAX = 256  # updates left for later (Metrics.later) applied together once this many wait: ~1.4 ms for 256
#                  lone batches' counts (a spike in one request of 256; applying each at once cost each ~20 us)
# TF Serving's API label: REST requests carry the URL's method ("" for GETs, all counted, as http_server.cc
# counts them); gRPC counts Predict, Classify and Regress only (prediction_service_impl.cc).
TF_API = {("REST", "predict"): "predict", ("REST", "classify"): "classify", ("REST", "regress"): "regress",
          ("GRPC", "predict"): "Predict", ("GRPC", "classify"): "Classify", ("GRPC", "regress"): "Regress"}


def exponential(scale: float, growth: float, count: int) -> tuple[float, ...]:
    """TF's monitoring::Buckets::Exponential: `count` limits from `scale`, each `growth` times the one before."""
    limits = [scale]
    for _ in range(count - 1):
        limits.append(limits[-1] * growth)
    return tuple(limits)


class TFMetric:
    """One metric of TF's monitoring library: a Counter, or with `buckets` a Sampler (a histogram whose last
    bucket, +Inf, TF adds). As in TF, a sample falls in the first bucket whose limit is above it: a value equal to
    a limit counts in the next bucket up (tensorflow/core/lib/histogram: upper_bound)."""

    def __init__(self, path: str, labels: tuple[str, ...] = (), buckets: tuple[float, ...] | None = None):
        self.name = re.sub(r"[^a-zA-Z0-9_]", ":", path)  # "/tensorflow/serving/x" -> ":tensorflow:serving:x"
        self.labels = labels
        self.buckets = buckets
        self._cells: dict[tuple[str, ...], list[int]] = {}  # label values -> [count] or [per bucket..., sum]
        self._lock = threading.Lock()

    def add(self, value: int, *label_values: str) -> None:
        """Increment a counter by `value`, or record one sample of `value` (ints: TF records microseconds)."""
        with self._lock:
            if self.buckets is None:
                cell = self._cells.setdefault(label_values, [0])
                cell[0] += value
            else:
                cell = self._cells.setdefault(label_values, [0] * (len(self.buckets) + 2))
                cell[bisect.bisect_right(self.buckets, value)] += 1
                cell[-1] += value

    def lines(self) -> list[str]:
        with self._lock:
            cells = {values: list(cell) for values, cell in self._cells.items()}
        lines = [f"# TYPE {self.name} {'counter' if self.buckets is None else 'histogram'}"]
        for values, cell in cells.items():
            labels = [f'{name}="{_escape(value)}"' for name, value in zip(self.labels, values)]
            if self.buckets is None:
                lines.append(f"{self.name}{{{','.join(labels)}}} {cell[0]}")
                continue
            cumulative = 0
            for limit, count in zip([f"{b:.6g}" for b in self.buckets] + ["+Inf"], cell):
                cumulative += count
                bucket = ",".join([*labels, f'le="{limit}"'])
                lines.append(f"{self.name}_bucket{{{bucket}}} {cumulative}")
            lines.append(f"{self.name}_sum{{{','.join(labels)}}} {cell[-1]}")
            lines.append(f"{self.name}_count{{{','.join(labels)}}} {cumulative}")
        return lines


class _Tally:
    """Counts by feature name for one model, in an array that grows when a version brings new features."""

    def __init__(self):
        self.names: list[str] = []
        self.index: dict[str, int] = {}
        self.counts = np.zeros(0, np.int64)
        self._positions: dict[int, tuple[tuple[str, ...], np.ndarray]] = {}  # id(names) -> (names, their indices)

    def add(self, names: tuple[str, ...], counts: np.ndarray) -> None:
        indices = self._indices(names)  # first: it may grow self.counts (and names each feature: 0 is a count)
        if counts.any():  # most rows are within the schema: nothing to add
            self.counts[indices] += counts

    def _indices(self, names: tuple[str, ...]) -> np.ndarray:
        """Where a schema's features are counted: found once per schema (its tuple of names), not per row."""
        found = self._positions.get(id(names))
        if found is not None and found[0] is names:
            return found[1]
        for name in names:
            if name not in self.index:
                self.index[name] = len(self.names)
                self.names.append(name)
        if len(self.counts) < len(self.names):
            self.counts = np.concatenate([self.counts, np.zeros(len(self.names) - len(self.counts), np.int64)])
        indices = np.array([self.index[name] for name in names], np.intp)
        self._positions[id(names)] = (names, indices)
        return indices


class FeatureCounts:
    """Served values against the schema each version ships (serving.feature_schema), per model and feature: a
    prometheus_client collector, rendered from its arrays at each scrape."""

    def __init__(self):
        self._lock = threading.Lock()
        self._rows: dict[str, list[int]] = {}  # model -> [rows counted, rows skipped]
        self._out_of_range: dict[str, _Tally] = {}
        self._unseen: dict[str, _Tally] = {}

    def add(self, model: str, numeric: tuple[str, ...], categorical: tuple[str, ...], rows: int,
            out_of_range: np.ndarray, unseen: np.ndarray) -> None:
        with self._lock:
            self._rows.setdefault(model, [0, 0])[0] += rows
            self._out_of_range.setdefault(model, _Tally()).add(numeric, out_of_range)
            self._unseen.setdefault(model, _Tally()).add(categorical, unseen)

    def skipped(self, model: str, rows: int) -> None:
        """Rows not counted: the request log's queue was full."""
        with self._lock:
            self._rows.setdefault(model, [0, 0])[1] += rows

    def collect(self):
        rows = CounterMetricFamily("serving_feature_rows", "Served rows counted against their version's schema",
                                   labels=("model",))
        skipped = CounterMetricFamily("serving_feature_rows_skipped",
                                      "Served rows of a version with a schema not counted (the queue was full)",
                                      labels=("model",))
        out = CounterMetricFamily("serving_feature_out_of_range",
                                  "Served numeric values outside the feature's training [min, max] (or not finite)",
                                  labels=("model", "feature"))
        unseen = CounterMetricFamily("serving_feature_unseen",
                                     "Served categories outside the feature's training vocabulary (empty: missing, "
                                     "not counted)", labels=("model", "feature"))
        with self._lock:
            for model, (counted, not_counted) in self._rows.items():
                rows.add_metric([model], counted)
                skipped.add_metric([model], not_counted)
            for family, tallies in ((out, self._out_of_range), (unseen, self._unseen)):
                for model, tally in tallies.items():
                    for name, count in zip(tally.names, tally.counts.tolist()):
                        family.add_metric([model, name], count)
        return [rows, skipped, out, unseen]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _micros(seconds: float) -> int:
    return int(seconds * 1e6)


class Metrics:
    def __init__(self):
        latency_us, sizes = exponential(10, 1.8, 33), exponential(1, 2, 14)  # ~20 minutes; 1 to 8192 rows
        self.request_count = TFMetric("/tensorflow/serving/request_count", ("model_name", "status"))
        self.request_latency = TFMetric("/tensorflow/serving/request_latency", ("model_name", "API", "entrypoint"),
                                        latency_us)
        self.runtime_latency = TFMetric("/tensorflow/serving/runtime_latency", ("model_name", "API", "runtime"),
                                        latency_us)
        self.example_counts = TFMetric("/tensorflow/serving/request_example_counts", ("model",), exponential(1, 2, 15))
        self.example_count_total = TFMetric("/tensorflow/serving/request_example_count_total", ("model",))
        self.queuing_latency = TFMetric("/tensorflow/serving/batching_session/queuing_latency", ("thread_pool_name",),
                                        exponential(100, 1.2, 52))
        self.wrapped_run_count = TFMetric("/tensorflow/serving/batching_session/wrapped_run_count")
        self.input_batch_size = TFMetric("/tensorflow/serving/batching_session/input_batch_size", (), sizes)
        self.padding_size = TFMetric("/tensorflow/serving/batching_session/padding_size", ("execution_batch_size",),
                                     sizes)
        self.processed_batch_size = TFMetric("/tensorflow/serving/batching_session/processed_batch_size", (), sizes)
        self.load_attempt_count = TFMetric("/tensorflow/cc/saved_model/load_attempt_count", ("model_path", "status"))
        self.load_latency = TFMetric("/tensorflow/cc/saved_model/load_latency", ("model_path",))
        self.warmup_latency = TFMetric("/tensorflow/serving/model_warmup_latency", ("model_path", "status"),
                                       latency_us)
        self.warmup_records = TFMetric("/tensorflow/serving/model_warmup_records_read", ("model_path", "status"))
        self.request_log_count = TFMetric("/tensorflow/serving/request_log_count", ("model_name", "status_code"))
        self._later: collections.deque[Callable[[], None]] = collections.deque()
        # in name order, as the exporter walks a std::map of names
        self.tf = sorted((m for m in vars(self).values() if isinstance(m, TFMetric)), key=lambda m: m.name)

        self.registry = CollectorRegistry()
        labels = ("model", "version", "api", "entrypoint", "status")
        self.requests = Counter("serving_requests", "Requests handled", labels, registry=self.registry)
        self.latency = Histogram("serving_request_latency_seconds", "Request latency, receipt to reply",
                                 labels[:-1], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.batch_size = Histogram("serving_batch_size", "Rows per batched model call (before padding)",
                                    ("model", "version"), buckets=BATCH_BUCKETS, registry=self.registry)
        self.padded_batch_size = Histogram("serving_padded_batch_size", "Rows per batched model call (after padding)",
                                           ("model", "version"), buckets=BATCH_BUCKETS, registry=self.registry)
        self._batch_histograms: dict[tuple[str, int], tuple[Histogram, Histogram]] = {}  # (model, version) -> labelled
        self._request_series: dict[tuple[str, ...], tuple[Counter, Histogram | None, str | None]] = {}
        self.state = Gauge("serving_model_version_state", "1 for the state a model version is in",
                           ("model", "version", "state"), registry=self.registry)
        self.load_seconds = Histogram("serving_model_load_seconds", "Time to load and warm up a version",
                                      ("model",), buckets=(0.1, 0.5, 1, 2, 5, 10, 30, 60, 120),
                                      registry=self.registry)
        self.config_file_error = Gauge(
            "serving_model_config_file_error",
            "1 while a rewritten --model_config_file cannot be applied (the previous config stays in force)",
            registry=self.registry)
        self.log_dropped = Counter("serving_request_log_dropped",
                                   "Sampled requests whose log record was not written (queue_full, disk_bound: "
                                   "--request_log_max_disk_bytes, write_error: the files cannot be written)",
                                   ("model", "reason"), registry=self.registry)
        self.log_bytes = Gauge("serving_request_log_bytes",
                               "Bytes the request log files of a filename_prefix hold (all servers' that write "
                               "there), as --request_log_max_disk_bytes counts them", ("filename_prefix",),
                               registry=self.registry)
        self.features = FeatureCounts()
        self.registry.register(self.features)

    def request(self, model: str, version: str, api: str, entrypoint: str, status: str, seconds: float) -> None:
        labels = (model, version, api, entrypoint, status)
        series = self._request_series.get(labels)
        if series is None:  # found once per label values (each a series Prometheus keeps anyway): labels() cost as
            series = self._request_series[labels] = (  # much as the update
                self.requests.labels(*labels), self.latency.labels(*labels[:-1]) if status == "OK" else None,
                TF_API.get((entrypoint, api), "" if entrypoint == "REST" else None))
        count, latency, tf_api = series
        count.inc()
        if latency is not None:
            latency.observe(seconds)
        if tf_api is not None:
            self.request_count.add(1, model, status)
            if latency is not None:
                self.request_latency.add(_micros(seconds), model, tf_api, entrypoint)

    def runtime(self, model: str, api: str, seconds: float) -> None:
        """One model call of Predict, Classify or Regress (TF Serving's runtime "TF1": its Session::Run)."""
        self.runtime_latency.add(_micros(seconds), model, api, "TF1")

    def examples(self, model: str, count: int) -> None:
        """tf.Examples of one MultiInference request (TF Serving's RecordRequestExampleCount, called there only)."""
        self.example_counts.add(count, model)
        self.example_count_total.add(count, model)

    def later(self, update: Callable[[], None]) -> None:
        """An update no answer waits for (a lone request's batch counts), applied before the metrics are next
        rendered, or with LATER_MAX - 1 others. Applied right after the answer instead, it cost a request at one
        connection ~20 us (mid): it ran after the model call had left the caches cold."""
        self._later.append(update)
        if len(self._later) >= LATER_MAX:
            self._apply_later()

    def _apply_later(self) -> None:
        while self._later:
            try:
                update = self._later.popleft()
            except IndexError:  # another thread applied the last one
                return
            update()

    def batch_input(self, inputs: dict) -> None:
        """A request entering the batcher: one sample per input tensor, as BatchingSession::ComputeTaskSize (a
        scalar has no batch size: the batcher refuses it)."""
        for value in inputs.values():
            if value.ndim:
                self.input_batch_size.add(len(value))

    def queued(self, thread_pool_name: str, seconds: float) -> None:
        self.queuing_latency.add(_micros(seconds), thread_pool_name)

    def batch(self, model: str, version: int, size: int, padded: int) -> None:
        histograms = self._batch_histograms.get((model, version))
        if histograms is None:  # found once per version: labels() costs as much as an observe
            histograms = self._batch_histograms[model, version] = (self.batch_size.labels(model, str(version)),
                                                                   self.padded_batch_size.labels(model, str(version)))
        histograms[0].observe(size)
        histograms[1].observe(padded)
        self.wrapped_run_count.add(1)
        self.padding_size.add(padded - size, str(padded))
        self.processed_batch_size.add(padded)

    def version_state(self, model: str, version: int, state: str) -> None:
        for s in STATES:
            self.state.labels(model, str(version), s).set(1 if s == state else 0)

    def saved_model_read(self, path: str, seconds: float, ok: bool) -> None:
        """One attempt to load a SavedModel, counted as TF's LoadSavedModel counts it."""
        self.load_attempt_count.add(1, path, "success" if ok else "fail")
        self.load_latency.add(_micros(seconds), path)

    def warmed_up(self, path: str, seconds: float, records: int) -> None:
        """A warmup that succeeded (TF Serving records only those: a failed record returns before the metric)."""
        self.warmup_latency.add(_micros(seconds), path, "OK")
        self.warmup_records.add(records, path, "OK")

    def model_loaded(self, model: str, seconds: float) -> None:
        self.load_seconds.labels(model).observe(seconds)

    def logged(self, model: str, records: int) -> None:
        """Request log records written and flushed (TF Serving counts each sampled request's Log status)."""
        self.request_log_count.add(records, model, "OK")

    def log_dropped_records(self, model: str, reason: str, records: int = 1) -> None:
        """Sampled requests not logged; TF Serving's count takes the status its Log would have returned."""
        self.log_dropped.labels(model, reason).inc(records)
        self.request_log_count.add(records, model, "UNAVAILABLE" if reason == "write_error" else "RESOURCE_EXHAUSTED")

    def render(self) -> bytes:
        self._apply_later()
        tf_lines = "".join(line + "\n" for metric in self.tf for line in metric.lines())
        return tf_lines.encode() + generate_latest(self.registry)
