"""The staged, cached training pipeline: `python -m pipeline.run`."""
import os

# TFMOT only works with Keras 2: tf.keras must resolve to tf_keras, and that is decided when
# TensorFlow is first imported. Every entry point imports this package first.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
