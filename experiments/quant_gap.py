"""Where the float -> int8 accuracy gap comes from: post-training int8 of one trained float model, three ways of
writing h-swish, evaluated on the same held-out images (default: the CIFAR-10 run of bench.cifar10, 10,000 test images).

    nice -n 10 python -m experiments.quant_gap [--run_dir ~/.cache/mobilenet-bench/runs/cifar10-small-64] [--json OUT]

  lowered (ours)     our builder's h-swish: (relu6(x + 3) * x) * (1/6) -> ADD/RELU6, MUL, MUL. The int8 tensor after
                     the first MUL holds 6x the output's range (4x-8x coarser steps than the h-swish output).
  builtin HARD_SWISH tflite_export.convert(hswish="builtin"): one HARD_SWISH op (not delegated to XNNPACK in int8)
  gate-first         (relu6(x + 3) * (1/6)) * x: the [0, 1] gate is quantized, the product has the output's range;
                     built here by swapping keras_models.blocks.ACTIVATIONS["HS"] and copying the weights by name.
                     (Measured: the converter fuses this form into HARD_SWISH too, so it equals "builtin".)
All three share the float weights, the calibration images (the pipeline's representative set, 200 images) and
uint8 I/O; the float column is the same Keras model each time. For comparison the run's own QAT export
(run_dir/model.tflite) is evaluated on the same images.

"gate levels": for every h-swish gate tensor relu6(x + 3) of the lowered form (the ADD with fused RELU6), how many
int8 steps fall inside its real range [0, 6]: 6 / scale (about 200 when the tensor is calibrated to [0, 6]). Shown:
the minimum and the median over the model's gates.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os

from bench import _common
from keras_models import backend  # noqa: F401  (before TensorFlow)
from keras_models.backend import keras
from pipeline.config import FLOAT_MODEL_FILE


def gate_first_hard_swish(x, name: str | None = None):
    layers = keras.layers
    prefix = f"{name}/" if name else ""
    shifted = layers.Rescaling(1.0, offset=3.0, name=prefix + "add3" if name else None)(x)
    gate = layers.ReLU(6.0, name=prefix + "relu6" if name else None)(shifted)
    gate = layers.Rescaling(1.0 / 6.0, name=prefix + "div6" if name else None)(gate)
    return layers.Multiply(name=prefix + "gate_mul" if name else None)([gate, x])


def gate_first_model(float_model, config: dict):
    import keras_models
    from keras_models import blocks
    from keras_models.weights import copy_weights_by_name

    original = blocks.ACTIVATIONS["HS"]
    blocks.ACTIVATIONS["HS"] = gate_first_hard_swish
    try:
        model = keras_models.build("small", **config)
    finally:
        blocks.ACTIVATIONS["HS"] = original
    copied = copy_weights_by_name(float_model, model)
    return model, copied


def gate_levels(content: bytes) -> tuple[float, float] | None:
    """(min, median) over the h-swish gate tensors relu6(x + 3) (outputs of the ADD ops with fused RELU6 that our
    lowered h-swish leaves; not the SE hard-sigmoid) of int8 steps inside [0, 6]; None if the model has none."""
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=content)
    interpreter.allocate_tensors()
    w = interpreter._interpreter  # noqa: SLF001 - pybind wrapper: node names and outputs (as tflite_export.verify uses it)
    details = {d["index"]: d for d in interpreter.get_tensor_details()}
    levels = []
    for i in range(w.NumNodes()):
        if w.NodeName(i) != "ADD":
            continue
        for t in w.NodeOutputs(i):
            d = details.get(int(t))
            if d is None or "add3/add" not in d["name"] or "hard_sigmoid" in d["name"]:
                continue
            scale = d["quantization"][0]
            if scale > 0:
                levels.append(6.0 / scale)
    return (float(min(levels)), float(np.median(levels))) if levels else None


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run_dir", default=os.path.join(_common.CACHE, "runs", "cifar10-small-64"))
    p.add_argument("--calibration_images", type=int, default=200)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    from pipeline.data import load_dataset
    from tflite_export.convert import convert
    from tflite_export.export import compare_with_keras
    from tflite_export.verify import analyze

    report = _common.load_report(args.run_dir)
    h5 = os.path.join(args.run_dir, FLOAT_MODEL_FILE)
    if report is None or not os.path.exists(h5):
        raise SystemExit(f"error: no finished run in {args.run_dir} (run python -m bench.cifar10 first)")
    c = report.config
    data = load_dataset(c.dataset, image_size=c.image_size, batch_size=c.batch_size, seed=c.seed)
    float_model = keras.models.load_model(h5, compile=False)
    config = dict(input_shape=(c.image_size, c.image_size, 3), alpha=c.alpha, num_classes=len(data.class_names),
                  minimalistic=c.minimalistic, dropout=0.0)
    variant, copied = gate_first_model(float_model, config)
    def rep():
        return data.representative(args.calibration_images)
    rows, results = [], {}
    qat_file = os.path.join(args.run_dir, "model.tflite")
    if os.path.exists(qat_file) and c.qat:
        with open(qat_file, "rb") as f:
            content = f.read()
        a = analyze(content)
        acc = dataclasses.asdict(compare_with_keras(content, float_model, data.eval.as_numpy_iterator()))
        levels = gate_levels(content)
        results["QAT export (run's model.tflite)"] = {"accuracy": acc, "gate_levels": levels}
        rows.append(["QAT export (run's model.tflite), lowered", f"{100 * acc['keras_top1']:.2f}",
                     f"{100 * acc['int8_top1']:.2f}", f"{100 * (acc['keras_top1'] - acc['int8_top1']):+.2f}",
                     f"{100 * acc['agreement']:.2f}%", a.op_histogram.get("HARD_SWISH", 0), a.xnnpack_partitions,
                     f"{levels[0]:.0f} / {levels[1]:.0f}" if levels else "-"])
        print("QAT export", json.dumps(acc), flush=True)
    for name, model, hswish in (("lowered (ours)", float_model, "lowered"),
                                ("builtin HARD_SWISH", float_model, "builtin"),
                                ("gate-first", variant, "lowered")):
        content = convert(model, rep, io_dtype="uint8", hswish=hswish)
        a = analyze(content)
        acc = dataclasses.asdict(compare_with_keras(content, model, data.eval.as_numpy_iterator()))
        levels = gate_levels(content)
        results[name] = {"accuracy": acc, "ops": a.op_histogram, "xnnpack_partitions": a.xnnpack_partitions,
                         "undelegated": a.xnnpack_undelegated, "gate_levels": levels}
        rows.append([f"PTQ, {name}", f"{100 * acc['keras_top1']:.2f}", f"{100 * acc['int8_top1']:.2f}",
                     f"{100 * (acc['keras_top1'] - acc['int8_top1']):+.2f}", f"{100 * acc['agreement']:.2f}%",
                     a.op_histogram.get("HARD_SWISH", 0), a.xnnpack_partitions,
                     f"{levels[0]:.0f} / {levels[1]:.0f}" if levels else "-"])
        print(name, json.dumps(results[name]["accuracy"]), flush=True)
    print(f"\nint8 (uint8 I/O; PTQ rows, {args.calibration_images} calibration images) of {h5}, "
          f"{rows and results['lowered (ours)']['accuracy']['images']} {report.data.eval_split} images "
          f"(gate-first model: {copied} layers' weights copied by name)")
    print(_common.table(["h-swish as", "float top-1 %", "int8 top-1 %", "gap (points)", "agreement", "HARD_SWISH",
                         "XNNPACK partitions", "gate levels min / median"], rows))
    machine = _common.machine()
    print(f"machine: {machine['cpu']}, {machine['nproc']} cores, {machine['date']}")
    _common.write_json(args.json, {"machine": machine, "revision": _common.git_revision(), "run_dir": args.run_dir,
                                   "results": results})


if __name__ == "__main__":
    main()
