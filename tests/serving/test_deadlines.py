"""Deadlines of one length sharing one timer: each block past its own deadline raises TimeoutError then, on both
event loops the server runs (uvloop, and asyncio's with TLS); the server's 504 is test_server.py's."""
from __future__ import annotations

import asyncio

import pytest
import uvloop

from serving.deadlines import Deadlines

LOOPS = {"asyncio": asyncio.run, "uvloop": uvloop.run}


@pytest.fixture(params=list(LOOPS))
def run(request):
    return LOOPS[request.param]


async def guarded(deadlines: Deadlines, work_s: float) -> str | float:
    """"done", or the seconds after which the block timed out."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        with deadlines.within():
            await asyncio.sleep(work_s)
    except TimeoutError:
        assert asyncio.current_task().cancelling() == 0  # the cancellation was the deadline's, taken back
        return loop.time() - started
    return "done"


def test_each_block_past_its_own_deadline_times_out_then(run):
    """Set 0.1 s apart: a block that ends in time leaves the timer to watch the next deadline, which fires at its
    own time, not the first one's."""
    async def main():
        deadlines = Deadlines(0.3)
        first = asyncio.create_task(guarded(deadlines, 0.05))
        await asyncio.sleep(0.1)
        second = asyncio.create_task(guarded(deadlines, 10))
        await asyncio.sleep(0.1)
        third = asyncio.create_task(guarded(deadlines, 0.1))
        fourth = asyncio.create_task(guarded(deadlines, 10))
        return await asyncio.gather(first, second, third, fourth), deadlines

    (first, second, third, fourth), deadlines = run(main())
    assert first == third == "done"
    assert 0.29 < second < 0.6 and 0.29 < fourth < 0.6  # at its own deadline (at the first's, second took 0.2 s)
    assert not deadlines._pending and deadlines._timer is None  # nothing held after the last


def test_a_cancellation_from_elsewhere_stays_a_cancellation(run):
    async def main():
        deadlines = Deadlines(0.2)
        task = asyncio.create_task(guarded(deadlines, 10))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(0.3)  # its deadline passes: nothing left to cancel

    run(main())


def test_blocks_that_end_in_time_are_not_kept():
    async def main():
        deadlines = Deadlines(30)
        for _ in range(1000):
            with deadlines.within():
                await asyncio.sleep(0)
        return len(deadlines._pending)

    assert uvloop.run(main()) == 1  # the last one, until the next request or the timer clears it
