"""The Python API: `pipeline.run(pipeline.RunConfig(...))`, the same run as the command, without absl flags.

README's "Python API" example is executed as written (in a temporary folder: its output folder is relative); the other
checks need no training.
"""

from __future__ import annotations

import dataclasses
import os
import re

import pytest

import pipeline
import tflite_export
from tests.conftest import REPO, define_run_flags


def _readme_example() -> str:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme.split("\n## Python API\n", 1)[1].split("\n## ", 1)[0]
    (code,) = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    return code


@pytest.mark.slow
def test_readme_python_example_runs_and_returns_what_it_made(tmp_path, monkeypatch):
    from pipeline.report import Report
    from tflite_export.files import read_labels
    from tflite_export.verify import analyze

    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(_readme_example(), "README.md (Python API)", "exec"), namespace)
    result, config = namespace["result"], namespace["config"]

    assert isinstance(result, pipeline.RunResult)
    assert result.config == config.resolved()
    for top1 in (result.float_top1, result.qat_top1, result.int8_top1):
        assert 0.0 <= top1 <= 1.0
    # The files it names are the published set of the folder the config asked for, and the report is the file's.
    assert os.path.dirname(result.model_file) == config.output_dir == "runs/api-example"
    assert os.path.isfile(result.model_file) and os.path.samefile(result.model_file, result.report.export.model_file)
    assert Report.read(result.report_file) == result.report
    assert result.int8_top1 == result.report.export.accuracy.int8_top1
    assert result.qat_top1 == result.report.accuracy.qat_keras
    assert read_labels(result.labels_file, "labels") == result.report.data.classes
    assert os.path.isfile(result.model_card_file) and os.path.isfile(result.html_file)
    image_size = config.image_size
    assert tuple(analyze(result.model_file, xnnpack=False).inputs[0].shape[1:3]) == (image_size, image_size)


def test_config_defaults_are_the_commands(tmp_path):
    """RunConfig() resolves to what the command makes of no flags: one source of defaults for both."""
    from absl import flags

    from pipeline.config import RunConfig

    out = str(tmp_path / "out")
    define_run_flags()
    flags.FLAGS.unparse_flags()
    try:
        flags.FLAGS(["train_and_export", "--output_dir", out])
        from_flags = RunConfig.from_flags(flags.FLAGS)
        for field in dataclasses.fields(RunConfig):  # each flag's default is its field's
            default = field.default if not isinstance(field.default, tuple) else [str(v) for v in field.default]
            assert flags.FLAGS[field.name].default == default, field.name
    finally:
        flags.FLAGS.unparse_flags()
    assert RunConfig(output_dir=out).resolved() == from_flags
    assert from_flags.resolved() == from_flags  # resolving twice changes nothing
    # The defaults that depend on other settings are resolved the same way from Python.
    transfer = RunConfig(variant="v3-large", weights="imagenet", output_dir=out).resolved()
    assert (transfer.variant, transfer.recipe, transfer.float_epochs, transfer.dropout) == (
        "large", "transfer", 10, 0.2)
    assert transfer.qat_learning_rate == pytest.approx(transfer.fine_tune_learning_rate / 5)
    assert RunConfig(variant="v3-small", dataset="/data/my:photos").resolved().output_dir == "runs/v3-small-my_photos"


@pytest.mark.parametrize("settings,needle", [
    ({"image_size": 31}, "--image_size must be at least 32, got 31"),
    ({"io": "int4"}, "--io must be one of uint8, int8, got 'int4'"),
    ({"synthetic_size": (1, 10)}, "--synthetic_size needs at least 2 training images"),
    ({"variant": "v4"}, "unknown variant 'v4'"),
])
def test_run_refuses_bad_settings_in_one_line_before_anything_is_written(tmp_path, settings, needle):
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=re.escape(needle)) as refused:
        pipeline.run(pipeline.RunConfig(output_dir=str(out), **settings))
    assert "\n" not in str(refused.value)
    assert not out.exists()


@pytest.mark.parametrize("package", [pipeline, tflite_export], ids=lambda p: p.__name__)
def test_every_public_name_resolves(package):
    assert package.__all__ and sorted(package.__all__) == package.__all__
    for name in package.__all__:
        assert getattr(package, name).__name__ == name
    with pytest.raises(AttributeError):
        package.no_such_name  # noqa: B018 - the attribute access is the test
