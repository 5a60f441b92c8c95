"""pipeline.data / pipeline.synthetic: the synthetic set, the folder loader (real photos in ../shared and odd files made
here), every bad-input error, the TFDS offline failure, seeded splits and shuffles. Small sizes: a few seconds each."""

from __future__ import annotations

import logging
import os
import time

import numpy as np
import pytest
from PIL import Image

from keras_models.backend import tf
from pipeline import data, synthetic
from pipeline.data import DataError
from pipeline.data import tfds as data_tfds

IMAGE_SIZE = 32


def _count_images(folder) -> int:
    extensions = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
    return sum(1 for _, _, files in os.walk(folder) for f in files if f.lower().endswith(extensions))


def _save(path, array, **kwargs):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **kwargs)
    return path


def _rgb(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _make_class_folders(root, counts: dict[str, int], size=(20, 24)):
    for k, (name, n) in enumerate(counts.items()):
        for i in range(n):
            _save(root / name / f"img_{i:03d}.png", _rgb(*size, seed=100 * k + i))
    return root


def _batches(ds):
    xs, ys = [], []
    for x, y in ds:
        xs.append(x.numpy())
        ys.append(y.numpy())
    return np.concatenate(xs), np.concatenate(ys)


# ---------------------------------------------------------------------------------------------------------- synthetic


def test_synthetic_is_deterministic_per_seed():
    a, la = synthetic.generate(40, IMAGE_SIZE, seed=0)
    b, lb = synthetic.generate(40, IMAGE_SIZE, seed=0)
    c, _ = synthetic.generate(40, IMAGE_SIZE, seed=1)
    test, _ = synthetic.generate(40, IMAGE_SIZE, seed=0, split="test")
    assert a.dtype == np.uint8 and a.shape == (40, IMAGE_SIZE, IMAGE_SIZE, 3)
    assert a.tobytes() == b.tobytes() and la.tobytes() == lb.tobytes()
    assert a.tobytes() != c.tobytes()
    assert a.tobytes() != test.tobytes()  # train and test are drawn from different streams


def test_synthetic_has_balanced_classes():
    _, labels = synthetic.generate(403, IMAGE_SIZE, seed=3)
    counts = np.bincount(labels, minlength=len(synthetic.CLASS_NAMES))
    assert len(synthetic.CLASS_NAMES) >= 5 and len(counts) == len(synthetic.CLASS_NAMES)
    assert counts.max() - counts.min() <= 1, counts


def test_synthetic_is_not_solvable_by_mean_colour():
    x, y = synthetic.generate(2400, 24, seed=5)
    k = len(synthetic.CLASS_NAMES)
    features = x.reshape(len(x), -1, 3).mean(axis=1) / 255.0
    features = np.concatenate([features, np.ones((len(x), 1))], axis=1)
    train, test = slice(0, 1800), slice(1800, None)
    # Multinomial logistic regression on mean RGB, full-batch gradient descent (converges well on 4 features).
    w = np.zeros((features.shape[1], k))
    onehot = np.eye(k)[y[train]]
    for _ in range(1500):
        logits = features[train] @ w
        p = np.exp(logits - logits.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        w -= 2.0 * features[train].T @ (p - onehot) / len(onehot)
    accuracy = np.mean(np.argmax(features[test] @ w, axis=1) == y[test])
    assert accuracy < 0.25, f"mean colour alone predicts the class ({accuracy:.0%}; chance is {1 / k:.0%})"


def test_synthetic_cache_dir_round_trip(tmp_path):
    first = synthetic.load_or_generate(IMAGE_SIZE, 16, 8, seed=2, cache_dir=str(tmp_path))
    assert len(list(tmp_path.glob("*.npz"))) == 1
    again = synthetic.load_or_generate(IMAGE_SIZE, 16, 8, seed=2, cache_dir=str(tmp_path))
    for a, b in zip(first, again):
        assert a.tobytes() == b.tobytes()


def test_load_synthetic_dataset_pipeline():
    ds = data.load_dataset("synthetic", image_size=IMAGE_SIZE, batch_size=16, seed=0, synthetic_size=(64, 24))
    assert ds.class_names == synthetic.CLASS_NAMES
    assert (ds.num_train, ds.num_eval, ds.eval_split_name, ds.skipped_files) == (64, 24, "synthetic test", [])
    spec = (tf.TensorSpec([None, IMAGE_SIZE, IMAGE_SIZE, 3], tf.float32), tf.TensorSpec([None], tf.int32))
    assert ds.train.element_spec == spec and ds.eval.element_spec == spec
    x, y = _batches(ds.train)
    assert x.shape == (64, IMAGE_SIZE, IMAGE_SIZE, 3) and 0.0 <= x.min() and x.max() <= 255.0 and x.max() > 1.0
    assert sorted(y.tolist()) == sorted(synthetic.generate(64, IMAGE_SIZE, 0)[1].tolist())
    e1, l1 = _batches(ds.eval)
    e2, l2 = _batches(ds.eval)
    assert np.array_equal(e1, e2) and np.array_equal(l1, l2)  # deterministic evaluation
    x2, _ = _batches(ds.train)
    assert not np.array_equal(x, x2)  # every epoch is shuffled and augmented anew
    rep = list(ds.representative(5))
    assert len(rep) == 5 and all(r.shape == (1, IMAGE_SIZE, IMAGE_SIZE, 3) and r.dtype == np.float32 for r in rep)
    assert len(list(ds.representative(1000))) == 64  # never more than the training set
    assert data.input_pipeline_throughput(ds.train, batches=3) > 0


def test_train_order_and_augmentation_repeat_with_the_seed():
    def first_epochs(seed):
        ds = data.load_dataset("synthetic", image_size=IMAGE_SIZE, batch_size=8, seed=seed, synthetic_size=(32, 8))
        return [_batches(ds.train) for _ in range(2)]

    a, b, c = first_epochs(0), first_epochs(0), first_epochs(1)
    for (xa, ya), (xb, yb) in zip(a, b):
        assert np.array_equal(xa, xb) and np.array_equal(ya, yb)
    assert not np.array_equal(a[0][0], c[0][0])


# ------------------------------------------------------------------------------------------- folder: real photos


def test_hymenoptera_folder(shared):
    root = shared("datasets", "hymenoptera_data")
    n_train, n_val = _count_images(root / "train"), _count_images(root / "val")
    ds = data.load_dataset(str(root), image_size=IMAGE_SIZE, batch_size=64, seed=0, on_bad_image="error")
    assert ds.class_names == ["ants", "bees"]
    assert (ds.num_train, ds.num_eval, ds.eval_split_name, ds.skipped_files) == (n_train, n_val, "val", [])
    assert any(" " in os.path.basename(p) for p in ds.train_files)  # "ant photos.jpg"
    x, y = _batches(ds.train)  # decodes every training photo, the one with a space in its name included
    assert x.shape == (n_train, IMAGE_SIZE, IMAGE_SIZE, 3) and np.isfinite(x).all()
    expected = [_count_images(root / "train" / c) for c in ds.class_names]
    assert np.bincount(y).tolist() == expected
    ex, ey = _batches(ds.eval)
    assert ex.shape == (n_val, IMAGE_SIZE, IMAGE_SIZE, 3)
    assert np.bincount(ey).tolist() == [_count_images(root / "val" / c) for c in ds.class_names]
    # Evaluation images are exactly preprocessing.load_eval_image of the file, in file order.
    from tflite_export.preprocessing import load_eval_image

    np.testing.assert_allclose(ex[0], load_eval_image(ds.eval_files[0], IMAGE_SIZE), atol=1e-4)


# -------------------------------------------------------------------------------------- folder: odd files made here


def test_folder_of_odd_images(tmp_path):
    root = tmp_path / "photos"
    _save(root / "cats" / "gray.png", _rgb(31, 17)[..., 0])  # grayscale PNG
    _save(root / "cats" / "rgba.png", np.dstack([_rgb(40, 90), np.full((40, 90), 128, np.uint8)]))  # RGBA
    _save(root / "cats" / "PALETTE.GIF", _rgb(12, 12), format="GIF")
    _save(root / "cats" / "a file with spaces.JPG", _rgb(300, 7))
    _save(root / "dogs" / "tiny.bmp", _rgb(3, 5))
    _save(root / "dogs" / "gray.jpeg", _rgb(64, 48)[..., 1])  # grayscale JPEG
    _save(root / "dogs" / "sub" / "nested.png", _rgb(50, 50))
    _save(root / "dogs" / "rgba.bmp", np.dstack([_rgb(10, 20), np.zeros((10, 20), np.uint8)]))
    (root / "dogs" / "notes.txt").write_text("ignored: not an image extension")
    ds = data.load_dataset(str(root), image_size=IMAGE_SIZE, batch_size=4, on_bad_image="error")
    assert ds.class_names == ["cats", "dogs"]
    assert ds.num_train + ds.num_eval == 8 and ds.skipped_files == []
    assert ds.eval_split_name == "seeded 20% hold-out"
    x, y = _batches(ds.train)
    ex, ey = _batches(ds.eval)
    assert x.shape[1:] == ex.shape[1:] == (IMAGE_SIZE, IMAGE_SIZE, 3)
    assert len(x) + len(ex) == 8 and np.isfinite(x).all() and np.isfinite(ex).all()
    assert len(list(ds.representative(3))) == 3


def _folder_with_bad_files(tmp_path):
    root = _make_class_folders(tmp_path / "d", {"a": 4, "b": 4})
    good = tmp_path / "good.jpg"
    _save(good, _rgb(60, 80), quality=90)
    corrupt = root / "a" / "corrupt.jpg"
    corrupt.write_bytes(good.read_bytes()[:20] + bytes(range(256)) * 4)  # JPEG header, garbage body
    truncated = root / "b" / "truncated.jpg"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    not_image = root / "b" / "notes.png"
    not_image.write_text("this is not a PNG")
    return root, sorted(map(str, [corrupt, truncated, not_image]))


def test_bad_files_are_skipped_and_reported(tmp_path, caplog):
    root, bad = _folder_with_bad_files(tmp_path)
    with caplog.at_level(logging.WARNING):
        ds = data.load_dataset(str(root), image_size=IMAGE_SIZE, batch_size=4, on_bad_image="skip")
    assert sorted(ds.skipped_files) == bad
    assert ds.num_train + ds.num_eval == 8
    for path in bad:
        assert path not in ds.train_files + ds.eval_files
        assert any(path in record.getMessage() for record in caplog.records), f"{path} not reported"
    assert len(_batches(ds.train)[0]) == ds.num_train  # a full epoch runs


def test_bad_file_is_an_error_naming_it(tmp_path):
    root, bad = _folder_with_bad_files(tmp_path)
    with pytest.raises(DataError) as info:
        data.load_dataset(str(root), image_size=IMAGE_SIZE, batch_size=4, on_bad_image="error")
    message = str(info.value)
    assert "\n" not in message and any(path in message for path in bad) and "skip" in message


@pytest.mark.parametrize(
    "layout, expected",
    [
        ({"a": 3, "b": 0}, "contains no images"),
        ({"only": 4}, "only one class"),
        ({}, "no images found"),
    ],
)
def test_structural_problems_are_clear_errors(tmp_path, layout, expected):
    root = tmp_path / "data"
    root.mkdir()
    for name in layout:
        (root / name).mkdir()
    _make_class_folders(root, {k: n for k, n in layout.items() if n})
    with pytest.raises(DataError, match=expected) as info:
        data.load_dataset(str(root), image_size=IMAGE_SIZE, batch_size=4)
    assert "\n" not in str(info.value)
    if expected == "contains no images":
        assert str(root / "b") in str(info.value)


def test_missing_folder_is_a_clear_error(tmp_path):
    missing = tmp_path / "nope" / "photos"
    with pytest.raises(DataError, match="does not exist") as info:
        data.load_dataset(str(missing), image_size=IMAGE_SIZE, batch_size=4)
    assert str(missing) in str(info.value)


def test_train_and_val_classes_must_match(tmp_path):
    _make_class_folders(tmp_path / "train", {"a": 2, "b": 2, "c": 2})
    _make_class_folders(tmp_path / "val", {"a": 1, "b": 1, "d": 1})
    with pytest.raises(DataError, match=r"only in train: \['c'\]; only in val: \['d'\]"):
        data.load_dataset(str(tmp_path), image_size=IMAGE_SIZE, batch_size=4)


def test_test_split_wins_over_val(tmp_path):
    _make_class_folders(tmp_path / "train", {"a": 3, "b": 3})
    _make_class_folders(tmp_path / "val", {"a": 1, "b": 1})
    _make_class_folders(tmp_path / "test", {"a": 2, "b": 2})
    ds = data.load_dataset(str(tmp_path), image_size=IMAGE_SIZE, batch_size=4)
    assert (ds.eval_split_name, ds.num_train, ds.num_eval) == ("test", 6, 4)


def test_bad_arguments_are_clear_errors(tmp_path):
    root = _make_class_folders(tmp_path, {"a": 2, "b": 2})
    with pytest.raises(DataError, match="on_bad_image"):
        data.load_dataset(str(root), image_size=IMAGE_SIZE, batch_size=4, on_bad_image="ignore")
    with pytest.raises(DataError, match="holdout_fraction"):
        data.load_dataset(str(root), image_size=IMAGE_SIZE, batch_size=4, holdout_fraction=1.0)


def test_seeded_holdout_is_stratified_and_repeatable(tmp_path):
    counts = {"a": 10, "b": 20, "c": 5}
    root = _make_class_folders(tmp_path / "d", counts, size=(8, 8))

    def split(seed):
        ds = data.load_dataset(str(root), image_size=16, batch_size=8, seed=seed, holdout_fraction=0.2)
        return ds

    ds = split(0)
    assert ds.eval_split_name == "seeded 20% hold-out"
    held = {name: sum(os.sep + name + os.sep in p for p in ds.eval_files) for name in counts}
    assert held == {"a": 2, "b": 4, "c": 1}
    assert not set(ds.train_files) & set(ds.eval_files)
    assert len(ds.train_files) + len(ds.eval_files) == sum(counts.values())
    _, eval_labels = _batches(ds.eval)
    assert np.bincount(eval_labels).tolist() == [2, 4, 1]
    assert split(0).eval_files == ds.eval_files
    assert split(1).eval_files != ds.eval_files


# --------------------------------------------------------------------------------------------------------------- TFDS


def test_tfds_name_offline_fails_fast_naming_alternatives(monkeypatch):
    tfds = pytest.importorskip("tensorflow_datasets")
    if tfds.builder("mnist").is_prepared():
        pytest.skip("mnist is already prepared in the TFDS data folder, so it is available offline")
    if data_tfds._network_reachable():
        monkeypatch.setattr(data_tfds, "_network_reachable", lambda *a, **k: False)  # simulate being offline
    start = time.perf_counter()
    with pytest.raises(DataError) as info:
        data.load_dataset("tfds:mnist", image_size=IMAGE_SIZE, batch_size=4)
    assert time.perf_counter() - start < 30
    message = str(info.value)
    assert "\n" not in message and "offline" in message
    assert "--dataset synthetic" in message and "--dataset /path/to/folder" in message


def test_unknown_name_is_a_clear_error():
    pytest.importorskip("tensorflow_datasets")
    with pytest.raises(DataError, match="neither an existing folder nor a TFDS dataset") as info:
        data.load_dataset("no_such_dataset_xyz", image_size=IMAGE_SIZE, batch_size=4)
    assert "\n" not in str(info.value) and "--dataset synthetic" in str(info.value)
