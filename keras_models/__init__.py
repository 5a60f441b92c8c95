"""Keras functional builders for MobileNetV1, V2 and V3 (Large, Small, minimalistic).

One entry point, `build(variant, ...)`, plus the named builders. Models take raw RGB pixels in [0, 255] by default
(`include_preprocessing=True` puts the rescaling to [-1, 1] inside the model, so an exported uint8 model is fed the
camera's bytes as they are).
"""

from keras_models import backend as _backend  # noqa: F401  (must precede TensorFlow imports)
from keras_models.common import MIN_INPUT_SIZE
from keras_models.mobilenet_v1 import mobilenet_v1
from keras_models.mobilenet_v2 import mobilenet_v2
from keras_models.mobilenet_v3 import ArchTable, ArchTableError, mobilenet_v3, mobilenet_v3_large, mobilenet_v3_small
from keras_models.tflite_weights import load_tflite_weights
from keras_models.weights import WeightsError, check_layers_match, load_imagenet, load_weights_file

VARIANTS = {"v1": "MobileNetV1", "v2": "MobileNetV2", "large": "MobileNetV3-Large", "small": "MobileNetV3-Small"}
_ALIASES = {
    "mobilenet_v1": "v1", "mobilenetv1": "v1", "mobilenet_v2": "v2", "mobilenetv2": "v2",
    "v3-large": "large", "v3_large": "large", "mobilenet_v3_large": "large",
    "v3-small": "small", "v3_small": "small", "mobilenet_v3_small": "small",
}
# keras.applications' default dropout for each family's classifier.
DEFAULT_DROPOUT = {"v1": 1e-3, "v2": 0.0, "large": 0.2, "small": 0.2}


def canonical_variant(variant: str) -> str:
    key = str(variant).lower()
    key = _ALIASES.get(key, key)
    if key not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose one of {', '.join(sorted(VARIANTS))}")
    return key


def build(
    variant: str,
    *,
    input_shape=(224, 224, 3),
    alpha: float = 1.0,
    num_classes: int = 1000,
    include_top: bool = True,
    dropout: float | None = None,
    pooling: str | None = None,
    include_preprocessing: bool = True,
    minimalistic: bool = False,
    depth_multiplier: int = 1,
    classifier_activation: str | None = "softmax",
    weights: str | None = None,
    arch: ArchTable | str | None = None,
):
    """Build a MobileNet. `variant`: v1, v2, large or small.

    `arch`: MobileNetV3 only, an `ArchTable` (or the path of one saved as JSON) giving every layer's width, e.g. a
    pipeline.netadapt result; then `alpha` stays 1 and `minimalistic` False.

    `weights`: None, "imagenet" (downloads the official Keras file), a Keras weights file, or a published quantized
    MobileNet `.tflite` (its ImageNet weights, dequantized; see keras_models.tflite_weights).
    """
    variant = canonical_variant(variant)
    if minimalistic and variant in ("v1", "v2"):
        raise ValueError("minimalistic applies to MobileNetV3 only (variants large and small)")
    if depth_multiplier != 1 and variant != "v1":
        raise ValueError("depth_multiplier applies to MobileNetV1 only")
    if arch is not None:
        if variant in ("v1", "v2"):
            raise ValueError("an architecture table (arch) applies to MobileNetV3 only (variants large and small)")
        if weights == "imagenet":
            raise ValueError("imagenet weights exist for the paper's widths only, not for an architecture table")
        if not isinstance(arch, ArchTable):
            arch = ArchTable.load(str(arch))
    common = dict(
        input_shape=input_shape,
        alpha=alpha,
        num_classes=num_classes,
        include_top=include_top,
        dropout=DEFAULT_DROPOUT[variant] if dropout is None else dropout,
        pooling=pooling,
        include_preprocessing=include_preprocessing,
        classifier_activation_name=classifier_activation,
    )
    if variant == "v1":
        model = mobilenet_v1(depth_multiplier=depth_multiplier, **common)
    elif variant == "v2":
        model = mobilenet_v2(**common)
    else:
        model = mobilenet_v3(variant, minimalistic=minimalistic, arch=arch, **common)

    if weights in (None, "none", ""):
        return model
    if weights == "imagenet":
        config = dict(
            input_shape=input_shape, alpha=alpha, include_top=include_top, num_classes=num_classes,
            minimalistic=minimalistic, depth_multiplier=depth_multiplier,
        )
        load_imagenet(model, variant, config)
    elif str(weights).lower().endswith(".tflite"):
        load_tflite_weights(model, weights)
    else:
        load_weights_file(model, weights)
    return model


def check_weights_file(model, path: str) -> None:
    """WeightsError (one line naming `path`) unless the weights file `path` fits `model`'s architecture, whatever the
    class count: for checks before the data, and so the classes, are known. `model` may receive the file's weights."""
    if str(path).lower().endswith(".tflite"):
        load_tflite_weights(model, path)  # its classifier is matched for any class count
    else:
        check_layers_match(model, path)


__all__ = [
    "ArchTable", "ArchTableError", "DEFAULT_DROPOUT", "MIN_INPUT_SIZE", "VARIANTS", "WeightsError", "build",
    "canonical_variant", "check_weights_file", "mobilenet_v1",
    "mobilenet_v2", "mobilenet_v3", "mobilenet_v3_large", "mobilenet_v3_small",
]
