"""The typed run configuration (pipeline.config) and the run's report (pipeline.report: report.json and report.html).

Flag checks run in this process and are refused before any data is loaded (well under a second each); the report
checks read the session's `tiny_run` (tests/conftest.py).
"""

from __future__ import annotations

import base64
import dataclasses
import html
import io
import json
import re

import numpy as np
import pytest

from pipeline.report import WORST_IMAGES, Report
from pipeline.schema import SchemaError
from tests.conftest import TINY, define_run_flags, error_line


# ------------------------------------------------------------------------------------------------------ RunConfig
@pytest.mark.parametrize("case,args,needle", [
    ("minimalistic V2", ["--variant", "v2", "--minimalistic"], "--minimalistic applies to MobileNetV3 only"),
    ("negative float epochs", ["--float_epochs", "-1"], "epoch counts >= 0"),
    ("negative frozen-BN epochs", ["--freeze_bn_epochs", "-1"], "--freeze_bn_epochs must be >= 0"),
    ("zero fine-tuning rate", ["--fine_tune_learning_rate", "0"], "--fine_tune_learning_rate must be > 0"),
    ("synthetic size not numbers", ["--synthetic_size", "a,b"], "--synthetic_size takes two integers"),
    ("label smoothing of one", ["--label_smoothing", "1"], "--label_smoothing must be in [0, 1)"),
    ("negative weight decay", ["--weight_decay", "-1"], "--weight_decay must be >= 0"),
    ("no QAT range batches", ["--calibration_batches", "0"], "--calibration_batches must be at least 1"),
    ("image size below the builders' minimum", ["--image_size", "31"], "--image_size must be at least 32, got 31"),
])
def test_each_bad_flag_is_one_line_before_anything_is_created(pipeline_cli, tmp_path, case, args, needle):
    out = tmp_path / "out"
    code, err = pipeline_cli([*TINY, "--float_epochs", "1", "--qat_epochs", "1", "--output_dir", out, *args])
    assert needle in error_line(code, err), case
    assert not out.exists()


def _config(*args):
    from absl import flags

    from pipeline.config import RunConfig

    define_run_flags()
    flags.FLAGS.unparse_flags()
    try:
        flags.FLAGS(["train_and_export", *map(str, args)])
        return RunConfig.from_flags(flags.FLAGS)
    finally:
        flags.FLAGS.unparse_flags()


def test_config_resolves_the_defaults_that_depend_on_other_flags(tmp_path):
    out = ["--output_dir", tmp_path / "out"]
    # --dropout: the variant's own default unless given (it used to force 0.2 on every variant).
    assert _config("--variant", "v2", *out).dropout == 0.0
    assert _config("--variant", "v3-small", *out).dropout == 0.2
    assert _config("--variant", "v2", "--dropout", "0.5", *out).dropout == 0.5
    scratch = _config("--learning_rate", "0.2", "--freeze_bn_epochs", "5", "--qat_epochs", "2", *out)
    assert (scratch.variant, scratch.recipe, scratch.qat_learning_rate, scratch.freeze_bn_epochs) == (
        "small", "scratch", pytest.approx(0.01), 2)
    assert _config("--dataset", "/data/my:photos").output_dir == "runs/small-my_photos"
    with pytest.raises(dataclasses.FrozenInstanceError):
        scratch.image_size = 64


# ------------------------------------------------------------------------------------------------- report.json
def test_report_round_trips_through_json(tiny_run, tmp_path):
    out, _ = tiny_run
    report = Report.read(out / "report.json")
    assert report.schema_version == Report.SCHEMA_VERSION
    report.write(tmp_path / "again.json")
    assert Report.read(tmp_path / "again.json") == report
    assert Report.from_json((out / "report.json").read_text()) == report
    assert isinstance(report.int8_evaluation.worst[0].confidence, float)  # nested records come back typed


@pytest.mark.parametrize("change,needle", [
    (lambda data: data.update(schema_version=4), "schema_version 4"),
    (lambda data: data.pop("schema_version"), "schema_version 1, written by an older version"),
    (lambda data: data["export"].pop("accuracy"), "missing ['accuracy']"),
])
def test_report_of_another_schema_is_refused_in_one_line(tiny_run, tmp_path, change, needle):
    out, _ = tiny_run
    data = json.loads((out / "report.json").read_text())
    change(data)
    path = tmp_path / "report.json"
    path.write_text(json.dumps(data))
    with pytest.raises(SchemaError, match=re.escape(needle)) as refused:
        Report.read(path)
    assert "\n" not in str(refused.value) and str(path) in str(refused.value)


# ------------------------------------------------------------------------------------------------- report.html
def _matrix_cells(page: str) -> list[int]:
    table = re.search(r'<table class="matrix">(.*?)</table>', page, re.S).group(1)
    return [int(n) for n in re.findall(r'<td style="background:[^"]*"[^>]*>(\d+)</td>', table)]


def test_report_html_has_curves_confusion_matrix_and_worst_images(tiny_run):
    from PIL import Image

    out, _ = tiny_run
    report = Report.read(out / "report.json")
    page = (out / "report.html").read_text()
    # Self-contained: no script, style sheet or image fetched from elsewhere; the only URLs are SVG's namespaces.
    assert "<script" not in page and "<link" not in page
    assert set(re.findall(r"https?://[^\"' ]+", page)) <= {"http://www.w3.org/2000/svg", "http://www.w3.org/1999/xlink"}
    # A curve figure per stage, each an inline SVG with its loss and accuracy panels.
    for stage in ("float", "qat", "qat_bn_frozen"):
        figure = re.search(rf'<figure class="stage" data-stage="{stage}">(.*?)</figure>', page, re.S)
        assert figure and "<svg" in figure.group(1) and "loss" in figure.group(1) and "accuracy" in figure.group(1)
    # The confusion matrix: a row and a column per class, the counts of report.json.
    assert _matrix_cells(page) == [n for row in report.int8_evaluation.confusion for n in row]
    for name in report.data.classes:
        assert page.count(f'<th class="label">{name}</th>') >= 2  # its row and its column
    # The worst-classified images: one thumbnail per entry, the held-out image itself, with its labels.
    thumbnails = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(thumbnails) == len(report.int8_evaluation.worst) == WORST_IMAGES
    assert Image.open(io.BytesIO(base64.b64decode(thumbnails[0]))).size == (32, 32)
    first = report.int8_evaluation.worst[0]
    assert (f"true: <b>{report.data.classes[first.true_class]}</b>" in page
            and report.data.classes[first.predicted_class] in page)


def test_report_html_escapes_class_names(tiny_run):
    from pipeline.report_html import render

    out, _ = tiny_run
    report = Report.read(out / "report.json")
    hostile = ['<script>alert("x")</script>', "cats & dogs", *report.data.classes[2:]]
    page = render(dataclasses.replace(report, data=dataclasses.replace(report.data, classes=hostile)), {})
    assert "<script>" not in page
    assert html.escape(hostile[0]) in page and "cats &amp; dogs" in page


def test_worst_images_are_the_most_confident_mistakes_first():
    from tflite_export.evaluate import HeldOutPredictions

    scores = np.array([[0.9, 0.1], [0.4, 0.6], [0.2, 0.8], [0.55, 0.45], [0.3, 0.7]], np.float32)
    predictions = HeldOutPredictions(labels=np.array([0, 0, 0, 0, 1]), scores=scores, reference=np.zeros(5, int))
    # Mistakes (images 1 and 2) by confidence, then the correct image the model was least sure of (3).
    assert predictions.worst(3) == [2, 1, 3]
    assert predictions.confusion_matrix().tolist() == [[2, 2], [0, 1]]
    assert dataclasses.asdict(predictions.summary()) == {"images": 5, "keras_top1": 0.8, "int8_top1": 0.6,
                                                         "agreement": 0.4}
