"""How far does each int8 MEAN of a .tflite file round from the exact mean of its own input? (issue #12)

    python -m experiments.mean_rounding --model PATH [--images DIR] [--count 40] [--json OUT]

For every MEAN op (squeeze-and-excite's and the global pool), the file is run on --count photos with all
intermediate tensors kept, once with LiteRT's builtin (optimized) kernels and once with its reference kernels, and
the op's int8 output is compared with the exact mean of its int8 input, requantized to the output's scale (and
saturated as the op must): the average difference (bias) and the largest, in output steps, and the share of means
that fell outside the output's range. The output step (scale) is printed beside it: a bias of
a fraction of a step matters when the step is coarse, as it was when the pools' ranges were imported from a uint8
file whose AVERAGE_POOL_2D keeps its input's range (pipeline/qat.py).
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

from bench import _common
from keras_models import backend  # noqa: F401  (before TensorFlow)


def mean_rounding(model: str, pixels: np.ndarray, kernels: str) -> list[dict]:
    """Per MEAN op of `model` run on float `pixels` [N, H, W, 3] with LiteRT's `kernels` (tflite_export.export
    .op_resolver): input and output quantization, bias and largest difference in output steps, saturated share."""
    from ai_edge_litert.interpreter import Interpreter

    from tflite_export.export import op_resolver
    from tflite_export.preprocessing import quantize_input

    interpreter = Interpreter(model_path=model, experimental_preserve_all_tensors=True,
                              experimental_op_resolver_type=op_resolver(kernels))
    interpreter.allocate_tensors()
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
    means = [op for op in interpreter._get_ops_details() if op["op_name"] == "MEAN"]  # noqa: SLF001
    (source,) = interpreter.get_input_details()
    differences: dict[int, list] = {op["index"]: [] for op in means}
    saturated = {op["index"]: 0 for op in means}
    scale, zero_point = source["quantization"]
    for image in pixels:
        # As the pipeline's evaluation feeds it: the project's contract (mean 0, std 1) in the input's quantization.
        tensor = quantize_input(image, mean=0.0, std=1.0, scale=scale, zero_point=zero_point, dtype=source["dtype"])
        interpreter.set_tensor(source["index"], tensor[None])
        interpreter.invoke()
        for op in means:
            inp, out = tensors[op["inputs"][0]], tensors[op["outputs"][0]]
            (in_scale, in_zero), (out_scale, out_zero) = inp["quantization"], out["quantization"]
            exact = ((interpreter.get_tensor(inp["index"]).astype(np.float64).mean(axis=(1, 2)) - in_zero)
                     * in_scale / out_scale + out_zero)
            got = interpreter.get_tensor(out["index"]).astype(np.float64).reshape(exact.shape)
            info = np.iinfo(out["dtype"])
            # Means outside the output's range saturate: counted apart, and the rounding is read against the
            # saturated value.
            saturated[op["index"]] += int(np.sum((exact < info.min - 0.5) | (exact > info.max + 0.5)))
            differences[op["index"]].append((got - np.clip(exact, info.min, info.max)).ravel())
    rows = []
    for op in means:
        inp, out = tensors[op["inputs"][0]], tensors[op["outputs"][0]]
        d = np.concatenate(differences[op["index"]])
        rows.append({"op": op["index"], "tensor": out["name"].split(";")[0],
                     "input_hw": [int(v) for v in inp["shape"][1:3]],
                     "input_scale": float(inp["quantization"][0]), "output_scale": float(out["quantization"][0]),
                     "bias_steps": float(d.mean()), "max_steps": float(np.abs(d).max()),
                     "saturated": saturated[op["index"]] / d.size})
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--images", default=_common.shared_path("datasets", "hymenoptera_data", "val"))
    p.add_argument("--count", type=int, default=40)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    if not os.path.isfile(args.model):
        sys.exit(f"error: {args.model}: no such file")
    from ai_edge_litert.interpreter import Interpreter

    from tflite_export.files import images_under
    from tflite_export.preprocessing import load_eval_image

    size = int(Interpreter(model_path=args.model).get_input_details()[0]["shape"][1])
    images = np.stack([load_eval_image(path, size) for path in images_under(args.images, args.count)])
    results = {kernels: mean_rounding(args.model, images, kernels) for kernels in ("builtin", "reference")}
    rows = [[b["tensor"][-60:], "x".join(map(str, b["input_hw"])), f"{b['output_scale']:.4f}",
             f"{b['bias_steps']:+.3f}", f"{b['max_steps']:.2f}", f"{r['bias_steps']:+.3f}", f"{r['max_steps']:.2f}",
             f"{100 * b['saturated']:.2f}%"]
            for b, r in zip(results["builtin"], results["reference"])]
    print(_common.table(["MEAN output", "over", "output step", "builtin bias (steps)", "builtin max", "reference bias",
                         "reference max", "saturated"], rows))
    print(f"{len(images)} photos from {args.images}; model {args.model}; revision {_common.git_revision()}")
    _common.write_json(args.json, {"model": args.model, "images": len(images), "machine": _common.machine(),
                                   "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
