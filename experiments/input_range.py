"""What do dim calibration photos do to an int8 file's input? (issue #28 item 6; measured once, see BENCHMARKS.md
"Calibration photos and the input range".)

    python -m experiments.input_range --run_dir RUN [--dataset ../shared/datasets/hymenoptera_data] [--json OUT]

RUN is a finished pipeline.train_and_export run on a photo folder (its float_model.h5 and qat_model/). Each model is
converted twice on the same 200 training photos: as taken, and as low-contrast photos (pixels mapped to 100..150, as
by a hazy or underexposed camera). Each conversion runs both ways: TFLite's converter on its own
(`tflite_export.convert.int8_converter`, which calibrates the input range on the photos) and the project's `convert`
(the input range is 0..255 whatever the photos span). Every file is then evaluated on the folder's validation photos as
taken, fed the way apps feed a uint8 model (the camera's bytes). The question: does a narrow calibration set change
the deployed file, and does the project's conversion keep it from doing so?
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

import numpy as np

from bench import _common
from keras_models import backend  # noqa: F401  (before TensorFlow)

CALIBRATION_IMAGES = 200
LOW, HIGH = 100.0, 150.0  # the low-contrast photos' pixel range


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run_dir", required=True, help="a finished photo-folder run (float_model.h5, qat_model/)")
    parser.add_argument("--dataset", help="the run's photo folder (default: ../shared's hymenoptera_data)")
    parser.add_argument("--json", help="write the rows here")
    args = parser.parse_args(argv)
    args.dataset = args.dataset or _common.shared_path("datasets", "hymenoptera_data")

    from keras_models.backend import keras
    from pipeline.data import load_dataset
    from tflite_export.convert import convert, int8_converter
    from tflite_export.evaluate import discover_dataset, evaluate_tflite
    from tflite_export.quantization import quantize_scope, widen_empty_kernel_ranges
    from tflite_export.verify import analyze

    float_model = keras.models.load_model(os.path.join(args.run_dir, "float_model.h5"), compile=False)
    with quantize_scope():
        qat_model = keras.models.load_model(os.path.join(args.run_dir, "qat_model"), compile=False)
    # What `convert` does to a QAT model before converting (kernels of dead channels), done once for both ways, so
    # that they differ in the input ranges alone.
    widen_empty_kernel_ranges(qat_model)
    size = int(float_model.input_shape[1])
    data = load_dataset(args.dataset, image_size=size, batch_size=32)
    photos = [np.asarray(image, np.float32) for image in data.representative(CALIBRATION_IMAGES)]
    low_contrast = [LOW + image * ((HIGH - LOW) / 255.0) for image in photos]
    validation = discover_dataset(args.dataset)

    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for model_name, model in (("post-training (float_model.h5)", float_model), ("QAT (qat_model/)", qat_model)):
            for calibration_name, images in (("photos as taken", photos), ("low-contrast photos", low_contrast)):
                for way in ("TFLite's converter alone", "tflite_export.convert"):
                    if way == "tflite_export.convert":
                        data_bytes = bytes(convert(model, lambda images=images: iter(images)))
                    else:
                        data_bytes = bytes(int8_converter(
                            model, lambda images=images: ([image] for image in images), "uint8").convert())
                    analysis = analyze(data_bytes, xnnpack=False)
                    path = os.path.join(scratch, "model.tflite")
                    with open(path, "wb") as f:
                        f.write(data_bytes)
                    top1 = None
                    if not analysis.float_tensors:
                        top1 = evaluate_tflite(path, validation.items, num_classes=len(validation.class_names)).top1
                    row = {"model": model_name, "calibration": calibration_name, "conversion": way,
                           "input_scale": analysis.inputs[0].scale, "float_tensors": len(analysis.float_tensors),
                           "int8_top1": top1}
                    rows.append(row)
                    print(row, flush=True)
    machine = _common.machine()
    print(f"\n{machine['cpu']} ({machine['isa']}); revision {_common.git_revision()}; {len(validation.items)} "
          f"validation photos of {args.dataset}, fed as the camera's bytes")
    print(_common.table(["model", "calibration (200 training photos)", "conversion", "uint8 input scale",
                         "float tensors", "int8 top-1 %"],
                        [[r["model"], r["calibration"], r["conversion"], f"{r['input_scale']:.4g}",
                          r["float_tensors"], "-" if r["int8_top1"] is None else f"{100 * r['int8_top1']:.2f}"]
                         for r in rows]))
    _common.write_json(args.json, {"machine": machine, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
