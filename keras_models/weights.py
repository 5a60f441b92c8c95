"""Loading pretrained weights: official Keras ImageNet weights, or a local file.

Our builders use keras.applications' layer names and weight shapes, so weights move between the two by layer name.
For `imagenet`, we let keras.applications itself download and verify its file (it knows the URLs and hashes) and copy
the weights over by name, instead of keeping a second copy of Google's URL tables here.
"""

from __future__ import annotations

import os

from keras_models.backend import keras


class WeightsError(ValueError):
    """Weights could not be loaded; the message says why and what to do instead."""


def copy_weights_by_name(source: keras.Model, target: keras.Model) -> int:
    """Copy every layer's weights from `source` to the same-named layer of `target`; returns the number of layers
    copied.

    Raises WeightsError when a same-named layer has weights of a different shape (a different architecture).
    """
    source_layers = {layer.name: layer for layer in source.layers if layer.weights}
    copied = 0
    for layer in target.layers:
        if not layer.weights or layer.name not in source_layers:
            continue
        weights = source_layers[layer.name].get_weights()
        expected = [w.shape for w in layer.get_weights()]
        if [w.shape for w in weights] != expected:
            raise WeightsError(f"layer {layer.name!r}: source weights {[w.shape for w in weights]} != {expected}")
        layer.set_weights(weights)
        copied += 1
    return copied


def _keras_twin(variant: str, config: dict, weights) -> keras.Model:
    """The keras.applications model with our model's configuration."""
    apps = keras.applications
    # ImageNet weights for another number of classes: take the backbone, leave our new classifier initialized.
    include_top = config["include_top"] and config.get("num_classes", 1000) == 1000
    common = dict(input_shape=config["input_shape"], include_top=include_top, weights=weights)
    if variant == "v1":
        return apps.MobileNet(alpha=config["alpha"], depth_multiplier=config.get("depth_multiplier", 1), **common)
    if variant == "v2":
        return apps.MobileNetV2(alpha=config["alpha"], **common)
    builder = apps.MobileNetV3Large if variant == "large" else apps.MobileNetV3Small
    return builder(alpha=config["alpha"], minimalistic=config.get("minimalistic", False), **common)


def load_imagenet(model: keras.Model, variant: str, config: dict) -> None:
    """Download (once; Keras caches it) the official ImageNet weights for this configuration and load them."""
    try:
        twin = _keras_twin(variant, config, "imagenet")
    except ValueError as err:  # keras.applications says which alpha/size combinations have weights
        raise WeightsError(f"no official ImageNet weights for this configuration: {err}") from None
    except Exception as err:  # noqa: BLE001 - any download failure (offline, proxy, HTTP error) means the same to users
        raise WeightsError(
            f"could not download the official Keras ImageNet weights ({type(err).__name__}: "
            f"{str(err).splitlines()[0]}); "
            "this machine may be offline: pass a published quantized MobileNet instead (--weights "
            "PATH.tflite, e.g. Google's v3-small_224_1.0_uint8.tflite, for its ImageNet weights), a local weights file "
            "(--weights /path/to/weights.h5), or train from scratch (--weights none)"
        ) from None
    copy_weights_by_name(twin, model)


def load_weights_file(model: keras.Model, path: str) -> None:
    """Load a Keras .h5 weights file by layer name, or a TF checkpoint / .weights.h5 saved from our own models."""
    if not os.path.exists(path) and not os.path.exists(path + ".index"):
        raise WeightsError(f"weights file not found: {path}")
    check_layers_match(model, path)
    try:
        if path.lower().endswith((".h5", ".hdf5")):
            model.load_weights(path, by_name=True)
        else:
            model.load_weights(path).expect_partial()
    except Exception as err:  # noqa: BLE001 - corrupt/incompatible files raise many types; report one line
        raise WeightsError(f"could not load weights from {path}: {type(err).__name__}: "
                           f"{str(err).splitlines()[0]}") from None


def _h5_layer_shapes(path: str) -> dict[str, list[tuple]]:
    """Layer name -> weight shapes of a Keras HDF5 file (a weights file, or a whole model's `model_weights`)."""
    import h5py

    def text(value) -> str:
        return value.decode("utf-8") if isinstance(value, bytes) else str(value)

    try:
        with h5py.File(path, "r") as f:
            root = f["model_weights"] if "model_weights" in f else f
            return {text(name): [tuple(root[text(name)][text(w)].shape)
                                 for w in root[text(name)].attrs.get("weight_names", [])]
                    for name in root.attrs.get("layer_names", [])}
    except (OSError, KeyError, ValueError) as err:
        raise WeightsError(f"{path} is not a readable Keras HDF5 weights file ({str(err).splitlines()[0]})") from None


def check_layers_match(model: keras.Model, path: str) -> None:
    """For a Keras HDF5 file (other formats are not read here). Weights load by layer name, and a name the file lacks
    is skipped silently: a file of another architecture (or width) would load nothing and leave a random backbone.
    Refuse when fewer than half of the model's layers with weights find a layer of the same name and shapes in the
    file."""
    if not os.path.exists(path):
        raise WeightsError(f"weights file not found: {path}")
    if not path.lower().endswith((".h5", ".hdf5")):
        return
    shapes = _h5_layer_shapes(path)
    layers = [layer for layer in model.layers if layer.weights]
    matched = sum(shapes.get(layer.name) == [tuple(w.shape) for w in layer.weights] for layer in layers)
    if 2 * matched < len(layers):
        raise WeightsError(f"{path} matches {matched} of the model's {len(layers)} layers with weights by name and "
                           f"shape: it holds the weights of another architecture or width ({model.name} expected)")
