"""The pipeline from Python: `pipeline.run(RunConfig(...))` runs what `python -m pipeline.train_and_export` runs (the
same stages, resuming the same way) and returns what it made.

    import pipeline

    result = pipeline.run(pipeline.RunConfig(dataset="photos", weights="v3-small.tflite", image_size=224))
    result.int8_top1, result.model_file, result.report.export.ops

No absl flags are involved: the config's fields are the command's flags, with the same defaults (pipeline.config).
Bad settings raise a ValueError with a one-line message naming the flag before any data is read; the errors of a run
are the command's (pipeline.data.DataError, keras_models.WeightsError, tflite_export's ConversionError and
VerificationError, OSError), without its `error:` line and exit code.
"""

from __future__ import annotations

import dataclasses
import os

from pipeline import distribute, train_and_export
from pipeline.config import RunConfig
from pipeline.report import HTML_FILE, Report
from tflite_export.cli import set_progress
from tflite_export.files import CARD_FILE, LABELS_FILE, MODEL_FILE, REPORT_FILE


@dataclasses.dataclass(frozen=True)
class RunResult:
    """What a run made: the published files in `config.output_dir`, the held-out top-1 of each model, the report."""

    config: RunConfig  # resolved: the values the run used
    model_file: str  # the fully-integer .tflite, with metadata
    labels_file: str
    model_card_file: str
    report_file: str  # report.json (the `report` below)
    html_file: str  # report.html: curves, confusion matrix, worst-classified images
    float_top1: float  # the float Keras model on the held-out split
    qat_top1: float | None  # the QAT (fake-quant) Keras model; None without QAT
    int8_top1: float  # the .tflite file in LiteRT, on the same images
    report: Report


def run(config: RunConfig) -> RunResult | None:
    """Train and export as the command does, under `config.strategy` (one device by default). Returns None only on the
    non-chief workers of a multi-worker run, which train and leave the export to the chief."""
    config = config.resolved()
    set_progress(config.verbose > 0)
    # Before anything runs TensorFlow: a strategy configures the runtime (devices, the workers' collectives).
    distribution = distribute.create(config.strategy, cpu_replicas=config.cpu_replicas)
    report = train_and_export.run(config, distribution)
    if report is None:
        return None
    folder = config.output_dir
    return RunResult(
        config=config, model_file=os.path.join(folder, MODEL_FILE), labels_file=os.path.join(folder, LABELS_FILE),
        model_card_file=os.path.join(folder, CARD_FILE), report_file=os.path.join(folder, REPORT_FILE),
        html_file=os.path.join(folder, HTML_FILE), float_top1=report.accuracy.float_keras,
        qat_top1=report.accuracy.qat_keras, int8_top1=report.export.accuracy.int8_top1, report=report)
