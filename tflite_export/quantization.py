"""The 8-bit quantization scheme of the project's QAT models, and what loading and converting one needs.

tfmot's default 8-bit scheme already gives what int8 TFLite needs for Conv2D: per-channel symmetric weights, 8-bit
asymmetric activations, no fake-quant between a conv and its BatchNorm. For DepthwiseConv2D it does not: it sizes the
per-channel ranges by the kernel's last axis, which is the depth multiplier (1), so every depthwise kernel gets one
range for all its channels (tensorflow/model-optimization#808, open). The converter keeps that grid (each channel's
int8 scale is the one scale times the channel's BatchNorm factor), so most depthwise channels used a fraction of
the 127 levels they have (`experiments.weight_levels` prints how many). `QuantizeScheme` below gives each depthwise
channel its own range, in QAT and therefore in the file. Layers whose output needs a fake-quant of its own (`Rescaling`,
`Multiply`: tfmot's registry has neither) are annotated with `OutputQuantizeConfig` by `pipeline.qat.quantize_model`.

Here, below the training code, because the exporter needs the same classes: `quantize_scope()` to load a saved QAT
model, `is_qat_model` to pick the conversion path, `widen_empty_kernel_ranges` before converting one.
"""

from __future__ import annotations

import tensorflow as tf
import tensorflow_model_optimization as tfmot
from tensorflow_model_optimization.python.core.quantization.keras.default_8bit.default_8bit_quantize_layout_transform import (  # noqa: E501
    Default8BitQuantizeLayoutTransform,
)

# Not exported by tfmot: the config class its registry uses for convolutions (weights per channel, output left to
# the BatchNorm that follows), which the depthwise config below reuses with another weight quantizer.
from tensorflow_model_optimization.python.core.quantization.keras.default_8bit.default_8bit_quantize_registry import (
    Default8BitConvQuantizeConfig,
)

from keras_models.backend import keras

qk = tfmot.quantization.keras


class OutputQuantizeConfig(qk.QuantizeConfig):
    """No weights to quantize; the output gets an 8-bit asymmetric moving-average fake-quant, like tfmot's ReLU/Add,
    unless `quantize_output` is False (a tensor the int8 file never holds, see `pipeline.qat.quantize_model`)."""

    def __init__(self, quantize_output: bool = True):
        self.quantize_output = quantize_output

    def get_weights_and_quantizers(self, layer):
        return []

    def get_activations_and_quantizers(self, layer):
        return []

    def set_quantize_weights(self, layer, quantize_weights):
        pass

    def set_quantize_activations(self, layer, quantize_activations):
        pass

    def get_output_quantizers(self, layer):
        if not self.quantize_output:
            return []
        return [qk.quantizers.MovingAverageQuantizer(num_bits=8, per_axis=False, symmetric=False, narrow_range=False)]

    def get_config(self):
        return {"quantize_output": self.quantize_output}


class DepthwiseKernelQuantizer(qk.quantizers.LastValueQuantizer):
    """Symmetric 8-bit fake-quant with one range per output channel of a depthwise kernel, as in the int8 file.

    A depthwise kernel is (kh, kw, channels, multiplier); TFLite's has shape (1, kh, kw, channels * multiplier) and
    one scale per entry of its last axis. tfmot's per-channel fake-quant works on the last axis of a 2-D or 4-D
    tensor only, so the kernel is viewed as (kh, kw, 1, channels * multiplier) for it: TFLite's layout, same
    element order.
    """

    def __init__(self):
        super().__init__(num_bits=8, per_axis=True, symmetric=True, narrow_range=True)

    def build(self, tensor_shape, name, layer):
        channels = int(tensor_shape[-2]) * int(tensor_shape[-1])
        return {
            f"{bound}_var": layer.add_weight(f"{name}_{bound}", shape=(channels,), trainable=False,
                                             initializer=keras.initializers.Constant(value))
            for bound, value in (("min", -6.0), ("max", 6.0))
        }

    def __call__(self, inputs, training, weights, **kwargs):
        shape = tf.shape(inputs)
        by_channel = tf.reshape(inputs, tf.concat([shape[:-2], [1, -1]], axis=0))
        return tf.reshape(super().__call__(by_channel, training, weights, **kwargs), shape)


class DepthwiseConvQuantizeConfig(Default8BitConvQuantizeConfig):
    """tfmot's DepthwiseConv2D config with per-channel kernel ranges (`DepthwiseKernelQuantizer`)."""

    def __init__(self, weight_attrs=("depthwise_kernel",), activation_attrs=("activation",), quantize_output=False):
        super().__init__(list(weight_attrs), list(activation_attrs), quantize_output)
        self.weight_quantizer = DepthwiseKernelQuantizer()


class _Registry(qk.default_8bit.Default8BitQuantizeRegistry):
    def get_quantize_config(self, layer):
        if isinstance(layer, keras.layers.DepthwiseConv2D):
            return DepthwiseConvQuantizeConfig()
        return super().get_quantize_config(layer)


class _LayoutTransform(Default8BitQuantizeLayoutTransform):
    """tfmot's layout transforms, then the squeeze convs' weight quantization restored (`_conv_into_relu`)."""

    def apply(self, model, layer_quantize_map):
        model, layer_quantize_map = super().apply(model, layer_quantize_map)
        for name in _conv_into_relu(model):
            layer_quantize_map.setdefault(name, {})["quantize_config"] = Default8BitConvQuantizeConfig(
                ["kernel"], ["activation"], False)
        return model, layer_quantize_map


class QuantizeScheme(qk.default_8bit.Default8BitQuantizeScheme):
    """tfmot's default 8-bit scheme (same layout transforms: no fake-quant between a conv, its BatchNorm and its
    ReLU) with depthwise kernels quantized per channel. Set through the registry rather than by annotating the
    depthwise layers, because tfmot skips those transforms for layers annotated with a config of their own."""

    def get_quantize_registry(self):
        return _Registry()

    def get_layout_transformer(self):
        return _LayoutTransform()


def quantize_scope():
    """Context in which QAT models can be saved, loaded and cloned."""
    return qk.quantize_scope({"OutputQuantizeConfig": OutputQuantizeConfig,
                              "DepthwiseConvQuantizeConfig": DepthwiseConvQuantizeConfig,
                              "Default8BitConvQuantizeConfig": Default8BitConvQuantizeConfig})


def consumers_of(layer) -> list:
    """The layers that take `layer`'s output."""
    return [node.outbound_layer for node in layer.outbound_nodes]


def _conv_into_relu(model: keras.Model) -> set[str]:
    """Names of the Conv2D layers whose only consumer is a ReLU (the squeeze convs of squeeze-and-excite).

    tfmot's `LayerReLUQuantize` transform, meant to keep a fake-quant from between an Add and its ReLU, also matches
    Conv2D -> ReLU and replaces the conv's whole config with a no-op: its kernel then trains without fake-quant
    while the file stores it in int8 (tfmot 0.8). That transform's purpose is the output (the ReLU quantizes it),
    not the quantization of its weights. `_LayoutTransform` gives these convs tfmot's conv config back after the
    transforms ran: kernel fake-quantized per channel, output left to the ReLU, as for any other conv."""
    return {layer.name for layer in model.layers
            if type(layer) is keras.layers.Conv2D and consumers_of(layer)
            and all(isinstance(c, keras.layers.ReLU) for c in consumers_of(layer))}


def kernel_ranges(qat_model: keras.Model) -> list[tuple]:
    """(min, max) variables of every per-channel weight fake-quant."""
    pairs = []
    for layer in qat_model.layers:
        for minimum in layer.non_trainable_weights:
            if minimum.shape.rank == 1 and minimum.name.endswith(("kernel_min:0", "depthwise_kernel_min:0")):
                maximum = next(w for w in layer.non_trainable_weights
                               if w.name == minimum.name.replace("_min:0", "_max:0"))
                pairs.append((minimum, maximum))
    return pairs


def widen_empty_kernel_ranges(qat_model: keras.Model) -> int:
    """Give every all-zero weight channel the range of its layer's widest channel; returns how many were empty.

    A channel whose weights are all 0 gets the range [0, 0] from tfmot's last-value quantizer, and the converter
    turns that into a weight scale of 0 and so a bias scale of 0: the channel's bias is lost in the int8 file while
    the Keras model still adds it (seen on imported weights, where per-tensor uint8 rounding zeroes whole squeeze
    channels; their ReLU(bias) then became 0). Any non-zero range stores the zeros exactly and keeps the bias.
    Only the file is affected (the fake-quant of an all-zero channel is 0 either way), so conversion applies it."""
    empty = 0
    for minimum, maximum in kernel_ranges(qat_model):
        width = tf.maximum(-minimum, maximum)
        is_empty = width <= 0.0
        fallback = tf.reduce_max(width)
        if bool(tf.reduce_any(is_empty)) and float(fallback) > 0.0:
            empty += int(tf.reduce_sum(tf.cast(is_empty, tf.int32)))
            minimum.assign(tf.where(is_empty, -fallback, minimum))
            maximum.assign(tf.where(is_empty, fallback, maximum))
    return empty


def is_input_quantizer(layer) -> bool:
    """`layer` is tfmot's QuantizeLayer: the fake-quant of a QAT model's input, which has no wrapped layer."""
    return type(layer).__name__ == "QuantizeLayer"


def is_qat_model(model: keras.Model) -> bool:
    return any(isinstance(layer, qk.QuantizeWrapper) or is_input_quantizer(layer) for layer in model.layers)
