"""Transfer learning from pretrained (ImageNet) weights: the recipe `pipeline.train_and_export` runs when --weights
is given. Linear probe first, then fine-tuning only where it pays (LP-FT: Kumar et al., "Fine-Tuning can Distort
Pretrained Features and Underperform Out-of-Distribution", ICLR 2022).

1. **Head.** The frozen backbone's features of every training image (evaluation preprocessing) are computed once, in
   the float arithmetic and in the int8 arithmetic the exported file runs (the QAT model with the start file's
   activation ranges). A logistic regression is fit on both sets together, its L2 strength chosen by k-fold
   cross-validation over images, and written into the classifier: a converged head in seconds. Fit on the float
   features alone, the head met features the int8 file computes differently (Google's weights were trained under
   its rounding: BENCHMARKS.md) and the int8 file lost points the float model kept; fit on both, it decides the
   same either way (within a photo of the float model on hymenoptera_data: BENCHMARKS.md "Transfer learning").
2. **Fine-tune or not.** A fifth of the training split is held out (stratified, seeded). The probe fit on the rest
   scores it, and so does the same start fine-tuned (everything but BatchNorm, Adam, early-stopped on the slice).
   Fine-tuning is kept only when it beats the probe by `MARGIN_IMAGES` images and `MARGIN_POINTS` points; otherwise
   the head is refit on the whole training split. The evaluation split is never looked at: it is only reported.
3. **int8.** A head-only model's backbone is the start file's, so its export takes the file's ranges, calibrates
   the head's, and trains nothing. A fine-tuned model goes through QAT, starting from the file's ranges, and its
   head is then refit as in 1 on the fine-tuned backbone's float and int8 features (`refit_head`): the head the
   fine-tuning trained saw four fifths of the images and only the float arithmetic.

BatchNorm stays in inference mode throughout. Batch statistics of a few hundred photos are a poor estimate of the
ImageNet ones the weights were trained with, and the BatchNorms of weights read from a quantized .tflite hold folded
biases with identity statistics (keras_models.tflite_weights) that batch statistics would destroy.
"""

from __future__ import annotations

import dataclasses
import os
import time
import warnings

import numpy as np
from absl import logging

from keras_models.backend import keras
from keras_models.tflite_weights import CLASSIFIER_NAMES, read_tflite
from pipeline.config import FINE_TUNE
from pipeline.qat import calibrate_output_range, prepare_qat_model
from pipeline.train import Recipe, StageResult, epoch_log_path, one_hot, run_stage
from tflite_export.cli import progress
from tflite_export.convert import convert
from tflite_export.export import run_tflite

HOLDOUT_FRACTION = 0.2
MIN_HOLDOUT_IMAGES = 10  # below this the slice cannot tell two recipes apart: head only
MARGIN_IMAGES, MARGIN_POINTS = 2, 1.0  # what fine-tuning must win by on the held-out slice
L2_GRID = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0)  # scikit-learn's C: inverse strength, on summed losses
CV_FOLDS = 5
MAX_PROBE_IMAGES = 20_000  # features of at most this many training images (a large set fine-tunes anyway)
TRIAL_PATIENCE = 3  # epochs without a better held-out score before the fine-tuning trial stops
TRIAL_STAGE = "fine_tune"


def classifier(model: keras.Model) -> keras.layers.Layer:
    layer = next((layer for layer in model.layers if getattr(layer, "layer", layer).name in CLASSIFIER_NAMES), None)
    if layer is None:
        raise ValueError(f"{model.name} has no classifier layer ({', '.join(CLASSIFIER_NAMES)}) to train as a new head")
    return layer


def freeze_all_but(model: keras.Model, keep: keras.layers.Layer) -> None:
    for layer in model.layers:
        layer.trainable = layer is keep


def unfreeze_all_but_batch_norm(model: keras.Model) -> None:
    for layer in model.layers:
        layer.trainable = not isinstance(layer, keras.layers.BatchNormalization)


# ------------------------------------------------------------------------------------------------------ the records
@dataclasses.dataclass(frozen=True)
class HeadFit:
    """The logistic-regression head: its L2 setting and the cross-validated top-1 that chose it."""

    l2_c: float  # scikit-learn's C (inverse L2 strength)
    cv_folds: int  # 0: too few images per class to cross-validate, `DEFAULT_C` used
    cv_top1: float | None  # mean held-out-fold top-1 at that C, over both arithmetics' features
    images: int
    feature_size: int
    seconds: float


@dataclasses.dataclass(frozen=True)
class FineTuneTrial:
    """The held-out slice's verdict: the probe's top-1 on it and the fine-tuned model's after each epoch."""

    holdout_images: int
    probe_top1: float  # the probe on the int8 arithmetic's features: what a head-only file would score
    probe_float_top1: float
    epoch_top1: list[float]  # the fine-tuned float model after each epoch

    @property
    def best_epoch(self) -> int:  # 1-based; 0 when no epoch ran
        return int(np.argmax(self.epoch_top1)) + 1 if self.epoch_top1 else 0

    @property
    def best_top1(self) -> float:
        return max(self.epoch_top1, default=0.0)

    def fine_tuning_pays(self) -> bool:
        gained = self.best_top1 - self.probe_top1
        return gained * self.holdout_images >= MARGIN_IMAGES - 1e-6 and 100 * gained >= MARGIN_POINTS - 1e-9


@dataclasses.dataclass(frozen=True)
class TransferChoice:
    """What the recipe chose and why (report.json's `transfer`)."""

    fine_tune: str  # "none" (head only: the backbone is the start file's) or "all"
    reason: str
    head: HeadFit
    trial: FineTuneTrial | None  # None when no trial ran (--fine_tune none/all, or too few images)
    # fine-tuned runs: the head refit after QAT on the fine-tuned backbone's float and int8 features (`refit_head`)
    final_head: HeadFit | None = None


# ------------------------------------------------------------------------------------------- features and the head
DEFAULT_C = 0.1


def feature_extractors(model: keras.Model, qat_model: keras.Model, calibration: list[np.ndarray]):
    """Two functions, images -> pre-logits features [N, D]: the float model's, and the int8 file's own. The second
    runs the QAT model up to its classifier, converted to int8 TFLite by the exporter, in LiteRT: the features the
    exported file will compute (its XNNPACK rounding, its lowered h-swish), not the Keras fake-quant approximation
    of them, which decides differently from the file on some photos (the QAT column of BENCHMARKS.md "Transfer
    learning")."""
    float_body = keras.Model(model.input, classifier(model).input)
    int8_body = convert(keras.Model(qat_model.input, classifier(qat_model).input),
                        lambda: (batch[i:i + 1] for batch in calibration for i in range(len(batch))))
    return (lambda images: float_body(images, training=False).numpy().reshape(len(images), -1),
            lambda images: run_tflite(int8_body, np.asarray(images)).reshape(len(images), -1))


def compute_features(extractors, batches) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(float features, int8 features, labels) of `batches` of (images, labels), one pass over them."""
    float_rows, int8_rows, labels = [], [], []
    for images, batch_labels in progress(batches, desc="backbone features", unit="batch"):
        for rows, extractor in zip((float_rows, int8_rows), extractors):
            rows.append(extractor(images))
        labels.append(np.asarray(batch_labels).reshape(-1))
    if not labels:
        raise ValueError("no training images to compute features of")
    return np.concatenate(float_rows), np.concatenate(int8_rows), np.concatenate(labels).astype(np.int64)


def fit_head(float_features: np.ndarray, int8_features: np.ndarray, labels: np.ndarray, num_classes: int,
             seed: int):
    """A multinomial logistic regression on both feature sets (one row per image and arithmetic), C chosen by
    k-fold cross-validation in which an image's two rows stay in the same fold; returns (weights [D, K],
    bias [K], HeadFit)."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
    from sklearn.model_selection import StratifiedGroupKFold

    started = time.perf_counter()
    n = len(labels)
    x = np.concatenate([float_features, int8_features]).astype(np.float64)
    # Standardized features: L-BFGS converges in a few dozen steps instead of hundreds (folded back below).
    mean, scale = x.mean(axis=0), x.std(axis=0) + 1e-6
    x = (x - mean) / scale
    y = np.concatenate([labels, labels])
    groups = np.concatenate([np.arange(n), np.arange(n)])
    folds = min(CV_FOLDS, int(np.bincount(labels, minlength=num_classes)[np.unique(labels)].min()))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # max_iter bounds the time; the CV scores what it gives
        warnings.simplefilter("ignore", FutureWarning)  # scikit-learn 1.8's notices of 1.10's defaults
        if folds >= 2 and len(np.unique(labels)) >= 2:
            splits = list(StratifiedGroupKFold(folds, shuffle=True, random_state=seed).split(x, y, groups))
            probe = LogisticRegressionCV(Cs=list(L2_GRID), cv=splits, max_iter=300, scoring="accuracy").fit(x, y)
            c = float(probe.C_[0])
            scores = np.mean(next(iter(probe.scores_.values())), axis=0)  # [folds, Cs] -> per C
            cv_top1 = float(scores[list(L2_GRID).index(c)])
        else:
            folds, c, cv_top1 = 0, DEFAULT_C, None
            probe = LogisticRegression(C=c, max_iter=300).fit(x, y)
    weights, bias = _softmax_head(probe, num_classes)
    weights /= scale[:, None]  # logits = ((f - mean) / scale) W + b = f (W / scale) + (b - mean (W / scale))
    bias -= mean @ weights
    record = HeadFit(c, folds, cv_top1, n, x.shape[1], round(time.perf_counter() - started, 2))
    return weights.astype(np.float32), bias.astype(np.float32), record


def _softmax_head(probe, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's fitted coefficients as the [D, K] kernel and [K] bias of a softmax classifier. A binary fit has
    one logit, z; the softmax over (-z/2, z/2) gives the same probabilities. Classes absent from the data get a
    logit no example ever tops."""
    coef, intercept = probe.coef_, probe.intercept_
    if coef.shape[0] == 1:
        coef, intercept = np.stack([-coef[0] / 2, coef[0] / 2]), np.array([-intercept[0] / 2, intercept[0] / 2])
    weights = np.zeros((coef.shape[1], num_classes))
    bias = np.full(num_classes, -1e3)
    weights[:, probe.classes_], bias[probe.classes_] = coef.T, intercept
    return weights, bias


def set_head(layer: keras.layers.Layer, weights: np.ndarray, bias: np.ndarray) -> None:
    """Write a [D, K] kernel and [K] bias into the classifier (a 1x1 conv or V2's Dense; or their QAT wrappers,
    whose inner layer's `kernel` attribute is the fake-quantized tensor once called: the variables are looked up by
    name)."""
    variables = {v.name.rsplit("/", 1)[-1].split(":")[0]: v for v in layer.weights}
    variables["kernel"].assign(weights.reshape(variables["kernel"].shape))
    variables["bias"].assign(bias)
    # A QAT wrapper's weight ranges follow its weights only in training calls (tfmot's last-value quantizers), and
    # inference and export read the stored ones: a quantizer call in training mode brings them to the new kernel.
    for weight, quantizer, quantizer_variables in getattr(layer, "_weight_vars", ()):
        quantizer(weight, training=True, weights=quantizer_variables)


def holdout_mask(labels: np.ndarray | None, n: int, seed: int, fraction: float = HOLDOUT_FRACTION) -> np.ndarray:
    """A stratified, seeded choice of `fraction` of every class (at most all but one image of it); random over the
    whole split when the labels are unknown."""
    rng = np.random.default_rng([seed, 18])
    held = np.zeros(n, bool)
    if labels is None:
        held[rng.permutation(n)[: int(round(fraction * n))]] = True
        return held
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        take = min(int(round(fraction * len(members))), len(members) - 1)
        held[rng.permutation(members)[:take]] = True
    return held


def describe(choice: TransferChoice) -> str:
    head = choice.head
    fit = (f"C {head.l2_c:g} by {head.cv_folds}-fold cross-validation ({100 * head.cv_top1:.1f}%)"
           if head.cv_top1 is not None else f"C {head.l2_c:g} (too few images per class to cross-validate)")
    text = f"head: logistic regression on {head.images} images' features, {fit}"
    if choice.trial is not None:
        t = choice.trial
        text += (f"; held-out slice ({t.holdout_images} training images): probe {100 * t.probe_top1:.1f}%, "
                 f"fine-tuned {100 * t.best_top1:.1f}% (epoch {t.best_epoch})")
    text += f"; chosen: {'fine-tune everything but BatchNorm' if choice.fine_tune == 'all' else 'head only'} " \
            f"({choice.reason})"
    if choice.final_head is not None:
        text += f"; head refit after QAT, C {choice.final_head.l2_c:g}"
    return text


def trial_callbacks(best_weights: str, probe_top1: float) -> tuple:
    """Keep the best epoch's weights (the held-out slice is the trial's validation data), stop when it stops
    improving. A resumed trial starts its best at the probe's score, so an epoch that never beat the probe is never
    the one kept."""
    return (
        keras.callbacks.ModelCheckpoint(best_weights, monitor="val_accuracy", mode="max", save_best_only=True,
                                        save_weights_only=True, initial_value_threshold=probe_top1),
        keras.callbacks.EarlyStopping(monitor="val_accuracy", mode="max", patience=TRIAL_PATIENCE),
    )


def log_choice(choice: TransferChoice) -> None:
    logging.info("transfer: %s", describe(choice))


def best_weights_path(workdir: str) -> str:
    return os.path.join(workdir, "checkpoints", f"{TRIAL_STAGE}.best.weights.h5")


def calibration_batches(data, batches: int) -> list[np.ndarray]:
    """The first `batches` batches of the training split without augmentation: the same images in the same order on
    every call, so that the QAT model the features come from and the one the file is exported from calibrate the
    ranges the start file has none for (h-swish's gates, the pools) to the same values."""
    return [images.numpy() for images, _ in data.train_plain().take(max(1, batches))]


def start_ranges(weights: str) -> dict[str, tuple[float, float]] | None:
    """The activation ranges of a quantized .tflite start (its weights were trained under them), or None for any
    other start."""
    return read_tflite(weights).ranges if str(weights).lower().endswith(".tflite") else None


def prepare_qat(model: keras.Model, start_file: str, calibration: list[np.ndarray]) -> keras.Model:
    """The fake-quantized copy of `model` whose backbone runs the start file's int8 arithmetic: its ranges imported
    (a .tflite start), the rest calibrated; the classifier's own range is calibrated."""
    qat_model, setup = prepare_qat_model(model, calibration, start_ranges(start_file),
                                         keep_calibrated=(classifier(model).name,))
    logging.info("transfer: int8 arithmetic of the start: %d ranges from %s, the rest calibrated on %d batches",
                 setup.imported, start_file, setup.calibration_batches)
    return qat_model


def refit_head(model: keras.Model, qat_model: keras.Model, data, calibration: list[np.ndarray], seed: int,
               batch_size: int) -> HeadFit:
    """Refit the classifier of a fine-tuned, quantization-aware-trained pair on the float model's and the int8
    file's features of every training image, as the head-only recipe fits its head; the same weights go into both
    models, and the QAT model's logits range is recalibrated to them. The jointly trained head was fit on four
    fifths of the photos, in the float arithmetic only. Measured on CIFAR-10 images outside a 50-per-class
    training subset: the int8 file +2.8 points, the float model +3.1 (BENCHMARKS.md "Transfer learning")."""
    head, qat_head = classifier(model), classifier(qat_model)
    extractors = feature_extractors(model, qat_model, calibration)
    float_features, int8_features, labels = compute_features(
        extractors, data.train_plain().take(-(-MAX_PROBE_IMAGES // batch_size)))
    weights, bias, record = fit_head(float_features, int8_features, labels, int(head.bias.shape[0]), seed)
    set_head(head, weights, bias)
    set_head(qat_head, weights, bias)
    logits = np.concatenate([float_features, int8_features]) @ weights + bias
    calibrate_output_range(qat_head, [logits[i:i + batch_size] for i in range(0, len(logits), batch_size)])
    logging.info("transfer: head refit after QAT on %d images' float and int8 features, C %g", record.images,
                 record.l2_c)
    return record


def train(model: keras.Model, data, *, start_file: str, fine_tune: str, max_epochs: int, recipe: Recipe,
          calibration: int, seed: int, smallest_batch: int, workdir: str, batch_size: int,
          verbose: int) -> tuple[TransferChoice, list[StageResult]]:
    """The whole recipe of the module docstring on `model` (pretrained backbone, new classifier): on return the model
    holds the chosen head, and the fine-tuned backbone when fine-tuning was chosen."""
    from pipeline.report import read_epoch_curves  # pipeline.report imports this module's records

    if fine_tune not in FINE_TUNE:
        raise ValueError(f"--fine_tune must be one of {', '.join(FINE_TUNE)}, got {fine_tune!r}")
    head_layer = classifier(model)
    num_classes = int(head_layer.bias.shape[0])
    freeze_all_but(model, head_layer)
    calibration_set = calibration_batches(data, calibration)
    extractors = feature_extractors(model, prepare_qat(model, start_file, calibration_set), calibration_set)
    limit = -(-MAX_PROBE_IMAGES // batch_size)
    float_features, int8_features, labels = compute_features(extractors, data.train_plain().take(limit))
    held = holdout_mask(labels, len(labels), seed)
    stages, trial = [], None
    forced = fine_tune == "all"
    if fine_tune == "none":
        reason = "--fine_tune none"
    elif held.sum() < MIN_HOLDOUT_IMAGES:
        reason = f"{int(held.sum())} training images could be held out, fewer than {MIN_HOLDOUT_IMAGES}"
        forced = False
    else:
        start = model.get_weights()
        fit = ~held
        weights, bias, fit_record = fit_head(float_features[fit], int8_features[fit], labels[fit], num_classes, seed)
        set_head(head_layer, weights, bias)
        probe_top1, probe_float_top1 = (float(np.mean((features[held] @ weights + bias).argmax(-1) == labels[held]))
                                        for features in (int8_features, float_features))
        unfreeze_all_but_batch_norm(model)
        mask = np.zeros(data.num_train, bool)
        mask[: len(held)] = held
        train_part, held_part = data.holdout_slice(mask, smallest_batch)
        curve_file = epoch_log_path(workdir, TRIAL_STAGE)
        so_far = read_epoch_curves(curve_file, max_epochs).metrics.get("val_accuracy", [])
        best = best_weights_path(workdir)
        stages.append(run_stage(
            TRIAL_STAGE, model, one_hot(train_part, num_classes), one_hot(held_part, num_classes), epochs=max_epochs,
            num_train=int(fit.sum()), recipe=recipe, workdir=workdir, batch_size=batch_size, verbose=verbose,
            callbacks=trial_callbacks(best, None if forced else max([probe_top1, *so_far]))))
        curve = read_epoch_curves(curve_file, max_epochs).metrics.get("val_accuracy", [])
        trial = FineTuneTrial(int(held.sum()), probe_top1, probe_float_top1, [float(v) for v in curve])
        if forced or trial.fine_tuning_pays():
            if os.path.exists(best):
                model.load_weights(best)
            reason = "--fine_tune all" if forced else (
                f"fine-tuning beat the probe by {100 * (trial.best_top1 - trial.probe_top1):.1f} points on the "
                "held-out slice")
            choice = TransferChoice("all", reason, fit_record, trial)
            log_choice(choice)
            return choice, stages
        reason = (f"fine-tuning did not beat the probe by {MARGIN_IMAGES} held-out images and {MARGIN_POINTS:g} "
                  "point")
        model.set_weights(start)
        freeze_all_but(model, head_layer)
    weights, bias, head = fit_head(float_features, int8_features, labels, num_classes, seed)
    set_head(head_layer, weights, bias)
    choice = TransferChoice("none", reason, head, trial)
    log_choice(choice)
    return choice, stages

