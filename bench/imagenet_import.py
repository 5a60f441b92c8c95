"""Issue #12 must-show: our re-export of Google's V3-Small (pipeline.import_tflite) vs Google's file, side by side.

    nice -n 10 python -m bench.imagenet_import [--output_dir DIR] [--reuse] [--runs 200] [--json OUT]

1. `python -m pipeline.import_tflite` on Google's uint8 V3-Small (ImageNet weights and ranges), calibration images
   from hymenoptera_data (any photos would do; labels unused), evaluation on ../shared/datasets/imagenet-samples;
   with --distill, also fine-tuned towards the file's outputs on hymenoptera_data's 398 photos (never on the
   evaluation images).
2. Top-1/top-5 of both files by `tflite_export.evaluate` in this process, how often their top-1 agree, and the
   paired difference with a 95% interval (from the photos only one of the two gets right); with --kernels, the
   top-1 of both under XNNPACK, TFLite's builtin kernels and its reference kernels.
3. LiteRT latency of both, interleaved in one `tflite_export.benchmark.benchmark_models` call (1 and 2 threads), with
   the CPU model and ISA flags.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time

import numpy as np

from bench import _common
from keras_models import backend  # noqa: F401  (before TensorFlow)
from tflite_export.command import Command, run_command, setting


def eval_pixels(items: list) -> np.ndarray:
    """The evaluation pictures of `items`, loaded once for every file and kernel set that scores them."""
    from tflite_export.preprocessing import load_eval_image

    return np.stack([load_eval_image(path, 224) for path, _ in items])


def top1_predictions(model_path: str, pixels: np.ndarray, kernels: str = "xnnpack") -> np.ndarray:
    """argmax of each picture through LiteRT, fed as tflite_export.evaluate feeds a uint8 model: the pixel bytes,
    rounded as `quantize_input` rounds (half away from zero; numpy's half-to-even moves some photos' verdicts)."""
    from tflite_export.export import run_tflite

    return run_tflite(model_path, pixels, pixel_bytes=True, kernels=kernels).argmax(-1)


def top1_by_kernels(model_path: str, pixels: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Top-1 of one uint8 file under each of LiteRT's kernel sets: XNNPACK (the default, what evaluate and apps use),
    TFLite's builtin optimized kernels and its reference kernels. They round differently (XNNPACK requantizes once in
    float, the builtin and reference kernels in fixed point, twice), which is all that differs between the runs."""
    from ai_edge_litert.interpreter import Interpreter

    classes = int(Interpreter(model_path=model_path).get_output_details()[0]["shape"][-1])
    offset = 1 if classes == 1001 else 0  # Google's background class at 0
    return {kernels: float(np.mean(top1_predictions(model_path, pixels, kernels) - offset == truth))
            for kernels in ("xnnpack", "builtin", "reference")}


def paired_difference(ours_right: np.ndarray, google_right: np.ndarray) -> dict:
    """Google's top-1 minus ours over the same photos, with a 95% interval from the photos where exactly one of the
    two is right (the others cannot move the difference)."""
    n = len(ours_right)
    only_google = int(np.sum(google_right & ~ours_right))
    only_ours = int(np.sum(ours_right & ~google_right))
    difference = (only_google - only_ours) / n
    standard_error = np.sqrt(max(0.0, only_google + only_ours - (only_google - only_ours) ** 2 / n)) / n
    return {"only_google_right": only_google, "only_ours_right": only_ours, "difference": difference,
            "interval_95": [difference - 1.96 * standard_error, difference + 1.96 * standard_error]}


@dataclasses.dataclass(frozen=True)
class Options:
    """The flags of `python -m bench.imagenet_import`."""

    output_dir: str = setting(os.path.join(_common.CACHE, "imagenet-small"), "The import's folder.")
    reuse: bool = setting(False, "Keep an existing export in --output_dir.")
    runs: int = setting(200, "Timed LiteRT runs per model and thread count.")
    distill: bool = setting(False, "Import with --distill_dir hymenoptera_data (the int8 model fine-tuned on the "
                            "file's outputs).")
    kernels: bool = setting(False, "Also score both files under XNNPACK, the builtin and the reference kernels "
                            "(minutes).")
    json: str | None = setting(None, "Write the results as JSON here ('-': to stdout).")


def imagenet_import(options: Options, args: list[str]) -> None:

    from tflite_export.benchmark import benchmark_models
    from tflite_export.evaluate import discover_dataset, evaluate_tflite

    google = _common.reference_v3_small()
    samples = _common.shared_path("datasets", "imagenet-samples")
    ours = os.path.join(options.output_dir, "model.tflite")
    import_seconds = None
    if not (options.reuse and os.path.exists(ours)):
        cmd = [sys.executable, "-m", "pipeline.import_tflite", "--weights", google,
               "--labels", _common.shared_path("labels", "imagenet_classes.txt"),
               "--calibration_dir", _common.shared_path("datasets", "hymenoptera_data"),
               "--eval_dir", samples, "--output_dir", options.output_dir]
        if options.distill:
            cmd += ["--distill_dir", _common.shared_path("datasets", "hymenoptera_data")]
        print("command:", " ".join(cmd), flush=True)
        started = time.perf_counter()
        subprocess.run(cmd, cwd=_common.REPO, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        import_seconds = time.perf_counter() - started
    with open(os.path.join(options.output_dir, "import_report.json")) as f:
        imported = json.load(f)

    items = discover_dataset(samples).items
    ours_eval = evaluate_tflite(ours, items, num_classes=1000)
    google_eval = evaluate_tflite(google, items, num_classes=1000)
    pixels, truth = eval_pixels(items), np.array([label for _, label in items])
    ours_top1 = top1_predictions(ours, pixels)
    google_top1 = top1_predictions(google, pixels) - 1  # background class at 0
    agreement = float(np.mean(ours_top1 == google_top1))
    paired = paired_difference(ours_top1 == truth, google_top1 == truth)
    latency = benchmark_models([ours, google], threads=[1, 2], runs=options.runs, warmup=20)

    def median(path, threads):
        return next(r.median_ms for r in latency if r.model == path and r.threads == threads)

    print(f"\nmachine: {_common.machine()}  revision {_common.git_revision()}")
    rows = [["Google uint8 (HARD_SWISH)", f"{100 * google_eval.top1:.2f}", f"{100 * google_eval.top5:.2f}", "-",
             f"{median(google, 1):.2f}", f"{median(google, 2):.2f}", "1.00"],
            ["ours int8 re-export (lowered" + (", distilled)" if imported["distilled_images"] else ")"),
             f"{100 * ours_eval.top1:.2f}", f"{100 * ours_eval.top5:.2f}",
             f"{100 * agreement:.1f}%", f"{median(ours, 1):.2f}", f"{median(ours, 2):.2f}",
             f"{median(ours, 1) / median(google, 1):.2f}"],
            ["ours float (Keras, imported weights)", f"{100 * imported['float_top1']:.2f}", "-", "-", "-", "-", "-"]]
    print(_common.table(["model", "top-1 %", "top-5 %", "top-1 agrees with Google", "1 thread ms", "2 threads ms",
                         "latency ratio (1 thread)"], rows))
    print(f"top-1 gap to Google: {100 * (google_eval.top1 - ours_eval.top1):.2f} points; "
          f"import + export took {import_seconds if import_seconds is None else round(import_seconds)} s")
    by_kernels = {}
    if options.kernels:
        by_kernels = {"google": top1_by_kernels(google, pixels, truth), "ours": top1_by_kernels(ours, pixels, truth)}
        print(_common.table(["top-1 % by LiteRT kernels", *by_kernels["google"]],
                            [[name, *(f"{100 * v:.2f}" for v in values.values())]
                             for name, values in (("Google uint8", by_kernels["google"]),
                                                  ("ours int8", by_kernels["ours"]))]))
    low, high = paired["interval_95"]
    print(f"paired: Google's file alone is right on {paired['only_google_right']} photos, ours alone on "
          f"{paired['only_ours_right']}: Google - ours = {100 * paired['difference']:.2f} points, 95% interval "
          f"[{100 * low:.2f}, {100 * high:.2f}]")
    _common.write_json(options.json, {"machine": _common.machine(), "revision": _common.git_revision(),
                                   "ours": ours_eval, "google": google_eval, "agreement": agreement,
                                   "paired": paired, "top1_by_kernels": by_kernels,
                                   "latency": latency, "import": imported, "import_seconds": import_seconds})


main = Command("bench.imagenet_import", Options, imagenet_import, renamed={"out": "output_dir"})

if __name__ == "__main__":
    run_command(main)
