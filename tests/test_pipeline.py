"""pipeline.train_and_export end to end: a tiny run, resume after a kill, and bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from keras_models.backend import keras
from pipeline.report import Report
from tests.conftest import REPO, TINY, error_line
from tests.conftest import run_pipeline as _run
from tflite_export.model_card import ModelCard
from tflite_export.verify import analyze


def test_tiny_run_exports_a_fully_integer_model_without_hard_swish(tiny_run):
    out, _ = tiny_run
    analysis = analyze(str(out / "model.tflite"))
    assert analysis.op_histogram.get("HARD_SWISH", 0) == 0
    assert analysis.float_tensors == []
    assert analysis.inputs[0].dtype == "uint8" and analysis.outputs[0].dtype == "uint8"
    # h-swish lowered: the model still computes it, as ADD (+RELU6 fused) and MUL ops.
    assert analysis.op_histogram["MUL"] >= 19 and analysis.op_histogram["ADD"] >= 1
    assert analysis.has_metadata and analysis.has_associated_files


def test_tiny_run_scales_by_one_sixth_without_a_second_rounding(tiny_run):
    """Every x1/6 (h-swish's and hard-sigmoid's) is an int8 MUL whose output grid is its input grid divided by 6:
    the same zero point and a sixth of the scale, so the MUL maps each input level to one output level exactly."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    out, _ = tiny_run
    interpreter = Interpreter(model_path=str(out / "model.tflite"),
                              experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    interpreter.allocate_tensors()
    nodes = interpreter._interpreter  # pybind wrapper: op names and their tensors
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
    checked = 0
    for i in range(nodes.NumNodes()):
        output = tensors[int(nodes.NodeOutputs(i)[0])]
        if nodes.NodeName(i) != "MUL" or "div6" not in output["name"]:
            continue
        (scaled,) = [tensors[int(t)] for t in nodes.NodeInputs(i) if "pseudo_qconst" not in tensors[int(t)]["name"]]
        (in_scale, in_zero), (out_scale, out_zero) = scaled["quantization"], output["quantization"]
        assert out_scale * 6 == pytest.approx(in_scale, rel=1e-5) and out_zero == in_zero, output["name"]
        checked += 1
    assert checked == 28  # V3-Small: 19 h-swish + 9 squeeze-and-excite gates


def test_tiny_run_int8_depthwise_weights_are_the_ones_qat_trained_against(tiny_run):
    """Each int8 depthwise kernel, dequantized, equals the QAT model's fake-quantized kernel with its BatchNorm folded
    in (the file computes what QAT trained against), and every channel spans the int8 range: its largest weight is
    +-127. With tfmot's default depthwise quantizer (one range per kernel) only the kernel's largest channel did."""
    from ai_edge_litert.interpreter import Interpreter

    from tflite_export.quantization import quantize_scope

    out, _ = tiny_run
    with quantize_scope():
        qat = keras.models.load_model(out / "qat_model", compile=False)
    interpreter = Interpreter(model_path=str(out / "model.tflite"))
    nodes = interpreter._interpreter
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
    checked = 0
    for i in range(nodes.NumNodes()):
        if nodes.NodeName(i) != "DEPTHWISE_CONV_2D":
            continue
        weights = tensors[int(nodes.NodeInputs(i)[1])]
        block = next(n for n in weights["name"].split("/") if n.startswith("quant_expanded_conv"))
        wrapper, batch_norm = qat.get_layer(f"{block}/depthwise"), qat.get_layer(f"{block}/depthwise/BatchNorm").layer
        kernel, quantizer, quantizer_vars = wrapper._weight_vars[0]
        trained = quantizer(kernel, False, quantizer_vars).numpy()[..., 0]  # (kh, kw, channels)
        fold = batch_norm.gamma.numpy() / np.sqrt(batch_norm.moving_variance.numpy() + batch_norm.epsilon)
        params = weights["quantization_parameters"]
        assert len(params["scales"]) == trained.shape[-1], weights["name"]  # one scale per channel
        in_file = interpreter.get_tensor(weights["index"])[0] * params["scales"]
        assert np.abs(in_file - trained * fold).max() <= 1e-3 * params["scales"].min(), weights["name"]
        # 127, or 126 if a channel's largest weight shrank by more than half a step in the last training step (its
        # range was taken before that step's update).
        levels = np.abs(interpreter.get_tensor(weights["index"])[0].astype(int)).max(axis=(0, 1))
        assert levels.min() >= 126, (weights["name"], levels)
        checked += 1
    assert checked == 11  # V3-Small's 11 bottlenecks


def test_tiny_run_gates_see_no_levels_where_they_saturate(tiny_run):
    """In the int8 file, the input of every h-swish / hard-sigmoid gate ADD (x + 3, fused with RELU6) has no level
    below -3 (the gate is 0 there), and a hard sigmoid's none above +3 either (it is 1 there), within one step."""
    from ai_edge_litert.interpreter import Interpreter

    out, _ = tiny_run
    interpreter = Interpreter(model_path=str(out / "model.tflite"))
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
    checked = {"h-swish": 0, "hard sigmoid": 0}
    for node in interpreter._get_ops_details():
        output = tensors[node["outputs"][0]]["name"]
        if node["op_name"] != "ADD" or "relu6" not in output:
            continue
        (x,) = [tensors[i] for i in node["inputs"] if tensors[i]["name"] and "qconst" not in tensors[i]["name"]
                and "arith.constant" not in tensors[i]["name"]]
        scale, zero = x["quantization"]
        lowest, highest = (-128 - zero) * scale, (127 - zero) * scale
        assert lowest >= -3 - scale, (x["name"], lowest)
        kind = "hard sigmoid" if "hard_sigmoid" in output else "h-swish"
        if kind == "hard sigmoid":
            assert highest <= 3 + scale, (x["name"], highest)
        checked[kind] += 1
    assert checked == {"h-swish": 19, "hard sigmoid": 9}


def test_tiny_run_writes_labels_card_and_report(tiny_run):
    out, result = tiny_run
    labels = (out / "labels.txt").read_text().split()
    card = ModelCard.read(out / "model_card.json")
    report = Report.read(out / "report.json")
    assert labels == card.classes == report.data.classes and len(labels) == 8
    assert (card.input.height, card.input.width, card.input.dtype, card.input.scale, card.input.zero_point) == (
        32, 32, "uint8", 1.0, 0)
    acc = report.export.accuracy
    assert acc.images == 160 and 0.0 <= acc.int8_top1 <= 1.0
    assert report.throughput.input_pipeline_images_per_s > 0
    # The report records the QAT learning rate that was used: by default 1/20 of the float one.
    assert report.config.qat_learning_rate == pytest.approx(report.config.learning_rate / 20)
    assert report.latency and all(row.median_ms > 0 for row in report.latency)
    # The int8 model's confusion matrix counts every held-out image once, and its diagonal is its top-1.
    matrix = np.asarray(report.int8_evaluation.confusion)
    assert matrix.shape == (8, 8) and matrix.sum() == 160
    assert np.trace(matrix) / 160 == pytest.approx(acc.int8_top1)
    assert "int8 top-1" in result.stdout and "HARD_SWISH 0" in result.stdout
    assert f"report       {out / 'report.html'}" in result.stdout  # the summary links the page
    # The QAT model and the float model are kept for re-export with tflite_export.export.
    assert (out / "float_model.h5").is_file() and (out / "qat_model").is_dir()
    assert not list(out.glob("**/*.tmp*"))


def test_rerun_of_a_finished_run_skips_training(tiny_run, tmp_path):
    out, _ = tiny_run
    result = _run([*TINY, "--float_epochs", "2", "--qat_epochs", "2", "--freeze_bn_epochs", "1", "--output_dir",
                   str(out)])
    assert result.returncode == 0, result.stderr[-2000:]
    assert "float: already finished in an earlier run" in result.stderr
    assert "qat_bn_frozen: already finished in an earlier run" in result.stderr
    # The summary says what it could not measure rather than printing nan.
    assert "float training not measured in this run, QAT not measured in this run" in result.stdout
    assert "nan" not in result.stdout
    # Every stage was done earlier; the report still has each one's curves over all its epochs.
    report = Report.read(out / "report.json")
    assert {s.name: (s.skipped, s.curves.epochs) for s in report.stages} == {
        "float": (True, [1, 2]), "qat": (True, [1]), "qat_bn_frozen": (True, [1])}


def test_rerun_with_other_epochs_stops_instead_of_reusing_the_old_stage(tiny_run):
    out, _ = tiny_run
    before = {p: p.stat().st_mtime_ns for p in out.glob("**/*") if p.is_file()}
    result = _run([*TINY, "--float_epochs", "5", "--qat_epochs", "2", "--freeze_bn_epochs", "1", "--output_dir",
                   str(out)])
    last = error_line(result.returncode, result.stderr, "pipeline.train_and_export")
    assert "float stage trained with other settings (epochs 2 -> 5)" in last, last
    assert "fresh --output_dir" in last
    assert {p: p.stat().st_mtime_ns for p in out.glob("**/*") if p.is_file()} == before  # nothing touched


@pytest.mark.slow  # a whole pipeline run and a rerun; the Distiller itself is tested in test_distill.py, the logits
# export in test_export.py
def test_distilled_qat_run_records_its_targets_and_keeps_them_on_rerun(tmp_path):
    # The same run also exports with int8 I/O ending at the logits.
    out = tmp_path / "run"
    args = [*TINY, "--float_epochs", "1", "--qat_epochs", "1", "--freeze_bn_epochs", "0", "--benchmark_runs", "0",
            "--io", "int8", "--logits", "--output_dir", str(out)]
    result = _run([*args, "--qat_distill"])
    assert result.returncode == 0, result.stderr[-2000:]
    report = Report.read(out / "report.json")
    assert report.config.qat_distill is True and report.accuracy.qat_keras is not None
    settings = json.loads((out / "checkpoints" / "qat.settings.json").read_text())
    assert settings["targets"] == "float model" and settings["label_smoothing"] == 0.0
    analysis = analyze(str(out / "model.tflite"))
    assert analysis.float_tensors == [] and "SOFTMAX" not in analysis.op_histogram
    assert analysis.outputs[0].dtype == "int8" and analysis.xnnpack_partitions == 1
    assert report.config.logits and report.export.output == "logits"
    assert ModelCard.read(out / "model_card.json").output.activation == "none"
    # The int8 evaluation reads the logits as probabilities (softmax applied): confidences in [0, 1].
    worst = report.int8_evaluation.worst  # mistakes first, then the least sure correct images: never empty
    assert worst and all(0.0 <= w.true_class_score <= w.confidence <= 1.0 for w in worst)
    # Resuming the QAT stage with the labels as targets would mix two trainings: refused, nothing touched.
    result = _run([*args, "--noqat_distill"])
    assert result.returncode == 2
    assert "targets float model -> labels" in result.stderr.strip().splitlines()[-1]


def test_killed_run_resumes_from_its_last_checkpoint(tmp_path):
    out = tmp_path / "run"
    args = [*TINY, "--float_epochs", "3", "--qat_epochs", "0", "--noqat", "--output_dir", str(out)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline.train_and_export", *args], cwd=REPO, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True, start_new_session=True,
    )
    seen = []
    deadline = time.monotonic() + 600
    for line in proc.stderr:  # absl logs to stderr
        seen.append(line)
        if "float: epoch 1 done, checkpoint saved" in line:
            os.killpg(proc.pid, signal.SIGKILL)  # as abrupt as a power cut: no clean-up code runs
            break
        assert time.monotonic() < deadline, "no checkpoint within 10 minutes"
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "".join(seen[-20:])
    assert not (out / "model.tflite").exists()

    result = _run(args)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "float: resumed from checkpoint, starting at epoch 2" in result.stderr
    assert "float: epoch 1 done" not in result.stderr
    report = Report.read(out / "report.json")
    assert report.resumed == {"float": 1}
    assert (out / "model.tflite").is_file()
    # The report's curves have the epoch trained before the kill too, once: the stage's CSV log is appended to.
    curves = report.stage("float").curves
    assert curves.epochs == [1, 2, 3] and len(curves.metrics["val_accuracy"]) == 3
    assert 'data-stage="float"' in (out / "report.html").read_text()


@pytest.fixture()
def folder_with(tmp_path):
    """A class-folder dataset made of real PNGs, shaped by the test."""
    from PIL import Image

    def make(classes: dict[str, int]):
        root = tmp_path / "photos"
        for name, count in classes.items():
            (root / name).mkdir(parents=True)
            for i in range(count):
                Image.new("RGB", (40, 40), (i * 20 % 255, 80, 160)).save(root / name / f"{i}.png")
        return root

    return make


@pytest.mark.parametrize(
    "case,args,message",
    [
        ("missing folder", ["--dataset", "/nonexistent/photos"], "/nonexistent/photos"),
        ("unknown variant", ["--variant", "v9"], "unknown variant"),
        ("tiny image size", ["--image_size", "16"], "at least 32"),
        ("builtin hswish with QAT", ["--hswish", "builtin"], "--noqat"),
        ("offline TFDS name", ["--dataset", "tfds:cifar10"], "synthetic"),
        ("single class", ["--dataset", "{one_class}"], "class"),
        ("empty class folder", ["--dataset", "{empty_class}"], "contains no images"),
        ("negative QAT learning rate", ["--qat_learning_rate", "-0.01"], "must be > 0"),
    ],
)
def test_bad_input_gives_one_line_error_and_no_artifact(case, args, message, tmp_path, folder_with):
    if "{one_class}" in args:
        args = ["--dataset", str(folder_with({"cats": 4}))]
    if "{empty_class}" in args:
        root = folder_with({"cats": 4, "dogs": 4})
        (root / "birds").mkdir()
        args = ["--dataset", str(root)]
    out = tmp_path / "out"
    result = _run([*TINY, "--float_epochs", "1", "--qat_epochs", "0", *args, "--output_dir", str(out)])
    last = error_line(result.returncode, result.stderr, "pipeline.train_and_export")
    assert message in last, f"{case}: {last}"
    assert not list(out.glob("**/*.tflite"))
