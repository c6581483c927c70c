"""The batcher with real threads and a numpy fake model that records the batches it ran.

Batches are made deterministic without sleeps: a long batch_timeout_micros means a batch runs
only when it is full or closed by the next request, async requests are enqueued in creation
order, and a gate (an Event) holds a running batch while others queue up behind it. The tests of
the hold on one CPU give a batch 50 ms to start where it must not (a held batch waits 1.5 s).
"""
from __future__ import annotations

import asyncio
import os
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest

from serving import protos
from serving.__main__ import build_parser
from serving.batching import (
    BatcherClosedError,
    Batcher,
    BatchingParameters,
    BatchOutputError,
    InvalidRequestError,
    QueueFullError,
)

LONG = 60_000_000  # batch_timeout_micros that no test waits for
WAIT_S = 10  # upper bound on any wait, so a bug fails the test instead of hanging it


class FakeModel:
    """y = 2x and a per-row sum; records each batch, optionally holds it until `gate` is set."""

    def __init__(self, gate: threading.Event | None = None) -> None:
        self.batches: list[dict[str, np.ndarray]] = []
        self.gate = gate
        self.started = threading.Event()

    @property
    def sizes(self) -> list[int]:
        return [len(batch["x"]) for batch in self.batches]

    def __call__(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.batches.append(inputs)
        self.started.set()
        if self.gate is not None:
            assert self.gate.wait(WAIT_S), "the test never released the gate"
        x = inputs["x"]
        return {"double": x * 2, "total": x.reshape(len(x), -1).sum(axis=1)}


def rows(start: int, n: int, width: int = 3, dtype=np.float32) -> dict[str, np.ndarray]:
    return {"x": np.arange(start * width, (start + n) * width, dtype=dtype).reshape(n, width)}


def assert_answers(request: dict[str, np.ndarray], result: dict[str, np.ndarray]) -> None:
    x = request["x"]
    np.testing.assert_array_equal(result["double"], x * 2)
    np.testing.assert_array_equal(result["total"], x.reshape(len(x), -1).sum(axis=1))


def params(**overrides) -> BatchingParameters:
    return BatchingParameters(**{"num_batch_threads": 2, **overrides})


def submit_from_threads(batcher: Batcher, model, requests: list) -> list:
    with ThreadPoolExecutor(len(requests)) as pool:
        futures = [pool.submit(batcher.submit, model, request) for request in requests]
        return [future.result(timeout=WAIT_S) for future in futures]


def submit_in_order(batcher: Batcher, model, requests: list) -> list:
    """Enqueues the requests in list order (each coroutine enqueues before its first await)."""
    async def main():
        calls = [batcher.submit_async(model, request) for request in requests]
        return await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), WAIT_S)
    return asyncio.run(main())


def test_concurrent_requests_are_coalesced_into_full_batches():
    model = FakeModel()
    requests = [rows(i, 1) for i in range(16)]
    with Batcher(params(max_batch_size=8, batch_timeout_micros=LONG)) as batcher:
        results = submit_from_threads(batcher, model, requests)
    assert model.sizes == [8, 8]
    for request, result in zip(requests, results):
        assert_answers(request, result)


def test_batches_never_exceed_max_batch_size():
    model = FakeModel()
    requests = [rows(i * 3, 1 + i % 3) for i in range(24)]
    # room for all 24 at once: on busy cores the threads may not have started a batch before the 11th is made
    with Batcher(params(max_batch_size=5, batch_timeout_micros=2_000, max_enqueued_batches=24)) as batcher:
        results = submit_from_threads(batcher, model, requests)
    assert max(model.sizes) <= 5
    assert sum(model.sizes) == sum(len(r["x"]) for r in requests)
    for request, result in zip(requests, results):
        assert_answers(request, result)


def test_lone_request_runs_once_the_timeout_has_passed():
    model = FakeModel()
    with Batcher(params(max_batch_size=100, batch_timeout_micros=50_000)) as batcher:
        start = time.monotonic()
        result = batcher.submit(model, rows(0, 2))
        elapsed = time.monotonic() - start
    assert_answers(rows(0, 2), result)
    assert model.sizes == [2]
    assert 0.045 <= elapsed < 2.0, f"a 50 ms timeout took {elapsed:.3f} s"


def test_batch_is_padded_to_an_allowed_size_and_split_back_exactly():
    model = FakeModel()
    seen = []
    requests = [rows(0, 1), rows(10, 2), rows(20, 6), rows(30, 2)]
    config = params(max_batch_size=8, allowed_batch_sizes=[2, 4, 8], batch_timeout_micros=LONG,
                    num_batch_threads=1)
    with Batcher(config, on_batch=lambda run, size, padded: seen.append((size, padded))) as batcher:
        # 1 + 2 rows form a batch that the 6-row request closes; 6 + 2 rows fill the next one.
        results = submit_in_order(batcher, model, requests)
    assert seen == [(3, 4), (8, 8)]
    assert model.sizes == [4, 8]
    # TF Serving pads with the first row of the batch's last request.
    padded = np.concatenate([requests[0]["x"], requests[1]["x"], requests[1]["x"][:1]])
    np.testing.assert_array_equal(model.batches[0]["x"], padded)
    for request, result in zip(requests, results):
        assert len(result["double"]) == len(request["x"])
        assert_answers(request, result)


def test_a_request_run_alone_is_checked_padded_split_on_the_calling_thread_and_counted_by_the_caller():
    model, seen, queued, threads = FakeModel(), [], [], []

    def run(inputs):
        threads.append(threading.get_ident())
        if len(inputs["x"]) == 8:
            raise ValueError("the model failed")
        return model(inputs)

    request = rows(0, 3)
    config = params(max_batch_size=8, allowed_batch_sizes=[4, 8])
    with Batcher(config, on_batch=lambda run, size, padded: seen.append((size, padded)),
                 on_queued=queued.append) as batcher:
        outputs, size, padded = batcher.run_alone(run, request)
        assert_answers(request, outputs)
        assert (size, padded) == (3, 4) and seen == [] and queued == []  # the caller counts the batch
        with pytest.raises(InvalidRequestError, match="Task size 9 is larger than maximum input batch size 8"):
            batcher.run_alone(run, rows(0, 9))
        with pytest.raises(ValueError, match="the model failed"):  # a failed batch is counted before its error
            batcher.run_alone(run, rows(0, 5))
        assert seen == [(5, 8)] and queued == [0.0]
    with pytest.raises(BatcherClosedError, match="after close"):
        batcher.run_alone(run, request)
    assert model.sizes == [4] and threads == [threading.get_ident()] * 2


def test_incompatible_requests_are_never_mixed():
    model, other_model = FakeModel(), FakeModel()
    groups = {
        "narrow": lambda i: rows(i, 1, width=3),
        "wide": lambda i: rows(i, 1, width=4),
        "float64": lambda i: rows(i, 1, dtype=np.float64),
        "extra_input": lambda i: {**rows(i, 1), "y": np.array([i])},
    }
    requests = [(name, model, make(i)) for i in range(2) for name, make in groups.items()]
    requests += [("other_model", other_model, rows(i, 1)) for i in range(2)]
    with Batcher(params(max_batch_size=2, batch_timeout_micros=LONG)) as batcher:
        async def main():
            calls = [batcher.submit_async(m, request) for _, m, request in requests]
            return await asyncio.wait_for(asyncio.gather(*calls), WAIT_S)
        results = asyncio.run(main())
    # Every batch is full (2 requests), so each group filled exactly one batch on its own.
    assert model.sizes == [2, 2, 2, 2] and other_model.sizes == [2]
    layouts = {tuple(sorted((k, v.dtype.str, v.shape) for k, v in b.items()))
               for b in model.batches}
    assert len(layouts) == 4
    for (_, _, request), result in zip(requests, results):
        assert_answers(request, result)


def test_an_error_in_run_reaches_every_request_of_the_batch():
    def broken(inputs):
        raise RuntimeError(f"model failed on {len(inputs['x'])} rows")

    with Batcher(params(max_batch_size=3, batch_timeout_micros=LONG)) as batcher:
        errors = submit_in_order(batcher, broken, [rows(i, 1) for i in range(3)])
        assert [str(e) for e in errors] == ["model failed on 3 rows"] * 3
        assert all(isinstance(e, RuntimeError) for e in errors)
        # The worker survived: the next batch runs normally.
        model = FakeModel()
        results = submit_in_order(batcher, model, [rows(i, 1) for i in range(3)])
    assert model.sizes == [3]
    assert_answers(rows(0, 1), results[0])


@pytest.mark.parametrize("output, message", [
    (np.float32(1.0), "'out' has 0 dimensions"),
    (np.zeros(5), "'out''s 0th dimension is 5; expected 2"),
])
def test_outputs_must_keep_the_batch_dimension(output, message):
    with Batcher(params(max_batch_size=2, batch_timeout_micros=LONG)) as batcher:
        errors = submit_in_order(batcher, lambda inputs: {"out": output},
                                 [rows(0, 1), rows(1, 1)])
    for error in errors:
        assert isinstance(error, BatchOutputError) and error.code == grpc.StatusCode.FAILED_PRECONDITION
        assert message in str(error)


@pytest.mark.parametrize("output, message", [
    (np.float32(1.0), "'out' has 0 dimensions"), (np.zeros(5), "'out''s 0th dimension is 5; expected 1, the sum"),
])
def test_a_request_run_alone_unpadded_has_its_outputs_checked_too(output, message):
    """A batch of one that needs no padding gets the model's outputs as they are: still checked as every batch's."""
    with Batcher(params(max_batch_size=2)) as batcher:
        with pytest.raises(BatchOutputError, match=re.escape(message)):
            batcher.run_alone(lambda inputs: {"out": output}, rows(0, 1))
        outputs, size, padded = batcher.run_alone(FakeModel(), rows(0, 1))
    assert_answers(rows(0, 1), outputs)
    assert (size, padded) == (1, 1)


@pytest.mark.parametrize("request_, message", [
    (rows(0, 5), "Task size 5 is larger than maximum input batch size 4"),
    ({}, "at least one input tensor"),
    ({"x": np.zeros((2, 3)), "y": np.zeros((3,))}, "equal 0th-dimension size"),
    ({"x": np.zeros((0, 3))}, "at least one row"),
    ({"x": np.array(1.0)}, "input tensors must have at least one dimension"),
    # ComputeTensorBatchSize's one pass: the second input's rows are refused before the third's missing dimension
    ({"x": np.zeros((2,)), "y": np.zeros((3,)), "z": np.array(1.0)}, "equal 0th-dimension size"),
    ({"x": np.zeros((2,)), "y": np.array(1.0), "z": np.zeros((3,))}, "at least one dimension"),
    ({"x": [[1.0, 2.0]]}, "must be a numpy array"),
])
def test_invalid_requests_are_rejected_before_queueing(request_, message):
    model = FakeModel()
    with Batcher(params(max_batch_size=4)) as batcher:
        with pytest.raises(InvalidRequestError, match=message) as caught:
            batcher.submit(model, request_)
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert model.batches == []


def test_full_queue_rejects_immediately_with_unavailable():
    model = FakeModel(gate=threading.Event())
    config = params(max_batch_size=1, max_enqueued_batches=1, num_batch_threads=1)
    with Batcher(config) as batcher:
        async def main():
            running = asyncio.ensure_future(batcher.submit_async(model, rows(0, 1)))
            assert await asyncio.to_thread(model.started.wait, WAIT_S)
            queued = asyncio.ensure_future(batcher.submit_async(model, rows(1, 1)))
            await asyncio.sleep(0)  # lets `queued` enqueue: the queue now holds 1 batch
            with pytest.raises(QueueFullError, match="is full") as caught:
                await batcher.submit_async(model, rows(2, 1))
            assert caught.value.code == grpc.StatusCode.UNAVAILABLE
            model.gate.set()
            return await asyncio.wait_for(asyncio.gather(running, queued), WAIT_S)
        results = asyncio.run(main())
    assert model.sizes == [1, 1]
    assert_answers(rows(1, 1), results[1])


def test_close_fails_pending_requests_finishes_running_ones_and_joins_threads():
    model = FakeModel(gate=threading.Event())
    batcher = Batcher(params(num_batch_threads=1, thread_pool_name="closing_test"))

    async def main():
        running = asyncio.ensure_future(batcher.submit_async(model, rows(0, 1)))
        assert await asyncio.to_thread(model.started.wait, WAIT_S)
        pending = asyncio.ensure_future(batcher.submit_async(model, rows(1, 1)))
        await asyncio.sleep(0)  # `pending` is now queued behind the running batch
        closing = asyncio.ensure_future(asyncio.to_thread(batcher.close))
        # close() answers the pending request before it waits for the running batch.
        with pytest.raises(BatcherClosedError):
            await asyncio.wait_for(pending, WAIT_S)
        assert not closing.done()
        model.gate.set()
        await asyncio.wait_for(closing, WAIT_S)
        return await running

    assert_answers(rows(0, 1), asyncio.run(main()))
    assert model.sizes == [1]
    assert not [t for t in threading.enumerate() if t.name.startswith("closing_test")]
    with pytest.raises(BatcherClosedError, match="after close"):
        batcher.submit(model, rows(2, 1))
    batcher.close()  # idempotent


class CountingLoop(asyncio.SelectorEventLoop):
    """A real event loop that counts the callbacks other threads hand it."""

    handed = 0

    def call_soon_threadsafe(self, *args, **kwargs):
        self.handed += 1
        return super().call_soon_threadsafe(*args, **kwargs)


def test_a_batchs_answers_reach_their_event_loop_in_one_hand_off():
    model, loop = FakeModel(gate=threading.Event()), CountingLoop()
    with Batcher(params(max_batch_size=8, num_batch_threads=1)) as batcher:
        async def main():
            first = asyncio.ensure_future(batcher.submit_async(model, rows(0, 1)))
            assert await asyncio.to_thread(model.started.wait, WAIT_S)
            others = [asyncio.ensure_future(batcher.submit_async(model, rows(i, 1))) for i in range(1, 6)]
            await asyncio.sleep(0)
            loop.handed = 0
            model.gate.set()
            return await asyncio.gather(first, *others)
        try:
            answers = loop.run_until_complete(main())
        finally:
            loop.close()
    for i, answer in enumerate(answers):
        assert_answers(rows(i, 1), answer)
    assert model.sizes == [1, 5] and loop.handed == 2  # one per batch (a hand-off per request before: 6)


def test_submit_async_leaves_the_event_loop_free_and_honours_cancellation():
    model = FakeModel(gate=threading.Event())
    with Batcher(params(max_batch_size=4, num_batch_threads=1)) as batcher:
        async def main():
            running = asyncio.ensure_future(batcher.submit_async(model, rows(0, 1)))
            # If submit_async blocked the loop, this line would never run and the gate
            # would time out inside the model.
            assert await asyncio.to_thread(model.started.wait, WAIT_S)
            cancelled = asyncio.ensure_future(batcher.submit_async(model, rows(1, 1)))
            await asyncio.sleep(0)
            cancelled.cancel()
            kept = asyncio.ensure_future(batcher.submit_async(model, rows(2, 1)))
            await asyncio.sleep(0)
            model.gate.set()
            return await asyncio.wait_for(asyncio.gather(running, kept), WAIT_S)
        first, kept = asyncio.run(main())
    assert_answers(rows(0, 1), first)
    assert_answers(rows(2, 1), kept)
    # The cancelled request shared the second batch with `kept` but was dropped before it ran.
    assert model.sizes == [1, 1]
    np.testing.assert_array_equal(model.batches[1]["x"], rows(2, 1)["x"])


HELD_S = 1.5  # the last batch's run: what a batch held back on one CPU would wait for at most


class InFlight:
    """What a server on one CPU tells its batcher: how many requests it has in flight (set by the test)."""

    def __init__(self, count: int) -> None:
        self.count = count

    def __call__(self) -> int:
        return self.count


def held_back_batcher(in_flight: InFlight, last_run_s: float, hold_expired=None) -> Batcher:
    """A batcher of a server on one CPU (batch_timeout_micros 0: every batch is due at once), whose last batch ran
    `last_run_s`: the longest it holds a due batch back."""
    batcher = Batcher(params(max_batch_size=8, num_batch_threads=1), in_flight=in_flight, hold_expired=hold_expired)
    in_flight.count += 1
    batcher.submit(lambda inputs: time.sleep(last_run_s) or FakeModel()(inputs), rows(0, 1))
    in_flight.count -= 1
    return batcher


def test_on_one_cpu_a_due_batch_waits_for_the_requests_in_flight_and_takes_them_all():
    model, in_flight = FakeModel(), InFlight(0)
    with held_back_batcher(in_flight, last_run_s=HELD_S) as batcher, ThreadPoolExecutor(3) as pool:
        in_flight.count = 3  # three requests being read: each joins when read
        answers = []
        for i in range(3):
            answers.append(pool.submit(batcher.submit, model, rows(i, 1)))
            time.sleep(0.05)
            assert i == 2 or not model.batches, f"a batch started with {i + 1} of the 3 requests in flight"
        for i, answer in enumerate(answers):
            assert_answers(rows(i, 1), answer.result(timeout=WAIT_S))
    assert model.sizes == [3]  # without the wait: [1, 2] or [1, 1, 1], the first starting at once


def test_on_one_cpu_a_batch_held_back_waits_at_most_as_long_as_the_last_batch_ran():
    model, in_flight = FakeModel(), InFlight(0)
    with held_back_batcher(in_flight, last_run_s=0.3) as batcher:
        in_flight.count = 2  # the other request never joins
        started = time.monotonic()
        assert_answers(rows(0, 1), batcher.submit(model, rows(0, 1)))
        waited = time.monotonic() - started
    assert model.sizes == [1]
    assert 0.25 <= waited < WAIT_S, f"held back {waited:.3f} s; expected about the last batch's 0.3 s"


def test_on_one_cpu_a_batch_held_back_says_when_it_starts_without_the_others():
    model, in_flight, expired = FakeModel(), InFlight(0), []
    with held_back_batcher(in_flight, last_run_s=0.2, hold_expired=lambda: expired.append(in_flight.count)) as batcher:
        expired.clear()  # the first batch's (its hold was 0 s)
        in_flight.count = 2  # the other request never joins: held 0.2 s, then it starts without it
        assert_answers(rows(0, 1), batcher.submit(model, rows(0, 1)))
        assert expired == [2]
        in_flight.count = 1  # a batch alone in flight starts at once; it runs HELD_S
        batcher.submit(lambda inputs: time.sleep(HELD_S) or FakeModel()(inputs), rows(0, 1))
        in_flight.count = 2  # both join within the hold: it starts with them, nothing expired
        with ThreadPoolExecutor(2) as pool:
            answers = [pool.submit(batcher.submit, model, rows(i, 1)) for i in range(2)]
            for i, answer in enumerate(answers):
                assert_answers(rows(i, 1), answer.result(timeout=WAIT_S))
    assert expired == [2] and model.sizes == [1, 2]


def test_on_one_cpu_a_request_leaving_lets_the_batch_held_back_for_it_start():
    model, in_flight = FakeModel(), InFlight(0)
    with held_back_batcher(in_flight, last_run_s=HELD_S) as batcher:
        in_flight.count = 2

        async def main():
            waiting = asyncio.ensure_future(batcher.submit_async(model, rows(0, 1)))
            await asyncio.sleep(0.05)
            assert not model.batches, "a batch started while a request in flight was outside the batcher"
            in_flight.count = 1  # the other one was answered without a batch, and says so
            batcher.wake_if_all_in()
            return await asyncio.wait_for(waiting, HELD_S / 2)  # not held back for as long as the last batch ran

        assert_answers(rows(0, 1), asyncio.run(main()))
    assert model.sizes == [1]


def test_without_in_flight_a_due_batch_starts_at_once_as_in_tf_serving():
    model = FakeModel()
    with Batcher(params(max_batch_size=8, num_batch_threads=1)) as batcher:
        batcher.submit(lambda inputs: time.sleep(0.3) or model(inputs), rows(0, 1))
        started = time.monotonic()
        batcher.submit(model, rows(1, 1))
        assert time.monotonic() - started < 0.25
    assert not batcher.holds_back and model.sizes == [1, 1]


def test_batches_a_real_tensorflow_function():
    tf = pytest.importorskip("tensorflow")

    @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32)])
    def model(x):
        return {"double": x * 2.0, "total": tf.reduce_sum(x, axis=1)}

    concrete = model.get_concrete_function()
    sizes = []

    def run(inputs):
        sizes.append(len(inputs["x"]))
        return {name: t.numpy() for name, t in concrete(x=tf.constant(inputs["x"])).items()}

    requests = [rows(i, 1) for i in range(8)]
    with Batcher(params(max_batch_size=8, batch_timeout_micros=LONG)) as batcher:
        results = submit_from_threads(batcher, run, requests)
    assert sizes == [8]
    for request, result in zip(requests, results):
        assert_answers(request, result)


def test_parameters_default_to_tf_serving_values():
    defaults = BatchingParameters()
    assert (defaults.max_batch_size, defaults.batch_timeout_micros,
            defaults.max_enqueued_batches) == (1000, 0, 10)
    assert defaults.num_batch_threads == len(os.sched_getaffinity(0))
    assert defaults.allowed_batch_sizes == () and defaults.pad_variable_length_inputs is False


def test_thread_defaults_count_the_cpus_the_server_may_run_on():
    """As TF Serving's port::NumSchedulableCPUs (sched_getaffinity): a server pinned to one core (taskset, a
    Kubernetes cpuset) runs one batch thread and 4 REST threads, not the machine's count."""
    everything = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(everything)})  # this thread only
    try:
        assert BatchingParameters().num_batch_threads == 1
        assert build_parser().get_default("rest_api_num_threads") == 4
    finally:
        os.sched_setaffinity(0, everything)


def test_parameters_from_a_tf_serving_batching_parameters_file():
    parsed = BatchingParameters.from_text("""
        max_batch_size { value: 32 }
        batch_timeout_micros { value: 5000 }
        num_batch_threads { value: 4 }
        thread_pool_name { value: "model_threads" }
        allowed_batch_sizes: 8
        allowed_batch_sizes: 16
        allowed_batch_sizes: 32
        pad_variable_length_inputs: true
    """)
    assert parsed == BatchingParameters(
        max_batch_size=32, batch_timeout_micros=5000, max_enqueued_batches=10,
        num_batch_threads=4, thread_pool_name="model_threads", allowed_batch_sizes=(8, 16, 32),
        pad_variable_length_inputs=True)
    message = protos.BatchingParameters()
    message.max_enqueued_batches.value = 0  # set to zero is not unset: TF Serving uses it
    with pytest.raises(ValueError, match="max_enqueued_batches must be an integer >= 1; "
                                         "received 0"):
        BatchingParameters.from_proto(message)


@pytest.mark.parametrize("text, message", [
    ("max_batch_size { value: 0 }", "max_batch_size must be an integer >= 1; received 0"),
    ("batch_timeout_micros { value: -1 }", "batch_timeout_micros must be an integer >= 0"),
    ("num_batch_threads { value: 0 }", "num_batch_threads must be an integer >= 1"),
    ("max_batch_size { value: 8 } allowed_batch_sizes: [4, 2, 8]",
     r"monotonically increasing; received \[4, 2, 8\]"),
    ("max_batch_size { value: 8 } allowed_batch_sizes: [2, 4]",
     "last entry was 4; expected 8"),
    ("enable_large_batch_splitting { value: true }", "not supported: received true"),
    ("max_batch_sise { value: 8 }", "not a valid tensorflow.serving.BatchingParameters text proto"),
])
def test_invalid_parameters_are_rejected_with_what_was_received(text, message):
    with pytest.raises(ValueError, match=message):
        BatchingParameters.from_text(text)
