"""How much of the int8 range each depthwise channel of a .tflite file uses (issue #6).

    python -m experiments.weight_levels ~/.cache/mobilenet-bench/runs/*/model.tflite [--json OUT]

Int8 weights are symmetric, levels -127..127, one scale per output channel. A channel whose largest weight is stored
as 127 uses its whole range; one whose largest is 40 rounds its weights onto 81 levels instead of 255 (about 1.6
bits fewer). tfmot's
QAT gave a depthwise kernel one range for all its channels (tensorflow/model-optimization#808) and the converter kept
that grid, so only the largest channel of each kernel reached 127; `pipeline.qat.QuantizeScheme` gives each channel
its own. For every file: the depthwise channels, the median and smallest "largest |level|" over them, and the
fraction at 127 (Conv2D kernels are shown too: tfmot already quantized those per channel).
"""

from __future__ import annotations

import argparse
import os

import numpy as np

from bench import _common

OPS = {"DEPTHWISE_CONV_2D": "depthwise", "CONV_2D": "conv"}


def largest_levels(path: str) -> dict[str, np.ndarray]:
    """Largest |int8 level| of every output channel, per kind of conv in `OPS` (all ops of that kind together)."""
    from ai_edge_litert.interpreter import Interpreter

    from tflite_export.cli import first_line

    try:
        interpreter = Interpreter(model_path=path)
    except ValueError as e:
        raise SystemExit(f"error: {path} is not a .tflite model ({first_line(e)})") from None
    tensors = interpreter.get_tensor_details()
    levels = {key: [] for key in OPS.values()}
    for node in interpreter._get_ops_details():  # noqa: SLF001 - LiteRT's only view of each op's inputs
        if node["op_name"] not in OPS:
            continue
        weights = tensors[node["inputs"][1]]
        if weights["dtype"] != np.int8:
            raise SystemExit(f"error: {path}: {node['op_name']} weights are {weights['dtype'].__name__}, not int8")
        values = np.abs(interpreter.get_tensor(weights["index"]).astype(np.int32))
        channel_axis = weights["quantization_parameters"]["quantized_dimension"]
        levels[OPS[node["op_name"]]].append(values.max(axis=tuple(a for a in range(values.ndim) if a != channel_axis)))
    return {key: np.concatenate(found) if found else np.zeros(0, np.int32) for key, found in levels.items()}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("files", nargs="+")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    rows = []
    for path in args.files:
        if not os.path.isfile(path):
            raise SystemExit(f"error: {path} is not a file")
        row = {"file": path}
        for key, levels in largest_levels(path).items():
            row[key] = {"channels": int(levels.size), "median": float(np.median(levels)) if levels.size else None,
                        "min": int(levels.min()) if levels.size else None,
                        "at_127": float(np.mean(levels == 127)) if levels.size else None}
        rows.append(row)

    def cells(stats):
        if not stats["channels"]:
            return ["0", "-", "-", "-"]
        return [str(stats["channels"]), f"{stats['median']:g}", str(stats["min"]), f"{100 * stats['at_127']:.1f}%"]

    print(_common.table(
        ["file", "depthwise channels", "median largest level", "smallest", "at 127",
         "conv channels", "median", "smallest", "at 127"],
        [[os.path.relpath(r["file"], _common.CACHE) if r["file"].startswith(_common.CACHE) else r["file"],
          *cells(r["depthwise"]), *cells(r["conv"])] for r in rows]))
    _common.write_json(args.json, {"machine": _common.machine(), "revision": _common.git_revision(), "rows": rows})


if __name__ == "__main__":
    main()
