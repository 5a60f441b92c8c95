"""Hostile inputs to the five command-line tools (issue #15, RELIABILITY.md): each must end with exit code 2 and one
`error:` line (never a traceback or a native abort), refuse before doing expensive work, and leave the output
directory as it was.

Most cases run in this process and are refused before any data is loaded, so they cost well under a second each; the
pipeline cases reuse the session's `tiny_run`. The ones that need a training run or a small file system are marked
`slow` (deselected by default: `pytest -m slow`).
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import pathlib
import shutil
import subprocess

import numpy as np
import pytest

from keras_models.backend import keras
from tests.conftest import REPO, TINY, run_pipeline, tiny_classifier_keras, tiny_classifier_tflite
from tests.conftest import error_line as _error_line
from tflite_export.model_card import ModelCard

# ------------------------------------------------------------------------------------------------------------ helpers


def _snapshot(folder: pathlib.Path) -> dict:
    """Every entry under `folder` with its modification time and, for links, its target: any change shows."""
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): (p.lstat().st_mtime_ns, os.readlink(p) if p.is_symlink() else None)
            for p in folder.glob("**/*")}


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("reliability_models")
    paths = {}
    for name, classes in (("four", 4), ("two", 2)):
        paths[name] = folder / f"tiny_{name}.tflite"
        paths[name].write_bytes(tiny_classifier_tflite(classes=classes))
    return paths


def _image_folders(root: pathlib.Path, classes, per_class: int = 2) -> pathlib.Path:
    from PIL import Image

    for k, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.new("RGB", (40, 40), (30 * k % 255, 20 * i % 255, 90)).save(root / name / f"{i}.png")
    return root


# ------------------------------------------------------------------- 1. reruns that would build another model
@pytest.mark.parametrize("change,expected", [
    (["--image_size", "64"], "image_size 32 -> 64"),
    (["--variant", "large"], "variant small -> large"),
    (["--alpha", "0.5"], "alpha 0.35 -> 0.5"),
    (["--minimalistic"], "minimalistic False -> True"),
    (["--io", "int8"], "io uint8 -> int8"),
    (["--weights", "imagenet"], "weights none -> imagenet"),
])
def test_rerun_with_another_model_definition_is_refused_before_loading_data(tiny_run, pipeline_cli, change, expected):
    out, _ = tiny_run
    before = _snapshot(out)
    # A data set that does not exist: had it been loaded first, the error would be about it.
    code, err = pipeline_cli([*TINY, "--float_epochs", "2", "--qat_epochs", "2", "--freeze_bn_epochs", "1",
                              "--output_dir", out, "--dataset", "/nonexistent/photos", *change])
    line = _error_line(code, err)
    assert expected in line and "fresh --output_dir" in line, line
    assert _snapshot(out) == before


def test_rerun_on_other_classes_is_refused_before_training(tiny_run, pipeline_cli, tmp_path):
    out, _ = tiny_run
    before = _snapshot(out / "checkpoints")
    photos = _image_folders(tmp_path / "photos", ["cats", "dogs"], per_class=3)
    code, err = pipeline_cli([*TINY, "--float_epochs", "2", "--qat_epochs", "2", "--freeze_bn_epochs", "1",
                              "--output_dir", out, "--dataset", photos])
    line = _error_line(code, err)
    assert "classes [" in line and "'cats', 'dogs']" in line and "fresh --output_dir" in line, line
    assert _snapshot(out / "checkpoints") == before


def test_run_directory_records_its_run_config(tiny_run):
    """run_config.json is the run's RunConfig (defaults resolved) with the classes of its data, versioned."""
    from pipeline.run_dir import RunRecord
    from pipeline.schema import read_record

    out, _ = tiny_run
    record = read_record(RunRecord, out / "run_config.json", "run record", "")
    assert record.schema_version == RunRecord.SCHEMA_VERSION and len(record.classes) == 8
    assert record.config.model_definition == {"variant": "small", "alpha": 0.35, "minimalistic": False,
                                              "image_size": 32, "weights": "none", "io": "uint8", "hswish": "lowered"}
    assert record.config.output_dir == str(out) and record.config.qat_learning_rate == pytest.approx(0.1 / 20)


def test_legacy_run_directory_is_checked_against_its_report(tiny_run, pipeline_cli, tmp_path):
    """Directories made before run_config.json existed: their report.json says what model they hold, typed (schema
    2) or not (version 1, no schema_version)."""
    out, _ = tiny_run
    typed, untyped = tmp_path / "typed", tmp_path / "untyped"
    typed.mkdir()
    untyped.mkdir()
    shutil.copyfile(out / "report.json", typed / "report.json")
    report = json.loads((out / "report.json").read_text())
    (untyped / "report.json").write_text(json.dumps({"config": {"variant": "v3-small", "image_size": 32},
                                                     "data": {"classes": report["data"]["classes"]}}))
    for legacy in (typed, untyped):
        code, err = pipeline_cli([*TINY, "--float_epochs", "2", "--output_dir", legacy, "--image_size", "48"])
        assert "image_size 32 -> 48" in _error_line(code, err), legacy


def test_unversioned_run_config_of_older_folders_is_still_checked(pipeline_cli, tmp_path):
    """run_config.json before it was versioned: a flat object of the model-defining fields and the classes."""
    old = tmp_path / "old"
    old.mkdir()
    (old / "run_config.json").write_text(json.dumps({
        "variant": "small", "alpha": 0.35, "minimalistic": False, "image_size": 32, "weights": "none", "io": "uint8",
        "hswish": "lowered", "classes": ["a", "b"]}))
    before = _snapshot(old)
    code, err = pipeline_cli([*TINY, "--float_epochs", "2", "--output_dir", old, "--alpha", "0.5"])
    assert "alpha 0.35 -> 0.5" in _error_line(code, err)
    assert _snapshot(old) == before


def test_run_config_of_a_newer_schema_is_refused_in_one_line(pipeline_cli, tmp_path):
    new = tmp_path / "new"
    new.mkdir()
    (new / "run_config.json").write_text(json.dumps({"schema_version": 99, "config": {}, "classes": []}))
    code, err = pipeline_cli([*TINY, "--float_epochs", "2", "--output_dir", new])
    line = _error_line(code, err)
    assert "schema_version 99" in line and "run_config.json" in line and "fresh --output_dir" in line, line


# ------------------------------------------------------------------------- 2. classes checked against the model
def test_evaluate_refuses_a_label_file_of_the_wrong_length(tiny_models, tmp_path, capsys):
    from tflite_export import evaluate
    from tflite_export.cli import run_main

    data = _image_folders(tmp_path / "data", ["a", "b", "c", "d"], per_class=1)
    labels = tmp_path / "labels.txt"
    labels.write_text("a\nb\nc\n")
    out = tmp_path / "eval.json"
    code = run_main(evaluate.main, [str(tiny_models["four"]), "--dataset", str(data), "--labels", str(labels),
                                    "--json", str(out)], prog="tflite_export.evaluate")
    line = _error_line(code, capsys.readouterr().err, "tflite_export.evaluate")
    assert "has 3 labels but the model has 4 outputs" in line and not out.exists()


def test_evaluate_refuses_class_folders_missing_from_the_labels(tiny_models, tmp_path, capsys):
    from tflite_export import evaluate
    from tflite_export.cli import run_main

    data = _image_folders(tmp_path / "data", ["a", "b", "c", "zebra"], per_class=1)
    labels = tmp_path / "labels.txt"
    labels.write_text("a\nb\nc\nd\n")
    code = run_main(evaluate.main, [str(tiny_models["four"]), "--dataset", str(data), "--labels", str(labels)],
                    prog="tflite_export.evaluate")
    assert "'zebra'" in _error_line(code, capsys.readouterr().err, "tflite_export.evaluate")


def test_evaluate_refuses_a_class_count_that_is_not_the_output_count(tiny_models, tmp_path, capsys):
    """2 classes on a 4-output model used to score a number; now it says what to pass."""
    from tflite_export import evaluate
    from tflite_export.cli import run_main

    data = _image_folders(tmp_path / "data", ["x", "y"], per_class=1)
    code = run_main(evaluate.main, [str(tiny_models["four"]), "--dataset", str(data)], prog="tflite_export.evaluate")
    line = _error_line(code, capsys.readouterr().err, "tflite_export.evaluate")
    assert "2 classes but the model has 4 outputs" in line and "--labels" in line


def test_evaluate_refuses_a_two_output_model_on_imagenet(tiny_models, shared, capsys):
    from tflite_export import evaluate
    from tflite_export.cli import run_main

    code = run_main(evaluate.main, [str(tiny_models["two"]), "--dataset", str(shared("datasets", "imagenet-samples"))],
                    prog="tflite_export.evaluate")
    line = _error_line(code, capsys.readouterr().err, "tflite_export.evaluate")
    assert "1000 classes but the model has 2 outputs" in line


def test_evaluate_refuses_googles_1001_labels_on_a_two_class_folder(shared, capsys):
    from tflite_export import evaluate
    from tflite_export.cli import run_main

    model = shared("reference_models", "mobilenet_v3", "v3-small_224_1.0_uint8.tflite")
    labels = next(p for p in shared("labels").iterdir() if len(p.read_text().splitlines()) == 1001)
    code = run_main(evaluate.main, [str(model), "--dataset", str(shared("datasets", "hymenoptera_data")),
                                    "--labels", str(labels)], prog="tflite_export.evaluate")
    line = _error_line(code, capsys.readouterr().err, "tflite_export.evaluate")
    assert "2 classes but the model has 1001 outputs" in line


def test_evaluate_still_accepts_1001_outputs_with_background_on_1000_imagenet_classes(shared, capsys):
    from tflite_export import evaluate
    from tflite_export.cli import run_main

    model = shared("reference_models", "mobilenet_v3", "v3-small_224_1.0_uint8.tflite")
    code = run_main(evaluate.main, [str(model), "--dataset", str(shared("datasets", "imagenet-samples")),
                                    "--limit", "20"], prog="tflite_export.evaluate")
    printed = capsys.readouterr().out
    assert code == 0 and "background" in printed and "(20 images" in printed


def test_export_cli_refuses_classes_it_cannot_match_to_the_outputs(tiny_run, tmp_path, capsys):
    """wnid folders and a label file of names: the accuracy check would compare unrelated indices (it printed
    0.0000)."""
    from tflite_export import export
    from tflite_export.cli import run_main

    run_dir, _ = tiny_run
    data = _image_folders(tmp_path / "data", ["n01440764", "n01443537"], per_class=2)
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(f"name {i}" for i in range(8)) + "\n")
    out = tmp_path / "out"
    code = run_main(export.main, [str(run_dir / "float_model.h5"), "--dataset", str(data), "--labels", str(labels),
                                  "--output_dir", str(out), "--calibration_images", "4"], prog="tflite_export.export")
    line = _error_line(code, capsys.readouterr().err, "tflite_export.export")
    assert "2 classes but the model has 8 outputs" in line
    assert not out.exists() or not any(out.iterdir())


# ---------------------------------------------------------------------------- 3 and 7. artifacts as one set, modes
def _export_tiny(out, io_dtype: str, **kwargs):
    from tflite_export.export import ModelInfo, export_model

    rng = np.random.default_rng(0)
    images = [rng.uniform(0, 255, (1, 32, 32, 3)).astype(np.float32) for _ in range(4)]
    return export_model(tiny_classifier_keras(classes=2), lambda: iter(images), output_dir=str(out),
                        labels=["no", "yes"], info=ModelInfo(name="tiny", description="tiny"), io_dtype=io_dtype,
                        **kwargs)


def test_failed_export_leaves_the_previous_set_whole(tmp_path, monkeypatch):
    """A rerun with --io int8 whose model write failed (disk full) left an int8 card beside the old uint8 model."""
    from tflite_export import export, files

    out = tmp_path / "run"
    _export_tiny(out, "uint8")
    before = {name: (out / name).read_bytes() for name in ("model.tflite", "labels.txt", "model_card.json")}
    assert ModelCard.from_json(before["model_card.json"]).input.dtype == "uint8"

    real_write = files.atomic_write_bytes

    def disk_full_on_model(path, data):
        if str(path).endswith("model.tflite"):
            raise OSError(errno.ENOSPC, f"cannot write {path}: No space left on device")
        real_write(path, data)

    monkeypatch.setattr(export, "atomic_write_bytes", disk_full_on_model)
    with pytest.raises(OSError, match="No space left"):
        _export_tiny(out, "int8")
    assert {name: (out / name).read_bytes() for name in before} == before
    assert len(list((out / ".artifacts").iterdir())) == 1  # the failed staging directory is gone
    assert not list(out.glob("**/.tmp-*"))


def test_export_publishes_the_set_with_one_swap_and_normal_modes(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    for name in ("model.tflite", "labels.txt", "model_card.json", "report.json"):  # a run from before the layout
        (out / name).write_text("old")
    _export_tiny(out, "uint8")
    assert not (out / "report.json").exists()  # the new set has no report: no stale one is left beside it
    first = os.path.realpath(out / "current")
    _export_tiny(out, "int8")
    second = os.path.realpath(out / "current")
    assert first != second and os.path.isdir(first)  # the previous set stays for a reader that resolved it
    for name in ("model.tflite", "labels.txt", "model_card.json"):
        assert os.readlink(out / name) == os.path.join("current", name)  # documented paths go through `current`
        assert os.path.realpath(out / name) == os.path.join(second, name)
    assert ModelCard.read(out / "model_card.json").input.dtype == "int8"
    _export_tiny(out, "uint8")
    assert not os.path.exists(first)  # older sets are removed


def test_written_files_respect_the_umask(tmp_path):
    from tflite_export.files import atomic_write_bytes

    old = os.umask(0o027)
    try:
        atomic_write_bytes(tmp_path / "a.bin", b"x")
    finally:
        os.umask(old)
    assert (tmp_path / "a.bin").stat().st_mode & 0o777 == 0o640


def test_shipped_files_are_readable_by_others(tiny_run):
    out, _ = tiny_run
    umask = os.umask(0)
    os.umask(umask)
    for name in ("model.tflite", "labels.txt", "model_card.json", "report.json"):
        assert (out / name).stat().st_mode & 0o777 == 0o666 & ~umask, name


# --------------------------------------------------------------------- 4 and 6. refused up front, before training
@pytest.mark.parametrize("case,args,needle", [
    ("one training image", ["--synthetic_size", "1,1"], "at least 2 training images"),
    ("batches of one", ["--batch_size", "1"], "--batch_size must be >= 2"),
    ("no calibration images", ["--calibration_images", "0"], "--calibration_images must be at least 1"),
    ("nothing trained", ["--float_epochs", "0", "--noqat"], "untrained network"),
    ("image size beyond memory", ["--image_size", "100000"], "reduce --image_size"),
    ("negative benchmark runs", ["--benchmark_runs", "-1"], "--benchmark_runs"),
    ("zero width", ["--alpha", "0"], "--alpha must be > 0"),
    ("dropout of one and a half", ["--dropout", "1.5"], "--dropout must be in [0, 1)"),
    ("missing weights file", ["--weights", "/nonexistent/w.h5"], "not found"),
])
def test_bad_flags_are_refused_before_any_data_is_loaded(pipeline_cli, tmp_path, case, args, needle):
    out = tmp_path / "out"
    code, err = pipeline_cli([*TINY, "--float_epochs", "1", "--qat_epochs", "1", "--output_dir", out, *args])
    assert needle in _error_line(code, err), case
    assert not out.exists()  # nothing created: not even the data cache


def test_output_dir_that_is_a_file_is_refused_up_front(pipeline_cli, tmp_path):
    out = tmp_path / "taken"
    out.write_text("not a folder")
    code, err = pipeline_cli([*TINY, "--float_epochs", "1", "--output_dir", out])
    assert "exists and is not a directory" in _error_line(code, err)
    assert out.read_text() == "not a folder"


def test_export_cli_out_that_is_a_file_is_refused_before_loading(tmp_path, capsys):
    from tflite_export import export
    from tflite_export.cli import run_main

    out = tmp_path / "taken"
    out.write_text("x")
    code = run_main(export.main, [str(tmp_path / "missing.h5"), "--dataset", str(tmp_path), "--output_dir", str(out)],
                    prog="tflite_export.export")
    line = _error_line(code, capsys.readouterr().err, "tflite_export.export")
    assert "exists and is not a directory" in line and "missing.h5" not in line  # refused before the model is read


@pytest.mark.parametrize("tool", ["benchmark", "evaluate"])
def test_json_to_an_unwritable_path_is_refused_before_the_work(tiny_models, tmp_path, capsys, tool):
    from tflite_export import benchmark, evaluate
    from tflite_export.cli import run_main

    target = tmp_path / "no-such-folder" / "sub" / "out.json"
    (tmp_path / "no-such-folder").write_text("a file, not a folder")
    if tool == "benchmark":
        main, args = benchmark.main, ["--runs", "3"]
    else:
        main, args = evaluate.main, ["--dataset", str(_image_folders(tmp_path / "data", "abcd", per_class=1))]
    code = run_main(main, [str(tiny_models["four"]), *args, "--json", str(target)], prog=tool)
    captured = capsys.readouterr()
    line = _error_line(code, captured.err, tool)
    assert str(target) in line and ".tmp" not in line
    assert captured.out == ""  # refused before the benchmark or evaluation printed anything


def test_conversion_without_calibration_images_is_a_conversion_error():
    from tflite_export.convert import ConversionError, convert

    with pytest.raises(ConversionError, match="no calibration images"):
        convert(tiny_classifier_keras(classes=2), lambda: iter(()))


# ------------------------------------------------------------------- 4 and 5. models that used to crash the tools
def test_collapsed_ranges_are_reported_without_running_xnnpack(tmp_path):
    """A network whose activations died (trained on one image: BatchNorm over one value) has ~4e-9 activation scales;
    LiteRT's XNNPACK delegate aborted the process on the file. The model is reported, not run."""
    from keras_models.backend import keras, tf
    from tflite_export.verify import analyze, problems_of

    model = tiny_classifier_keras(classes=2, softmax=False)
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            layer.set_weights([np.zeros_like(w) for w in layer.get_weights()])  # every activation is 0
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = converter.inference_output_type = tf.uint8
    converter.representative_dataset = lambda: ([np.full((1, 32, 32, 3), 100, np.float32)] for _ in range(2))
    analysis = analyze(converter.convert())
    assert analysis.collapsed_ranges and analysis.xnnpack_partitions is None
    assert "collapsed" in analysis.xnnpack_error
    assert any("collapsed range" in p for p in problems_of(analysis))


@pytest.mark.parametrize("tool", ["inspect", "evaluate", "benchmark"])
def test_truncated_model_is_one_line_not_struct_error(tiny_models, tmp_path, tool):
    data = tiny_models["four"].read_bytes()
    cut = tmp_path / "cut.tflite"
    cut.write_bytes(data[: len(data) // 2])
    # A valid data set (4 classes for 4 outputs), so that evaluate gets as far as reading the model.
    extra = ["--dataset", str(_image_folders(tmp_path / "data", "abcd", per_class=1))] if tool == "evaluate" else []
    result = subprocess.run([os.sys.executable, "-m", f"tflite_export.{tool}", str(cut), *extra], cwd=REPO,
                            capture_output=True, text=True, timeout=300)
    line = _error_line(result.returncode, result.stderr, f"tflite_export.{tool}")
    assert "truncated or corrupt" in line and str(cut) in line


def test_out_of_memory_is_one_line_naming_what_to_reduce():
    from tflite_export.cli import one_line_error

    line = one_line_error(MemoryError("Unable to allocate 27.9 TiB for an array with shape (1000, 100000, 100000, 3)"))
    assert line.startswith("out of memory") and "image size" in line and "\n" not in line


# -------------------------------------------------------------------------------------------------- slow: disk full
def _small_tmpfs(path: pathlib.Path, size: str):
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("needs root to mount a small tmpfs (a real full disk)")
    path.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")


@pytest.mark.slow
def test_disk_full_during_a_checkpoint_is_one_line_and_leaves_no_partial_file(tmp_path):
    disk = tmp_path / "disk"
    _small_tmpfs(disk, "3m")  # room for the synthetic cache (1.5 MB), not for a checkpoint with optimizer state
    try:
        out = disk / "run"
        result = run_pipeline([*TINY, "--float_epochs", "2", "--qat_epochs", "0", "--noqat", "--output_dir", out])
        line = _error_line(result.returncode, result.stderr)
        assert "no space left on device" in line.lower() and str(out) in line, line
        assert not [p for p in out.glob("**/*") if ".tempstate" in p.name or p.name.endswith("_temp")]
        assert not (out / "model.tflite").exists()
    finally:
        subprocess.run(["umount", str(disk)], check=False)


@pytest.mark.slow
def test_one_image_run_no_longer_reaches_the_native_abort(tmp_path):
    """Before the up-front check this trained for ~100 s and then died with 'double free or corruption' (exit 134)."""
    result = run_pipeline([*TINY, "--synthetic_size", "1,1", "--float_epochs", "1", "--qat_epochs", "1",
                           "--freeze_bn_epochs", "0", "--output_dir", tmp_path / "out"])
    assert "at least 2 training images" in _error_line(result.returncode, result.stderr)


# ------------------------------------------------------------------- issue 28, 1. no native abort on a written file
def _with_scale_shrunk(model: bytes, op_name: str, factor: float) -> bytes:
    """`model` with the output scale of its first `op_name` op multiplied by `factor` (the flatbuffer repacked)."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    graph = schema.ModelT.InitFromObj(schema.Model.GetRootAs(model, 0))
    names = {code: name for name, code in vars(schema.BuiltinOperator).items() if not name.startswith("_")}
    subgraph = graph.subgraphs[0]
    op = next(op for op in subgraph.operators if names[max(graph.operatorCodes[op.opcodeIndex].builtinCode,
                                                             graph.operatorCodes[op.opcodeIndex].deprecatedBuiltinCode)]
              == op_name)
    quantization = subgraph.tensors[op.outputs[0]].quantization
    quantization.scale = [s * factor for s in quantization.scale]
    builder = flatbuffers.Builder(1024)
    builder.Finish(graph.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


@pytest.fixture(scope="module")
def conv_overflow(tiny_models, tmp_path_factory):
    """A file whose first convolution's output range is 10^6 times narrower: input scale x filter scale / output scale
    is far above the 256 XNNPACK accepts."""
    path = tmp_path_factory.mktemp("conv_overflow") / "overflow.tflite"
    path.write_bytes(_with_scale_shrunk(tiny_models["four"].read_bytes(), "CONV_2D", 1e-6))
    return path


@pytest.fixture(scope="module")
def xnnpack_killer(tmp_path_factory):
    """A file LiteRT's XNNPACK delegate aborts the process on ("free(): double free detected"): a conv, h-swish-like
    ADD and MUL ops, a depthwise conv, with the first ADD's output scale 10^6 times too small."""
    from keras_models.backend import tf

    keras.utils.set_random_seed(0)
    inputs = keras.Input((32, 32, 3), batch_size=1)
    x = keras.layers.Rescaling(1 / 127.5, offset=-1)(inputs)
    for layer in (keras.layers.Conv2D(8, 3, strides=2), keras.layers.DepthwiseConv2D(3)):
        x = layer(x)
        x = keras.layers.Multiply()([x, keras.layers.ReLU(6.0)(keras.layers.Add()([x, x]))])
    x = keras.layers.Dense(4)(keras.layers.GlobalAveragePooling2D()(x))
    converter = tf.lite.TFLiteConverter.from_keras_model(keras.Model(inputs, keras.layers.Softmax()(x)))
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = converter.inference_output_type = tf.uint8
    rng = np.random.default_rng(0)
    converter.representative_dataset = lambda: ([rng.uniform(0, 255, (1, 32, 32, 3)).astype(np.float32)]
                                                for _ in range(8))
    path = tmp_path_factory.mktemp("xnnpack_killer") / "killer.tflite"
    path.write_bytes(_with_scale_shrunk(converter.convert(), "ADD", 1e-6))
    return path


def test_the_native_abort_is_real_and_the_child_process_check_survives_it(xnnpack_killer):
    """The child process (tflite_export/xnnpack_child.py) is what stands between the tools and the abort: run on the
    file directly, it dies with SIGABRT; through verify's check, the caller gets a line saying so."""
    from tflite_export.verify import _xnnpack_analysis, xnnpack_child_command

    died = subprocess.run(xnnpack_child_command(str(xnnpack_killer)), cwd=xnnpack_killer.parent, capture_output=True,
                          text=True, timeout=120)
    assert died.returncode < 0, died.stderr[-500:]  # killed by a signal: what any in-process interpreter would do
    result = _xnnpack_analysis(xnnpack_killer.read_bytes())
    assert result["xnnpack_partitions"] is None and "crashed" in result["xnnpack_error"]
    assert "SIGABRT" in result["xnnpack_error"] or "SIGSEGV" in result["xnnpack_error"], result["xnnpack_error"]


@pytest.mark.parametrize("tool", ["evaluate", "benchmark"])
def test_a_file_xnnpack_cannot_run_is_one_line_not_an_abort(conv_overflow, tmp_path, capsys, tool):
    from tflite_export import benchmark, evaluate
    from tflite_export.cli import run_main

    extra = ["--dataset", str(_image_folders(tmp_path / "data", "abcd", per_class=1))] if tool == "evaluate" else \
        ["--runs", "2"]
    code = run_main({"evaluate": evaluate.main, "benchmark": benchmark.main}[tool], [str(conv_overflow), *extra],
                    prog=tool)
    line = _error_line(code, capsys.readouterr().err, tool)
    assert str(conv_overflow) in line and "requantization scale" in line and "CONV_2D" in line, line


def test_inspect_and_verify_name_the_convolution_xnnpack_refuses(conv_overflow):
    from tflite_export.inspect import inspect_model
    from tflite_export.verify import VerificationError, verify

    report = inspect_model(conv_overflow)
    assert report.analysis.requantization_overflows and report.analysis.xnnpack_partitions is None
    assert any("requantization scale" in p for p in report.problems) and not report.passed
    with pytest.raises(VerificationError, match="requantization scale"):
        verify(conv_overflow)


def test_a_last_batch_too_small_for_batch_norm_is_dropped():
    """3 images in batches of 2 trained BatchNorm on a last batch of one; 25 in batches of 8 over 2 replicas gave one
    replica no image at all. Each epoch now has only batches every replica can normalize."""
    from pipeline.data import DataError, load_dataset

    def sizes(train, batch, replicas):
        data = load_dataset("synthetic", image_size=8, batch_size=batch, synthetic_size=(train, 1), replicas=replicas)
        return [int(images.shape[0]) for images, _ in data.train]

    assert sizes(3, 2, 1) == [2]
    assert sizes(7, 3, 1) == [3, 3]
    assert sizes(8, 3, 1) == [3, 3, 2]
    assert sizes(25, 8, 2) == [8, 8, 8]
    with pytest.raises(DataError, match="not one full batch of --batch_size 8"):
        load_dataset("synthetic", image_size=8, batch_size=8, synthetic_size=(5, 1), replicas=2)


@pytest.mark.slow
def test_three_images_in_batches_of_two_export_a_file_xnnpack_runs(tmp_path):
    out = tmp_path / "out"
    result = run_pipeline(["--variant", "small", "--alpha", "0.35", "--image_size", "32", "--synthetic_size", "3,1",
                           "--batch_size", "2", "--float_epochs", "2", "--qat_epochs", "1", "--calibration_images", "3",
                           "--benchmark_runs", "2", "--output_dir", out])
    assert result.returncode == 0, result.stderr[-2000:]
    assert not list((out / ".artifacts").glob("*-*")) or len(list((out / ".artifacts").iterdir())) == 1


@pytest.mark.slow
def test_mirrored_training_with_a_short_last_batch(tmp_path):
    """25 images, global batch 8 over 2 CPU replicas: the last batch of one image gave one replica nothing."""
    photos = _image_folders(tmp_path / "photos", ["a", "b"], per_class=16)
    for sync in ([], ["--sync_batch_norm"]):
        out = tmp_path / f"out{len(sync)}"
        result = run_pipeline(["--variant", "small", "--alpha", "0.35", "--image_size", "32", "--dataset", photos,
                               "--batch_size", "8", "--strategy", "mirrored", "--cpu_replicas", "2",
                               "--float_epochs", "1", "--qat_epochs", "0", "--noqat", "--calibration_images", "4",
                               "--benchmark_runs", "0", "--output_dir", out, *sync])
        assert result.returncode == 0, result.stderr[-2000:]


# ------------------------------------------------------------- issue 28, 4, 5 and 8. refusals before data, the folder
@pytest.fixture(scope="module")
def other_architecture_h5(tmp_path_factory):
    import keras_models

    path = tmp_path_factory.mktemp("v1_weights") / "v1.h5"
    keras_models.build("v1", input_shape=(32, 32, 3), alpha=0.25, num_classes=3).save_weights(str(path))
    return path


def test_weights_of_another_architecture_are_refused_naming_the_file(other_architecture_h5):
    import keras_models

    with pytest.raises(keras_models.WeightsError, match=r"v1\.h5 matches 0 of the model's \d+ layers"):
        keras_models.build("small", input_shape=(32, 32, 3), alpha=0.35, num_classes=3,
                           weights=str(other_architecture_h5))


@pytest.mark.parametrize("case,args,needle", [
    ("weights of another architecture", ["--weights", "V1"], "matches 0 of the model's"),
    ("transfer without weights", ["--recipe", "transfer"], "--recipe transfer fine-tunes pretrained weights"),
])
def test_refused_before_the_data_is_loaded(pipeline_cli, other_architecture_h5, tmp_path, case, args, needle):
    out = tmp_path / "out"
    args = [str(other_architecture_h5) if a == "V1" else a for a in args]
    code, err = pipeline_cli([*TINY, "--float_epochs", "1", "--dataset", "/nonexistent/photos", "--output_dir", out,
                              *args])
    assert needle in _error_line(code, err), case
    assert not out.exists()


def test_a_first_run_that_fails_after_the_data_loads_does_not_lock_the_folder(pipeline_cli, tmp_path, monkeypatch):
    """The run record used to stay, and the corrected command was refused with "rerun with the same flags to resume
    it", which could never succeed."""
    from pipeline import train_and_export

    def failing_build(config, run_data):
        raise ValueError("the model cannot be built (a failure after the data loaded)")

    out = tmp_path / "out"
    small = [*TINY, "--synthetic_size", "8,4", "--float_epochs", "1", "--output_dir", out]
    with monkeypatch.context() as patch:
        patch.setattr(train_and_export, "build_model", failing_build)
        code, err = pipeline_cli([*small, "--image_size", "48"])
    assert "cannot be built" in _error_line(code, err)
    assert not (out / "run_config.json").exists()
    with monkeypatch.context() as patch:  # the corrected command is a new run, not a refused resume
        patch.setattr(train_and_export, "build_model", failing_build)
        code, err = pipeline_cli(small)
    assert "cannot be built" in _error_line(code, err)


def test_a_second_run_into_a_folder_in_use_is_refused(pipeline_cli, tmp_path):
    from tflite_export.files import exclusive_folder

    out = tmp_path / "out"
    with exclusive_folder(out):  # the first run, still going
        code, err = pipeline_cli([*TINY, "--float_epochs", "1", "--output_dir", out])
    line = _error_line(code, err)
    assert "in use by another run" in line and str(out) in line
    assert list(out.iterdir()) == []  # refused before it wrote anything


# ------------------------------------------------------------------- issue 28, 3, 10, 11. import_tflite and evaluate
@pytest.mark.parametrize("count", [5, 999])
def test_import_refuses_labels_the_files_classifier_cannot_give(shared, tmp_path, count):
    """5 labels published a 5-class model with an untrained head; 999 scored int8 top-1 0.003 and exited 0."""
    from keras_models import WeightsError
    from keras_models.tflite_weights import check_label_count

    model = shared("reference_models", "mobilenet_v3", "v3-small_224_1.0_uint8.tflite")
    with pytest.raises(WeightsError, match=f"has {count} labels but the classifier of .* gives 1001 outputs"):
        check_label_count(str(model), [f"class {i}" for i in range(count)], "labels.txt")
    check_label_count(str(model), [f"class {i}" for i in range(1000)], "labels.txt")  # background dropped: accepted


@pytest.mark.parametrize("mean", ["nan", "inf"])
def test_evaluate_refuses_a_mean_that_is_not_a_number(tiny_models, tmp_path, capsys, mean):
    from tflite_export import evaluate
    from tflite_export.cli import run_main

    code = run_main(evaluate.main, [str(tiny_models["four"]), "--dataset", str(tmp_path), "--mean", mean, "--std",
                                    "1"], prog="tflite_export.evaluate")
    assert "must be finite" in _error_line(code, capsys.readouterr().err, "tflite_export.evaluate")


# ------------------------------------------------------------------------ issue 28, 7. multi_worker without its peer
def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _tf_config(addresses: list[str], index: int) -> dict:
    return {"cluster": {"worker": addresses}, "task": {"type": "worker", "index": index}}


def test_multi_worker_names_the_peer_that_does_not_answer():
    """TensorFlow waited for a missing peer inside one C++ call: no output for 10 minutes, Ctrl-C ignored."""
    import time

    from pipeline.distribute import wait_for_peers

    missing = f"localhost:{_free_port()}"
    started = time.monotonic()
    with pytest.raises(ValueError, match=f"worker 1 at {missing} did not answer within 1 s"):
        wait_for_peers(_tf_config([f"localhost:{_free_port()}", missing], 0), timeout=1.0, poll=0.1)
    assert time.monotonic() - started < 10
    with pytest.raises(ValueError, match="worker 1 address no-such-host.invalid:2222 does not resolve"):
        wait_for_peers(_tf_config([f"localhost:{_free_port()}", "no-such-host.invalid:2222"], 0), timeout=60)


def test_multi_worker_peers_meet_whichever_starts_first():
    """Each worker listens on its own port while it waits, and its port is free for TensorFlow's server after."""
    import socket
    import threading

    from pipeline.distribute import wait_for_peers

    addresses = [f"localhost:{_free_port()}" for _ in range(2)]
    errors, servers = [], []

    def worker(index):
        try:
            wait_for_peers(_tf_config(addresses, index), timeout=20, poll=0.1)
            server = socket.socket()  # what TensorFlow's server does next: bind the same port
            server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            server.bind(("", int(addresses[index].rpartition(":")[2])))
            server.listen(4)
            servers.append(server)
        except (ValueError, OSError) as err:
            errors.append(err)

    threads = [threading.Thread(target=worker, args=(index,)) for index in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    for server in servers:
        server.close()
    assert not errors and len(servers) == 2, errors


@pytest.mark.slow  # two pipeline processes that import TensorFlow (~10 s)
@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_ctrl_c_and_sigterm_stop_a_worker_waiting_for_its_peer(tmp_path, sig):
    import signal
    import sys
    import time

    addresses = [f"localhost:{_free_port()}" for _ in range(2)]
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CONFIG": json.dumps(_tf_config(addresses, 0))}
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.train_and_export", *TINY, "--strategy", "multi_worker",
                             "--output_dir", str(tmp_path / "out")], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if "waiting up to" in line:
            break
    assert "waiting up to" in seen[-1] and addresses[1] in seen[-1], "".join(seen[-20:])
    sent = time.monotonic()
    proc.send_signal(getattr(signal, sig))
    rest = proc.communicate(timeout=30)[1]
    assert time.monotonic() - sent < 10
    line = _error_line(proc.returncode, rest)
    assert "stopped while waiting for worker 1 at " + addresses[1] in line, line


# ------------------------------------------------------------------------ issue 28, 9. writing into the wrong folder
def _run_folder(folder: pathlib.Path, *names: str) -> pathlib.Path:
    folder.mkdir(parents=True)
    for name in names:
        (folder / name).write_text("{}")
    return folder


def test_folder_kinds_are_told_by_their_files(tmp_path):
    from tflite_export import files

    assert files.folder_kind(tmp_path / "missing") is None and files.folder_kind(tmp_path) is None
    cases = {("run_config.json", "model.tflite", "report.json"): files.TRAINING_RUN,
             ("report.json", "model.tflite"): files.TRAINING_RUN,  # a run made before run_config.json existed
             ("import_report.json", "model.tflite"): files.IMPORT_RUN,
             ("state.json", "report.json"): files.NETADAPT_SEARCH,
             ("model.tflite", "labels.txt"): files.EXPORT_RUN}
    for index, (names, kind) in enumerate(cases.items()):
        folder = _run_folder(tmp_path / str(index), *names)
        assert files.folder_kind(folder) == kind, names
        files.check_folder_kind(folder, kind, "--out")  # the same kind of run: a rerun, accepted


def test_export_refuses_a_training_runs_folder_before_loading(tmp_path, capsys):
    """It replaced the run's model and unpublished its report, without a word."""
    from tflite_export import export
    from tflite_export.cli import run_main

    run = _run_folder(tmp_path / "run", "run_config.json", "report.json", "model.tflite")
    before = _snapshot(run)
    code = run_main(export.main, [str(tmp_path / "missing.h5"), "--dataset", str(tmp_path), "--output_dir", str(run)],
                    prog="tflite_export.export")
    line = _error_line(code, capsys.readouterr().err, "tflite_export.export")
    assert "holds a training run (pipeline.train_and_export)" in line and "missing.h5" not in line, line
    assert _snapshot(run) == before


def test_training_refuses_an_imports_folder_before_loading_data(pipeline_cli, tmp_path):
    folder = _run_folder(tmp_path / "imported", "import_report.json", "model.tflite")
    before = _snapshot(folder)
    code, err = pipeline_cli([*TINY, "--float_epochs", "1", "--dataset", "/nonexistent/photos", "--output_dir", folder])
    assert "holds an import (pipeline.import_tflite)" in _error_line(code, err)
    assert _snapshot(folder) == before


@pytest.mark.slow  # a process that imports TensorFlow: import_tflite's flags clash with the pipeline's in this one
def test_import_refuses_a_training_runs_folder_before_reading_the_file(tmp_path):
    import sys

    run = _run_folder(tmp_path / "run", "run_config.json", "model.tflite")
    result = subprocess.run([sys.executable, "-m", "pipeline.import_tflite", "--weights", str(tmp_path / "x.tflite"),
                             "--labels", str(tmp_path / "labels.txt"), "--calibration_dir", str(tmp_path),
                             "--output_dir", str(run)], cwd=REPO, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert "holds a training run" in _error_line(result.returncode, result.stderr)


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny_export") / "run"
    _export_tiny(out, "uint8")
    return out


@pytest.mark.parametrize("case,change,needle", [
    ("input size", {"input": {"height": 64}}, "input.height x width x channels is 64x32x3 but its model says 32x32x3"),
    ("input dtype", {"input": {"dtype": "int8"}}, "input.dtype is int8 but its model says uint8"),
    ("activation", {"output": {"activation": "none"}}, "output.activation is none but its model says softmax"),
    ("output quantization", {"output": {"scale": 0.5}}, "output.scale, zero_point is 0.5, 0"),
    ("absolute labels path", {"labels_file": "/etc/hostname"}, "is not a file of the card's folder"),
    ("labels outside the folder", {"labels_file": "../labels.txt"}, "is not a file of the card's folder"),
])
def test_install_model_refuses_a_card_its_model_contradicts(tiny_export, tmp_path, capsys, case, change, needle):
    """The app threw at start-up on such a card; an absolute labels_file was copied from wherever it pointed."""
    from pipeline.android import main
    from tflite_export.cli import run_main

    folder = tmp_path / "model"
    shutil.copytree(tiny_export, folder / "export", symlinks=False)
    folder = folder / "export"
    (folder.parent / "labels.txt").write_text("no\nyes\n")
    card = json.loads((folder / "model_card.json").read_text())
    for key, value in change.items():
        card[key] = {**card[key], **value} if isinstance(value, dict) else value
    (folder / "model_card.json").unlink()
    (folder / "model_card.json").write_text(json.dumps(card))
    assets = tmp_path / "assets"
    assert run_main(main, [str(folder), "--assets", str(assets)], prog="pipeline.android") == 2, case
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0], err
    assert not assets.exists()


def test_install_model_installs_a_consistent_export(tiny_export, tmp_path):
    from pipeline.android import main

    assert main([str(tiny_export), "--assets", str(tmp_path / "assets")]) == 0
    assert sorted(p.name for p in (tmp_path / "assets").iterdir()) == ["labels.txt", "model.tflite", "model_card.json"]


# ---------------------------------------------------------------- issue 28, 10 and 12. tracebacks, misleading lines
def test_builtin_hswish_refusal_names_flags_that_exist():
    """It said "(use --no-qat)"; the pipeline's flag is --noqat."""
    import re

    from absl import flags

    from pipeline.config import RunConfig, define_flags
    from pipeline.qat import quantize_model
    from tflite_export.convert import ConversionError, convert

    pipeline_flags = flags.FlagValues()
    define_flags(RunConfig, pipeline_flags)
    with pytest.raises(ConversionError) as error:
        convert(quantize_model(tiny_classifier_keras(classes=2)), lambda: iter(()), hswish="builtin")
    named = re.findall(r"--(\w+)", str(error.value))
    assert named, str(error.value)
    for name in named:
        assert name in pipeline_flags or (name.startswith("no") and pipeline_flags[name[2:]].boolean), name


def test_calibration_images_that_are_not_images_are_one_line_naming_the_file(tmp_path, capsys):
    """A folder of non-images named .jpg ended in a DecodeImage traceback."""
    from tflite_export import export
    from tflite_export.cli import run_main

    model = tmp_path / "float.h5"
    tiny_classifier_keras(classes=2).save(model)
    photos = tmp_path / "photos"
    for name in ("a", "b"):
        (photos / name).mkdir(parents=True)
        (photos / name / "1.jpg").write_text("<html>not a photo</html>")
    (tmp_path / "labels.txt").write_text("a\nb\n")
    out = tmp_path / "out"
    code = run_main(export.main, [str(model), "--dataset", str(photos), "--labels", str(tmp_path / "labels.txt"),
                                  "--output_dir", str(out), "--calibration_images", "2"], prog="tflite_export.export")
    line = _error_line(code, capsys.readouterr().err, "tflite_export.export")
    assert "1.jpg: cannot be read as an image" in line and "conversion failed" not in line, line
    assert not (out / "model.tflite").exists()



def test_export_of_a_model_that_is_not_a_keras_image_classifier_is_one_line(tmp_path, capsys):
    """An unrelated SavedModel ended in "AttributeError: '_UserObject' object has no attribute 'input_shape'"."""
    from keras_models.backend import tf
    from tflite_export import export
    from tflite_export.cli import run_main

    module = tf.Module()
    module.double = tf.function(lambda x: 2 * x, input_signature=[tf.TensorSpec([None, 3])])
    tf.saved_model.save(module, str(tmp_path / "unrelated"))
    inputs = keras.Input((10,))
    keras.Model(inputs, keras.layers.Dense(2)(inputs)).save(tmp_path / "dense.h5")
    photos = _image_folders(tmp_path / "photos", ["a", "b"], per_class=1)
    for name, needle in (("unrelated", "is a SavedModel but not a Keras model"),
                         ("dense.h5", "is not an image classifier this tool exports")):
        code = run_main(export.main, [str(tmp_path / name), "--dataset", str(photos), "--output_dir",
                                      str(tmp_path / "out")],
                        prog="tflite_export.export")
        line = _error_line(code, capsys.readouterr().err, "tflite_export.export")
        assert needle in line and str(tmp_path / name) in line, line


@pytest.mark.parametrize("change,needle", [
    ({"calibration_images": 0}, "--calibration_images must be at least 1"),  # was a ZeroDivisionError
    ({"calibration_images": -5}, "--calibration_images must be at least 1"),  # was accepted
    ({"distill_views": 0}, "--distill_views must be at least 1"),  # was "need at least one array to stack"
    ({"distill_epochs": 0}, "--distill_epochs must be at least 1"),
    ({"image_size": 8}, "--image_size must be at least"),
])
def test_import_settings_are_refused_up_front(change, needle):
    from pipeline.import_tflite import ImportConfig, check_settings

    config = ImportConfig(weights="x.tflite", labels="labels.txt", calibration_dir="photos", distill_dir="photos")
    check_settings(config)  # the defaults pass
    with pytest.raises(ValueError, match=needle):
        check_settings(dataclasses.replace(config, **change))


def test_misleading_one_liners_now_say_what_is_wrong(tmp_path):
    """An empty labels file ("num_classes ... got 0"), a model that is not an image model ("not enough values to
    unpack"), a corrupt settings file or finished-stage weights (JSON and h5 errors that named no file), an --assets
    that is a file (a raw "[Errno 17]")."""
    from pipeline.android import InstallError, install
    from pipeline.train import Recipe, check_same_settings, run_stage
    from tflite_export.convert import ConversionError, convert
    from tflite_export.files import read_labels

    empty = tmp_path / "labels.txt"
    empty.write_text("\n\n")
    with pytest.raises(ValueError, match=f"--labels {empty} is empty"):
        read_labels(empty, "--labels")
    inputs = keras.Input((10,))
    with pytest.raises(ConversionError, match=r"input is \(None, 10\): this converter exports image models"):
        convert(keras.Model(inputs, keras.layers.Dense(2)(inputs)), lambda: iter(()))
    settings = tmp_path / "float.settings.json"
    settings.write_text("{not json")
    with pytest.raises(ValueError, match=f"{settings} is not valid JSON"):
        check_same_settings(str(settings), {"epochs": 1}, "a float stage trained", str(tmp_path))
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    (tmp_path / "run" / "checkpoints" / "float.weights.h5").write_bytes(b"cut short")
    with pytest.raises(ValueError, match="cannot load the finished float stage's weights .*float.weights.h5 .*: "
                                         "delete the file"):
        run_stage("float", tiny_classifier_keras(classes=2), None, None, epochs=1, num_train=2,
                  recipe=Recipe(learning_rate=0.01, warmup_epochs=0), workdir=str(tmp_path / "run"), batch_size=2)
    (tmp_path / "assets").write_text("a file")
    with pytest.raises(InstallError, match="--assets .*assets exists and is not a directory"):
        install(REPO / "android_demo" / "app" / "src" / "main" / "assets", tmp_path / "assets")


def test_unreadable_images_are_one_warning_with_a_count(tmp_path, caplog):
    """10,000 unreadable files gave 10,000 identical warnings and no count."""
    import logging

    from pipeline.data import load_dataset

    photos = _image_folders(tmp_path / "photos", ["a", "b"], per_class=3)
    for i in range(10):
        (photos / "a" / f"broken{i}.jpg").write_text("not a photo")
    with caplog.at_level(logging.WARNING):
        data = load_dataset(str(photos), image_size=32, batch_size=2, seed=0, on_bad_image="skip")
    warnings = [r.getMessage() for r in caplog.records if "unreadable" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].startswith("skipping 10 unreadable image file(s): ")
    assert "broken0.jpg" in warnings[0] and warnings[0].endswith("; and 7 more"), warnings[0]
    assert len(data.skipped_files) == 10

# ----------------------------------------------------- issue 28, 10 and 11. NetAdapt's state, resume and target
def _netadapt_settings(out: pathlib.Path, dataset: pathlib.Path, **changes):
    """A resolved NetAdaptConfig and the record of the run it starts from (a folder that need not exist)."""
    from pipeline.netadapt import NetAdaptConfig, StartRun

    start = StartRun(float_model="runs/x/float_model.h5", variant="small", alpha=0.35, minimalistic=False,
                     num_classes=2, image_size=32, dataset=str(dataset), freeze_batch_norm=False)
    config = NetAdaptConfig(run_dir="runs/x", output_dir=str(out), target_ratio=0.5, batch_size=2, finetune_steps=2,
                            holdout_images=2, latency_calibration_images=1, latency_runs=1, max_iterations=1,
                            search_only=True, **changes)
    return config.resolved(start), start


def _netadapt_state(config, start, ratios=(1.0, 0.8)):
    """A search that ran len(ratios) - 1 iterations and stopped at ratios[-1] x the start latency."""
    from keras_models.mobilenet_v3 import ArchTable
    from pipeline import netadapt

    arch = ArchTable.paper("small", 0.35).to_json()
    snapshots = [netadapt.Snapshot(i, arch, f"iter{i}.weights.h5", 0.5, 10 * r, r, 2 * i) for i, r in enumerate(ratios)]
    recorded = netadapt.search.state_settings(config, start)
    return netadapt.SearchState(settings=recorded, start_ms=10.0, target_ratio=config.target_ratio,
                                target_note=f"{config.target_ratio:g} x the start", snapshots=snapshots,
                                history=[], slopes={})


@pytest.mark.parametrize("drop,needle", [("target_ratio", "missing ['target_ratio']"),
                                         ("settings.dataset", "lack ['dataset']"),
                                         ("snapshots.0.accuracy", "missing ['accuracy']")])
def test_netadapt_state_with_a_key_missing_is_one_line(tmp_path, drop, needle):
    """A state.json with a key missing ended in a TypeError traceback."""
    from pipeline import netadapt

    path = tmp_path / "state.json"
    _netadapt_state(*_netadapt_settings(tmp_path, tmp_path)).save(str(path))
    data = json.loads(path.read_text())
    *parents, key = drop.split(".")
    node = data
    for part in parents:
        node = node[int(part)] if part.isdigit() else node[part]
    del node[key]
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="not a NetAdapt state this version can resume") as error:
        netadapt.SearchState.load(str(path))
    assert needle in str(error.value) and str(path) in str(error.value) and "\n" not in str(error.value)


def test_netadapt_resume_checks_dropout_and_weight_decay(tmp_path):
    from pipeline import netadapt
    from pipeline.data import DataError

    out, missing = tmp_path / "search", tmp_path / "no-such-photos"
    out.mkdir()
    config, start = _netadapt_settings(out, missing)
    state = _netadapt_state(config, start)
    state.save(str(out / "state.json"))
    for change, needle in (({"dropout": 0.5}, "dropout 0.2 -> 0.5"),
                           ({"weight_decay": 0.0}, "weight_decay 4e-05 -> 0.0")):
        with pytest.raises(ValueError, match=needle):  # refused before the (missing) data set is read
            netadapt.run(dataclasses.replace(config, **change), start)
    for key in netadapt.LATER_SEARCH_KEYS:  # a state recorded before them: resumed, not refused on them
        del state.settings[key]
    state.save(str(out / "state.json"))
    with pytest.raises(DataError):
        netadapt.run(dataclasses.replace(config, dropout=0.5), start)


def test_netadapt_that_stops_above_its_target_says_so_and_fails(tmp_path, monkeypatch, capsys):
    """An unreachable target exited 0 with no "target not met" line."""
    from pipeline import netadapt

    out = tmp_path / "search"
    out.mkdir()
    photos = _image_folders(tmp_path / "photos", ["a", "b"], per_class=4)
    config, start = _netadapt_settings(out, photos)
    _netadapt_state(config, start, ratios=(1.0, 0.8)).save(str(out / "state.json"))  # max_iterations 1 reached at 0.8
    monkeypatch.setattr(netadapt.StartRun, "read", staticmethod(lambda run_dir: start))  # the run folder's record
    defaults = netadapt.NetAdaptConfig()
    argv = [f"--{f.name}={getattr(config, f.name)}" for f in dataclasses.fields(config)
            if getattr(config, f.name) != getattr(defaults, f.name)]  # the config as the command's flags
    assert netadapt.main(argv) == 1  # the search ran; the target it was asked for was not met
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("pipeline.netadapt: error: target not met: the search stopped at 0.800 x the start latency "
                           "after 1 iteration(s)") and "above the target 0.5 x the start = 0.500" in line, line
    assert "target not met" in (out / "search_log.md").read_text()
    assert netadapt.target_shortfall(_netadapt_state(config, start, ratios=(1.0, 0.45)), 1) is None


# ------------------------------------------------------------------------- issue 28, 11. arch.json of wrong types
@pytest.mark.parametrize("where,key,value,needle", [
    ("bneck", "se", "false", "bneck 0: 'se' must be true or false, got \"false\""),
    ("bneck", "stride", 1.9, "bneck 0: 'stride' must be an integer, got 1.9"),
    ("bneck", "out", True, "bneck 0: 'out' must be an integer, got true"),
    ("table", "minimalistic", 0, "'minimalistic' must be true or false, got 0"),
    ("table", "stem", "16", "'stem' must be an integer, got \"16\""),
    ("bneck", "kernel", None, "bneck 0: 'kernel' must be an integer, got null"),
])
def test_arch_json_values_of_the_wrong_type_are_refused_naming_the_key(tmp_path, where, key, value, needle):
    """They were read as True ("false"), 1 (1.9) and 1 channel (true)."""
    import keras_models
    from keras_models.mobilenet_v3 import ArchTable, ArchTableError

    table = ArchTable.paper("small", 0.35).to_json()
    (table["bnecks"][0] if where == "bneck" else table)[key] = value
    path = tmp_path / "arch.json"
    path.write_text(json.dumps(table))
    with pytest.raises(ArchTableError) as error:
        keras_models.build("small", input_shape=(32, 32, 3), num_classes=2, arch=str(path))
    assert str(error.value) == f"{path}: {needle}"
    table = ArchTable.paper("small", 0.35).to_json()
    table["bnecks"][0]["stride"] = 2.0  # an integral number is an integer
    assert ArchTable.from_json(table) == ArchTable.paper("small", 0.35)


# --------------------------------------------------------------- issue 28, 6. calibration images and the input range
def _dim_images(count: int, low: float = 100.0, high: float = 140.0) -> list[np.ndarray]:
    """Low-contrast photos' pixels: nothing near 0 or 255."""
    rng = np.random.default_rng(0)
    return [rng.uniform(low, high, (1, 32, 32, 3)).astype(np.float32) for _ in range(count)]


def _qat_model(calibration):
    """The tiny classifier (a Rescaling of raw pixels, two convs), QAT-wrapped by `prepare_qat_model` on
    `calibration`: the input quantizer and rescaling every model of the project starts with."""
    from pipeline.qat import prepare_qat_model

    return prepare_qat_model(tiny_classifier_keras(classes=3, batch_size=None), calibration)[0]


def _input_ranges(qat_model) -> list[tuple[float, float]]:
    """(min, max) of the QAT model's input quantizer and of the Rescaling after it."""
    from pipeline.qat import pixel_range_bounds

    return [(float(low.numpy()), float(high.numpy())) for low, high, _, _ in pixel_range_bounds(qat_model)]


@pytest.mark.parametrize("path", ["QAT", "post-training"])
def test_dim_or_few_calibration_images_keep_the_pixel_input_range(path):
    """One calibration image, or dim ones, failed a QAT export late ("1 DEQUANTIZE op ... 1 float tensor
    .../quantize_layer/AllValuesQuantize": the converter calibrated the input quantizer's output on the images and
    left it in float where that range differed from training's), and gave a post-training file an input scale below
    1 (bright pixels clipped, and the input no longer the camera's bytes)."""
    from pipeline.qat import RangeRules
    from tflite_export.convert import convert
    from tflite_export.verify import analyze

    if path == "QAT":
        model = _qat_model(_dim_images(2))
        # Calibrated on pixels of 100..140, the input quantizer and the rescaling still cover every pixel,
        assert _input_ranges(model) == [(0.0, 255.0), (-1.0, 1.0)]
        # and training on such pixels does not narrow the rescaling's moving average again.
        model.compile(optimizer=keras.optimizers.SGD(0.01), loss="sparse_categorical_crossentropy")
        model.fit(np.concatenate(_dim_images(4)), np.array([0, 1, 2, 0]), batch_size=2, verbose=0,
                  callbacks=[RangeRules(model)])
        assert _input_ranges(model) == [(0.0, 255.0), (-1.0, 1.0)]
    else:
        model = tiny_classifier_keras(classes=3)
    for images in (_dim_images(1), _dim_images(3, 0.0, 128.0)):
        analysis = analyze(convert(model, lambda images=images: iter(images)), xnnpack=False)
        assert analysis.float_tensors == [] and "DEQUANTIZE" not in analysis.op_histogram, analysis.op_histogram
        assert (analysis.inputs[0].dtype, analysis.inputs[0].scale, analysis.inputs[0].zero_point) == ("uint8", 1.0, 0)


def test_the_input_ranges_change_nothing_when_the_images_span_every_pixel():
    """On calibration images that span 0..255, the file is TFLite's own conversion: every tensor, op and weight
    equal (only the conversion metadata's model hash differs)."""
    from tensorflow.lite.tools import flatbuffer_utils

    from tflite_export.convert import convert, int8_converter
    from tflite_export.quantization import widen_empty_kernel_ranges

    def graph(content: bytes):
        model = flatbuffer_utils.convert_bytearray_to_object(content)
        sub = model.subgraphs[0]

        def data(buffer):
            return None if model.buffers[buffer].data is None else bytes(bytearray(model.buffers[buffer].data))

        tensors = [(t.name, t.type, list(t.shape), data(t.buffer),
                    None if t.quantization is None or t.quantization.scale is None
                    else (list(t.quantization.scale), list(t.quantization.zeroPoint))) for t in sub.tensors]
        ops = [(model.operatorCodes[op.opcodeIndex].builtinCode, list(op.inputs), list(op.outputs))
               for op in sub.operators]
        return tensors, ops

    rng = np.random.default_rng(1)
    images = [rng.uniform(0, 255, (1, 32, 32, 3)).astype(np.float32) for _ in range(3)]
    images[0][0, 0, 0] = (0.0, 255.0, 0.0)  # every channel reaches both ends
    images[0][0, 0, 1] = (255.0, 0.0, 255.0)
    model = _qat_model(images)
    widen_empty_kernel_ranges(model)  # what convert() does first, so that the two differ in the input ranges alone
    ours = convert(model, lambda: iter(images), io_dtype="int8")
    theirs = int8_converter(model, lambda: ([image] for image in images), "int8").convert()
    assert graph(ours) == graph(theirs)


def test_a_tflite_start_with_an_upper_case_extension_is_read_as_tflite(shared, tmp_path):
    """`--weights X.TFLITE` was read as HDF5 ("file signature not found"), and its ranges were not imported."""
    import keras_models
    from pipeline.transfer import start_ranges

    original = shared("reference_models", "mobilenet_v3", "v3-small_224_1.0_uint8.tflite")
    upper = tmp_path / "V3-SMALL.TFLITE"
    upper.symlink_to(original)
    model = keras_models.build("small", input_shape=(224, 224, 3), num_classes=3)
    keras_models.check_weights_file(model, str(upper))  # loads the file's backbone, or raises
    ranges = start_ranges(str(upper))
    assert ranges is not None and ranges == start_ranges(str(original))
