"""A folder of class folders as a Dataset: the scan and its structural checks, every file decoded once up front (bad
files skipped or an error naming them), the train/test or seeded hold-out split, and the in-memory cache budget."""

from __future__ import annotations

import math
import os
import re
import time

import numpy as np
from absl import logging

from keras_models.backend import tf
from pipeline import augment
from pipeline.data.dataset import DataError, Dataset, TrainSource
from pipeline.data.pipelines import AUTOTUNE, CACHE_BUDGET_BYTES, eval_pipeline, representative_from, train_pipeline
from tflite_export import preprocessing
from tflite_export.files import IMAGE_EXTENSIONS, is_image_file

EVAL_SPLIT_DIRS = ("test", "val", "validation")  # first present wins
# The training cache keeps images shrunk (aspect kept) so their shorter side is at most this times the model size.
TRAIN_CACHE_SCALE = 1.5


def looks_like_path(spec: str) -> bool:
    return os.sep in spec or "/" in spec or spec.startswith((".", "~"))


def _scan_split(split_dir: str) -> dict[str, list[str]]:
    """{class name: sorted image paths} for the class folders of one split; DataError for an empty class folder."""
    try:
        entries = sorted(os.scandir(split_dir), key=lambda e: e.name)
    except OSError as e:
        raise DataError(f"cannot read dataset folder {split_dir}: {e.strerror or e}") from None
    classes = {}
    for entry in entries:
        if entry.name.startswith(".") or not entry.is_dir():
            continue
        files = []
        for dirpath, dirnames, filenames in os.walk(entry.path):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            files.extend(os.path.join(dirpath, f) for f in sorted(filenames) if is_image_file(f))
        if not files:
            raise DataError(
                f"class folder {entry.path} contains no images ({'/'.join(e[1:] for e in IMAGE_EXTENSIONS)}); "
                "add images or remove the folder"
            )
        classes[entry.name] = files
    if not classes:
        loose = any(is_image_file(e.name) for e in entries if e.is_file())
        hint = " (the images must be inside one sub-folder per class)" if loose else ""
        raise DataError(
            f"no images found in {split_dir}: expected {os.path.join(split_dir, '<class>', '*.jpg')} "
            f"(or .jpeg/.png/.bmp/.gif/.webp){hint}"
        )
    return classes


def _check_classes(classes: dict[str, list[str]], where: str) -> None:
    if len(classes) < 2:
        only = next(iter(classes))
        nested = os.path.join(where, only)
        hint = f" (did you mean --dataset {nested}? it has a train/ folder)" if os.path.isdir(
            os.path.join(nested, "train")) else ""
        raise DataError(f"only one class ({only!r}) in {where}: a classifier needs at least 2 class folders{hint}")


def _probe_images(paths: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Decode every file with TensorFlow's own decoders in one parallel tf.data pass, dropping failures
    (`ignore_errors`). Returns (ok mask [N], [h, w] per file, 0 for bad files)."""
    ok = np.zeros(len(paths), bool)
    hw = np.zeros((len(paths), 2), np.int64)
    if not paths:
        return ok, hw

    def probe(index, path):
        # A full decode: libjpeg's scaled (ratio=8) decoding accepts truncated JPEGs that a full decode rejects.
        return index, tf.cast(tf.shape(preprocessing.decode_rgb(tf.io.read_file(path)))[:2], tf.int64)

    ds = tf.data.Dataset.from_tensor_slices((np.arange(len(paths), dtype=np.int64), paths))
    ds = ds.map(probe, num_parallel_calls=AUTOTUNE, deterministic=False).ignore_errors().batch(1024)
    for index, shape in ds.as_numpy_iterator():
        ok[index] = True
        hw[index] = shape
    return ok, hw


def _decode_error(path: str) -> str:
    """Why TensorFlow cannot read `path` (first line of its error), for the report."""
    try:
        preprocessing.decode_rgb(tf.io.read_file(path))
    except (tf.errors.OpError, ValueError) as e:
        message = getattr(e, "message", None) or str(e)
        first = message.strip().splitlines()[0] if message.strip() else ""
        message = re.sub(r"\{\{function_node [^}]*\}\}|\[Op:\w+\].*$", "", first)  # TF's op decoration
        return message.strip()[:200] or type(e).__name__
    return "decoding failed"


def _decode_for_training(path: tf.Tensor, short_side: int) -> tf.Tensor:
    """Read + decode, then shrink (bilinear, aspect kept, never enlarged) so the shorter side is <= short_side."""
    image = preprocessing.decode_rgb(tf.io.read_file(path))
    shape = tf.shape(image)
    h, w = tf.cast(shape[0], tf.float32), tf.cast(shape[1], tf.float32)
    scale = tf.minimum(1.0, short_side / tf.minimum(h, w))

    def shrink():
        new = tf.cast(tf.maximum(1.0, tf.round(tf.stack([h, w]) * scale)), tf.int32)
        resized = tf.image.resize(tf.cast(image, tf.float32), new, method="bilinear", antialias=False)
        return tf.cast(tf.clip_by_value(tf.round(resized), 0.0, 255.0), tf.uint8)

    return tf.cond(scale < 1.0, shrink, lambda: image)


def _holdout(classes: dict[str, list[str]], fraction: float, seed: int) -> tuple[dict, dict]:
    """Stratified split: round(fraction * n) of every class (at least 1, at most n - 1) to evaluation, seeded."""
    train, held = {}, {}
    for k, (name, files) in enumerate(sorted(classes.items())):
        n = len(files)
        n_eval = min(max(int(round(fraction * n)), 1), n - 1) if n >= 2 else 0
        if n_eval == 0:
            logging.warning("class %r has a single image: it goes to training, the hold-out has none of it", name)
        order = np.random.default_rng([seed, k]).permutation(n)
        held[name] = [files[i] for i in sorted(order[:n_eval])]
        train[name] = [files[i] for i in sorted(order[n_eval:])]
    return train, held


SHOWN_SKIPPED = 3  # unreadable files named in the warning; the data set's skipped_files lists them all


def skipped_summary(bad: list[str]) -> str:
    """One line for any number of skipped files: the count and the first few with their decoder's reason."""
    shown = "; ".join(f"{p} ({_decode_error(p)})" for p in bad[:SHOWN_SKIPPED])
    more = f"; and {len(bad) - SHOWN_SKIPPED} more" if len(bad) > SHOWN_SKIPPED else ""
    return f"skipping {len(bad)} unreadable image file(s): {shown}{more}"


def load_folder(root, *, image_size, batch_size, seed, holdout_fraction, on_bad_image) -> Dataset:
    root = os.path.abspath(root)
    if not os.path.exists(root):
        raise DataError(f"dataset folder does not exist: {root}")
    if not os.path.isdir(root):
        raise DataError(f"dataset path is not a folder: {root}")
    train_dir = os.path.join(root, "train")
    eval_dir = next((os.path.join(root, d) for d in EVAL_SPLIT_DIRS if os.path.isdir(os.path.join(root, d))), None)
    if os.path.isdir(train_dir):
        train_classes = _scan_split(train_dir)
        _check_classes(train_classes, train_dir)
        eval_classes = _scan_split(eval_dir) if eval_dir else None
    else:
        if eval_dir:
            raise DataError(f"{root} has a {os.path.basename(eval_dir)}/ folder but no train/ folder")
        train_classes, eval_classes = _scan_split(root), None
        _check_classes(train_classes, root)
    if eval_classes is not None and set(eval_classes) != set(train_classes):
        only_train = sorted(set(train_classes) - set(eval_classes))
        only_eval = sorted(set(eval_classes) - set(train_classes))
        raise DataError(
            f"class folders differ between {train_dir} and {eval_dir}: only in train: {only_train or 'none'}; "
            f"only in {os.path.basename(eval_dir)}: {only_eval or 'none'}"
        )

    # Check every file before anything else, so a bad one never stops training in the middle of an epoch.
    all_paths = [p for files in train_classes.values() for p in files]
    if eval_classes:
        all_paths += [p for files in eval_classes.values() for p in files]
    start = time.perf_counter()
    ok, hw = _probe_images(all_paths)
    logging.info("checked %d image files in %.1f s", len(all_paths), time.perf_counter() - start)
    bad = [p for p, good in zip(all_paths, ok) if not good]
    if bad:
        if on_bad_image == "error":
            more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
            raise DataError(
                f"unreadable image file {bad[0]}: {_decode_error(bad[0])}{more}; "
                "use on_bad_image=skip to skip unreadable files"
            )
        logging.warning("%s", skipped_summary(bad))
    size_of = {p: tuple(s) for p, s, good in zip(all_paths, hw, ok) if good}

    def readable(classes, where):
        kept = {name: [p for p in files if p in size_of] for name, files in classes.items()}
        for name, files in kept.items():
            if not files:
                raise DataError(f"class {name!r} in {where} has no readable images (all its files were skipped)")
        return kept

    train_classes = readable(train_classes, train_dir if os.path.isdir(train_dir) else root)
    if eval_classes is not None:
        eval_classes = readable(eval_classes, eval_dir)
        eval_name = os.path.basename(eval_dir)
    else:
        train_classes, eval_classes = _holdout(train_classes, holdout_fraction, seed)
        eval_name = f"seeded {holdout_fraction * 100:g}% hold-out"

    class_names = sorted(train_classes)
    label_of = {name: i for i, name in enumerate(class_names)}

    def flatten(classes):
        paths = [p for name in class_names for p in classes[name]]
        labels = np.array([label_of[name] for name in class_names for _ in classes[name]], np.int32)
        return paths, labels

    train_paths, train_labels = flatten(train_classes)
    eval_paths, eval_labels = flatten(eval_classes)
    if not eval_paths:
        raise DataError(f"the evaluation split of {root} is empty")

    # Training: decode + shrink once into the in-memory cache when it fits, then shuffle/augment every epoch.
    short_side = int(math.ceil(TRAIN_CACHE_SCALE * image_size))
    train_bytes = sum(_shrunk_bytes(size_of[p], short_side) for p in train_paths)
    files = tf.data.Dataset.from_tensor_slices((train_paths, train_labels))
    decode = lambda p, y: (_decode_for_training(p, short_side), y)  # noqa: E731
    if train_bytes <= CACHE_BUDGET_BYTES:
        images, shuffled = files.map(decode, num_parallel_calls=AUTOTUNE, deterministic=True).cache(), False
    else:
        files = files.shuffle(len(train_paths), seed=seed, reshuffle_each_iteration=True)
        images, shuffled = files.map(decode, num_parallel_calls=AUTOTUNE, deterministic=True), True
    train = train_pipeline(images, len(train_paths), image_size=image_size, batch_size=batch_size, seed=seed,
                            crop_area=augment.TRAIN_CROP_AREA, shuffled=shuffled)
    in_order = tf.data.Dataset.from_tensor_slices((train_paths, train_labels))
    source = TrainSource(
        elements=images if not shuffled else in_order.map(decode, num_parallel_calls=AUTOTUNE, deterministic=True),
        originals=in_order.map(lambda p, y: (preprocessing.decode_rgb(tf.io.read_file(p)), y),
                               num_parallel_calls=AUTOTUNE, deterministic=True),
        labels=train_labels, crop_area=augment.TRAIN_CROP_AREA, batch_size=batch_size, seed=seed)

    # Evaluation: exactly decode_rgb -> eval_resize on the original file; cache the smaller of the two stages.
    decoded_bytes = sum(3 * size_of[p][0] * size_of[p][1] for p in eval_paths)
    resized_bytes = len(eval_paths) * image_size * image_size * 3 * 4
    cache = "decoded" if decoded_bytes <= min(resized_bytes, CACHE_BUDGET_BYTES) else (
        "resized" if resized_bytes <= CACHE_BUDGET_BYTES else "")
    eval_images = tf.data.Dataset.from_tensor_slices((eval_paths, eval_labels)).map(
        lambda p, y: (preprocessing.decode_rgb(tf.io.read_file(p)), y), num_parallel_calls=AUTOTUNE, deterministic=True)
    evaluation = eval_pipeline(eval_images, image_size=image_size, batch_size=batch_size, cache=cache)
    logging.info("folder %s: %d classes, %d train, %d %s; cache: train %s (%.0f MB), eval %s", root, len(class_names),
                 len(train_paths), len(eval_paths), eval_name, train_bytes <= CACHE_BUDGET_BYTES, train_bytes / 2**20,
                 cache or "none")

    train_path_array = np.array(train_paths, dtype=object)

    def representative_images(order):
        return tf.data.Dataset.from_tensor_slices([str(p) for p in train_path_array[order]]).map(
            lambda p: preprocessing.decode_rgb(tf.io.read_file(p)), num_parallel_calls=AUTOTUNE, deterministic=True)

    return Dataset(
        train=train,
        eval=evaluation,
        class_names=class_names,
        num_train=len(train_paths),
        num_eval=len(eval_paths),
        eval_split_name=eval_name,
        skipped_files=bad,
        image_size=image_size,
        train_files=list(train_paths),
        eval_files=list(eval_paths),
        _representative=representative_from(representative_images, len(train_paths), image_size, seed),
        _source=source,
    )


def _shrunk_bytes(hw: tuple[int, int], short_side: int) -> int:
    h, w = hw
    scale = min(1.0, short_side / max(1, min(h, w)))
    return 3 * max(1, round(h * scale)) * max(1, round(w * scale))
