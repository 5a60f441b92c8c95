"""The built-in synthetic set (`pipeline.synthetic`'s pictures) as a Dataset."""

from __future__ import annotations

import time

import numpy as np
from absl import logging

from keras_models.backend import tf
from pipeline import synthetic
from pipeline.data.dataset import DataError, Dataset, TrainSource
from pipeline.data.pipelines import eval_pipeline, representative_from, train_pipeline

# Random-resized-crop area for the synthetic set: its objects fill part of the picture, and the ImageNet-style range
# (augment.TRAIN_CROP_AREA) could crop a whole object away and leave a wrongly labelled picture.
SYNTHETIC_CROP_AREA = (0.6, 1.0)


def load_synthetic(*, image_size, batch_size, seed, cache_dir, sizes) -> Dataset:
    n_train, n_test = sizes if sizes is not None else synthetic.DEFAULT_SIZES
    if int(n_train) < 1 or int(n_test) < 1:
        raise DataError(f"synthetic_size needs at least one train and one test image; got {sizes}")
    start = time.perf_counter()
    x_train, y_train, x_test, y_test = synthetic.load_or_generate(
        image_size, int(n_train), int(n_test), seed, cache_dir)
    logging.info("synthetic data: %d train + %d test images at %d px in %.1f s", len(x_train), len(x_test), image_size,
                 time.perf_counter() - start)
    elements = tf.data.Dataset.from_tensor_slices((x_train, y_train))
    train = train_pipeline(elements, len(x_train),
                            image_size=image_size, batch_size=batch_size, seed=seed, crop_area=SYNTHETIC_CROP_AREA)
    evaluation = eval_pipeline(tf.data.Dataset.from_tensor_slices((x_test, y_test)), image_size=image_size,
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
        _representative=representative_from(
            lambda order: tf.data.Dataset.from_tensor_slices(x_train[order]), len(x_train), image_size, seed),
        _source=TrainSource(elements, elements, np.asarray(y_train, np.int32), SYNTHETIC_CROP_AREA, batch_size, seed),
    )

