"""Data sets for training and evaluation: the built-in synthetic set, a folder of images, or a TFDS name.

    ds = load_dataset("synthetic" | "/path/to/folder" | "tfds:NAME" | "NAME", image_size=96, batch_size=64, seed=0)
    model.fit(ds.train, validation_data=ds.eval, epochs=...)        # no .repeat(): one pass = one epoch
    converter.representative_dataset = lambda: ds.representative(200)

Every image goes through `tflite_export.preprocessing` (decode_rgb, eval_resize) and `pipeline.augment`
(train_augment), float32 pixels in [0, 255]; labels are int32 class indices into `class_names`.

Folder layout: `ROOT/<class>/*.{jpg,jpeg,png,bmp,gif,webp}` (any case, sub-folders of a class folder included), or
the same under `ROOT/train/` plus `ROOT/test/` or `ROOT/val/` (`validation/` also accepted; test wins when both exist).
Without a test/val folder a seeded, stratified hold-out of `holdout_fraction` of every class is the evaluation split.
Every file is decoded once by TensorFlow's own decoders before anything else (one parallel tf.data pass: 0.8 s for
the 398 hymenoptera photos, 12 s for 60k CIFAR-10 JPEGs on 2 cores), so an unreadable file is reported up front -
skipped with a warning naming the path (`on_bad_image="skip"`) or a DataError naming it (`"error"`) - and never stops
training mid-epoch. Structural problems (missing folder, no images,
an empty class folder, a single class, different classes in train and val) are one-line DataErrors.

tf.data: parallel decode (AUTOTUNE), an in-memory cache of decoded images (training: shrunk so the shorter side is at
most 1.5x the model size; evaluation: whichever of decoded or resized is smaller) when the estimated size fits
`CACHE_BUDGET_BYTES`, seeded shuffling and seeded per-image augmentation (runs with the same seed see the same batches),
deterministic evaluation order, prefetch.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import socket
import threading
import time
from typing import Callable, Iterator

import numpy as np
from absl import logging

from keras_models.backend import tf
from pipeline import augment, synthetic
from pipeline.config import MIN_BATCH_SIZE
from tflite_export import preprocessing
from tflite_export.cli import first_line
from tflite_export.files import IMAGE_EXTENSIONS, is_image_file

AUTOTUNE = tf.data.AUTOTUNE
EVAL_SPLIT_DIRS = ("test", "val", "validation")  # first present wins
ON_BAD_IMAGE = ("skip", "error")
# The training cache keeps images shrunk (aspect kept) so their shorter side is at most this times the model size.
TRAIN_CACHE_SCALE = 1.5
CACHE_BUDGET_BYTES = 2 * 1024**3  # per split; above it the split is decoded afresh every epoch
# Random-resized-crop area for the synthetic set: its objects fill part of the picture, and the ImageNet-style range
# (augment.TRAIN_CROP_AREA) could crop a whole object away and leave a wrongly labelled picture.
SYNTHETIC_CROP_AREA = (0.6, 1.0)
ALTERNATIVES = "use --dataset synthetic or --dataset /path/to/folder"
TFDS_SHUFFLE_BUFFER = 10_000  # images, for TFDS sets too large to cache (a full-size buffer would not fit either)
_NETWORK_PROBE = ("storage.googleapis.com", 443)  # where TFDS downloads most data sets from
_NETWORK_TIMEOUT_S = 5.0


class DataError(ValueError):
    """A problem with the data set the user asked for; the message is one line, meant for the user."""


@dataclasses.dataclass
class Dataset:
    train: tf.data.Dataset  # (float32 [B, S, S, 3] in [0, 255], int32 [B]); augmented, seeded shuffle, no repeat
    eval: tf.data.Dataset  # same element spec; eval_resize, deterministic order
    class_names: list[str]
    num_train: int
    num_eval: int
    eval_split_name: str
    skipped_files: list[str]
    image_size: int = 0
    train_files: list[str] = dataclasses.field(default_factory=list, repr=False)  # folder data sets: paths in label
    eval_files: list[str] = dataclasses.field(default_factory=list, repr=False)  # order (class by class, sorted)
    _representative: Callable[[int], Iterator[np.ndarray]] | None = dataclasses.field(default=None, repr=False)
    _source: TrainSource | None = dataclasses.field(default=None, repr=False)

    def representative(self, n: int) -> Iterator[np.ndarray]:
        """min(n, num_train) float32 [1, S, S, 3] evaluation-preprocessed training images (seeded order, all classes
        mixed), for int8 calibration."""
        if self._representative is None:
            raise DataError("this Dataset has no representative images")
        return self._representative(int(n))

    @property
    def train_labels(self) -> np.ndarray | None:
        """The training split's labels in the order of `train_plain`, when known without reading the images (folder
        and synthetic sets; None for TFDS)."""
        return None if self._source is None else self._source.labels

    def train_plain(self) -> tf.data.Dataset:
        """The training split with the evaluation preprocessing (no augmentation), batched, in a fixed order: what a
        frozen backbone's features of the training images are computed from."""
        source = self._require_source()
        return _eval_pipeline(source.originals, image_size=self.image_size, batch_size=source.batch_size)

    def holdout_slice(self, held: np.ndarray, smallest: int = 2) -> tuple[tf.data.Dataset, tf.data.Dataset]:
        """(training batches of the images not in `held`, evaluation batches of those in it): `held` is a boolean
        mask over the training split in `train_plain`'s order. A recipe makes its choices on the held slice and
        never looks at the evaluation split. The training part is shuffled and augmented like `train`."""
        source = self._require_source()
        mask = tf.constant(np.asarray(held, bool))
        n_held = int(np.sum(held))

        def part(keep_held: bool) -> tf.data.Dataset:
            return source.elements.enumerate().filter(lambda i, _: mask[i] == keep_held).map(lambda _, e: e)

        train = _train_pipeline(part(False), self.num_train - n_held, image_size=self.image_size,
                                batch_size=source.batch_size, seed=source.seed, crop_area=source.crop_area)
        return trainable_batches(train, smallest), _eval_pipeline(part(True), image_size=self.image_size,
                                                                  batch_size=source.batch_size)

    def _require_source(self) -> TrainSource:
        if self._source is None:
            raise DataError("this Dataset cannot be re-read (it was made without its training source)")
        return self._source


@dataclasses.dataclass(frozen=True)
class TrainSource:
    """What a data set's training pipeline is made of, so that other pipelines can be made from it."""

    elements: tf.data.Dataset  # (uint8 [H, W, 3] image, int32 label), unbatched, fixed order (cached when it fits)
    originals: tf.data.Dataset  # the same images as decoded from their files (folder sets cache shrunk copies)
    labels: np.ndarray | None  # in that order, when known without reading the images
    crop_area: tuple[float, float]
    batch_size: int
    seed: int


def load_dataset(
    spec: str,
    *,
    image_size: int,
    batch_size: int,
    seed: int = 0,
    holdout_fraction: float = 0.2,
    on_bad_image: str = "skip",
    cache_dir: str | None = None,
    synthetic_size: tuple[int, int] | None = None,
    tfds_manual_dir: str | None = None,
    replicas: int = 1,
) -> Dataset:
    """`spec`: "synthetic", a folder path, "tfds:NAME", or a bare TFDS name that is not an existing path.
    `tfds_manual_dir`: where the files of a TFDS set that is downloaded by hand are (tfds:imagenet2012). `replicas`:
    the devices each training batch is split over (`trainable_batches`)."""
    dataset = _load(spec, image_size=image_size, batch_size=batch_size, seed=seed, holdout_fraction=holdout_fraction,
                    on_bad_image=on_bad_image, cache_dir=cache_dir, synthetic_size=synthetic_size,
                    tfds_manual_dir=tfds_manual_dir)
    smallest = int(batch_size) if replicas > 1 else MIN_BATCH_SIZE
    if dataset.num_train < smallest:
        raise DataError(f"{spec} has {dataset.num_train} training images, not one full batch of --batch_size "
                        f"{batch_size} to split over {replicas} replicas: use more images or a smaller --batch_size")
    dataset.train = trainable_batches(dataset.train, smallest)
    return dataset


def trainable_batches(train: tf.data.Dataset, smallest: int) -> tf.data.Dataset:
    """`train` without its last batch when that holds fewer than `smallest` images (the next epoch reshuffles, so no
    image is left out for good). Training-mode BatchNorm over one image normalizes every value of the last blocks to
    ~0 and pulls the moving statistics towards values no other batch has (the degenerate ranges that give int8 files
    XNNPACK cannot run, tflite_export.verify). Split over several replicas (tf.distribute), a short last batch leaves
    some replica fewer images than BatchNorm needs or none at all ("scale must have the same number of elements as
    the channels of x"), so there `smallest` is the whole batch, as drop_remainder would give."""
    return train.filter(lambda images, labels: tf.shape(images)[0] >= smallest)


def _load(spec: str, *, image_size: int, batch_size: int, seed: int, holdout_fraction: float, on_bad_image: str,
          cache_dir: str | None, synthetic_size: tuple[int, int] | None, tfds_manual_dir: str | None) -> Dataset:
    if on_bad_image not in ON_BAD_IMAGE:
        raise DataError(f"on_bad_image must be one of {', '.join(ON_BAD_IMAGE)}; got {on_bad_image!r}")
    if int(image_size) < 8 or int(batch_size) < 1:
        raise DataError(
            f"need image_size >= 8 and batch_size >= 1; got image_size={image_size}, batch_size={batch_size}")
    if not 0.0 < float(holdout_fraction) < 1.0:
        raise DataError(f"holdout_fraction must be between 0 and 1; got {holdout_fraction}")
    spec = str(spec).strip()
    if not spec:
        raise DataError(f"empty --dataset; {ALTERNATIVES}")
    kwargs = dict(image_size=int(image_size), batch_size=int(batch_size), seed=int(seed))
    if spec.lower() == "synthetic":
        return _load_synthetic(cache_dir=cache_dir, sizes=synthetic_size, **kwargs)
    tfds_kwargs = dict(holdout_fraction=float(holdout_fraction), manual_dir=tfds_manual_dir, **kwargs)
    if spec.lower().startswith("tfds:"):
        return _load_tfds(spec[5:], **tfds_kwargs)
    path = os.path.expanduser(spec)
    if os.path.exists(path) or _looks_like_path(spec):
        return _load_folder(path, holdout_fraction=float(holdout_fraction), on_bad_image=on_bad_image, **kwargs)
    return _load_tfds(spec, **tfds_kwargs)


def input_pipeline_throughput(ds: tf.data.Dataset, batches: int = 20) -> float:
    """Images per second of iterating `ds` alone (no model): one warm-up batch, then `batches` timed batches
    (starting a new pass over `ds` if it runs out). For a cached training set the warm-up batch fills the shuffle
    buffer, i.e. decodes the whole set, so the timed part is the steady state (cache -> augment -> batch); sets too big
    to cache are timed with their decoding."""
    iterator = iter(ds)
    if next(iterator, None) is None:
        raise DataError("cannot measure the input pipeline: the dataset is empty")
    images, done = 0, 0
    start = time.perf_counter()
    while done < batches:
        try:
            element = next(iterator)
        except StopIteration:
            iterator = iter(ds)
            continue
        first = element[0] if isinstance(element, (tuple, list)) else element
        images += int(first.shape[0])
        done += 1
    return images / max(time.perf_counter() - start, 1e-9)


# ---------------------------------------------------------------------------------------------------- tf.data helpers


def _train_pipeline(
    images: tf.data.Dataset, n: int, *, image_size: int, batch_size: int, seed: int, crop_area, shuffled: bool = False,
    shuffle_buffer: int | None = None,
) -> tf.data.Dataset:
    """(uint8 image, label) elements -> shuffled (unless already), augmented, batched, prefetched training batches.

    The shuffle order and the per-image augmentation seeds both come from `seed`: a given seed gives the same sequence
    of batches on every run, and each epoch (each new pass) is shuffled and augmented differently."""
    if not shuffled:
        images = images.shuffle(max(1, shuffle_buffer or n), seed=seed, reshuffle_each_iteration=True)
    seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2, drop_remainder=True)
    ds = tf.data.Dataset.zip((images, seeds))
    ds = ds.map(
        lambda element, s: (augment.train_augment(element[0], image_size, s, crop_area),
                            element[1]),
        num_parallel_calls=AUTOTUNE,
        deterministic=True,
    )
    return ds.batch(batch_size).prefetch(AUTOTUNE)


def _eval_pipeline(images: tf.data.Dataset, *, image_size: int, batch_size: int, cache: str = "") -> tf.data.Dataset:
    """(uint8 image, label) -> (eval_resize image, label) batches in order; `cache` = "decoded", "resized" or ""."""
    if cache == "decoded":
        images = images.cache()
    ds = images.map(lambda x, y: (preprocessing.eval_resize(x, image_size), y), num_parallel_calls=AUTOTUNE,
                    deterministic=True)
    if cache == "resized":
        ds = ds.cache()
    return ds.batch(batch_size).prefetch(AUTOTUNE)


def _representative_from(images: tf.data.Dataset, n_total: int, image_size: int, seed: int):
    """A `representative(n)` over uint8 images indexed by a tf.data.Dataset of (index -> image) built on demand."""

    def representative(n: int) -> Iterator[np.ndarray]:
        order = np.random.default_rng(seed).permutation(n_total)[: max(0, min(n, n_total))]
        if len(order) == 0:
            return
        ds = images(order).map(lambda x: preprocessing.eval_resize(x, image_size)[None], num_parallel_calls=AUTOTUNE,
                               deterministic=True)
        for x in ds.prefetch(AUTOTUNE).as_numpy_iterator():
            yield x.astype(np.float32)

    return representative


# ---------------------------------------------------------------------------------------------------------- synthetic


def _load_synthetic(*, image_size, batch_size, seed, cache_dir, sizes) -> Dataset:
    n_train, n_test = sizes if sizes is not None else synthetic.DEFAULT_SIZES
    if int(n_train) < 1 or int(n_test) < 1:
        raise DataError(f"synthetic_size needs at least one train and one test image; got {sizes}")
    start = time.perf_counter()
    x_train, y_train, x_test, y_test = synthetic.load_or_generate(
        image_size, int(n_train), int(n_test), seed, cache_dir)
    logging.info("synthetic data: %d train + %d test images at %d px in %.1f s", len(x_train), len(x_test), image_size,
                 time.perf_counter() - start)
    elements = tf.data.Dataset.from_tensor_slices((x_train, y_train))
    train = _train_pipeline(elements, len(x_train),
                            image_size=image_size, batch_size=batch_size, seed=seed, crop_area=SYNTHETIC_CROP_AREA)
    evaluation = _eval_pipeline(tf.data.Dataset.from_tensor_slices((x_test, y_test)), image_size=image_size,
                                batch_size=batch_size)
    return Dataset(
        train=train,
        eval=evaluation,
        class_names=list(synthetic.CLASS_NAMES),
        num_train=len(x_train),
        num_eval=len(x_test),
        eval_split_name="synthetic test",
        skipped_files=[],
        image_size=image_size,
        _representative=_representative_from(
            lambda order: tf.data.Dataset.from_tensor_slices(x_train[order]), len(x_train), image_size, seed),
        _source=TrainSource(elements, elements, np.asarray(y_train, np.int32), SYNTHETIC_CROP_AREA, batch_size, seed),
    )


# ------------------------------------------------------------------------------------------------------------- folder


def _looks_like_path(spec: str) -> bool:
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


def _load_folder(root, *, image_size, batch_size, seed, holdout_fraction, on_bad_image) -> Dataset:
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
    train = _train_pipeline(images, len(train_paths), image_size=image_size, batch_size=batch_size, seed=seed,
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
    evaluation = _eval_pipeline(eval_images, image_size=image_size, batch_size=batch_size, cache=cache)
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
        _representative=_representative_from(representative_images, len(train_paths), image_size, seed),
        _source=source,
    )


def _shrunk_bytes(hw: tuple[int, int], short_side: int) -> int:
    h, w = hw
    scale = min(1.0, short_side / max(1, min(h, w)))
    return 3 * max(1, round(h * scale)) * max(1, round(w * scale))


# --------------------------------------------------------------------------------------------------------------- TFDS


def _network_reachable(address=_NETWORK_PROBE, timeout: float = _NETWORK_TIMEOUT_S) -> bool:
    """Can we open a TCP connection to TFDS's download host within `timeout` (name lookup included)?"""
    result = []

    def attempt():
        try:
            socket.create_connection(address, timeout=timeout).close()
            result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=attempt, daemon=True)  # getaddrinfo has no timeout of its own
    thread.start()
    thread.join(timeout + 1.0)
    return bool(result and result[0])


def _prepare_from_manual_dir(builder, name: str, manual_dir: str | None) -> None:
    """Prepare a TFDS set from files the user downloaded (ImageNet's licence requires that): TFDS reads them from
    `manual_dir` and writes its record files to its data dir (TFDS_DATA_DIR) once; later runs only read those."""
    import tensorflow_datasets as tfds

    if not manual_dir:
        raise DataError(f"TFDS dataset {name!r} is downloaded by hand and is not prepared in {builder.data_dir}: "
                        "download its files (for imagenet2012, ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar "
                        "from image-net.org) into a folder and pass it as --tfds_manual_dir")
    manual_dir = os.path.expanduser(manual_dir)
    if not os.path.isdir(manual_dir):
        raise DataError(f"--tfds_manual_dir {manual_dir} is not a folder")
    logging.info("preparing TFDS dataset %s from %s into %s (once)", name, manual_dir, builder.data_dir)
    try:
        builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
    except Exception as e:  # noqa: BLE001 - missing or broken files fail in many ways; users get the first line
        raise DataError(f"could not prepare TFDS dataset {name!r} from --tfds_manual_dir {manual_dir}: "
                        f"{first_line(e, 300)}") from None


def _load_tfds(name, *, image_size, batch_size, seed, holdout_fraction, manual_dir=None) -> Dataset:
    name = name.strip()
    if not name:
        raise DataError(f"missing TFDS dataset name after 'tfds:'; {ALTERNATIVES}")
    try:
        import tensorflow_datasets as tfds
    except ImportError:
        raise DataError(f"tensorflow-datasets is not installed, so {name!r} cannot be loaded; {ALTERNATIVES}") from None
    try:
        builder = tfds.builder(name)
    except Exception as e:  # noqa: BLE001 - DatasetNotFoundError lists every data set: keep only its first line
        raise DataError(
            f"{name!r} is neither an existing folder nor a TFDS dataset ({first_line(e)}); {ALTERNATIVES}") from None
    if not builder.is_prepared() and (manual_dir or builder.MANUAL_DOWNLOAD_INSTRUCTIONS):
        _prepare_from_manual_dir(builder, name, manual_dir)
    elif not builder.is_prepared():
        # tfds would retry an unreachable download host for minutes; find out in seconds instead.
        if not _network_reachable():
            raise DataError(
                f"TFDS dataset {name!r} is not available offline (not prepared in {builder.data_dir} and no network "
                f"to download it); {ALTERNATIVES}"
            )
        try:
            builder.download_and_prepare()
        except Exception as e:  # noqa: BLE001 - downloads fail in many ways; users get the first line of any
            raise DataError(f"could not download TFDS dataset {name!r}: {first_line(e, 300)}; {ALTERNATIVES}") from None
    info = builder.info
    keys = info.supervised_keys
    if not keys or len(keys) != 2:
        raise DataError(f"TFDS dataset {name!r} has no (image, label) supervised keys; {ALTERNATIVES}")
    image_key, label_key = keys
    label_feature = info.features[label_key]
    class_names = list(getattr(label_feature, "names", None) or [])
    if len(class_names) < 2:
        raise DataError(f"TFDS dataset {name!r} is not an image classification set with class names")
    image_feature = info.features[image_key]
    channels = (getattr(image_feature, "shape", None) or (None, None, 3))[-1]
    splits = dict(info.splits)
    if "train" not in splits:
        raise DataError(f"TFDS dataset {name!r} has no 'train' split (it has {sorted(splits)})")
    eval_split = next((s for s in ("test", "validation") if s in splits), None)
    if eval_split:
        train_split, eval_name = "train", eval_split
    else:
        cut = int(round(100 * (1 - holdout_fraction)))
        train_split, eval_split = f"train[:{cut}%]", f"train[{cut}%:]"
        eval_name = f"last {100 - cut}% of train"
    num_train = int(info.splits[train_split].num_examples)
    num_eval = int(info.splits[eval_split].num_examples)

    def rgb(image, label):
        if channels == 1:
            image = tf.image.grayscale_to_rgb(image)
        elif channels == 4:
            image = image[..., :3]
        return image, tf.cast(label, tf.int32)

    def split(which):
        ds = builder.as_dataset(split=which, as_supervised=True, shuffle_files=False)
        return ds.map(rgb, num_parallel_calls=AUTOTUNE)

    image_bytes = 3 * int(np.prod([d or image_size for d in (image_feature.shape or (image_size, image_size))[:2]]))
    fits = lambda n: n * image_bytes <= CACHE_BUDGET_BYTES  # noqa: E731
    train_images = split(train_split)
    if fits(num_train):
        train_images = train_images.cache()
    train = _train_pipeline(train_images, num_train, image_size=image_size, batch_size=batch_size, seed=seed,
                            crop_area=augment.TRAIN_CROP_AREA,
                            shuffle_buffer=None if fits(num_train) else TFDS_SHUFFLE_BUFFER)
    evaluation = _eval_pipeline(split(eval_split), image_size=image_size, batch_size=batch_size,
                                cache="decoded" if fits(num_eval) else "")

    def representative_images(order):
        # The first images of a seeded shuffle (1000-image buffer) of the training split.
        return split(train_split).shuffle(1000, seed=seed, reshuffle_each_iteration=False).take(len(order)).map(
            lambda x, y: x)

    return Dataset(
        train=train,
        eval=evaluation,
        class_names=class_names,
        num_train=num_train,
        num_eval=num_eval,
        eval_split_name=eval_name,
        skipped_files=[],
        image_size=image_size,
        _representative=_representative_from(representative_images, num_train, image_size, seed),
        _source=TrainSource(train_images, split(train_split), None, augment.TRAIN_CROP_AREA, batch_size, seed),
    )
