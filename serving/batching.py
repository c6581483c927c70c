"""Dynamic request batching with TensorFlow Serving's semantics.

Concurrent requests that call the same `run` function with inputs of the same names, dtypes
and non-batch shapes are concatenated along dimension 0, run once, and the outputs are split
back by row range. The scheduling follows TF Serving's SharedBatchScheduler (one thread pool
shared by all queues; per queue a deque of batches whose last one is open, closed when the
next task does not fit, run when full or `batch_timeout_micros` after its first task) and the
merging follows BatchingSession (padding up to `allowed_batch_sizes` with copies of a real
row, outputs must keep the batch dimension). Unlike TF Serving, tasks whose shapes differ
beyond dimension 0 go to separate queues instead of failing the batch they were mixed into.

One more difference, on a server with one CPU (`in_flight` given): a batch due by its timeout
waits while requests in flight are outside the batcher (being parsed or answered; not a body
still arriving), for at most as long as the last batch ran. Their work and the batch's share
the one CPU, so starting the batch sooner finishes nothing sooner, and those being read can
join it. On mid, REST, 16 connections: batches of 7.9 rows on average became 15.9 and the
server answered 1-15 % more requests per second, with 4 connections 24-32 %
(benchmarks/README.md).
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from queue import Empty, SimpleQueue
from typing import Any

import numpy as np

from serving import errors, protos

log = logging.getLogger(__name__)

Tensors = Mapping[str, np.ndarray]
RunFn = Callable[[dict[str, np.ndarray]], Mapping[str, np.ndarray]]
OnBatch = Callable[[RunFn, int, int], None]
OnQueued = Callable[[float], None]


class InvalidRequestError(errors.InvalidArgument):
    """A request the batcher cannot take (no inputs, unequal batch sizes, too many rows)."""


class QueueFullError(errors.Unavailable):
    """TF Serving answers UNAVAILABLE when the batch queue is full."""


class BatcherClosedError(errors.Unavailable):
    pass


class BatchOutputError(errors.FailedPrecondition):
    """`run` returned an output that cannot be split back into per-request rows."""


@dataclass(frozen=True)
class BatchingParameters:
    """TF Serving's BatchingParameters (session_bundle_config.proto), with its defaults.

    The defaults are SharedBatchScheduler's (tensorflow/core/kernels/batching_util/
    shared_batch_scheduler.h): num_batch_threads is port::MaxParallelism(), the CPUs this process may run on
    (sched_getaffinity, as port::NumSchedulableCPUs counts them; not the machine's: a pinned server has fewer).
    `pad_variable_length_inputs` is accepted but not applied: inputs whose shapes differ beyond
    dimension 0 are batched in separate queues instead of being padded to a common shape.
    """

    max_batch_size: int = 1000
    batch_timeout_micros: int = 0
    max_enqueued_batches: int = 10
    num_batch_threads: int = field(default_factory=lambda: len(os.sched_getaffinity(0)))
    thread_pool_name: str = "batch_threads"
    allowed_batch_sizes: tuple[int, ...] = ()
    pad_variable_length_inputs: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "allowed_batch_sizes", tuple(self.allowed_batch_sizes))
        for name, minimum in [("max_batch_size", 1), ("batch_timeout_micros", 0),
                              ("max_enqueued_batches", 1), ("num_batch_threads", 1)]:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
                raise ValueError(f"BatchingParameters.{name} must be an integer >= {minimum}; "
                                 f"received {value!r}")
        sizes = self.allowed_batch_sizes
        if sizes:
            if any(b <= a for a, b in zip(sizes, sizes[1:])) or sizes[0] < 1:
                raise ValueError("BatchingParameters.allowed_batch_sizes entries must be positive "
                                 f"and monotonically increasing; received {list(sizes)}")
            if sizes[-1] != self.max_batch_size:
                raise ValueError("Last entry in allowed_batch_sizes must match max_batch_size; "
                                 f"last entry was {sizes[-1]}; expected {self.max_batch_size}")

    @classmethod
    def from_proto(cls, message: Any, defaults: BatchingParameters | None = None) -> BatchingParameters:
        """From a tensorflow.serving.BatchingParameters message; unset wrapper fields keep
        the defaults (`defaults`' where given), as in TF Serving's bundle_factory_util.h."""
        if message.HasField("enable_large_batch_splitting") and \
                message.enable_large_batch_splitting.value:
            raise ValueError("enable_large_batch_splitting is not supported: received true, "
                             "expected false or unset (requests larger than max_batch_size are "
                             "rejected; split them on the client)")
        defaults = defaults or cls()
        wrapped = {name: getattr(message, name).value if message.HasField(name)
                   else getattr(defaults, name)
                   for name in ("max_batch_size", "batch_timeout_micros", "max_enqueued_batches",
                                "num_batch_threads", "thread_pool_name")}
        return cls(**wrapped, allowed_batch_sizes=tuple(message.allowed_batch_sizes),
                   pad_variable_length_inputs=message.pad_variable_length_inputs)

    @classmethod
    def from_text(cls, text: str, source: str = "batching parameters",
                  defaults: BatchingParameters | None = None) -> BatchingParameters:
        """From the text format of TF Serving's --batching_parameters_file."""
        return cls.from_proto(protos.parse_text(text, protos.BatchingParameters, source), defaults)


@dataclass
class _Task:
    """One request in the queue. Its answer goes to `future`: a thread's concurrent Future (submit), or an event
    loop's asyncio Future (submit_async: `loop` set), which a batch thread settles for all of a batch's tasks of
    that loop at once, in one call_soon_threadsafe."""

    inputs: Tensors
    rows: int
    future: Future | asyncio.Future
    loop: asyncio.AbstractEventLoop | None = None
    enqueued: float = field(default_factory=time.monotonic)

    def start(self) -> bool:
        """Whether the task is still wanted as its batch starts (a cancelled caller's is dropped)."""
        if self.loop is None:
            return self.future.set_running_or_notify_cancel()
        return not self.future.cancelled()  # read off the loop: a caller cancelled from now on gets no answer


@dataclass
class _Batch:
    deadline: float  # time.monotonic() after which the batch runs even if not full
    tasks: list[_Task] = field(default_factory=list)
    rows: int = 0


@dataclass
class _Queue:
    run: RunFn
    batches: deque[_Batch] = field(default_factory=deque)  # only the last one is open


class Batcher:
    """Coalesces concurrent requests into batched calls of `run` on a pool of threads.

    Requests are batched together iff they pass the same `run` object (one per model version
    and signature) and inputs with the same names, dtypes and shapes beyond dimension 0; the
    threads are shared by all of them, as TF Serving shares one pool across models. A batch of
    one unpadded request passes the caller's arrays to `run` uncopied, so `run` must not
    modify its inputs. `on_batch(run, size, padded_size)` is called before each batch runs, e.g.
    for a batch-size histogram; `on_queued(seconds)` with each of its requests' time in the queue.
    `in_flight()`, on a server with one CPU: its requests in flight that use it, those here included (not those
    waiting for the network); the caller calls `wake_if_all_in` when one leaves, and when one joins from an event
    loop (one joining from a thread is checked here). `hold_expired()` is called when a batch held back for them
    starts without them (the longest hold ran out): those the caller expected are not coming.
    """

    def __init__(self, params: BatchingParameters, on_batch: OnBatch | None = None,
                 on_queued: OnQueued | None = None, in_flight: Callable[[], int] | None = None,
                 hold_expired: Callable[[], None] | None = None) -> None:
        if params.pad_variable_length_inputs:
            log.warning("pad_variable_length_inputs is not applied: inputs of different shapes "
                        "are batched separately")
        self.params = params
        self._on_batch = on_batch
        self._on_queued = on_queued
        self._timeout_s = params.batch_timeout_micros / 1e6
        self._in_flight = in_flight  # the server's requests in flight, on one CPU (see the module's docstring)
        self._hold_expired = hold_expired
        self._held = 0  # requests in the queues or in a running batch: those of `in_flight` that are here
        self._last_run_s = 0.0  # how long the last batch took: the longest a due batch waits for the others
        self._lock = threading.Lock()  # guards the queues, _held, _last_run_s and the two counts below
        # An idle thread waits for a token: one per batch it may take (or deadline to watch), put only while a
        # thread sleeps. A lone request wakes one thread once, as an executor's queue does; with a Condition it
        # lagged a thread pool by ~0.5-0.8 ms at p90 at one connection on 2 busy cores, now by ~0
        # (benchmarks/results/low_load_mid.md)
        self._wakeups: SimpleQueue[None] = SimpleQueue()
        self._sleeping = 0  # threads waiting for a token
        self._tokens = 0  # tokens not yet taken
        self._queues: dict[tuple[RunFn, Hashable], _Queue] = {}  # round-robin order
        self._closed = False
        self._threads = [threading.Thread(target=self._work, daemon=True,
                                          name=f"{params.thread_pool_name}_{i}")
                         for i in range(params.num_batch_threads)]
        for thread in self._threads:
            thread.start()

    def submit(self, run: RunFn, inputs: Tensors) -> dict[str, np.ndarray]:
        """Runs `inputs` as part of a batch and returns this request's rows of the outputs.

        Blocks the calling thread; raises InvalidRequestError, QueueFullError or
        BatcherClosedError, or whatever `run` raised for the batch.
        """
        future = Future()
        self._enqueue(run, inputs, future)
        return future.result()

    async def submit_async(self, run: RunFn, inputs: Tensors) -> dict[str, np.ndarray]:
        """Same as submit() without blocking the event loop; cancelling the caller drops
        the request if its batch has not started yet. Its answer comes back on the loop with its
        batch's others, in one hand-off (a concurrent Future wrapped for the loop cost each request
        a Condition and a wake-up of its own)."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._enqueue(run, inputs, future, loop)
        return await future

    def run_alone(self, run: RunFn, inputs: Tensors) -> tuple[dict[str, np.ndarray], int, int]:
        """Runs `inputs` at once as a batch of their own on the calling thread, checked, padded and split as every
        batch: for a request the caller knows no other could join (with batch_timeout_micros 0 it would run alone
        at once anyway), so it skips the hand-off to a batch thread and back. Returns its outputs, its rows and its
        padded size, for the caller to count its batch when no answer waits for that (it waited in no queue); a
        batch that fails is counted here before the error propagates, as every batch is."""
        params = self.params  # what this touches, it touches with the caches cold (the model's last call): each
        rows = _rows(inputs, params.max_batch_size)  # object costs (no generator, no merge or split of one: -4 us)
        if self._closed:
            raise _closed_error()
        padded = _round_up(rows, params.allowed_batch_sizes)
        try:
            outputs = run(inputs if padded == rows else _merge([inputs], padded - rows))
        except BaseException:
            self._count(run, [0.0], rows, padded)
            raise
        if padded == rows:  # its outputs are the batch's
            _check_batched(outputs, padded, rows)
            return outputs, rows, padded
        return _split(outputs, [rows], padded)[0], rows, padded

    def close(self) -> None:
        """Fails every request not yet running with BatcherClosedError, waits for the running
        batches and joins the threads. Idempotent."""
        with self._lock:
            self._closed = True
            pending = [task for queue in self._queues.values() for batch in queue.batches
                       for task in batch.tasks]
            self._queues.clear()
        for _ in self._threads:
            self._wakeups.put(None)
        _settle([task for task in pending if task.start()], error=BatcherClosedError(
            "the batcher was closed before this request ran"))
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join()

    def __enter__(self) -> Batcher:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _enqueue(self, run: RunFn, inputs: Tensors, future: Future | asyncio.Future,
                 loop: asyncio.AbstractEventLoop | None = None) -> None:
        max_batch_size = self.params.max_batch_size
        rows = _rows(inputs, max_batch_size)
        shapes = _queue_key(inputs)
        task = _Task(inputs, rows, future, loop)
        with self._lock:
            if self._closed:
                raise _closed_error()
            queue = self._queues.get((run, shapes))
            if queue is None:
                queue = self._queues[(run, shapes)] = _Queue(run)
            batches = queue.batches
            new_batch = not batches or batches[-1].rows + rows > max_batch_size
            if new_batch:
                if len(batches) >= self.params.max_enqueued_batches:
                    raise QueueFullError(
                        "The batch scheduling queue to which this task was submitted is full: "
                        f"it holds {len(batches)} batches (max_enqueued_batches="
                        f"{self.params.max_enqueued_batches})")
                batches.append(_Batch(deadline=time.monotonic() + self._timeout_s))
            batch = batches[-1]
            batch.tasks.append(task)
            batch.rows += rows
            self._held += 1
            if new_batch or batch.rows >= max_batch_size or (loop is None and self._all_in()):
                self._wake_one()

    @property
    def holds_back(self) -> bool:
        """Whether a due batch waits for the requests in flight (`in_flight` given: a server with one CPU)."""
        return self._in_flight is not None

    @property
    def has_queued(self) -> bool:
        """Whether a batch waits to run (read without the lock: what a caller may skip work on)."""
        return bool(self._queues)

    def wake_if_all_in(self) -> None:
        """A request in flight joined the batcher or left the server: once every one is here, a batch held back for
        them may start."""
        with self._lock:
            if self._queues and self._all_in():
                self._wake_one()

    def _all_in(self) -> bool:
        """Under the lock: whether every request in flight is in the queues or a running batch (on one CPU)."""
        return self._in_flight is not None and self._in_flight() <= self._held

    def _wake_one(self) -> None:
        """Under the lock: a token for a sleeping thread, unless each one has its token already."""
        if self._tokens < self._sleeping:
            self._tokens += 1
            self._wakeups.put(None)

    def _work(self) -> None:
        while True:
            with self._lock:
                if self._closed:
                    return
                now = time.monotonic()
                taken = self._take_batch(now)
                if taken is None:
                    starts = [self._start_time(q.batches[0], now) for q in self._queues.values()]
                    timeout = max(0.0, min(starts) - now) if starts else None
                    self._sleeping += 1
                elif self._queues:  # this thread may have been the one watching the next deadline:
                    self._wake_one()  # hand that watch to an idle thread
            if taken is None:
                woken = True
                try:
                    self._wakeups.get(timeout=timeout)
                except Empty:  # the deadline it watched
                    woken = False
                with self._lock:
                    self._sleeping -= 1
                    if woken:
                        self._tokens -= 1
                continue
            self._execute(*taken)

    def _take_batch(self, now: float) -> tuple[RunFn, _Batch] | None:
        """Pops the first schedulable batch in round-robin order, as SharedBatchScheduler:
        closed (another batch follows it), full, or past its timeout (on one CPU, and past its hold)."""
        max_batch_size = self.params.max_batch_size
        for key, queue in self._queues.items():
            front = queue.batches[0]
            if len(queue.batches) > 1 or front.rows >= max_batch_size:
                break
            if now >= self._start_time(front, now):
                if self._hold_expired is not None and not self._all_in():
                    self._hold_expired()
                break
        else:
            return None
        queue.batches.popleft()
        del self._queues[key]
        if queue.batches:  # to the back of the round-robin order
            self._queues[key] = queue
        return queue.run, front

    def _start_time(self, batch: _Batch, now: float) -> float:
        """Under the lock: when `batch`, not full, may start: at its deadline; on one CPU, once past it, when every
        request in flight has joined, or as long as the last batch ran after its deadline."""
        if self._in_flight is None or now < batch.deadline or self._all_in():
            return batch.deadline
        return batch.deadline + self._last_run_s

    def _execute(self, run: RunFn, batch: _Batch) -> None:
        started = time.monotonic()
        tasks = [task for task in batch.tasks if task.start()]
        try:
            if not tasks:
                return
            try:
                results = self._run_batch(run, tasks)
            except BaseException as error:  # every waiting request must get an answer
                _settle(tasks, error=error)
                return
            _settle(tasks, results)
        finally:
            with self._lock:
                self._held -= len(batch.tasks)
                self._last_run_s = time.monotonic() - started

    def _run_batch(self, run: RunFn, tasks: list[_Task]) -> list[dict[str, np.ndarray]]:
        """The tasks' inputs merged (padded to an allowed size), counted, run and split back: each task's outputs."""
        rows = sum(task.rows for task in tasks)
        padded = _round_up(rows, self.params.allowed_batch_sizes)
        dequeued = time.monotonic()
        self._count(run, [dequeued - task.enqueued for task in tasks], rows, padded)
        outputs = run(_merge([task.inputs for task in tasks], padded - rows))
        return _split(outputs, [task.rows for task in tasks], padded)

    def _count(self, run: RunFn, waits: list[float], rows: int, padded: int) -> None:
        """A batch's metrics: each task's time in the queue (seconds), the batch's size and padding."""
        if self._on_queued is not None:
            for wait in waits:
                self._on_queued(wait)
        if self._on_batch is not None:
            self._on_batch(run, rows, padded)


def _settle(tasks: list[_Task], results: list[dict[str, np.ndarray]] | None = None,
            error: BaseException | None = None) -> None:
    """Each task's result (or the batch's error): a thread's future at once, an event loop's futures together in one
    callback on their loop."""
    on_loops: dict[asyncio.AbstractEventLoop, list] = {}
    for i, task in enumerate(tasks):
        result = None if results is None else results[i]
        if task.loop is not None:
            on_loops.setdefault(task.loop, []).append((task.future, result))
        else:
            _answer(task.future, result, error)
    for loop, answers in on_loops.items():
        with contextlib.suppress(RuntimeError):  # a loop closed meanwhile has no one left to answer
            loop.call_soon_threadsafe(_settle_on_loop, answers, error)


def _settle_on_loop(answers: list[tuple[asyncio.Future, Any]], error: BaseException | None) -> None:
    for future, result in answers:
        if not future.done():  # done: its caller was cancelled after the batch started
            _answer(future, result, error)


def _answer(future: Future | asyncio.Future, result: Any, error: BaseException | None) -> None:
    if error is None:
        future.set_result(result)
    else:
        future.set_exception(error)


def _closed_error() -> BatcherClosedError:
    return BatcherClosedError("the batcher is closed; received a request after close()")


def _rows(inputs: Tensors, max_batch_size: int) -> int:
    """The request's row count; rejects what TF Serving's ComputeTensorBatchSize and Queue::Schedule reject."""
    if not inputs:  # the three messages are batching_util.h's ComputeTensorBatchSize's
        raise InvalidRequestError("Batching Run() must have at least one input tensor")
    rows = None
    for name, value in inputs.items():  # one pass, checked in ComputeTensorBatchSize's order
        if not isinstance(value, np.ndarray):
            raise InvalidRequestError(f"input {name!r} must be a numpy array; received {type(value).__name__}")
        if value.ndim == 0:
            raise InvalidRequestError("Batching Run() input tensors must have at least one dimension")
        if rows is None:
            rows = value.shape[0]
        elif value.shape[0] != rows:
            raise InvalidRequestError("Batching Run() input tensors must have equal 0th-dimension size")
    if rows == 0:
        raise InvalidRequestError("Batching Run() input tensors must have at least one row; "
                                  "received 0")
    if rows > max_batch_size:
        raise InvalidRequestError(f"Task size {rows} is larger than maximum input batch size "
                                  f"{max_batch_size} (max_batch_size)")
    return rows


def _queue_key(inputs: Tensors) -> Hashable:
    """What requests must share to be batched together: their inputs' names, dtypes and shapes beyond dimension 0."""
    return tuple(sorted((name, value.dtype, value.shape[1:]) for name, value in inputs.items()))


def _round_up(rows: int, allowed_batch_sizes: tuple[int, ...]) -> int:
    """RoundToLowestAllowedBatchSize (tensorflow_serving/batching/batching_util.cc)."""
    for size in allowed_batch_sizes:
        if size >= rows:
            return size
    return rows


def _merge(parts: list[Tensors], padding: int) -> Tensors:
    """Concatenates the requests' inputs and appends `padding` copies of the last one's first row, a valid input, as
    BatchingSession::MergeInputTensors. One request unpadded is passed on as it came, uncopied."""
    if len(parts) == 1 and not padding:
        return parts[0]
    merged = {}
    for name in parts[0]:
        tensors = [part[name] for part in parts]
        if padding:
            tensors.append(np.repeat(tensors[-1][:1], padding, axis=0))
        merged[name] = np.concatenate(tensors)
    return merged


def _check_batched(outputs: Tensors, padded: int, rows: int) -> None:
    """Outputs must keep the batch dimension (`padded` rows, of which `rows` are the requests'), as
    BatchingSession::SplitOutputTensors requires."""
    for name, value in outputs.items():
        if not getattr(value, "shape", ()):  # a numpy scalar, or a Python one: no batch dimension
            raise BatchOutputError(f"Batched output tensor {name!r} has 0 dimensions; expected "
                                   f"a leading batch dimension of size {padded}")
        if value.shape[0] != padded:
            raise BatchOutputError(
                f"Batched output tensor {name!r}'s 0th dimension is {value.shape[0]}; expected "
                f"{padded}, the sum of the 0th dimension sizes of the input tensors"
                f"{' plus padding' if padded != rows else ''}")


def _split(outputs: Tensors, sizes: list[int], padded: int) -> list[dict[str, np.ndarray]]:
    """Slices every output into the tasks' row ranges (padding rows dropped)."""
    _check_batched(outputs, padded, sum(sizes))
    if sizes == [padded]:  # one request, unpadded: its outputs are the batch's
        return [dict(outputs)]
    results, start = [], 0
    for size in sizes:
        results.append({name: value[start:start + size] for name, value in outputs.items()})
        start += size
    return results
