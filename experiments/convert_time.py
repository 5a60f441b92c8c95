"""Conversion time: what the converter is given to save, the Keras model (before) or a module holding its variables
(tflite_export.convert now), side by side in one process, with the two files compared byte for byte.

    nice -n 10 python -m experiments.convert_time [--sizes 32,224] [--json OUT]

Models: V3-Small at alpha 0.35 / 32 px (the tests' tiny model) and alpha 1.0 / 224 px, each float (post-training
path) and QAT (pipeline.qat.prepare_qat_model: the ranges the pipeline's QAT step starts from); untrained weights
(conversion time does not depend on them).
"""

from __future__ import annotations

import argparse
import time
from unittest import mock

import numpy as np

from bench import _common
from keras_models import backend  # noqa: F401  (before TensorFlow)
from keras_models.backend import tf


def _timed_convert(model, images, *, keras_trackable: bool) -> tuple[float, bytes]:
    from tflite_export.convert import convert

    original = tf.lite.TFLiteConverter.from_concrete_functions

    def with_keras_model(functions, trackable_obj=None):  # the way convert() called it before
        return original(functions, model)

    started = time.perf_counter()
    if keras_trackable:
        with mock.patch.object(tf.lite.TFLiteConverter, "from_concrete_functions", with_keras_model):
            content = convert(model, lambda: (images[i:i + 1] for i in range(len(images))))
    else:
        content = convert(model, lambda: (images[i:i + 1] for i in range(len(images))))
    return time.perf_counter() - started, content


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m experiments.convert_time", description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="32,224")
    parser.add_argument("--json")
    args = parser.parse_args()

    import keras_models
    from pipeline.qat import prepare_qat_model

    rows, results = [], []
    for size in (int(s) for s in args.sizes.split(",")):
        alpha = 0.35 if size < 64 else 1.0
        model = keras_models.build("small", input_shape=(size, size, 3), alpha=alpha, num_classes=10)
        images = np.random.default_rng(0).uniform(0, 255, (16, size, size, 3)).astype(np.float32)
        qat, _ = prepare_qat_model(model, [images])  # as the pipeline's QAT step starts it
        for kind, candidate in (("float (PTQ)", model), ("QAT", qat)):
            before, old = _timed_convert(candidate, images, keras_trackable=True)
            after, new = _timed_convert(candidate, images, keras_trackable=False)
            rows.append([f"{size} px, alpha {alpha:g}", kind, f"{before:.1f}", f"{after:.1f}", f"{before / after:.1f}x",
                         "yes" if old == new else "NO"])
            results.append({"size": size, "alpha": alpha, "kind": kind, "seconds_keras_model": before,
                            "seconds_variables": after, "identical": old == new})
    print(f"\nmachine: {_common.machine()}  revision {_common.git_revision()}")
    print(_common.table(["model", "path", "Keras model saved (s)", "variables only (s)", "speed-up",
                         "identical .tflite bytes"], rows))
    _common.write_json(args.json, {"machine": _common.machine(), "revision": _common.git_revision(),
                                   "results": results})


if __name__ == "__main__":
    main()
