"""Keras functional builders for MobileNetV1, V2 and V3."""

from keras_models import backend as _backend  # noqa: F401  (must precede TensorFlow imports)
