"""Prometheus metrics, served at TF Serving's /monitoring/prometheus/metrics when enabled.

Requests by model, version, API, entry point and status; request latency; batch sizes; model
version state and load time; whether a rewritten --model_config_file could not be applied. Recorded
always (cheap); exposed only if the monitoring config asks.
"""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

STATES = ("START", "LOADING", "AVAILABLE", "UNLOADING", "END")
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class Metrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        labels = ("model", "version", "api", "entrypoint", "status")
        self.requests = Counter("serving_requests", "Requests handled", labels, registry=self.registry)
        self.latency = Histogram("serving_request_latency_seconds", "Request latency, receipt to reply",
                                 labels[:-1], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.batch_size = Histogram("serving_batch_size", "Rows per batched model call (before padding)",
                                    ("model", "version"), buckets=BATCH_BUCKETS, registry=self.registry)
        self.padded_batch_size = Histogram("serving_padded_batch_size", "Rows per batched model call (after padding)",
                                           ("model", "version"), buckets=BATCH_BUCKETS, registry=self.registry)
        self.state = Gauge("serving_model_version_state", "1 for the state a model version is in",
                           ("model", "version", "state"), registry=self.registry)
        self.load_seconds = Histogram("serving_model_load_seconds", "Time to load and warm up a version",
                                      ("model",), buckets=(0.1, 0.5, 1, 2, 5, 10, 30, 60, 120),
                                      registry=self.registry)
        self.config_file_error = Gauge(
            "serving_model_config_file_error",
            "1 while a rewritten --model_config_file cannot be applied (the previous config stays in force)",
            registry=self.registry)

    def request(self, model: str, version: str, api: str, entrypoint: str, status: str, seconds: float) -> None:
        self.requests.labels(model, version, api, entrypoint, status).inc()
        if status == "OK":
            self.latency.labels(model, version, api, entrypoint).observe(seconds)

    def batch(self, model: str, version: int, size: int, padded: int) -> None:
        self.batch_size.labels(model, str(version)).observe(size)
        self.padded_batch_size.labels(model, str(version)).observe(padded)

    def version_state(self, model: str, version: int, state: str) -> None:
        for s in STATES:
            self.state.labels(model, str(version), s).set(1 if s == state else 0)

    def model_loaded(self, model: str, seconds: float) -> None:
        self.load_seconds.labels(model).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
