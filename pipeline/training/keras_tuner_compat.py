"""keras_tuner, made to accept tf_keras models.

keras-tuner checks models against whatever `keras` resolves to when it is first imported; this
project's models are tf_keras (TFMOT needs Keras 2), so `keras` must resolve to tf_keras then.
Import keras_tuner from here only, so the alias is set in exactly one place.
"""
import os
import sys

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import tf_keras  # noqa: E402

sys.modules["keras"] = tf_keras

import keras_tuner  # noqa: E402

__all__ = ["keras_tuner"]
