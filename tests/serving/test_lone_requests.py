"""A request alone in the server skips the batch queue: its call runs on the event loop when quick (sparing two
thread hand-offs), else on the pool of unbatched calls; every other call runs on a thread as before. Shown through
the real request path (ServingCore, a real Servable of TF Serving's half_plus_two), with a runner that notes the
thread each call ran on.
"""
from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pytest
from metric_lines import series_value

from serving import servable as servable_module
from serving.batching import BatchingParameters
from serving.core import LARGE_REQUEST_BYTES, ServingCore, run_blocking
from serving.manager import ModelManager
from serving.metrics import LATER_MAX, Metrics
from serving.model_config import single_model_config
from serving.servable import Servable, SignatureRunner

ROWS = {"x": np.array([[1.0], [2.0]], np.float32)}


@dataclass(eq=False)
class NotingRunner(SignatureRunner):
    ran_on: list[threading.Thread] = field(default_factory=list, init=False)

    def __call__(self, inputs):
        self.ran_on.append(threading.current_thread())
        return super().__call__(inputs)


def serving_core(base, batching: BatchingParameters | None) -> tuple[ServingCore, Metrics]:
    """A ServingCore serving half_plus_two from `base` (one thread for unbatched calls), and its metrics."""
    metrics = Metrics()
    core = ServingCore(ModelManager(single_model_config("half_plus_two", str(base)), metrics), metrics, batching,
                       num_threads=1)
    return core, metrics


def servable_calling(base, runner_type: type[SignatureRunner]) -> tuple[Servable, SignatureRunner]:
    """half_plus_two's version 123, whose every call goes through one runner of `runner_type`."""
    servable = Servable("half_plus_two", 123, base / "123")
    runner = runner_type(servable, ("serving_default",))
    servable.runner = lambda *signatures: runner
    return servable, runner


def where_calls_ran(half_plus_two_base, batching, steps, monkeypatch) -> list[str]:
    """Sends ROWS once per step ("alone", "with another" request in flight, or "others ready": alone in flight while
    bytes arrived on the loop after its own, as requests read in the same pass wait on the loop; "slow" sends nothing:
    every call is slow from then on, while before it every call is quick, whatever this host's speed); where each call
    ran: "loop", "model" (the thread pool of calls without batching) or "batch_threads"."""
    monkeypatch.setattr(servable_module, "QUICK_CALL_S", 60.0)
    servable, runner = servable_calling(half_plus_two_base, NotingRunner)
    core, _ = serving_core(half_plus_two_base, batching)

    async def main() -> threading.Thread:
        for step in steps:
            if step == "slow":
                monkeypatch.setattr(servable_module, "QUICK_CALL_S", 0.0)
                continue
            with contextlib.ExitStack() as admitted:
                arrival = core.arrived()  # the request's bytes
                if step == "others ready":
                    core.arrived()  # another's, after them
                for _ in range(2 if step == "with another" else 1):
                    admitted.enter_context(core.admitted(arrival=arrival))
                outputs = await core.predict(servable, "serving_default", ROWS)
            assert outputs["y"].tolist() == [[2.5], [3.0]]
            await asyncio.sleep(0)  # the next request arrives in a later pass, after this one's batch was counted
        return threading.current_thread()

    try:
        loop_thread = asyncio.run(main())
    finally:
        core.close()
    return ["loop" if thread is loop_thread else thread.name.rsplit("_", 1)[0] for thread in runner.ran_on]


@pytest.mark.parametrize("batching", [None, BatchingParameters(num_batch_threads=1)], ids=["unbatched", "batched"])
def test_a_lone_quick_request_runs_on_the_event_loop_and_others_on_threads(half_plus_two_base, batching, monkeypatch):
    steps = ["alone", "alone", "with another", "alone", "others ready", "alone", "slow", "alone", "alone"]
    # not known to be quick yet: on the pool, not the batch queue; quick and alone: on the loop; with another in flight,
    # or alone in flight with others read and waiting: batched (or on the pool); alone again; from now on each call is
    # slow: the first still runs on the loop (its size was quick) and shows it, so the next goes to the pool
    shared = "model" if batching is None else "batch_threads"
    assert where_calls_ran(half_plus_two_base, batching, steps, monkeypatch) == [
        "model", "loop", shared, "loop", shared, "loop", "loop", "model"]


def test_a_batcher_that_waits_for_others_to_join_is_never_bypassed(half_plus_two_base, monkeypatch):
    waiting = BatchingParameters(num_batch_threads=1, batch_timeout_micros=1000)
    assert where_calls_ran(half_plus_two_base, waiting, ["alone"] * 3, monkeypatch) == ["batch_threads"] * 3


@dataclass(eq=False)
class SlowOnceRunner(SignatureRunner):
    """Its next call takes `slow_s` more, once. Notes each call's rows and the name of the thread it ran on."""

    slow_s: float = field(default=0.0, init=False)
    calls: list[tuple[int, str]] = field(default_factory=list, init=False)

    def __call__(self, inputs):
        time.sleep(self.slow_s)
        self.slow_s = 0.0
        self.calls.append((len(inputs["x"]), threading.current_thread().name))
        return super().__call__(inputs)


def cores_on_one_and_two_cpus(base) -> tuple[ServingCore, ServingCore]:
    """Two ServingCores of half_plus_two batching on one thread: one made on one CPU (the server's CPUs as
    sched_getaffinity counts them as it is made), one on two."""
    cpus = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(cpus)})  # this thread's
    try:
        one_cpu, _ = serving_core(base, BatchingParameters(num_batch_threads=1))
    finally:
        os.sched_setaffinity(0, cpus)
    return one_cpu, serving_core(base, BatchingParameters(num_batch_threads=1))[0]


def test_on_one_cpu_a_due_batch_waits_for_the_others_in_flight_until_they_leave(half_plus_two_base):
    """On one CPU (the server's CPUs as sched_getaffinity counts them) a batch due at once (batch_timeout_micros 0)
    waits while another request is in flight outside the batcher, at most as long as the last batch ran; a request
    leaving on the event loop lets it start. Not for one whose body is still arriving (the network's time: a client
    trickling its body would hold every batch back). On two CPUs it starts at once, as TF Serving's would."""
    servable, runner = servable_calling(half_plus_two_base, SlowOnceRunner)
    one_cpu, two_cpus = cores_on_one_and_two_cpus(half_plus_two_base)

    async def held_back(core: ServingCore, body_arriving: bool = False) -> bool:
        """Whether a batch waited for another request in flight (and started once that one left)."""
        runner.slow_s = 1.0
        with core.admitted(), core.admitted():  # batched (not alone): the last batch ran 1 s
            await core.predict(servable, "serving_default", ROWS)
        with core.admitted():  # the call's
            with core.admitted():  # another request's, being read
                core.bodies_arriving += body_arriving  # as REST's front end counts it
                call = asyncio.ensure_future(core.predict(servable, "serving_default", ROWS))
                await asyncio.sleep(0.2)
                waited = not call.done()
                core.bodies_arriving -= body_arriving
            # the other left (answered without a batch): the call's batch starts, not 1 s after it was due
            assert (await asyncio.wait_for(call, 0.5))["y"].tolist() == [[2.5], [3.0]]
        return waited

    try:
        assert asyncio.run(held_back(one_cpu)) is True
        assert asyncio.run(held_back(one_cpu, body_arriving=True)) is False
        assert asyncio.run(held_back(two_cpus)) is False
    finally:
        one_cpu.close()
        two_cpus.close()


def test_on_one_cpu_a_call_answered_on_its_thread_is_expected_back(half_plus_two_base):
    """gRPC runs each call on a thread of its own and gives the server a call only once it came. On one CPU a call
    answered counts as expected back: the next call is not alone, and its batch waits for the one expected (at most
    as long as the last batch ran) until a call comes in its stead; once a hold runs out, none is expected any more.
    On two CPUs nothing is expected: a call alone in flight runs alone, on its own thread."""
    servable, runner = servable_calling(half_plus_two_base, SlowOnceRunner)
    one_cpu, two_cpus = cores_on_one_and_two_cpus(half_plus_two_base)

    def call(core: ServingCore) -> list[list[float]]:
        with core.admitted():  # on a thread without an event loop, as a gRPC call is
            return run_blocking(core.predict(servable, "serving_default", ROWS))["y"].tolist()

    def calls_after_two_answered(core: ServingCore) -> tuple[bool, list[tuple[int, str]]]:
        """Two calls answered together (their batch ran 1 s), then two more, 0.2 s apart, then one after a hold ran
        out: whether the first of the two more waited, and the calls the model ran since the first two."""
        runner.slow_s = 1.0
        with core.admitted(), core.admitted():  # batched (not alone), as two calls in flight are
            run_blocking(core.predict(servable, "serving_default", ROWS))
        runner.calls.clear()
        with ThreadPoolExecutor(2, thread_name_prefix="call") as pool:
            first = pool.submit(call, core)
            time.sleep(0.2)
            waited = not first.done()
            second = pool.submit(call, core)
            assert first.result(timeout=0.5) == second.result(timeout=0.5) == [[2.5], [3.0]]
        # both expected came; these two are: the next call waits for them as long as the last batch ran, in vain
        assert call(core) == [[2.5], [3.0]] and call(core) == [[2.5], [3.0]]  # the second, alone
        return waited, runner.calls

    try:
        waited, calls = calls_after_two_answered(one_cpu)
        assert waited and calls[0][0] == 4 and calls[0][1].startswith("batch_threads"), calls
        here = threading.current_thread().name
        assert calls[1][1].startswith("batch_threads") and calls[2][1] == here, calls
        waited, calls = calls_after_two_answered(two_cpus)
        ran_on = ["a call's thread" if name.startswith("call_") else name for _, name in calls]
        assert not waited and ran_on == ["a call's thread"] * 2 + [here] * 2, calls
    finally:
        one_cpu.close()
        two_cpus.close()


class FailingRunner(SignatureRunner):
    def __call__(self, inputs):
        if len(inputs["x"]) == 3:
            raise RuntimeError("the model failed")
        return super().__call__(inputs)


def counted(metrics: Metrics) -> tuple[float, float]:
    """The batching metrics' counts of batches run and of requests that entered the batcher."""
    text = metrics.render().decode()
    return (series_value(text, ":tensorflow:serving:batching_session:wrapped_run_count{}"),
            series_value(text, ":tensorflow:serving:batching_session:input_batch_size_count{}"))


def applied(metrics: Metrics) -> tuple[float, float]:
    """The same counts as applied so far, read without applying what waits for later (as rendering does)."""
    text = "\n".join(metrics.wrapped_run_count.lines() + metrics.input_batch_size.lines())
    return (series_value(text, ":tensorflow:serving:batching_session:wrapped_run_count{}"),
            series_value(text, ":tensorflow:serving:batching_session:input_batch_size_count{}"))


def test_a_lone_requests_batch_is_counted_later_but_before_the_metrics_are_read(half_plus_two_base):
    """Its batch is counted as every batch is, but not while its request waits: the count is left for later
    (Metrics.later) and applied before the metrics are rendered, or once LATER_MAX counts wait; a failed batch
    is counted at once, before its error."""
    servable, _ = servable_calling(half_plus_two_base, FailingRunner)
    core, metrics = serving_core(half_plus_two_base, BatchingParameters(num_batch_threads=1))

    async def ask(inputs, times: int = 1) -> None:
        for _ in range(times):
            with core.admitted(), contextlib.suppress(RuntimeError):
                await core.predict(servable, "serving_default", inputs)

    try:
        asyncio.run(ask(ROWS))
        assert applied(metrics) == (0, 0)
        assert counted(metrics) == (1, 1) == applied(metrics)
        asyncio.run(ask({"x": np.ones((3, 1), np.float32)}))  # fails in the model call
        assert applied(metrics) == (2, 2)
        asyncio.run(ask(ROWS, times=LATER_MAX - 1))
        assert applied(metrics) == (2, 2)
        asyncio.run(ask(ROWS))
        assert applied(metrics) == (2 + LATER_MAX, 2 + LATER_MAX) == counted(metrics)
    finally:
        core.close()


def test_on_a_thread_without_an_event_loop_calls_block_that_thread_and_still_share_batches(half_plus_two_base):
    """gRPC's front end completes the request coroutines on its pool's threads (run_blocking): a lone request runs
    on its own thread, concurrent ones from several threads wait in the batch queue and run as one batch, and a
    coroutine that would wait for an event loop is refused with a message rather than left half run."""
    servable, runner = servable_calling(half_plus_two_base, NotingRunner)

    def on_threads(batching: BatchingParameters, count: int) -> tuple[list, tuple[float, float]]:
        """`count` requests from as many threads, in flight together; their answers and the batching counts."""
        core, metrics = serving_core(half_plus_two_base, batching)
        together, answers = threading.Barrier(count), []

        def call() -> None:
            with core.admitted():
                together.wait(timeout=30)
                answers.append(run_blocking(core.predict(servable, "serving_default", ROWS))["y"].tolist())

        threads = [threading.Thread(target=call, name=f"grpc_{i}") for i in range(count)]
        try:
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=60)
        finally:
            core.close()
        return answers, counted(metrics)

    assert on_threads(BatchingParameters(num_batch_threads=1), 1) == ([[[2.5], [3.0]]], (1, 1))
    # 4 x 2 rows fill the batch of 8: it runs at once, not after its minute's timeout
    full = BatchingParameters(num_batch_threads=1, max_batch_size=8, batch_timeout_micros=60_000_000)
    assert on_threads(full, 4) == ([[[2.5], [3.0]]] * 4, (1, 4))
    assert [thread.name.rsplit("_", 1)[0] for thread in runner.ran_on] == ["grpc", "batch_threads"]

    async def suspends():
        await asyncio.sleep(0)

    with pytest.raises(RuntimeError, match="suspends waited for the event loop on a thread that has none"):
        run_blocking(suspends())


def test_one_large_request_is_decoded_at_a_time_whichever_front_end_it_came_by(half_plus_two_base):
    """A large request's work leaves the event loop (REST: the one thread for it; gRPC: its own thread), and two of
    them, one from each front end, never run at once: what large requests hold in memory is bounded by one."""
    core, _ = serving_core(half_plus_two_base, None)
    spans, threads = [], []

    def work(name: str) -> str:
        started = time.monotonic()
        time.sleep(0.2)
        spans.append((started, time.monotonic()))
        threads.append(threading.current_thread().name)
        return name

    async def decode(name: str) -> str:
        async with core.decoding(LARGE_REQUEST_BYTES) as run:
            return await run(work, name)

    grpc_thread = threading.Thread(target=lambda: threads.append(run_blocking(decode("grpc"))), name="grpc_0")

    async def main() -> str:
        grpc_thread.start()
        return await decode("rest")

    try:
        assert asyncio.run(main()) == "rest"
        grpc_thread.join(timeout=10)
    finally:
        core.close()
    (first_start, first_end), (second_start, _) = sorted(spans)
    assert second_start >= first_end  # one after the other
    assert sorted(threads) == ["grpc", "grpc_0", "large-request_0"]  # the work's threads, and the gRPC call's answer
