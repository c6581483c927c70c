"""Request logging TF Serving's way, and the counts of served values against each version's schema.

A model's `logging_config` in the ModelServerConfig (ModelConfig.logging_config, tensorflow_serving/config/
logging_config.proto) samples its answered requests, each with probability `sampling_config.sampling_rate`, and
the log collector of `log_collector_config.type` "tfrecord" (the one this server has; TF Serving's open-source
build has none) writes each sampled request with its answer as one `tensorflow.serving.PredictionLog`
(tensorflow_serving/apis/prediction_log.proto) to TFRecord files named

    <filename_prefix>-<server start, UTC, YYYYMMDDTHHMMSSZ>-<pid>-<sequence, 6 digits from 000000>.tfrecord

e.g. /var/log/maas/digits-20261206T064700Z-4242-000003.tfrecord: tf.io.TFRecordWriter's framing, no compression,
mode 0600 in a directory made 0700 when missing. The sequence counts the files this server opened, every prefix
together, so names sort in the order written. A file is rotated (closed, complete) once the next record would take
it past --request_log_max_file_bytes; the file being written may end in a partial record. Every record holds
`log_metadata` (model_spec: the model, the version that answered, the signature decided, a MultiInference's first
task's; sampling_config as configured; saved_model_tags ["serve"]; timestamp_secs, the answer's time) and one of
predict_log, classify_log, regress_log, multi_inference_log with the request and the response. REST requests are
logged as the gRPC request that means the same and both front ends' requests are rebuilt from what the model was
given (inputs as tf.make_tensor_proto encodes them, tf.Examples with any context merged in), so one request gives
the same record on either port; the response is what gRPC answers (typed fields). Only requests answered OK are
logged, as in TF Serving.

Nothing here runs on the event loop or can fail a request: the request path decides sampling and queues
references to the request's arrays (at most MAX_QUEUED_BYTES of them); one thread builds the records, counts
values against the schema (serving.feature_schema) and writes. A record that cannot be written is dropped and
counted (serving_request_log_dropped{reason}): the queue full, the files of every prefix at
--request_log_max_disk_bytes (counted on disk, whoever wrote them, re-read when over it so that files removed free
room), or the files not writable (the directory gone read-only, replaced, full; retried after RETRY_S).

A config reload takes effect for requests answered after it: a new prefix is checked writable before the reload
applies (refused, naming the model and the field, and the previous config stays), a prefix kept goes on in its
file, a prefix gone has its file closed. `close` (SIGTERM's drain, after the requests in flight) writes what is
queued, flushes and closes every file.
"""
from __future__ import annotations

import itertools
import logging
import os
import queue
import random
import re
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import model_pb2, prediction_log_pb2
from tensorflow_serving.config import logging_config_pb2

from serving import api_protos
from serving.errors import FailedPrecondition
from serving.metrics import Metrics
from serving.model_config import ModelServerConfig
from serving.servable import Servable

log = logging.getLogger("serving")

MAX_QUEUED_BYTES = 32 << 20  # request data waiting for the writing thread; past it requests are not logged
FLUSH_EVERY_S = 1.0  # records reach the file (and the written count) within about this
GATHER_S = 0.02  # the writing thread takes what is queued at most this often (at 1,000 requests/s: 20 at a time)
RESCAN_EVERY_S = 5.0  # at the disk bound, how often the files on disk are measured again
RETRY_S = 5.0  # after a write error, records are dropped this long before a new file is tried
CLOSE_WAIT_S = 10.0  # at shutdown, how long writing what is queued may take
RECORD_OVERHEAD = 16  # TFRecord framing: length, its CRC, the data's CRC
SAVED_MODEL_TAGS = ("serve",)


@dataclass(frozen=True, eq=False)
class Answered:
    """One answered model call, as both the request log and the feature counts read it. `request` holds the
    inputs by name (predict) or the serialized tf.Examples (classify, regress, multi_inference); `result` the
    outputs by name, (classes, scores), the values, or each task's of those; `requested` the ModelSpec the request
    sent (the InferenceTasks of a MultiInference)."""

    api: str  # predict, classify, regress or multi_inference
    servable: Servable
    signature: str | list[tuple[str, str]]  # as decided; a MultiInference's: (method, signature) per task
    requested: model_pb2.ModelSpec | list | None
    request: dict | list
    result: object
    output_filter: tuple[str, ...] = ()
    time: float = field(default_factory=time.time)

    def nbytes(self) -> int:
        return _nbytes(self.request) + _nbytes(self.result)

    def rows(self) -> int:
        return len(self.request) if isinstance(self.request, list) else max(
            (len(v) for v in self.request.values() if v.ndim), default=1)


def _nbytes(value) -> int:
    """What a request's or a result's arrays and bytes hold (what queueing it keeps alive)."""
    if isinstance(value, np.ndarray):
        return value.nbytes
    if isinstance(value, bytes):
        return len(value)
    if isinstance(value, dict):
        value = list(value.values())
    return sum(_nbytes(v) for v in value) if isinstance(value, (list, tuple)) else 0


def prediction_log(answered: Answered, sampling: logging_config_pb2.SamplingConfig) -> bytes:
    """The serialized PredictionLog of an answered request (see the module's docstring)."""
    record = prediction_log_pb2.PredictionLog()
    a, servable = answered, answered.servable
    metadata = record.log_metadata
    api_protos.answered_spec(metadata.model_spec, servable,
                             a.signature[0][1] if a.api == "multi_inference" else a.signature)
    metadata.sampling_config.CopyFrom(sampling)
    metadata.saved_model_tags.extend(SAVED_MODEL_TAGS)
    metadata.timestamp_secs = int(a.time)
    if a.api == "predict":
        entry = record.predict_log
        for name, value in a.request.items():
            entry.request.inputs[name].CopyFrom(api_protos.request_tensor_proto(value))
        entry.request.output_filter.extend(a.output_filter)
        response = api_protos.predict_response(servable, a.signature, a.result)
    else:
        entry = getattr(record, f"{a.api}_log")
        entry.request.input.CopyFrom(api_protos.example_list_input(a.request))
        if a.api == "classify":
            response = api_protos.classification_response(servable, a.signature, *a.result, len(a.request))
        elif a.api == "regress":
            response = api_protos.regression_response(servable, a.signature, a.result)
        else:
            response = api_protos.multi_inference_response(servable, a.signature, a.result, len(a.request))
    entry.response.CopyFrom(response)
    if a.api == "multi_inference":
        entry.request.tasks.extend(a.requested or [])
    elif a.requested is not None:
        entry.request.model_spec.CopyFrom(a.requested)
    return record.SerializeToString()


class TFRecordFiles:
    """The files of one filename_prefix, written by the logging thread only (see the module's docstring). Records
    count as written once flushed; those of a file that fails are counted dropped."""

    def __init__(self, prefix: str, metrics: Metrics, name_file, max_file_bytes: int):
        self.prefix = Path(prefix)
        self.metrics = metrics
        self.name_file = name_file  # () -> the next file's path for this prefix
        self.max_file_bytes = max_file_bytes
        self.pattern = re.compile(re.escape(self.prefix.name) + r"-\d{8}T\d{6}Z-\d+-\d+\.tfrecord")
        self.disk_bytes = 0
        self.scanned_at = -RESCAN_EVERY_S
        self.retired = False
        self._writer = None
        self._path: Path | None = None
        self._file_bytes = 0
        self._pending: dict[str, int] = {}  # model -> records written since the last flush
        self._failed_until = 0.0
        self.rescan()

    def rescan(self) -> None:
        """Measure the files of this prefix on disk (any server's, finished or not)."""
        self.scanned_at = time.monotonic()
        try:
            entries = list(os.scandir(self.prefix.parent))
        except OSError:
            entries = []
        on_disk = 0
        for entry in entries:
            if self.pattern.fullmatch(entry.name):
                try:
                    on_disk += entry.stat().st_size
                except OSError:  # removed meanwhile
                    pass
        self.disk_bytes = max(on_disk, self._file_bytes)
        self.metrics.log_bytes.labels(str(self.prefix)).set(self.disk_bytes)

    def write(self, model: str, record: bytes) -> bool:
        """Append one record (False: it was not, and is counted dropped as a write error)."""
        if time.monotonic() < self._failed_until:
            self.metrics.log_dropped_records(model, "write_error")
            return False
        size = len(record) + RECORD_OVERHEAD
        try:
            if self._writer is not None and self._file_bytes and self._file_bytes + size > self.max_file_bytes:
                self._close_file()
            if self._writer is None:
                self._open_file()
            self._writer.write(record)
        except Exception as e:  # noqa: BLE001 -- whatever the file system says, the record is dropped, not the server
            self._fail(e, model)
            return False
        self._file_bytes += size
        self.disk_bytes += size
        self._pending[model] = self._pending.get(model, 0) + 1
        self.metrics.log_bytes.labels(str(self.prefix)).set(self.disk_bytes)
        return True

    def flush(self) -> None:
        if self._writer is None or not self._pending:
            return
        try:
            self._writer.flush()
        except Exception as e:  # noqa: BLE001
            self._fail(e)
            return
        self._count_pending()

    def close(self) -> None:
        """Flush and close the file (one that holds nothing is removed)."""
        if self._writer is not None:
            try:
                self._close_file()
            except Exception as e:  # noqa: BLE001
                self._fail(e)

    def _open_file(self) -> None:
        self.prefix.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = self.name_file()
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))  # readable by the server's user only
        self._path, self._file_bytes = path, 0
        self._writer = tf.io.TFRecordWriter(str(path))
        if self._failed_until:
            log.info("Request log: writing %s again", path)
            self._failed_until = 0.0

    def _close_file(self) -> None:
        writer, path, empty = self._writer, self._path, not self._file_bytes
        self._writer = None
        writer.close()
        self._count_pending()
        if empty:
            path.unlink(missing_ok=True)

    def _count_pending(self) -> None:
        for model, records in self._pending.items():
            self.metrics.logged(model, records)
        self._pending.clear()

    def _fail(self, error: Exception, model: str | None = None) -> None:
        """Drop the records not yet flushed (and the one being written), stop writing for RETRY_S, say why once."""
        if model is not None:
            self._pending[model] = self._pending.get(model, 0) + 1
        for name, records in self._pending.items():
            self.metrics.log_dropped_records(name, "write_error", records)
        self._pending.clear()
        if self._writer is not None:
            try:
                self._writer.close()
            except Exception:  # noqa: BLE001 -- it failed already
                pass
        self._writer, self._file_bytes = None, 0
        self._failed_until = time.monotonic() + RETRY_S
        log.error("Request log %s-*: cannot write (%s: %s); records are dropped and counted "
                  "(serving_request_log_dropped{reason=\"write_error\"}), a new file is tried in %g s",
                  self.prefix, type(error).__name__, str(error).strip().splitlines()[0] if str(error) else "",
                  RETRY_S)


@dataclass(frozen=True, eq=False)
class ModelLogger:
    """One model's logging_config: its sampling, and the files of its prefix."""

    sampling: logging_config_pb2.SamplingConfig
    files: TFRecordFiles
    sampler: random.Random = field(default_factory=random.Random)

    def sample(self) -> bool:
        rate = self.sampling.sampling_rate
        return rate >= 1.0 or (rate > 0.0 and self.sampler.random() < rate)


@dataclass(frozen=True)
class Plan:
    """A config's loggers, prepared (new prefixes checked writable) but not in force yet."""

    loggers: dict[str, ModelLogger]
    files: dict[str, TFRecordFiles]  # prefix -> its files, kept and new


_STOP = object()


class RequestLog:
    """The loggers of the config in force, the queue and the one thread that writes and counts (see the module's
    docstring). --request_log_max_file_bytes and --request_log_max_disk_bytes are `max_file_bytes` and
    `max_disk_bytes`."""

    def __init__(self, metrics: Metrics, max_file_bytes: int = 64 << 20, max_disk_bytes: int = 1 << 30):
        self.metrics = metrics
        self.max_file_bytes = max_file_bytes
        self.max_disk_bytes = max_disk_bytes
        self._loggers: dict[str, ModelLogger] = {}  # replaced, never mutated: read without a lock
        self._files: dict[str, TFRecordFiles] = {}
        self._started = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        self._sequence = itertools.count()
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._queued_bytes = 0
        self._lock = threading.Lock()  # guards _queued_bytes and _closed
        self._closed = False
        self._thread = threading.Thread(target=self._write_forever, name="request-log", daemon=True)
        self._thread.start()

    # -- configuration (off the event loop) -----------------------------------------------------------

    def prepare(self, config: ModelServerConfig) -> Plan:
        """The loggers `config` asks for; a new prefix whose directory cannot be written is refused
        (FAILED_PRECONDITION naming the model and the field) and nothing changes."""
        loggers, files = {}, {}
        for model in config.model_config_list.config:
            if not model.HasField("logging_config"):
                continue
            collector = model.logging_config.log_collector_config
            prefix = os.path.abspath(collector.filename_prefix)
            if prefix not in files:
                files[prefix] = self._files.get(prefix) or self._new_files(model.name, prefix)
            sampling = logging_config_pb2.SamplingConfig()
            sampling.CopyFrom(model.logging_config.sampling_config)
            loggers[model.name] = ModelLogger(sampling, files[prefix])
        return Plan(loggers, files)

    def _new_files(self, model: str, prefix: str) -> TFRecordFiles:
        directory = Path(prefix).parent
        try:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=directory, prefix=f".{Path(prefix).name}-probe-"):
                pass
        except OSError as e:
            raise FailedPrecondition(
                f"model {model!r}: logging_config.log_collector_config.filename_prefix {prefix!r}: cannot write files "
                f"in {str(directory)!r} ({e.strerror or e}); choose a directory the server's user can write") from None
        return TFRecordFiles(prefix, self.metrics, lambda: self._file_name(prefix), self.max_file_bytes)

    def _file_name(self, prefix: str) -> Path:
        return Path(f"{prefix}-{self._started}-{os.getpid()}-{next(self._sequence):06d}.tfrecord")

    def apply(self, plan: Plan) -> None:
        """Put a prepared plan in force; the files of prefixes it no longer has are closed by the writing thread,
        after the records queued before."""
        retired = [files for prefix, files in self._files.items() if plan.files.get(prefix) is not files]
        self._loggers, self._files = plan.loggers, plan.files
        for files in retired:
            self._queue.put(files)

    # -- the request path (event loop) ------------------------------------------------------------------

    def observe(self, api: str, servable: Servable, signature: str | list[tuple[str, str]],
                requested: model_pb2.ModelSpec | list | None, request: dict | list, result: object,
                output_filter: tuple[str, ...] = ()) -> None:
        """A model call answered OK (its `Answered`'s fields): queued when it is sampled for the log or its version
        ships a schema, the Answered made only then; never blocks, never raises (a full queue drops it, counted)."""
        logger = self._loggers.get(servable.name)
        sampled = logger is not None and logger.sample()
        if not sampled and servable.schema is None:
            return
        answered = Answered(api, servable, signature, requested, request, result, output_filter)
        size = answered.nbytes()
        with self._lock:
            room = not self._closed and self._queued_bytes + size <= MAX_QUEUED_BYTES
            if room:
                self._queued_bytes += size
        if room:
            self._queue.put((answered, logger if sampled else None, size))
            return
        if sampled:
            self.metrics.log_dropped_records(servable.name, "queue_full")
        if servable.schema is not None:
            self.metrics.features.skipped(servable.name, answered.rows())

    # -- the writing thread ------------------------------------------------------------------------------

    def _write_forever(self) -> None:
        flushed = time.monotonic()
        while True:
            items = self._take()
            for item in items:
                if item is _STOP:
                    for files in list(self._files.values()):
                        files.close()
                    return
                if isinstance(item, TFRecordFiles):  # retired by a reload
                    item.retired = True
                    item.close()
                else:
                    self._handle(*item)
            if not items or time.monotonic() - flushed >= FLUSH_EVERY_S:
                for files in list(self._files.values()):
                    files.flush()
                flushed = time.monotonic()
            if items:  # let the next requests gather: one wake-up (and GIL hand-over) a batch, not a request
                time.sleep(GATHER_S)

    def _take(self) -> list:
        """Everything queued, waiting up to FLUSH_EVERY_S for the first."""
        try:
            items = [self._queue.get(timeout=FLUSH_EVERY_S)]
        except queue.Empty:
            return []
        while True:
            try:
                items.append(self._queue.get_nowait())
            except queue.Empty:
                return items

    def _handle(self, answered: Answered, logger: ModelLogger | None, size: int) -> None:
        with self._lock:
            self._queued_bytes -= size
        # a bug in one must not stop the other, nor what later requests are logged and counted
        if answered.servable.schema is not None:
            try:
                self._count(answered)
            except Exception:  # noqa: BLE001
                log.exception("Request log: %s's values could not be counted", answered.servable)
        if logger is not None:
            try:
                self._log(answered, logger)
            except Exception:  # noqa: BLE001
                log.exception("Request log: a record of %s could not be made", answered.servable)

    def _log(self, answered: Answered, logger: ModelLogger) -> None:
        servable = answered.servable
        record = prediction_log(answered, logger.sampling)
        files = logger.files
        if self._disk_bytes() + len(record) + RECORD_OVERHEAD > self.max_disk_bytes:
            if time.monotonic() - files.scanned_at >= RESCAN_EVERY_S:
                files.rescan()
            if self._disk_bytes() + len(record) + RECORD_OVERHEAD > self.max_disk_bytes:
                self.metrics.log_dropped_records(servable.name, "disk_bound")
                return
        files.write(servable.name, record)
        if files.retired:  # queued before the reload that retired its prefix
            files.close()

    def _disk_bytes(self) -> int:
        return sum(files.disk_bytes for files in self._files.values())

    def _count(self, answered: Answered) -> None:
        schema = answered.servable.schema
        columns = answered.request if answered.api == "predict" else schema.example_columns(answered.request)
        rows, out_of_range, unseen = schema.count(columns)
        self.metrics.features.add(answered.servable.name, schema.numeric, schema.categorical_names, rows,
                                  out_of_range, unseen)

    def close(self) -> None:
        """Write what is queued (CLOSE_WAIT_S at most), flush and close every file; later requests are not
        logged."""
        with self._lock:
            self._closed = True
        self._queue.put(_STOP)
        self._thread.join(CLOSE_WAIT_S)
        if self._thread.is_alive():
            log.warning("Request log: what was queued was not all written within %g s", CLOSE_WAIT_S)
