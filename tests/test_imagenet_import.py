"""The offline ImageNet start: weights of Google's published quantized MobileNets load into our builders and predict
what the files predict; mismatched or corrupt files are one-line errors; QAT starts from the file's ranges; the
transfer recipe runs end to end."""

from __future__ import annotations

import numpy as np
import pytest

import keras_models
from keras_models.backend import keras
from keras_models.tflite_weights import read_tflite
from tests.conftest import shared_path
from tflite_export.export import run_tflite
from tflite_export.preprocessing import load_eval_image

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
    """The import's QAT model holds the file's ranges as the file has them; the clamp the training command applies
    would move 28 of them (which is why the import does not clamp)."""
    from pipeline.qat import _output_range, clamp_saturated_ranges, prepare_qat_model, tf_slim_v3_tensor

    path = shared_path("reference_models", *V3_SMALL)
    graph = read_tflite(str(path))
    model = keras_models.build("small", input_shape=(64, 64, 3), num_classes=1000, weights=str(path))
    from pipeline.transfer import unfreeze_all_but_batch_norm

    unfreeze_all_but_batch_norm(model)
    calibration = [np.random.default_rng(0).uniform(0, 255, (2, 64, 64, 3)).astype(np.float32)]
    qat, setup = prepare_qat_model(model, calibration, graph.ranges, clamp=False)
    # The frozen BatchNorms (they hold the file's folded biases) stay frozen in the QAT model.
    batch_norms = [layer.layer for layer in qat.layers if isinstance(getattr(layer, "layer", None),
                                                                      keras.layers.BatchNormalization)]
    assert batch_norms and not any(layer.trainable for layer in batch_norms)
    # Every conv/BN output, h-swish, SE tensor, residual add and the head that the file holds: 107 in V3-Small, less
    # the 10 average pools, whose file ranges are their inputs' (uint8 AVERAGE_POOL_2D) and too coarse for a mean.
    imported = {layer.name: graph.ranges[tf_slim_v3_tensor(layer.layer.name)] for layer in qat.layers
                if _output_range(layer) and tf_slim_v3_tensor(getattr(layer, "layer", layer).name) in graph.ranges}
    assert setup.imported == len(imported) == 97 and setup.clamped == 0 and setup.calibration_batches == 1
    assert not [name for name in imported if "AvgPool" in name or "global_pool" in name]
    for name, file_range in imported.items():
        assert [float(v) for v in _output_range(qat.get_layer(name))] == pytest.approx(file_range), name
    low, high = imported["quant_expanded_conv_3/expand/act/div6"]
    product = [float(v) for v in _output_range(qat.get_layer("quant_expanded_conv_3/expand/act/mul"))]
    assert product == pytest.approx([6 * low, 6 * high])
    clamp_saturated_ranges(qat)
    moved = [name for name, file_range in imported.items()
             if [float(v) for v in _output_range(qat.get_layer(name))] != pytest.approx(file_range)]
    assert len(moved) == 28 and all(name.endswith(("BatchNorm", "squeeze_excite/Conv_1", "Conv_2")) for name in moved)


def test_squeeze_convs_get_weight_fake_quant_and_empty_channels_keep_their_bias():
    from pipeline.qat import quantize_model
    from tflite_export.quantization import kernel_ranges, widen_empty_kernel_ranges

    model = keras_models.build("small", input_shape=(32, 32, 3), alpha=0.35, num_classes=4)
    qat = quantize_model(model)
    # tfmot's Conv2D -> ReLU transform dropped the squeeze convs' weight quantization (9 in V3-Small).
    squeeze = [layer for layer in qat.layers if layer.name.endswith("squeeze_excite/Conv")]
    assert len(squeeze) == 9 and all(layer._weight_vars for layer in squeeze)
    minimum, maximum = next((lo, hi) for lo, hi in kernel_ranges(qat) if "squeeze_excite/Conv/" in lo.name)
    minimum.assign(np.where(np.arange(minimum.shape[0]) == 0, 0.0, -1.0))
    maximum.assign(np.where(np.arange(maximum.shape[0]) == 0, 0.0, 2.0))
    assert widen_empty_kernel_ranges(qat) >= 1
    assert float(minimum[0]) == -2.0 and float(maximum[0]) == 2.0 and float(maximum[1]) == 2.0


def test_distillation_targets_are_the_files_probabilities_without_background():
    from pipeline.distill import tflite_soft_targets

    path = shared_path("reference_models", *V3_SMALL)
    photos = sorted(shared_path("datasets", "test-photos").iterdir())[:3]
    pixels = np.stack([np.round(load_eval_image(str(p), 224)) for p in photos])
    targets = tflite_soft_targets(str(path), pixels, classes=1000)
    assert targets.shape == (3, 1000) and np.allclose(targets.sum(-1), 1, atol=1e-5)
    np.testing.assert_array_equal(targets.argmax(-1), _file_top1(path, pixels) - 1)


def test_keep_ranges_holds_imported_ranges_through_training_steps():
    from pipeline.qat import KeepRanges, _output_range, quantize_model

    qat = quantize_model(keras_models.build("small", input_shape=(32, 32, 3), alpha=0.35, num_classes=4))
    minimum, _ = _output_range(qat.get_layer("quant_expanded_conv_3/squeeze_excite/Mul"))
    minimum.assign(-1.5)
    keep = KeepRanges(qat)
    qat(np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype(np.float32), training=True)
    assert float(minimum) != -1.5  # the moving average moved it ...
    keep.on_train_batch_end(0)
    assert float(minimum) == -1.5  # ... and the callback put the imported value back


def test_every_imported_layer_reproduces_the_files_output_from_the_files_input():
    """Layer by layer, not end to end: each conv (+ BatchNorm, + ReLU where the file fuses one) fed the file's own
    int8 input tensor gives the file's output tensor up to the file's rounding: about a quarter of a quantization step
    on average (uniform rounding error), never much more than one. A wrong layout, stride, padding or folded bias is
    off by many steps."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    path = shared_path("reference_models", *V3_SMALL)
    model = keras_models.build("small", num_classes=1001, weights=str(path))
    interpreter = Interpreter(model_path=str(path), experimental_preserve_all_tensors=True,
                              experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    interpreter.allocate_tensors()
    photo = shared_path("datasets", "test-photos", "grace_hopper.jpg")
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"],
                           np.round(load_eval_image(str(photo), 224)).astype(np.uint8)[None])
    interpreter.invoke()
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}

    def dequantized(index):
        scale, zero_point = tensors[index]["quantization"]
        return (interpreter.get_tensor(index).astype(np.float32) - zero_point) * scale, scale

    ops = [op for op in interpreter._get_ops_details() if op["op_name"] in ("CONV_2D", "DEPTHWISE_CONV_2D")]
    layers = [layer for layer in model.layers if type(layer) in (keras.layers.Conv2D, keras.layers.DepthwiseConv2D)]
    assert len(ops) == len(layers) == 54
    for layer, op in zip(layers, ops):
        x, _ = dequantized(op["inputs"][0])
        expected, step = dequantized(op["outputs"][0])
        source = layer.inbound_nodes[0].inbound_layers
        if isinstance(source, keras.layers.ZeroPadding2D):
            x = source(x)
        y = layer(x)
        consumer = layer.outbound_nodes[0].outbound_layer
        if isinstance(consumer, keras.layers.BatchNormalization):
            y = consumer(y, training=False)
        if tensors[op["outputs"][0]]["name"].endswith("/Relu"):
            y = np.maximum(y, 0)
        # The file's output saturates at the ends of its 8-bit range (part of its arithmetic, hit by some photos).
        output = tensors[op["outputs"][0]]
        (scale, zero_point), info = output["quantization"], np.iinfo(output["dtype"])
        y = np.clip(y, (info.min - zero_point) * scale, (info.max - zero_point) * scale)
        steps = np.abs(np.asarray(y).reshape(expected.shape) - expected) / step
        assert steps.mean() < 0.35 and steps.max() < 1.5, f"{layer.name}: {steps.mean():.2f} steps from the file on " \
                                                          f"average, {steps.max():.2f} at most"


def test_import_cli_refuses_a_mismatched_file_in_one_line_and_writes_nothing(tmp_path):
    from tests.conftest import error_line, run_module

    out = tmp_path / "out"
    result = run_module("pipeline.import_tflite", "--weights", shared_path("reference_models", *V2),
                        "--variant", "small", "--labels", shared_path("labels", "imagenet_classes.txt"),
                        "--calibration_dir", shared_path("datasets", "test-photos"), "--output_dir", out)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert "does not match the model" in error_line(result.returncode, result.stderr, "pipeline.import_tflite")
    # No artifact, not even a partial one.
    assert not any(path.is_file() or path.is_symlink() for path in out.rglob("*"))
