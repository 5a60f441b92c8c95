"""The console of a default run: stage headers and progress bars, not TensorFlow's start-up and library logs."""

from __future__ import annotations

import os
import re

import pytest

from keras_models import backend

# Lines TensorFlow prints on every start of a machine without a GPU (CUDA probing) and at every checkpoint save.
NOISE = re.compile(r"cuInit|cudart_stub|Sharding callback")


def test_default_run_has_no_tensorflow_noise_and_shows_stages_and_progress(tiny_run):
    _, result = tiny_run
    noise = [line for line in result.stderr.splitlines() if NOISE.search(line)]
    assert not noise, noise
    # tqdm bars with a known total (so an ETA) for calibration and evaluation; the conversion's elapsed time.
    assert re.search(r"int8 calibration: 100%\|.*\| 32/32 \[", result.stderr), result.stderr[-2000:]
    assert re.search(r"int8 evaluation: 100%\|", result.stderr)
    assert "converting to int8 TFLite: " in result.stderr
    for stage in ("data", "float training", "qat training", "qat_bn_frozen training", "int8 export", "latency"):
        assert f"\n== {stage}" in result.stdout, stage
    assert "int8 top-1" in result.stdout  # the summary


def test_native_logs_are_captured_and_written_back_when_the_block_fails(capfd, monkeypatch):
    monkeypatch.setattr(backend, "_native_logs_shown", False)
    with backend.native_logs_captured() as logs:
        os.write(2, b"cudart_stub.cc:31] Could not find cuda drivers\n")
    assert logs.text == "cudart_stub.cc:31] Could not find cuda drivers\n"
    assert capfd.readouterr().err == ""

    with pytest.raises(RuntimeError), backend.native_logs_captured():
        os.write(2, b"converter: the reason it failed\n")
        raise RuntimeError("conversion failed")
    assert "the reason it failed" in capfd.readouterr().err
