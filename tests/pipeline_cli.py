"""Run the real pipeline CLI (`python -m pipeline.run`) in a subprocess, as a user would."""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TUNE = ("tune.algorithm=random", "tune.max_trials=2", "tune.epochs=1")
# The shared digits run (tests/conftest.py): every stage at work, tuning and compression (fast settings; the gate
# is loose because fine-tuning is only two epochs) included.
DIGITS_RUN = (*TUNE, "train.epochs=6", "compress.variants=[pruned, qat]", "compress.fine_tune_epochs=2",
              "compress.tflite=[int8]", "compress.max_accuracy_drop=0.05")


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


def newest_run(runs: Path) -> Path:
    """The run started last under `runs`, whatever became of it (`runs/latest` is the newest that succeeded)."""
    return max((p for p in runs.iterdir() if (p / "config.json").is_file() and not p.is_symlink()),
               key=lambda p: (p / "config.json").stat().st_mtime_ns)


def assert_training_artefacts(train_dir: Path, epochs: int) -> None:
    """What the train stage leaves, by either loop (fit or custom): the model, the history with fit's keys,
    the epoch log, per-epoch weights and TensorBoard's train and validation logs."""
    import json

    made = {p.relative_to(train_dir).as_posix() for p in train_dir.rglob("*") if p.is_file()}
    assert {"model/model.keras", "history.json", "epochs.jsonl", f"checkpoints/epoch-{epochs:03d}.weights.h5"} <= made
    assert {p.name for p in (train_dir / "logs").iterdir()} == {"train", "validation"}
    assert set(json.loads((train_dir / "history.json").read_text())) == {"loss", "accuracy", "val_loss", "val_accuracy"}
