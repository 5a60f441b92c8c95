"""Quantization-aware training with tensorflow-model-optimization: making a QAT model, calibrating and constraining
its activation ranges, importing a published file's ranges.

The scheme itself (per-channel depthwise kernels, the configs of the layers tfmot's registry does not cover) is
`tflite_export.quantization`, which the exporter needs too. Two layer types of our models are missing from tfmot's
registry: `Rescaling` (the +3 and x1/6 of h-swish / hard-sigmoid, and the input rescale) and `Multiply` (h-swish's
product and the squeeze-and-excite gate). Without a fake-quant node after them the converter would have to guess their
int8 ranges, so `quantize_model` gives them an output quantizer of their own; the pure scalings among them (x1/6) then
take their range from their input's (`align_rescaling_ranges`), so that they round nothing.

`prepare_qat_model` is what every user calls (the training command's QAT step, the transfer recipe's head-only
export, NetAdapt's final stage through that step, the ImageNet import): float model, calibration batches and
optionally a quantized file's ranges in, QAT model with consistent ranges out.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow as tf
import tensorflow_model_optimization as tfmot

from keras_models.backend import keras
from pipeline.distribute import synchronize_batch_norm
from tflite_export.preprocessing import PIXEL_RANGE
from tflite_export.quantization import (
    OutputQuantizeConfig,
    QuantizeScheme,
    consumers_of,
    is_input_quantizer,
    quantize_scope,
)

qk = tfmot.quantization.keras


# Layer types our builders use that the default 8-bit registry does not cover.
_OUTPUT_QUANTIZED = (keras.layers.Rescaling, keras.layers.Multiply)


def _inner(layer):
    return getattr(layer, "layer", layer)


def _fused_into_next_relu(model: keras.Model) -> set[str]:
    """Names of the Rescaling layers with an offset (h-swish's and the hard sigmoid's x + 3) whose only consumer is a
    ReLU. The converter fuses the two into one ADD with a RELU6 activation, so the int8 file never holds x + 3: it
    rounds once, onto the ReLU's grid. A fake-quant on x + 3 (whose range, and so its step, is wider than the
    ReLU6 output's) would make the QAT model round twice where the file rounds once, and train against that."""
    fused = set()
    for layer in model.layers:
        if not isinstance(layer, keras.layers.Rescaling) or float(layer.offset) == 0.0:
            continue
        consumers = consumers_of(layer)
        if consumers and all(isinstance(c, keras.layers.ReLU) for c in consumers):
            fused.add(layer.name)
    return fused


def quantize_model(model: keras.Model) -> keras.Model:
    """Float Keras model -> QAT model with fake-quant nodes, carrying the float model's weights."""
    fused = _fused_into_next_relu(model)

    def annotate(layer):
        if isinstance(layer, _OUTPUT_QUANTIZED):
            return qk.quantize_annotate_layer(layer, OutputQuantizeConfig(quantize_output=layer.name not in fused))
        return layer

    annotated = keras.models.clone_model(model, clone_function=annotate)
    annotated.set_weights(model.get_weights())
    annotated = qk.quantize_annotate_model(annotated)
    with quantize_scope():
        return qk.quantize_apply(annotated, scheme=QuantizeScheme())


def calibrate_activation_ranges(qat_model: keras.Model, batches) -> int:
    """Set every moving-average activation range to the mean of the batches' ranges; returns the batches used.

    tfmot starts every activation range at [-6, 6] and moves it with an EMA of decay 0.999: after 400 steps the
    initial value still weighs 67%, so a short QAT fine-tune trains against ranges that clip wide activations (the
    h-swish product reaches ~24) and waste resolution on narrow ones (BN outputs of ~2.5). Measured on CIFAR-10: the
    float model's 72.6% held-out top-1 fell to 63% in the first QAT epoch and ended at 69.2% int8. A few forward passes
    in which the EMA becomes a running mean (decay i/(i+1) at batch i) start QAT from calibrated ranges instead, as
    post-training quantization would. tfmot has no option for this, so its `MovingAvgQuantize` is wrapped for the
    duration of the calibration; the model runs eagerly so that every call goes through the wrapper.
    """
    from tensorflow_model_optimization.python.core.quantization.keras import quant_ops

    original = quant_ops.MovingAvgQuantize
    decay = {"value": 0.0}

    def running_mean(*args, **kwargs):
        kwargs["ema_decay"] = decay["value"]
        return original(*args, **kwargs)

    used = 0
    quant_ops.MovingAvgQuantize = running_mean
    try:
        for images in batches:
            decay["value"] = used / (used + 1)
            qat_model(images, training=True)
            used += 1
    finally:
        quant_ops.MovingAvgQuantize = original
    return used


def _output_range(layer):
    """The (min, max) variables of the fake-quant node on `layer`'s output, or None if its output is not quantized."""
    # The input quantizer's variables are named after the layer (quantize_layer_1/quantize_layer_1_min when the
    # process has built a QAT model before).
    suffixes = ("/output_min:0", "/post_activation_min:0", f"/{layer.name}_min:0")
    minimum = next((w for w in layer.non_trainable_weights if w.name.endswith(suffixes)), None)
    if minimum is None:
        return None
    maximum = next(w for w in layer.non_trainable_weights if w.name == minimum.name.replace("_min:0", "_max:0"))
    return minimum, maximum


def calibrate_output_range(layer, batches) -> None:
    """Set `layer`'s output range to the mean of the batches' (min, max), as `calibrate_activation_ranges` does for a
    whole model; `batches` are the layer's outputs (e.g. logits computed outside the model). The range keeps 0."""
    variables = _output_range(layer)
    if variables is None:  # the output is not quantized on its own (fused into what follows)
        return
    minimum, maximum = variables
    minimum.assign(min(0.0, float(np.mean([np.min(b) for b in batches]))))
    maximum.assign(max(0.0, float(np.mean([np.max(b) for b in batches]))))


def activation_range_count(qat_model: keras.Model) -> int:
    """How many layers' outputs have a fake-quant range."""
    return sum(_output_range(layer) is not None for layer in qat_model.layers)


def scaled_range_pairs(qat_model: keras.Model) -> list[tuple]:
    """(scale, input min, input max, output min, output max) for every pure scaling (Rescaling with offset 0 and a
    positive scale, such as h-swish's x1/6) whose input and output both have fake-quant ranges."""
    pairs = []
    for layer in qat_model.layers:
        inner = getattr(layer, "layer", None)
        if not isinstance(inner, keras.layers.Rescaling) or not layer.inbound_nodes:
            continue
        scale, offset = float(inner.scale), float(inner.offset)
        source = layer.inbound_nodes[0].inbound_layers
        if offset != 0.0 or scale <= 0.0 or isinstance(source, list):
            continue
        ranges = _output_range(source), _output_range(layer)
        if None not in ranges:
            pairs.append((scale, *ranges[0], *ranges[1]))
    return pairs


def align_rescaling_ranges(qat_model: keras.Model) -> int:
    """Give every pure scaling the output range of its input times its scale; returns how many were aligned.

    The input is already on an 8-bit grid; multiplied by s it lands exactly on the grid of the range times s (same
    zero point, s times the step), so the second rounding becomes the identity, in the Keras model and in the int8
    MUL the converter writes for it. Left to their own moving averages, the ranges of h-swish's product and of its
    x1/6 drift apart, so every h-swish value was rounded twice, onto two slightly different grids
    (experiments.qat_gap, and the gap over four QAT seeds with and without this: docs/findings.md). A Rescaling with
    an offset (h-swish's +3) can't be aligned this way (zero must stay on the grid); TFLite fuses that ADD with its
    RELU6.
    """
    return _assign_scaled_ranges(scaled_range_pairs(qat_model))


def _assign_scaled_ranges(pairs: list[tuple]) -> int:
    for scale, input_min, input_max, output_min, output_max in pairs:
        output_min.assign(input_min * scale)
        output_max.assign(input_max * scale)
    return len(pairs)


def pixel_range_bounds(qat_model: keras.Model) -> list[tuple]:
    """(min variable, max variable, min, max) for the input quantizer (raw pixels: `PIXEL_RANGE`) and for the
    Rescaling after it (x / 127.5 - 1: the image of that range, [-1, 1]).

    Calibration would give them the span of the calibration batches: a darker training set narrowed the input
    quantizer (tfmot's `AllValuesQuantize` takes the widest range it has seen) and the rescaling's range, so the
    exported file clipped the bright pixels of the camera it is deployed on. The range of pixels is known."""
    bounds = []
    for layer in qat_model.layers:
        variables = _output_range(layer)
        if variables is None or not is_input_quantizer(layer):
            continue
        bounds.append((*variables, *PIXEL_RANGE))
        for consumer in consumers_of(layer):
            inner, consumer_range = _inner(consumer), _output_range(consumer)
            if isinstance(inner, keras.layers.Rescaling) and consumer_range is not None:
                ends = np.array(PIXEL_RANGE) * float(inner.scale) + float(inner.offset)
                bounds.append((*consumer_range, float(ends.min()), float(ends.max())))
    return bounds


def _assign_pixel_ranges(bounds: list[tuple]) -> int:
    for minimum, maximum, low, high in bounds:
        minimum.assign(low)
        maximum.assign(high)
    return len(bounds)


def _is_gate(layer) -> bool:
    """`layer` is the x + 3 of relu6(x + 3): h-swish's and the hard sigmoid's gate, 0 below x = -3, 6 above 3."""
    inner = _inner(layer)
    consumers = consumers_of(layer)
    return (isinstance(inner, keras.layers.Rescaling) and float(inner.scale) == 1.0 and float(inner.offset) == 3.0
            and bool(consumers) and all(isinstance(_inner(c), keras.layers.ReLU) and float(_inner(c).max_value) == 6.0
                                        for c in consumers))


def saturated_range_bounds(qat_model: keras.Model) -> list[tuple]:
    """(min variable, max variable, lowest useful min, highest useful max or None) for every fake-quant range whose
    tensor feeds only h-swish (x * relu6(x + 3)) or the hard sigmoid (relu6(x + 3)).

    Below x = -3 both are 0 whatever x is, and above +3 the hard sigmoid is 1: values beyond those points change
    nothing that follows, so the 8-bit range need not cover them. Min/max ranges do cover them: a BatchNorm output
    before an h-swish reaches about as far below 0 as above, so a large share of its 256 levels went to values that
    all become 0, and a squeeze-and-excite logit's range was several times [-3, 3]. Clamping the range there makes
    the step finer and changes no result of the float function; the gradients agree too (fake-quant passes none
    beyond its range, and the function has none there). `experiments.qat_gap` and `experiments.qat_schedules` measure it
    (BENCHMARKS.md).
    """
    bounds = []
    for layer in qat_model.layers:
        ranges, consumers = _output_range(layer), consumers_of(layer)
        gates = [c for c in consumers if _is_gate(c)]
        if ranges is None or not gates:
            continue
        gate_outputs = {id(relu) for gate in gates for relu in consumers_of(gate)}
        products = [c for c in consumers if c not in gates]
        if all(isinstance(_inner(c), keras.layers.Multiply)
               and any(id(source) in gate_outputs for source in c.inbound_nodes[0].inbound_layers) for c in products):
            bounds.append((*ranges, -3.0, None if products else 3.0))
    return bounds


def clamp_saturated_ranges(qat_model: keras.Model) -> int:
    """Narrow every range found by `saturated_range_bounds` to [-3, max] (h-swish) or [-3, 3] (hard sigmoid);
    returns how many ranges there are."""
    return _assign_clamped_ranges(saturated_range_bounds(qat_model))


def _assign_clamped_ranges(bounds: list[tuple]) -> int:
    for minimum, maximum, lowest, highest in bounds:
        minimum.assign(tf.maximum(minimum, lowest))
        if highest is not None:
            maximum.assign(tf.minimum(maximum, highest))
    return len(bounds)


class RangeRules(keras.callbacks.Callback):
    """Re-applies the pixel ranges (`pixel_range_bounds`), `clamp_saturated_ranges` and `align_rescaling_ranges` after
    every training step (the moving averages move the ranges back)."""

    def __init__(self, qat_model: keras.Model):
        super().__init__()
        # Found once; the step only assigns.
        self.pixels, self.bounds = pixel_range_bounds(qat_model), saturated_range_bounds(qat_model)
        self.pairs = scaled_range_pairs(qat_model)

    def on_train_batch_end(self, batch, logs=None):
        _assign_pixel_ranges(self.pixels)
        _assign_clamped_ranges(self.bounds)
        _assign_scaled_ranges(self.pairs)


# Where a TF-slim MobileNetV3 .tflite file (Google's published V3 files) holds the activation that each of our
# fake-quant ranges covers: our layer name's suffix -> the file's tensor name's suffix, under "MobilenetV3/". The
# file fuses conv + BatchNorm ("add_fold") and runs h-swish as one op ("hard_swish/mul_1", its output).
# The average pools (squeeze-and-excite's and the global one) are left out on purpose: TFLite's uint8
# AVERAGE_POOL_2D must keep its input's range, so the file's pool outputs carry the whole feature map's range (the
# global pool: steps of about 0.4 for means below 10), while our MEAN may calibrate its own, 5-13x finer. A range
# that coarse also exposes LiteRT's optimized int8 MEAN, which rounds up to half a step off (BENCHMARKS.md).
_TF_SLIM_V3_SUFFIXES = (
    ("/BatchNorm", "/add_fold"),
    ("/act/div6", "/hard_swish/mul_1"),
    ("/act", "/Relu"),
    ("/squeeze_excite/Relu", "/squeeze_excite/Conv/Relu"),
    ("/squeeze_excite/Conv_1", "/squeeze_excite/Conv_1/BiasAdd"),
    ("/squeeze_excite/hard_sigmoid/relu6", "/squeeze_excite/Conv_1/Relu6"),
    ("/Mul", "/mul"),
    ("/Add", "/add"),
)
_TF_SLIM_V3_NAMES = {"Conv_2": "Conv_2/BiasAdd", "Logits": "Logits/Conv2d_1c_1x1/BiasAdd"}


def tf_slim_v3_tensor(layer_name: str) -> str | None:
    """The TF-slim MobileNetV3 tensor name that holds `layer_name`'s output, or None if the file has none."""
    if layer_name in _TF_SLIM_V3_NAMES:
        return "MobilenetV3/" + _TF_SLIM_V3_NAMES[layer_name]
    for ours, theirs in _TF_SLIM_V3_SUFFIXES:
        if layer_name.endswith(ours):
            return "MobilenetV3/" + layer_name[: -len(ours)] + theirs
    return None


def import_activation_ranges(qat_model: keras.Model, ranges: dict[str, tuple[float, float]],
                             tensor_name=tf_slim_v3_tensor, skip: tuple[str, ...] = ()) -> list[str]:
    """Set the fake-quant range of every layer whose output the quantized file also holds to the file's range (see
    keras_models.tflite_weights: a published file's weights were trained under these ranges); returns the layers set.

    The x1/6 of h-swish is a pure scaling: its input (the product) gets the file's h-swish range times 6, so that
    `align_rescaling_ranges` leaves both as imported. Ranges the file has no tensor for (h-swish's inner relu6(x+3),
    the input rescaling: the pixel range's image) keep what they had, and so do the layers named in `skip` (a new
    classifier)."""
    scalings = {}
    for layer in qat_model.layers:
        inner = getattr(layer, "layer", None)
        if isinstance(inner, keras.layers.Rescaling) and float(inner.offset) == 0.0 and layer.inbound_nodes:
            scalings[layer.name] = (float(inner.scale), layer.inbound_nodes[0].inbound_layers)
    imported = []
    for layer in qat_model.layers:
        variables = _output_range(layer)
        name = tensor_name(_inner(layer).name)
        if variables is None or name not in ranges or _inner(layer).name in skip:
            continue
        low, high = ranges[name]
        variables[0].assign(low)
        variables[1].assign(high)
        imported.append(layer.name)
        if layer.name in scalings:
            scale, source = scalings[layer.name]
            source_range = None if isinstance(source, list) else _output_range(source)
            if source_range is not None:
                source_range[0].assign(low / scale)
                source_range[1].assign(high / scale)
    return imported


@dataclasses.dataclass(frozen=True)
class RangeSetup:
    """How a QAT model's activation ranges were set before training (`prepare_qat_model`)."""

    calibration_batches: int
    pixel: int  # the input quantizer's and the input rescaling's ranges, set from the pixel range
    imported: int  # ranges taken from a quantized file
    clamped: int  # ranges narrowed where h-swish or the hard sigmoid saturates
    aligned: int  # x1/6 ranges derived from their inputs'


def prepare_qat_model(model: keras.Model, batches, imported_ranges: dict[str, tuple[float, float]] | None = None, *,
                      keep_calibrated: tuple[str, ...] = (), clamp: bool = True,
                      synchronized_batch_norm: bool = False) -> tuple[keras.Model, RangeSetup | None]:
    """The QAT model of the float `model` (`quantize_model`), with every activation range set in the order that makes
    them consistent: calibrated on `batches` (float32 image batches), the input's set from the pixel range
    (`pixel_range_bounds`), then the ranges a quantized file holds
    (`imported_ranges`, from `keras_models.tflite_weights.read_tflite`) for every layer but those in
    `keep_calibrated` (a new classifier), then clamped where h-swish saturates and aligned across x1/6 (the last two
    must follow the others, which they are derived from). Returns the model and how its ranges were set.

    `batches` None leaves the ranges as tfmot made them, for a checkpoint to restore (a resumed QAT stage); the
    RangeSetup is then None. `clamp` False keeps every imported range exactly as the file has it: the clamp would
    narrow the file's own ranges too (28 of the 97 it gives V3-Small: every BatchNorm output before an h-swish, every
    squeeze-and-excite logit), putting those tensors on grids the file's weights were never trained or measured
    under. `synchronized_batch_norm`: the QAT model's BatchNorms take the global batch's statistics
    (pipeline.distribute; tfmot's quantize_apply rebuilds them without it), set before the calibration passes, which
    run them in training mode."""
    qat_model = quantize_model(model)
    if synchronized_batch_norm:
        synchronize_batch_norm(qat_model)
    if batches is None:
        return qat_model, None
    used = calibrate_activation_ranges(qat_model, batches)
    pixel = _assign_pixel_ranges(pixel_range_bounds(qat_model))
    imported = import_activation_ranges(qat_model, imported_ranges, skip=keep_calibrated) if imported_ranges else []
    clamped = clamp_saturated_ranges(qat_model) if clamp else 0
    aligned = align_rescaling_ranges(qat_model)
    return qat_model, RangeSetup(used, pixel, len(imported), clamped, aligned)


class KeepRanges(keras.callbacks.Callback):
    """Holds every activation range at the value it had when this callback was made (imported from a file): the
    moving averages of a short fine-tune would otherwise pull them away from the ranges the weights were trained
    under."""

    def __init__(self, qat_model: keras.Model):
        super().__init__()
        self.saved = [(variable, variable.numpy()) for layer in qat_model.layers
                      for variable in (_output_range(layer) or ())]

    def on_train_batch_end(self, batch, logs=None):
        for variable, value in self.saved:
            variable.assign(value)
