"""MobileNetV2 (Sandler et al., 2018): inverted residuals with linear bottlenecks.

Layer names and weight shapes equal keras.applications.MobileNetV2, so official Keras weight files load by name.
"""

from __future__ import annotations

from keras_models.backend import keras
from keras_models.blocks import batch_norm, correct_pad, make_divisible, relu6
from keras_models.common import check_common_args, classifier_activation, features_head, image_input

layers = keras.layers

# Table 2 of the paper: each row is a sequence of `n` bottlenecks; the first has stride `s`, the rest stride 1.
# (t: expansion factor, c: output channels, n: repeats, s: stride)
STEM_FILTERS = 32
BOTTLENECKS = [
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
]
LAST_FILTERS = 1280


def _inverted_residual(x, expansion: int, filters: int, stride: int, block_id: int):
    shortcut = x
    in_channels = x.shape[-1]
    prefix = f"block_{block_id}_" if block_id else "expanded_conv_"
    if block_id:  # the first bottleneck has t=1: no expansion conv
        x = layers.Conv2D(expansion * in_channels, 1, padding="same", use_bias=False, name=prefix + "expand")(x)
        x = batch_norm(prefix + "expand_BN")(x)
        x = relu6(x, name=prefix + "expand_relu")
    if stride == 2:
        x = layers.ZeroPadding2D(correct_pad(x.shape[1:3], 3), name=prefix + "pad")(x)
    x = layers.DepthwiseConv2D(
        3, strides=stride, padding="same" if stride == 1 else "valid", use_bias=False, name=prefix + "depthwise"
    )(x)
    x = batch_norm(prefix + "depthwise_BN")(x)
    x = relu6(x, name=prefix + "depthwise_relu")
    # Linear bottleneck: no activation after the projection.
    x = layers.Conv2D(filters, 1, padding="same", use_bias=False, name=prefix + "project")(x)
    x = batch_norm(prefix + "project_BN")(x)
    if stride == 1 and in_channels == filters:
        x = layers.Add(name=prefix + "add")([shortcut, x])
    return x


def mobilenet_v2(
    input_shape=(224, 224, 3),
    alpha: float = 1.0,
    num_classes: int = 1000,
    include_top: bool = True,
    dropout: float = 0.0,
    pooling: str | None = None,
    include_preprocessing: bool = True,
    classifier_activation_name: str | None = "softmax",
) -> keras.Model:
    """MobileNetV2 with width multiplier `alpha`; any input size >= 32."""
    check_common_args(
        input_shape=input_shape, alpha=alpha, num_classes=num_classes, include_top=include_top, dropout=dropout,
        pooling=pooling,
    )
    inputs, x = image_input(input_shape, include_preprocessing)
    x = layers.Conv2D(make_divisible(STEM_FILTERS * alpha), 3, strides=2, padding="same", use_bias=False,
                      name="Conv1")(x)
    x = batch_norm("bn_Conv1")(x)
    x = relu6(x, name="Conv1_relu")

    block_id = 0
    for expansion, channels, repeats, first_stride in BOTTLENECKS:
        for i in range(repeats):
            filters = make_divisible(int(channels * alpha))
            x = _inverted_residual(x, expansion, filters, first_stride if i == 0 else 1, block_id)
            block_id += 1

    # The last 1x1 conv is not narrowed for alpha < 1 (the paper's rule for small multipliers).
    last_filters = make_divisible(LAST_FILTERS * alpha) if alpha > 1.0 else LAST_FILTERS
    x = layers.Conv2D(last_filters, 1, use_bias=False, name="Conv_1")(x)
    x = batch_norm("Conv_1_bn")(x)
    x = relu6(x, name="out_relu")

    if include_top:
        x = layers.GlobalAveragePooling2D(name="global_average_pooling2d")(x)
        if dropout > 0:
            x = layers.Dropout(dropout, name="dropout")(x)
        x = layers.Dense(num_classes, name="predictions")(x)
        x = classifier_activation(x, classifier_activation_name, "predictions_activation")
    else:
        x = features_head(x, pooling=pooling)
    size = input_shape[0] if input_shape else None
    return keras.Model(inputs, x, name=f"mobilenetv2_{alpha:0.2f}_{size}")
