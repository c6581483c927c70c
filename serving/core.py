"""The request path both front ends (REST, gRPC) share: admit the request (credentials, role, the bound on
requests in flight), find the servable, decide the signature and check the request against it (once), run it
(through the dynamic batcher, or on the thread pool), shape the result, count it. Front ends reach models,
signatures, metrics, the audit log, config reloads and the request log only through this class. Each model call
answered OK is handed to the request log (serving.request_log), which samples it for the log and counts its values
against the version's schema on a thread of its own.

Model calls run on threads: TF releases the GIL while a graph runs, so the loop keeps parsing and answering other
requests meanwhile. One exception: a request alone in the server whose call is quick (SignatureRunner.is_quick, under
2 ms) runs on the event loop, sparing the two thread hand-offs (benchmarks/results/low_load_mid.md); a request
arriving meanwhile waits for it at most that long.

The request methods are coroutines the REST front end awaits on the event loop. The gRPC front end runs each call on
a thread of its own (grpc's thread pool server) and completes them there with `run_blocking`: off the loop they never
suspend, they block that thread instead (the batch queue, a large request's decoding), so a gRPC call needs no hand-off
to the loop and back.
"""
from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import logging
import os
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from tensorflow_serving.apis import get_model_metadata_pb2, get_model_status_pb2, inference_pb2, model_pb2

from serving import memory, signatures
from serving.audit import AuditLog
from serving.auth import Access, Token
from serving.batching import Batcher, BatchingParameters
from serving.codec.document import SLICED_BYTES
from serving.errors import InvalidArgument, ResourceExhausted, ServingError, Unavailable
from serving.manager import ModelManager
from serving.metrics import Metrics
from serving.model_config import ModelServerConfig
from serving.request_log import RequestLog
from serving.servable import Servable, SignatureRunner, TensorSpec, Tensors
from serving.shared_metrics import SharedMetrics

log = logging.getLogger("serving")

UNKNOWN_MODEL = "(unknown)"  # the metric label of requests for a model this server does not have
FAILURES_PER_COLLECTION = 1000  # a full collection takes ~30 ms with the models' objects frozen
MAX_NAME_CHARS = 1000  # model names and labels in requests: TF Serving has no limit, but echoing 100 MB back is a DoS
SETTLE_QUIET_S, SETTLE_MAX_S = 0.05, 1.0  # on SIGTERM, requests still arriving are taken until this quiet, or that long
# a request's body, or what its tensors decode to, from which decoding leaves the loop: the size from which the
# codec decodes a body in slices, letting the loop run between them
LARGE_REQUEST_BYTES = SLICED_BYTES
RELEASE_AFTER_ANSWER_S = 0.1  # after a large request: by then its answer is written and what it held is freed


class ServingCore:
    def __init__(self, manager: ModelManager, metrics: Metrics, batching: BatchingParameters | None,
                 num_threads: int, check_method_names: bool = False, access: Access | None = None,
                 audit: AuditLog | None = None, max_in_flight: int = 0, request_log: RequestLog | None = None,
                 shared_metrics: SharedMetrics | None = None):
        self.manager = manager
        self.metrics = metrics
        self.request_log = request_log or RequestLog(metrics)
        self.check_method_names = check_method_names
        self.access = access or Access()
        self.audit = audit or AuditLog()
        self.max_in_flight = max_in_flight
        self.shared_metrics = shared_metrics  # one of several server processes: the metrics are the whole server's
        self.in_flight = 0
        self.waiting = 0  # requests received that wait for a thread before admission (gRPC calls)
        self._counting = threading.Lock()  # guards both counts: the event loop and the gRPC threads change them
        self.shutting_down = False  # SIGTERM came: readiness answers 503
        self._refusing = False  # ...and, once what had arrived is taken in, new requests are UNAVAILABLE
        self._last_asked = 0.0  # when a request last asked to be admitted (or was received)
        self.arrivals = 0  # data events on the event loop's connections (REST's), numbered by `arrived`
        self._came_last = True  # whether nothing arrived on the loop after the bytes of the request admitted last
        self._failed = 0
        self.bodies_arriving = 0  # REST requests admitted whose body is still arriving (rest.py)
        self.calls_expected = 0  # on one CPU, gRPC calls answered whose next calls are expected (`_expected_back`)
        # on one CPU a due batch waits for the requests being read or answered (serving.batching's docstring), and
        # for the gRPC calls expected; not for a body still arriving: that is the network's time, not the CPU's (a
        # client trickling its body would hold every batch back for as long as the last one ran, the CPU idle)
        in_flight = ((lambda: self.in_flight - self.bodies_arriving + self.calls_expected)
                     if len(os.sched_getaffinity(0)) == 1 else None)
        self._batcher = (Batcher(batching, on_batch=self._record_batch, on_queued=self._record_queued,
                                 in_flight=in_flight, hold_expired=self._expect_no_calls) if batching else None)
        self._pool = ThreadPoolExecutor(num_threads, thread_name_prefix="model")
        self._large = ThreadPoolExecutor(1, thread_name_prefix="large-request")
        self._large_work = threading.Lock()  # one large request's decoding or encoding at a time, REST's or gRPC's

    def arrived(self) -> int:
        """Bytes came on one of the event loop's connections (a front end's data event): their number. Requests whose
        bytes came in the same pass over the sockets wait on the loop, not yet admitted, while the first of them
        runs: `admitted(arrival=...)` tells a request alone in flight from one that others wait behind."""
        self.arrivals += 1
        return self.arrivals

    @contextlib.contextmanager
    def admitted(self, in_time: bool = False, arrival: int | None = None) -> Iterator[None]:
        """Count a request in flight from its first byte to its answer; past --max_requests_in_flight it is refused
        at once (429 / RESOURCE_EXHAUSTED), so overload costs a short answer, not memory for a queue without end.
        `in_time`: received before SIGTERM's refusals began (`receive`), so answered even if admitted after.
        `arrival`: for a request that came on the event loop, the number (`arrived`) of the last data event on its
        connection so far: a request admitted with no data event after it is alone on the loop."""
        self._last_asked = time.monotonic()
        if self._refusing and not in_time:
            raise Unavailable("Server is shutting down; retry with another server")
        loop = _running_loop()  # None: a call on a thread of its own (gRPC's)
        with self._counting:
            if self.max_in_flight and self.in_flight >= self.max_in_flight:
                raise ResourceExhausted(f"Too many requests in flight (limit {self.max_in_flight}, "
                                        f"--max_requests_in_flight); retry later")
            self.in_flight += 1
            self._came_last = arrival is None or arrival == self.arrivals
            if loop is None and self.calls_expected:  # one of the calls expected (`_expected_back`), or in its stead
                self.calls_expected -= 1
        try:
            yield
        finally:
            expected = loop is None and self._expected_back()
            with self._counting:
                self.in_flight -= 1
                self.calls_expected += expected  # in the same step: a batch never sees it gone and not expected
            if loop is not None:
                self._left(loop)

    def _expected_back(self) -> bool:
        """Whether a call leaving on its thread (gRPC's) counts as expected back: on one CPU, its client's next call
        is, and a batch held back waits for it as for the requests in flight (grpc gives a call to the server only
        once it came), until a call on a thread is admitted or the batch's hold runs out (as long as the last batch
        ran). Without it, on mid, 32 connections on two processes: on each, the first call back after a batch ran
        alone, unbatched (a fifth of the batches were of one row), 8.7 rows a batch on average; with it 15.6, and
        8-13 % more calls per second (README.md, batching)."""
        return self._batcher is not None and self._batcher.holds_back

    def _left(self, loop: asyncio.AbstractEventLoop) -> None:
        """A request on the event loop left: on one CPU, a batch held back for it may start, once the loop has run
        what is ready (its batch's other answers leave in the same pass)."""
        batcher = self._batcher
        if batcher is not None and batcher.holds_back and batcher.has_queued:
            loop.call_soon(self._wake_if_nothing_came, self.arrivals)

    def _expect_no_calls(self) -> None:
        """A batch held back started without the gRPC calls expected: their clients are not coming back soon."""
        with self._counting:
            self.calls_expected = 0

    def _wake_if_nothing_came(self, arrivals: int) -> None:
        """After a request joined the batcher or left, once the loop ran what was ready: with no bytes come meanwhile,
        a batch held back may start when every request in flight is in. Bytes that came are likely requests that will
        join it (the next ones of the clients just answered); their joining calls this again."""
        if self.arrivals == arrivals:
            self._batcher.wake_if_all_in()

    def receive(self) -> bool:
        """A request received that waits for a thread before it asks to be admitted (a gRPC call, until
        `received_done`): SIGTERM's drain waits for it too. Whether it came before the drain's refusals began."""
        self._last_asked = time.monotonic()
        with self._counting:
            self.waiting += 1
        return not self._refusing

    def received_done(self) -> None:
        with self._counting:
            self.waiting -= 1

    async def drain(self, timeout_s: float) -> bool:
        """SIGTERM: readiness off at once; requests received before it are answered, later ones refused UNAVAILABLE.
        What counts as received: whatever the front ends take in until arrivals pause for SETTLE_QUIET_S (at most
        SETTLE_MAX_S), and gRPC calls waiting for a thread (`receive`). Then the requests in flight get the rest of
        `timeout_s`, and calls still arriving get their UNAVAILABLE before the front ends stop. Whether every request
        received finished."""
        started = time.monotonic()
        self.shutting_down = True
        await self._settle(started, SETTLE_MAX_S)
        self._refusing = True
        while (self.in_flight or self.waiting) and time.monotonic() - started < timeout_s:
            await asyncio.sleep(0.02)
        await self._settle(time.monotonic(), min(SETTLE_MAX_S, max(0.0, started + timeout_s - time.monotonic())))
        return not (self.in_flight or self.waiting)

    async def _settle(self, since: float, at_most_s: float) -> None:
        """Until no request arrived for SETTLE_QUIET_S after `since`, or `at_most_s` passed."""
        while (time.monotonic() - max(since, self._last_asked) < SETTLE_QUIET_S
               and time.monotonic() - since < at_most_s):
            await asyncio.sleep(0.01)

    def decoding(self, size: int) -> contextlib.AbstractAsyncContextManager[Callable[..., Awaitable]]:
        """`run(work, *args)` for decoding a request of `size` bytes (a REST body, what gRPC tensors expand to) and
        encoding its answer: inline when small; when large (a 16 MB body takes a second) off the event loop (on the
        one thread such work has; a gRPC call on its own thread), so the loop keeps answering the others, and one
        large request at a time, whichever front end it came by; a moment after its answer, the memory it freed goes
        back to the system."""
        return _INLINE if size < LARGE_REQUEST_BYTES else self._off_loop()

    @contextlib.asynccontextmanager
    async def _off_loop(self) -> AsyncIterator[Callable[..., Awaitable]]:
        loop = _running_loop()

        async def off_loop(work, *args):
            if loop is None:  # a gRPC thread
                return self._one_large_at_a_time(work, *args)
            return await loop.run_in_executor(self._large, self._one_large_at_a_time, work, *args)

        try:
            yield off_loop
        finally:  # released before the answer has gone, what it (or an error's traceback) still held stayed with
            memory.release_in_background(after_s=RELEASE_AFTER_ANSWER_S)  # glibc: +97 MiB once

    def _one_large_at_a_time(self, work, *args):
        with self._large_work:
            return without_collections(work, *args)

    def authorize(self, credentials: str | None, action: str, models: list[str], peer: str, target: str) -> Token | None:
        """The caller's token, checked for `action` on each of `models` (UNAUTHENTICATED / PERMISSION_DENIED); each
        refusal goes to the audit log. None when no token is needed (auth off, or an open action)."""
        if self.access.is_open(action):
            return None
        token = None
        try:
            token = self.access.authenticate(credentials)
            for model in models or [""]:
                self.access.authorize(token, action, model)
        except ServingError as e:
            self.audit_refusal(e, target, token, peer)
            raise
        return token

    @property
    def authenticates(self) -> bool:
        """Whether requests must carry a token (--auth_token_file)."""
        return self.access.enabled

    def audit_refusal(self, error: ServingError, target: str, token: Token | None, peer: str) -> None:
        """An `auth_failure` line for a request refused for who sent it (here, or by a front end's own rule)."""
        self.audit.record("auth_failure", target, error.status_string(), token.id if token else None, peer)

    def reload_tokens(self) -> None:
        """SIGHUP: re-read --auth_token_file (a broken file keeps the tokens in force); audited either way."""
        if not self.access.enabled:
            return
        try:
            self.access.reload()
        except ValueError as e:
            log.error("Keeping the previous tokens: %s", e)
            self.audit.record("token_reload", self.access.token_file, f"INVALID_ARGUMENT: {e}", None, "local")
            return
        self.audit.record("token_reload", self.access.token_file, "OK", None, "local")

    def servable(self, name: str, version: int | None = None, label: str | None = None) -> Servable:
        """The loaded version a request names (the latest when neither version nor label is given)."""
        check_name(name, "model name")
        if label is not None:
            check_name(label, "version label")
        return self.manager.servable(name, version, label)

    @property
    def config(self) -> ModelServerConfig:
        """The ModelServerConfig in force."""
        return self.manager.config

    def start(self, poll_wait_seconds: float) -> None:
        """Apply the first config (blocking): its request logs checked writable before any model loads, the
        models loaded (manager.start), then the request logs in force."""
        plan = self.request_log.prepare(self.manager.config)
        self.manager.start(poll_wait_seconds)
        self.request_log.apply(plan)

    def reload_config(self, config: ModelServerConfig, token: Token | None = None, peer: str = "local",
                      retry: bool = False) -> None:
        """Apply a new ModelServerConfig now (blocking: run it off the event loop); audited, labels moved included,
        whoever asked: a ReloadConfigRequest (its token and peer) or the --model_config_file watcher. A `retry` (the
        watcher applying again, at its next poll, a file it could not apply) is audited only once it succeeds. Its
        request logs are checked writable first and put in force once the models are: a refused config changes
        neither."""
        target = ",".join(m.name for m in config.model_config_list.config)
        before = self.manager.labels()
        token_id = token.id if token else None
        try:
            plan = self.request_log.prepare(config)
            self.manager.reload_config(config)
            self.request_log.apply(plan)
        except ServingError as e:
            if not retry:
                self.audit.record("reload", target, e.status_string(), token_id, peer)
            raise
        self.audit.record("reload", target, "OK", token_id, peer)
        self.audit.label_changes(before, self.manager.labels(), token_id, peer)

    def record(self, model: str, version: str, api: str, entrypoint: str, status: str, seconds: float) -> None:
        """Count one answered request (status: a gRPC code name) and its latency. A name no model has is counted
        under one label: clients choose names, and each distinct label is a series Prometheus keeps for good.
        Every so many failures, a full collection: an error raised through an awaited future is a reference cycle
        holding the request's data, and the server's gc thresholds (serving/__main__.py) make those rare."""
        if status != "OK":
            self._failed += 1
            if self._failed % FAILURES_PER_COLLECTION == 0:
                gc.collect()
            if model and model not in self.manager.model_names():  # an answered model exists
                model, version = UNKNOWN_MODEL, ""
        self.metrics.request(model, version, api, entrypoint, status, seconds)

    def record_config_file(self, applies: bool) -> None:
        """Whether the --model_config_file on disk could be applied (the serving_model_config_file_error gauge)."""
        self.metrics.config_file_error.set(0 if applies else 1)

    def metrics_text(self) -> bytes:
        """The Prometheus text exposition of every metric, of every process of the server."""
        own = self.metrics.render()
        return own if self.shared_metrics is None else self.shared_metrics.merged(own)

    def _record_batch(self, run: SignatureRunner, size: int, padded: int) -> None:
        self.metrics.batch(run.servable.name, run.servable.version, size, padded)

    def _record_queued(self, seconds: float) -> None:
        self.metrics.queued(self._batcher.params.thread_pool_name, seconds)

    async def _run(self, servable: Servable, signature: str, inputs: Tensors, api: str) -> Tensors:
        """Run a signature (`api`: Predict, Classify or Regress), timed as TF Serving's runtime_latency times its
        Session::Run, which includes the wait in the batching queue."""
        started = time.perf_counter()
        fetched = await self._session_run(servable, (signature,), inputs)
        self.metrics.runtime(servable.name, api, time.perf_counter() - started)
        return servable.outputs(signature, fetched)

    async def _session_run(self, servable: Servable, signatures: tuple[str, ...], inputs: Tensors) -> Tensors:
        """One session call of `signatures` together, the outputs by tensor name: through the dynamic batcher, or on
        the thread pool. A request alone in the server (where the batcher would not wait for others to join it)
        skips the batch queue: its batch of one runs on the pool, or, when quick, right here on the event loop, and
        is counted in the batch metrics later (Metrics.later). Alone means no other request in flight or expected
        back (`_expected_back`) and no bytes arrived on the loop after its own (`admitted`'s arrival): a quick model
        run here under load kept every request alone (the others were read but not yet admitted), and none was
        batched (digits, 32 connections: batches of 1.0, 2,000/s)."""
        runner = servable.runner(*signatures)
        batcher = self._batcher
        loop = _running_loop()  # None: a gRPC thread, which may block, and calls the model itself
        alone = (self.in_flight == 1 and self._came_last and not self.calls_expected
                 and (batcher is None or batcher.params.batch_timeout_micros == 0))
        if batcher is not None and not alone:
            self.metrics.batch_input(inputs)
            if loop is None:
                return batcher.submit(runner, inputs)
            if batcher.holds_back:
                loop.call_soon(self._wake_if_nothing_came, self.arrivals)  # once it joined and the loop ran
                # what was ready (a thread woken as it joined started batches before the requests read in the same
                # pass joined them: 16 connections on mid, 6 % fewer requests per second, p90 latency +40 %)
            return await batcher.submit_async(runner, inputs)
        # (the call and its arguments, not a partial: with the caches cold here, a partial cost ~3 us more than
        # a direct call, this ~2; one choice for both ways of running it)
        run, args = (runner, (inputs,)) if batcher is None else (batcher.run_alone, (runner, inputs))
        try:
            if loop is None or (alone and runner.is_quick(inputs)):
                result = run(*args)
            else:
                result = await loop.run_in_executor(self._pool, run, *args)
        except BaseException:
            if batcher is not None:
                self.metrics.batch_input(inputs)
            raise
        if batcher is None:
            return result
        outputs, rows, padded = result
        self.metrics.later(functools.partial(self._count_alone, servable.name, servable.version, len(inputs), rows,
                                             padded))
        return outputs

    def _count_alone(self, model: str, version: int, tensors: int, rows: int, padded: int) -> None:
        """A lone request's batch, counted as the batcher counts one (its `tensors` inputs entering it, a wait of 0
        in no queue, the batch), by name: a count waiting for later must not keep a version's model loaded."""
        for _ in range(tensors):
            self.metrics.input_batch_size.add(rows)
        self._record_queued(0.0)
        self.metrics.batch(model, version, rows, padded)

    # Signatures are decided once per request, by the front end's call of one of these (where TF Serving decides
    # it: gRPC before reading the request's tensors, REST after parsing its body), and passed on as decided.

    @staticmethod
    def predict_signature(servable: Servable, name: str) -> str:
        """The signature a gRPC Predict names (FAILED_PRECONDITION when the servable has none of that name)."""
        return signatures.predict_signature(servable, name)

    @staticmethod
    def predict_inputs(servable: Servable, name: str) -> dict[str, TensorSpec]:
        """The inputs of the signature a REST predict body names, to parse the body against (INVALID_ARGUMENT when
        the servable has none of that name)."""
        return signatures.signature_inputs(servable, name)

    def classify_signature(self, servable: Servable, name: str) -> str:
        """The signature a Classify names, checked as classifier.cc checks it."""
        return signatures.classify_signature(servable, name, self.check_method_names)

    def regress_signature(self, servable: Servable, name: str) -> str:
        """The signature a Regress names, checked as regressor.cc checks it."""
        return signatures.regress_signature(servable, name, self.check_method_names)

    def multi_inference_tasks(self, servable: Servable,
                              tasks: list[inference_pb2.InferenceTask]) -> list[tuple[str, str]]:
        """(method name, signature) of each task of a MultiInference on `servable`, checked in TF Serving's order."""
        return signatures.multi_inference_tasks(servable, tasks, self.check_method_names)

    def check_predict_request(self, servable: Servable, signature: str, inputs: dict, output_filter: list[str]) -> None:
        """predict_util.cc's checks of a Predict for a decided signature; `inputs` need only their dtype and ndim (a
        gRPC request's tensors are checked before they are decoded)."""
        signatures.check_predict_request(servable, signature, inputs, output_filter, self.check_method_names)

    # `requested`: the ModelSpec the request sent (a REST request's as gRPC would send it), for the request log.

    async def predict(self, servable: Servable, signature: str, inputs: Tensors, output_filter: list[str] = (),
                      requested: model_pb2.ModelSpec | None = None) -> Tensors:
        """The outputs of a decided signature, as TF Serving's Predict: the request checked, then run."""
        self.check_predict_request(servable, signature, inputs, list(output_filter))
        outputs = await self._run(servable, signature, inputs, "Predict")
        outputs = signatures.filter_outputs(outputs, list(output_filter))
        self.request_log.observe("predict", servable, signature, requested, inputs, outputs, tuple(output_filter))
        return outputs

    async def classify(self, servable: Servable, signature: str, examples: list[bytes],
                       requested: model_pb2.ModelSpec | None = None) -> tuple[np.ndarray | None, np.ndarray | None]:
        """(classes, scores) of a decided signature for serialized tf.Examples, as TF Serving's Classify."""
        outputs = await self._run(servable, signature, signatures.example_inputs(servable, (signature,), examples),
                                  "Classify")
        result = signatures.classification_result(outputs, len(examples))
        self.request_log.observe("classify", servable, signature, requested, examples, result)
        return result

    async def regress(self, servable: Servable, signature: str, examples: list[bytes],
                      requested: model_pb2.ModelSpec | None = None) -> np.ndarray:
        """One value per serialized tf.Example from a decided signature, as TF Serving's Regress."""
        outputs = await self._run(servable, signature, signatures.example_inputs(servable, (signature,), examples),
                                  "Regress")
        values = signatures.regression_result(outputs, len(examples))
        self.request_log.observe("regress", servable, signature, requested, examples, values)
        return values

    async def multi_inference(self, servable: Servable, tasks: list[tuple[str, str]], examples: list[bytes],
                              requested: list[inference_pb2.InferenceTask] | None = None
                              ) -> list[tuple[np.ndarray | None, np.ndarray | None] | np.ndarray]:
        """The decided tasks on the same tf.Examples in one session call, as multi_inference.cc runs them (their
        signatures' outputs fetched together), then each task's result in order (a classification's (classes,
        scores), a regression's values). Counted as TF Serving counts it: its examples once the call succeeded
        (RecordRequestExampleCount), no runtime latency (its one-shot computation records none); logged as one
        request (`requested`: the request's tasks)."""
        names = tuple(signature for _, signature in tasks)
        fetched = await self._session_run(servable, names, signatures.example_inputs(servable, names, examples))
        self.metrics.examples(servable.name, len(examples))
        results = []
        for method, signature in tasks:
            shape = signatures.classification_result if method == signatures.CLASSIFY else signatures.regression_result
            results.append(shape(servable.outputs(signature, fetched), len(examples)))
        self.request_log.observe("multi_inference", servable, tasks, requested, examples, results)
        return results

    def status(self, name: str, version: int | None) -> get_model_status_pb2.GetModelStatusResponse:
        """GetModelStatus, as both front ends answer it (REST prints it as JSON)."""
        check_name(name, "model name")
        response = get_model_status_pb2.GetModelStatusResponse()
        for number, status in self.manager.status(name, version):
            entry = response.model_version_status.add(version=number, state=status.state)
            entry.status.error_code = status.error_code
            entry.status.error_message = status.error_message
        return response

    @staticmethod
    def metadata(servable: Servable) -> tuple[model_pb2.ModelSpec, get_model_metadata_pb2.SignatureDefMap]:
        """The model spec and every SignatureDef (GetModelMetadata's one supported field)."""
        spec = model_pb2.ModelSpec(name=servable.name)
        spec.version.value = servable.version
        signature_defs = get_model_metadata_pb2.SignatureDefMap()
        for key, signature in servable.signature_defs.items():
            signature_defs.signature_def[key].CopyFrom(signature)
        return spec, signature_defs

    def close(self) -> None:
        """After the drain: model calls still running past it are not waited for (the process exits); what the
        request log has queued is written and its files closed."""
        self.request_log.close()
        if self._batcher is not None:
            self._batcher.close()
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._large.shutdown(wait=False, cancel_futures=True)
        self.audit.close()


def run_blocking(coroutine: Coroutine):
    """The result of one of ServingCore's request coroutines, completed on this thread, which is not the event loop's
    (a gRPC call's): there they never suspend (see the module's docstring); one that did would be a bug, said so."""
    try:
        coroutine.send(None)
    except StopIteration as done:
        return done.value
    coroutine.close()
    raise RuntimeError(f"{coroutine.__qualname__} waited for the event loop on a thread that has none")


def _running_loop() -> asyncio.AbstractEventLoop | None:
    """The event loop running on this thread; None on the gRPC front end's threads."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


async def _inline(work, *args):
    return work(*args)


class _Inline:
    """`decoding`'s context for a small request: its work runs inline (an object, not a generator: 1 us less)."""

    async def __aenter__(self) -> Callable[..., Awaitable]:
        return _inline

    async def __aexit__(self, *exc_info) -> None:
        return None


_INLINE = _Inline()


def without_collections(work, *args):
    """`work(*args)` with the cyclic collector off: parsing a large JSON body allocates millions of objects, and the
    collections they set off (in the C parser, holding the GIL) made its stall of the event loop 1.5 times longer.
    memory.release collects afterwards."""
    gc.disable()
    try:
        return work(*args)
    finally:
        gc.enable()


def check_name(name: str, what: str) -> None:
    if len(name) > MAX_NAME_CHARS:
        raise InvalidArgument(f"{what} of {len(name)} characters: at most {MAX_NAME_CHARS} ('{name[:40]}...')")
