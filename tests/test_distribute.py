"""tf.distribute (pipeline/distribute.py): a short run of `pipeline.train_and_export` (float training, QAT, int8
export) trains the same model on one device, on two CPU replicas (MirroredStrategy) and on two worker processes over
loopback (MultiWorkerMirroredStrategy), and a run interrupted under MirroredStrategy resumes from its last epoch.

Same seed, same global batch, no dropout (each replica draws its own masks) and `--sync_batch_norm` in every run, so
the replicas compute what the single device computes, up to the order in which floating-point sums are taken (and
tfmot's activation-range moving averages, which under a strategy follow the mean of the replicas' batch extremes:
pipeline/distribute.py). Training from a random start amplifies those roundings about tenfold per step at a learning
rate of 0.05 (measured: 1e-7 after the first step, 1e-2 after the eighth), so the runs are short (one float and one QAT
epoch of 4 steps each) at a low learning rate, and results are compared within tolerances (`_assert_trained_alike`).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.conftest import REPO, run_pipeline

RUN = [
    "--variant", "small", "--alpha", "0.35", "--image_size", "32", "--synthetic_size", "64,32", "--batch_size", "16",
    "--float_epochs", "1", "--qat_epochs", "1", "--freeze_bn_epochs", "0", "--learning_rate", "0.01", "--dropout", "0",
    "--calibration_images", "16", "--calibration_batches", "2", "--benchmark_runs", "0", "--verbose", "0",
    "--sync_batch_norm",
]
# Tolerances, measured here (docs/findings.md, "tf.distribute: equivalence with one device"): float weights
# (BatchNorm statistics included) differed by at most 2e-6, the int8 outputs by 1 level. The QAT stage's checkpoint
# differs more: kernels by 2e-4, but activation ranges by up to 0.42 (of ~26) and BatchNorm moving variances by 0.08,
# at most 3.9% of 1 + |value|; under replicas tfmot's range moving averages follow the mean of per-replica extremes,
# and that this accounts for all of it was not established (an open question, noted there).
FLOAT_ATOL = 1e-4
QAT_RELATIVE = 0.1  # of 1 + |value|
OUTPUT_LEVELS = 1


def _h5_arrays(path) -> dict[str, np.ndarray]:
    import h5py

    arrays = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, item: arrays.__setitem__(name, item[()]) if isinstance(item, h5py.Dataset) else None)
    return arrays


def _int8_outputs(out) -> np.ndarray:
    """The exported model's uint8 outputs on 32 synthetic test pictures."""
    from ai_edge_litert.interpreter import Interpreter

    from pipeline.synthetic import generate

    images, _ = generate(32, 32, seed=1, split="test")
    interpreter = Interpreter(model_path=str(out / "model.tflite"))
    interpreter.allocate_tensors()
    (inp,), (outp,) = interpreter.get_input_details(), interpreter.get_output_details()
    rows = []
    for image in images:
        interpreter.set_tensor(inp["index"], image[None])
        interpreter.invoke()
        rows.append(interpreter.get_tensor(outp["index"])[0].astype(np.int32))
    return np.stack(rows)


def _assert_trained_alike(reference, other) -> None:
    """Float weights within FLOAT_ATOL of the single-device run's, the QAT stage's checkpoint (weights, fake-quant
    ranges, BatchNorm statistics, optimizer slots) within QAT_RELATIVE, and the int8 files' uint8 outputs within
    OUTPUT_LEVELS of each other, image by image."""
    for weights, bound in (("float_model.h5", lambda x: FLOAT_ATOL),
                           ("checkpoints/qat.weights.h5", lambda x: QAT_RELATIVE * (1 + np.abs(x)))):
        expected, got = _h5_arrays(reference / weights), _h5_arrays(other / weights)
        assert expected.keys() == got.keys(), weights
        for name in expected:
            if name.startswith("metrics/"):  # an untrained model's near-uniform outputs make argmax a coin toss
                continue
            excess = np.abs(expected[name] - got[name]) - bound(expected[name])
            assert excess.max() <= 0, (weights, name, float(np.max(np.abs(expected[name] - got[name]))))
    levels = np.abs(_int8_outputs(reference) - _int8_outputs(other))
    assert levels.max() <= OUTPUT_LEVELS, levels.max()


@pytest.fixture(scope="module")
def single_device(tmp_path_factory):
    out = tmp_path_factory.mktemp("single_device")
    result = run_pipeline([*RUN, "--output_dir", out])
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def test_two_cpu_replicas_train_what_one_device_trains(single_device, tmp_path):
    out = tmp_path / "mirrored"
    result = run_pipeline([*RUN, "--strategy", "mirrored", "--cpu_replicas", "2", "--output_dir", out])
    assert result.returncode == 0, result.stderr[-3000:]
    assert "2 replica(s), global batch 16 = 8.0 per replica" in result.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["distribution"] == {"strategy": "mirrored", "replicas": 2, "workers": 1, "global_batch": 16,
                                      "per_replica_batch": 8.0, "sync_batch_norm": True}
    assert report["accuracy"]["qat_keras"] is not None  # QAT ran under the strategy
    _assert_trained_alike(single_device, out)


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


@pytest.mark.slow  # two more pipeline processes: beyond CI's time budget; `pytest -m slow` runs it
def test_two_workers_on_loopback_train_what_one_device_trains(single_device, tmp_path):
    out = tmp_path / "workers"
    cluster = {"worker": [f"localhost:{port}" for port in _free_ports(2)]}
    workers = []
    for index in range(2):
        env = {**os.environ, "PYTHONPATH": str(REPO),
               "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})}
        workers.append(subprocess.Popen(
            [sys.executable, "-m", "pipeline.train_and_export", *RUN, "--strategy", "multi_worker", "--output_dir",
             str(out)], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    results = [worker.communicate(timeout=900) for worker in workers]
    for worker, (_, stderr) in zip(workers, results):
        assert worker.returncode == 0, stderr[-3000:]
    assert "worker 1: training finished; the chief (worker 0) exports and reports" in results[1][0]
    report = json.loads((out / "report.json").read_text())
    assert report["distribution"]["workers"] == 2 and report["distribution"]["replicas"] == 2
    assert report["accuracy"]["qat_keras"] is not None
    # Only the chief's files: the other worker's temporary copies are gone.
    assert not list(out.glob("**/workertemp_*"))
    _assert_trained_alike(single_device, out)


@pytest.mark.slow  # two more pipeline runs; tests/test_pipeline.py resumes the default strategy in CI
def test_run_interrupted_under_mirrored_resumes_from_its_last_epoch(tmp_path):
    out = tmp_path / "run"
    args = [*RUN, "--float_epochs", "2", "--noqat", "--strategy", "mirrored", "--cpu_replicas", "2", "--output_dir",
            str(out)]
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.train_and_export", *args], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    seen, deadline = [], time.monotonic() + 600
    for line in proc.stderr:  # absl logs to stderr
        seen.append(line)
        if "float: epoch 1 done, checkpoint saved" in line:
            os.killpg(proc.pid, signal.SIGKILL)  # no clean-up code runs, as in a power cut
            break
        assert time.monotonic() < deadline, "no checkpoint within 10 minutes"
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "".join(seen[-20:])

    result = run_pipeline(args)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "float: resumed from checkpoint, starting at epoch 2" in result.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["resumed"] == {"float": 1} and report["distribution"]["replicas"] == 2
    assert (out / "model.tflite").is_file()


# -------------------------------------------------------------------------- refused with one line, nothing trained
@pytest.mark.parametrize("name,environment,needle", [
    ("tpu", {}, "--strategy tpu is not supported"),
    ("multi_worker", {"TF_CONFIG": ""}, "needs TF_CONFIG"),
    ("multi_worker", {"TF_CONFIG": "{not json"}, "TF_CONFIG is not a cluster spec"),
    ("multi_worker", {"TF_CONFIG": json.dumps({"cluster": {"worker": ["localhost:1"]},
                                               "task": {"type": "worker", "index": 3}})}, "not one of its cluster"),
])
def test_strategies_that_cannot_start_say_why_in_one_line(monkeypatch, name, environment, needle):
    from pipeline import distribute

    for key, value in environment.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ValueError, match=needle) as error:
        distribute.create(name)
    assert "\n" not in str(error.value)


def test_cpu_replicas_go_with_mirrored_only():
    from pipeline import distribute

    with pytest.raises(ValueError, match="goes with --strategy mirrored"):
        distribute.create("default", cpu_replicas=2)


@pytest.mark.parametrize("batch,replicas,sync,needle", [
    (10, 4, False, "multiple of the 4 replicas"),
    (4, 4, False, "fewer than 2 images"),
])
def test_global_batch_must_split_evenly_into_trainable_shares(batch, replicas, sync, needle):
    from pipeline import distribute

    with pytest.raises(ValueError, match=needle):
        distribute.check_batch_size(batch, replicas, sync, min_batch=2)
    distribute.check_batch_size(4, 4, True, min_batch=2)  # synchronized statistics see the whole batch


def test_imagenet_without_its_files_says_where_to_put_them(tmp_path):
    """Checked before TFDS writes anything (preparing from a folder writes into TFDS_DATA_DIR)."""
    pytest.importorskip("tensorflow_datasets")
    from pipeline.data import DataError, load_dataset

    with pytest.raises(DataError, match="pass it as --tfds_manual_dir") as error:
        load_dataset("tfds:imagenet2012", image_size=32, batch_size=2)
    assert "\n" not in str(error.value)
    with pytest.raises(DataError, match="is not a folder"):
        load_dataset("tfds:imagenet2012", image_size=32, batch_size=2, tfds_manual_dir=str(tmp_path / "missing"))
