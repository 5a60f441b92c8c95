"""MobileNetV1 (Howard et al., 2017): depthwise-separable convolutions with width and resolution multipliers.

Layer names and weight shapes equal keras.applications.MobileNet, so official Keras weight files load by name.
"""

from __future__ import annotations

from keras_models.backend import keras
from keras_models.blocks import batch_norm, relu6
from keras_models.common import check_common_args, classifier_activation, features_head, image_input

layers = keras.layers

# Table 1 of the paper. The stem is a full 3x3 conv; each row after it is a depthwise-separable block:
# 3x3 depthwise (stride s) then 1x1 pointwise to `filters`.
STEM = dict(filters=32, stride=2)
# (pointwise filters, depthwise stride)
BLOCKS = [
    (64, 1),
    (128, 2),
    (128, 1),
    (256, 2),
    (256, 1),
    (512, 2),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (1024, 2),
    (1024, 1),
]
# keras.applications.MobileNet keeps Keras' default BatchNorm momentum for V1.
V1_BN_MOMENTUM = 0.99


def _separable_block(x, filters: int, stride: int, depth_multiplier: int, block_id: int):
    if stride == 2:
        # TF-slim pads stride-2 depthwise convs bottom/right only.
        x = layers.ZeroPadding2D(((0, 1), (0, 1)), name=f"conv_pad_{block_id}")(x)
    x = layers.DepthwiseConv2D(
        3,
        strides=stride,
        padding="same" if stride == 1 else "valid",
        depth_multiplier=depth_multiplier,
        use_bias=False,
        name=f"conv_dw_{block_id}",
    )(x)
    x = batch_norm(f"conv_dw_{block_id}_bn", V1_BN_MOMENTUM)(x)
    x = relu6(x, name=f"conv_dw_{block_id}_relu")
    x = layers.Conv2D(filters, 1, padding="same", use_bias=False, name=f"conv_pw_{block_id}")(x)
    x = batch_norm(f"conv_pw_{block_id}_bn", V1_BN_MOMENTUM)(x)
    return relu6(x, name=f"conv_pw_{block_id}_relu")


def mobilenet_v1(
    input_shape=(224, 224, 3),
    alpha: float = 1.0,
    depth_multiplier: int = 1,
    num_classes: int = 1000,
    include_top: bool = True,
    dropout: float = 1e-3,
    pooling: str | None = None,
    include_preprocessing: bool = True,
    classifier_activation_name: str | None = "softmax",
) -> keras.Model:
    """MobileNetV1 with width multiplier `alpha` and depthwise `depth_multiplier`; any input size >= 32."""
    check_common_args(
        input_shape=input_shape, alpha=alpha, num_classes=num_classes, include_top=include_top, dropout=dropout,
        pooling=pooling,
    )
    if not isinstance(depth_multiplier, int) or depth_multiplier < 1:
        raise ValueError(f"depth_multiplier must be a positive integer, got {depth_multiplier!r}")

    inputs, x = image_input(input_shape, include_preprocessing)
    x = layers.Conv2D(
        int(STEM["filters"] * alpha), 3, strides=STEM["stride"], padding="same", use_bias=False, name="conv1"
    )(x)
    x = batch_norm("conv1_bn", V1_BN_MOMENTUM)(x)
    x = relu6(x, name="conv1_relu")
    for block_id, (filters, stride) in enumerate(BLOCKS, start=1):
        x = _separable_block(x, int(filters * alpha), stride, depth_multiplier, block_id)

    if include_top:
        x = layers.GlobalAveragePooling2D(keepdims=True, name="global_pool")(x)
        x = layers.Dropout(dropout, name="dropout")(x)
        x = layers.Conv2D(num_classes, 1, padding="same", name="conv_preds")(x)
        x = layers.Reshape((num_classes,), name="reshape_2")(x)
        x = classifier_activation(x, classifier_activation_name, "predictions")
    else:
        x = features_head(x, pooling=pooling)
    size = input_shape[0] if input_shape else None
    return keras.Model(inputs, x, name=f"mobilenet_v1_{alpha:0.2f}_{size}")
