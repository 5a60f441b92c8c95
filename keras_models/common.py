"""Input, stem-agnostic head and argument checks shared by all MobileNet builders."""

from __future__ import annotations

from keras_models.backend import keras

layers = keras.layers

POOLINGS = (None, "avg", "max")
# The smallest input side the builders accept: every MobileNet halves the resolution five times (32 px -> 1x1 at the
# last blocks).
MIN_INPUT_SIZE = 32


def check_common_args(
    *, input_shape, alpha: float, num_classes: int, include_top: bool, dropout: float, pooling
) -> tuple[int | None, int | None, int]:
    """Validate arguments every builder takes; returns (height, width, channels).

    Raises ValueError saying what is allowed."""
    if input_shape is None:
        input_shape = (None, None, 3)
    if len(input_shape) != 3:
        raise ValueError(f"input_shape must be (height, width, channels), got {input_shape!r}")
    height, width, channels = input_shape
    if channels != 3:
        raise ValueError(f"input_shape must have 3 (RGB) channels, got {channels}")
    for side in (height, width):
        if side is not None and (not isinstance(side, int) or side < MIN_INPUT_SIZE):
            raise ValueError(f"input height and width must be integers >= {MIN_INPUT_SIZE} (or None), got "
                             f"{input_shape!r}")
    if not alpha > 0:
        raise ValueError(f"alpha (width multiplier) must be > 0, got {alpha!r}")
    if include_top and (not isinstance(num_classes, int) or num_classes < 1):
        raise ValueError(f"num_classes must be a positive integer with include_top=True, got {num_classes!r}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    return height, width, channels


def image_input(input_shape, include_preprocessing: bool):
    """The model input; with include_preprocessing the model takes raw [0, 255] pixels and rescales them to [-1, 1]."""
    inputs = layers.Input(shape=input_shape or (None, None, 3), name="image")
    x = layers.Rescaling(1.0 / 127.5, offset=-1.0, name="rescale_to_unit")(inputs) if include_preprocessing else inputs
    return inputs, x


def features_head(x, *, pooling):
    """Feature-extractor ending for include_top=False."""
    if pooling == "avg":
        return layers.GlobalAveragePooling2D(name="avg_pool")(x)
    if pooling == "max":
        return layers.GlobalMaxPooling2D(name="max_pool")(x)
    return x


def classifier_activation(x, activation: str | None, name: str):
    return layers.Activation(activation, name=name)(x) if activation else x
