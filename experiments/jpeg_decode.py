"""What decoding JPEGs as devices do (libjpeg's accurate IDCT, `dct_method="INTEGER_ACCURATE"`) changes, against
TensorFlow's default (fast IDCT), which the pipeline used before.

    nice -n 10 python -m experiments.jpeg_decode [--hymenoptera_run RUN_DIR] [--rounds 3] [--json OUT]

1. Accuracy: the int8 top-1 the project reports, with each decoder, on the same photos and files:
   imagenet-samples (1,000 photos) with the app's bundled ImageNet model and Google's published V3-Small, and
   hymenoptera_data's val split (153 photos) with the int8 model of a hymenoptera run (README "Your own images"), when
   given. Also how many photos change their top-1 and how far the top-1 score moves.
2. Pixels: the share of decoded bytes that differ between the two decoders.
3. Speed: every hymenoptera JPEG decoded by both, alternating per file, `--rounds` times (training decodes each
   photo once into its cache, so this is the whole cost the choice can have).
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from bench import _common
from bench.imagenet_import import paired_difference
from keras_models import backend  # noqa: F401  (before TensorFlow)
from keras_models.backend import tf

DECODERS = ("fast", "accurate")


def decode(data: tf.Tensor, decoder: str) -> tf.Tensor:
    if decoder == "fast":  # TensorFlow's default, what tf.io.decode_image does
        return tf.io.decode_image(data, channels=3, expand_animations=False)
    from tflite_export.preprocessing import decode_rgb

    return decode_rgb(data)


def pixels_and_diff(paths: list[str], size: int) -> tuple[dict[str, np.ndarray], float]:
    from tflite_export.preprocessing import eval_resize

    pixels = {d: [] for d in DECODERS}
    differing = total = 0
    for path in paths:
        data = tf.io.read_file(path)
        decoded = {d: decode(data, d) for d in DECODERS}
        differing += int(tf.reduce_sum(tf.cast(decoded["fast"] != decoded["accurate"], tf.int64)))
        total += int(tf.size(decoded["fast"]))
        for d in DECODERS:
            pixels[d].append(eval_resize(decoded[d], size).numpy())
    return {d: np.stack(p) for d, p in pixels.items()}, differing / total


def score(model: str, pixels: dict[str, np.ndarray], truth: np.ndarray, offset: int) -> dict:
    from tflite_export.export import run_tflite

    outputs = {d: run_tflite(model, pixels[d], pixel_bytes=True) for d in DECODERS}
    top1 = {d: outputs[d].argmax(-1) - offset for d in DECODERS}
    # accurate - fast, with a 95% interval from the photos only one decoder gets right
    paired = paired_difference(top1["fast"] == truth, top1["accurate"] == truth)
    best = outputs["accurate"].argmax(-1)
    moved = np.abs(outputs["accurate"][np.arange(len(best)), best] - outputs["fast"][np.arange(len(best)), best])
    return {**{f"top1_{d}": float(np.mean(top1[d] == truth)) for d in DECODERS},
            "top1_changed": int(np.sum(top1["fast"] != top1["accurate"])), "interval_95": paired["interval_95"],
            "score_move_median": float(np.median(moved)), "score_move_max": float(moved.max()), "images": len(truth)}


def decode_speed(paths: list[str], rounds: int) -> dict[str, float]:
    data = [tf.io.read_file(p) for p in paths]
    seconds = {d: 0.0 for d in DECODERS}
    for r in range(rounds):
        for i, blob in enumerate(data):
            for d in (DECODERS if (i + r) % 2 == 0 else DECODERS[::-1]):
                start = time.perf_counter()
                decode(blob, d)
                seconds[d] += time.perf_counter() - start
    return {d: 1e3 * s / (rounds * len(paths)) for d, s in seconds.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hymenoptera_run", help="a hymenoptera_data run folder (its model.tflite is scored)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json")
    args = parser.parse_args()
    from tflite_export.demo import BUNDLED_MODEL
    from tflite_export.evaluate import discover_dataset

    results, rows = {}, []
    samples = discover_dataset(_common.shared_path("datasets", "imagenet-samples")).items
    pixels, diff = pixels_and_diff([p for p, _ in samples], 224)
    truth = np.array([label for _, label in samples])
    for name, model, offset in (("bundled ImageNet model (ours)", str(BUNDLED_MODEL / "model.tflite"), 0),
                                ("Google's V3-Small uint8", _common.reference_v3_small(), 1)):
        results[name] = {**score(model, pixels, truth, offset), "bytes_differing": diff}
    hymenoptera_dir = _common.shared_path("datasets", "hymenoptera_data")
    if args.hymenoptera_run:
        items = discover_dataset(hymenoptera_dir).items
        pixels, diff = pixels_and_diff([p for p, _ in items], 224)
        truth = np.array([label for _, label in items])
        model = os.path.join(args.hymenoptera_run, "model.tflite")
        results[f"hymenoptera run ({args.hymenoptera_run})"] = {**score(model, pixels, truth, 0),
                                                                "bytes_differing": diff}
    for name, r in results.items():
        rows.append([name, r["images"], f"{100 * r['top1_fast']:.2f}", f"{100 * r['top1_accurate']:.2f}",
                     f"{100 * (r['top1_accurate'] - r['top1_fast']):+.2f} [{100 * r['interval_95'][0]:+.2f}, "
                     f"{100 * r['interval_95'][1]:+.2f}]", r["top1_changed"],
                     f"{r['score_move_median']:.3f} / {r['score_move_max']:.3f}", f"{100 * r['bytes_differing']:.0f}%"])
    jpegs = [p for p, _ in discover_dataset(os.path.join(hymenoptera_dir, "train")).items]
    speed = decode_speed(jpegs, args.rounds)
    machine = _common.machine()
    print(f"{machine['cpu']} ({machine['isa']}), {machine['nproc']} cores, load {machine.get('loadavg_at_start')}; "
          f"revision {_common.git_revision()}; {machine['date']}")
    print(_common.table(["model, photos", "images", "top-1 % fast IDCT", "top-1 % accurate IDCT",
                         "change (points) [95% interval]", "top-1 changed", "top-1 score move median / max",
                         "decoded bytes differing"], rows))
    print(f"decode time per hymenoptera train JPEG ({len(jpegs)} photos x {args.rounds}): fast "
          f"{speed['fast']:.2f} ms, accurate {speed['accurate']:.2f} ms "
          f"({speed['accurate'] / speed['fast']:.2f}x)")
    _common.write_json(args.json, {"machine": machine, "revision": _common.git_revision(), "accuracy": results,
                                   "decode_ms": speed})


if __name__ == "__main__":
    main()
