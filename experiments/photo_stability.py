"""How stable is an int8 top-1 on a small validation split? (issue #12: hymenoptera_data's 153 photos)

    python -m experiments.photo_stability RUN_DIR [RUN_DIR ...] [--dataset DIR] [--json OUT]

For each run's `model.tflite`, the int8 top-1 on the dataset's held-out photos twice: with the pixels quantized as the
pipeline and the Android app do (TFLite's rounding, half away from zero) and with numpy's round-half-to-even, which
moves only pixels whose resized value is exactly halfway between two levels, by one level. Then, over all runs, how
many photos every run gets right, every run gets wrong, and some runs get wrong: the photos a threshold such as "92%"
is decided on.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

from bench import _common
from keras_models import backend  # noqa: F401  (before TensorFlow)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="pipeline run folders (each with model.tflite and labels.txt)")
    p.add_argument("--dataset", default=_common.shared_path("datasets", "hymenoptera_data", "val"))
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    missing = [run for run in args.runs if not os.path.isfile(os.path.join(run, "model.tflite"))]
    if missing:
        sys.exit(f"error: {missing[0]} has no model.tflite: pass pipeline run folders")
    from ai_edge_litert.interpreter import Interpreter

    from tflite_export.evaluate import discover_dataset
    from tflite_export.export import run_tflite
    from tflite_export.files import read_labels
    from tflite_export.preprocessing import load_eval_image

    labels = [line.strip() for line in read_labels(os.path.join(args.runs[0], "labels.txt"), "labels") if line.strip()]
    items = discover_dataset(args.dataset, labels).items
    rows, wrong = [], []
    for run in args.runs:
        model = os.path.join(run, "model.tflite")
        size = int(Interpreter(model_path=model).get_input_details()[0]["shape"][1])
        pixels = np.stack([load_eval_image(path, size) for path, _ in items])
        truth = np.array([label for _, label in items])
        as_deployed = run_tflite(model, pixels).argmax(-1) == truth  # quantize_input: half away from zero
        half_even = run_tflite(model, np.round(pixels)).argmax(-1) == truth
        wrong.append(~as_deployed)
        rows.append([os.path.basename(os.path.normpath(run)), f"{100 * as_deployed.mean():.2f}",
                     f"{100 * half_even.mean():.2f}", int(np.sum(as_deployed != half_even))])
    print(_common.table(["run", "int8 top-1 % (as deployed)", "pixels rounded half to even", "photos that change"],
                        rows))
    counts = np.sum(wrong, axis=0)
    spread = {k: int(np.sum(counts == k)) for k in range(len(args.runs) + 1)}
    print(f"{len(items)} photos of {args.dataset}: right in every run {spread[0]}, wrong in every run "
          f"{spread[len(args.runs)]}, wrong in some runs {len(items) - spread[0] - spread[len(args.runs)]} "
          f"(wrong in k runs: {spread})")
    _common.write_json(args.json, {"dataset": args.dataset, "photos": len(items), "rows": rows,
                                   "wrong_in_k_runs": spread, "revision": _common.git_revision()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
