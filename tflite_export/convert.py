"""Keras model -> fully-integer TFLite flatbuffer.

Two paths, one function:

* QAT model (has tfmot fake-quant nodes): the ranges learned in training are used as they are.
* Float model: post-training full-integer quantization calibrated on a representative dataset.

Both produce int8 weights and activations, int32 biases and uint8 or int8 input/output. A representative dataset is
required on both paths: TF 2.21's converter refuses `TFLITE_BUILTINS_INT8` for a QAT model without one ("a
representative_dataset must be specified"), and giving one (rather than relaxing `supported_ops`, the other way out)
keeps the guarantee that any tensor without a fake-quant range is still calibrated to int8 instead of left in float.

Input ranges: the converter calibrates every tensor on the representative images, the input too. This project's
models take raw pixels, so the ranges of the input and of the fixed rescaling after it are widened to what 0..255
gives there before the quantizer runs (`pin_input_ranges`): dim or few calibration images neither shrink the input
scale below 1 nor leave QAT's input quantizer in float.

h-swish: our builders write it as `(relu6(x + 3) * x) * (1/6)`, which the converter does not fuse, so the file keeps
ADD (with RELU6 fused as its activation) and MUL ops that XNNPACK and the Edge TPU run in int8. `hswish="builtin"`
swaps the multiply's operands back to the `(x * relu6(x + 3)) / 6` form that the converter fuses into HARD_SWISH, for
runtimes that have a fast int8 HARD_SWISH kernel.
"""

from __future__ import annotations

from typing import Callable, Iterable

import numpy as np
from tensorflow.lite.python import schema_py_generated as schema_fb
from tensorflow.lite.python.convert import mlir_quantize
from tensorflow.lite.python.lite import _deduplicate_readonly_buffers
from tensorflow.lite.tools import flatbuffer_utils

from keras_models.backend import keras, native_logs_captured, tf
from keras_models.blocks import HARD_SWISH_MUL_SUFFIX
from tflite_export.cli import elapsed, first_line
from tflite_export.preprocessing import PIXEL_RANGE
from tflite_export.quantization import (
    consumers_of,
    is_input_quantizer,
    is_qat_model,
    quantize_scope,
    widen_empty_kernel_ranges,
)
from tflite_export.verify import op_name, tensor_type_name

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


def _starts_with_rescaling(model: keras.Model) -> bool:
    """The model's input goes straight into a Rescaling (after QAT's input quantizer, if any): it takes raw pixels."""
    first = next(layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer))
    if is_input_quantizer(first):
        following = consumers_of(first)
        first = following[0] if len(following) == 1 else first
    return isinstance(getattr(first, "layer", first), keras.layers.Rescaling)


def int8_converter(model: keras.Model, representative, io_dtype: str) -> tf.lite.TFLiteConverter:
    """TFLite's converter set up for a fully-integer file of `model` with batch size 1 and `io_dtype` edges;
    `representative()` yields lists of one float32 image batch. `convert` runs it in two halves."""
    height, width, channels = model.input_shape[1:]
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
    converter.representative_dataset = representative
    converter.inference_input_type = IO_DTYPES[io_dtype]
    converter.inference_output_type = IO_DTYPES[io_dtype]
    return converter


def convert(
    model: keras.Model,
    representative_data: RepresentativeData,
    *,
    io_dtype: str = "uint8",
    hswish: str = "lowered",
    input_range: tuple[float, float] | None = None,
) -> bytes:
    """Convert `model` (float or QAT) to a fully-integer TFLite model with batch size 1.

    `representative_data()` yields float32 [1, H, W, 3] batches of preprocessed training images (a few hundred suffice).
    `input_range`: every value the model's input can hold (default: `PIXEL_RANGE` for a model whose first layer is a
    Rescaling, as this project's are; else what the calibration images span). The input's range, and the ranges of
    the fixed rescaling after it, cover it however dim or few the calibration images are (`pin_input_ranges`).
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
    if input_range is None and _starts_with_rescaling(model):
        input_range = PIXEL_RANGE

    if not isinstance(model.input_shape, tuple) or len(model.input_shape) != 4:
        raise ConversionError(f"the model's input is {model.input_shape}: this converter exports image models with one "
                              "[batch, height, width, channels] input")
    if None in model.input_shape[1:3]:
        raise ConversionError("the model needs a fixed input size to be exported (build it with input_shape=(H, W, 3))")
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

    converter = int8_converter(model, representative, io_dtype)
    # Calibrate, correct the input's ranges, then quantize: the two halves of `convert()`, as TFLite's
    # QuantizationDebugger runs them (the quantizer's settings are `convert()`'s defaults).
    converter._experimental_calibrate_only = True  # noqa: SLF001 - the QuantizationDebugger's route
    try:
        # The converter logs its settings natively on every call (shown with the pipeline's -v 1, or on failure).
        with elapsed("converting to int8 TFLite"), native_logs_captured():
            calibrated = converter.convert()
            if input_range is not None:
                calibrated = pin_input_ranges(calibrated, input_range)
            content = _deduplicate_readonly_buffers(mlir_quantize(
                calibrated, input_data_type=IO_DTYPES[io_dtype], output_data_type=IO_DTYPES[io_dtype]))
    except Exception as err:  # the converter raises many types; one line is what users need
        if data_error is not None:
            raise data_error from None
        raise ConversionError(f"TFLite conversion failed: {first_line(err)}") from err
    # With no calibration image the converter does not fail: it leaves float tensors that only verification notices.
    if not calibration_images:
        raise ConversionError("no calibration images: int8 calibration needs at least one representative image")
    return content


# Ops through which the input's range is carried: the QAT input quantizer's QUANTIZE/DEQUANTIZE pair and the model's
# first layer, Rescaling (x / 127.5 - 1: a MUL and an ADD by scalar constants).
_AFFINE_OPS = {"MUL": np.multiply, "ADD": np.add, "SUB": np.subtract}


def pin_input_ranges(calibrated: bytes, input_range: tuple[float, float]) -> bytes:
    """Widen the calibrated ranges of the model's input and of the chain of fixed operations after it (QAT's input
    quantizer, the rescaling to [-1, 1]) to what `input_range` becomes there; returns the calibrated model.

    The converter calibrates those tensors on the representative images, so a calibration set darker than 255 gave a
    post-training file an input scale below 1 (pixels are no longer the input's bytes, and bright ones clip), and a
    QAT file float ops: QAT's input quantizer keeps the range training saw, and where the calibrated range of its
    output differs the converter leaves the quantizer in float (a DEQUANTIZE and a float FakeQuantWithMinMaxVars, the
    failure of `--calibration_images 1`). The input's range is known: pixels are 0..255.
    """
    model = flatbuffer_utils.convert_bytearray_to_object(calibrated)
    graph = model.subgraphs[0]
    known = {int(graph.inputs[0]): tuple(float(v) for v in input_range)}
    for op in graph.operators:  # in execution order
        inputs = [int(i) for i in op.inputs if i >= 0]
        sources = [i for i in inputs if i in known]
        if len(sources) != 1 or len(op.outputs) != 1:
            continue
        code = model.operatorCodes[op.opcodeIndex]
        name = op_name(max(code.builtinCode, code.deprecatedBuiltinCode))
        low, high = known[sources[0]]
        output = int(op.outputs[0])
        if name in ("QUANTIZE", "DEQUANTIZE"):
            quantized = _quantized_range(graph.tensors[output if name == "QUANTIZE" else sources[0]])
            known[output] = quantized if quantized is not None else (low, high)
        elif name in _AFFINE_OPS and len(inputs) == 2:
            constant = _scalar_constant(model, graph.tensors[next(i for i in inputs if i != sources[0])])
            if constant is None:
                continue
            ends = _AFFINE_OPS[name](np.array([low, high], np.float64), constant)
            known[output] = (float(ends.min()), float(ends.max()))
    for index, (low, high) in known.items():
        _widen(graph.tensors[index], low, high)
    return flatbuffer_utils.convert_object_to_bytearray(model)


def _quantized_range(tensor) -> tuple[float, float] | None:
    """The real values an 8-bit tensor with one scale can hold, or None if it has no quantization."""
    quantization = tensor.quantization
    if quantization is None or quantization.scale is None or len(quantization.scale) != 1:
        return None
    levels = {"INT8": (-128, 127), "UINT8": (0, 255)}.get(tensor_type_name(tensor.type))
    if levels is None:
        return None
    scale, zero_point = float(quantization.scale[0]), int(quantization.zeroPoint[0])
    return scale * (levels[0] - zero_point), scale * (levels[1] - zero_point)


def _scalar_constant(model, tensor) -> float | None:
    data = model.buffers[tensor.buffer].data if tensor.buffer < len(model.buffers) else None
    if data is None or tensor_type_name(tensor.type) != "FLOAT32":
        return None
    values = np.frombuffer(bytes(bytearray(data)), np.float32)
    return float(values[0]) if values.size == 1 else None


def _widen(tensor, low: float, high: float) -> None:
    """Make `tensor`'s calibrated [min, max] cover [low, high] (float tensors only: those the quantizer reads)."""
    if tensor_type_name(tensor.type) != "FLOAT32":
        return
    quantization = tensor.quantization
    if quantization is None:
        quantization = tensor.quantization = schema_fb.QuantizationParametersT()
    old_min = float(quantization.min[0]) if quantization.min is not None and len(quantization.min) else low
    old_max = float(quantization.max[0]) if quantization.max is not None and len(quantization.max) else high
    quantization.min, quantization.max = [min(old_min, low)], [max(old_max, high)]
