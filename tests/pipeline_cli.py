"""Run the real pipeline CLI (`python -m pipeline.run`) in a subprocess, as a user would."""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def pipeline_command(*args: str, code: str | None = None) -> list[str]:
    """`python -m pipeline.run ARGS`, or `python -c CODE ARGS` for a wrapped entry point."""
    return [sys.executable, "-c", code, *args] if code else [sys.executable, "-m", "pipeline.run", *args]


def pipeline_env() -> dict[str, str]:
    """This environment, with the project importable; a caller's TF_CONFIG is not passed on."""
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    return {**env, "PYTHONPATH": str(ROOT), "TF_USE_LEGACY_KERAS": "1"}


def run_pipeline(workdir: Path, *args: str, code: str | None = None, timeout_s: int = 600) -> subprocess.CompletedProcess:
    """Run the CLI in `workdir`, where runs/ and model_repository/ land, and wait for it."""
    return subprocess.run(pipeline_command(*args, code=code), cwd=workdir, env=pipeline_env(),
                          capture_output=True, text=True, timeout=timeout_s)
