"""Fully-integer TFLite export, verification, metadata, inspection, benchmarking and evaluation."""

from keras_models import backend as _backend  # noqa: F401  (must precede TensorFlow imports)
