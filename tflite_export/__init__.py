"""Fully-integer TFLite export, verification, metadata, inspection, benchmarking and evaluation.

A library under the pipeline: it imports `keras_models` and never `pipeline` (tests/test_architecture.py checks it).
What training and export share lives here: the preprocessing contract (`preprocessing`), the quantization scheme
(`quantization`), files and atomic writes (`files`), the model card (`model_card`), console helpers (`cli`).

The names below are its public API, imported on first use; the functions return frozen dataclasses (`ExportResult`,
`Inspection`, `Evaluation`, a list of `ModelLatency`), which the command-line tools write with `--json`. Each tool is a
module of the same job (`python -m tflite_export.export`, `.inspect`, `.evaluate`, `.benchmark`), run through
`tflite_export.command`, the one command-line style of every `python -m` command of the project.
"""

import importlib
import sys

from keras_models import backend as _backend  # noqa: F401  (must precede TensorFlow imports)


def lazy_attributes(package: str, public: dict[str, str]):
    """`__getattr__` and `__dir__` for the package `package`, whose public names (`public`: name -> the module that
    defines it) are imported on first use, so that importing the package does not import every module."""

    def __getattr__(name: str):
        if name in public:
            return getattr(importlib.import_module(public[name]), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(public))

    return __getattr__, __dir__


# public name -> the module that defines it
_PUBLIC = {
    "ModelInfo": "tflite_export.export",
    "export_model": "tflite_export.export",
    "ExportResult": "tflite_export.export",
    "HeldOutAccuracy": "tflite_export.evaluate",
    "run_tflite": "tflite_export.export",
    "ConversionError": "tflite_export.convert",
    "analyze": "tflite_export.verify",
    "ModelAnalysis": "tflite_export.verify",
    "VerificationError": "tflite_export.verify",
    "inspect_model": "tflite_export.inspect",
    "Inspection": "tflite_export.inspect",
    "evaluate_tflite": "tflite_export.evaluate",
    "Evaluation": "tflite_export.evaluate",
    "benchmark_models": "tflite_export.benchmark",
    "ModelLatency": "tflite_export.benchmark",
    "read_metadata": "tflite_export.metadata",
    "ModelCard": "tflite_export.model_card",
}
__all__ = sorted(_PUBLIC)


__getattr__, __dir__ = lazy_attributes(__name__, _PUBLIC)
