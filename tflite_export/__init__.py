"""Fully-integer TFLite export, verification, metadata, inspection, benchmarking and evaluation.

A library under the pipeline: it imports `keras_models` and never `pipeline` (tests/test_architecture.py checks it).
What training and export share lives here: the preprocessing contract (`preprocessing`), the quantization scheme
(`quantization`), files and atomic writes (`files`), the model card (`model_card`), console helpers (`cli`).
"""

from keras_models import backend as _backend  # noqa: F401  (must precede TensorFlow imports)
