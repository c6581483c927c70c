"""Requests' deadlines on an event loop, all of one length (--rest_api_timeout_in_ms): one timer for them all.

asyncio.timeout arms a timer of its own for each request and cancels it afterwards: ~5 us a request on uvloop, where
all of this server's bookkeeping for a request is a few times that. Deadlines of one length expire in the order they
were set, so a queue of them and one timer watching its first do the same work: a request past its deadline has its
task cancelled, and its `Deadline` turns that cancellation into TimeoutError as asyncio.timeout does (a cancellation
from elsewhere stays a cancellation).
"""
from __future__ import annotations

import asyncio
from collections import deque


class Deadlines:
    """The deadlines of the requests on one event loop, each `seconds` after it was set."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self._pending: deque[Deadline] = deque()  # in the order set, so in the order they expire
        self._timer: asyncio.TimerHandle | None = None

    def within(self) -> Deadline:
        """A context manager for the current task: the block it guards raises TimeoutError once `seconds` passed."""
        task = asyncio.current_task()
        loop = task.get_loop()
        deadline = Deadline(task, loop.time() + self.seconds)
        pending = self._pending
        while pending and pending[0].task is None:  # ended in time
            pending.popleft()
        pending.append(deadline)
        if self._timer is None:
            self._timer = loop.call_at(deadline.at, self._expire, loop)
        return deadline

    def _expire(self, loop: asyncio.AbstractEventLoop) -> None:
        """The first deadline's time came: every deadline passed by now expires; the timer watches the next one."""
        self._timer = None
        now = loop.time()
        pending = self._pending
        while pending and (pending[0].task is None or pending[0].at <= now):
            pending.popleft().expire()
        if pending:
            self._timer = loop.call_at(pending[0].at, self._expire, loop)


class Deadline:
    """One task's deadline (Deadlines.within): entered at once, ended when its block exits."""

    __slots__ = ("task", "at", "cancelling", "expired")

    def __init__(self, task: asyncio.Task, at: float):
        self.task: asyncio.Task | None = task  # None once the block exited
        self.at = at  # in the loop's time
        self.cancelling = task.cancelling()  # the cancellations asked before: those are not ours to turn
        self.expired = False

    def expire(self) -> None:
        if self.task is not None:
            self.expired = True
            self.task.cancel()

    def __enter__(self) -> Deadline:
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        task, self.task = self.task, None
        if self.expired and task.uncancel() <= self.cancelling and exc_type is asyncio.CancelledError:
            raise TimeoutError from exc
