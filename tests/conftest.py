"""Shared test fixtures. Expensive artefacts (trained/QAT/exported models) are built once per session."""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest

from keras_models.backend import keras, tf  # sets TF_USE_LEGACY_KERAS before TensorFlow is imported

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED = pathlib.Path(os.environ.get("MOBILENET_SHARED_DIR", REPO.parent / "shared")).resolve()


def shared_path(*parts: str) -> pathlib.Path:
    """A path under ../shared, or skip the calling test with the reason when it is not there."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"needs {path} (the ../shared data folder beside the repository), which is absent")
    return path


def missing_tool(message: str) -> None:
    """A test's toolchain (Kotlin, the browser) is not installed: skip locally, fail in CI (CI=true), where
    scripts/setup.sh must have installed it."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def shared():
    return shared_path


TINY = [
    "--variant", "small", "--alpha", "0.35", "--image_size", "32", "--synthetic_size", "320,160", "--batch_size", "32",
    "--calibration_images", "32", "--benchmark_runs", "5",
]


def run_module(module: str, *args, timeout: int = 900) -> subprocess.CompletedProcess:
    """`python -m MODULE ARGS...` from the repository root, as a user would type it; output captured as text."""
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "PYTHONPATH": str(REPO)})


def run_pipeline(args) -> subprocess.CompletedProcess:
    return run_module("pipeline.train_and_export", *args)


def error_line(code: int, stderr: str, prog: str = "") -> str:
    """Assert exit code 2, no traceback and exactly one error line, which is the last line; return it. `prog`: the
    command the line must name (`prog: error: ...`); without it, any command's."""
    assert code == 2, stderr[-2000:]
    assert "Traceback" not in stderr
    marker = re.compile(rf"^{re.escape(prog)}: error: " if prog else r"^(?:[\w.]+: )?error: ")
    errors = [line for line in stderr.splitlines() if marker.match(line)]
    assert len(errors) == 1, stderr[-2000:]
    assert stderr.rstrip().splitlines()[-1] == errors[0]
    return errors[0]


def define_run_flags() -> None:
    """The flags of `python -m pipeline.train_and_export` on absl's global FLAGS (its `__main__` defines them,
    importing it does not), once in this process."""
    from absl import flags

    from pipeline.config import RunConfig, define_flags

    if "float_epochs" not in flags.FLAGS:
        define_flags(RunConfig)


@pytest.fixture()
def pipeline_cli(capsys):
    """`python -m pipeline.train_and_export ARGS` in this process (for cases refused before any training): returns
    (exit code, stderr). The command parses into flags of its own each call (tflite_export.command)."""
    from pipeline import train_and_export
    from tflite_export.cli import run_main

    def run(args) -> tuple[int, str]:
        capsys.readouterr()
        code = run_main(train_and_export.main, [str(a) for a in args], prog="pipeline.train_and_export")
        return code, capsys.readouterr().err

    return run


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """One small but complete pipeline run (float, QAT, frozen-BN QAT, export), shared by the tests that inspect it.
    It uses the default console, which tests/test_console.py checks."""
    out = tmp_path_factory.mktemp("tiny_run")
    result = run_pipeline([*TINY, "--float_epochs", "2", "--qat_epochs", "2", "--freeze_bn_epochs", "1",
                           "--output_dir", str(out)])
    assert result.returncode == 0, result.stderr[-3000:]
    return out, result


def tiny_classifier_keras(*, softmax: bool = True, classes: int = 4, batch_size: int | None = 1) -> keras.Model:
    """A 2-conv Keras CNN on raw [0, 255] pixels, randomly initialized (seed 0)."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((32, 32, 3), batch_size=batch_size)
    x = keras.layers.Rescaling(1 / 127.5, offset=-1)(inputs)
    x = keras.layers.Conv2D(8, 3, strides=2, activation="relu")(x)
    x = keras.layers.Conv2D(16, 3, strides=2, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dense(classes)(x)
    if softmax:
        x = keras.layers.Softmax()(x)
    return keras.Model(inputs, x)


def tiny_classifier_tflite(*, integer_io: bool = True, io_type: str = "uint8", softmax: bool = True,
                           classes: int = 4) -> bytes:
    """`tiny_classifier_keras`, post-training full-integer quantized (a few seconds)."""
    converter = tf.lite.TFLiteConverter.from_keras_model(tiny_classifier_keras(softmax=softmax, classes=classes))
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    rng = np.random.default_rng(0)
    converter.representative_dataset = lambda: (
        [rng.uniform(0, 255, (1, 32, 32, 3)).astype(np.float32)] for _ in range(8))
    if integer_io:
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = getattr(tf, io_type)
        converter.inference_output_type = getattr(tf, io_type)
    return converter.convert()
