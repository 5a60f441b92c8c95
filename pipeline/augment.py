"""Training augmentation: random resized crop and horizontal flip, on the decoded image of
`tflite_export.preprocessing.decode_rgb`; the output is in the same float32 [0, 255] pixels as `eval_resize`'s."""

from __future__ import annotations

from keras_models.backend import tf

# Random-resized-crop area range. ImageNet recipes use (0.08, 1); small images and small data sets lose too much with
# crops that tight, so the default keeps at least a quarter of the picture.
TRAIN_CROP_AREA = (0.25, 1.0)
TRAIN_CROP_ASPECT = (3 / 4, 4 / 3)


def train_augment(
    image: tf.Tensor, size: int, seed: tf.Tensor | None = None, area_range: tuple[float, float] = TRAIN_CROP_AREA
) -> tf.Tensor:
    """uint8 [H, W, 3] -> float32 [size, size, 3]: random resized crop and horizontal flip (Inception-style).

    `area_range` bounds the crop's share of the picture; data sets whose object must stay whole use a milder one.
    """
    if seed is None:
        seed = tf.random.uniform([2], maxval=2**31 - 1, dtype=tf.int32)
    begin, crop_size, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.shape(image),
        bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]),
        seed=seed,
        min_object_covered=0.0,
        aspect_ratio_range=TRAIN_CROP_ASPECT,
        area_range=tuple(area_range),
        max_attempts=10,
        use_image_if_no_bounding_boxes=True,
    )
    image = tf.slice(image, begin, crop_size)
    image = tf.image.resize(tf.cast(image, tf.float32), [size, size], method="bilinear", antialias=False)
    image = tf.image.stateless_random_flip_left_right(image, seed=seed[::-1])
    return tf.ensure_shape(image, [size, size, 3])
