"""The built-in synthetic data set: procedurally drawn shapes and textures, deterministic, no download.

Eight classes, each one object in the middle part of the picture:

    circle, ring, square, triangle, cross   (solid shapes, any rotation, random scale and position)
    horizontal_stripes, vertical_stripes, checkerboard   (a striped/checkered patch, rotation within +-12 degrees)

Foreground and background colours are drawn independently of the class (every channel of the foreground differs from
the background by at least 80 levels, so the object is always visible), the background has a random linear gradient,
one or two thin lines of random colour cross the picture as clutter, and Gaussian pixel noise is added. The mean colour
of a picture therefore says nothing about its class: a model has to look at shape. Objects stay within the central 80%
of the picture (so the 87.5% evaluation crop keeps them) and close enough to the centre that a mild random resized crop
(`data.SYNTHETIC_CROP_AREA`) does not cut them away.

Everything is vectorized numpy; the pictures come out as uint8 [N, S, S, 3] and go through the same tf.data
augmentation/evaluation path as real photos. Same (seed, split, size, count) -> the same bytes.
"""

from __future__ import annotations

import hashlib
import os

import numpy as np

from tflite_export.files import atomic_output

CLASS_NAMES = [
    "circle",
    "ring",
    "square",
    "triangle",
    "cross",
    "horizontal_stripes",
    "vertical_stripes",
    "checkerboard",
]
DEFAULT_SIZES = (4000, 800)  # train, test
VERSION = 1  # bump when the drawing changes, so cached .npz files are not reused
_SPLIT_IDS = {"train": 0, "test": 1}
_CHUNK = 256  # images drawn per vectorized step (bounds memory; part of the determinism contract)


def generate(n: int, image_size: int, seed: int = 0, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """Draw `n` pictures of `image_size` x `image_size`: (uint8 [n, S, S, 3], int32 [n] labels), balanced classes."""
    if split not in _SPLIT_IDS:
        raise ValueError(f"split must be one of {sorted(_SPLIT_IDS)}, got {split!r}")
    n, size = int(n), int(image_size)
    if n < 0 or size < 8:
        raise ValueError(f"need n >= 0 and image_size >= 8, got n={n}, image_size={size}")
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), _SPLIT_IDS[split], VERSION]))
    k = len(CLASS_NAMES)
    labels = rng.permutation(np.arange(n) % k).astype(np.int32)  # balanced to within one image per class

    # Every random parameter is drawn up front, in a fixed order, so chunking does not change the result.
    radius = rng.uniform(0.15, 0.30, n)  # circumscribed radius, in units of the picture side
    radius = np.where(labels >= 5, rng.uniform(0.22, 0.30, n), radius)  # textured patches are larger
    centre = 0.5 + rng.uniform(-0.12, 0.12, (n, 2))
    angle = rng.uniform(0.0, 2 * np.pi, n)
    tilt = np.deg2rad(rng.uniform(-12.0, 12.0, n))
    angle = np.where(labels >= 5, tilt, angle)
    period = rng.uniform(0.09, 0.14, n)  # stripe / checker period, in units of the picture side
    phase = rng.uniform(0.0, 2 * np.pi, (n, 2))
    background = rng.uniform(0.0, 255.0, (n, 3))
    foreground = np.mod(background + rng.uniform(80.0, 176.0, (n, 3)), 256.0)
    gradient = np.stack([rng.uniform(-40.0, 40.0, n), rng.uniform(0.0, 2 * np.pi, n)], axis=1)
    n_lines = rng.integers(1, 3, n)
    lines = np.concatenate(  # per line: offset from the centre, direction, colour (r, g, b)
        [rng.uniform(-0.45, 0.45, (n, 2, 1)), rng.uniform(0.0, np.pi, (n, 2, 1)), rng.uniform(0.0, 255.0, (n, 2, 3))],
        axis=2,
    )
    noise_sigma = rng.uniform(3.0, 12.0, n)

    images = np.empty((n, size, size, 3), np.uint8)
    coords = (np.arange(size, dtype=np.float32) + 0.5) / size
    for start in range(0, n, _CHUNK):
        sl = slice(start, min(start + _CHUNK, n))
        m = sl.stop - sl.start
        noise = rng.standard_normal((m, size, size, 3), dtype=np.float32)
        images[sl] = _draw(
            size, coords, labels[sl], radius[sl], centre[sl], angle[sl], period[sl], phase[sl], background[sl],
            foreground[sl], gradient[sl], n_lines[sl], lines[sl],
            noise * noise_sigma[sl, None, None, None].astype(np.float32),
        )
    return images, labels


def _col(values: np.ndarray) -> np.ndarray:
    """[m] -> float32 [m, 1, 1] for broadcasting against [m, S, S] grids."""
    return np.asarray(values, np.float32)[:, None, None]


def _draw(size, coords, labels, radius, centre, angle, period, phase, background, foreground, gradient, n_lines, lines,
          noise):
    m = len(labels)
    x = coords[None, None, :]  # [1, 1, S]
    y = coords[None, :, None]  # [1, S, 1]
    px = np.float32(size)  # signed distances (picture units) * px = distance in pixels -> 1-pixel anti-aliased edges

    # Background: colour + linear gradient + thin clutter lines.
    g_amp, g_dir = _col(gradient[:, 0]), _col(gradient[:, 1])
    ramp = g_amp * ((x - 0.5) * np.cos(g_dir) + (y - 0.5) * np.sin(g_dir))  # [m, S, S]
    canvas = np.asarray(background, np.float32)[:, None, None, :] + ramp[..., None]
    for j in range(2):
        offset, theta = _col(lines[:, j, 0]), _col(lines[:, j, 1])
        dist = np.abs((x - 0.5) * -np.sin(theta) + (y - 0.5) * np.cos(theta) - offset)
        alpha = np.clip(0.6 - dist * px, 0.0, 1.0) * _col(j < n_lines)
        colour = np.asarray(lines[:, j, 2:5], np.float32)[:, None, None, :]
        canvas += alpha[..., None] * (colour - canvas)

    # Object: a signed distance (negative inside) per class, rotated coordinates (u, v) around the centre.
    dx, dy = x - _col(centre[:, 0]), y - _col(centre[:, 1])
    cos, sin = np.cos(_col(angle)), np.sin(_col(angle))
    u, v = cos * dx + sin * dy, -sin * dx + cos * dy
    r = _col(radius)
    rho = np.sqrt(dx * dx + dy * dy)
    half = r / np.float32(np.sqrt(2.0))  # half side of a square whose circumscribed radius is r
    alpha = np.zeros((m, size, size), np.float32)

    def edge(sdf):
        return np.clip(0.5 - sdf * px, 0.0, 1.0)

    for c, name in enumerate(CLASS_NAMES):
        sel = labels == c
        if not sel.any():
            continue
        rs, us, vs, rhos, hs = r[sel], u[sel], v[sel], rho[sel], half[sel]
        if name == "circle":
            sdf = rhos - rs
        elif name == "ring":
            sdf = np.abs(rhos - 0.72 * rs) - 0.28 * rs
        elif name == "square":
            sdf = np.maximum(np.abs(us), np.abs(vs)) - hs
        elif name == "triangle":  # equilateral, circumradius r (inradius r / 2)
            sdf = None
            for k in range(3):
                a = np.float32(np.pi / 2 + k * 2 * np.pi / 3)
                d = us * np.cos(a) + vs * np.sin(a)
                sdf = d if sdf is None else np.maximum(sdf, d)
            sdf = sdf - 0.5 * rs
        elif name == "cross":
            arm, width = 0.95 * rs, 0.27 * rs
            au, av = np.abs(us), np.abs(vs)
            sdf = np.minimum(np.maximum(au - arm, av - width), np.maximum(au - width, av - arm))
        else:  # textured square patch; the texture, not the patch outline, carries the class
            p = _col(period[sel])
            wave_u = np.sin(2 * np.pi * us / p + _col(phase[sel, 0]))
            wave_v = np.sin(2 * np.pi * vs / p + _col(phase[sel, 1]))
            if name == "horizontal_stripes":
                wave = wave_v
            elif name == "vertical_stripes":
                wave = wave_u
            else:
                wave = wave_u * wave_v
            inside = edge(np.maximum(np.abs(us), np.abs(vs)) - hs)
            alpha[sel] = inside * np.clip(0.5 + wave * (p / (2 * np.pi)) * px, 0.0, 1.0)
            continue
        alpha[sel] = edge(sdf)

    fg = np.asarray(foreground, np.float32)[:, None, None, :]
    canvas += alpha[..., None] * (fg - canvas)
    canvas += noise
    return np.clip(np.rint(canvas), 0, 255).astype(np.uint8)


def load_or_generate(
    image_size: int, n_train: int, n_test: int, seed: int = 0, cache_dir: str | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(train_images, train_labels, test_images, test_labels); cached as .npz in `cache_dir` when given."""
    path = None
    if cache_dir:
        key = f"v{VERSION}-s{image_size}-n{n_train}-{n_test}-seed{seed}"
        digest = hashlib.sha1(key.encode()).hexdigest()[:8]
        path = os.path.join(os.path.expanduser(cache_dir), f"synthetic-{key}-{digest}.npz")
        if os.path.exists(path):
            try:
                with np.load(path) as z:
                    return z["x_train"], z["y_train"], z["x_test"], z["y_test"]
            except (OSError, ValueError, KeyError):
                pass  # unreadable cache: draw again and overwrite
    x_train, y_train = generate(n_train, image_size, seed, "train")
    x_test, y_test = generate(n_test, image_size, seed, "test")
    if path:
        with atomic_output(path) as tmp, open(tmp, "wb") as f:  # a concurrent reader never sees half a file
            np.savez(f, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    return x_train, y_train, x_test, y_test
