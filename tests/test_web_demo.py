"""The web demo (web_demo/, served by `python -m tflite_export.demo`) in a real headless Chromium running LiteRT.js.

One browser for the module (tflite_export.browser: Debian's chromium driven by npm's playwright-core, both installed by
scripts/setup.sh), its fake camera fed a .y4m written from a test photo. Against Python's LiteRT and
tflite_export.preprocessing, on the test photos: the same input bytes give the same output bytes; the page's
preprocessing of the same decoded pixels gives the same input tensor (and float32 pixels); photos chosen in the page
are decoded to the pipeline's pixels (JPEGs with the accurate IDCT); the camera's captured frame gets the top-1 Python
gives it. A model the pipeline just trained loads with its own labels, an int8-input model is refused with the flag
that makes a browser file, and no request leaves 127.0.0.1. Without the browser tools these tests skip locally and
fail under CI=true.
"""

from __future__ import annotations

import base64
import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import urllib.parse
import urllib.request

import numpy as np
import pytest

from tests.conftest import REPO, SHARED, missing_tool, shared_path, tiny_classifier_tflite
from tflite_export import browser, demo
from tflite_export.files import image_files

CAMERA_PHOTO = "hot_dog.jpg"


def _require_browser() -> None:
    gone = browser.missing()
    if not gone:
        return
    missing_tool(f"web demo tools missing ({', '.join(gone)}): run bash scripts/setup.sh")


def _b64(array: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(array).tobytes()).decode()


def _unb64(text: str, dtype) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), dtype)


class Python:
    """The pipeline's side: decode, evaluation resize, quantization and LiteRT (1 thread) for one model."""

    def __init__(self, model: pathlib.Path):
        from ai_edge_litert.interpreter import Interpreter

        self.interpreter = Interpreter(model_path=str(model), num_threads=1)
        self.interpreter.allocate_tensors()
        self.inp = self.interpreter.get_input_details()[0]
        self.out = self.interpreter.get_output_details()[0]
        self.size = int(self.inp["shape"][1])

    @staticmethod
    def decode(path: pathlib.Path) -> np.ndarray:
        from keras_models.backend import tf
        from tflite_export.preprocessing import decode_rgb

        return decode_rgb(tf.io.read_file(str(path))).numpy()

    def pixels(self, rgb: np.ndarray) -> np.ndarray:
        from keras_models.backend import tf
        from tflite_export.preprocessing import eval_resize

        return eval_resize(tf.constant(rgb), self.size).numpy()

    def resized(self, crop: np.ndarray) -> np.ndarray:
        """eval_resize without its central crop: for pixels already cropped."""
        from keras_models.backend import tf

        return tf.image.resize(tf.cast(crop, tf.float32), [self.size, self.size], method="bilinear",
                               antialias=False).numpy()

    def tensor(self, pixels: np.ndarray) -> np.ndarray:
        from tflite_export.preprocessing import PIXEL_MEAN, PIXEL_STD, quantize_input

        scale, zero_point = self.inp["quantization"]
        return quantize_input(pixels, mean=PIXEL_MEAN[0], std=PIXEL_STD[0], scale=scale, zero_point=zero_point,
                              dtype=np.uint8)

    def run(self, tensor: np.ndarray) -> np.ndarray:
        self.interpreter.set_tensor(self.inp["index"], tensor[None])
        self.interpreter.invoke()
        return self.interpreter.get_tensor(self.out["index"]).reshape(-1).copy()


@pytest.fixture(scope="module")
def photos() -> list[pathlib.Path]:
    found = image_files(shared_path("datasets", "test-photos"))
    assert len(found) >= 2
    return found


@pytest.fixture(scope="module")
def chromium(tmp_path_factory):
    """One Chromium for the module, its camera a .y4m of CAMERA_PHOTO (when the shared photos are there)."""
    _require_browser()
    photo, video = SHARED / "datasets" / "test-photos" / CAMERA_PHOTO, None
    if photo.is_file():
        video = tmp_path_factory.mktemp("camera") / "camera.y4m"
        browser.write_y4m(video, Python.decode(photo))
    chrome = browser.Browser(fake_video=video)
    yield chrome
    chrome.close()


@pytest.fixture(scope="module")
def bundled_url():
    with browser.serving() as url:
        yield url


@pytest.fixture(scope="module")
def python_bundled() -> Python:
    return Python(demo.BUNDLED_MODEL / "model.tflite")


def _open(chrome: browser.Browser, url: str, *, camera: bool = True) -> str:
    chrome.open(url, camera=camera)
    return browser.wait_ready(chrome)


@pytest.fixture(scope="module")
def bundled_page(chromium, bundled_url):
    """The bundled ImageNet model's page, loaded once (tests that open another page come after those using it)."""
    assert _open(chromium, bundled_url) == "ready"
    return chromium


def test_same_input_bytes_give_python_litert_outputs(bundled_page, python_bundled, photos):
    for photo in photos:
        tensor = python_bundled.tensor(python_bundled.pixels(python_bundled.decode(photo)))
        got = _unb64(bundled_page.eval("(t) => window.demo.run(t)", _b64(tensor)), np.uint8)
        np.testing.assert_array_equal(got, python_bundled.run(tensor), err_msg=photo.name)


def test_page_preprocessing_gives_python_input_tensors(bundled_page, python_bundled, photos):
    """From the same decoded pixels: the float32 resized pixels agree to the bit, the uint8 tensors byte for byte."""
    for photo in photos:
        rgb = python_bundled.decode(photo)
        pixels = python_bundled.pixels(rgb)
        got = bundled_page.eval("([p, w, h]) => window.demo.preprocess(p, w, h, 3)",
                                [_b64(rgb), rgb.shape[1], rgb.shape[0]])
        np.testing.assert_array_equal(_unb64(got["pixels"], "<f4").view("<u4"), pixels.reshape(-1).view("<u4"),
                                      err_msg=photo.name)
        np.testing.assert_array_equal(_unb64(got["tensor"], np.uint8), python_bundled.tensor(pixels).reshape(-1),
                                      err_msg=photo.name)


def _has_transparency(path: pathlib.Path) -> bool:
    from keras_models.backend import tf

    image = tf.io.decode_image(tf.io.read_file(str(path)), expand_animations=False).numpy()
    return image.shape[-1] in (2, 4) and bool((image[..., -1] < 255).any())


def test_photos_chosen_in_the_page_are_decoded_and_classified_as_the_pipeline_does(bundled_page, python_bundled,
                                                                                    photos):
    """The browser's own decoding (JPEG, PNG, BMP) gives the pipeline's pixels: JPEGs decoded with the accurate IDCT
    (tflite_export.preprocessing.decode_rgb) match Chromium's byte for byte. A picture with transparency is the
    exception: the browser (like Android's Bitmap) premultiplies alpha, which rounds the colour of semi-transparent
    pixels that the pipeline reads unchanged; it must keep its top-1."""
    before = len(bundled_page.eval("() => window.demo.stills()"))
    bundled_page.call("files", selector="#file-input", paths=[str(p) for p in photos])
    assert bundled_page.eval("(n) => window.demo.stillsClassified(n, 60000)", before + len(photos))
    stills = bundled_page.eval("() => window.demo.stills()")[before:]
    labels = (demo.BUNDLED_MODEL / "labels.txt").read_text().splitlines()
    for i, (photo, still) in enumerate(zip(photos, stills)):
        assert still["name"] == photo.name
        expected = python_bundled.tensor(python_bundled.pixels(python_bundled.decode(photo)))
        got = _unb64(bundled_page.eval("(i) => window.demo.stillTensor(i)", before + i), np.uint8)
        if not _has_transparency(photo):
            np.testing.assert_array_equal(got, expected.reshape(-1), err_msg=photo.name)
        best = int(np.argmax(python_bundled.run(expected)))
        assert still["top"][0]["label"] == labels[best], photo.name
    shown = bundled_page.eval("() => [...document.querySelectorAll('#stills figure')].length")
    assert shown >= len(photos)


def _central_crop_size(width: int, height: int) -> tuple[int, int]:
    from keras_models.backend import tf
    from tflite_export.preprocessing import EVAL_CROP_FRACTION

    cropped = tf.image.central_crop(tf.zeros([height, width, 1]), EVAL_CROP_FRACTION)
    return int(cropped.shape[1]), int(cropped.shape[0])


def test_fake_camera_shows_the_label_python_gives_the_captured_frame(bundled_page, python_bundled, tmp_path):
    shared_path("datasets", "test-photos", CAMERA_PHOTO)  # the camera's picture
    assert bundled_page.eval("async () => { await window.demo.startCamera(); return true; }")
    assert bundled_page.eval("() => window.demo.framesClassified(3, 30000)"), "no camera frame was classified"
    frame = bundled_page.eval("() => window.demo.lastFrame()")
    # The page reads back only the frame's central crop (the box tf.image.central_crop takes): resized, it is the
    # evaluation's input.
    assert (frame["width"], frame["height"]) == _central_crop_size(frame["video"]["width"], frame["video"]["height"])
    crop = _unb64(frame["rgba"], np.uint8).reshape(frame["height"], frame["width"], 4)[..., :3]
    python_top1 = int(np.argmax(python_bundled.run(python_bundled.tensor(python_bundled.resized(crop)))))
    labels = (demo.BUNDLED_MODEL / "labels.txt").read_text().splitlines()
    assert frame["top"][0]["label"] == labels[python_top1] == "hotdog"
    shown = bundled_page.eval("() => document.querySelector('#camera-top li .label').textContent")
    assert shown in {t["label"] for t in frame["top"]}
    stats = bundled_page.eval("() => document.getElementById('camera-stats').textContent")
    assert re.search(r"frames/s .* grab [\d.]+, preprocess [\d.]+, inference [\d.]+ ms", stats), stats
    # The README's screenshot: the camera's label, the photos and the model panel (kept when asked to).
    shot = pathlib.Path(os.environ.get("WEB_DEMO_SCREENSHOT", tmp_path / "web_demo.png"))
    bundled_page.call("screenshot", path=str(shot))
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    bundled_page.eval("() => window.demo.stopCamera()")


def test_camera_permission_denied_is_said(chromium, bundled_url):
    shared_path("datasets", "test-photos", CAMERA_PHOTO)  # the fake camera: without one, Chromium has no camera
    assert _open(chromium, bundled_url, camera=False) == "ready"
    chromium.eval("() => window.demo.startCamera()")
    message = chromium.eval("() => document.getElementById('message').textContent")
    assert message.startswith("camera permission denied"), message


def test_tiny_run_loads_with_its_own_labels(chromium, tiny_run):
    """The run the pipeline just trained, served as its summary and report.html say, in the page: its own classes,
    its accuracy from report.json, and labels of its own on a photo."""
    run_dir, result = tiny_run
    command = re.search(r"^try it +\.venv/bin/python -m tflite_export\.demo (\S+)", result.stdout, re.M)
    assert command and pathlib.Path(command[1]) == run_dir, result.stdout[-1500:]
    assert f"-m tflite_export.demo {run_dir}" in (run_dir / "report.html").read_text()
    labels = (run_dir / "labels.txt").read_text().splitlines()
    report = json.loads((run_dir / "report.json").read_text())
    with browser.serving(command[1]) as url:
        assert _open(chromium, url) == "ready"
        panel = chromium.eval("() => Object.fromEntries([...document.querySelectorAll('#model-panel tr')]"
                              ".map((tr) => [tr.dataset.key, tr.cells[1].textContent]))")
        photo = image_files(shared_path("datasets", "test-photos"))[0]
        chromium.call("files", selector="#file-input", paths=[str(photo)])
        assert chromium.eval("(n) => window.demo.stillsClassified(n, 20000)", 1)
        top = chromium.eval("() => window.demo.stills()")[0]["top"]
    assert panel["classes"].startswith(f"{len(labels)}: {', '.join(labels[:3])}")
    assert f"{100 * report['export']['accuracy']['int8_top1']:.1f}%" in panel["accuracy"]
    assert [t["label"] for t in top] and {t["label"] for t in top} <= set(labels)


@pytest.fixture(scope="module")
def tiny_models() -> dict[str, bytes]:
    """tests/conftest.py's small integer classifier with uint8 and with int8 I/O."""
    return {io: tiny_classifier_tflite(io_type=io) for io in ("uint8", "int8")}


def _export_folder(folder: pathlib.Path, model_bytes: bytes, *, card: bool = True) -> pathlib.Path:
    """A small classifier with the labels and the card the exporter would write beside it."""
    from tflite_export.export import ModelInfo, model_card
    from tflite_export.verify import analyze

    folder.mkdir()
    model = folder / "model.tflite"
    model.write_bytes(model_bytes)
    labels = ["ant", "bee", "cat", "dog"]
    (folder / "labels.txt").write_text("\n".join(labels) + "\n")
    if card:
        info = ModelInfo(name="tiny", description="tiny", version="1", author="tests", license="Apache-2.0")
        model_card(analyze(model, xnnpack=False), info, labels, "lowered").write(folder / "model_card.json")
    return folder


def test_int8_input_model_is_refused_with_the_export_flag(chromium, tiny_models, tmp_path):
    folder = _export_folder(tmp_path / "int8", tiny_models["int8"])
    with browser.serving(folder) as url:
        message = _open(chromium, url)
    assert "int8 input" in message and "--io uint8" in message, message
    shown = chromium.eval("() => document.getElementById('message').textContent")
    assert shown == message


def test_model_without_a_card_is_refused_with_the_reason(chromium, tiny_models, tmp_path):
    folder = _export_folder(tmp_path / "nocard", tiny_models["uint8"], card=False)
    with browser.serving(folder / "model.tflite") as url:
        message = _open(chromium, url)
    assert message.startswith("no model_card.json beside the model"), message


def test_model_without_labels_and_a_machine_without_a_camera_are_said(chromium, tiny_models, tmp_path):
    folder = _export_folder(tmp_path / "nolabels", tiny_models["uint8"])
    (folder / "labels.txt").unlink()
    with browser.serving(folder) as url:
        assert _open(chromium, url) == "ready"  # the card's class list stands in
        warning = chromium.eval("() => document.getElementById('message').textContent")
        assert warning == "no labels.txt beside the model: class names are taken from the model card", warning
        # What getUserMedia says on a machine without a camera.
        message = chromium.eval("""async () => {
            navigator.mediaDevices.getUserMedia = () => Promise.reject(new DOMException('none', 'NotFoundError'));
            await window.demo.startCamera();
            return document.getElementById('message').textContent;
        }""")
    assert message.startswith("no camera found"), message


def test_no_request_leaves_127_0_0_1(chromium, bundled_url):
    """Every page this module opened (the model, LiteRT.js's wasm, the camera and photos) asked only 127.0.0.1."""
    assert _open(chromium, bundled_url) == "ready"
    requests = chromium.call("requests")
    assert any(url.endswith("/model/model.tflite") for url in requests)
    assert any(url.endswith(".wasm") for url in requests)
    hosts = {urllib.parse.urlsplit(url).hostname for url in requests if not url.startswith(("data:", "blob:"))}
    assert hosts == {"127.0.0.1"}, sorted(u for u in requests if urllib.parse.urlsplit(u).hostname != "127.0.0.1")


# ------------------------------------------------------------------------------------------ the command, no browser
def test_demo_command_prints_the_url_serves_the_model_and_stops_on_ctrl_c(tmp_path):
    if demo.web_root_problem():
        _require_browser()
    proc = subprocess.Popen([sys.executable, "-m", "tflite_export.demo", "--port", "0"], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        line = proc.stdout.readline()
        url = re.search(r"at (http://127\.0\.0\.1:\d+/) ", line)
        assert url, line + proc.stderr.read() if proc.poll() is not None else line
        with urllib.request.urlopen(url[1]) as page:
            assert b'<script type="module" src="app.js">' in page.read()
        with urllib.request.urlopen(url[1] + "model/model_card.json") as card:
            assert json.load(card)["output"]["num_classes"] == 1000
        for path in ("model/../../README.md", "npm/playwright-core/package.json", "browser_driver.mjs"):
            with pytest.raises(urllib.error.HTTPError, match="404"):
                urllib.request.urlopen(url[1] + path)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("case", ["missing", "not_tflite", "empty_folder"])
def test_demo_command_refuses_a_bad_model_argument_in_one_line(tmp_path, capsys, case):
    from tflite_export.cli import run_main

    target = {"missing": tmp_path / "nope", "not_tflite": tmp_path / "notes.txt", "empty_folder": tmp_path}[case]
    if case == "not_tflite":
        target.write_text("not a model")
    if demo.web_root_problem():
        _require_browser()
    assert run_main(demo.main, [str(target)], prog="tflite_export.demo") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("tflite_export.demo: error: ") and str(target) in err[0], err


def test_clients_say_which_runtimes_run_a_file(tiny_models, tmp_path):
    """inspect's 'Runs on' rules: an int8-input file is not a browser file (and says which flag makes one); a file
    without metadata is not a MediaPipe Tasks file; LiteRT and the Android app run both. The demo command says so
    before a browser is opened."""
    from tflite_export.clients import clients
    from tflite_export.inspect import format_report, inspect_model
    from tflite_export.verify import analyze

    folder = _export_folder(tmp_path / "int8", tiny_models["int8"])
    report = format_report(inspect_model(folder / "model.tflite", io_dtype=None).to_dict())
    assert "\nRuns on:\n  LiteRT (Android, Python): yes\n  LiteRT.js (browser): no: int8 input" in report, report
    notes = demo.warnings_for(demo.model_files(folder))
    assert len(notes) == 1 and notes[0].startswith("browsers cannot run this model: int8 input"), notes

    verdicts = {io: {c.name: c for c in clients(analyze(model, xnnpack=False))} for io, model in tiny_models.items()}
    assert verdicts["uint8"]["LiteRT.js (browser)"].runs
    browser_int8 = verdicts["int8"]["LiteRT.js (browser)"]
    assert not browser_int8.runs and "--io uint8" in browser_int8.line() and "int8 input" in browser_int8.line()
    for io in ("uint8", "int8"):
        assert verdicts[io]["LiteRT (Android, Python)"].runs and verdicts[io]["this project's Android app"].runs
    assert verdicts["uint8"]["MediaPipe Tasks (ImageClassifier)"].reasons == ("no TFLite metadata in the file",)
    assert verdicts["int8"]["MediaPipe Tasks (ImageClassifier)"].reasons == (
        "no TFLite metadata in the file", "int8 input (MediaPipe takes uint8, float32)")
