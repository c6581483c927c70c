"""What the terminal shows while a run goes.

The runner tells a Reporter when a stage starts and ends; training tells it about each epoch through
`epoch()`, which reaches the reporter of the run in progress. `LiveReporter` draws a progress bar per
stage and per epoch with rich, on a terminal only (colours and animation off otherwise); `LineReporter`
prints one line per event (logs, notebooks, pipes); `SilentReporter` prints nothing (--quiet, --json).
"""
from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import TextIO


class Reporter:
    """Says nothing; the others say more."""

    def message(self, text: str) -> None: ...

    def stage_started(self, index: int, total: int, name: str) -> None: ...

    def stage_ended(self, index: int, total: int, name: str, status: str, detail: str) -> None: ...

    def epoch(self, done: int, total: int, logs: dict[str, float]) -> None: ...


SilentReporter = Reporter


class LineReporter(Reporter):
    def __init__(self, stream: TextIO | None = None):
        self.stream = stream

    def _print(self, text: str) -> None:
        print(text, file=self.stream or sys.stdout, flush=True)

    def message(self, text: str) -> None:
        self._print(text)

    def stage_started(self, index: int, total: int, name: str) -> None:
        self._print(f"[{index}/{total}] {name}: running")

    def stage_ended(self, index: int, total: int, name: str, status: str, detail: str) -> None:
        self._print(f"[{index}/{total}] {name}: {status} {detail}".rstrip())


class LiveReporter(Reporter):
    """rich progress bars: the run's stages, and the epochs of the stage that trains."""

    def __init__(self):
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.console = Console(file=sys.stdout)  # fixed now: stage output is redirected through it later
        self.bars = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                             TextColumn("{task.fields[note]}"), console=self.console, redirect_stdout=True)
        self.stages = None
        self.epochs = None

    def __enter__(self) -> LiveReporter:
        self.bars.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.bars.stop()

    def message(self, text: str) -> None:
        self.console.print(text, markup=False, highlight=False)

    def stage_started(self, index: int, total: int, name: str) -> None:
        if self.stages is None:
            self.stages = self.bars.add_task("stages", total=total, completed=index - 1, note="")
        self.bars.update(self.stages, description=f"[bold]{name}[/bold]", note="running")

    def stage_ended(self, index: int, total: int, name: str, status: str, detail: str) -> None:
        colour = {"ran": "green", "cached": "cyan", "resumed": "cyan"}.get(status, "red")
        self.console.print(f"[{colour}]✓[/{colour}] [{index}/{total}] {name}: {status} {detail}".rstrip(),
                           highlight=False)
        self.bars.update(self.stages, completed=index, note="")
        if self.epochs is not None:
            self.bars.remove_task(self.epochs)
            self.epochs = None

    def epoch(self, done: int, total: int, logs: dict[str, float]) -> None:
        if self.epochs is None:
            self.epochs = self.bars.add_task("  epochs", total=total, note="")
        shown = " ".join(f"{k}={v:.4g}" for k, v in logs.items() if k in ("loss", "val_loss", "val_accuracy", "val_mae"))
        self.bars.update(self.epochs, completed=done, note=shown)


_current: Reporter = Reporter()


@contextlib.contextmanager
def reporting(reporter: Reporter) -> Iterator[Reporter]:
    """Make `reporter` the one `epoch()` reaches, for the duration of a run."""
    global _current
    previous, _current = _current, reporter
    try:
        yield reporter
    finally:
        _current = previous


def epoch(done: int, total: int, logs: dict[str, float]) -> None:
    """An epoch of the stage that is training has finished (called by pipeline.training.trainer)."""
    _current.epoch(done, total, logs)
