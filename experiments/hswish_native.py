"""What does lowering h-swish cost in accuracy? Our int8 file with its lowered h-swish put back as HARD_SWISH ops,
scored under LiteRT's three kernel sets beside the file as exported (issue #12).

    python -m experiments.hswish_native [--model PATH] [--json OUT]

Each lowered h-swish (ADD + RELU6, MUL, x1/6 MUL; `experiments.op_share.hswish_groups`) is replaced in the
flatbuffer by one HARD_SWISH op from the same input tensor to the same output tensor, so its quantization is the
exported one. The HARD_SWISH kernel computes h-swish and rounds once; the lowered form also rounds its relu6(x + 3)
gate. Both files are scored on ../shared/datasets/imagenet-samples by `bench.imagenet_import.top1_by_kernels`. The
default model is `bench.imagenet_import`'s re-export of Google's V3-Small. The restored file is a measurement, never
an export: its HARD_SWISH ops split the XNNPACK graph.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

from bench import _common
from experiments.op_share import DEFAULT_MODEL, hswish_groups
from keras_models import backend  # noqa: F401  (before TensorFlow)


def restore_hard_swish(content: bytes) -> tuple[bytes, int]:
    """`content` with every lowered h-swish replaced by a HARD_SWISH op; returns the file and how many."""
    import numpy as np
    from ai_edge_litert import schema_py_generated as schema_fb
    from ai_edge_litert.tools import flatbuffer_utils

    model_t = flatbuffer_utils.read_model_from_bytearray(bytearray(content))
    subgraph = model_t.subgraphs[0]
    code = schema_fb.OperatorCodeT()
    code.builtinCode = code.deprecatedBuiltinCode = schema_fb.BuiltinOperator.HARD_SWISH
    code.version = 1
    model_t.operatorCodes.append(code)
    replaced_by, dropped = {}, set()
    groups = hswish_groups(subgraph)
    for divide, product, gate, source in groups:
        op = schema_fb.OperatorT()
        op.opcodeIndex = len(model_t.operatorCodes) - 1
        op.inputs = np.array([source], np.int32)
        op.outputs = np.array([int(divide.outputs[0])], np.int32)
        replaced_by[id(gate)] = op  # the group's first op: the new op takes its place in execution order
        dropped.update({id(product), id(divide)})
    subgraph.operators = [replaced_by.get(id(op), op) for op in subgraph.operators if id(op) not in dropped]
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model_t)), len(groups)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=DEFAULT_MODEL, help="our int8 V3-Small (default: bench.imagenet_import's)")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    if not os.path.isfile(args.model):
        sys.exit(f"error: {args.model} not found: run `python -m bench.imagenet_import` first or pass --model")
    import numpy as np

    from bench.imagenet_import import eval_pixels, top1_by_kernels
    from tflite_export.evaluate import discover_dataset

    with open(args.model, "rb") as f:
        restored, count = restore_hard_swish(f.read())
    path = os.path.join(tempfile.mkdtemp(prefix="bench-hswish-"), "hard_swish.tflite")
    with open(path, "wb") as f:
        f.write(restored)
    items = discover_dataset(_common.shared_path("datasets", "imagenet-samples")).items
    pixels, truth = eval_pixels(items), np.array([label for _, label in items])
    scores = {"as exported (lowered)": top1_by_kernels(args.model, pixels, truth),
              f"{count} HARD_SWISH restored": top1_by_kernels(path, pixels, truth)}
    print(_common.table(["top-1 % on imagenet-samples", *next(iter(scores.values()))],
                        [[name, *(f"{100 * v:.2f}" for v in values.values())] for name, values in scores.items()]))
    print(f"{len(items)} photos; model {args.model}; revision {_common.git_revision()}")
    _common.write_json(args.json, {"model": args.model, "restored": count, "top1": scores})
    return 0


if __name__ == "__main__":
    sys.exit(main())
