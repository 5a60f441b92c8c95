"""keras_models: faithful to the papers (MAdds) and to keras.applications (params, layer names, outputs, weight
files)."""

from __future__ import annotations

import numpy as np
import pytest

import keras_models
from keras_models.backend import keras
from keras_models.profile import totals
from tests.conftest import run_module, shared_path

apps = keras.applications


def _reference(variant: str, **kw):
    """The keras.applications model for our variant name, random weights."""
    if variant == "v1":
        return apps.MobileNet(weights=None, **kw)
    if variant == "v2":
        return apps.MobileNetV2(weights=None, **kw)
    return (apps.MobileNetV3Large if variant == "large" else apps.MobileNetV3Small)(weights=None, **kw)


PARAM_CASES = [
    ("v1", dict(alpha=0.25)),
    ("v1", dict(alpha=0.5)),
    ("v1", dict(alpha=1.0)),
    ("v2", dict(alpha=0.35)),
    ("v2", dict(alpha=1.0)),
    ("small", dict(alpha=0.75)),
    ("small", dict(alpha=1.0)),
    ("small", dict(alpha=1.0, minimalistic=True)),
    ("large", dict(alpha=0.75)),
    ("large", dict(alpha=1.0)),
    ("large", dict(alpha=1.0, minimalistic=True)),
]


@pytest.mark.parametrize("variant,kw", PARAM_CASES, ids=[f"{v}-{kw}" for v, kw in PARAM_CASES])
def test_param_count_equals_keras_applications(variant, kw):
    ours = keras_models.build(variant, input_shape=(224, 224, 3), **kw)
    reference = _reference(variant, input_shape=(224, 224, 3), **kw)
    assert ours.count_params() == reference.count_params()
    # Same weight names and shapes, layer by layer: this is what loading official .h5 files by name relies on.
    ref_shapes = {layer.name: [w.shape for w in layer.get_weights()] for layer in reference.layers if layer.weights}
    our_shapes = {layer.name: [w.shape for w in layer.get_weights()] for layer in ours.layers if layer.weights}
    assert our_shapes == ref_shapes


def test_headline_param_counts():
    assert keras_models.build("small").count_params() == 2_554_968
    assert keras_models.build("large").count_params() == 5_507_432


# Multiply-adds at 224x224 reported by the papers (V1 Table 6/7, V2 Table 3, V3 Table 3).
PAPER_MADDS = [
    ("small", 1.0, 56e6),
    ("large", 1.0, 219e6),
    ("v2", 1.0, 300e6),
    ("v1", 1.0, 569e6),
    ("v1", 0.25, 41e6),
]


@pytest.mark.parametrize("variant,alpha,paper", PAPER_MADDS)
def test_madds_match_paper(variant, alpha, paper):
    _, madds = totals(keras_models.build(variant, alpha=alpha))
    assert abs(madds - paper) / paper < 0.02, f"{variant} {alpha}: {madds / 1e6:.1f}M vs paper {paper / 1e6:.0f}M"


def _randomize(model, seed=0):
    """Non-trivial weights everywhere, including BN moving statistics, so that equal outputs mean equal graphs."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        weights = layer.get_weights()
        if not weights:
            continue
        new = []
        for w, var in zip(weights, layer.weights):
            if "moving_variance" in var.name:
                new.append(rng.uniform(0.5, 1.5, w.shape).astype(w.dtype))
            elif "gamma" in var.name:
                new.append(rng.uniform(0.8, 1.2, w.shape).astype(w.dtype))
            else:
                new.append((rng.standard_normal(w.shape) * 0.1).astype(w.dtype))
        layer.set_weights(new)


@pytest.mark.parametrize("variant", ["v1", "v2", "small", "large"])
def test_same_weights_same_outputs(variant):
    shape = (96, 96, 3)
    # keras.applications V1/V2 expect [-1, 1] input; V3 rescales [0, 255] inside, like our default.
    in_model_rescale = variant in ("small", "large")
    reference = _reference(variant, input_shape=shape, classifier_activation=None, alpha=1.0)
    _randomize(reference)
    ours = keras_models.build(
        variant, input_shape=shape, include_preprocessing=in_model_rescale, classifier_activation=None, alpha=1.0
    )
    copied = keras_models.weights.copy_weights_by_name(reference, ours)
    assert copied == len([layer for layer in ours.layers if layer.weights])
    images = np.random.default_rng(1).uniform(0, 255, (4, *shape)).astype(np.float32)
    if not in_model_rescale:
        images = images / 127.5 - 1.0
    expected = reference.predict(images, verbose=0)
    got = ours.predict(images, verbose=0)
    assert np.abs(expected).max() > 1e-2  # the comparison is not between two near-zero tensors
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4)


def test_official_keras_v1_weight_file_loads_by_name():
    path = str(shared_path("weights", "keras_mobilenet_v1", "mobilenet_2_5_224_tf_no_top.h5"))
    ours = keras_models.build(
        "v1", alpha=0.25, include_top=False, include_preprocessing=False, weights=path, input_shape=(224, 224, 3)
    )
    assert ours.count_params() == 218_544
    reference = apps.MobileNet(alpha=0.25, include_top=False, weights=path, input_shape=(224, 224, 3))
    images = np.random.default_rng(0).uniform(-1, 1, (2, 224, 224, 3)).astype(np.float32)
    features = ours.predict(images, verbose=0)
    np.testing.assert_allclose(features, reference.predict(images, verbose=0), rtol=0, atol=1e-4)
    untrained = keras_models.build("v1", alpha=0.25, include_top=False, include_preprocessing=False)
    assert np.abs(untrained.predict(images, verbose=0) - features).max() > 1e-2  # weights really came from the file


def test_h_swish_is_built_from_standard_layers_and_matches_keras():
    model = keras_models.build("small", input_shape=(64, 64, 3), alpha=0.5, num_classes=3)
    kinds = {type(layer).__name__ for layer in model.layers}
    assert "TFOpLambda" not in kinds and "Lambda" not in kinds
    x = keras.Input((8,))
    ours = keras.Model(x, keras_models.blocks.hard_swish(x))
    values = np.linspace(-8, 8, 8 * 50, dtype=np.float32).reshape(50, 8)
    expected = values * np.clip(values + 3, 0, 6) / 6
    np.testing.assert_allclose(ours.predict(values, verbose=0), expected, atol=1e-6)


def test_se_squeezes_to_a_quarter_of_the_expansion():
    model = keras_models.build("small")
    # Block 4 expands 40 -> 240 channels; its SE bottleneck is 240 / 4 = 60 -> make_divisible -> 64.
    assert model.get_layer("expanded_conv_4/squeeze_excite/Conv").filters == keras_models.blocks.make_divisible(240 / 4)
    assert model.get_layer("Conv").filters == 16


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(variant="v4"), "unknown variant"),
        (dict(variant="small", alpha=0), "alpha"),
        (dict(variant="small", input_shape=(16, 16, 3)), ">= 32"),
        (dict(variant="small", input_shape=(64, 64, 1)), r"3 \(RGB\) channels"),
        (dict(variant="v2", minimalistic=True), "minimalistic applies to MobileNetV3"),
        (dict(variant="small", depth_multiplier=2), "depth_multiplier"),
        (dict(variant="large", pooling="median"), "pooling"),
        (dict(variant="large", num_classes=0), "num_classes"),
        (dict(variant="small", dropout=1.5), "dropout"),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs, message):
    variant = kwargs.pop("variant")
    with pytest.raises(ValueError, match=message):
        keras_models.build(variant, **kwargs)


def test_missing_weights_file_is_a_clear_error(tmp_path):
    with pytest.raises(keras_models.WeightsError, match="not found"):
        keras_models.build("small", input_shape=(64, 64, 3), weights=str(tmp_path / "nope.h5"))


def test_imagenet_weights_offline_fail_clearly(monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("[Errno -3] Temporary failure in name resolution")

    # Whatever the network here, simulate the download failing the way it does offline.
    monkeypatch.setattr(keras.utils, "get_file", offline)
    import tf_keras.src.applications.mobilenet_v3 as keras_v3

    monkeypatch.setattr(keras_v3.data_utils, "get_file", offline)
    with pytest.raises(keras_models.WeightsError, match="offline.*--weights"):
        keras_models.build("small", weights="imagenet")


def test_profile_cli_prints_totals():
    result = run_module("keras_models.profile", "small")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "2,554,968" in result.stdout and "56.5M MAdds" in result.stdout
    bad = run_module("keras_models.profile", "small", "--size", "8")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and ">= 32" in bad.stderr
