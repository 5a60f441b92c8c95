"""What a data set is: the `Dataset` record the loaders return, its training source (from which other pipelines of the
same images are made), the one error kind of bad data sets, and what is done with a Dataset's training batches."""

from __future__ import annotations

import dataclasses
import time
from typing import Callable, Iterator

import numpy as np

from keras_models.backend import tf
from pipeline.data.pipelines import eval_pipeline, train_pipeline

# What the errors of a data set that cannot be loaded suggest instead.
ALTERNATIVES = "use --dataset synthetic or --dataset /path/to/folder"


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
        return eval_pipeline(source.originals, image_size=self.image_size, batch_size=source.batch_size)

    def holdout_slice(self, held: np.ndarray, smallest: int = 2) -> tuple[tf.data.Dataset, tf.data.Dataset]:
        """(training batches of the images not in `held`, evaluation batches of those in it): `held` is a boolean
        mask over the training split in `train_plain`'s order. A recipe makes its choices on the held slice and
        never looks at the evaluation split. The training part is shuffled and augmented like `train`."""
        source = self._require_source()
        mask = tf.constant(np.asarray(held, bool))
        n_held = int(np.sum(held))

        def part(keep_held: bool) -> tf.data.Dataset:
            return source.elements.enumerate().filter(lambda i, _: mask[i] == keep_held).map(lambda _, e: e)

        train = train_pipeline(part(False), self.num_train - n_held, image_size=self.image_size,
                                batch_size=source.batch_size, seed=source.seed, crop_area=source.crop_area)
        return trainable_batches(train, smallest), eval_pipeline(part(True), image_size=self.image_size,
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


def trainable_batches(train: tf.data.Dataset, smallest: int) -> tf.data.Dataset:
    """`train` without its last batch when that holds fewer than `smallest` images (the next epoch reshuffles, so no
    image is left out for good). Training-mode BatchNorm over one image normalizes every value of the last blocks to
    ~0 and pulls the moving statistics towards values no other batch has (the degenerate ranges that give int8 files
    XNNPACK cannot run, tflite_export.verify). Split over several replicas (tf.distribute), a short last batch leaves
    some replica fewer images than BatchNorm needs or none at all ("scale must have the same number of elements as
    the channels of x"), so there `smallest` is the whole batch, as drop_remainder would give."""
    return train.filter(lambda images, labels: tf.shape(images)[0] >= smallest)


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
