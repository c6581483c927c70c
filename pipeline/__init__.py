"""The staged, cached training pipeline: `python -m pipeline.run`, or from Python:

    import pipeline
    result = pipeline.run("digits", overrides={"train.epochs": 5})
    pipeline.load_run(result.run_id)
"""
import os

# TFMOT only works with Keras 2: tf.keras must resolve to tf_keras, and that is decided when
# TensorFlow is first imported. Every entry point imports this package first.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import serving.quiet_tensorflow  # noqa: E402,F401 -- TensorFlow without the lines it prints on a machine without a GPU
from pipeline.api import RunResult, load_run, plan, resume, run  # noqa: E402
from pipeline.errors import ConfigError, PipelineError, StageFailed  # noqa: E402

__all__ = ["ConfigError", "PipelineError", "RunResult", "StageFailed", "load_run", "plan", "resume", "run"]
