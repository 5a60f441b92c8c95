"""The run configuration of `pipeline.train_and_export`: one frozen dataclass, the one source of every default.

    config = RunConfig(dataset="photos", weights="v3-small.tflite", image_size=224).resolved()

Every field has its default and its help text here; `define_flags` (tflite_export.command, shared by every command;
imported here for the pipeline's commands) makes the command's absl flags from them (same names, same defaults), and
`RunConfig.from_flags(FLAGS)` reads them back. `resolved()` fills in the defaults that depend on other settings (the
output folder, the variant's dropout, the recipe "auto" means, the float epochs, the QAT learning rate) and refuses bad
values with a one-line ValueError before any data is loaded; the command and the Python API (`pipeline.run`) both go
through it. The stages of the run take the resolved config, not the flags.
The run folder's record of the config is `pipeline.run_dir`'s.
"""

from __future__ import annotations

import dataclasses
import os

from absl import flags

import keras_models
from keras_models import MIN_INPUT_SIZE
from pipeline.distribute import STRATEGIES
from tflite_export.command import REQUIRED, check_choices, define_flags, setting, values_from_flags  # noqa: F401
from tflite_export.files import TRAINING_RUN, check_folder_kind, check_writable_dir

# The trained models a run folder keeps beside its records: the float model (HDF5), and the QAT model as a SavedModel
# (HDF5 cannot hold tfmot's shared quantizer variables).
FLOAT_MODEL_FILE = "float_model.h5"
QAT_MODEL_DIR = "qat_model"
# Training-mode BatchNorm over a batch holding one value per channel (one image at the 1x1 resolution of the last
# blocks) outputs exactly 0: one training image, or batches of one, kill every activation; QAT then learns
# zero-width ranges and LiteRT's XNNPACK delegate aborted the process on the exported file ("double free or
# corruption"). Two images per batch are the least that trains.
MIN_TRAIN_IMAGES = 2
MIN_BATCH_SIZE = 2
# Without calibration images the converter leaves float tensors in the "integer" model.
MIN_CALIBRATION_IMAGES = 1
# What defines the model a run folder holds: weights of another shape or meaning cannot be resumed or reused. The
# classes of the data are the other part (known once the data set is read).
MODEL_FIELDS = ("variant", "alpha", "minimalistic", "image_size", "weights", "io", "hswish")
# --recipe (auto: transfer with --weights, else scratch) and the transfer recipe's --fine_tune (pipeline/transfer.py)
RECIPES = ("auto", "scratch", "transfer")
FINE_TUNE = ("auto", "none", "all")  # auto: decided on the held-out slice; none: head only; all: always fine-tune
@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Every setting of one run. As given, the settings that depend on others may be None or "auto"; `resolved()`
    returns the config with the values used (what run records and report.json hold)."""

    # model
    variant: str = setting("small", "Model: small or large (MobileNetV3), v2, v1.")  # resolved: small, large, v2, v1
    alpha: float = setting(1.0, "Width multiplier.")
    minimalistic: bool = setting(False, "MobileNetV3 minimalistic variant (no SE, h-swish or 5x5).")
    image_size: int = setting(64, "Square input resolution of the model.")
    dropout: float | None = setting(None, "Dropout before the classifier (default: the variant's, as in "
                                     "keras.applications: 0.2 for V3, 0 for V2, 0.001 for V1).")
    weights: str = setting("none", "Initial weights: none, imagenet (downloads the Keras file), or a file path.")
    # data
    dataset: str = setting(
        "synthetic",
        "'synthetic' (built-in, offline), a folder of class sub-folders (optionally split into train/ and val/ or "
        "test/), or a TFDS name such as tfds:cifar10 (needs network).")
    synthetic_size: tuple[int, int] = setting((4000, 800), "Train,test image counts of the synthetic dataset.")
    batch_size: int = setting(64, "Training batch size.")
    on_bad_image: str = setting("skip", "Unreadable image files: report and skip, or stop.", ("skip", "error"))
    seed: int = setting(0, "Random seed (data split, shuffling, initialization).")
    # float (or transfer) training
    recipe: str = setting(
        "auto",
        "Training recipe. auto: transfer when --weights is given, else scratch. transfer: a logistic-regression head "
        "on the frozen backbone's features, then fine-tuning only if it beats that head on a held-out fifth of the "
        "training split (pipeline/transfer.py).", RECIPES)  # resolved: scratch or transfer
    float_epochs: int | None = setting(
        None,
        "Epochs of float training from scratch (default 12); with --weights, the most epochs the fine-tuning trial may "
        "run (default 10; it stops earlier when the held-out slice stops improving).")
    learning_rate: float = setting(0.1, "Peak learning rate of float training (SGD, warm-up + cosine).")
    fine_tune_learning_rate: float = setting(
        1e-4, "Transfer recipe: peak learning rate (Adam) of fine-tuning; QAT's default is a fifth of it.")
    weight_decay: float = setting(4e-5, "Decoupled weight decay (not applied to BN or biases).")
    label_smoothing: float = setting(0.1, "Label smoothing.")
    # None: chosen from the number of float training steps once the data is known (stays None when resolved)
    bn_momentum: float | None = setting(
        None,
        "BatchNorm moving-average momentum during training. Default: chosen from the number of float training steps so "
        "the moving statistics average over the last ~5% of training (0.9 to 0.99; the reference 0.999 suits ImageNet "
        "runs).")
    # QAT
    qat: bool = setting(True, "Quantization-aware training; --noqat exports with post-training quantization.")
    qat_epochs: int = setting(3, "Epochs of quantization-aware fine-tuning (0 with --noqat).")
    # resolved: never more than all QAT epochs
    freeze_bn_epochs: int = setting(1, "Last QAT epochs run with BatchNorm statistics frozen.")
    qat_learning_rate: float | None = setting(
        None,
        "Peak learning rate of QAT fine-tuning (default: --learning_rate / 20, so it scales with the batch size like "
        "the float one).")
    qat_distill: bool = setting(
        False,
        "QAT learns the float model's predictions instead of the labels (self-distillation): the int8 model agrees "
        "with the float one more often; on CIFAR-10 its top-1 was not better (BENCHMARKS.md).")
    calibration_batches: int = setting(10, "Training batches that initialize QAT's activation ranges.")
    # export, benchmark, outputs
    io: str = setting("uint8", "Input/output dtype of the TFLite model.", ("uint8", "int8"))
    hswish: str = setting("lowered", "h-swish as ADD/RELU6/MUL ops, or HARD_SWISH.", ("lowered", "builtin"))
    calibration_images: int = setting(200, "Images for int8 calibration.")
    benchmark_runs: int = setting(100, "LiteRT latency runs for the report (0 to skip).")
    android: bool = setting(False, "Copy the exported model into android_demo/app/src/main/assets.")
    output_dir: str | None = setting(
        None, "Where checkpoints, logs and artifacts go (default runs/<variant>-<dataset>).")
    verbose: int = setting(
        1,
        "Progress output: 0 none, 1 progress bars (Keras per epoch; calibration, conversion, evaluation), 2 one line "
        "per epoch and the other bars. -v 1 (absl's verbosity) also shows TensorFlow's own logs.")
    # tf.distribute (pipeline/distribute.py says what stays the same)
    strategy: str = setting(
        "default",
        "default: one device. mirrored: all GPUs of this machine. multi_worker: several machines, each with TF_CONFIG. "
        "--batch_size is the global batch (each replica takes an equal share) and the learning rates are for it, "
        "whatever the number of replicas. tpu: refused (untested, see pipeline/distribute.py).", STRATEGIES)
    sync_batch_norm: bool = setting(
        False,
        "BatchNorm statistics over the global batch instead of each replica's share (all-reduced every step; Keras' "
        "unfused BatchNorm): the number of devices then changes the result only by floating-point rounding.")
    cpu_replicas: int = setting(
        0,
        "With --strategy mirrored on a machine without GPUs: split the CPU into this many devices (tests of the "
        "multi-device path; no speed-up).")
    tfds_manual_dir: str | None = setting(
        None,
        "For TFDS data sets downloaded by hand (tfds:imagenet2012: ILSVRC2012_img_train.tar and "
        "ILSVRC2012_img_val.tar): the folder holding the files. TFDS prepares them once into TFDS_DATA_DIR (default "
        "~/tensorflow_datasets).")
    logits: bool = setting(
        False,
        "End the TFLite file at the classifier's logits instead of its softmax: no SOFTMAX op (faster; XNNPACK runs "
        "none in int8); the model card says activation 'none' and the Android core applies softmax itself.")
    fine_tune: str = setting(
        "auto",
        "Transfer recipe: auto decides on the held-out slice of the training split; none keeps the start's backbone "
        "(head only); all always fine-tunes everything but BatchNorm.", FINE_TUNE)

    @property
    def runs_qat(self) -> bool:
        return self.qat and self.qat_epochs > 0

    @property
    def model_definition(self) -> dict:
        return {name: getattr(self, name) for name in MODEL_FIELDS}

    @classmethod
    def from_flags(cls, flag_values: flags.FlagValues) -> RunConfig:
        """The config of the absl flags `define_flags` defined, resolved and validated; ValueError (one line) if bad."""
        return cls(**values_from_flags(cls, flag_values)).resolved()

    def resolved(self) -> RunConfig:
        """This config with the defaults that depend on other settings filled in, validated: every check that needs no
        data, one-line ValueErrors naming the flag. Resolving a resolved config changes nothing."""
        check_choices(self)
        variant = keras_models.canonical_variant(self.variant)
        output_dir = self.output_dir or default_output_dir(self.variant, self.dataset)
        recipe = resolve_recipe(self.recipe, self.weights)
        # QAT fine-tunes a trained model, so it starts well below the float peak, but not too far: on CIFAR-10
        # (BENCHMARKS.md) 1/20 and 1/40 of it did equally well and 1/200 lost a point. Tied to the float learning rate,
        # it follows the batch size the way the float one does; after transfer, to the fine-tuning rate.
        qat_learning_rate = self.qat_learning_rate
        if qat_learning_rate is None:
            qat_learning_rate = (self.fine_tune_learning_rate / 5 if recipe == "transfer"
                                 else self.learning_rate / 20)
        config = dataclasses.replace(
            self, variant=variant, output_dir=output_dir, recipe=recipe, qat_learning_rate=qat_learning_rate,
            dropout=keras_models.DEFAULT_DROPOUT[variant] if self.dropout is None else self.dropout,
            synthetic_size=_synthetic_size(self.synthetic_size), float_epochs=_float_epochs(self.float_epochs, recipe),
            freeze_bn_epochs=min(self.freeze_bn_epochs, self.qat_epochs))
        config.validate()
        return config

    def validate(self) -> None:
        """Every check that needs no data (one-line ValueErrors), before any data is loaded or anything trained."""
        check_writable_dir(self.output_dir, "--output_dir")
        check_folder_kind(self.output_dir, TRAINING_RUN, "--output_dir")
        if self.image_size < MIN_INPUT_SIZE:
            raise ValueError(f"--image_size must be at least {MIN_INPUT_SIZE}, got {self.image_size}")
        if self.minimalistic and self.variant in ("v1", "v2"):
            raise ValueError("--minimalistic applies to MobileNetV3 only (--variant large or small)")
        if self.batch_size < MIN_BATCH_SIZE or min(self.float_epochs, self.qat_epochs) < 0:
            raise ValueError(f"--batch_size must be >= {MIN_BATCH_SIZE} (BatchNorm needs two images per batch) and "
                             "epoch counts >= 0")
        if self.qat and self.hswish == "builtin":
            raise ValueError("--hswish builtin goes with post-training quantization: add --noqat")
        if self.freeze_bn_epochs < 0:
            raise ValueError("--freeze_bn_epochs must be >= 0")
        if self.learning_rate <= 0 or self.qat_learning_rate <= 0:
            raise ValueError("--learning_rate and --qat_learning_rate must be > 0")
        if self.fine_tune_learning_rate <= 0:
            raise ValueError(f"--fine_tune_learning_rate must be > 0, got {self.fine_tune_learning_rate:g}")
        if self.calibration_images < MIN_CALIBRATION_IMAGES:
            raise ValueError(f"--calibration_images must be at least {MIN_CALIBRATION_IMAGES} (int8 calibration "
                             f"needs images), got {self.calibration_images}")
        if self.runs_qat and self.calibration_batches < 1:
            raise ValueError(f"--calibration_batches must be at least 1 with QAT, got {self.calibration_batches}")
        if not (self.float_epochs > 0 or self.runs_qat) and self.weights == "none":
            # Measured: a randomly initialized V3-Small converts, but its int8 file fails the XNNPACK check (ADDs
            # whose input and output ranges are too far apart to be delegated), which said nothing about the cause.
            raise ValueError("nothing to export: --float_epochs 0 without QAT epochs and with --weights none is an "
                             "untrained network; train at least one epoch or start from --weights")
        if self.benchmark_runs < 0:
            raise ValueError(f"--benchmark_runs must be >= 0, got {self.benchmark_runs}")
        if self.alpha <= 0:
            raise ValueError(f"--alpha must be > 0, got {self.alpha:g}")
        for name in ("dropout", "label_smoothing"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"--{name} must be in [0, 1), got {getattr(self, name):g}")
        if self.weight_decay < 0 or (self.bn_momentum is not None and not 0 <= self.bn_momentum < 1):
            raise ValueError("--weight_decay must be >= 0 and --bn_momentum in [0, 1)")
        if self.weights not in ("none", "imagenet") and not os.path.isfile(self.weights):
            raise ValueError(f"--weights file not found: {self.weights}")
        if self.recipe == "transfer" and self.weights == "none":
            raise ValueError("--recipe transfer fine-tunes pretrained weights: give --weights (imagenet, a .h5 or a "
                             ".tflite file), or use --recipe scratch")
        if self.dataset == "synthetic" and self.synthetic_size[0] < MIN_TRAIN_IMAGES:
            raise ValueError(f"--synthetic_size needs at least {MIN_TRAIN_IMAGES} training images (BatchNorm trains "
                             f"on two or more per batch), got {self.synthetic_size[0]}")
        self._check_memory()
        if self.weights not in ("none", "imagenet"):
            self._check_weights_file()

    def _check_weights_file(self) -> None:
        """Load --weights into a throwaway model of this config: a file of another architecture, or one that does not
        load, is refused before the data is read (keras_models.WeightsError, one line naming the file)."""
        model = keras_models.build(self.variant, input_shape=(self.image_size, self.image_size, 3), alpha=self.alpha,
                                   num_classes=2, minimalistic=self.minimalistic)
        keras_models.check_weights_file(model, self.weights)

    def _check_memory(self) -> None:
        """Memory the input alone needs, before TensorFlow or numpy fail with a traceback: one float32 training batch,
        and the synthetic set, which is generated in memory as uint8."""
        side = self.image_size
        needed = {"one float32 training batch (--batch_size x --image_size^2 x 3 x 4 bytes)":
                  self.batch_size * side * side * 12}
        if self.dataset == "synthetic":
            needed["the synthetic images (--synthetic_size x --image_size^2 x 3 bytes)"] = (
                sum(self.synthetic_size) * side * side * 3)
        available = _available_memory_bytes()
        if available:
            for what, size in needed.items():
                if size > available:
                    raise ValueError(f"--image_size {side} needs {size / 2**30:.1f} GiB for {what}, more than the "
                                     f"{available / 2**30:.1f} GiB of memory available: reduce --image_size")


# --float_epochs when not given: from scratch, the epochs of float training; with the transfer recipe, the most the
# fine-tuning trial may run (it stops earlier once the held-out slice stops improving: pipeline/transfer.py).
DEFAULT_FLOAT_EPOCHS = {"scratch": 12, "transfer": 10}


def _float_epochs(value: int | None, recipe: str) -> int:
    return DEFAULT_FLOAT_EPOCHS[recipe] if value is None else value


def resolve_recipe(recipe: str, weights: str) -> str:
    """"auto" means transfer when there are pretrained weights, scratch otherwise."""
    if recipe not in RECIPES:
        raise ValueError(f"--recipe must be one of {', '.join(RECIPES)}, got {recipe!r}")
    if recipe == "auto":
        return "scratch" if weights in (None, "", "none") else "transfer"
    return recipe


def default_output_dir(variant: str, dataset: str) -> str:
    name = os.path.basename(os.path.normpath(dataset)).replace(":", "_") or "data"
    return os.path.join("runs", f"{variant}-{name}")


def _synthetic_size(values) -> tuple[int, int]:
    try:
        train, test = (int(v) for v in values)
    except (TypeError, ValueError):
        raise ValueError("--synthetic_size takes two integers 'train,test', got "
                         f"{','.join(map(str, values))}") from None
    if train < 1 or test < 1:
        raise ValueError("--synthetic_size counts must be positive")
    return train, test


def _available_memory_bytes() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None
