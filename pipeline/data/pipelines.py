"""The tf.data stages every data set is made of: seeded shuffle and augmentation into training batches, the
evaluation resize in a fixed order, and the representative images for int8 calibration."""

from __future__ import annotations

from typing import Iterator

import numpy as np

from keras_models.backend import tf
from pipeline import augment
from tflite_export import preprocessing

AUTOTUNE = tf.data.AUTOTUNE
CACHE_BUDGET_BYTES = 2 * 1024**3  # per split; above it the split is decoded afresh every epoch


def train_pipeline(
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


def eval_pipeline(images: tf.data.Dataset, *, image_size: int, batch_size: int, cache: str = "") -> tf.data.Dataset:
    """(uint8 image, label) -> (eval_resize image, label) batches in order; `cache` = "decoded", "resized" or ""."""
    if cache == "decoded":
        images = images.cache()
    ds = images.map(lambda x, y: (preprocessing.eval_resize(x, image_size), y), num_parallel_calls=AUTOTUNE,
                    deterministic=True)
    if cache == "resized":
        ds = ds.cache()
    return ds.batch(batch_size).prefetch(AUTOTUNE)


def representative_from(images: tf.data.Dataset, n_total: int, image_size: int, seed: int):
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
