"""The report of a run of `pipeline.train_and_export`: report.json and report.html from what its stages made, and the
summary the command prints."""

from __future__ import annotations

import dataclasses
import os
import time
from typing import TYPE_CHECKING

from keras_models.profile import totals
from pipeline import distribute, report_html
from pipeline.config import RunConfig
from pipeline.data import Dataset
from pipeline.report import (
    HTML_FILE,
    REPORT_FILE,
    WORST_IMAGES,
    DataSummary,
    DistributionSummary,
    ExportSummary,
    Int8Evaluation,
    KerasAccuracy,
    Latency,
    ModelSummary,
    Report,
    StageSummary,
    Throughput,
    WorstImage,
    read_epoch_curves,
)
from pipeline.train import StageResult, epoch_log_path
from pipeline.transfer import describe
from tflite_export.demo import try_it
from tflite_export.evaluate import HeldOutPredictions
from tflite_export.export import ExportResult
from tflite_export.files import ArtifactSet, atomic_write_bytes

if TYPE_CHECKING:  # annotations only: pipeline.train_and_export imports this module
    from pipeline.train_and_export import RunData, Trained


def summary(report: Report, html_path: str) -> str:
    acc, export = report.export.accuracy, report.export
    lines = [
        f"model        {report.model.name}  ({report.model.params:,} params, "
        f"{report.model.madds / 1e6:.1f}M MAdds at {report.config.image_size}px)",
        f"data         {report.data.spec}: {report.data.num_train} train / {report.data.num_eval} "
        f"eval ({report.data.eval_split}), {len(report.data.classes)} classes",
        f"float top-1  {report.accuracy.float_keras:.4f}   (Keras, held-out split)",
    ]
    if report.accuracy.qat_keras is not None:
        lines.append(f"QAT top-1    {report.accuracy.qat_keras:.4f}   (Keras with fake-quant)")
    lines += [
        f"int8 top-1   {acc.int8_top1:.4f}   (LiteRT, {acc.images} images; agrees with float on {acc.agreement:.1%})",
        f"file         {export.model_file}  {export.size_bytes / 1024:.0f} KiB, {export.io_dtype} I/O, "
        f"{sum(export.ops.values())} ops, HARD_SWISH {export.ops.get('HARD_SWISH', 0)}, "
        f"float tensors {export.float_tensors}",
        "ops          " + ", ".join(f"{k} {v}" for k, v in sorted(export.ops.items(), key=lambda kv: -kv[1])),
    ]
    for row in report.latency:
        lines.append(f"latency      {row.threads} thread(s): median {row.median_ms:.2f} ms (LiteRT, XNNPACK)")
    t = report.throughput

    def rate(images_per_s):  # None: the stage was already done in an earlier run (or did not run)
        return f"{images_per_s:.0f} img/s" if images_per_s else "not measured in this run"

    lines.append(
        f"throughput   input pipeline {rate(t.input_pipeline_images_per_s)} vs float training "
        f"{rate(t.float_train_images_per_s)}"
        + (f", QAT {rate(t.qat_train_images_per_s)}" if report.accuracy.qat_keras is not None else "")
    )
    float_seconds = sum(s.seconds for s in report.stages if not s.name.startswith("qat"))
    lines.append(f"time         {report.seconds_total:.0f} s total (float {float_seconds:.0f} s, QAT "
                 f"{report.qat_seconds:.0f} s, export + int8 evaluation {report.export_and_int8_eval_seconds:.0f} s)")
    if report.transfer is not None:
        lines.append(f"transfer     {describe(report.transfer)}")
    lines.append(f"report       {html_path}  (curves, confusion matrix, worst-classified images; report.json "
                 "beside it)")
    lines.append(f"try it       {try_it(os.path.dirname(html_path) or '.', export.io_dtype)}")
    return "\n".join(lines)


def _stage_summaries(config: RunConfig, stages: list[StageResult]) -> list:
    return [StageSummary(name=s.name, epochs=s.epochs, first_epoch=s.first_epoch, skipped=s.skipped,
                         seconds=s.seconds, images_per_second=s.images_per_second,
                         curves=read_epoch_curves(epoch_log_path(config.output_dir, s.name), s.epochs))
            for s in stages]


def _int8_evaluation(predictions: HeldOutPredictions, data: Dataset):
    worst = []
    for i in predictions.worst(WORST_IMAGES):
        predicted = int(predictions.predicted[i])
        worst.append(WorstImage(
            index=i, file=data.eval_files[i] if i < len(data.eval_files) else "",
            true_class=int(predictions.labels[i]), predicted_class=predicted,
            confidence=float(predictions.scores[i, predicted]),
            true_class_score=float(predictions.scores[i, predictions.labels[i]])))
    return Int8Evaluation(confusion=predictions.confusion_matrix().tolist(), worst=worst)


def _thumbnails(data: Dataset, indices: list[int]) -> dict[int, bytes]:
    """PNG thumbnails of the held-out images at `indices` (the evaluation split's order is deterministic)."""
    wanted, found, position = set(indices), {}, 0
    for images, _ in data.eval.as_numpy_iterator():
        for image in images:
            if position in wanted:
                found[position] = report_html.thumbnail_png(image)
            position += 1
        if len(found) == len(wanted):
            break
    return found


def write_report(config: RunConfig, run_data: RunData, trained: Trained, export_report: ExportResult,
                 predictions: HeldOutPredictions, latency: list[dict], export_seconds: float, started: float,
                 artifacts: ArtifactSet, distribution: distribute.Distribution) -> Report:
    """report.json and report.html into the set about to be published."""
    data, stages = run_data.data, trained.stages
    params, madds = totals(trained.model)
    report = Report(
        schema_version=Report.SCHEMA_VERSION,
        config=config,
        model=ModelSummary(trained.model.name, params, madds, trained.bn_momentum),
        data=DataSummary(spec=config.dataset, num_train=data.num_train, num_eval=data.num_eval,
                         eval_split=data.eval_split_name, classes=list(data.class_names),
                         skipped_files=list(data.skipped_files)),
        accuracy=KerasAccuracy(trained.float_top1, trained.qat_top1),
        export=ExportSummary(**{**dataclasses.asdict(export_report),
                                "accuracy": predictions.summary()}),
        int8_evaluation=_int8_evaluation(predictions, data),
        latency=[Latency(**row) for row in latency],
        throughput=Throughput(
            input_pipeline_images_per_s=run_data.input_images_per_s,
            float_train_images_per_s=next((s.images_per_second for s in stages if s.name in ("float", "fine_tune")),
                                          None),
            qat_train_images_per_s=next((s.images_per_second for s in stages if s.name == "qat"), None)),
        stages=_stage_summaries(config, stages),
        export_and_int8_eval_seconds=export_seconds,
        seconds_total=time.perf_counter() - started,
        distribution=DistributionSummary(**distribution.record(config.batch_size, config.sync_batch_norm)),
        transfer=trained.transfer,
    )
    report.write(artifacts.path(REPORT_FILE))
    thumbnails = _thumbnails(data, [w.index for w in report.int8_evaluation.worst])
    atomic_write_bytes(artifacts.path(HTML_FILE), report_html.render(report, thumbnails).encode("utf-8"))
    return report
