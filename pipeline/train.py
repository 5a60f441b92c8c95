"""Training stages (float, QAT) that checkpoint every epoch and resume where an interrupted run stopped.

A stage is one `model.fit` with Keras' own machinery: `BackupAndRestore` saves model + optimizer + epoch at each
epoch end and restores them when the same command runs again; `TensorBoard` logs; Keras prints progress. When a stage
finishes, its weights are saved atomically as `<stage>.weights.h5`, which marks it done: a rerun loads them and moves
on to the next stage. `<stage>.settings.json` records what the stage was asked to do (epochs, batch size, recipe), so
a rerun with different settings stops with a clear error instead of silently resuming or reusing the old weights.

Under a tf.distribute strategy (the model built in its scope: pipeline.distribute) the same code runs on every worker;
only the chief writes the stage's files, the other workers write where Keras' multi-worker convention puts them.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import shutil
import time

from absl import logging

from keras_models.backend import keras, tf
from pipeline.distribute import chief_path, is_chief
from pipeline.schema import read_json
from tflite_export.cli import header
from tflite_export.files import atomic_output, atomic_write_json


@dataclasses.dataclass(frozen=True)
class Recipe:
    """Optimizer and regularization for one stage.

    Defaults follow the MobileNet training recipes scaled down to small data: SGD with Nesterov momentum, linear
    warm-up then cosine decay, label smoothing 0.1, decoupled weight decay on weights only (not BN or biases).
    """

    learning_rate: float = 0.05
    warmup_epochs: float = 1.0
    momentum: float = 0.9
    weight_decay: float = 4e-5
    label_smoothing: float = 0.1
    final_lr_fraction: float = 0.01
    # What the stage learns to predict: "labels", or "float model" for QAT that distills the float model's softmax
    # (pipeline.distill). Recorded with the stage's settings so a rerun cannot switch targets halfway.
    targets: str = "labels"
    # "sgd" (Nesterov momentum), or "adam" for fine-tuning weights read from a quantized file: their BatchNorms are
    # folded into the kernels (keras_models.tflite_weights), so kernel scales differ by orders of magnitude between
    # channels and SGD steps sized for one blow up another (NaN within an epoch at 0.005); Adam's steps are not
    # proportional to the gradient's scale.
    optimizer: str = "sgd"


class _FusedUpdate:
    """Mixin for a tf_keras optimizer: one XLA-compiled function applies weight decay and the update of every variable.

    Keras' optimizer emits about ten small ops per variable (weight decay, momentum, Nesterov step: Mul, AddV2, Neg,
    reads and assigns), about 1,900 per V3-Small step, each dispatched by TensorFlow's executor; compiled as one
    function they become one XLA cluster. The math and its order are Keras' own (`_apply_weight_decay`, then
    `_update_step` per variable); XLA may contract a multiply-add into a fused multiply-add, a rounding difference
    only. Under a tf.distribute strategy the optimizer's own per-replica path runs (its merge calls cannot be
    compiled as one function). Keras' `jit_compile` option compiles each variable's update separately, and only
    when a GPU exists.
    """

    def _fused(self) -> bool:
        return not tf.distribute.has_strategy()

    def _apply_weight_decay(self, variables):
        if not self._fused():  # otherwise applied inside _apply_all, right before the updates, as Keras orders them
            super()._apply_weight_decay(variables)

    def _internal_apply_gradients(self, grads_and_vars):
        if not self._fused():
            return super()._internal_apply_gradients(grads_and_vars)
        grads, variables = zip(*grads_and_vars)
        self._apply_all(list(grads), list(variables))
        return self.iterations.assign_add(1)

    @tf.function(jit_compile=True)
    def _apply_all(self, grads, variables):
        super()._apply_weight_decay(variables)
        for gradient, variable in zip(grads, variables):
            self._update_step(gradient, variable)


class FusedSGD(_FusedUpdate, keras.optimizers.SGD):
    pass


def make_optimizer(recipe: Recipe, steps_per_epoch: int, epochs: int,
                   fused_update: bool = True) -> keras.optimizers.Optimizer:
    """The recipe's optimizer and schedule; `fused_update`: SGD's update as one compiled function (`_FusedUpdate`),
    else Keras' per-variable ops (bench.throughput compares the two). Adam stays Keras' own: compiled the same
    way, its steps m / (sqrt(v) + epsilon) came out visibly different from Keras' on weights whose gradients are
    tiny (v near epsilon squared), where SGD's compiled update matches Keras' to float rounding (tests/test_train)."""
    total = max(1, steps_per_epoch * epochs)
    warmup = min(total - 1, int(recipe.warmup_epochs * steps_per_epoch))
    schedule = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=recipe.learning_rate * 0.1 if warmup else recipe.learning_rate,
        decay_steps=max(1, total - warmup),
        alpha=recipe.final_lr_fraction,
        warmup_target=recipe.learning_rate if warmup else None,
        warmup_steps=warmup,
    )
    if recipe.optimizer == "adam":
        optimizer = keras.optimizers.Adam(learning_rate=schedule, weight_decay=recipe.weight_decay)
    else:
        sgd = FusedSGD if fused_update else keras.optimizers.SGD
        optimizer = sgd(
            learning_rate=schedule, momentum=recipe.momentum, nesterov=True, weight_decay=recipe.weight_decay
        )
    optimizer.exclude_from_weight_decay(var_names=["bias", "gamma", "beta", "moving_", "min_var", "max_var"])
    return optimizer


def compile_model(model: keras.Model, recipe: Recipe, steps_per_epoch: int, epochs: int,
                  fused_update: bool = True, steps_per_execution: int = 1) -> None:
    model.compile(
        steps_per_execution=steps_per_execution,
        optimizer=make_optimizer(recipe, steps_per_epoch, epochs, fused_update),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=recipe.label_smoothing),
        metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")],
    )


def set_batch_norm_momentum(model: keras.Model, momentum: float) -> None:
    """Use a faster BatchNorm moving-average momentum for training than the ImageNet default.

    The reference momentum 0.999 averages over ~1000 steps: right for ImageNet's 100k+ steps, but a run of a few
    hundred steps ends with moving statistics still close to their initial values, and the model scores chance on
    held-out data while training accuracy looks fine. Momentum is not a weight, so weight files are unaffected.
    """
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = momentum


def auto_batch_norm_momentum(training_steps: int) -> float:
    """Momentum whose moving average spans the last ~5% of training: 1 - 20 / steps, kept within [0.9, 0.99].

    Measured: 0.99 over 756 steps (synthetic default) scores 100% held-out; 0.99 over 240 steps (hymenoptera) leaves
    statistics that make the model predict one class for every image, which 0.9 fixes.
    """
    return float(min(0.99, max(0.9, 1.0 - 20.0 / max(training_steps, 1))))


def one_hot(dataset: tf.data.Dataset, num_classes: int) -> tf.data.Dataset:
    """Label smoothing needs one-hot targets."""
    return dataset.map(lambda x, y: (x, tf.one_hot(y, num_classes)), num_parallel_calls=tf.data.AUTOTUNE)


class EpochLog(keras.callbacks.Callback):
    """One log line per epoch saying the checkpoint is written, and the epoch a resumed stage starts at."""

    def __init__(self, stage: str):
        super().__init__()
        self.stage = stage
        self.first_epoch = None
        self.epoch_seconds: list[float] = []
        self._started = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        if self.first_epoch is None:
            self.first_epoch = epoch
            if epoch:
                logging.info("%s: resumed from checkpoint, starting at epoch %d", self.stage, epoch + 1)
        self._started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.epoch_seconds.append(time.perf_counter() - self._started)
        logging.info("%s: epoch %d done, checkpoint saved", self.stage, epoch + 1)


@dataclasses.dataclass
class StageResult:
    name: str
    epochs: int
    first_epoch: int  # 0-based epoch the run started at (> 0 when resumed)
    skipped: bool  # True when the stage had already finished in an earlier run
    seconds: float
    images_per_second: float | None
    history: dict


def epoch_log_path(workdir: str, stage: str) -> str:
    """The stage's per-epoch loss and accuracy (train and val) as CSV (Keras' CSVLogger); read by pipeline.report."""
    return os.path.join(workdir, "logs", f"{stage}.epochs.csv")


def run_stage(
    name: str,
    model: keras.Model,
    train: tf.data.Dataset,
    eval: tf.data.Dataset,  # noqa: A002 - the held-out split, named like Dataset.eval; the builtin is not used here
    *,
    epochs: int,
    num_train: int,
    recipe: Recipe,
    workdir: str,
    batch_size: int,
    verbose: int = 2,
    callbacks: tuple = (),
) -> StageResult:
    """Train `model` for `epochs` (resuming if interrupted) unless this stage already finished in `workdir`."""
    checkpoints = os.path.join(workdir, "checkpoints")
    done = os.path.join(checkpoints, f"{name}.weights.h5")
    settings_file = os.path.join(checkpoints, f"{name}.settings.json")
    settings = {"epochs": epochs, "batch_size": batch_size, "num_train": num_train, **dataclasses.asdict(recipe)}
    # Stages recorded before Recipe.optimizer existed were trained with SGD.
    check_same_settings(settings_file, settings, f"a {name} stage trained", workdir, defaults={"optimizer": "sgd"})
    if os.path.exists(done):
        try:
            model.load_weights(done)
        except (OSError, ValueError) as err:  # h5py and Keras name neither the file nor what to do
            raise ValueError(f"cannot load the finished {name} stage's weights {done} ({str(err).splitlines()[0]}): "
                             "delete the file to train that stage again") from None
        logging.info("%s: already finished in an earlier run, loaded %s", name, done)
        return StageResult(name, epochs, epochs, True, 0.0, None, {})
    if epochs <= 0:
        return StageResult(name, 0, 0, True, 0.0, None, {})

    strategy = model.distribute_strategy  # the tf.distribute strategy the model was built under (pipeline.distribute)
    if is_chief(strategy):  # the other workers of a multi-worker run read the chief's files
        atomic_write_json(settings_file, settings)
    steps_per_epoch = -(-num_train // batch_size)
    compile_model(model, recipe, steps_per_epoch, epochs)
    backup_dir = os.path.join(checkpoints, f"{name}_backup")
    log = EpochLog(name)
    callbacks = [
        # Appended to on resume, so the report's curves cover every epoch, including those of an interrupted run.
        # Before the checkpoint: a run killed between the two redoes the epoch, and the reader keeps its last row.
        keras.callbacks.CSVLogger(epoch_log_path(workdir, name), append=True),
        keras.callbacks.BackupAndRestore(backup_dir),
        log,
        keras.callbacks.TensorBoard(os.path.join(workdir, "logs", name), update_freq="epoch", profile_batch=0),
        *callbacks,
    ]
    header(f"{name} training: {epochs} epoch(s)")
    started = time.perf_counter()
    try:
        history = model.fit(train, validation_data=eval, epochs=epochs, callbacks=callbacks, verbose=verbose)
    except tf.errors.ResourceExhaustedError as err:
        _remove_partial_checkpoints(backup_dir)
        if "no space left" in str(err).lower():
            # TensorFlow reports a full disk like an out-of-memory error; the finished epochs' checkpoint is intact.
            raise OSError(errno.ENOSPC, f"no space left on device while saving a checkpoint in {backup_dir}: free "
                          "space and rerun the same command to resume") from None
        raise
    except OSError:
        _remove_partial_checkpoints(backup_dir)
        raise
    seconds = time.perf_counter() - started

    with chief_path(done, strategy) as target, atomic_output(target) as tmp:
        model.save_weights(str(tmp))
    if is_chief(strategy):
        shutil.rmtree(backup_dir, ignore_errors=True)
    # Steady-state rate: skip the first epoch, which includes tracing and cache filling.
    steady = log.epoch_seconds[1:] or log.epoch_seconds
    rate = num_train / (sum(steady) / len(steady)) if steady else None
    return StageResult(name, epochs, log.first_epoch or 0, False, seconds, rate, history.history)


def _remove_partial_checkpoints(backup_dir: str) -> None:
    """A checkpoint write cut short (disk full) leaves `*.tempstate*` files and `*_temp` folders; the previous epoch's
    complete checkpoint stays, so removing them lets a rerun resume from it."""
    for root, dirs, files in os.walk(backup_dir, topdown=False):
        for name in files:
            if ".tempstate" in name:
                os.unlink(os.path.join(root, name))
        for name in dirs:
            if name.endswith("_temp"):
                shutil.rmtree(os.path.join(root, name), ignore_errors=True)


def check_same_settings(path: str, settings: dict, what: str, workdir: str, recorded: dict | None = None,
                        defaults: dict | None = None) -> None:
    """Checkpoints and weights only make sense with the settings that made them (a cosine schedule resumed with another
    epoch count is a different schedule; finished weights are not retrained; 32 px weights are no 64 px model).
    Compares `settings` with those recorded in `path` (or given as `recorded`); raises ValueError on a mismatch.
    `defaults`: values of settings that records written before the setting existed lack (they were made with them)."""
    if recorded is None:
        if not os.path.exists(path):
            # A fresh stage, or weights put there by hand (experiments.qat_schedules copies a finished float stage).
            return
        recorded = read_json(path)  # a corrupt file is one line naming it
    recorded = {**(defaults or {}), **recorded}
    changed = [f"{key} {recorded.get(key)} -> {value}" for key, value in settings.items() if recorded.get(key) != value]
    if changed:
        raise ValueError(
            f"{workdir} holds {what} with other settings ({', '.join(changed)}); rerun with the "
            "same flags to resume it, or pass a fresh --output_dir")


def freeze_batch_norm(model: keras.Model) -> int:
    """Switch every BatchNormalization (wrapped or not) to its moving statistics; returns how many were frozen.

    Late in QAT the batch statistics are noisy compared with the quantization steps the network is adapting to, and
    the deployed model uses the moving averages; freezing them lets the last epochs train against what will ship
    (the practice of the QAT paper, Jacob et al. 2018, and of TF's MobileNet QAT recipes). Recompile afterwards.
    """
    frozen = 0
    for layer in model.layers:
        inner = getattr(layer, "layer", layer)
        if isinstance(inner, keras.layers.BatchNormalization):
            inner.trainable = False
            frozen += 1
    return frozen


def fine_tune(
    name: str,
    trainee: keras.Model,
    train: tf.data.Dataset,
    eval: tf.data.Dataset,  # noqa: A002 - the held-out split, named like Dataset.eval; the builtin is not used here
    *,
    epochs: int,
    freeze_bn_epochs: int,
    recipe: Recipe,
    batch_norm_model: keras.Model | None = None,
    **stage_args,
) -> list[StageResult]:
    """Fine-tune a trained model: `epochs - freeze_bn_epochs` epochs as stage `name`, then the last `freeze_bn_epochs`
    with BatchNorm frozen at a tenth of the learning rate as stage `<name>_bn_frozen`. QAT does this (its trainee
    may be a `Distiller` around the model whose BatchNorms are frozen: `batch_norm_model`); so does the float
    control of experiments.finetune_control, with the same schedule and no fake-quant."""
    stages = [run_stage(name, trainee, train, eval, epochs=epochs - freeze_bn_epochs, recipe=recipe, **stage_args)]
    if freeze_bn_epochs:
        frozen = freeze_batch_norm(batch_norm_model or trainee)
        logging.info("%s: froze %d BatchNorm layers for the last %d epoch(s)", name, frozen, freeze_bn_epochs)
        stages.append(run_stage(f"{name}_bn_frozen", trainee, train, eval, epochs=freeze_bn_epochs,
                                recipe=dataclasses.replace(recipe, learning_rate=recipe.learning_rate * 0.1),
                                **stage_args))
    return stages
