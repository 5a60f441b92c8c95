"""Re-export a published quantized MobileNet through this project's int8 path: ImageNet weights, offline.

    python -m pipeline.import_tflite \\
        --weights ../shared/reference_models/mobilenet_v3/v3-small_224_1.0_uint8.tflite \\
        --labels ../shared/labels/imagenet_classes.txt \\
        --calibration_dir ../shared/datasets/hymenoptera_data \\
        --eval_dir ../shared/datasets/imagenet-samples --output_dir runs/imagenet-small

The file's weights go into our builder (keras_models.tflite_weights), the model is wrapped for quantization-aware
training with its BatchNorms frozen (they hold the file's folded biases), and the file's activation ranges are taken
from it (pipeline.qat.import_activation_ranges): the weights were trained under those ranges. The ranges the file
has no tensor for (h-swish's inner relu6(x + 3), the input rescaling) and the average pools' (the file's are as coarse
as the pools' inputs: pipeline/qat.py says why) are calibrated on `--calibration_dir` (any images; labels are not
used). The export is the pipeline's: h-swish lowered to ADD/RELU6/MUL, uint8 or int8 I/O, metadata with the labels,
verification. The 1001-class file's background logit is dropped: 1000 classes.

Output: `model.tflite`, `labels.txt`, `model_card.json`, `import_report.json` in --output_dir, and with --android the
demo app's bundled model.
"""

from __future__ import annotations

import dataclasses
import os
import time

import numpy as np

import keras_models
from keras_models import MIN_INPUT_SIZE
from keras_models.backend import keras, tf
from keras_models.tflite_weights import check_label_count, load_tflite_weights
from pipeline.android import install_into_android_app
from pipeline.augment import train_augment
from pipeline.config import REQUIRED, check_choices, setting
from pipeline.distill import tflite_soft_targets
from pipeline.qat import KeepRanges, activation_range_count, prepare_qat_model
from tflite_export.command import Command, positional, run_command
from tflite_export.evaluate import discover_dataset
from tflite_export.export import ModelInfo, export_model
from tflite_export.files import (
    IMPORT_RUN,
    artifact_set,
    atomic_write_json,
    check_folder_kind,
    check_writable_dir,
    images_under,
    read_labels,
)
from tflite_export.preprocessing import decode_rgb, load_eval_image
from tflite_export.quantization import quantize_scope


@dataclasses.dataclass(frozen=True)
class ImportConfig:
    """The settings of one import; the command's flags are made from these fields (`tflite_export.command`)."""

    weights: str = setting(REQUIRED, "Published quantized MobileNet .tflite (ImageNet weights).")
    labels: str = setting(REQUIRED,
                          "Label file, one class per line: 1000 ImageNet names (or 1001 with background).")
    calibration_dir: str = setting(REQUIRED, "Folder of images (any layout) for the ranges the file has none for.")
    variant: str = setting("small", "Builder the file's graph must match: small, large, v2 or v1.")
    alpha: float = setting(1.0, "Width multiplier of the file's model.")
    image_size: int = setting(224, "Input resolution of the exported model.")
    calibration_images: int = setting(64, "Images used from --calibration_dir.")
    distill_dir: str | None = setting(
        None,
        "Optional: folder of unlabeled photos (any layout) on which the int8 model is fine-tuned to give the file's "
        "own outputs, with the file's ranges held (a few minutes; BENCHMARKS.md has what it gains). Not the "
        "--eval_dir.")
    distill_epochs: int = setting(2, "Epochs over the --distill_dir views.")
    distill_views: int = setting(3, "Views per photo: the evaluation crop, then random crops and flips.")
    distill_learning_rate: float = setting(2e-5, "Adam learning rate of the distillation.")
    eval_dir: str | None = setting(
        None, "Optional: class folders or the ImageNet-samples layout, for int8 vs float top-1.")
    io: str = setting("uint8", "Input/output dtype of the TFLite model.", ("uint8", "int8"))
    output_dir: str = setting("runs/imagenet-small", "Where the artifacts go.")
    android: bool = setting(False, "Also install the model as the demo app's bundled model.")


EVAL_BATCH = 50
REPORT_FILE = "import_report.json"


@dataclasses.dataclass(frozen=True)
class ImportReport:
    weights: str
    variant: str
    classes: int
    ranges_from_file: int
    ranges_calibrated: int
    distilled_images: int
    model_file: str
    size_bytes: int
    ops: dict
    float_top1: float | None
    int8_top1: float | None
    agreement: float | None
    eval_images: int
    seconds: float


def _read_labels(path: str) -> list[str]:
    labels = [line.strip() for line in read_labels(path, "--labels") if line.strip()]
    if labels and labels[0].lower() == "background":
        labels = labels[1:]  # the background logit is dropped (module docstring)
    return labels


def check_settings(config: ImportConfig) -> None:
    """The settings no file is needed to refuse: one-line ValueErrors."""
    if config.calibration_images < 1:
        raise ValueError(f"--calibration_images must be at least 1, got {config.calibration_images}")
    if config.image_size < MIN_INPUT_SIZE or config.alpha <= 0:
        raise ValueError(f"--image_size must be at least {MIN_INPUT_SIZE} and --alpha > 0, got {config.image_size} "
                         f"and {config.alpha:g}")
    if config.distill_dir:
        for name in ("distill_views", "distill_epochs"):
            if getattr(config, name) < 1:  # no views: "need at least one array to stack" after the import
                raise ValueError(f"--{name} must be at least 1 with --distill_dir, got {getattr(config, name)}")
        if not config.distill_learning_rate > 0:
            raise ValueError(f"--distill_learning_rate must be > 0, got {config.distill_learning_rate:g}")


def import_and_export(config: ImportConfig, artifacts) -> ImportReport:
    """Import, export into `artifacts` (a tflite_export.files.ArtifactSet); returns the report."""
    check_choices(config)
    started = time.perf_counter()
    labels = _read_labels(config.labels)
    check_settings(config)
    check_label_count(config.weights, labels, config.labels)
    size = config.image_size
    calibration_files = images_under(config.calibration_dir, config.calibration_images)  # fail before the slow part
    model = keras_models.build(config.variant, input_shape=(size, size, 3), alpha=config.alpha,
                               num_classes=len(labels))
    graph = load_tflite_weights(model, config.weights)
    for layer in model.layers:  # the BatchNorms hold folded biases: keep them in inference mode (tflite_weights)
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False
    calibration = np.stack([load_eval_image(p, size) for p in calibration_files])
    batches = [calibration[i:i + 16] for i in range(0, len(calibration), 16)]
    # The file's ranges as they are, not clamped where h-swish saturates: the import reproduces the file's arithmetic,
    # whose weights were trained under those ranges (prepare_qat_model says which ones the clamp would move).
    qat_model, setup = prepare_qat_model(model, batches, graph.ranges, clamp=False)
    distilled = _distill(config, qat_model, len(labels)) if config.distill_dir else 0
    total = activation_range_count(qat_model)

    eval_batches = None
    if config.eval_dir:
        items = discover_dataset(config.eval_dir, labels).items

        def eval_batches():
            for i in range(0, len(items), EVAL_BATCH):
                chunk = items[i:i + EVAL_BATCH]
                yield (np.stack([load_eval_image(path, size) for path, _ in chunk]),
                       np.array([label for _, label in chunk]))

    name = keras_models.VARIANTS[keras_models.canonical_variant(config.variant)]
    info = ModelInfo(
        name=f"{name} {config.alpha:g} {size}px ImageNet int8",
        description=(f"{name} with the ImageNet weights and activation ranges of {os.path.basename(config.weights)} "
                     "(Google, Apache-2.0), re-exported fully integer with h-swish as ADD/RELU6/MUL; "
                     f"{len(labels)} ImageNet classes"))
    report = export_model(qat_model, lambda: (calibration[i:i + 1] for i in range(len(calibration))),
                          output_dir=config.output_dir, labels=labels, info=info, io_dtype=config.io,
                          eval_batches=eval_batches, reference_model=model, artifacts=artifacts)
    accuracy = report.accuracy
    return ImportReport(
        weights=config.weights, variant=config.variant, classes=len(labels), ranges_from_file=setup.imported,
        ranges_calibrated=total - setup.imported, distilled_images=distilled, model_file=report.model_file,
        size_bytes=report.size_bytes, ops=report.ops, float_top1=accuracy and accuracy.keras_top1,
        int8_top1=accuracy and accuracy.int8_top1, agreement=accuracy and accuracy.agreement,
        eval_images=accuracy.images if accuracy else 0, seconds=time.perf_counter() - started)


def _distill(config: ImportConfig, qat_model, classes: int) -> int:
    """Fine-tune the QAT model towards the file's own outputs on --distill_dir photos; returns how many views.

    Our int8 graph rounds differently from the file (h-swish as ADD/RELU6/MUL rounds its gate once more, weights per
    channel instead of per tensor), and the file's weights were trained for its rounding; a short fine-tune with the
    file as teacher lets the weights adapt to ours. The ranges stay the file's (KeepRanges), BatchNorm stays frozen."""
    files = images_under(config.distill_dir)
    size = config.image_size
    views = []
    for view in range(config.distill_views):
        for index, path in enumerate(files):
            if view == 0:
                views.append(load_eval_image(path, size))
            else:
                image = decode_rgb(tf.io.read_file(path))
                views.append(train_augment(image, size, seed=tf.constant([view, index])).numpy())
    images = np.round(np.stack(views))  # the pixel bytes both models see
    targets = tflite_soft_targets(config.weights, images, classes)
    with quantize_scope():
        qat_model.compile(optimizer=keras.optimizers.Adam(config.distill_learning_rate),
                          loss=keras.losses.CategoricalCrossentropy())
        qat_model.fit(images, targets, batch_size=16, epochs=config.distill_epochs, shuffle=True,
                      callbacks=[KeepRanges(qat_model)], verbose=1)
    return len(images)


def import_command(config: ImportConfig, args: list[str]) -> int:
    """The command; expected failures raise one-line errors."""
    positional(args, "no positional arguments: every setting is a flag", least=0, most=0)
    check_settings(config)
    check_writable_dir(config.output_dir, "--output_dir")
    check_folder_kind(config.output_dir, IMPORT_RUN, "--output_dir")
    # The report lands with the model, labels and card as one set (a rerun never leaves an old report beside a new
    # model).
    with artifact_set(config.output_dir) as artifacts:
        report = import_and_export(config, artifacts)
        atomic_write_json(artifacts.path(REPORT_FILE), dataclasses.asdict(report))
    if config.android:
        install_into_android_app(config.output_dir)
    print(f"\nmodel        {report.model_file}  {report.size_bytes / 1024:.0f} KiB, {report.classes} classes, "
          f"HARD_SWISH {report.ops.get('HARD_SWISH', 0)}")
    print(f"ranges       {report.ranges_from_file} from {os.path.basename(report.weights)}, "
          f"{report.ranges_calibrated} calibrated")
    if report.eval_images:
        print(f"top-1        float {report.float_top1:.4f}, int8 {report.int8_top1:.4f} on {report.eval_images} "
              f"images; int8 agrees with float on {report.agreement:.1%}")
    if report.distilled_images:
        print(f"distilled    {report.distilled_images} views of --distill_dir, {config.distill_epochs} epochs")
    print(f"time         {report.seconds:.0f} s")
    return 0


main = Command("pipeline.import_tflite", ImportConfig, import_command)

if __name__ == "__main__":
    run_command(main)
