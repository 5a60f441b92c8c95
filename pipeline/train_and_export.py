"""From images to a fully-integer MobileNet: data -> float training -> QAT -> int8 TFLite export -> report.

    python -m pipeline.train_and_export --variant small                    # offline default: synthetic shapes
    python -m pipeline.train_and_export --dataset ~/photos --image_size 160 --output_dir runs/photos
    python -m pipeline.train_and_export --strategy mirrored ...            # every GPU (README "More than one device")
    python -m pipeline.train_and_export --helpfull                         # every flag

Rerunning the same command after an interruption resumes from the last finished epoch of the stage it was in.
Artifacts (model.tflite with metadata, labels.txt, model_card.json, report.json) land in --output_dir.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import sys
import time

from absl import app, flags, logging

from keras_models import backend
from keras_models.backend import keras, tf
from pipeline import distribute

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
flags.DEFINE_integer("float_epochs", 12, "Epochs of float training.")
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
flags.DEFINE_float("dropout", 0.2, "Dropout before the classifier.")
flags.DEFINE_string("weights", "none", "Initial weights: none, imagenet (downloads the Keras file), or a file path.")
flags.DEFINE_enum(
    "recipe", "auto", ["auto", "scratch", "transfer"],
    "Training recipe. auto: transfer when --weights is given, else scratch. transfer: --head_epochs on the new "
    "classifier alone (at --learning_rate), then --float_epochs fine-tuning everything but BatchNorm at "
    "--fine_tune_learning_rate, then QAT "
    "(pipeline/transfer.py).")
flags.DEFINE_integer("head_epochs", 5, "Transfer recipe: epochs that train the new classifier on frozen features.")
flags.DEFINE_float("fine_tune_learning_rate", 1e-4,
                   "Transfer recipe: peak learning rate (Adam) of fine-tuning; QAT's default is a fifth of it.")
flags.DEFINE_boolean("qat", True, "Quantization-aware training; --noqat exports with post-training quantization.")
flags.DEFINE_enum("io", "uint8", ["uint8", "int8"], "Input/output dtype of the TFLite model.")
flags.DEFINE_enum("hswish", "lowered", ["lowered", "builtin"], "h-swish as ADD/RELU6/MUL ops, or HARD_SWISH.")
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


def _default_output_dir() -> str:
    dataset = os.path.basename(os.path.normpath(FLAGS.dataset)).replace(":", "_") or "data"
    return os.path.join("runs", f"{FLAGS.variant}-{dataset}")


def _eval_keras(model: keras.Model, eval_ds: tf.data.Dataset, desc: str) -> float:
    from tflite_export._cli import progress

    correct = total = 0
    for images, labels in progress(eval_ds, desc=desc, unit="batch"):
        predictions = tf.argmax(model(images, training=False), axis=-1, output_type=tf.int32)
        correct += int(tf.reduce_sum(tf.cast(predictions == tf.cast(labels, tf.int32), tf.int32)))
        total += int(labels.shape[0])
    return correct / max(total, 1)


def _summary(report: dict) -> str:
    acc = report["export"].get("accuracy", {})
    lines = [
        f"model        {report['model']['name']}  ({report['model']['params']:,} params, "
        f"{report['model']['madds'] / 1e6:.1f}M MAdds at {report['config']['image_size']}px)",
        f"data         {report['data']['spec']}: {report['data']['num_train']} train / {report['data']['num_eval']} "
        f"eval ({report['data']['eval_split']}), {len(report['data']['classes'])} classes",
        f"float top-1  {report['accuracy']['float_keras']:.4f}   (Keras, held-out split)",
    ]
    if report["accuracy"].get("qat_keras") is not None:
        lines.append(f"QAT top-1    {report['accuracy']['qat_keras']:.4f}   (Keras with fake-quant)")
    lines += [
        f"int8 top-1   {acc.get('int8_top1', float('nan')):.4f}   (LiteRT, {acc.get('images', 0)} images; agrees with "
        f"float on {acc.get('agreement', float('nan')):.1%})",
        f"file         {report['export']['model_file']}  {report['export']['size_bytes'] / 1024:.0f} KiB, "
        f"{report['export']['io_dtype']} I/O, "
        f"{sum(report['export']['ops'].values())} ops, HARD_SWISH {report['export']['ops'].get('HARD_SWISH', 0)}, "
        f"float tensors {report['export']['float_tensors']}",
        "ops          " + ", ".join(f"{k} {v}" for k, v in sorted(report["export"]["ops"].items(),
                                                                  key=lambda kv: -kv[1])),
    ]
    for row in report.get("latency", []):
        lines.append(f"latency      {row['threads']} thread(s): median {row['median_ms']:.2f} ms (LiteRT, XNNPACK)")
    t = report["throughput"]

    def rate(images_per_s):  # None: the stage was already done in an earlier run (or did not run)
        return f"{images_per_s:.0f} img/s" if images_per_s else "not measured in this run"

    lines.append(
        f"throughput   input pipeline {rate(t['input_pipeline_images_per_s'])} vs float training "
        f"{rate(t['float_train_images_per_s'])}"
        + (f", QAT {rate(t['qat_train_images_per_s'])}" if report["accuracy"].get("qat_keras") is not None else "")
    )
    lines.append(f"time         {report['seconds_total']:.0f} s total (float {report['stages'].get('float', 0):.0f} s, "
                 f"QAT {report['stages']['qat_total']:.0f} s, export + int8 evaluation "
                 f"{report['stages']['export_and_int8_eval']:.0f} s)")
    return "\n".join(lines)


def _save_atomically(model: keras.Model, path: str, **kwargs) -> None:
    """Save next to `path` and rename, so an interrupted save never leaves a half-written model."""
    import shutil

    tmp = path + ".tmp" + (os.path.splitext(path)[1] or "")
    try:
        model.save(tmp, include_optimizer=False, **kwargs)
    except BaseException as err:
        # A save cut short (disk full) must not leave a half-written model next to the real one.
        shutil.rmtree(tmp, ignore_errors=True) if os.path.isdir(tmp) else (os.path.exists(tmp) and os.unlink(tmp))
        if isinstance(err, tf.errors.ResourceExhaustedError):
            raise OSError(errno.ENOSPC, f"cannot write {path}: {str(err).strip().splitlines()[0]}") from None
        raise
    if os.path.isdir(path):
        shutil.rmtree(path)
    os.replace(tmp, path)


def _synthetic_size() -> tuple[int, int]:
    try:
        train, test = (int(v) for v in FLAGS.synthetic_size)
    except ValueError:
        raise ValueError(f"--synthetic_size takes two integers 'train,test', got "
                         f"{','.join(FLAGS.synthetic_size)}") from None
    if train < 1 or test < 1:
        raise ValueError("--synthetic_size counts must be positive")
    return train, test


# Training-mode BatchNorm over a batch holding one value per channel (one image at the 1x1 resolution of the last
# blocks) outputs exactly 0: one training image, or batches of one, kill every activation; QAT then learns
# zero-width ranges and LiteRT's XNNPACK delegate aborted the process on the exported file ("double free or
# corruption"). Two images per batch are the least that trains.
MIN_TRAIN_IMAGES = 2
MIN_BATCH_SIZE = 2
# Without calibration images the converter leaves float tensors in the "integer" model.
MIN_CALIBRATION_IMAGES = 1
RUN_CONFIG = "run_config.json"


def _available_memory_bytes() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _validate_flags(output_dir: str) -> None:
    """Every check that needs no data, before any data is loaded or anything trained (one-line ValueErrors)."""
    from tflite_export._cli import check_writable_dir

    check_writable_dir(output_dir, "--output_dir")
    if FLAGS.image_size < 32:
        raise ValueError(f"--image_size must be at least 32, got {FLAGS.image_size}")
    if FLAGS.batch_size < MIN_BATCH_SIZE or FLAGS.float_epochs < 0 or FLAGS.qat_epochs < 0:
        raise ValueError(f"--batch_size must be >= {MIN_BATCH_SIZE} (BatchNorm needs two images per batch) and epoch "
                         "counts >= 0")
    if FLAGS.qat and FLAGS.hswish == "builtin":
        raise ValueError("--hswish builtin goes with post-training quantization: add --noqat")
    if FLAGS.freeze_bn_epochs < 0:
        raise ValueError("--freeze_bn_epochs must be >= 0")
    if FLAGS.learning_rate <= 0 or (FLAGS.qat_learning_rate is not None and FLAGS.qat_learning_rate <= 0):
        raise ValueError("--learning_rate and --qat_learning_rate must be > 0")
    if FLAGS.calibration_images < MIN_CALIBRATION_IMAGES:
        raise ValueError(f"--calibration_images must be at least {MIN_CALIBRATION_IMAGES} (int8 calibration needs "
                         f"images), got {FLAGS.calibration_images}")
    if FLAGS.qat and FLAGS.qat_epochs and FLAGS.calibration_batches < 1:
        raise ValueError(f"--calibration_batches must be at least 1 with QAT, got {FLAGS.calibration_batches}")
    trains = FLAGS.float_epochs > 0 or (FLAGS.qat and FLAGS.qat_epochs > 0)
    if not trains and FLAGS.weights == "none":
        # Measured: a randomly initialized V3-Small converts, but its int8 file fails the XNNPACK check (ADDs whose
        # input and output ranges are too far apart to be delegated), which said nothing about the cause.
        raise ValueError("nothing to export: --float_epochs 0 without QAT epochs and with --weights none is an "
                         "untrained network; train at least one epoch or start from --weights")
    if FLAGS.benchmark_runs < 0:
        raise ValueError(f"--benchmark_runs must be >= 0, got {FLAGS.benchmark_runs}")
    if FLAGS.alpha <= 0:
        raise ValueError(f"--alpha must be > 0, got {FLAGS.alpha:g}")
    for name in ("dropout", "label_smoothing"):
        if not 0 <= FLAGS[name].value < 1:
            raise ValueError(f"--{name} must be in [0, 1), got {FLAGS[name].value:g}")
    if FLAGS.weight_decay < 0 or (FLAGS.bn_momentum is not None and not 0 <= FLAGS.bn_momentum < 1):
        raise ValueError("--weight_decay must be >= 0 and --bn_momentum in [0, 1)")
    if FLAGS.weights not in ("none", "imagenet") and not os.path.isfile(FLAGS.weights):
        raise ValueError(f"--weights file not found: {FLAGS.weights}")
    # Memory the input alone needs, before TensorFlow or numpy fail with a traceback: one float32 training batch, and
    # the synthetic set, which is generated in memory as uint8.
    side = FLAGS.image_size
    needed = {
        "one float32 training batch (--batch_size x --image_size^2 x 3 x 4 bytes)": FLAGS.batch_size * side * side * 12}
    if FLAGS.dataset == "synthetic":
        train, test = _synthetic_size()
        if train < MIN_TRAIN_IMAGES:
            raise ValueError(f"--synthetic_size needs at least {MIN_TRAIN_IMAGES} training images (BatchNorm trains on "
                             f"two or more per batch), got {train}")
        needed["the synthetic images (--synthetic_size x --image_size^2 x 3 bytes)"] = (train + test) * side * side * 3
    available = _available_memory_bytes()
    if available:
        for what, size in needed.items():
            if size > available:
                raise ValueError(f"--image_size {side} needs {size / 2**30:.1f} GiB for {what}, more than the "
                                 f"{available / 2**30:.1f} GiB of memory available: reduce --image_size")


def _run_config(variant: str) -> dict:
    """What defines the model a run directory holds: weights of another shape or meaning cannot be resumed or reused."""
    return {"variant": variant, "alpha": FLAGS.alpha, "minimalistic": FLAGS.minimalistic,
            "image_size": FLAGS.image_size, "weights": FLAGS.weights, "io": FLAGS.io, "hswish": FLAGS.hswish}


def _recorded_run_config(output_dir: str) -> dict | None:
    """The run directory's record; for directories from before the record existed, what their report.json says."""
    import json

    for name in (RUN_CONFIG, "report.json"):
        path = os.path.join(output_dir, name)
        if os.path.exists(path):
            try:
                with open(path) as f:
                    recorded = json.load(f)
            except (OSError, ValueError) as err:
                raise ValueError(f"{path} is unreadable ({err}); pass a fresh --output_dir") from None
            if name == RUN_CONFIG:
                return recorded
            config = recorded.get("config", {})
            legacy = {key: config[key] for key in ("alpha", "minimalistic", "image_size", "weights", "io", "hswish")
                      if key in config}
            import keras_models

            if "variant" in config:
                legacy["variant"] = keras_models.canonical_variant(config["variant"])
            if "classes" in recorded.get("data", {}):
                legacy["classes"] = recorded["data"]["classes"]
            return legacy
    return None


def run(distribution: distribute.Distribution) -> dict | None:
    """The whole job, in `distribution`'s scope; returns the report (None on a multi-worker run's other workers, which
    stop after training). User errors raise exceptions with one-line messages."""
    import keras_models
    from keras_models.profile import totals
    from keras_models.tflite_weights import read_tflite
    from pipeline import transfer
    from pipeline.android import install_into_android_app
    from pipeline.data import input_pipeline_throughput, load_dataset
    from pipeline.distill import Distiller
    from pipeline.qat import (
        RangeRules,
        align_rescaling_ranges,
        calibrate_activation_ranges,
        clamp_saturated_ranges,
        import_activation_ranges,
        quantize_model,
        quantize_scope,
    )
    from pipeline.train import (
        Recipe,
        auto_batch_norm_momentum,
        check_same_settings,
        fine_tune,
        one_hot,
        run_stage,
        set_batch_norm_momentum,
    )
    from tflite_export._cli import artifact_set, atomic_write_json, header, progress
    from tflite_export.export import MODEL_FILE, ModelInfo, export_model

    started = time.perf_counter()
    variant = keras_models.canonical_variant(FLAGS.variant)
    output_dir = FLAGS.output_dir or _default_output_dir()
    _validate_flags(output_dir)
    distribute.check_batch_size(FLAGS.batch_size, distribution.num_replicas, FLAGS.sync_batch_norm, MIN_BATCH_SIZE)
    logging.info("%s", distribution.describe(FLAGS.batch_size))
    # A rerun reuses the directory's checkpoints and weights: refuse one that would build another model from them
    # (the classes are compared as soon as the data set is known, still before any training).
    run_config = _run_config(variant)
    recorded_config = _recorded_run_config(output_dir)
    if recorded_config is not None:
        check_same_settings("", {k: v for k, v in run_config.items() if k in recorded_config}, "a run made",
                            output_dir, recorded=recorded_config)
    # QAT fine-tunes a trained model, so it starts well below the float peak, but not too far: on CIFAR-10
    # (BENCHMARKS.md) 1/20 and 1/40 of it did equally well and 1/200 lost a point. Tied to --learning_rate, it follows
    # the batch size the way the float one does.
    recipe = transfer.resolve_recipe(FLAGS.recipe, FLAGS.weights)
    if recipe == "transfer":
        qat_learning_rate = FLAGS.qat_learning_rate or FLAGS.fine_tune_learning_rate / 5
    else:
        qat_learning_rate = FLAGS.qat_learning_rate or FLAGS.learning_rate / 20
    # The frozen-BN epochs are the last ones of QAT, never more than all of it.
    freeze_bn_epochs = min(FLAGS.freeze_bn_epochs, FLAGS.qat_epochs)
    os.makedirs(output_dir, exist_ok=True)
    keras.utils.set_random_seed(FLAGS.seed)

    header(f"data: {FLAGS.dataset}")
    data = load_dataset(
        FLAGS.dataset, image_size=FLAGS.image_size, batch_size=FLAGS.batch_size, seed=FLAGS.seed,
        on_bad_image=FLAGS.on_bad_image, synthetic_size=_synthetic_size(), tfds_manual_dir=FLAGS.tfds_manual_dir,
        cache_dir=os.path.join(output_dir, "cache") if distribution.is_chief else None,
    )
    classes = data.class_names
    logging.info("data: %d train, %d eval (%s), classes: %s", data.num_train, data.num_eval, data.eval_split_name,
                 ", ".join(classes))
    if data.num_train < MIN_TRAIN_IMAGES or data.num_eval < 1:
        raise ValueError(f"{FLAGS.dataset} has {data.num_train} training and {data.num_eval} evaluation images; the "
                         f"export needs at least {MIN_TRAIN_IMAGES} and 1")
    run_config["classes"] = list(classes)
    if recorded_config is not None and "classes" in recorded_config:
        check_same_settings("", {"classes": run_config["classes"]}, "a run made", output_dir, recorded=recorded_config)
    if distribution.is_chief and (recorded_config is None or not os.path.exists(os.path.join(output_dir, RUN_CONFIG))):
        atomic_write_json(os.path.join(output_dir, RUN_CONFIG), run_config)
    input_rate = input_pipeline_throughput(data.train)
    logging.info("input pipeline alone: %.0f images/s", input_rate)
    train = one_hot(data.train, len(classes))
    eval_ds = one_hot(data.eval, len(classes))

    model = keras_models.build(
        variant, input_shape=(FLAGS.image_size, FLAGS.image_size, 3), alpha=FLAGS.alpha, num_classes=len(classes),
        minimalistic=FLAGS.minimalistic, dropout=FLAGS.dropout, weights=FLAGS.weights,
    )
    if FLAGS.sync_batch_norm:
        logging.info("BatchNorm: statistics of the global batch in %d layers", distribute.synchronize_batch_norm(model))
    params, madds = totals(model)
    steps = -(-data.num_train // FLAGS.batch_size) * max(FLAGS.float_epochs, 1)
    bn_momentum = FLAGS.bn_momentum if FLAGS.bn_momentum is not None else auto_batch_norm_momentum(steps)
    set_batch_norm_momentum(model, bn_momentum)
    logging.info("BatchNorm momentum %.4f for %d float training steps", bn_momentum, steps)
    stage_args = dict(num_train=data.num_train, workdir=output_dir, batch_size=FLAGS.batch_size, verbose=FLAGS.verbose)
    float_recipe = Recipe(learning_rate=FLAGS.learning_rate, weight_decay=FLAGS.weight_decay,
                          label_smoothing=FLAGS.label_smoothing)
    stages = []
    if recipe == "transfer":
        transfer.freeze_all_but(model, transfer.classifier(model))
        stages.append(run_stage("head", model, train, eval_ds, epochs=FLAGS.head_epochs, recipe=float_recipe,
                                **stage_args))
        transfer.unfreeze_all_but_batch_norm(model)
        float_recipe = dataclasses.replace(float_recipe, learning_rate=FLAGS.fine_tune_learning_rate,
                                           optimizer="adam")
    float_stage = run_stage("float", model, train, eval_ds, epochs=FLAGS.float_epochs, recipe=float_recipe,
                            **stage_args)
    float_acc = _eval_keras(model, data.eval, "float evaluation")
    logging.info("float model: held-out top-1 %.4f", float_acc)
    with distribute.chief_path(os.path.join(output_dir, "float_model.h5")) as path:
        _save_atomically(model, path)

    stages.append(float_stage)
    export_source, qat_acc = model, None
    if FLAGS.qat and FLAGS.qat_epochs:
        header("quantization-aware training: fake-quant model and activation ranges")
        qat_model = quantize_model(model)
        if FLAGS.sync_batch_norm:
            distribute.synchronize_batch_norm(qat_model)
        if not os.path.exists(os.path.join(output_dir, "checkpoints", "qat.weights.h5")):
            batches = progress(data.train.take(FLAGS.calibration_batches), desc="QAT range calibration", unit="batch")
            used = calibrate_activation_ranges(qat_model, (images for images, _ in batches))
            if str(FLAGS.weights).endswith(".tflite"):
                # The backbone's weights were trained under the file's activation ranges: start QAT from them.
                imported = import_activation_ranges(qat_model, read_tflite(FLAGS.weights).ranges,
                                                    skip=(transfer.classifier(model).name,))
                logging.info("QAT: %d activation ranges taken from %s", len(imported), FLAGS.weights)
            clamped, aligned = clamp_saturated_ranges(qat_model), align_rescaling_ranges(qat_model)
            logging.info("QAT: activation ranges calibrated on %d training batches, %d clamped where h-swish or the "
                         "hard "
                         "sigmoid saturates, %d x1/6 ranges aligned with their inputs", used, clamped, aligned)
        qat_recipe = Recipe(
            learning_rate=qat_learning_rate, warmup_epochs=0, weight_decay=FLAGS.weight_decay,
            optimizer=float_recipe.optimizer,
            # The float model's softmax is already a soft target: no label smoothing on top of it.
            label_smoothing=0.0 if FLAGS.qat_distill else FLAGS.label_smoothing,
            targets="float model" if FLAGS.qat_distill else "labels")
        with quantize_scope():
            qat_trainee = Distiller(qat_model, teacher=model) if FLAGS.qat_distill else qat_model
            stages += fine_tune("qat", qat_trainee, train, eval_ds, epochs=FLAGS.qat_epochs,
                                freeze_bn_epochs=freeze_bn_epochs, recipe=qat_recipe, batch_norm_model=qat_model,
                                callbacks=(RangeRules(qat_model),), **stage_args)
            qat_acc = _eval_keras(qat_model, data.eval, "QAT evaluation")
            # HDF5 cannot hold tfmot's shared quantizer variables; the SavedModel format round-trips them.
            with distribute.chief_path(os.path.join(output_dir, "qat_model")) as path:
                _save_atomically(qat_model, path, save_format="tf")
        logging.info("QAT model: held-out top-1 %.4f", qat_acc)
        export_source = qat_model
    if not distribution.is_chief:
        return None  # the chief exports and reports

    info = ModelInfo(
        name=f"{keras_models.VARIANTS[variant]} {FLAGS.alpha:g} {FLAGS.image_size}px int8",
        description=f"{keras_models.VARIANTS[variant]} (alpha {FLAGS.alpha:g}) trained on {FLAGS.dataset}; "
                    f"{'quantization-aware trained' if export_source is not model else 'post-training quantized'}, "
                    f"fully integer, {FLAGS.io} I/O",
    )
    # Model, labels, card and report are staged together and published as one set when the last is written: a failure
    # (disk full, a failed check) leaves the previous run's set in place, never a new card beside an old model.
    header(f"int8 export ({'QAT ranges' if export_source is not model else 'post-training calibration'}), "
           "verification and int8 evaluation")
    with artifact_set(output_dir) as artifacts:
        export_started = time.perf_counter()
        export_report = export_model(
            export_source,
            lambda: progress(data.representative(FLAGS.calibration_images), desc="int8 calibration",
                             total=min(FLAGS.calibration_images, data.num_train)),
            output_dir=output_dir,
            labels=classes,
            info=info,
            io_dtype=FLAGS.io,
            hswish=FLAGS.hswish,
            eval_batches=lambda: progress(data.eval, desc="int8 evaluation", unit="batch"),
            reference_model=model,
            artifacts=artifacts,
        )
        export_seconds = time.perf_counter() - export_started
        latency = []
        if FLAGS.benchmark_runs:
            header(f"latency: {FLAGS.benchmark_runs} LiteRT runs at 1 and 2 threads")
            from tflite_export.benchmark import benchmark_models

            for row in benchmark_models([artifacts.path(MODEL_FILE)], threads=[1, 2], runs=FLAGS.benchmark_runs,
                                        warmup=10):
                latency.append({"threads": row["threads"], "median_ms": row["median_ms"]})

        report = {
            "config": {name: FLAGS[name].value for name in (
                "variant", "alpha", "minimalistic", "dataset", "image_size", "batch_size", "float_epochs", "qat_epochs",
                "freeze_bn_epochs", "recipe", "head_epochs", "fine_tune_learning_rate", "learning_rate",
                "qat_learning_rate", "qat_distill", "weight_decay", "label_smoothing", "weights",
                "qat", "io", "hswish", "seed")},
            "model": {"name": model.name, "params": params, "madds": madds, "bn_momentum": bn_momentum},
            "data": {"spec": FLAGS.dataset, "num_train": data.num_train, "num_eval": data.num_eval,
                     "eval_split": data.eval_split_name, "classes": classes, "skipped_files": data.skipped_files},
            "accuracy": {"float_keras": float_acc, "qat_keras": qat_acc},
            "export": export_report,
            "latency": latency,
            "throughput": {
                "input_pipeline_images_per_s": input_rate,
                "float_train_images_per_s": float_stage.images_per_second,
                "qat_train_images_per_s": next((s.images_per_second for s in stages if s.name == "qat"), None),
            },
            "stages": {s.name: s.seconds for s in stages},
            "resumed": {s.name: s.first_epoch for s in stages if s.first_epoch and not s.skipped},
            "seconds_total": time.perf_counter() - started,
            "distribution": distribution.record(FLAGS.batch_size, FLAGS.sync_batch_norm),
        }
        report["config"]["qat_learning_rate"] = qat_learning_rate  # the one used, default included
        report["config"]["recipe"] = recipe  # what "auto" became
        report["stages"]["qat_total"] = sum(s.seconds for s in stages if s.name.startswith("qat"))
        report["stages"]["export_and_int8_eval"] = export_seconds
        atomic_write_json(artifacts.path("report.json"), report)
    if FLAGS.android:
        report["android_assets"] = install_into_android_app(output_dir)
    return report


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    from keras_models import WeightsError
    from pipeline.data import DataError
    from tflite_export._cli import one_line_error, set_progress
    from tflite_export.convert import ConversionError
    from tflite_export.verify import VerificationError

    # Without -v the console shows the stages, progress and results, not TensorFlow's own logs.
    if FLAGS.verbosity >= 1:
        backend.show_library_logs()
    set_progress(FLAGS.verbose > 0)

    try:
        # Before anything runs TensorFlow: a strategy configures the runtime (devices, the workers' collectives).
        distribution = distribute.create(FLAGS.strategy, cpu_replicas=FLAGS.cpu_replicas)
        with distribution.scope():  # models, optimizers and their checkpoints are replicated
            report = run(distribution)
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
    print("\n" + _summary(report))
    print(f"\nreport: {os.path.join(FLAGS.output_dir or _default_output_dir(), 'report.json')}")


if __name__ == "__main__":
    app.run(main)
