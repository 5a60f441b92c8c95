"""From images to a fully-integer MobileNet: data -> float training -> QAT -> int8 TFLite export -> report.

    python -m pipeline.train_and_export --variant small                    # offline default: synthetic shapes
    python -m pipeline.train_and_export --dataset ~/photos --image_size 160 --output_dir runs/photos
    python -m pipeline.train_and_export --strategy mirrored ...            # every GPU (README "More than one device")
    python -m pipeline.train_and_export --helpfull                         # every flag

Rerunning the same command after an interruption resumes from the last finished epoch of the stage it was in.
Artifacts (model.tflite with metadata, labels.txt, model_card.json, report.json, report.html) land in --output_dir.

The flags (made from `pipeline.config.RunConfig`'s fields when the command runs, not on import: tflite_export.command)
become one validated config; `run` passes it through the stages below (data, model, float training, QAT, export with
int8 evaluation, latency, report), each a function of the config and what the stages before it made. From Python,
`pipeline.run(config)` (pipeline/api.py) runs the same stages.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import time
from collections.abc import Callable, Iterable

from absl import logging

import keras_models
from keras_models.backend import keras, tf
from pipeline import distribute, transfer
from pipeline.android import install_into_android_app
from pipeline.config import FLOAT_MODEL_FILE, MIN_BATCH_SIZE, MIN_TRAIN_IMAGES, QAT_MODEL_DIR, RunConfig
from pipeline.data import Dataset, input_pipeline_throughput, load_dataset
from pipeline.distill import Distiller
from pipeline.qat import RangeRules, prepare_qat_model
from pipeline.report import HTML_FILE, Report
from pipeline.run_dir import check_run_directory, forget_unresumable_run, recorded_model, write_run_record
from pipeline.run_report import summary, write_report
from pipeline.train import (
    Recipe,
    StageResult,
    auto_batch_norm_momentum,
    fine_tune,
    freeze_batch_norm,
    one_hot,
    run_stage,
    set_batch_norm_momentum,
)
from pipeline.transfer import TransferChoice
from tflite_export.benchmark import benchmark_models
from tflite_export.cli import first_line, header, progress, set_progress
from tflite_export.command import Command, positional, run_command
from tflite_export.evaluate import HeldOutPredictions
from tflite_export.export import ExportResult, ModelInfo, export_model, held_out_predictions
from tflite_export.files import MODEL_FILE, ArtifactSet, artifact_set, atomic_output, exclusive_folder
from tflite_export.quantization import quantize_scope


def _eval_keras(model: keras.Model, eval_ds: tf.data.Dataset, desc: str) -> float:
    correct = total = 0
    for images, labels in progress(eval_ds, desc=desc, unit="batch"):
        predictions = tf.argmax(model(images, training=False), axis=-1, output_type=tf.int32)
        correct += int(tf.reduce_sum(tf.cast(predictions == tf.cast(labels, tf.int32), tf.int32)))
        total += int(labels.shape[0])
    return correct / max(total, 1)


def _save_atomically(model: keras.Model, path: str, **kwargs) -> None:
    """Save beside `path` and rename, so an interrupted save never leaves a half-written model."""
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
    float_top1: float | None  # None until train_qat refits a fine-tuned transfer run's head and evaluates it
    stages: list[StageResult] = dataclasses.field(default_factory=list)
    qat_model: keras.Model | None = None
    qat_top1: float | None = None
    transfer: TransferChoice | None = None  # what the transfer recipe chose


def load_data(config: RunConfig, recorded_model: dict | None) -> RunData:
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
    recipe = Recipe(learning_rate=config.learning_rate, weight_decay=config.weight_decay,
                    label_smoothing=config.label_smoothing)
    if config.recipe == "transfer":
        recipe = dataclasses.replace(recipe, learning_rate=config.fine_tune_learning_rate, optimizer="adam")
    return recipe


def train_float(config: RunConfig, model: keras.Model, bn_momentum: float, run_data: RunData) -> Trained:
    """Float training from scratch, or the transfer recipe (a fitted head, fine-tuning only where it pays:
    pipeline/transfer.py); saves float_model.h5."""
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
    # A fine-tuned transfer run's head is refit after QAT (train_qat): its float model is evaluated and saved then.
    head_refit_follows = config.runs_qat and choice is not None and choice.fine_tune == "all"
    float_top1 = None if head_refit_follows else _evaluate_and_save_float(config, model, run_data.data)
    return Trained(model, bn_momentum, float_top1, stages, transfer=choice)


def _evaluate_and_save_float(config: RunConfig, model: keras.Model, data: Dataset) -> float:
    """The float model's held-out top-1; the model saved as float_model.h5."""
    float_top1 = _eval_keras(model, data.eval, "float evaluation")
    logging.info("float model: held-out top-1 %.4f", float_top1)
    with distribute.chief_path(os.path.join(config.output_dir, FLOAT_MODEL_FILE)) as path:
        _save_atomically(model, path)
    return float_top1


def train_qat(config: RunConfig, trained: Trained, run_data: RunData) -> None:
    """Quantization-aware fine-tuning of the float model (its ranges calibrated first); saves qat_model/ and adds the
    QAT model, its stages and its held-out top-1 to `trained`. A transfer run that kept the start file's backbone
    trains nothing: the file's ranges are its int8 arithmetic already (pipeline/transfer.py). A fine-tuned transfer
    run keeps BatchNorm frozen throughout QAT, then refits the head on the float and int8 features (both models get
    it), and only then evaluates and saves the float model (train_float leaves that to it)."""
    model, data = trained.model, run_data.data
    if trained.transfer is not None and trained.transfer.fine_tune == "none":
        header("int8 arithmetic: the start file's ranges for the backbone, calibrated ones for the new head")
        trained.qat_model = transfer.prepare_qat(model, config.weights,
                                                 transfer.calibration_batches(data, config.calibration_batches))
        _finish_qat(config, trained, data)
        return
    header("quantization-aware training: fake-quant model and activation ranges")
    qat_recipe = Recipe(
        learning_rate=config.qat_learning_rate, warmup_epochs=0, weight_decay=config.weight_decay,
        optimizer=_float_recipe(config).optimizer,
        # The float model's softmax is already a soft target: no label smoothing on top of it.
        label_smoothing=0.0 if config.qat_distill else config.label_smoothing,
        targets="float model" if config.qat_distill else "labels")

    def calibration():
        return progress(data.train.take(config.calibration_batches), desc="QAT range calibration", unit="batch")

    # A fine-tuned transfer model kept BatchNorm in inference mode (pipeline/transfer.py): so does its QAT. Batch
    # statistics of the user's photos would move the start's ImageNet ones the fine-tuning was trained against.
    transfer_run = trained.transfer is not None
    # A .tflite start's weights were trained under the file's activation ranges: start QAT from them.
    trained.qat_model, stages = quantization_aware_training(
        model, calibration, run_data.train, run_data.eval, epochs=config.qat_epochs,
        freeze_bn_epochs=0 if transfer_run else config.freeze_bn_epochs, batch_norm_frozen=transfer_run,
        recipe=qat_recipe, distill=config.qat_distill, start_ranges=transfer.start_ranges(config.weights),
        keep_calibrated=(transfer.classifier(model).name,), sync_batch_norm=config.sync_batch_norm,
        **_stage_args(config, run_data))
    trained.stages += stages
    if transfer_run:
        header("the head refit on the fine-tuned backbone's float and int8 features")
        head = transfer.refit_head(model, trained.qat_model, data,
                                   transfer.calibration_batches(data, config.calibration_batches), config.seed,
                                   config.batch_size)
        trained.transfer = dataclasses.replace(trained.transfer, final_head=head)
        trained.float_top1 = _evaluate_and_save_float(config, model, data)
    _finish_qat(config, trained, data)


def quantization_aware_training(model: keras.Model, calibration: Callable[[], Iterable], train: tf.data.Dataset,
                                eval_ds: tf.data.Dataset, *,
                                epochs: int, freeze_bn_epochs: int, recipe: Recipe, distill: bool = False,
                                start_ranges: dict[str, tuple[float, float]] | None = None,
                                keep_calibrated: tuple[str, ...] = (), sync_batch_norm: bool = False,
                                batch_norm_frozen: bool = False,
                                **stage_args) -> tuple[keras.Model, list[StageResult]]:
    """The QAT step: the fake-quant model of the float `model`, its activation ranges set on the batches of (images,
    labels) that `calibration()` gives and on `start_ranges` (`pipeline.qat.prepare_qat_model`; a resumed stage takes
    them from its checkpoint instead), then `epochs` epochs of fine-tuning, the last `freeze_bn_epochs` with
    BatchNorm frozen at a tenth of the learning rate, with the range rules re-applied after every step.
    `batch_norm_frozen`: BatchNorm in inference mode for all `epochs`, at the recipe's learning rate (a fine-tuned
    transfer model's; `freeze_bn_epochs` must then be 0). `distill`: the QAT model learns the float model's
    predictions. `stage_args`: run_stage's (workdir, num_train, batch_size, verbose). Returns the QAT model
    and its stages. pipeline.netadapt's final stage trains its models with it too."""
    resumed = os.path.exists(os.path.join(stage_args["workdir"], "checkpoints", "qat.weights.h5"))
    qat_model, setup = prepare_qat_model(model, None if resumed else (images for images, _ in calibration()),
                                         start_ranges, keep_calibrated=keep_calibrated,
                                         synchronized_batch_norm=sync_batch_norm)
    if setup is not None:
        logging.info("QAT: activation ranges calibrated on %d training batches, %d set from the pixel range, %d taken "
                     "from --weights, %d clamped where h-swish or the hard sigmoid saturates, %d x1/6 ranges aligned "
                     "with their inputs", setup.calibration_batches, setup.pixel, setup.imported, setup.clamped,
                     setup.aligned)
    if batch_norm_frozen:
        if freeze_bn_epochs:
            raise ValueError("batch_norm_frozen freezes BatchNorm for every epoch: freeze_bn_epochs must be 0")
        freeze_batch_norm(qat_model)
    with quantize_scope():
        qat_trainee = Distiller(qat_model, teacher=model) if distill else qat_model
        stages = fine_tune("qat", qat_trainee, train, eval_ds, epochs=epochs,
                           freeze_bn_epochs=freeze_bn_epochs, recipe=recipe,
                           batch_norm_model=qat_model, callbacks=(RangeRules(qat_model),),
                           **stage_args)
    return qat_model, stages


def _finish_qat(config: RunConfig, trained: Trained, data: Dataset) -> None:
    """The QAT model's held-out top-1, and the model saved as qat_model/."""
    with quantize_scope():
        trained.qat_top1 = _eval_keras(trained.qat_model, data.eval, "QAT evaluation")
        # HDF5 cannot hold tfmot's shared quantizer variables; the SavedModel format round-trips them. Without the
        # traced call functions (every loader rebuilds the layers from their configs under quantize_scope): tracing
        # tfmot's wrappers made the save and the load several times slower, and the loaded model's outputs are the same.
        with distribute.chief_path(os.path.join(config.output_dir, QAT_MODEL_DIR)) as path:
            _save_atomically(trained.qat_model, path, save_format="tf", save_traces=False)
    logging.info("QAT model: held-out top-1 %.4f", trained.qat_top1)


def export_and_evaluate(config: RunConfig, trained: Trained, run_data: RunData,
                        artifacts: ArtifactSet) -> tuple[ExportResult, HeldOutPredictions]:
    """The int8 file (with labels and card) into `artifacts`, and every held-out image's int8 and float top-1."""
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
    if not config.benchmark_runs:
        return []
    header(f"latency: {config.benchmark_runs} LiteRT runs at 1 and 2 threads")
    return [{"threads": row.threads, "median_ms": row.median_ms}
            for row in benchmark_models([model_path], threads=[1, 2], runs=config.benchmark_runs, warmup=10)]


@dataclasses.dataclass
class Training:
    """What `train` hands to `publish`: the data, the trained models, and when the run started."""

    config: RunConfig
    run_data: RunData
    trained: Trained
    started: float


def train(config: RunConfig, distribution: distribute.Distribution) -> Training:
    """Data, model, float training and QAT, in `distribution`'s scope (every worker of a multi-worker run)."""
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
    with quantize_scope():
        model = keras.models.load_model(os.path.join(config.output_dir, FLOAT_MODEL_FILE), compile=False)
        qat_model = (keras.models.load_model(os.path.join(config.output_dir, QAT_MODEL_DIR), compile=False)
                     if trained.qat_model is not None else None)
    return dataclasses.replace(trained, model=model, qat_model=qat_model)


def publish(training: Training, distribution: distribute.Distribution) -> Report:
    """On the chief, outside the strategy: the int8 file, its checks and evaluation, latency, the report, the app."""
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
    if not distribution.is_chief:  # the other workers write nothing of their own into the folder
        train(config, distribution)
        return None  # the chief exports and reports
    with exclusive_folder(config.output_dir):
        return publish(train(config, distribution), distribution)


def train_and_export_command(config: RunConfig, args: list[str]) -> int:
    """The command: `config` as its flags give it (resolved here); expected failures raise one-line errors."""
    positional(args, "no positional arguments: every setting is a flag", least=0, most=0)
    set_progress(config.verbose > 0)
    config = config.resolved()
    # Before anything runs TensorFlow: a strategy configures the runtime (devices, the workers' collectives).
    distribution = distribute.create(config.strategy, cpu_replicas=config.cpu_replicas)
    try:
        report = run(config, distribution)
    except tf.errors.ResourceExhaustedError as err:  # TensorFlow's out-of-memory (a full disk is an OSError by now)
        raise ValueError(f"out of memory ({first_line(err, 200)}); reduce --batch_size ({config.batch_size}) or "
                         f"--image_size ({config.image_size})") from None
    if report is None:
        print(f"\nworker {distribution.worker}: training finished; the chief (worker 0) exports and reports")
        return 0
    print("\n" + summary(report, os.path.join(config.output_dir, HTML_FILE)))
    return 0


main = Command("pipeline.train_and_export", RunConfig, train_and_export_command)

if __name__ == "__main__":
    run_command(main)
