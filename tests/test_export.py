"""tflite_export: both conversion paths give fully-integer files without HARD_SWISH; QAT covers every h-swish, SE and
residual op with a fake-quant node; the export CLI fails cleanly on bad models."""

from __future__ import annotations

import numpy as np
import pytest

import keras_models
from keras_models.backend import keras
from pipeline.qat import clamp_saturated_ranges, quantize_model, saturated_range_bounds
from tests.conftest import run_module, tiny_classifier_keras
from tflite_export.convert import ConversionError, convert
from tflite_export.quantization import OutputQuantizeConfig
from tflite_export.verify import verify

SIZE = 32
RNG = np.random.default_rng(0)
CALIBRATION = [RNG.uniform(0, 255, (1, SIZE, SIZE, 3)).astype(np.float32) for _ in range(8)]


def representative():
    return iter(CALIBRATION)


@pytest.fixture(scope="module")
def float_small():
    """An untrained model: enough for graph-level properties (annotation, op types)."""
    keras.utils.set_random_seed(0)
    return keras_models.build("small", input_shape=(SIZE, SIZE, 3), alpha=0.35, num_classes=5)


@pytest.fixture(scope="module")
def trained(tiny_run):
    """The float and QAT models of the session's tiny pipeline run. Trained weights matter for delegation: with random
    weights activations are so small that XNNPACK refuses some int8 ADDs (input/output scale ratio below 2**-8)."""
    from tflite_export.quantization import quantize_scope

    run_dir, _ = tiny_run
    with quantize_scope():
        return (keras.models.load_model(run_dir / "float_model.h5", compile=False),
                keras.models.load_model(run_dir / "qat_model", compile=False))


# Google's V3-Small has 19 HARD_SWISH ops: stem, 2 per h-swish bneck (8 of them), Conv_1 and Conv_2.
HSWISH_COUNT = 19


@pytest.mark.parametrize("io_dtype", ["uint8", "int8"])
def test_post_training_path_is_integer_only_without_hard_swish(trained, io_dtype):
    content = convert(trained[0], representative, io_dtype=io_dtype)
    analysis = verify(content, io_dtype=io_dtype)  # raises with every problem listed if anything is off
    assert analysis.op_histogram.get("HARD_SWISH", 0) == 0 and analysis.float_tensors == []
    assert analysis.inputs[0].dtype == io_dtype and analysis.outputs[0].dtype == io_dtype
    assert analysis.xnnpack_partitions == 1


def test_qat_path_is_integer_only_without_hard_swish(trained):
    analysis = verify(convert(trained[1], representative))
    assert analysis.op_histogram.get("HARD_SWISH", 0) == 0 and analysis.float_tensors == []
    assert analysis.xnnpack_partitions == 1
    # A fixed batch of 1: the classifier head is a plain RESHAPE, not SHAPE/STRIDED_SLICE/PACK.
    assert not {"SHAPE", "STRIDED_SLICE", "PACK"} & set(analysis.op_histogram)


def test_builtin_hswish_keeps_one_hard_swish_per_h_swish(trained):
    # verify() accepts the HARD_SWISH ops it was asked to keep (and the partitions they split XNNPACK into).
    analysis = verify(convert(trained[0], representative, hswish="builtin"), allow_hard_swish=True)
    assert analysis.op_histogram["HARD_SWISH"] == HSWISH_COUNT
    assert analysis.float_tensors == []


def test_builtin_hswish_is_refused_for_qat_models(float_small):
    with pytest.raises(ConversionError, match="--noqat"):
        convert(quantize_model(float_small), representative, hswish="builtin")


def test_qat_rounds_every_h_swish_se_and_residual_tensor_the_int8_file_holds(float_small):
    qat = quantize_model(float_small)
    checked, fused = 0, 0
    for layer in qat.layers:
        inner = getattr(layer, "layer", None)
        if isinstance(inner, (keras.layers.Multiply, keras.layers.Rescaling, keras.layers.Add)):
            quantizers = layer.quantize_config.get_output_quantizers(inner)
            if inner.name.endswith("add3"):
                # x + 3 is fused with its RELU6 into one int8 ADD: the file never rounds it, so neither does QAT.
                assert not quantizers, f"{layer.name} is rounded but the int8 file fuses it with its RELU6"
                fused += 1
            else:
                assert quantizers, f"{layer.name} has no output fake-quant"
                checked += 1
        elif isinstance(layer, (keras.layers.Multiply, keras.layers.Rescaling, keras.layers.Add)):
            pytest.fail(f"{layer.name} was left unwrapped by QAT")
    # 19 h-swish (mul, div6 each) + 9 SE (div6, gate) + input rescale + residual adds; an add3 in each of the 28.
    assert fused == HSWISH_COUNT + 9 and checked >= 2 * HSWISH_COUNT + 2 * 9 + 1
    assert any(isinstance(getattr(layer, "quantize_config", None), OutputQuantizeConfig) for layer in qat.layers)
    # Weights: symmetric, one range per output channel, as int8 TFLite kernels have: Conv2D (tfmot's default) and
    # DepthwiseConv2D (ours; tfmot's gives one range per kernel).
    for name, channels in (("quant_Conv_1", qat.get_layer("quant_Conv_1").layer.filters),
                           ("quant_expanded_conv_3/depthwise",
                            qat.get_layer("quant_expanded_conv_3/depthwise").input_shape[-1])):
        kernel, quantizer, quantizer_vars = qat.get_layer(name)._weight_vars[0]
        assert quantizer.per_axis and quantizer.symmetric and quantizer.narrow_range, name
        assert quantizer_vars["min_var"].shape == (channels,) == quantizer_vars["max_var"].shape, name


def test_qat_clamps_ranges_where_h_swish_and_hard_sigmoid_saturate(float_small):
    """The 19 tensors that feed only an h-swish get ranges no lower than -3 (it is 0 below), the 9 squeeze-and-excite
    logits that feed only a hard sigmoid [-3, 3] (constant beyond); every other range is left alone."""
    qat = quantize_model(float_small)
    ranges = [w for w in qat.non_trainable_weights if w.name.endswith(("_min:0", "_max:0")) and "kernel" not in w.name]
    for w in ranges:
        w.assign(-10.0 if w.name.endswith("_min:0") else 10.0)
    bounds = saturated_range_bounds(qat)
    assert clamp_saturated_ranges(qat) == len(bounds) == HSWISH_COUNT + 9
    clamped = {}
    for minimum, maximum, _, highest in bounds:
        clamped[minimum.name], clamped[maximum.name] = -3.0, (10.0 if highest is None else 3.0)
    assert sum(1 for _, _, _, highest in bounds if highest is not None) == 9
    assert all("squeeze_excite" in m.name for m, _, _, highest in bounds if highest is not None)
    for w in ranges:
        expected = clamped.get(w.name, -10.0 if w.name.endswith("_min:0") else 10.0)
        assert float(w.numpy()) == expected, w.name


def _write_pngs(folder, count: int, seed: int = 0, pixels=None) -> None:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        image = pixels[i] if pixels is not None else rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
        Image.fromarray(image).save(folder / f"image {i}.png")


def test_export_cli_converts_saved_float_and_qat_models(tiny_run, tmp_path):
    """Float model: class folders of the run's own kind of images, matched to the outputs by the run's labels file,
    give the accuracy check. QAT model: a flat folder of unlabelled images, labels from the run directory."""
    from pipeline import synthetic

    run_dir, _ = tiny_run
    x, y = synthetic.generate(48, SIZE, seed=1, split="test")
    classes = tmp_path / "classes"
    for index, name in enumerate(synthetic.CLASS_NAMES):
        _write_pngs(classes / name, int((y == index).sum()), pixels=x[y == index])
    flat = tmp_path / "flat"
    _write_pngs(flat, 6, pixels=x[:6])
    for source, dataset, extra in ((run_dir / "float_model.h5", classes, ["--labels", run_dir / "labels.txt"]),
                                   (run_dir / "qat_model", flat, [])):
        out = tmp_path / source.stem
        result = run_module("tflite_export.export", source, "--dataset", dataset, "--output_dir", out,
                            "--calibration_images", "16", *extra)
        assert result.returncode == 0, result.stderr[-2000:]
        analysis = verify(str(out / "model.tflite"))
        assert analysis.has_metadata and (out / "labels.txt").read_text().split() == synthetic.CLASS_NAMES
        if dataset == classes:
            assert "label-file index by folder name" in result.stdout and "on 48 labelled images" in result.stdout
        else:
            assert "calibrated on 6 images" in result.stdout and "labelled images" not in result.stdout


def test_export_cli_calibrates_on_a_flat_folder_of_unlabelled_images(tmp_path, capsys):
    """`--dataset` may be a folder of photos in no class folders (the issue: it was refused); without labels to check
    accuracy against, the export calibrates on them and names the outputs after --labels."""
    from tflite_export import export
    from tflite_export.cli import run_main
    from tflite_export.model_card import SCHEMA_VERSION, ModelCard

    model_path = tmp_path / "model" / "tiny.h5"
    model_path.parent.mkdir()
    tiny_classifier_keras(classes=3, batch_size=None).save(model_path)
    photos = tmp_path / "photos"
    _write_pngs(photos, 5)
    (photos / "notes.txt").write_text("not an image")
    labels = tmp_path / "names.txt"
    labels.write_text("cat\ndog\nbird\n")
    out = tmp_path / "out"

    code = run_main(export.main, [str(model_path), "--dataset", str(photos), "--labels", str(labels),
                                  "--output_dir", str(out)], prog="tflite_export.export")
    printed = capsys.readouterr()
    assert code == 0, printed.err
    assert "calibrated on 5 images" in printed.out
    analysis = verify(str(out / "model.tflite"))
    assert analysis.is_integer_only and analysis.inputs[0].dtype == "uint8"
    card = ModelCard.read(out / "model_card.json")
    assert card.schema_version == SCHEMA_VERSION and card.classes == ["cat", "dog", "bird"]
    assert (out / "labels.txt").read_text().split() == ["cat", "dog", "bird"]

    # Without --labels and no labels.txt beside the model, nothing names the outputs: one line, nothing written.
    code = run_main(export.main, [str(model_path), "--dataset", str(photos), "--output_dir", str(tmp_path / "out2")],
                    prog="tflite_export.export")
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "unlabelled images" in err[0] and "--labels" in err[0], err
    assert not (tmp_path / "out2").exists() or not any((tmp_path / "out2").iterdir())


def test_export_cli_checks_accuracy_on_class_folders_matched_to_outputs_by_name(tmp_path, capsys):
    """A model that names each solid colour after its brightest channel, class folders named after the labels (whose
    sorted order is not the output order): the accuracy check must score 100%, i.e. compare each image with the
    output its folder names."""
    from tflite_export import export
    from tflite_export.cli import run_main

    inputs = keras.Input((SIZE, SIZE, 3))
    mean_colour = keras.layers.GlobalAveragePooling2D()(inputs)
    scores = keras.layers.Dense(3, kernel_initializer=keras.initializers.Identity(0.05), bias_initializer="zeros")(
        mean_colour)
    model = keras.Model(inputs, keras.layers.Softmax()(scores))
    model_path = tmp_path / "colours.h5"
    model.save(model_path)
    labels = ["zebra", "ant", "moose"]  # outputs 0, 1, 2: red, green, blue; sorted folders: ant, moose, zebra
    (tmp_path / "labels.txt").write_text("\n".join(labels) + "\n")
    for channel, name in enumerate(labels):
        colours = np.zeros((2, 40, 40, 3), np.uint8)
        colours[..., channel] = np.array([200, 250])[:, None, None]
        _write_pngs(tmp_path / "data" / name, 2, pixels=colours)

    code = run_main(export.main, [str(model_path), "--dataset", str(tmp_path / "data"), "--labels",
                                  str(tmp_path / "labels.txt"), "--output_dir", str(tmp_path / "out")],
                    prog="tflite_export.export")
    printed = capsys.readouterr()
    assert code == 0, printed.err
    assert "label-file index by folder name" in printed.out
    assert "int8 top-1 1.0000, keras top-1 1.0000, agreement 1.0000 on 6 labelled images" in printed.out


@pytest.mark.parametrize("kind", ["missing", "garbage"])
def test_export_cli_bad_model_is_a_one_line_error_without_output(kind, tmp_path):
    model = tmp_path / "model.h5"
    if kind == "garbage":
        model.write_bytes(b"this is not a keras model")
    out = tmp_path / "out"
    _write_pngs(tmp_path / "photos", 1)
    (tmp_path / "labels.txt").write_text("a\nb\n")
    result = run_module("tflite_export.export", model, "--dataset", tmp_path / "photos", "--labels",
                        tmp_path / "labels.txt", "--output_dir", out)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("tflite_export.export: error:")
    assert not out.exists() or not any(out.iterdir())


def test_logits_export_ends_at_the_logits_and_says_so(trained, tmp_path, capsys):
    """`logits=True` drops the final SOFTMAX (with int8 I/O the whole file is then one XNNPACK partition), tracks the
    Keras model's logits, and names its output as logits in the metadata and the card (the app applies softmax).
    The int8 I/O is said in one line not to be a browser file."""
    from tflite_export.export import ModelInfo, ending_at_logits, export_model, held_out_predictions, run_tflite
    from tflite_export.metadata import read_metadata
    from tflite_export.model_card import ModelCard

    qat = trained[1]
    classes = [f"c{i}" for i in range(qat.output_shape[-1])]
    images = np.concatenate(CALIBRATION)
    report = export_model(qat, representative, output_dir=str(tmp_path), labels=classes,
                          info=ModelInfo("tiny", "test"), io_dtype="int8", logits=True)
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning: ")]
    assert warnings == ["warning: --io int8: browsers cannot load this model (LiteRT.js and MediaPipe's web runtime "
                        "take no int8 input); --io uint8, the default, makes a browser file"]
    assert "SOFTMAX" not in report.ops and report.output == "logits" and report.xnnpack_partitions == 1
    card = ModelCard.read(tmp_path / "model_card.json")
    assert card.output.activation == "none"
    assert read_metadata(report.model_file)["output"]["name"] == "logits"

    expected = np.asarray(ending_at_logits(qat)(images))
    got = run_tflite(report.model_file, images)
    # Within a few output steps of the QAT model's logits (measured: 3 steps at most).
    assert np.abs(got - expected).max() <= 4 * card.output.scale, (np.abs(got - expected).max(), card.output.scale)
    # The evaluation turns the outputs into probabilities, ranked as the QAT model's softmax ranks them.
    content = open(report.model_file, "rb").read()
    predictions = held_out_predictions(content, qat, [(images, np.zeros(len(images), np.int64))], logits=True)
    np.testing.assert_allclose(predictions.scores.sum(-1), 1.0, rtol=1e-5)
    assert (predictions.scores.argmax(-1) == got.argmax(-1)).all()
    assert (got.argmax(-1) == np.asarray(qat(images)).argmax(-1)).mean() >= 7 / 8


def test_logits_export_needs_a_final_softmax():
    from tflite_export.export import ending_at_logits

    assert ending_at_logits(tiny_classifier_keras()).output_shape == (1, 4)
    with pytest.raises(ConversionError, match="needs a model that ends in a softmax"):
        ending_at_logits(tiny_classifier_keras(softmax=False))
