"""The transfer recipe (pipeline/transfer.py): a converged linear head, fine-tuning chosen on a held-out slice of the
training split, and a head-only int8 export that runs the start file's arithmetic."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import keras_models
from keras_models.backend import keras
from pipeline import transfer
from pipeline.report import Report
from tests.conftest import run_pipeline, shared_path

V3_SMALL = ("reference_models", "mobilenet_v3", "v3-small_224_1.0_uint8.tflite")


def _photo_folder(tmp_path, per_class: int):
    """A small "my photos" folder: the first `per_class` training photos of each hymenoptera class (links)."""
    photos = shared_path("datasets", "hymenoptera_data", "train")
    folder = tmp_path / "photos"
    for cls in ("ants", "bees"):
        (folder / cls).mkdir(parents=True)
        for image in sorted((photos / cls).iterdir())[:per_class]:
            (folder / cls / image.name).symlink_to(image)
    return folder


@pytest.mark.parametrize("classes", [2, 3])
def test_head_fit_converges_and_the_classifier_computes_the_probe(classes):
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(classes), 20)
    centres = rng.normal(0, 1, (classes, 16))
    float_features = centres[labels] + rng.normal(0, 0.3, (len(labels), 16))
    int8_features = np.round(float_features * 8) / 8  # a coarser grid, as the int8 arithmetic gives
    weights, bias, head = transfer.fit_head(float_features, int8_features, labels, classes, seed=0)
    assert head.cv_folds == 5 and head.cv_top1 == 1.0 and head.l2_c in transfer.L2_GRID
    for features in (float_features, int8_features):
        assert np.mean((features @ weights + bias).argmax(-1) == labels) == 1.0

    # Written into a model's classifier, the model computes softmax(features W + b) of its own features.
    model = keras_models.build("small", input_shape=(32, 32, 3), alpha=0.35, num_classes=classes)
    extractor = keras.Model(model.input, transfer.classifier(model).input)
    images = rng.uniform(0, 255, (4, 32, 32, 3)).astype(np.float32)
    own = extractor(images).numpy().reshape(4, -1)
    wide_weights = rng.normal(0, 0.1, (own.shape[1], classes)).astype(np.float32)
    transfer.set_head(transfer.classifier(model), wide_weights, bias)
    logits = own @ wide_weights + bias
    expected = np.exp(logits - logits.max(-1, keepdims=True))
    np.testing.assert_allclose(model(images).numpy(), expected / expected.sum(-1, keepdims=True), atol=1e-5)


def test_head_refit_after_qat_puts_one_head_in_both_models_and_its_ranges_follow(monkeypatch):
    """After QAT of a fine-tuned model the head is refit on the float and int8 features of the training images: the
    float and the QAT model get the same kernel (the QAT wrapper's variables, not its fake-quantized tensor), the
    wrapper's weight ranges follow the new kernel (export reads them), and the logits range is recalibrated to the
    new logits. The int8 features are stood in for by rounded float ones (the file's are tested end to end below)."""
    import tensorflow as tf

    from pipeline.qat import _output_range, prepare_qat_model  # the range variables themselves
    from tflite_export.quantization import quantize_scope

    rng = np.random.default_rng(2)
    images = rng.uniform(0, 255, (24, 32, 32, 3)).astype(np.float32)
    labels = np.repeat([0, 1, 2], 8)

    class Data:  # what refit_head reads of pipeline.data.Dataset
        def train_plain(self):
            return tf.data.Dataset.from_tensor_slices((images, labels)).batch(8)

    model = keras_models.build("small", input_shape=(32, 32, 3), alpha=0.35, num_classes=3)
    body = keras.Model(model.input, transfer.classifier(model).input)
    features = body(images).numpy().reshape(24, -1)
    float_features = lambda x: body(x).numpy().reshape(len(x), -1)  # noqa: E731
    monkeypatch.setattr(transfer, "feature_extractors", lambda *_: (
        float_features, lambda x: np.round(float_features(x) * 16) / 16))
    with quantize_scope():
        qat_model, _ = prepare_qat_model(model, [images[:8], images[8:16]])
        record = transfer.refit_head(model, qat_model, Data(), [], seed=0, batch_size=8)
        assert record.images == 24 and record.l2_c in transfer.L2_GRID
        head, qat_head = transfer.classifier(model), transfer.classifier(qat_model)
        kernel = head.kernel.numpy()
        qat_kernel = next(v for v in qat_head.weights if v.name.endswith("/kernel:0")).numpy()
        np.testing.assert_array_equal(kernel, qat_kernel)
        logits = features @ kernel.reshape(-1, 3) + head.bias.numpy()
        expected = np.exp(logits - logits.max(-1, keepdims=True))
        np.testing.assert_allclose(model(images).numpy(), expected / expected.sum(-1, keepdims=True), atol=1e-5)
        ranges = next(v for _, _, v in qat_head._weight_vars)  # tfmot's per-channel kernel range
        np.testing.assert_allclose(ranges["max_var"].numpy(), np.abs(kernel).reshape(-1, 3).max(0), rtol=1e-6)
        low, high = (v.numpy() for v in _output_range(qat_head))
        assert low < 0 < high and 2 * logits.min() < low and high < 2 * logits.max()


def test_a_class_without_images_gets_a_logit_never_chosen():
    rng = np.random.default_rng(1)
    labels = np.repeat([0, 2], 10)
    features = rng.normal(0, 1, (20, 8)) + labels[:, None]
    weights, bias, head = transfer.fit_head(features, features, labels, 3, seed=0)
    assert weights.shape == (8, 3)
    assert set((features @ weights + bias).argmax(-1)) <= {0, 2}


def test_holdout_mask_is_stratified_seeded_and_keeps_an_image_of_every_class():
    labels = np.repeat([0, 1, 2], [50, 10, 1])
    held = transfer.holdout_mask(labels, len(labels), seed=3)
    assert [int(held[labels == c].sum()) for c in range(3)] == [10, 2, 0]
    np.testing.assert_array_equal(held, transfer.holdout_mask(labels, len(labels), seed=3))
    assert not np.array_equal(held, transfer.holdout_mask(labels, len(labels), seed=4))


@pytest.mark.parametrize(("probe", "epochs", "pays"), [
    (0.90, [0.90, 0.94], True),  # +2 of 50 images, 4 points
    (0.90, [0.92, 0.91], False),  # +1 image
    (0.90, [0.85], False),
])
def test_fine_tuning_is_kept_only_when_it_wins_by_the_margin(probe, epochs, pays):
    trial = transfer.FineTuneTrial(holdout_images=50, probe_top1=probe, probe_float_top1=probe, epoch_top1=epochs)
    assert trial.fine_tuning_pays() is pays
    assert trial.best_epoch == int(np.argmax(epochs)) + 1


def test_the_choice_never_reads_the_evaluation_split(tmp_path):
    """The recipe is given a data set without an evaluation split at all: it cannot have looked at it (the same
    choice whatever the evaluation labels are). It fine-tunes one trial epoch on four fifths of train and scores the
    rest."""
    from pipeline.data import load_dataset
    from pipeline.train import Recipe

    weights = shared_path(*V3_SMALL)
    data = load_dataset(str(_photo_folder(tmp_path, 30)), image_size=32, batch_size=16, seed=0)
    model = keras_models.build("small", input_shape=(32, 32, 3), num_classes=2, weights=str(weights))
    blind = dataclasses.replace(data, eval=None, num_eval=0)
    choice, stages = transfer.train(
        model, blind, start_file=str(weights), fine_tune="auto", max_epochs=1, recipe=Recipe(optimizer="adam",
        learning_rate=1e-4), calibration=2, seed=0, smallest_batch=2, workdir=str(tmp_path / "run"), batch_size=16,
        verbose=0)
    assert choice.trial is not None and choice.trial.holdout_images == 10 and len(choice.trial.epoch_top1) == 1
    assert choice.fine_tune == ("all" if choice.trial.fine_tuning_pays() else "none")
    assert [s.name for s in stages] == [transfer.TRIAL_STAGE]
    # BatchNorm stayed in inference mode: the imported identity statistics are intact.
    _, _, mean, variance = model.get_layer("expanded_conv_5/expand/BatchNorm").get_weights()
    assert np.all(mean == 0) and np.allclose(variance + 1e-3, 1)


def test_head_only_run_exports_the_start_files_arithmetic_and_records_its_choice(tmp_path):
    """`--fine_tune none`: nothing but the head is trained, the int8 file comes from the start file's ranges with the
    head's calibrated, and it decides like the Keras model of the same arithmetic (the QAT model); report.json says
    what was chosen and why."""
    from tflite_export.export import run_tflite
    from tflite_export.preprocessing import load_eval_image
    from tflite_export.quantization import quantize_scope

    out = tmp_path / "run"
    result = run_pipeline([
        "--weights", shared_path(*V3_SMALL), "--dataset", _photo_folder(tmp_path, 20), "--image_size", "64",
        "--batch_size", "16", "--fine_tune", "none", "--calibration_images", "16", "--benchmark_runs", "0",
        "--verbose", "0", "--output_dir", out])
    assert result.returncode == 0, result.stderr[-3000:]
    report = Report.read(out / "report.json")
    assert report.config.recipe == "transfer" and report.transfer.fine_tune == "none"
    assert report.transfer.reason == "--fine_tune none" and report.transfer.trial is None
    assert report.transfer.head.images == 32 and report.transfer.head.cv_folds == 5
    assert report.stages == []  # no epoch of any stage: the head is a fit, and QAT trains nothing
    assert "Transfer recipe" in (out / "report.html").read_text()

    with quantize_scope():
        qat = keras.models.load_model(out / "qat_model", compile=False)
    photos = shared_path("datasets", "hymenoptera_data", "train")
    eval_files = [p for cls in ("ants", "bees") for p in sorted((photos / cls).iterdir())[20:28]]  # not trained on
    pixels = np.stack([load_eval_image(str(p), 64) for p in eval_files])
    int8 = run_tflite(out / "model.tflite", pixels)
    keras_scores = qat.predict(pixels, verbose=0)
    assert np.mean(int8.argmax(-1) == keras_scores.argmax(-1)) >= 15 / 16
    assert np.abs(int8 - keras_scores).mean() < 0.05
