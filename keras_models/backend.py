"""The one place that chooses the Keras implementation for the whole project.

tensorflow-model-optimization (QAT) only understands Keras 2 models, so the project uses `tf_keras` (Keras 2.x) and sets
TF_USE_LEGACY_KERAS=1 so that `tf.keras` inside TensorFlow and tfmot resolves to the same package. The variable is read
when TensorFlow is first imported, hence this module must be imported before anything imports tensorflow; every package
of the project imports it first (see the package `__init__` files).
"""

import os

if os.environ.get("TF_USE_LEGACY_KERAS", "1") not in ("1", "true", "True"):
    raise RuntimeError(
        "TF_USE_LEGACY_KERAS is set to something other than 1; this project needs Keras 2 (tf_keras) for QAT. "
        "Unset it or set TF_USE_LEGACY_KERAS=1."
    )
os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's C++ start-up chatter out of users' terminals

import tensorflow as tf  # noqa: E402
import tf_keras as keras  # noqa: E402

__all__ = ["tf", "keras"]
