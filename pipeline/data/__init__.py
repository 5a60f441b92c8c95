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

The parts, one module each:

- `dataset`: the `Dataset` and `TrainSource` records, `DataError`, `trainable_batches`, `input_pipeline_throughput`;
- `pipelines`: the tf.data stages (training augmentation, evaluation resize, representative images), the cache budget;
- `synthetic_set`, `folder`, `tfds`: the three kinds of data set, each loaded into a `Dataset`;
- this module: `load_dataset`, which checks the arguments, picks the loader and drops unusable last batches.
"""

from __future__ import annotations

import os

from pipeline.config import MIN_BATCH_SIZE
from pipeline.data.dataset import (
    ALTERNATIVES,
    DataError,
    Dataset,
    TrainSource,
    input_pipeline_throughput,
    trainable_batches,
)
from pipeline.data.folder import (
    EVAL_SPLIT_DIRS,
    SHOWN_SKIPPED,
    TRAIN_CACHE_SCALE,
    load_folder,
    looks_like_path,
    skipped_summary,
)
from pipeline.data.pipelines import AUTOTUNE, CACHE_BUDGET_BYTES
from pipeline.data.synthetic_set import SYNTHETIC_CROP_AREA, load_synthetic
from pipeline.data.tfds import TFDS_SHUFFLE_BUFFER, load_tfds

ON_BAD_IMAGE = ("skip", "error")
__all__ = [
    "ALTERNATIVES", "AUTOTUNE", "CACHE_BUDGET_BYTES", "EVAL_SPLIT_DIRS", "ON_BAD_IMAGE", "SHOWN_SKIPPED",
    "SYNTHETIC_CROP_AREA", "TFDS_SHUFFLE_BUFFER", "TRAIN_CACHE_SCALE", "DataError", "Dataset", "TrainSource",
    "input_pipeline_throughput", "load_dataset", "skipped_summary", "trainable_batches",
]


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
        return load_synthetic(cache_dir=cache_dir, sizes=synthetic_size, **kwargs)
    tfds_kwargs = dict(holdout_fraction=float(holdout_fraction), manual_dir=tfds_manual_dir, **kwargs)
    if spec.lower().startswith("tfds:"):
        return load_tfds(spec[5:], **tfds_kwargs)
    path = os.path.expanduser(spec)
    if os.path.exists(path) or looks_like_path(spec):
        return load_folder(path, holdout_fraction=float(holdout_fraction), on_bad_image=on_bad_image, **kwargs)
    return load_tfds(spec, **tfds_kwargs)
