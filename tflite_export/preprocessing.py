"""The preprocessing contract shared by evaluation, export calibration, the pipeline and the Android app.

Conventions (the Android `core` module mirrors the evaluation path bit for bit; keep them in step):

* Models built by this project take raw RGB pixels in [0, 255] (the rescaling to [-1, 1] is the model's first layer), so
  the exported uint8 model's input tensor *is* the camera's RGB bytes (scale 1, zero point 0).
* Decoding: JPEGs with libjpeg's accurate integer IDCT (`dct_method="INTEGER_ACCURATE"`), the decoder of browsers
  (Chromium: byte for byte on the test photos), PIL and Android, so evaluation, report figures and golden vectors see
  the pixels a device sees; TensorFlow's default (fast IDCT) differs on ~70% of the bytes (1.3 levels on average, up
  to ~19) and moves scores (BENCHMARKS.md "Decoding JPEGs as devices do").
* Evaluation: decode to RGB uint8 -> `tf.image.central_crop` keeping 87.5% -> bilinear resize with half-pixel centres
  and no antialiasing (`tf.image.resize`) -> float32 pixels in [0, 255]. This is the classic ImageNet/TF-slim evaluation
  crop, the one Google's published accuracy for its reference models is measured with.
* Quantizing an input for an integer model: `q = clamp(round_half_away_from_zero(((p - mean) / std) / scale) + zp)`,
  computed in float32 in that order, which is how TFLite itself rounds (`TfLiteRound`).

Training augmentation, which only the pipeline needs, is `pipeline.augment`.
"""

from __future__ import annotations

import numpy as np

from keras_models.backend import tf

EVAL_CROP_FRACTION = 0.875
# Models built by this project take raw pixels: mean 0, std 1 per channel (the metadata and model card say so).
PIXEL_MEAN = [0.0, 0.0, 0.0]
PIXEL_STD = [1.0, 1.0, 1.0]
# Every value such an input can hold: the int8 input's range, whatever the calibration images span.
PIXEL_RANGE = (0.0, 255.0)


def decode_rgb(encoded: tf.Tensor) -> tf.Tensor:
    """JPEG/PNG/BMP/GIF bytes -> uint8 [H, W, 3]; grayscale is broadcast to RGB and alpha dropped. JPEGs are decoded
    with the accurate IDCT (see the module docstring), for training too: 0.4 ms more per photo, paid once when the
    decoded training set is cached (BENCHMARKS.md)."""
    image = tf.cond(
        tf.io.is_jpeg(encoded),
        lambda: tf.io.decode_jpeg(encoded, channels=3, dct_method="INTEGER_ACCURATE"),
        lambda: tf.io.decode_image(encoded, channels=3, expand_animations=False),
    )
    image.set_shape([None, None, 3])
    return image


def eval_resize(image: tf.Tensor, size: int) -> tf.Tensor:
    """uint8 [H, W, 3] -> float32 [size, size, 3] in [0, 255]: central 87.5% crop, bilinear resize."""
    image = tf.image.central_crop(image, EVAL_CROP_FRACTION)
    image = tf.image.resize(tf.cast(image, tf.float32), [size, size], method="bilinear", antialias=False)
    return image


def round_half_away_from_zero(values: np.ndarray) -> np.ndarray:
    """TFLite's rounding (std::round), unlike numpy's round-half-to-even.

    Decided on the fractional part rather than as floor(|x| + 0.5): the addition rounds 0.49999997f up to 1.0 in
    float32.
    """
    magnitude = np.abs(values)
    whole = np.floor(magnitude)
    return np.sign(values) * np.where(magnitude - whole >= 0.5, whole + 1, whole)


def quantize_input(
    pixels: np.ndarray, *, mean: float, std: float, scale: float, zero_point: int, dtype: np.dtype
) -> np.ndarray:
    """float pixels in [0, 255] -> the integer tensor a quantized model expects (see the module docstring)."""
    pixels = np.asarray(pixels, dtype=np.float32)
    normalized = (pixels - np.float32(mean)) / np.float32(std)
    q = round_half_away_from_zero(normalized / np.float32(scale)) + np.float32(zero_point)
    info = np.iinfo(dtype)
    return np.clip(q, info.min, info.max).astype(dtype)


def dequantize(values: np.ndarray, *, scale: float, zero_point: int) -> np.ndarray:
    return (np.asarray(values, dtype=np.float32) - np.float32(zero_point)) * np.float32(scale)


def load_eval_image(path: str, size: int) -> np.ndarray:
    """One file -> float32 [size, size, 3] pixels, exactly as evaluation and the golden vectors see it. A file that
    cannot be read or decoded (a non-image named .jpg): ValueError naming it."""
    try:
        return eval_resize(decode_rgb(tf.io.read_file(path)), size).numpy()
    except tf.errors.OpError as err:
        detail = (err.message or type(err).__name__).strip().splitlines()[0].split(" [Op:")[0]
        raise ValueError(f"{path}: cannot be read as an image ({detail})") from None
