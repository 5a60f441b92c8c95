"""Quantization-aware training with tensorflow-model-optimization.

tfmot's default 8-bit scheme already gives what int8 TFLite needs for convolutions: per-channel symmetric weights,
8-bit asymmetric activations, BatchNorm folded into the preceding conv's quantization. Two layer types of our models
are missing from its registry: `Rescaling` (the +3 and x1/6 of h-swish / hard-sigmoid, and the input rescale) and
`Multiply` (h-swish's product and the squeeze-and-excite gate). Without a fake-quant node after them the converter
would have to guess their int8 ranges, so we give them an output quantizer of their own; the pure scalings among
them (x1/6) then take their range from their input's (`align_rescaling_ranges`), so that they round nothing.
"""

from __future__ import annotations

import tensorflow_model_optimization as tfmot

from keras_models.backend import keras

qk = tfmot.quantization.keras


class OutputQuantizeConfig(qk.QuantizeConfig):
    """No weights to quantize; the output gets an 8-bit asymmetric moving-average fake-quant, like tfmot's ReLU/Add."""

    def get_weights_and_quantizers(self, layer):
        return []

    def get_activations_and_quantizers(self, layer):
        return []

    def set_quantize_weights(self, layer, quantize_weights):
        pass

    def set_quantize_activations(self, layer, quantize_activations):
        pass

    def get_output_quantizers(self, layer):
        return [qk.quantizers.MovingAverageQuantizer(num_bits=8, per_axis=False, symmetric=False, narrow_range=False)]

    def get_config(self):
        return {}


# Layer types our builders use that the default 8-bit registry does not cover.
_OUTPUT_QUANTIZED = (keras.layers.Rescaling, keras.layers.Multiply)


def quantize_scope():
    """Context in which QAT models can be saved, loaded and cloned."""
    return qk.quantize_scope({"OutputQuantizeConfig": OutputQuantizeConfig})


def quantize_model(model: keras.Model) -> keras.Model:
    """Float Keras model -> QAT model with fake-quant nodes, carrying the float model's weights."""

    def annotate(layer):
        if isinstance(layer, _OUTPUT_QUANTIZED):
            return qk.quantize_annotate_layer(layer, OutputQuantizeConfig())
        return layer

    annotated = keras.models.clone_model(model, clone_function=annotate)
    annotated.set_weights(model.get_weights())
    annotated = qk.quantize_annotate_model(annotated)
    with quantize_scope():
        return qk.quantize_apply(annotated)


def calibrate_activation_ranges(qat_model: keras.Model, batches) -> int:
    """Set every moving-average activation range to the mean of the batches' ranges; returns the batches used.

    tfmot starts every activation range at [-6, 6] and moves it with an EMA of decay 0.999: after 400 steps the
    initial value still weighs 67%, so a short QAT fine-tune trains against ranges that clip wide activations (the
    h-swish product reaches ~24) and waste resolution on narrow ones (BN outputs of ~2.5). Measured on CIFAR-10: the
    float model's 72.6% held-out top-1 fell to 63% in the first QAT epoch and ended at 69.2% int8. A few forward passes in
    which the EMA becomes a running mean (decay i/(i+1) at batch i) start QAT from calibrated ranges instead, as
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
    suffixes = ("/output_min:0", "/post_activation_min:0", "/quantize_layer_min:0")
    minimum = next((w for w in layer.non_trainable_weights if w.name.endswith(suffixes)), None)
    if minimum is None:
        return None
    maximum = next(w for w in layer.non_trainable_weights if w.name == minimum.name.replace("_min:0", "_max:0"))
    return minimum, maximum


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
    (BENCHMARKS.md: bench.qat_gap, and the gap over four QAT seeds with and without this). A Rescaling with an offset
    (h-swish's +3) can't be aligned this way (zero must stay on the grid); TFLite fuses that ADD with its RELU6.
    """
    return _assign_scaled_ranges(scaled_range_pairs(qat_model))


def _assign_scaled_ranges(pairs: list[tuple]) -> int:
    for scale, input_min, input_max, output_min, output_max in pairs:
        output_min.assign(input_min * scale)
        output_max.assign(input_max * scale)
    return len(pairs)


class AlignRescalingRanges(keras.callbacks.Callback):
    """Re-aligns the scaled ranges after every training step (the moving averages move them apart again)."""

    def __init__(self, qat_model: keras.Model):
        super().__init__()
        self.pairs = scaled_range_pairs(qat_model)  # found once; the step only assigns

    def on_train_batch_end(self, batch, logs=None):
        _assign_scaled_ranges(self.pairs)


def is_qat_model(model: keras.Model) -> bool:
    return any(isinstance(layer, qk.QuantizeWrapper) or type(layer).__name__ == "QuantizeLayer" for layer in model.layers)


def freeze_batch_norm(model: keras.Model) -> int:
    """Switch every BatchNormalization (wrapped or not) to its moving statistics; returns how many were frozen.

    Late in QAT the batch statistics are noisy compared with the quantization steps the network is adapting to, and
    the deployed model uses the moving averages; freezing them lets the last epochs train against what will ship
    (the practice of the QAT paper, Jacob et al. 2018, and of TF's MobileNet QAT recipes). Recompile afterwards.
    """
    frozen = 0
    for layer in model.layers:
        inner = getattr(layer, "layer", layer)
        if isinstance(inner, keras.layers.BatchNormalization):
            inner.trainable = False
            frozen += 1
    return frozen


