"""From images to a fully-integer MobileNet: data -> float training -> QAT -> int8 TFLite export -> report.

    python -m pipeline.train_and_export --variant small                    # offline default: synthetic shapes
    python -m pipeline.train_and_export --dataset ~/photos --image_size 160 --output_dir runs/photos
    python -m pipeline.train_and_export --strategy mirrored ...            # every GPU (README "More than one device")
    python -m pipeline.train_and_export --helpfull                         # every flag

Rerunning the same command after an interruption resumes from the last finished epoch of the stage it was in.
Artifacts (model.tflite with metadata, labels.txt, model_card.json, report.json, report.html) land in --output_dir.

The flags become one validated `pipeline.config.RunConfig`; `run` passes it through the stages below (data, model,
float training, QAT, export with int8 evaluation, latency, report), each a function of the config and what the stages
before it made.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import sys
import time
from typing import TYPE_CHECKING

from absl import app, flags, logging

from keras_models import backend
from keras_models.backend import keras, tf
from pipeline import distribute
from pipeline.config import FLOAT_MODEL_FILE, MIN_BATCH_SIZE, MIN_TRAIN_IMAGES, QAT_MODEL_DIR, RunConfig

if TYPE_CHECKING:
    from pipeline.data import Dataset
    from pipeline.report import Report
    from pipeline.train import Recipe, StageResult
    from pipeline.transfer import TransferChoice
    from tflite_export.evaluate import HeldOutPredictions
    from tflite_export.files import ArtifactSet

FLAGS = flags.FLAGS
flags.DEFINE_string("variant", "small", "Model: small or large (MobileNetV3), v2, v1.")
flags.DEFINE_float("alpha", 1.0, "Width multiplier.")
flags.DEFINE_boolean("minimalistic", False, "MobileNetV3 minimalistic variant (no SE, h-swish or 5x5).")
flags.DEFINE_string(
    "dataset", "synthetic",
    "'synthetic' (built-in, offline), a folder of class sub-folders (optionally split into train/ and val/ or test/), "
    "or a TFDS name such as tfds:cifar10 (needs network).",
)
flags.DEFINE_list("synthetic_size", ["4000", "800"], "Train,test image counts of the synthetic dataset.")
flags.DEFINE_integer("image_size", 64, "Square input resolution of the model.")
flags.DEFINE_integer("batch_size", 64, "Training batch size.")
flags.DEFINE_integer(
    "float_epochs", None,
    "Epochs of float training from scratch (default 12); with --weights, the most epochs the fine-tuning trial may run "
    "(default 10; it stops earlier when the held-out slice stops improving).")
flags.DEFINE_integer("qat_epochs", 3, "Epochs of quantization-aware fine-tuning (0 with --noqat).")
flags.DEFINE_integer("freeze_bn_epochs", 1, "Last QAT epochs run with BatchNorm statistics frozen.")
flags.DEFINE_float("learning_rate", 0.1, "Peak learning rate of float training (SGD, warm-up + cosine).")
flags.DEFINE_float(
    "qat_learning_rate", None,
    "Peak learning rate of QAT fine-tuning (default: --learning_rate / 20, so it scales with the batch size like the "
    "float one).")
flags.DEFINE_boolean(
    "qat_distill", False,
    "QAT learns the float model's predictions instead of the labels (self-distillation): the int8 model agrees "
    "with the float one more often; on CIFAR-10 its top-1 was not better (BENCHMARKS.md).")
flags.DEFINE_float("weight_decay", 4e-5, "Decoupled weight decay (not applied to BN or biases).")
flags.DEFINE_float("label_smoothing", 0.1, "Label smoothing.")
flags.DEFINE_float(
    "bn_momentum", None,
    "BatchNorm moving-average momentum during training. Default: chosen from the number of float training steps so the "
    "moving statistics average over the last ~5% of training (0.9 to 0.99; the reference 0.999 suits ImageNet runs).",
)
flags.DEFINE_float("dropout", None, "Dropout before the classifier (default: the variant's, as in keras.applications: "
                   "0.2 for V3, 0 for V2, 0.001 for V1).")
flags.DEFINE_string("weights", "none", "Initial weights: none, imagenet (downloads the Keras file), or a file path.")
flags.DEFINE_enum(
    "recipe", "auto", ["auto", "scratch", "transfer"],
    "Training recipe. auto: transfer when --weights is given, else scratch. transfer: a logistic-regression head on "
    "the frozen backbone's features, then fine-tuning only if it beats that head on a held-out fifth of the training "
    "split (pipeline/transfer.py).")
flags.DEFINE_enum(
    "fine_tune", "auto", ["auto", "none", "all"],
    "Transfer recipe: auto decides on the held-out slice of the training split; none keeps the start's backbone "
    "(head only); all always fine-tunes everything but BatchNorm.")
flags.DEFINE_float("fine_tune_learning_rate", 1e-4,
                   "Transfer recipe: peak learning rate (Adam) of fine-tuning; QAT's default is a fifth of it.")
flags.DEFINE_boolean("qat", True, "Quantization-aware training; --noqat exports with post-training quantization.")
flags.DEFINE_enum("io", "uint8", ["uint8", "int8"], "Input/output dtype of the TFLite model.")
flags.DEFINE_enum("hswish", "lowered", ["lowered", "builtin"], "h-swish as ADD/RELU6/MUL ops, or HARD_SWISH.")
flags.DEFINE_boolean("logits", False, "End the TFLite file at the classifier's logits instead of its softmax: no "
                     "SOFTMAX op (faster; XNNPACK runs none in int8); the model card says activation 'none' and the "
                     "Android core applies softmax itself.")
flags.DEFINE_enum("on_bad_image", "skip", ["skip", "error"], "Unreadable image files: report and skip, or stop.")
flags.DEFINE_string("output_dir", None, "Where checkpoints, logs and artifacts go (default runs/<variant>-<dataset>).")
flags.DEFINE_integer("seed", 0, "Random seed (data split, shuffling, initialization).")
flags.DEFINE_integer("calibration_images", 200, "Images for int8 calibration.")
flags.DEFINE_integer("calibration_batches", 10, "Training batches that initialize QAT's activation ranges.")
flags.DEFINE_integer("benchmark_runs", 100, "LiteRT latency runs for the report (0 to skip).")
flags.DEFINE_boolean("android", False, "Copy the exported model into android_demo/app/src/main/assets.")
flags.DEFINE_integer(
    "verbose", 1,
    "Progress output: 0 none, 1 progress bars (Keras per epoch; calibration, conversion, evaluation), 2 one line per "
    "epoch and the other bars. -v 1 (absl's verbosity) also shows TensorFlow's own logs.")
# tf.distribute: more than one device or machine (pipeline/distribute.py says what stays the same).
flags.DEFINE_enum(
    "strategy", "default", distribute.STRATEGIES,
    "default: one device. mirrored: all GPUs of this machine. multi_worker: several machines, each with TF_CONFIG. "
    "--batch_size is the global batch (each replica takes an equal share) and the learning rates are for it, whatever "
    "the number of replicas. tpu: refused (untested, see pipeline/distribute.py).")
flags.DEFINE_boolean(
    "sync_batch_norm", False,
    "BatchNorm statistics over the global batch instead of each replica's share (all-reduced every step; Keras' "
    "unfused BatchNorm): the number of devices then changes the result only by floating-point rounding.")
flags.DEFINE_integer(
    "cpu_replicas", 0,
    "With --strategy mirrored on a machine without GPUs: split the CPU into this many devices (tests of the "
    "multi-device path; no speed-up).")
flags.DEFINE_string(
    "tfds_manual_dir", None,
    "For TFDS data sets downloaded by hand (tfds:imagenet2012: ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar): "
    "the folder holding the files. TFDS prepares them once into TFDS_DATA_DIR (default ~/tensorflow_datasets).")


def _eval_keras(model: keras.Model, eval_ds: tf.data.Dataset, desc: str) -> float:
    from tflite_export.cli import progress

    correct = total = 0
    for images, labels in progress(eval_ds, desc=desc, unit="batch"):
        predictions = tf.argmax(model(images, training=False), axis=-1, output_type=tf.int32)
        correct += int(tf.reduce_sum(tf.cast(predictions == tf.cast(labels, tf.int32), tf.int32)))
        total += int(labels.shape[0])
    return correct / max(total, 1)


def _summary(report: Report, html_path: str) -> str:
    from tflite_export.demo import try_it

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
        from pipeline.transfer import describe

        lines.append(f"transfer     {describe(report.transfer)}")
    lines.append(f"report       {html_path}  (curves, confusion matrix, worst-classified images; report.json "
                 "beside it)")
    lines.append(f"try it       {try_it(os.path.dirname(html_path) or '.', export.io_dtype)}")
    return "\n".join(lines)


def _save_atomically(model: keras.Model, path: str, **kwargs) -> None:
    """Save beside `path` and rename, so an interrupted save never leaves a half-written model."""
    from tflite_export.cli import first_line
    from tflite_export.files import atomic_output

    try:
        with atomic_output(path) as tmp:
            model.save(str(tmp), include_optimizer=False, **kwargs)
    except tf.errors.ResourceExhaustedError as err:  # how TensorFlow reports a full disk
        raise OSError(errno.ENOSPC, f"cannot write {path}: {first_line(err)}") from None


# ------------------------------------------------------------------------------------------------------------ stages
@dataclasses.dataclass
class RunData:
    """The data set and what training reads of it."""

    data: Dataset
    train: tf.data.Dataset  # one-hot labels (label smoothing needs them)
    eval: tf.data.Dataset
    input_images_per_s: float
    smallest_batch: int = MIN_BATCH_SIZE  # training batches smaller than this are dropped (pipeline.data)


@dataclasses.dataclass
class Trained:
    """What the training stages made: the float model, and the QAT model when QAT ran (the export's source)."""

    model: keras.Model
    bn_momentum: float
    float_top1: float
    stages: list[StageResult] = dataclasses.field(default_factory=list)
    qat_model: keras.Model | None = None
    qat_top1: float | None = None
    transfer: TransferChoice | None = None  # what the transfer recipe chose




def load_data(config: RunConfig, recorded_model: dict | None) -> RunData:
    from pipeline.config import check_run_directory, write_run_record
    from pipeline.data import input_pipeline_throughput, load_dataset
    from pipeline.train import one_hot
    from tflite_export.cli import header

    header(f"data: {config.dataset}")
    replicas = tf.distribute.get_strategy().num_replicas_in_sync
    data = load_dataset(
        config.dataset, image_size=config.image_size, batch_size=config.batch_size, seed=config.seed,
        on_bad_image=config.on_bad_image, synthetic_size=config.synthetic_size, tfds_manual_dir=config.tfds_manual_dir,
        cache_dir=os.path.join(config.output_dir, "cache") if distribute.is_chief() else None,
        replicas=replicas,
    )
    classes = data.class_names
    logging.info("data: %d train, %d eval (%s), classes: %s", data.num_train, data.num_eval, data.eval_split_name,
                 ", ".join(classes))
    if data.num_train < MIN_TRAIN_IMAGES or data.num_eval < 1:
        raise ValueError(f"{config.dataset} has {data.num_train} training and {data.num_eval} evaluation images; the "
                         f"export needs at least {MIN_TRAIN_IMAGES} and 1")
    check_run_directory(config, recorded_model, classes=classes)
    if distribute.is_chief():  # the other workers of a multi-worker run only train
        write_run_record(config, classes)
    input_rate = input_pipeline_throughput(data.train)
    logging.info("input pipeline alone: %.0f images/s", input_rate)
    return RunData(data, one_hot(data.train, len(classes)), one_hot(data.eval, len(classes)), input_rate,
                   smallest_batch=config.batch_size if replicas > 1 else MIN_BATCH_SIZE)


def build_model(config: RunConfig, run_data: RunData) -> tuple[keras.Model, float]:
    """The network (with --weights loaded) and the BatchNorm momentum it trains with."""
    import keras_models
    from pipeline.train import auto_batch_norm_momentum, set_batch_norm_momentum

    model = keras_models.build(
        config.variant, input_shape=(config.image_size, config.image_size, 3), alpha=config.alpha,
        num_classes=len(run_data.data.class_names), minimalistic=config.minimalistic, dropout=config.dropout,
        weights=config.weights,
    )
    if config.sync_batch_norm:
        logging.info("BatchNorm: statistics of the global batch in %d layers", distribute.synchronize_batch_norm(model))
    steps = -(-run_data.data.num_train // config.batch_size) * max(config.float_epochs, 1)
    bn_momentum = config.bn_momentum if config.bn_momentum is not None else auto_batch_norm_momentum(steps)
    set_batch_norm_momentum(model, bn_momentum)
    logging.info("BatchNorm momentum %.4f for %d float training steps", bn_momentum, steps)
    return model, bn_momentum


def _stage_args(config: RunConfig, run_data: RunData) -> dict:
    return dict(num_train=run_data.data.num_train, workdir=config.output_dir, batch_size=config.batch_size,
                verbose=config.verbose)


def _float_recipe(config: RunConfig) -> Recipe:
    """The recipe of the `float` stage: from scratch, or the fine-tuning of the transfer recipe."""
    from pipeline.train import Recipe

    recipe = Recipe(learning_rate=config.learning_rate, weight_decay=config.weight_decay,
                    label_smoothing=config.label_smoothing)
    if config.recipe == "transfer":
        recipe = dataclasses.replace(recipe, learning_rate=config.fine_tune_learning_rate, optimizer="adam")
    return recipe


def train_float(config: RunConfig, model: keras.Model, bn_momentum: float, run_data: RunData) -> Trained:
    """Float training from scratch, or the transfer recipe (a fitted head, fine-tuning only where it pays:
    pipeline/transfer.py); saves float_model.h5."""
    from pipeline import transfer
    from pipeline.train import run_stage

    stage_args = _stage_args(config, run_data)
    choice = None
    if config.recipe == "transfer":
        choice, stages = transfer.train(
            model, run_data.data, start_file=config.weights, fine_tune=config.fine_tune,
            max_epochs=config.float_epochs, recipe=_float_recipe(config), calibration=config.calibration_batches,
            seed=config.seed, smallest_batch=run_data.smallest_batch, workdir=config.output_dir,
            batch_size=config.batch_size, verbose=config.verbose)
    else:
        stages = [run_stage("float", model, run_data.train, run_data.eval, epochs=config.float_epochs,
                            recipe=_float_recipe(config), **stage_args)]
    float_top1 = _eval_keras(model, run_data.data.eval, "float evaluation")
    logging.info("float model: held-out top-1 %.4f", float_top1)
    with distribute.chief_path(os.path.join(config.output_dir, FLOAT_MODEL_FILE)) as path:
        _save_atomically(model, path)
    return Trained(model, bn_momentum, float_top1, stages, transfer=choice)


def train_qat(config: RunConfig, trained: Trained, run_data: RunData) -> None:
    """Quantization-aware fine-tuning of the float model (its ranges calibrated first); saves qat_model/ and adds the
    QAT model, its stages and its held-out top-1 to `trained`. A transfer run that kept the start file's backbone
    trains nothing: the file's ranges are its int8 arithmetic already (pipeline/transfer.py)."""
    from keras_models.tflite_weights import read_tflite
    from pipeline import transfer
    from pipeline.distill import Distiller
    from pipeline.qat import RangeRules, quantize_model, set_up_ranges
    from pipeline.train import Recipe, fine_tune
    from tflite_export.cli import header, progress
    from tflite_export.quantization import quantize_scope

    model, data = trained.model, run_data.data
    if trained.transfer is not None and trained.transfer.fine_tune == "none":
        header("int8 arithmetic: the start file's ranges for the backbone, calibrated ones for the new head")
        trained.qat_model = transfer.prepare_qat(model, config.weights,
                                                 transfer.calibration_batches(data, config.calibration_batches))
        _finish_qat(config, trained, data)
        return
    header("quantization-aware training: fake-quant model and activation ranges")
    qat_model = quantize_model(model)
    if config.sync_batch_norm:  # tfmot's quantize_apply rebuilds the BatchNorms without it
        distribute.synchronize_batch_norm(qat_model)
    if not os.path.exists(os.path.join(config.output_dir, "checkpoints", "qat.weights.h5")):
        batches = progress(data.train.take(config.calibration_batches), desc="QAT range calibration", unit="batch")
        # A .tflite start's weights were trained under the file's activation ranges: start QAT from them.
        setup = set_up_ranges(qat_model, (images for images, _ in batches),
                              read_tflite(config.weights).ranges if str(config.weights).lower().endswith(".tflite")
                              else None, keep_calibrated=(transfer.classifier(model).name,))
        logging.info("QAT: activation ranges calibrated on %d training batches, %d taken from --weights, %d clamped "
                     "where h-swish or the hard sigmoid saturates, %d x1/6 ranges aligned with their inputs",
                     setup.calibration_batches, setup.imported, setup.clamped, setup.aligned)
    qat_recipe = Recipe(
        learning_rate=config.qat_learning_rate, warmup_epochs=0, weight_decay=config.weight_decay,
        optimizer=_float_recipe(config).optimizer,
        # The float model's softmax is already a soft target: no label smoothing on top of it.
        label_smoothing=0.0 if config.qat_distill else config.label_smoothing,
        targets="float model" if config.qat_distill else "labels")
    with quantize_scope():
        qat_trainee = Distiller(qat_model, teacher=model) if config.qat_distill else qat_model
        trained.stages += fine_tune("qat", qat_trainee, run_data.train, run_data.eval, epochs=config.qat_epochs,
                                    freeze_bn_epochs=config.freeze_bn_epochs, recipe=qat_recipe,
                                    batch_norm_model=qat_model, callbacks=(RangeRules(qat_model),),
                                    **_stage_args(config, run_data))
    trained.qat_model = qat_model
    _finish_qat(config, trained, data)


def _finish_qat(config: RunConfig, trained: Trained, data: Dataset) -> None:
    """The QAT model's held-out top-1, and the model saved as qat_model/."""
    from tflite_export.quantization import quantize_scope

    with quantize_scope():
        trained.qat_top1 = _eval_keras(trained.qat_model, data.eval, "QAT evaluation")
        # HDF5 cannot hold tfmot's shared quantizer variables; the SavedModel format round-trips them. Without the
        # traced call functions (every loader rebuilds the layers from their configs under quantize_scope): a V3-Small
        # QAT model saved in 12 s instead of 65 and loaded in 12 instead of 40, with identical outputs.
        with distribute.chief_path(os.path.join(config.output_dir, QAT_MODEL_DIR)) as path:
            _save_atomically(trained.qat_model, path, save_format="tf", save_traces=False)
    logging.info("QAT model: held-out top-1 %.4f", trained.qat_top1)


def export_and_evaluate(config: RunConfig, trained: Trained, run_data: RunData,
                        artifacts: ArtifactSet) -> tuple[dict, HeldOutPredictions]:
    """The int8 file (with labels and card) into `artifacts`, and every held-out image's int8 and float top-1."""
    import keras_models
    from tflite_export.cli import header, progress
    from tflite_export.export import ModelInfo, export_model, held_out_predictions
    from tflite_export.files import MODEL_FILE

    data, source = run_data.data, trained.qat_model or trained.model
    family = keras_models.VARIANTS[config.variant]
    info = ModelInfo(
        name=f"{family} {config.alpha:g} {config.image_size}px int8",
        description=f"{family} (alpha {config.alpha:g}) trained on {config.dataset}; "
                    f"{'quantization-aware trained' if trained.qat_model else 'post-training quantized'}, "
                    f"fully integer, {config.io} I/O{', ends at the logits' if config.logits else ''}",
    )
    header(f"int8 export ({'QAT ranges' if trained.qat_model else 'post-training calibration'}), verification and "
           "int8 evaluation")
    export_report = export_model(
        source,
        lambda: progress(data.representative(config.calibration_images), desc="int8 calibration",
                         total=min(config.calibration_images, data.num_train)),
        output_dir=config.output_dir,
        labels=data.class_names,
        info=info,
        io_dtype=config.io,
        hswish=config.hswish,
        artifacts=artifacts,
        logits=config.logits,
    )
    with open(artifacts.path(MODEL_FILE), "rb") as f:
        content = f.read()
    # Compared with the float model: the agreement says how much of the float model's behaviour the int8 file keeps.
    predictions = held_out_predictions(content, trained.model, progress(data.eval, desc="int8 evaluation",
                                                                          unit="batch"), logits=config.logits)
    return export_report, predictions


def measure_latency(config: RunConfig, model_path: str) -> list[dict]:
    from tflite_export.cli import header

    if not config.benchmark_runs:
        return []
    header(f"latency: {config.benchmark_runs} LiteRT runs at 1 and 2 threads")
    from tflite_export.benchmark import benchmark_models

    return [{"threads": row["threads"], "median_ms": row["median_ms"]}
            for row in benchmark_models([model_path], threads=[1, 2], runs=config.benchmark_runs, warmup=10)]


def _stage_summaries(config: RunConfig, stages: list[StageResult]) -> list:
    from pipeline.report import StageSummary, read_epoch_curves
    from pipeline.train import epoch_log_path

    return [StageSummary(name=s.name, epochs=s.epochs, first_epoch=s.first_epoch, skipped=s.skipped,
                         seconds=s.seconds, images_per_second=s.images_per_second,
                         curves=read_epoch_curves(epoch_log_path(config.output_dir, s.name), s.epochs))
            for s in stages]


def _int8_evaluation(predictions: HeldOutPredictions, data: Dataset):
    from pipeline.report import WORST_IMAGES, Int8Evaluation, WorstImage

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
    from pipeline.report_html import thumbnail_png

    wanted, found, position = set(indices), {}, 0
    for images, _ in data.eval.as_numpy_iterator():
        for image in images:
            if position in wanted:
                found[position] = thumbnail_png(image)
            position += 1
        if len(found) == len(wanted):
            break
    return found


def write_report(config: RunConfig, run_data: RunData, trained: Trained, export_report: dict,
                 predictions: HeldOutPredictions, latency: list[dict], export_seconds: float, started: float,
                 artifacts: ArtifactSet, distribution: distribute.Distribution) -> Report:
    """report.json and report.html into the set about to be published."""
    from keras_models.profile import totals
    from pipeline import report_html
    from pipeline.report import (
        HTML_FILE,
        REPORT_FILE,
        DataSummary,
        DistributionSummary,
        ExportSummary,
        Int8Accuracy,
        KerasAccuracy,
        Latency,
        ModelSummary,
        Report,
        Throughput,
    )
    from tflite_export.files import atomic_write_bytes

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
        export=ExportSummary(**export_report, accuracy=Int8Accuracy(**predictions.summary())),
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


@dataclasses.dataclass
class Training:
    """What `train` hands to `publish`: the data, the trained models, and when the run started."""

    config: RunConfig
    run_data: RunData
    trained: Trained
    started: float


def train(config: RunConfig, distribution: distribute.Distribution) -> Training:
    """Data, model, float training and QAT, in `distribution`'s scope (every worker of a multi-worker run)."""
    from pipeline.config import check_run_directory, forget_unresumable_run, recorded_model

    started = time.perf_counter()
    distribute.check_batch_size(config.batch_size, distribution.num_replicas, config.sync_batch_norm, MIN_BATCH_SIZE)
    logging.info("%s", distribution.describe(config.batch_size))
    # A rerun reuses the folder's checkpoints and weights: refuse one that would build another model from them (the
    # classes are compared as soon as the data set is known, still before any training).
    recorded = recorded_model(config.output_dir)
    check_run_directory(config, recorded)
    os.makedirs(config.output_dir, exist_ok=True)
    keras.utils.set_random_seed(config.seed)

    try:
        with distribution.scope():  # models, optimizers and their checkpoints are replicated
            run_data = load_data(config, recorded)
            model, bn_momentum = build_model(config, run_data)
            trained = train_float(config, model, bn_momentum, run_data)
            if config.runs_qat:
                train_qat(config, trained, run_data)
    except BaseException:
        if recorded is None and distribution.is_chief:  # a first run that failed: not a run to resume
            forget_unresumable_run(config.output_dir)
        raise
    return Training(config, run_data, trained, started)


def plain_copies(config: RunConfig, trained: Trained) -> Trained:
    """The trained models as saved by the chief, loaded outside any strategy.

    Under MultiWorkerMirroredStrategy, BatchNorm's moving statistics are sync-on-read variables: reading them outside
    a replica averages them over the workers, so a graph traced from the trained model holds a CollectiveReduceV2 op
    (the TFLite converter cannot lower it, and the other workers have stopped by then). The saved files hold the
    values those reads agreed on when every worker was still there."""
    from tflite_export.quantization import quantize_scope

    with quantize_scope():
        model = keras.models.load_model(os.path.join(config.output_dir, FLOAT_MODEL_FILE), compile=False)
        qat_model = (keras.models.load_model(os.path.join(config.output_dir, QAT_MODEL_DIR), compile=False)
                     if trained.qat_model is not None else None)
    return dataclasses.replace(trained, model=model, qat_model=qat_model)


def publish(training: Training, distribution: distribute.Distribution) -> Report:
    """On the chief, outside the strategy: the int8 file, its checks and evaluation, latency, the report, the app."""
    from pipeline.android import install_into_android_app
    from tflite_export.files import MODEL_FILE, artifact_set

    config, run_data, trained = training.config, training.run_data, training.trained
    if distribution.num_workers > 1:
        trained = plain_copies(config, trained)
    # Model, labels, card and report are staged together and published as one set when the last is written: a failure
    # (disk full, a failed check) leaves the previous run's set in place, never a new card beside an old model.
    with artifact_set(config.output_dir) as artifacts:
        export_started = time.perf_counter()
        export_report, predictions = export_and_evaluate(config, trained, run_data, artifacts)
        export_seconds = time.perf_counter() - export_started
        latency = measure_latency(config, artifacts.path(MODEL_FILE))
        report = write_report(config, run_data, trained, export_report, predictions, latency, export_seconds,
                              training.started, artifacts, distribution)
    if config.android:
        install_into_android_app(config.output_dir)
    return report


def run(config: RunConfig, distribution: distribute.Distribution) -> Report | None:
    """The whole job; returns the report (None on a multi-worker run's other workers, which stop after training).
    User errors raise exceptions with one-line messages."""
    from tflite_export.files import exclusive_folder

    if not distribution.is_chief:  # the other workers write nothing of their own into the folder
        train(config, distribution)
        return None  # the chief exports and reports
    with exclusive_folder(config.output_dir):
        return publish(train(config, distribution), distribution)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    from keras_models import WeightsError
    from pipeline.data import DataError
    from pipeline.report import HTML_FILE
    from tflite_export.cli import one_line_error, set_progress
    from tflite_export.convert import ConversionError
    from tflite_export.verify import VerificationError

    # Without -v the console shows the stages, progress and results, not TensorFlow's own logs.
    if FLAGS.verbosity >= 1:
        backend.show_library_logs()
    set_progress(FLAGS.verbose > 0)

    try:
        config = RunConfig.from_flags(FLAGS)
        # Before anything runs TensorFlow: a strategy configures the runtime (devices, the workers' collectives).
        distribution = distribute.create(config.strategy, cpu_replicas=config.cpu_replicas)
        report = run(config, distribution)
    except (DataError, WeightsError, ConversionError, VerificationError, ValueError, OSError, MemoryError) as err:
        print(f"error: {one_line_error(err)}", file=sys.stderr)
        sys.exit(2)
    except tf.errors.ResourceExhaustedError as err:  # TensorFlow's out-of-memory (a full disk is an OSError by now)
        first = (str(err).strip().splitlines() or ["resource exhausted"])[0][:200]
        print(f"error: out of memory ({first}); reduce --batch_size ({FLAGS.batch_size}) or --image_size "
              f"({FLAGS.image_size})", file=sys.stderr)
        sys.exit(2)
    if report is None:
        print(f"\nworker {distribution.worker}: training finished; the chief (worker 0) exports and reports")
        return
    print("\n" + _summary(report, os.path.join(config.output_dir, HTML_FILE)))


if __name__ == "__main__":
    app.run(main)
