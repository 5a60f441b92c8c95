"""Data, float training, quantization-aware training and int8 export in one command."""

from keras_models import backend as _backend  # noqa: F401  (must precede TensorFlow imports)
