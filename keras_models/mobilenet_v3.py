"""MobileNetV3-Large and -Small (Howard et al., 2019), plus the minimalistic variants.

The tables below are Tables 1 and 2 of the paper. Layer names and weight shapes equal keras.applications'
MobileNetV3Large/Small, so official Keras weight files load by name; the only difference is how h-swish is written
(see blocks.hard_swish), which keeps the int8 TFLite model free of HARD_SWISH ops.
"""

from __future__ import annotations

from typing import NamedTuple

from keras_models.backend import keras
from keras_models.blocks import ACTIVATIONS, batch_norm, correct_pad, make_divisible, squeeze_excite
from keras_models.common import check_common_args, classifier_activation, features_head, image_input

layers = keras.layers


class Bneck(NamedTuple):
    """One row of the paper's table: a bottleneck (inverted residual) block."""

    kernel: int  # depthwise kernel size
    exp: int  # expansion size (channels after the 1x1 expand conv) at alpha=1
    out: int  # output channels at alpha=1
    se: bool  # squeeze-and-excite after the depthwise conv
    nl: str  # non-linearity: "RE" (ReLU) or "HS" (h-swish)
    stride: int


# Table 1: MobileNetV3-Large. Input 224x224x3 -> conv2d 3x3, 16, HS, s2 -> these bnecks -> last stage.
LARGE = [
    Bneck(3, 16, 16, False, "RE", 1),
    Bneck(3, 64, 24, False, "RE", 2),
    Bneck(3, 72, 24, False, "RE", 1),
    Bneck(5, 72, 40, True, "RE", 2),
    Bneck(5, 120, 40, True, "RE", 1),
    Bneck(5, 120, 40, True, "RE", 1),
    Bneck(3, 240, 80, False, "HS", 2),
    Bneck(3, 200, 80, False, "HS", 1),
    Bneck(3, 184, 80, False, "HS", 1),
    Bneck(3, 184, 80, False, "HS", 1),
    Bneck(3, 480, 112, True, "HS", 1),
    Bneck(3, 672, 112, True, "HS", 1),
    Bneck(5, 672, 160, True, "HS", 2),
    Bneck(5, 960, 160, True, "HS", 1),
    Bneck(5, 960, 160, True, "HS", 1),
]

# Table 2: MobileNetV3-Small.
SMALL = [
    Bneck(3, 16, 16, True, "RE", 2),
    Bneck(3, 72, 24, False, "RE", 2),
    Bneck(3, 88, 24, False, "RE", 1),
    Bneck(5, 96, 40, True, "HS", 2),
    Bneck(5, 240, 40, True, "HS", 1),
    Bneck(5, 240, 40, True, "HS", 1),
    Bneck(5, 120, 48, True, "HS", 1),
    Bneck(5, 144, 48, True, "HS", 1),
    Bneck(5, 288, 96, True, "HS", 2),
    Bneck(5, 576, 96, True, "HS", 1),
    Bneck(5, 576, 96, True, "HS", 1),
]

STEM_FILTERS = 16  # the paper halves the stem from 32 to 16 filters thanks to h-swish
SE_RATIO = 0.25  # squeeze to 1/4 of the expansion channels
# Efficient last stage: 1x1 conv to 6x the last bneck width, pool, then a 1x1 conv (no BN) at this width.
LAST_POINT_FILTERS = {"large": 1280, "small": 1024}
TABLES = {"large": LARGE, "small": SMALL}


def minimalistic_row(row: Bneck) -> Bneck:
    """The minimalistic models drop SE, h-swish and 5x5 kernels (for hardware that lacks them)."""
    return row._replace(kernel=3, se=False, nl="RE")


def _bneck(x, row: Bneck, in_filters_at_1: int, alpha: float, block_id: int):
    shortcut = x
    in_filters = x.shape[-1]
    # Expansion is kept as the paper's ratio exp/in so that width-scaled models match keras.applications exactly.
    expanded = make_divisible(in_filters * (row.exp / in_filters_at_1))
    filters = make_divisible(row.out * alpha)
    activation = ACTIVATIONS[row.nl]
    prefix = f"expanded_conv_{block_id}/" if block_id else "expanded_conv/"

    if block_id:  # the first bneck's expansion equals its input width: no expand conv
        x = layers.Conv2D(expanded, 1, padding="same", use_bias=False, name=prefix + "expand")(x)
        x = batch_norm(prefix + "expand/BatchNorm")(x)
        x = activation(x, name=prefix + "expand/act")
    if row.stride == 2:
        x = layers.ZeroPadding2D(correct_pad(x.shape[1:3], row.kernel), name=prefix + "depthwise/pad")(x)
    x = layers.DepthwiseConv2D(
        row.kernel,
        strides=row.stride,
        padding="same" if row.stride == 1 else "valid",
        use_bias=False,
        name=prefix + "depthwise",
    )(x)
    x = batch_norm(prefix + "depthwise/BatchNorm")(x)
    x = activation(x, name=prefix + "depthwise/act")
    if row.se:
        x = squeeze_excite(x, expanded, SE_RATIO, prefix)
    # Linear bottleneck: no activation after the projection.
    x = layers.Conv2D(filters, 1, padding="same", use_bias=False, name=prefix + "project")(x)
    x = batch_norm(prefix + "project/BatchNorm")(x)
    if row.stride == 1 and in_filters == filters:
        x = layers.Add(name=prefix + "Add")([shortcut, x])
    return x


def mobilenet_v3(
    model_type: str,
    input_shape=(224, 224, 3),
    alpha: float = 1.0,
    minimalistic: bool = False,
    num_classes: int = 1000,
    include_top: bool = True,
    dropout: float = 0.2,
    pooling: str | None = None,
    include_preprocessing: bool = True,
    classifier_activation_name: str | None = "softmax",
) -> keras.Model:
    """MobileNetV3-`model_type` ("large" or "small") with width multiplier `alpha`; any input size >= 32."""
    if model_type not in TABLES:
        raise ValueError(f"model_type must be one of {sorted(TABLES)}, got {model_type!r}")
    check_common_args(
        input_shape=input_shape, alpha=alpha, num_classes=num_classes, include_top=include_top, dropout=dropout,
        pooling=pooling,
    )
    table = [minimalistic_row(r) for r in TABLES[model_type]] if minimalistic else TABLES[model_type]
    stem_activation = ACTIVATIONS["RE" if minimalistic else "HS"]

    inputs, x = image_input(input_shape, include_preprocessing)
    # The stem is not width-scaled (as in the reference implementation).
    x = layers.Conv2D(STEM_FILTERS, 3, strides=2, padding="same", use_bias=False, name="Conv")(x)
    x = batch_norm("Conv/BatchNorm")(x)
    x = stem_activation(x, name="Conv/act")

    in_filters_at_1 = STEM_FILTERS
    for block_id, row in enumerate(table):
        x = _bneck(x, row, in_filters_at_1, alpha, block_id)
        in_filters_at_1 = row.out

    last_conv_filters = make_divisible(x.shape[-1] * 6)
    x = layers.Conv2D(last_conv_filters, 1, padding="same", use_bias=False, name="Conv_1")(x)
    x = batch_norm("Conv_1/BatchNorm")(x)
    x = stem_activation(x, name="Conv_1/act")

    if include_top:
        last_point_filters = LAST_POINT_FILTERS[model_type]
        if alpha > 1.0:
            last_point_filters = make_divisible(last_point_filters * alpha)
        # Efficient last stage: pool first, so the wide 1x1 conv runs on a 1x1 map.
        x = layers.GlobalAveragePooling2D(keepdims=True, name="global_pool")(x)
        x = layers.Conv2D(last_point_filters, 1, padding="same", use_bias=True, name="Conv_2")(x)
        x = stem_activation(x, name="Conv_2/act")
        if dropout > 0:
            x = layers.Dropout(dropout, name="dropout")(x)
        x = layers.Conv2D(num_classes, 1, padding="same", name="Logits")(x)
        x = layers.Flatten(name="flatten")(x)
        x = classifier_activation(x, classifier_activation_name, "Predictions")
    else:
        x = features_head(x, pooling=pooling)
    suffix = "_minimalistic" if minimalistic else ""
    return keras.Model(inputs, x, name=f"MobilenetV3{model_type}{suffix}")


def mobilenet_v3_small(**kwargs) -> keras.Model:
    return mobilenet_v3("small", **kwargs)


def mobilenet_v3_large(**kwargs) -> keras.Model:
    return mobilenet_v3("large", **kwargs)
