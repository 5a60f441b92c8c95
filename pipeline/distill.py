"""Quantization-aware fine-tuning against the float model's predictions (self-distillation).

QAT has two jobs at once: learn weights that survive 8-bit rounding, and keep solving the task. With the dataset's
labels as targets, nothing asks the fake-quantized model to stay the classifier it started from; with the float
model's softmax as the target, the loss the fine-tuning minimizes is the distance between the quantized model and
the float one. Measured on CIFAR-10 (BENCHMARKS.md): int8/float agreement rises (95.6% against 95.0%), top-1 does not
(79.63% against 79.90%), one run each. Hence an option (--qat_distill), off by default, for when "behaves like the
float model" matters more than top-1.

`Distiller` changes only the targets of `train_step`: compiling, metrics, callbacks, checkpoints and validation are
Keras' own. Training-time "accuracy" is therefore agreement with the float model's top-1 on augmented training
images; validation still scores the student against the true labels."""

from __future__ import annotations

import functools

from keras_models.backend import keras
from tflite_export.export import run_tflite
from tflite_export.verify import analyze


class Distiller(keras.Model):
    """Trains `student` on `teacher`'s predictions for the same (augmented) images; predicts with `student`."""

    def __init__(self, student: keras.Model, teacher: keras.Model):
        super().__init__(name=f"{student.name}_distilled")
        self.student = student
        # A plain function, not a tracked layer: the teacher's weights are neither trained (they stay out of
        # `trainable_variables`) nor written into the student's checkpoints.
        self._teacher_predictions = functools.partial(teacher.__call__, training=False)
        # Build now, so that a finished stage's weight file loads into a fresh Distiller on a rerun.
        self(keras.Input(student.input_shape[1:]))

    def get_config(self):
        # Keras asks when it writes checkpoints; a Distiller is rebuilt by code and only its weights are saved.
        return {"name": self.name}

    def call(self, inputs, training=None):
        return self.student(inputs, training=training)

    def train_step(self, data):
        images = data[0]
        # Inference mode (no dropout, BatchNorm on its moving statistics): the float model as it is exported.
        targets = self._teacher_predictions(images)
        return super().train_step((images, targets))


def tflite_soft_targets(path: str, pixels, classes: int):
    """The class probabilities a uint8-input .tflite classifier gives each image of `pixels` (float [N, S, S, 3] in
    [0, 255], fed as its pixel bytes, as apps feed it); a 1001-output file's background is dropped when `classes` is
    1000 and the rest renormalized. For distilling a file into a Keras model of the same classes."""
    import numpy as np

    (inp,) = analyze(path, xnnpack=False).inputs
    if tuple(inp.shape[1:]) != tuple(pixels.shape[1:]):
        raise ValueError(f"{path} takes {tuple(inp.shape[1:3])} images; distill at that size (--image_size)")
    try:
        probabilities = run_tflite(path, np.clip(np.round(pixels), 0, 255), pixel_bytes=True)
    except ValueError as err:
        raise ValueError(f"{path}: distillation needs a uint8-input teacher ({err})") from None
    if probabilities.shape[-1] == classes + 1:
        probabilities = probabilities[:, 1:]
    return probabilities / np.maximum(probabilities.sum(axis=-1, keepdims=True), 1e-6)
