"""The run configuration of `pipeline.train_and_export`: built once from the flags, validated in one place, frozen.

`RunConfig.from_flags(FLAGS)` reads every flag once, resolves the defaults that depend on other flags (the output
folder, the variant's dropout, the recipe "auto" means, the QAT learning rate) and refuses bad values with a one-line
ValueError before any data is loaded. The stages of the run take the config, not the flags.

`run_config.json` in the output folder records the config of the run that started the folder, with the classes of its
data, so that a rerun which would build another model from its checkpoints is refused before loading data
(`check_run_directory`). Folders from before the record was versioned (a flat object of the model-defining fields), or
from before it existed (only a report.json), are checked against what they hold.
"""

from __future__ import annotations

import dataclasses
import os

from pipeline import schema

RUN_CONFIG_FILE = "run_config.json"
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


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Every setting of one run, defaults resolved (the values used, not the flags' "auto" or None)."""

    # model
    variant: str  # canonical: small, large, v2, v1
    alpha: float
    minimalistic: bool
    image_size: int
    dropout: float  # the variant's default unless --dropout was given
    weights: str  # none, imagenet or a file
    # data
    dataset: str
    synthetic_size: tuple[int, int]
    batch_size: int
    on_bad_image: str
    seed: int
    # float (or transfer) training
    recipe: str  # scratch or transfer ("auto" resolved)
    float_epochs: int  # from scratch: epochs; transfer: the most epochs the fine-tuning trial may run
    learning_rate: float
    fine_tune_learning_rate: float
    weight_decay: float
    label_smoothing: float
    bn_momentum: float | None  # None: chosen from the number of float training steps once the data is known
    # QAT
    qat: bool
    qat_epochs: int
    freeze_bn_epochs: int  # the last QAT epochs (--freeze_bn_epochs), never more than all of them
    qat_learning_rate: float  # the default resolved from the recipe's learning rate
    qat_distill: bool
    calibration_batches: int
    # export, benchmark, outputs
    io: str
    hswish: str
    calibration_images: int
    benchmark_runs: int
    android: bool
    output_dir: str
    verbose: int
    # tf.distribute (pipeline/distribute.py); defaults for run records written before these existed
    strategy: str = "default"
    sync_batch_norm: bool = False
    cpu_replicas: int = 0
    tfds_manual_dir: str | None = None
    logits: bool = False  # the int8 file ends at the logits (no SOFTMAX op); an export choice, not the model's
    fine_tune: str = "auto"  # transfer recipe: auto (decided on a held-out slice of train), none, all

    @property
    def runs_qat(self) -> bool:
        return self.qat and self.qat_epochs > 0

    @property
    def model_definition(self) -> dict:
        return {name: getattr(self, name) for name in MODEL_FIELDS}

    @classmethod
    def from_flags(cls, flags) -> RunConfig:
        """The config of the absl `flags` (pipeline.train_and_export's), validated; ValueError (one line) if bad."""
        import keras_models
        from pipeline.transfer import resolve_recipe

        variant = keras_models.canonical_variant(flags.variant)
        output_dir = flags.output_dir or default_output_dir(flags.variant, flags.dataset)
        recipe = resolve_recipe(flags.recipe, flags.weights)
        # QAT fine-tunes a trained model, so it starts well below the float peak, but not too far: on CIFAR-10
        # (BENCHMARKS.md) 1/20 and 1/40 of it did equally well and 1/200 lost a point. Tied to the float learning rate,
        # it follows the batch size the way the float one does; after transfer, to the fine-tuning rate.
        qat_learning_rate = flags.qat_learning_rate
        if qat_learning_rate is None:
            qat_learning_rate = (flags.fine_tune_learning_rate / 5 if recipe == "transfer"
                                 else flags.learning_rate / 20)
        config = cls(
            variant=variant, alpha=flags.alpha, minimalistic=flags.minimalistic, image_size=flags.image_size,
            dropout=keras_models.DEFAULT_DROPOUT[variant] if flags.dropout is None else flags.dropout,
            weights=flags.weights, dataset=flags.dataset, synthetic_size=_synthetic_size(flags.synthetic_size),
            batch_size=flags.batch_size, on_bad_image=flags.on_bad_image, seed=flags.seed, recipe=recipe,
            float_epochs=_float_epochs(flags.float_epochs, recipe), learning_rate=flags.learning_rate,
            fine_tune_learning_rate=flags.fine_tune_learning_rate, weight_decay=flags.weight_decay,
            label_smoothing=flags.label_smoothing, bn_momentum=flags.bn_momentum, qat=flags.qat,
            qat_epochs=flags.qat_epochs, freeze_bn_epochs=min(flags.freeze_bn_epochs, flags.qat_epochs),
            qat_learning_rate=qat_learning_rate, qat_distill=flags.qat_distill,
            calibration_batches=flags.calibration_batches, io=flags.io, hswish=flags.hswish,
            calibration_images=flags.calibration_images, benchmark_runs=flags.benchmark_runs, android=flags.android,
            output_dir=output_dir, verbose=flags.verbose, strategy=flags.strategy,
            sync_batch_norm=flags.sync_batch_norm, cpu_replicas=flags.cpu_replicas,
            tfds_manual_dir=flags.tfds_manual_dir, logits=flags.logits, fine_tune=flags.fine_tune,
        )
        config.validate()
        return config

    def validate(self) -> None:
        """Every check that needs no data (one-line ValueErrors), before any data is loaded or anything trained."""
        from keras_models import MIN_INPUT_SIZE
        from tflite_export.files import TRAINING_RUN, check_folder_kind, check_writable_dir

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
        import keras_models

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


def default_output_dir(variant: str, dataset: str) -> str:
    name = os.path.basename(os.path.normpath(dataset)).replace(":", "_") or "data"
    return os.path.join("runs", f"{variant}-{name}")


def _synthetic_size(values) -> tuple[int, int]:
    try:
        train, test = (int(v) for v in values)
    except ValueError:
        raise ValueError(f"--synthetic_size takes two integers 'train,test', got {','.join(values)}") from None
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


# ------------------------------------------------------------------------------------------- the run folder's record
@dataclasses.dataclass(frozen=True)
class RunRecord:
    """run_config.json: the config of the run that started the folder and the classes of its data."""

    # 1: a flat object of the model-defining fields and the classes (no schema_version); 2: with --head_epochs
    SCHEMA_VERSION = 3

    schema_version: int
    config: RunConfig
    classes: list[str]


def write_run_record(config: RunConfig, classes: list[str]) -> None:
    """Record the folder's model once: reruns are checked against the run that made its checkpoints."""
    from tflite_export.files import atomic_write_json

    path = os.path.join(config.output_dir, RUN_CONFIG_FILE)
    if not os.path.exists(path):
        atomic_write_json(path, schema.to_json_dict(RunRecord(RunRecord.SCHEMA_VERSION, config, list(classes))))


def forget_unresumable_run(output_dir: str) -> None:
    """After a failed first run: when it left nothing to resume (no finished stage, no epoch checkpoint), remove its
    run record and stage settings, so that a corrected command is a new run instead of a refused "resume"."""
    checkpoints = os.path.join(output_dir, "checkpoints")
    names = os.listdir(checkpoints) if os.path.isdir(checkpoints) else []
    if any(name.endswith(".weights.h5") or (name.endswith("_backup") and os.listdir(os.path.join(checkpoints, name)))
           for name in names):
        return
    for name in names:
        if name.endswith(".settings.json"):
            os.remove(os.path.join(checkpoints, name))
    if os.path.exists(os.path.join(output_dir, RUN_CONFIG_FILE)):
        os.remove(os.path.join(output_dir, RUN_CONFIG_FILE))


def recorded_model(output_dir: str) -> dict | None:
    """The model-defining fields (and classes) the folder's checkpoints were made with, or None for a new folder.

    From run_config.json; for folders from before it existed, from their report.json."""
    from pipeline.report import REPORT_FILE, Report

    path = os.path.join(output_dir, RUN_CONFIG_FILE)
    if os.path.exists(path):
        data = schema.read_json(path)
        if "schema_version" not in data:  # version 1: the flat record of the model-defining fields
            return data
        record = schema.read_record(RunRecord, path, "run record", "resume it with the pipeline version that made "
                                    "the folder, or pass a fresh --output_dir")
        return {**record.config.model_definition, "classes": record.classes}
    path = os.path.join(output_dir, REPORT_FILE)
    if not os.path.exists(path):
        return None
    data = schema.read_json(path)
    if "schema_version" in data:
        report = Report.read(path)
        return {**report.config.model_definition, "classes": report.data.classes}
    # A report.json of version 1 (untyped): what model the folder holds is all this reads of it.
    import keras_models

    config = data.get("config", {})
    legacy = {key: config[key] for key in MODEL_FIELDS if key in config}
    if "variant" in config:
        legacy["variant"] = keras_models.canonical_variant(config["variant"])
    if "classes" in data.get("data", {}):
        legacy["classes"] = data["data"]["classes"]
    return legacy


def recorded_setting(output_dir: str, name: str):
    """One setting (the data set, the recipe) of the run that made `output_dir`, or None: from run_config.json's typed
    record, else report.json's config; every version of both keeps its settings under "config"."""
    from pipeline.report import REPORT_FILE

    for record in (RUN_CONFIG_FILE, REPORT_FILE):
        path = os.path.join(output_dir, record)
        if os.path.exists(path):
            value = schema.read_json(path).get("config", {}).get(name)
            if value:
                return value
    return None


def check_run_directory(config: RunConfig, recorded: dict | None, classes: list[str] | None = None) -> None:
    """Refuse a rerun that would build another model from the folder's checkpoints and weights (ValueError naming the
    settings that differ). Called with the config before the data is loaded, then with its classes."""
    from pipeline.train import check_same_settings

    if recorded is None:
        return
    settings = config.model_definition if classes is None else {"classes": list(classes)}
    check_same_settings("", {k: v for k, v in settings.items() if k in recorded}, "a run made", config.output_dir,
                        recorded=recorded)
