"""The offline ImageNet start: weights of Google's published quantized MobileNets load into our builders and predict
what the files predict; mismatched or corrupt files are one-line errors; QAT starts from the file's ranges; the
transfer recipe runs end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest

import keras_models
from keras_models.backend import keras
from keras_models.tflite_weights import read_tflite
from pipeline.preprocessing import load_eval_image
from tests.conftest import run_pipeline, shared_path
from tflite_export.export import run_tflite

V3_SMALL = ("mobilenet_v3", "v3-small_224_1.0_uint8.tflite")
V2 = ("coral", "mobilenet_v2_1.0_224_quant.tflite")


def _file_top1(path, pixels: np.ndarray) -> np.ndarray:
    """The published file's top-1 (background class at 0) for pixel bytes, fed as apps feed it."""
    from ai_edge_litert.interpreter import Interpreter

    content = path.read_bytes()
    interpreter = Interpreter(model_content=content)
    scale, zero_point = interpreter.get_input_details()[0]["quantization"]
    # run_tflite quantizes float inputs with the file's own input quantization: give it values that become the bytes.
    return run_tflite(content, (pixels - zero_point) * scale).argmax(-1)


@pytest.mark.parametrize("variant, file", [("small", V3_SMALL), ("v2", V2)])
def test_weights_from_a_published_tflite_predict_what_the_file_predicts(variant, file):
    path = shared_path("reference_models", *file)
    photos = sorted(shared_path("datasets", "test-photos").iterdir())
    pixels = np.stack([np.round(load_eval_image(str(p), 224)) for p in photos])
    model = keras_models.build(variant, num_classes=1001, weights=str(path))
    ours = model.predict_on_batch(pixels).argmax(-1)
    # The float model and the int8 file differ by rounding only: on these 13 unambiguous photos they agree on all but
    # at most one (V3-Small's cats_and_dogs.jpg); a wrong layout or a missed bias agrees on none.
    assert np.sum(ours == _file_top1(path, pixels)) >= len(photos) - 1
    # 1000 classes: the background row is dropped, every other logit is the same.
    model_1000 = keras_models.build(variant, num_classes=1000, weights=str(path), classifier_activation=None)
    model_1001 = keras_models.build(variant, num_classes=1001, weights=str(path), classifier_activation=None)
    np.testing.assert_allclose(model_1000.predict_on_batch(pixels[:2]), model_1001.predict_on_batch(pixels[:2])[:, 1:],
                               rtol=1e-4, atol=1e-4)


def test_batch_norm_holds_the_folded_bias_and_a_new_head_stays_untouched():
    path = shared_path("reference_models", *V3_SMALL)
    graph = read_tflite(str(path))
    model = keras_models.build("small", input_shape=(64, 64, 3), num_classes=3, weights=str(path))
    gamma, beta, mean, variance = model.get_layer("Conv/BatchNorm").get_weights()
    np.testing.assert_array_equal(beta, graph.convs[0].bias)
    assert np.all(gamma == 1) and np.all(mean == 0) and np.allclose(variance + 1e-3, 1)
    fresh = keras_models.build("small", input_shape=(64, 64, 3), num_classes=3)
    assert model.get_layer("Logits").get_weights()[0].shape == fresh.get_layer("Logits").get_weights()[0].shape


@pytest.mark.parametrize("variant, kwargs, first_mismatch", [
    ("small", {"alpha": 0.75}, "layer 'expanded_conv_3/project' conv"),
    ("large", {}, "layer 'expanded_conv/depthwise'"),
    ("v2", {}, "layer 'Conv1' conv"),
])
def test_a_file_of_another_architecture_names_the_first_mismatch(variant, kwargs, first_mismatch):
    path = shared_path("reference_models", *(V3_SMALL if variant != "small" or kwargs else V2))
    with pytest.raises(keras_models.WeightsError) as err:
        keras_models.build(variant, input_shape=(64, 64, 3), num_classes=10, weights=str(path), **kwargs)
    message = str(err.value)
    assert "\n" not in message and "does not match the model" in message and first_mismatch in message, message


def test_a_truncated_tflite_is_a_one_line_error(tmp_path):
    broken = tmp_path / "broken.tflite"
    broken.write_bytes(shared_path("reference_models", *V3_SMALL).read_bytes()[:40_000])
    with pytest.raises(keras_models.WeightsError) as err:
        keras_models.build("small", input_shape=(64, 64, 3), weights=str(broken))
    assert "\n" not in str(err.value) and "broken.tflite" in str(err.value)


def test_qat_starts_from_the_files_activation_ranges():
    from pipeline.qat import _output_range, import_activation_ranges, quantize_model

    path = shared_path("reference_models", *V3_SMALL)
    graph = read_tflite(str(path))
    model = keras_models.build("small", input_shape=(64, 64, 3), num_classes=1000, weights=str(path))
    from pipeline.transfer import unfreeze_all_but_batch_norm

    unfreeze_all_but_batch_norm(model)
    qat = quantize_model(model)
    # The frozen BatchNorms (they hold the file's folded biases) stay frozen in the QAT model.
    batch_norms = [layer.layer for layer in qat.layers if isinstance(getattr(layer, "layer", None),
                                                                      keras.layers.BatchNormalization)]
    assert batch_norms and not any(layer.trainable for layer in batch_norms)
    imported = import_activation_ranges(qat, graph.ranges)
    # Every conv/BN output, h-swish, SE tensor, residual add and the head that the file holds: 107 in V3-Small.
    assert len(imported) == 107
    low, high = (float(v) for v in _output_range(qat.get_layer("quant_expanded_conv_3/expand/act/div6")))
    assert (low, high) == pytest.approx(graph.ranges["MobilenetV3/expanded_conv_3/expand/hard_swish/mul_1"])
    product = [float(v) for v in _output_range(qat.get_layer("quant_expanded_conv_3/expand/act/mul"))]
    assert product == pytest.approx([6 * low, 6 * high])


def test_squeeze_convs_get_weight_fake_quant_and_empty_channels_keep_their_bias():
    from pipeline.qat import _kernel_ranges, quantize_model, widen_empty_kernel_ranges

    model = keras_models.build("small", input_shape=(32, 32, 3), alpha=0.35, num_classes=4)
    qat = quantize_model(model)
    # tfmot's Conv2D -> ReLU transform dropped the squeeze convs' weight quantization (9 in V3-Small).
    squeeze = [layer for layer in qat.layers if layer.name.endswith("squeeze_excite/Conv")]
    assert len(squeeze) == 9 and all(layer._weight_vars for layer in squeeze)
    minimum, maximum = next((lo, hi) for lo, hi in _kernel_ranges(qat) if "squeeze_excite/Conv/" in lo.name)
    minimum.assign(np.where(np.arange(minimum.shape[0]) == 0, 0.0, -1.0))
    maximum.assign(np.where(np.arange(maximum.shape[0]) == 0, 0.0, 2.0))
    assert widen_empty_kernel_ranges(qat) >= 1
    assert float(minimum[0]) == -2.0 and float(maximum[0]) == 2.0 and float(maximum[1]) == 2.0


def test_transfer_recipe_runs_end_to_end_with_frozen_batch_norm(tmp_path):
    photos = shared_path("datasets", "hymenoptera_data", "train")
    folder = tmp_path / "photos"
    for cls in ("ants", "bees"):
        (folder / cls).mkdir(parents=True)
        for image in sorted((photos / cls).iterdir())[:12]:
            (folder / cls / image.name).symlink_to(image)
    out = tmp_path / "run"
    result = run_pipeline([
        "--weights", shared_path("reference_models", *V3_SMALL), "--dataset", folder, "--image_size", "32",
        "--batch_size", "8", "--head_epochs", "1", "--float_epochs", "1", "--noqat", "--calibration_images", "8", "--benchmark_runs", "0", "--verbose", "0", "--output_dir", out])
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["config"]["recipe"] == "transfer" and set(report["stages"]) >= {"head", "float"}
    assert (out / "labels.txt").read_text().split() == ["ants", "bees"]
    # BatchNorm stayed in inference mode through head and fine-tune: the imported identity statistics are intact.
    float_model = keras.models.load_model(out / "float_model.h5", compile=False)
    _, _, mean, variance = float_model.get_layer("expanded_conv_5/expand/BatchNorm").get_weights()
    assert np.all(mean == 0) and np.allclose(variance + 1e-3, 1)
