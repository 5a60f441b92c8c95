"""android_demo/core: Kotlin unit tests, ktlint, and golden cross-checks against the Python pipeline.

The Kotlin toolchain (kotlinc + ktlint from npm, JUnit 4 from Debian) is installed by android_demo/scripts/setup_kotlin.sh
(called by scripts/setup.sh). Without it these tests skip locally, and fail in CI (CI=true), where it must be present.

Golden checks: for every photo in ../shared/datasets/test-photos, Python decodes it (tflite_export.preprocessing.decode_rgb) and
hands the *decoded* RGB bytes to Kotlin, so JPEG decoder differences cannot hide or cause a mismatch. Both sides then build
the 224x224 input tensor (central crop 87.5%, bilinear resize, quantization) and must agree byte for byte; Kotlin's
dequantize + top-5 over the LiteRT output of Google's MobileNetV3-Small must name the classes Python's top-5 names.
The same chain runs on a model this project exported (the session's tiny pipeline run), configured from its model card,
and on the app's bundled model in app/src/main/assets, configured from that folder the way the app configures itself
(GoldenCli's app-* commands); the bundled model's file rules and label/card/metadata agreement need only the assets.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import pathlib
import re
import shutil
import struct
import subprocess
import sys
import tomllib
import zipfile
from xml.etree import ElementTree

import numpy as np
import pytest

from tests.conftest import REPO, missing_tool, shared_path
from tflite_export.cli import run_main
from tflite_export.files import image_files
from tflite_export.model_card import SCHEMA_VERSION, ModelCard

DEMO = REPO / "android_demo"
TEST_SCRIPT = DEMO / "scripts" / "test_core.sh"
TOOLS = pathlib.Path(os.environ.get("KOTLIN_TOOLS_DIR", REPO / ".cache" / "kotlin"))
KOTLINC = TOOLS / "node_modules" / "kotlin-compiler" / "bin" / "kotlinc"
KTLINT = TOOLS / "node_modules" / "@naturalcycles" / "ktlint" / "resources" / "ktlint"
JUNIT = pathlib.Path("/usr/share/java/junit4.jar")
CLI_MAIN = "com.mobilenetpipeline.core.GoldenCliKt"
TOP_K = 5


def _require(*paths: pathlib.Path) -> None:
    """Skip (locally) or fail (CI) when part of the Kotlin toolchain is missing."""
    missing = [str(p) for p in paths if not p.exists()]
    if shutil.which("java") is None:
        missing.append("java")
    if not missing:
        return
    missing_tool(f"Kotlin toolchain missing ({', '.join(missing)}); install it with: bash android_demo/scripts/setup_kotlin.sh")


def _run(cmd: list[str], timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def kotlin_classpath() -> str:
    """Compiles core's main and test sources once per session; returns the classpath of the golden CLI."""
    _require(KOTLINC, JUNIT)
    result = _run(["bash", str(TEST_SCRIPT), "compile"])
    if result.returncode != 0:
        pytest.fail(f"compiling android_demo/core failed:\n{result.stdout}\n{result.stderr}")
    return _run(["bash", str(TEST_SCRIPT), "classpath"]).stdout.strip()


def _cli(classpath: str, *args: str) -> str:
    result = _run(["java", "-Xmx512m", "-XX:+UseSerialGC", "-cp", classpath, CLI_MAIN, *map(str, args)], timeout=300)
    assert result.returncode == 0, f"Kotlin CLI {args[0]} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def test_kotlin_unit_tests(kotlin_classpath):
    result = _run(["bash", str(TEST_SCRIPT), "test"])
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"Kotlin unit tests failed:\n{output}"
    assert "OK (" in output, output


def test_ktlint_clean():
    _require(KTLINT)
    result = _run(["bash", str(TEST_SCRIPT), "lint"])
    assert result.returncode == 0, f"ktlint found problems in android_demo:\n{result.stdout}\n{result.stderr}"


def test_kotlin_toolchain_is_the_gradle_builds_version():
    """core is compiled and tested here with the Kotlin that builds the APK (one version, in the Gradle catalog)."""
    _require(KOTLINC)
    catalog = tomllib.loads((DEMO / "gradle" / "libs.versions.toml").read_text())
    installed = json.loads((TOOLS / "node_modules" / "kotlin-compiler" / "package.json").read_text())["version"]
    assert installed == catalog["versions"]["kotlin"], "rerun android_demo/scripts/setup_kotlin.sh"


def test_gradle_wrapper_is_committed_and_runs_a_gradle_agp9_accepts():
    jar = DEMO / "gradle" / "wrapper" / "gradle-wrapper.jar"
    # The jar Gradle 9.4.1's `wrapper` task writes (BUILD_ANDROID.md says where it came from).
    assert hashlib.sha256(jar.read_bytes()).hexdigest() == "55243ef57851f12b070ad14f7f5bb8302daceeebc5bce5ece5fa6edb23e1145c"
    with zipfile.ZipFile(jar) as archive:
        assert "org/gradle/wrapper/GradleWrapperMain.class" in archive.namelist()
    assert os.access(DEMO / "gradlew", os.X_OK), "gradlew must be executable"
    assert (DEMO / "gradlew.bat").is_file()
    props = (DEMO / "gradle" / "wrapper" / "gradle-wrapper.properties").read_text()
    version = re.search(r"gradle-(\d+)\.(\d+)(?:\.\d+)?-bin\.zip", props)
    assert version and (int(version[1]), int(version[2])) >= (9, 3), "AGP 9.1 refuses Gradle older than 9.3.1"
    # The wrapper checks the download it runs against this sum before unpacking it.
    assert re.search(r"^distributionSha256Sum=[0-9a-f]{64}$", props, re.M), "the wrapper must pin the download's sum"


def test_manifest_drops_litert_foreground_service_permissions():
    """LiteRT's AAR asks for them; kept, Play would want a foreground-service type from a targetSdk 36 app."""
    android = "{http://schemas.android.com/apk/res/android}"
    tools = "{http://schemas.android.com/tools}"
    root = ElementTree.parse(DEMO / "app" / "src" / "main" / "AndroidManifest.xml").getroot()
    removed = {
        e.get(f"{android}name") for e in root.iter("uses-permission") if e.get(f"{tools}node") == "remove"
    }
    assert removed == {"android.permission.FOREGROUND_SERVICE", "android.permission.FOREGROUND_SERVICE_DATA_SYNC"}


def _write_rgb(path: pathlib.Path, rgb: np.ndarray) -> None:
    height, width, channels = rgb.shape
    assert channels == 3 and rgb.dtype == np.uint8
    path.write_bytes(b"RGB8" + struct.pack(">II", width, height) + np.ascontiguousarray(rgb).tobytes())


def _stable_top_k(scores: np.ndarray, k: int) -> list[int]:
    """Best first; equal scores keep the lower index first (the order core's TopK uses)."""
    return [int(i) for i in np.argsort(-scores, kind="stable")[:k]]


@pytest.fixture(scope="session")
def golden(kotlin_classpath, tmp_path_factory):
    from ai_edge_litert.interpreter import Interpreter

    from keras_models.backend import tf
    from tflite_export.preprocessing import decode_rgb, dequantize, eval_resize, quantize_input

    photos_dir = shared_path("datasets", "test-photos")
    model_path = shared_path("reference_models", "mobilenet_v3", "v3-small_224_1.0_uint8.tflite")
    labels_path = shared_path("labels", "tflite_support_labels_1001_with_background.txt")
    photos = image_files(photos_dir)
    assert photos, f"no photos in {photos_dir}"

    work = tmp_path_factory.mktemp("android_golden")
    rgb_dir, out_dir = work / "rgb", work / "outputs"
    rgb_dir.mkdir()
    out_dir.mkdir()

    interpreter = Interpreter(model_path=str(model_path), num_threads=1)
    interpreter.allocate_tensors()
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    size = int(inp["shape"][1])
    in_scale, in_zp = inp["quantization"]
    out_scale, out_zp = out["quantization"]
    num_classes = int(out["shape"][-1])

    # Two input contracts: Google's reference models (mean = std = 127.5 with the model's own quantization) and the
    # project's exports (raw RGB: scale 1, zero point 0, mean 0, std 1).
    contracts = {
        "google": dict(mean=127.5, std=127.5, scale=float(in_scale), zero_point=int(in_zp)),
        "project": dict(mean=0.0, std=1.0, scale=1.0, zero_point=0),
    }
    cards = {}
    for name, c in contracts.items():
        card = {
            "schema_version": SCHEMA_VERSION,
            "name": f"golden_{name}",
            "input": {
                "height": size,
                "width": size,
                "channels": 3,
                "dtype": "uint8",
                "scale": c["scale"],
                "zero_point": c["zero_point"],
                "mean": [c["mean"]] * 3,
                "std": [c["std"]] * 3,
            },
            "output": {"dtype": "uint8", "scale": float(out_scale), "zero_point": int(out_zp), "num_classes": num_classes},
            "labels_file": "labels.txt",
        }
        cards[name] = work / f"model_card_{name}.json"
        cards[name].write_text(json.dumps(card))

    python_inputs: dict[str, dict[str, bytes]] = {name: {} for name in contracts}
    python_pixels: dict[str, bytes] = {}
    python_top: dict[str, list[int]] = {}
    for photo in photos:
        key = photo.name.replace(".", "_")
        decoded = decode_rgb(tf.io.read_file(str(photo))).numpy()
        _write_rgb(rgb_dir / f"{key}.rgb", decoded)
        pixels = eval_resize(tf.constant(decoded), size).numpy()
        python_pixels[key] = pixels.astype("<f4").tobytes()
        for name, c in contracts.items():
            q = quantize_input(
                pixels, mean=c["mean"], std=c["std"], scale=c["scale"], zero_point=c["zero_point"], dtype=np.uint8
            )
            python_inputs[name][key] = q.tobytes()
        interpreter.set_tensor(inp["index"], np.frombuffer(python_inputs["google"][key], np.uint8).reshape(inp["shape"]))
        interpreter.invoke()
        raw = interpreter.get_tensor(out["index"]).reshape(-1).astype(np.uint8)
        (out_dir / f"{key}.output").write_bytes(raw.tobytes())
        python_top[key] = _stable_top_k(dequantize(raw, scale=out_scale, zero_point=out_zp), TOP_K)

    kotlin_inputs: dict[str, dict[str, bytes]] = {}
    kotlin_pixels: dict[str, bytes] = {}
    for name, card in cards.items():
        dest = work / f"kotlin_inputs_{name}"
        _cli(kotlin_classpath, "preprocess", card, rgb_dir, dest)
        kotlin_inputs[name] = {p.stem: p.read_bytes() for p in dest.glob("*.input")}
        kotlin_pixels = {p.stem: p.read_bytes() for p in dest.glob("*.pixels")}
    top_dir = work / "kotlin_top"
    _cli(kotlin_classpath, "classify", cards["google"], labels_path, out_dir, top_dir, TOP_K)
    kotlin_top = {}
    for path in top_dir.glob("*.top.tsv"):
        rows = [line.split("\t") for line in path.read_text().splitlines()]
        kotlin_top[path.name[: -len(".top.tsv")]] = rows
    labels = labels_path.read_text().splitlines()
    return dict(
        photos=photos,
        python_inputs=python_inputs,
        kotlin_inputs=kotlin_inputs,
        python_pixels=python_pixels,
        kotlin_pixels=kotlin_pixels,
        python_top=python_top,
        kotlin_top=kotlin_top,
        labels=labels,
    )


@pytest.mark.parametrize("contract", ["google", "project"])
def test_golden_input_tensors_are_byte_equal(golden, contract):
    python_inputs, kotlin_inputs = golden["python_inputs"][contract], golden["kotlin_inputs"][contract]
    assert set(kotlin_inputs) == set(python_inputs), "Kotlin did not produce a tensor for every photo"
    mismatches = []
    for key, expected in python_inputs.items():
        got = kotlin_inputs[key]
        if got != expected:
            a, b = np.frombuffer(expected, np.uint8).astype(int), np.frombuffer(got, np.uint8).astype(int)
            diff = np.abs(a - b) if a.shape == b.shape else None
            detail = f"{int((diff > 0).sum())} bytes differ, max {int(diff.max())}" if diff is not None else "size differs"
            mismatches.append(f"{key}: {detail}")
    assert not mismatches, f"{len(mismatches)}/{len(python_inputs)} photos differ: " + "; ".join(mismatches)
    assert len(python_inputs) == len(golden["photos"]) >= 1


def test_golden_resized_float32_pixels_are_bit_identical(golden):
    """Stronger than the tensor check: crop + bilinear resize agree with TensorFlow to the last float32 bit."""
    python_pixels, kotlin_pixels = golden["python_pixels"], golden["kotlin_pixels"]
    assert set(kotlin_pixels) == set(python_pixels)
    differing = []
    for key, expected in python_pixels.items():
        a = np.frombuffer(expected, "<f4")
        b = np.frombuffer(kotlin_pixels[key], "<f4")
        if a.shape != b.shape or not np.array_equal(a.view("<u4"), b.view("<u4")):
            n = int((a.view("<u4") != b.view("<u4")).sum()) if a.shape == b.shape else -1
            differing.append(f"{key}: {n} floats differ")
    assert not differing, "; ".join(differing)


def test_golden_top5_names_the_same_classes(golden):
    labels = golden["labels"]
    assert set(golden["kotlin_top"]) == set(golden["python_top"])
    for key, expected in golden["python_top"].items():
        rows = golden["kotlin_top"][key]
        assert [int(r[0]) for r in rows] == expected, f"{key}: top-{TOP_K} differs"
        assert [r[2] for r in rows] == [labels[i] for i in expected]
    # The chain means something: the reference model recognises the photos' subjects.
    top5_names = {key: [labels[i] for i in idx] for key, idx in golden["python_top"].items()}
    if "hot_dog_jpg" in top5_names:
        assert top5_names["hot_dog_jpg"][0] == "hotdog", top5_names["hot_dog_jpg"]
    if "grace_hopper_jpg" in top5_names:
        assert "military uniform" in top5_names["grace_hopper_jpg"], top5_names["grace_hopper_jpg"]


def _test_photos() -> list[pathlib.Path]:
    photos_dir = shared_path("datasets", "test-photos")
    photos = image_files(photos_dir)
    assert photos, f"no photos in {photos_dir}"
    return photos


def _python_side(model: pathlib.Path, rgb_dir: pathlib.Path, out_dir: pathlib.Path, *, mean, std, k: int):
    """The Python pipeline's half of a golden check on a uint8 model: every test photo decoded by
    tflite_export.preprocessing (its RGB bytes written to rgb_dir for Kotlin), turned into the input tensor with the model's
    own input quantization and the given mean/std, run by LiteRT (raw output written to out_dir for Kotlin).
    Returns ({photo key: input bytes}, {photo key: top-k class indices}, LiteRT's input details)."""
    from ai_edge_litert.interpreter import Interpreter

    from keras_models.backend import tf
    from tflite_export.preprocessing import decode_rgb, dequantize, eval_resize, quantize_input

    interpreter = Interpreter(model_path=str(model), num_threads=1)
    interpreter.allocate_tensors()
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    scale, zero_point = inp["quantization"]
    rgb_dir.mkdir()
    out_dir.mkdir()
    inputs, top = {}, {}
    for photo in _test_photos():
        key = photo.name.replace(".", "_")
        decoded = decode_rgb(tf.io.read_file(str(photo))).numpy()
        _write_rgb(rgb_dir / f"{key}.rgb", decoded)
        pixels = eval_resize(tf.constant(decoded), int(inp["shape"][1])).numpy()
        q = quantize_input(pixels, mean=mean, std=std, scale=scale, zero_point=zero_point, dtype=np.uint8)
        inputs[key] = q.tobytes()
        interpreter.set_tensor(inp["index"], q[None])
        interpreter.invoke()
        raw = interpreter.get_tensor(out["index"]).reshape(-1)
        (out_dir / f"{key}.output").write_bytes(raw.tobytes())
        top[key] = _stable_top_k(dequantize(raw, scale=out["quantization"][0], zero_point=out["quantization"][1]), k)
    return inputs, top, inp


def _read_top(top_dir: pathlib.Path) -> dict[str, list[list[str]]]:
    return {p.name[: -len(".top.tsv")]: [line.split("\t") for line in p.read_text().splitlines()]
            for p in top_dir.glob("*.top.tsv")}


def test_golden_on_the_pipelines_own_export(kotlin_classpath, tiny_run, tmp_path):
    """The app path on a model this project exported: Kotlin configures itself from the exported model_card.json,
    builds the same input bytes as Python, and its top-k over LiteRT's output names the classes Python names."""
    run_dir, _ = tiny_run
    card_path, labels_path = run_dir / "model_card.json", run_dir / "labels.txt"
    card = json.loads(card_path.read_text())
    rgb_dir, out_dir = tmp_path / "rgb", tmp_path / "outputs"
    k = 3
    expected_inputs, expected_top, inp = _python_side(
        run_dir / "model.tflite", rgb_dir, out_dir, mean=card["input"]["mean"][0], std=card["input"]["std"][0], k=k)
    assert (card["input"]["scale"], card["input"]["zero_point"]) == tuple(inp["quantization"])

    _cli(kotlin_classpath, "preprocess", card_path, rgb_dir, tmp_path / "kotlin_inputs")
    got_inputs = {p.stem: p.read_bytes() for p in (tmp_path / "kotlin_inputs").glob("*.input")}
    assert got_inputs == expected_inputs
    _cli(kotlin_classpath, "classify", card_path, labels_path, out_dir, tmp_path / "kotlin_top", k)
    labels = labels_path.read_text().splitlines()
    got_top = _read_top(tmp_path / "kotlin_top")
    assert set(got_top) == set(expected_top)
    for key, expected in expected_top.items():
        rows = got_top[key]
        assert [int(r[0]) for r in rows] == expected and [r[2] for r in rows] == [labels[i] for i in expected], key


# The app's bundled default model: the ImageNet MobileNetV3-Small that `pipeline.import_tflite ... --android` installs
# (BUILD_ANDROID.md names the command). These tests read the committed files, so they hold for whatever export is
# committed next, as long as it keeps the app's contract; none of them depends on its exact accuracy.
ASSETS = DEMO / "app" / "src" / "main" / "assets"
BUNDLED_CLASSES = 1000
BUNDLED_SOURCE = "v3-small_224_1.0_uint8.tflite"  # the published file the command takes its weights from


def _bundled_labels() -> list[str]:
    lines = (ASSETS / "labels.txt").read_text(encoding="utf-8").splitlines()
    while lines and not lines[-1].strip():  # the installer's reading (tflite_export.files.read_labels): trailing blank lines are not classes
        lines.pop()
    return lines


def test_bundled_model_is_integer_only_without_hard_swish_in_one_xnnpack_partition():
    from tflite_export.verify import verify

    # verify() applies the export rules (no float tensor at all, no HARD_SWISH/LOGISTIC/DEQUANTIZE, no QUANTIZE inside
    # the graph, uint8 I/O, fixed batch 1, one XNNPACK partition with only edge QUANTIZE/SOFTMAX left out) and raises
    # listing every broken one. The asserts below restate the three the app relies on, in case its defaults loosen.
    analysis = verify(ASSETS / "model.tflite")
    assert analysis.is_integer_only, analysis.float_tensors
    assert analysis.op_histogram.get("HARD_SWISH", 0) == 0, analysis.op_histogram
    assert analysis.xnnpack_partitions == 1, analysis.xnnpack_undelegated
    (inp,), (out,) = analysis.inputs, analysis.outputs
    assert (inp.shape, inp.dtype) == ([1, 224, 224, 3], "uint8")
    assert (out.shape, out.dtype) == ([1, BUNDLED_CLASSES], "uint8")


def test_bundled_model_labels_metadata_and_card_agree():
    """The three files the app reads describe one model: labels.txt, the labels packed in the model's metadata and the
    card's class list are the same 1000 names, and the card's tensors, normalization, source and licence match the
    model's own."""
    from tflite_export.metadata import read_metadata
    from tflite_export.verify import analyze

    labels = _bundled_labels()
    card = ModelCard.read(ASSETS / "model_card.json")  # refuses a card of another schema version
    metadata = read_metadata(ASSETS / "model.tflite")
    analysis = analyze(ASSETS / "model.tflite", xnnpack=False)
    (inp,), (out,) = analysis.inputs, analysis.outputs

    assert len(labels) == BUNDLED_CLASSES == card.output.num_classes == out.shape[-1]
    assert metadata["labels"] == labels, "labels packed in model.tflite differ from labels.txt"
    assert card.classes == labels, "model_card.json's classes differ from labels.txt"
    assert (card.model_file, card.labels_file) == ("model.tflite", "labels.txt")
    assert labels[0] == "tench" and labels[-1] == "toilet tissue", "not the ImageNet class order"
    for side, tensor in ((card.input, inp), (card.output, out)):
        assert side.dtype == tensor.dtype, side
        assert (side.scale, side.zero_point) == (tensor.scale, tensor.zero_point), side
    assert (card.input.height, card.input.width, card.input.channels) == tuple(inp.shape[1:])
    # The app takes mean/std from the card; a reader without the card (LiteRT tooling) from the metadata.
    assert (card.input.mean, card.input.std) == (metadata["mean"], metadata["std"])
    # A model derived from Google's file may be committed when its source and licence are named in both.
    for name, description, license_ in ((card.name, card.description, card.license),
                                        (metadata["name"], metadata["description"], metadata["license"])):
        assert BUNDLED_SOURCE in description and "ImageNet" in name, description
        assert license_ == "Apache-2.0"


def test_golden_on_the_bundled_model(kotlin_classpath, tmp_path):
    """The app's path on the model it ships: Kotlin configures itself from the assets folder as the app does
    (ModelSpec.resolve over model.tflite, model_card.json, labels.txt) and must build the input bytes that
    tflite_export.preprocessing builds under the project's contract (raw RGB, mean 0, std 1, the model's input
    quantization), and its top-5 over LiteRT's output must name the classes Python names."""
    from tflite_export.preprocessing import PIXEL_MEAN, PIXEL_STD

    rgb_dir, out_dir = tmp_path / "rgb", tmp_path / "outputs"
    expected_inputs, expected_top, _ = _python_side(
        ASSETS / "model.tflite", rgb_dir, out_dir, mean=PIXEL_MEAN, std=PIXEL_STD, k=TOP_K)

    _cli(kotlin_classpath, "app-preprocess", ASSETS, rgb_dir, tmp_path / "kotlin_inputs")
    got_inputs = {p.stem: p.read_bytes() for p in (tmp_path / "kotlin_inputs").glob("*.input")}
    assert set(got_inputs) == set(expected_inputs)
    differing = [key for key in expected_inputs if got_inputs[key] != expected_inputs[key]]
    assert not differing, f"input tensors differ for {differing}"

    _cli(kotlin_classpath, "app-classify", ASSETS, out_dir, tmp_path / "kotlin_top", TOP_K)
    labels = _bundled_labels()
    got_top = _read_top(tmp_path / "kotlin_top")
    assert set(got_top) == set(expected_top)
    for key, expected in expected_top.items():
        rows = got_top[key]
        assert [int(r[0]) for r in rows] == expected, f"{key}: top-{TOP_K} differs"
        assert [r[2] for r in rows] == [labels[i] for i in expected], key
    # Out of the box the app must classify, not just run: an ImageNet model of any usable accuracy has these in its
    # top 5 (Google's own file has both at top 1). A model with the right format but wrong or untrained weights fails.
    top5 = {key: [labels[i] for i in idx] for key, idx in expected_top.items()}
    assert "hotdog" in top5["hot_dog_jpg"], top5["hot_dog_jpg"]
    assert "military uniform" in top5["grace_hopper_jpg"], top5["grace_hopper_jpg"]


def _model_info(classpath: str, model: pathlib.Path, tmp_path: pathlib.Path) -> dict[str, str]:
    out = tmp_path / f"{model.stem}.txt"
    _cli(classpath, "modelinfo", model, out)
    return dict(line.split("=", 1) for line in out.read_text().splitlines())


@pytest.mark.parametrize(
    "parts",
    [
        ("reference_models", "mobilenet_v3", "v3-small_224_1.0_uint8.tflite"),
        ("reference_models", "coral", "mobilenet_v1_0.25_128_quant.tflite"),
        ("reference_models", "tflite-support", "mobilenet_v1_0.25_224_quant.tflite"),
        ("reference_models", "tflite-support", "mobilenet_v1_0.25_224_1_default_1.tflite"),
    ],
    ids=lambda p: p[-1],
)
def test_core_reads_tensors_metadata_and_labels_from_tflite(kotlin_classpath, tmp_path, parts):
    """core's own .tflite reader (used by the app to configure itself) agrees with the LiteRT interpreter."""
    from ai_edge_litert.interpreter import Interpreter

    model = shared_path(*parts)
    info = _model_info(kotlin_classpath, model, tmp_path)
    interpreter = Interpreter(model_path=str(model))
    for prefix, details in (("input0", interpreter.get_input_details()[0]), ("output0", interpreter.get_output_details()[0])):
        assert info[f"{prefix}.shape"] == ",".join(str(int(d)) for d in details["shape"])
        scale, zero_point = details["quantization"]
        assert np.float32(info[f"{prefix}.scale"]) == np.float32(scale)
        assert int(info[f"{prefix}.zero_point"]) == zero_point
        expected_type = {np.float32: 0, np.uint8: 3, np.int8: 9}[details["dtype"]]
        assert int(info[f"{prefix}.type"]) == expected_type
    data = model.read_bytes()
    if b"PK\x05\x06" in data:
        with zipfile.ZipFile(model) as archive:
            names = archive.namelist()
            assert info["associated_files"].split(",") == names
            labels = archive.read(names[0]).decode().splitlines()
        assert int(info["labels.count"]) == len(labels)
        assert info["labels.first"] == labels[0]
        assert info["label_files"] == names[0]
    else:
        assert info["associated_files"] == "" and info["labels.count"] == "0"
    if "tflite-support" in parts and b"TFLITE_METADATA" in data:
        # tflite-support's image classifiers declare NormalizationOptions mean = std = 127.5.
        assert info["mean"] == "127.5" and info["std"] == "127.5"


@functools.lru_cache(maxsize=None)
def _tiny_model(classes: int) -> bytes:
    from tests.conftest import tiny_classifier_tflite

    return tiny_classifier_tflite(classes=classes)


def _export_dir(root: pathlib.Path, num_labels: int = 3, num_classes: int = 3) -> pathlib.Path:
    """A model and a card that agree (the installer checks the card against the model's tensors)."""
    from tflite_export.model_card import InputSpec, ModelCard, OutputSpec
    from tflite_export.verify import analyze

    root.mkdir(parents=True)
    model = _tiny_model(num_classes)
    (root / "model.tflite").write_bytes(model)
    (root / "labels.txt").write_text("".join(f"class{i}\n" for i in range(num_labels)))
    analysis = analyze(model, xnnpack=False)
    inp, out = analysis.inputs[0], analysis.outputs[0]
    ModelCard(
        name="tiny", description="tiny", version="1.0", author="tests", license="Apache-2.0",
        model_file="model.tflite", labels_file="labels.txt",
        input=InputSpec(height=32, width=32, channels=3, dtype="uint8", scale=inp.scale, zero_point=inp.zero_point,
                        mean=[0.0] * 3, std=[1.0] * 3),
        output=OutputSpec(dtype="uint8", scale=out.scale, zero_point=out.zero_point, num_classes=num_classes),
        classes=[f"class{i}" for i in range(num_classes)], hswish="lowered", ops={},
    ).write(root / "model_card.json")
    return root


def test_install_model_copies_the_export_into_assets(tmp_path):
    from pipeline import android

    source = _export_dir(tmp_path / "export")
    assets = tmp_path / "assets"
    installed = android.install(source, assets)
    assert sorted(p.name for p in installed) == ["labels.txt", "model.tflite", "model_card.json"]
    for name in ("model.tflite", "labels.txt", "model_card.json"):
        assert (assets / name).read_bytes() == (source / name).read_bytes()
    assert sorted(p.name for p in assets.iterdir()) == ["labels.txt", "model.tflite", "model_card.json"], "staging left behind"
    # A second export replaces the first, through the documented command (a thin script over pipeline.android).
    (source / "labels.txt").write_text("a\nb\nc\n")
    result = _run([sys.executable, str(DEMO / "scripts" / "install_model.py"), str(source), "--assets", str(assets)])
    assert result.returncode == 0, result.stderr
    assert (assets / "labels.txt").read_text() == "a\nb\nc\n"


@pytest.mark.parametrize("problem", ["missing_model", "not_tflite", "bad_card", "unversioned_card", "label_count"])
def test_install_model_rejects_bad_exports_and_leaves_assets_alone(tmp_path, capsys, problem):
    from pipeline import android

    assets = tmp_path / "assets"
    android.install(_export_dir(tmp_path / "good"), assets)
    before = {p.name: p.read_bytes() for p in assets.iterdir()}
    bad = _export_dir(tmp_path / "bad", num_labels=7 if problem == "label_count" else 3)
    if problem == "missing_model":
        (bad / "model.tflite").unlink()
    elif problem == "not_tflite":
        (bad / "model.tflite").write_bytes(b"<html>not a model</html>")
    elif problem == "bad_card":
        (bad / "model_card.json").write_text("{not json")
    elif problem == "unversioned_card":  # a card from before schema_version: its fields are not checked as version 1's
        card = json.loads((bad / "model_card.json").read_text())
        del card["schema_version"]
        (bad / "model_card.json").write_text(json.dumps(card))
    assert run_main(android.main, [str(bad), "--assets", str(assets)], prog="pipeline.android") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("pipeline.android: error: "), err
    assert {p.name: p.read_bytes() for p in assets.iterdir()} == before
