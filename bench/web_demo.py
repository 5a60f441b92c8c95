"""The web demo's speed: LiteRT.js (wasm, 1 thread) in headless Chromium against Python's LiteRT on the same file.

    nice -n 10 python -m bench.web_demo [MODEL_OR_RUN_DIR] [--runs 100] [--rounds 4] [--frames 300] [--json OUT]

Default model: the Android app's bundled ImageNet V3-Small (224 px, uint8). In one run, side by side:
  inference     the same input tensor (hot_dog.jpg, the pipeline's preprocessing) run `--runs` times by Python's LiteRT
                (ai-edge-litert, XNNPACK, 1 thread) and then by the page's LiteRT.js (`model.run` on a new Tensor and
                the output read back, as the page does per frame), alternating for `--rounds` rounds, so load changes
                hit both alike; medians over all runs
  preprocess    the page's crop + bilinear resize + quantization of the decoded photo (classifier.js)
  camera        `--frames` frames of Chromium's fake camera (a 640x480 .y4m of the photo, 30 frames/s) classified by
                the page: grab (drawImage + getImageData of the central crop), preprocess, inference, frame to
                label (all of it, top-3 shown); the frame rate is the camera's when the page keeps up
Targets (issue 25): frame to label <= 10 ms median at 224, wasm inference <= 3x native.
"""

from __future__ import annotations

import base64
import dataclasses
import tempfile
import time

import numpy as np

from bench import _common
from keras_models import backend  # noqa: F401  (before TensorFlow)
from keras_models.backend import tf
from tflite_export import browser, demo
from tflite_export.command import Command, positional, run_command, setting
from tflite_export.preprocessing import PIXEL_MEAN, PIXEL_STD, decode_rgb, eval_resize, quantize_input

CAMERA_SIZE = (640, 480)


def _python_runs(interpreter, tensor: np.ndarray, runs: int) -> list[float]:
    inp = interpreter.get_input_details()[0]
    out = interpreter.get_output_details()[0]
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        interpreter.set_tensor(inp["index"], tensor[None])
        interpreter.invoke()
        interpreter.get_tensor(out["index"])
        times.append((time.perf_counter() - start) * 1e3)
    return times


@dataclasses.dataclass(frozen=True)
class Options:
    """The flags of `python -m bench.web_demo` (the positional argument: a run folder, an export folder or a
    .tflite file; default: the app's bundled model)."""

    runs: int = setting(100, "Inferences per round and runtime.")
    rounds: int = setting(4, "Alternating rounds.")
    frames: int = setting(300, "Camera frames to classify.")
    json: str | None = setting(None, "Write the results as JSON here ('-': to stdout).")


def web_demo(options: Options, args: list[str]) -> None:
    model = (positional(args, "MODEL_OR_RUN_DIR", least=0) or [None])[0]
    if browser.missing():
        raise ValueError(f"missing {', '.join(browser.missing())}: run bash scripts/setup.sh")
    from ai_edge_litert.interpreter import Interpreter

    machine = _common.machine()  # the load average at the start
    files = demo.model_files(model)
    photo = _common.shared_path("datasets", "test-photos", "hot_dog.jpg")
    interpreter = Interpreter(model_path=str(files["model.tflite"]), num_threads=1)
    interpreter.allocate_tensors()
    inp = interpreter.get_input_details()[0]
    size = int(inp["shape"][1])
    rgb = decode_rgb(tf.io.read_file(photo)).numpy()
    scale, zero_point = inp["quantization"]
    tensor = quantize_input(eval_resize(tf.constant(rgb), size).numpy(), mean=PIXEL_MEAN[0], std=PIXEL_STD[0],
                            scale=scale, zero_point=zero_point, dtype=np.uint8)
    frame = tf.cast(tf.round(tf.image.resize(tf.cast(rgb, tf.float32), CAMERA_SIZE[::-1])), tf.uint8).numpy()

    with tempfile.TemporaryDirectory() as tmp:
        video = f"{tmp}/camera.y4m"
        browser.write_y4m(video, frame)
        chrome = browser.Browser(fake_video=video, timeout=600)
        try:
            with browser.serving(model) as url:
                chrome.open(url)
                status = browser.wait_ready(chrome)
                if status != "ready":
                    raise SystemExit(f"error: the page did not load the model: {status}")
                rgb64 = base64.b64encode(rgb.tobytes()).decode()
                _python_runs(interpreter, tensor, 10)  # warm-up, both sides
                chrome.eval("(a) => window.demo.time(a[0], a[1], a[2], 3, 10)", [rgb64, rgb.shape[1], rgb.shape[0]])
                native, wasm, preprocess = [], [], []
                for _ in range(options.rounds):
                    native += _python_runs(interpreter, tensor, options.runs)
                    timed = chrome.eval("(a) => window.demo.time(a[0], a[1], a[2], 3, a[3])",
                                        [rgb64, rgb.shape[1], rgb.shape[0], options.runs])
                    wasm += timed["inferenceAll"]
                    preprocess.append(timed["preprocess"])
                chrome.eval("() => window.demo.startCamera()")
                if not chrome.eval("(n) => window.demo.framesClassified(n, 600000)", options.frames):
                    raise SystemExit("error: the camera did not deliver the frames in 10 minutes")
                frames = chrome.eval("() => window.demo.cameraTimes()")[-options.frames:]
                chrome.eval("() => window.demo.stopCamera()")
        finally:
            chrome.close()

    med = {key: float(np.median([f[key] for f in frames])) for key in ("grab", "preprocess", "inference", "total")}
    fps = (len(frames) - 1) / ((frames[-1]["end"] - frames[0]["end"]) / 1000)
    native_ms, wasm_ms = float(np.median(native)), float(np.median(wasm))
    print(f"model {files['model.tflite']} ({size} px); Chromium {chrome.version}, LiteRT.js 2.5.3 wasm, 1 thread; "
          f"{machine['cpu']} ({machine['isa']}), {machine['nproc']} cores, load {machine.get('loadavg_at_start')}; "
          f"revision {_common.git_revision()}; {machine['date']}")
    print(_common.table(["what", "median ms", "vs native"], [
        ["inference, Python LiteRT (native, XNNPACK)", f"{native_ms:.2f}", "1.00x"],
        ["inference, LiteRT.js (wasm) in Chromium", f"{wasm_ms:.2f}", f"{wasm_ms / native_ms:.2f}x"],
        ["page preprocess (crop, resize, quantize), photo", f"{float(np.median(preprocess)):.2f}", ""],
        [f"camera {CAMERA_SIZE[0]}x{CAMERA_SIZE[1]}: grab (its central crop)", f"{med['grab']:.2f}", ""],
        ["camera: preprocess", f"{med['preprocess']:.2f}", ""],
        ["camera: inference", f"{med['inference']:.2f}", f"{med['inference'] / native_ms:.2f}x"],
        ["camera: frame to label", f"{med['total']:.2f}", ""],
    ]))
    print(f"camera: {len(frames)} frames at {fps:.1f} frames/s; inference runs {len(native)} per runtime "
          f"({options.rounds} alternating rounds)")
    _common.write_json(options.json, {"machine": machine, "revision": _common.git_revision(), "model": str(files[
        "model.tflite"]), "chromium": chrome.version, "native_ms": native_ms, "wasm_ms": wasm_ms,
        "ratio": wasm_ms / native_ms, "camera_median_ms": med, "camera_fps": fps, "frames": len(frames)})


main = Command("bench.web_demo", Options, web_demo)

if __name__ == "__main__":
    run_command(main)
