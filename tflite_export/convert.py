"""Keras model -> fully-integer TFLite flatbuffer.

Two paths, one function:

* QAT model (has tfmot fake-quant nodes): the ranges learned in training are used as they are.
* Float model: post-training full-integer quantization calibrated on a representative dataset.

Both produce int8 weights and activations, int32 biases and uint8 or int8 input/output. A representative dataset is
required on both paths: TF 2.21's converter refuses `TFLITE_BUILTINS_INT8` for a QAT model without one ("a
representative_dataset must be specified"), and giving one (rather than relaxing `supported_ops`, the other way out)
keeps the guarantee that any tensor without a fake-quant range is still calibrated to int8 instead of left in float.

h-swish: our builders write it as `(relu6(x + 3) * x) * (1/6)`, which the converter does not fuse, so the file keeps
ADD (with RELU6 fused as its activation) and MUL ops that XNNPACK and the Edge TPU run in int8. `hswish="builtin"`
swaps the multiply's operands back to the `(x * relu6(x + 3)) / 6` form that the converter fuses into HARD_SWISH, for
runtimes that have a fast int8 HARD_SWISH kernel.
"""

from __future__ import annotations

from typing import Callable, Iterable

import numpy as np

from keras_models.backend import keras, native_logs_captured, tf
from keras_models.blocks import HARD_SWISH_MUL_SUFFIX
from tflite_export.cli import elapsed, first_line
from tflite_export.quantization import is_qat_model, quantize_scope, widen_empty_kernel_ranges

IO_DTYPES = {"uint8": tf.uint8, "int8": tf.int8}
HSWISH_MODES = ("lowered", "builtin")

RepresentativeData = Callable[[], Iterable[np.ndarray]]


class ConversionError(ValueError):
    """The model cannot be converted as asked; the message says why."""


class _OperandSwappedMultiply(keras.layers.Multiply):
    """Multiply that computes inputs[1] * inputs[0]: the operand order the converter fuses into HARD_SWISH."""

    def _merge_function(self, inputs):
        return super()._merge_function(inputs[::-1])


def _with_fusable_hard_swish(model: keras.Model) -> keras.Model:
    """A copy of `model` whose h-swish multiplies use the operand order that TFLite fuses into HARD_SWISH."""
    def clone(layer):
        if isinstance(layer, keras.layers.Multiply) and layer.name.endswith(HARD_SWISH_MUL_SUFFIX):
            return _OperandSwappedMultiply(name=layer.name)
        return layer.__class__.from_config(layer.get_config())

    swapped = keras.models.clone_model(model, clone_function=clone)
    swapped.set_weights(model.get_weights())
    return swapped


def convert(
    model: keras.Model,
    representative_data: RepresentativeData,
    *,
    io_dtype: str = "uint8",
    hswish: str = "lowered",
) -> bytes:
    """Convert `model` (float or QAT) to a fully-integer TFLite model with batch size 1.

    `representative_data()` yields float32 [1, H, W, 3] batches of preprocessed training images (a few hundred suffice).
    """
    if io_dtype not in IO_DTYPES:
        raise ConversionError(f"io dtype must be one of {sorted(IO_DTYPES)}, got {io_dtype!r}")
    if hswish not in HSWISH_MODES:
        raise ConversionError(f"hswish must be one of {HSWISH_MODES}, got {hswish!r}")
    qat = is_qat_model(model)
    if hswish == "builtin":
        if qat:
            raise ConversionError("--hswish builtin is supported on the post-training path only: export the float "
                                  "model (float_model.h5), or train with --noqat")
        model = _with_fusable_hard_swish(model)
    if qat:
        widen_empty_kernel_ranges(model)

    if not isinstance(model.input_shape, tuple) or len(model.input_shape) != 4:
        raise ConversionError(f"the model's input is {model.input_shape}: this converter exports image models with one "
                              "[batch, height, width, channels] input")
    height, width, channels = model.input_shape[1:]
    if height is None or width is None:
        raise ConversionError("the model needs a fixed input size to be exported (build it with input_shape=(H, W, 3))")
    # A fixed batch of 1 gives static shapes, so the classifier head converts to a plain RESHAPE instead of
    # SHAPE/STRIDED_SLICE/PACK ops computing the batch size at run time.
    signature = tf.TensorSpec([1, height, width, channels], tf.float32, name="image")
    with quantize_scope():
        concrete = tf.function(lambda image: model(image, training=False)).get_concrete_function(signature)
        # The converter saves its trackable object as a SavedModel first. Given the Keras model, that save walks
        # every layer and traces each one's call functions (9,000 traces for a V3-Small QAT model, most of the
        # conversion time); the function only needs its variables, so it gets a bare module holding them.
        variables = tf.Module()
        variables.weights = list(model.variables)
        converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete], variables)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    calibration_images = 0
    data_error = None

    def representative():
        nonlocal calibration_images, data_error
        try:
            for batch in representative_data():
                calibration_images += 1
                yield [np.asarray(batch, np.float32)]
        except (ValueError, OSError) as err:  # a calibration image that cannot be read: the input's fault, not ours
            data_error = err
            raise

    converter.representative_dataset = representative
    converter.inference_input_type = IO_DTYPES[io_dtype]
    converter.inference_output_type = IO_DTYPES[io_dtype]
    try:
        # The converter logs its settings natively on every call (shown with the pipeline's -v 1, or on failure).
        with elapsed("converting to int8 TFLite"), native_logs_captured():
            content = converter.convert()
    except Exception as err:  # the converter raises many types; one line is what users need
        if data_error is not None:
            raise data_error from None
        raise ConversionError(f"TFLite conversion failed: {first_line(err)}") from err
    # With no calibration image the converter does not fail: it leaves float tensors that only verification notices.
    if not calibration_images:
        raise ConversionError("no calibration images: int8 calibration needs at least one representative image")
    return content
