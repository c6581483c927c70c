"""The pipeline's exceptions: one root, each class knowing the exit code the CLI answers with.

    PipelineError             exit 1
    ├── ConfigError           exit 2  every problem in a config, one per line
    ├── CommandLineError      exit 2  a bad flag value (an unknown stage, an unknown run id)
    ├── StageError            exit 1  raised inside a stage: bad data, a gate not met (no traceback)
    └── StageFailed           exit 1  the runner's report of any failed stage: which, why, where its log is
    Interrupted               exit 128 + signal: SIGTERM or SIGINT stopped the run (a BaseException)
"""
from __future__ import annotations

import signal
from pathlib import Path


class PipelineError(Exception):
    exit_code = 1


class ConfigError(PipelineError):
    """All problems found in one config, formatted one per line."""

    exit_code = 2

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = problems
        noun = "problem" if len(problems) == 1 else "problems"
        lines = [f"Config error in {source} ({len(problems)} {noun}):"]
        lines += [f"  {p}" for p in problems]
        super().__init__("\n".join(lines))


class CommandLineError(PipelineError):
    exit_code = 2

    def __str__(self) -> str:
        return f"Command line error: {self.args[0]}"


class StageError(PipelineError):
    """A stage failed for a reason the user can act on; the message says what and how."""


class StageFailed(PipelineError):
    """A stage raised (or its config could not be resolved); carries where its partial output and log were kept."""

    def __init__(self, stage: str, reason: str, kept: Path | None, expected: bool):
        self.stage, self.reason, self.kept, self.expected = stage, reason, kept, expected
        where = f"\nPartial output and log: {kept}" if kept else ""
        super().__init__(f"Stage '{stage}' failed: {reason}{where}")


class Interrupted(BaseException):
    """SIGTERM or SIGINT arrived. A BaseException, like KeyboardInterrupt, so that no `except Exception`
    in a stage swallows it: the runner marks the stage interrupted and removes its staging dir."""

    def __init__(self, signum: int):
        self.signum = signum
        self.exit_code = 128 + signum
        self.run_id: str | None = None  # set by the runner
        super().__init__(f"interrupted by {signal.Signals(signum).name}")
