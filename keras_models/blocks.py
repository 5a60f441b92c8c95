"""Building blocks shared by the MobileNet builders.

Every block is made of standard Keras layers only, so that tensorflow-model-optimization can wrap each layer for
quantization-aware training and the TFLite converter sees plain ADD / RELU6 / MUL ops.
"""

from __future__ import annotations

from keras_models.backend import keras

layers = keras.layers

# BatchNorm settings of the reference (TF-slim / keras.applications) implementations.
BN_EPSILON = 1e-3
BN_MOMENTUM = 0.999


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round a channel count to a multiple of `divisor` without going more than 10% below `value` (TF-slim's rule)."""
    min_value = divisor if min_value is None else min_value
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


def correct_pad(size: tuple[int | None, int | None], kernel_size: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """Padding for a stride-2 'valid' convolution that reproduces TF-slim's 'SAME' for even and odd input sizes."""
    adjust = tuple(1 if s is None else 1 - s % 2 for s in size)
    correct = (kernel_size // 2, kernel_size // 2)
    return ((correct[0] - adjust[0], correct[0]), (correct[1] - adjust[1], correct[1]))


def batch_norm(name: str, momentum: float = BN_MOMENTUM) -> keras.layers.Layer:
    return layers.BatchNormalization(axis=-1, epsilon=BN_EPSILON, momentum=momentum, name=name)


def relu(x, name: str | None = None):
    return layers.ReLU(name=name)(x)


def relu6(x, name: str | None = None):
    return layers.ReLU(6.0, name=name)(x)


def hard_sigmoid(x, name: str | None = None):
    """relu6(x + 3) / 6, as ADD, RELU6 and MUL layers (Rescaling computes `x * scale + offset`)."""
    prefix = f"{name}/" if name else ""
    shifted = layers.Rescaling(1.0, offset=3.0, name=prefix + "add3" if name else None)(x)
    gate = layers.ReLU(6.0, name=prefix + "relu6" if name else None)(shifted)
    return layers.Rescaling(1.0 / 6.0, name=prefix + "div6" if name else None)(gate)


def hard_swish(x, name: str | None = None):
    """h-swish(x) = x * relu6(x + 3) / 6, computed as (relu6(x + 3) * x) * (1/6).

    The operand order is deliberate: the TFLite converter pattern-matches `x * (relu6(x + 3) / 6)` and
    `(x * relu6(x + 3)) / 6` into a single HARD_SWISH op, which neither XNNPACK nor the Edge TPU run in int8. With
    relu6 as the *first* operand of the multiply the pattern does not match, and the int8 model keeps ADD/RELU6/MUL,
    which every delegate supports. Numerically it is the same function as keras.applications' hard_swish.
    """
    prefix = f"{name}/" if name else ""
    shifted = layers.Rescaling(1.0, offset=3.0, name=prefix + "add3" if name else None)(x)
    gate = layers.ReLU(6.0, name=prefix + "relu6" if name else None)(shifted)
    product = layers.Multiply(name=prefix + "mul" if name else None)([gate, x])
    return layers.Rescaling(1.0 / 6.0, name=prefix + "div6" if name else None)(product)


ACTIVATIONS = {"RE": relu, "HS": hard_swish, "RE6": relu6}
# Name suffix of h-swish's multiply layer (tflite_export uses it to offer the fusable HARD_SWISH form on request).
HARD_SWISH_MUL_SUFFIX = "/mul"


def squeeze_excite(inputs, filters: int, ratio: float, prefix: str):
    """Squeeze-and-excite with a hard-sigmoid gate; bottleneck width is `ratio` of the expanded channels."""
    x = layers.GlobalAveragePooling2D(keepdims=True, name=prefix + "squeeze_excite/AvgPool")(inputs)
    x = layers.Conv2D(make_divisible(filters * ratio), 1, padding="same", name=prefix + "squeeze_excite/Conv")(x)
    x = layers.ReLU(name=prefix + "squeeze_excite/Relu")(x)
    x = layers.Conv2D(filters, 1, padding="same", name=prefix + "squeeze_excite/Conv_1")(x)
    x = hard_sigmoid(x, name=prefix + "squeeze_excite/hard_sigmoid")
    return layers.Multiply(name=prefix + "squeeze_excite/Mul")([inputs, x])
