"""report.json: what a run of `pipeline.train_and_export` did and measured, as one typed, versioned record.

    from pipeline.report import Report
    report = Report.read("runs/small-synthetic/report.json")   # SchemaError (one line) for another schema version
    report.export.accuracy.int8_top1, report.stage("float").curves.metrics["val_accuracy"]

Every reader (the pipeline's summary, bench/) goes through `Report.read` / `Report.from_json`, so a field renamed or
re-meant here shows up as a refused file or a type checker's error, not as a KeyError in a benchmark an hour later.
Bump SCHEMA_VERSION when a field changes meaning or is removed.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os

from pipeline import schema
from pipeline.config import RunConfig
from pipeline.transfer import TransferChoice
from tflite_export.evaluate import HeldOutAccuracy
from tflite_export.export import REPORT_FILE
from tflite_export.files import atomic_write_json

HTML_FILE = "report.html"  # beside report.json, in the same published set
# A report of another schema: rerunning its command skips the finished stages and writes the report again.
_REWRITE = "rerun the pipeline command that made it (finished stages are not trained again) to rewrite it"
# The images of the worst-classified list (their thumbnails are in report.html).
WORST_IMAGES = 12


@dataclasses.dataclass(frozen=True)
class ModelSummary:
    name: str
    params: int
    madds: int
    bn_momentum: float  # the BatchNorm momentum training used (RunConfig.bn_momentum, or chosen from the step count)


@dataclasses.dataclass(frozen=True)
class DataSummary:
    spec: str
    num_train: int
    num_eval: int
    eval_split: str
    classes: list[str]
    skipped_files: list[str]


@dataclasses.dataclass(frozen=True)
class KerasAccuracy:
    float_keras: float  # top-1 of the float Keras model on the held-out split
    qat_keras: float | None  # of the QAT (fake-quant) Keras model; None without QAT


# The int8 file's top-1 and the float Keras model's on the same held-out images, and how often they agree: the
# export's own record of them (report.json keeps its fields: images, keras_top1, int8_top1, agreement).
Int8Accuracy = HeldOutAccuracy


@dataclasses.dataclass(frozen=True)
class ExportSummary:
    model_file: str
    size_bytes: int
    convert_seconds: float
    io_dtype: str
    hswish: str
    ops: dict[str, int]
    float_tensors: int
    xnnpack_partitions: int | None
    accuracy: Int8Accuracy
    output: str = "softmax"  # or "logits" (--logits); reports written before the option have no such field


@dataclasses.dataclass(frozen=True)
class WorstImage:
    index: int  # position in the held-out split
    file: str  # its file for folder data sets, "" otherwise
    true_class: int
    predicted_class: int
    confidence: float  # the int8 model's output for the predicted class
    true_class_score: float  # and for the true one


@dataclasses.dataclass(frozen=True)
class Int8Evaluation:
    """The int8 model on the held-out split, per class."""

    confusion: list[list[int]]  # image counts [true class][predicted class]
    worst: list[WorstImage]  # mistakes, most confident first; then the correct images it was least sure of

    def per_class_accuracy(self) -> list[float | None]:
        """Top-1 of each class (None for a class without held-out images)."""
        return [row[i] / sum(row) if sum(row) else None for i, row in enumerate(self.confusion)]


@dataclasses.dataclass(frozen=True)
class Latency:
    threads: int
    median_ms: float


@dataclasses.dataclass(frozen=True)
class Throughput:
    input_pipeline_images_per_s: float
    float_train_images_per_s: float | None  # None: the stage was done in an earlier run (or did not run)
    qat_train_images_per_s: float | None


@dataclasses.dataclass(frozen=True)
class EpochCurves:
    """Per-epoch values of a stage as Keras logged them (loss, accuracy, val_loss, val_accuracy), every epoch of the
    stage including those trained before an interruption."""

    epochs: list[int]  # 1-based
    metrics: dict[str, list[float]]


@dataclasses.dataclass(frozen=True)
class StageSummary:
    name: str  # head, float, qat, qat_bn_frozen
    epochs: int
    first_epoch: int  # 0-based epoch this run started at (> 0 when resumed, = epochs when done earlier)
    skipped: bool  # finished in an earlier run
    seconds: float  # in this run
    images_per_second: float | None
    curves: EpochCurves


@dataclasses.dataclass(frozen=True)
class DistributionSummary:
    """How training was spread (pipeline/distribute.py): the learning rates are for the global batch."""

    strategy: str
    replicas: int
    workers: int
    global_batch: int
    per_replica_batch: float
    sync_batch_norm: bool


@dataclasses.dataclass(frozen=True)
class Report:
    SCHEMA_VERSION = 3  # 1: the untyped report.json without schema_version; 2: with --head_epochs, no `transfer`

    schema_version: int
    config: RunConfig
    model: ModelSummary
    data: DataSummary
    accuracy: KerasAccuracy
    export: ExportSummary
    int8_evaluation: Int8Evaluation
    latency: list[Latency]
    throughput: Throughput
    stages: list[StageSummary]
    export_and_int8_eval_seconds: float
    seconds_total: float
    distribution: DistributionSummary | None = None  # None in reports written before --strategy existed
    transfer: TransferChoice | None = None  # what the transfer recipe chose and why; None from scratch

    def stage(self, name: str) -> StageSummary | None:
        return next((s for s in self.stages if s.name == name), None)

    @property
    def qat_seconds(self) -> float:
        return sum(s.seconds for s in self.stages if s.name.startswith("qat"))

    @property
    def resumed(self) -> dict[str, int]:
        """Stages this run resumed from a checkpoint: {name: the 0-based epoch it started at}."""
        return {s.name: s.first_epoch for s in self.stages if s.first_epoch and not s.skipped}

    def write(self, path: str | os.PathLike) -> None:
        atomic_write_json(path, schema.to_json_dict(self))

    @classmethod
    def from_json(cls, text: str, source: str = "report.json") -> Report:
        try:
            data = json.loads(text)
        except ValueError as err:
            raise schema.SchemaError(f"{source} is not valid JSON ({err})") from None
        if not isinstance(data, dict):
            raise schema.SchemaError(f"{source} does not hold a JSON object")
        schema.check_version(data, cls.SCHEMA_VERSION, source, "report", _REWRITE)
        try:
            return schema.from_json_dict(cls, data)
        except schema.SchemaError as err:
            raise schema.SchemaError(f"{source}: {err}") from None

    @classmethod
    def read(cls, path: str | os.PathLike) -> Report:
        return schema.read_record(cls, path, "report", _REWRITE)


def read_report(output_dir: str | os.PathLike) -> Report | None:
    """The report of a finished run in `output_dir`, or None when there is none yet."""
    path = os.path.join(output_dir, REPORT_FILE)
    return Report.read(path) if os.path.exists(path) else None


def read_epoch_curves(path: str | os.PathLike, epochs: int) -> EpochCurves:
    """A stage's CSVLogger file as curves over its first `epochs` epochs. A resumed stage appends to the file, and an
    epoch redone after an interruption appears twice: its last row is the one training went on from. No file (a stage
    trained before these logs were kept): empty curves."""
    rows: dict[int, dict[str, str]] = {}
    if os.path.exists(path):
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                try:
                    epoch = int(row.pop("epoch"))
                except (KeyError, TypeError, ValueError):
                    continue  # a row cut short by a kill
                if 0 <= epoch < epochs:
                    rows[epoch] = row
    order = sorted(rows)
    names = sorted({name for row in rows.values() for name in row if name})
    return EpochCurves(epochs=[e + 1 for e in order],
                       metrics={name: [_number(rows[e].get(name)) for e in order] for name in names})


def _number(text: str | None) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return math.nan
