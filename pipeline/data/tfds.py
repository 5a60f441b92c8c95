"""A TensorFlow Datasets set as a Dataset: prepared, downloaded (after a quick network probe) or made from files
downloaded by hand (`--tfds_manual_dir`), its test/validation split or the last part of train for evaluation."""

from __future__ import annotations

import os
import socket
import threading

import numpy as np
from absl import logging

from keras_models.backend import tf
from pipeline import augment
from pipeline.data.dataset import ALTERNATIVES, DataError, Dataset, TrainSource
from pipeline.data.pipelines import AUTOTUNE, CACHE_BUDGET_BYTES, eval_pipeline, representative_from, train_pipeline
from tflite_export.cli import first_line

TFDS_SHUFFLE_BUFFER = 10_000  # images, for TFDS sets too large to cache (a full-size buffer would not fit either)
_NETWORK_PROBE = ("storage.googleapis.com", 443)  # where TFDS downloads most data sets from
_NETWORK_TIMEOUT_S = 5.0


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


def load_tfds(name, *, image_size, batch_size, seed, holdout_fraction, manual_dir=None) -> Dataset:
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
    train = train_pipeline(train_images, num_train, image_size=image_size, batch_size=batch_size, seed=seed,
                            crop_area=augment.TRAIN_CROP_AREA,
                            shuffle_buffer=None if fits(num_train) else TFDS_SHUFFLE_BUFFER)
    evaluation = eval_pipeline(split(eval_split), image_size=image_size, batch_size=batch_size,
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
        _representative=representative_from(representative_images, num_train, image_size, seed),
        _source=TrainSource(train_images, split(train_split), None, augment.TRAIN_CROP_AREA, batch_size, seed),
    )
