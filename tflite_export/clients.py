"""Which runtimes can run a `.tflite` classifier, decided from the file alone (tensor types, shapes, metadata).

The rules, each checked against the runtime's code or by loading a file in it:

* LiteRT on Android and in Python (ai-edge-litert) runs any valid model: uint8, int8 or float I/O, a variable batch
  (resized before allocation).
* LiteRT.js (the browser, `@litertjs/core` 2.5.3) builds tensors of float32, int32 and uint8 only: a model with an
  int8 (or other) input or output cannot be fed or read ("Element type INT8 is not supported"), and one with a
  variable batch dimension is refused. MediaPipe's web runtime refuses the same files.
* MediaPipe Tasks' ImageClassifier needs TFLite metadata (image normalization, labels) in the file, a uint8 or float32
  input and a fixed batch of 1.
* This project's Android app (android_demo/core `TfliteModel.inputSpec`, `TensorDType`) needs one [1, H, W, 3] input
  and one output, of uint8, int8 or float32.
"""

from __future__ import annotations

import dataclasses

from tflite_export.verify import ModelAnalysis, TensorInfo

LITERT_JS_DTYPES = ("uint8", "float32", "int32")
MEDIAPIPE_INPUT_DTYPES = ("uint8", "float32")
ANDROID_APP_DTYPES = ("uint8", "int8", "float32")
BROWSER_EXPORT_HINT = "export with --io uint8 (the default) for a browser file"


@dataclasses.dataclass(frozen=True)
class Client:
    name: str
    runs: bool
    reasons: tuple[str, ...]  # why not, empty when it runs

    def line(self) -> str:
        return f"{self.name}: " + ("yes" if self.runs else "no: " + "; ".join(self.reasons))


def _variable_batch(tensors: list[TensorInfo]) -> bool:
    return any(not t.shape_signature or t.shape_signature[0] != 1 for t in tensors)


def _dtype_problems(tensors: list[TensorInfo], side: str, allowed: tuple[str, ...], who: str) -> list[str]:
    return [f"{t.dtype} {side} ({who} takes {', '.join(allowed)})" for t in tensors if t.dtype not in allowed]


def browser_problems(analysis: ModelAnalysis) -> list[str]:
    """Why LiteRT.js cannot run the file (empty when it can)."""
    problems = _dtype_problems(analysis.inputs, "input", LITERT_JS_DTYPES, "LiteRT.js")
    problems += _dtype_problems(analysis.outputs, "output", LITERT_JS_DTYPES, "LiteRT.js")
    if problems and any(t.dtype == "int8" for t in analysis.inputs + analysis.outputs):
        problems.append(BROWSER_EXPORT_HINT)
    if _variable_batch(analysis.inputs):
        problems.append("variable batch dimension (the browser needs a fixed batch of 1)")
    return problems


def clients(analysis: ModelAnalysis) -> list[Client]:
    """Every runtime the project knows, in a fixed order, with whether it runs this file."""
    inputs, outputs = analysis.inputs, analysis.outputs
    result = [Client("LiteRT (Android, Python)", True, ())]
    result.append(Client("LiteRT.js (browser)", *_verdict(browser_problems(analysis))))

    mediapipe = []
    if not analysis.has_metadata:
        mediapipe.append("no TFLite metadata in the file")
    mediapipe += _dtype_problems(inputs, "input", MEDIAPIPE_INPUT_DTYPES, "MediaPipe")
    if _variable_batch(inputs):
        mediapipe.append("variable batch dimension")
    result.append(Client("MediaPipe Tasks (ImageClassifier)", *_verdict(mediapipe)))

    app = []
    if len(inputs) != 1 or len(outputs) != 1:
        app.append(f"{len(inputs)} inputs and {len(outputs)} outputs (the app needs one of each)")
    elif len(inputs[0].shape) != 4 or inputs[0].shape[3] != 3:
        app.append(f"input shape {inputs[0].shape} (the app needs [1, H, W, 3])")
    app += _dtype_problems(inputs, "input", ANDROID_APP_DTYPES, "the app")
    app += _dtype_problems(outputs, "output", ANDROID_APP_DTYPES, "the app")
    if _variable_batch(inputs):
        app.append("variable batch dimension")
    result.append(Client("this project's Android app", *_verdict(app)))
    return result


def _verdict(problems: list[str]) -> tuple[bool, tuple[str, ...]]:
    return not problems, tuple(problems)
