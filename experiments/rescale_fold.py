"""Does folding h-swish's x1/6 into the convolutions that read it make the int8 file faster? (issue #17; the answer
measured on 2026-11-30 was no, so the pass lives here and not in tflite_export.)

    python -m experiments.rescale_fold [--runs 300] [--images 64] [--json OUT]

Our lowered h-swish ends in an int8 MUL by the constant 1/6 whose output has the input's zero point and a sixth of its
scale (QAT aligns the two ranges): on the integers it is the identity. Where only CONV_2D / DEPTHWISE_CONV_2D ops read
it, they can read the MUL's input instead with their filter scales multiplied by 1/6: their accumulators (int8
products plus int32 bias) and requantization (input scale x filter scale) do not change, so the file computes the
same integers with fewer ops. `fold_rescales` below does that on the flatbuffer. The script builds our int8
V3-Small at 224 on the QAT path with the pipeline's range setup (uint8 I/O), folds it, checks that both files give
identical outputs on --images random pictures, and times both beside Google's file in one interleaved run, 1 thread.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile

import numpy as np

from bench import _common
from keras_models import backend  # noqa: F401  (before TensorFlow)

# Relative tolerance on scale_out == scale_in x constant: with |q - zero point| <= 255, a relative error of 1e-6 moves
# the exact product by less than 3e-4 of a level, so rounding gives back the input level.
RELATIVE_TOLERANCE = 1e-6


def _builtin_code(model_t, op) -> int:
    code = model_t.operatorCodes[op.opcodeIndex]
    return max(code.builtinCode, code.deprecatedBuiltinCode)


def _per_tensor(tensor) -> tuple[float, int] | None:
    q = tensor.quantization
    if q is None or q.scale is None or len(q.scale) != 1 or q.zeroPoint is None or len(q.zeroPoint) != 1:
        return None
    return float(q.scale[0]), int(q.zeroPoint[0])


def _constant_scalar(model_t, tensor) -> float | None:
    """The real value of a one-element int8/uint8 constant tensor, None for anything else."""
    from ai_edge_litert import schema_py_generated as schema_fb

    data = model_t.buffers[tensor.buffer].data if tensor.buffer < len(model_t.buffers) else None
    quant = _per_tensor(tensor)
    if data is None or len(data) != 1 or quant is None:
        return None
    dtype = {schema_fb.TensorType.INT8: np.int8, schema_fb.TensorType.UINT8: np.uint8}.get(tensor.type)
    if dtype is None:
        return None
    scale, zero_point = quant
    return scale * (int(np.asarray(data, np.uint8).view(dtype)[0]) - zero_point)


def fold_rescales(content: bytes) -> tuple[bytes, int]:
    """`content` with every foldable rescale MUL folded into the convolutions that read it; returns the new file and
    how many MULs were removed (0: `content` itself is returned)."""
    from ai_edge_litert import schema_py_generated as schema_fb
    from ai_edge_litert.tools import flatbuffer_utils

    ops_t = schema_fb.BuiltinOperator
    model_t = flatbuffer_utils.read_model_from_bytearray(bytearray(content))
    removed = 0
    for subgraph in model_t.subgraphs:
        readers: dict[int, list] = {}
        for op in subgraph.operators:
            for index in op.inputs:
                if index >= 0:
                    readers.setdefault(int(index), []).append(op)
        outputs = {int(i) for i in subgraph.outputs}
        folded = []
        for op in subgraph.operators:
            if _builtin_code(model_t, op) != ops_t.MUL or len(op.inputs) != 2 or len(op.outputs) != 1:
                continue
            options = op.builtinOptions
            if options is not None and getattr(options, "fusedActivationFunction", 0) != 0:
                continue
            a, b = (int(i) for i in op.inputs)
            constant = _constant_scalar(model_t, subgraph.tensors[b])
            source = a
            if constant is None:
                constant, source = _constant_scalar(model_t, subgraph.tensors[a]), b
            out = int(op.outputs[0])
            if not constant or constant <= 0 or out in outputs:
                continue
            src_t, out_t = subgraph.tensors[source], subgraph.tensors[out]
            src_q, out_q = _per_tensor(src_t), _per_tensor(out_t)
            if src_q is None or out_q is None or src_t.type != out_t.type or src_q[1] != out_q[1]:
                continue
            if abs(out_q[0] - src_q[0] * constant) > RELATIVE_TOLERANCE * out_q[0]:
                continue  # not the identity on the integers
            convs = readers.get(out, [])
            if not convs or any(_builtin_code(model_t, r) not in (ops_t.CONV_2D, ops_t.DEPTHWISE_CONV_2D)
                                or int(r.inputs[0]) != out or out in (int(i) for i in r.inputs[1:]) for r in convs):
                continue
            filters = [subgraph.tensors[int(r.inputs[1])] for r in convs]
            if any(len(readers.get(int(r.inputs[1]), [])) != 1 for r in convs):
                continue  # a filter shared with another op cannot take this op's scale alone
            for conv, filt in zip(convs, filters):
                conv.inputs[0] = source
                filt.quantization.scale = (np.asarray(filt.quantization.scale, np.float32) * np.float32(constant))
            folded.append(op)
        if folded:
            subgraph.operators = [op for op in subgraph.operators if all(op is not f for f in folded)]
            removed += len(folded)
    if not removed:
        return content, 0
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model_t)), removed


def folded_and_checked(content: bytes, images: int) -> tuple[bytes, int, bool]:
    """`fold_rescales(content)` and whether the folded file gives the same integers as `content` on `images` random
    pictures (the fold must be exact): (folded file, MULs removed, identical)."""
    from tflite_export.export import run_tflite

    folded, removed = fold_rescales(content)
    pictures = np.random.default_rng(1).uniform(0, 255, size=(images, 224, 224, 3)).astype(np.float32)
    identical = bool(np.array_equal(run_tflite(content, pictures), run_tflite(folded, pictures)))
    return folded, removed, identical


def qat_with_pipeline_ranges(calibration: int = 8):
    """Our untrained V3-Small at 224 (1001 classes) as a QAT model with its ranges set as the pipeline sets them
    before QAT (calibrated, clamped where h-swish saturates, x1/6 aligned), and the random pictures it was calibrated
    on. The alignment is what makes each x1/6 the identity on the integers, as in every file the pipeline exports."""
    import keras_models
    from pipeline.qat import prepare_qat_model

    model = keras_models.build("small", input_shape=(224, 224, 3), alpha=1.0, num_classes=1001)
    rng = np.random.default_rng(0)
    calib = [rng.uniform(0, 255, size=(1, 224, 224, 3)).astype(np.float32) for _ in range(calibration)]
    qat, _ = prepare_qat_model(model, iter(calib))
    return qat, calib


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=300)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--images", type=int, default=64, help="random pictures both files must agree on, level for level")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    from bench.latency import describe
    from tflite_export.benchmark import benchmark_models
    from tflite_export.convert import convert

    machine = _common.machine()
    reference = _common.reference_v3_small()
    qat, calib = qat_with_pipeline_ranges()
    unfolded = convert(qat, lambda: iter(calib), io_dtype="uint8")
    folded, removed, identical = folded_and_checked(unfolded, args.images)
    workdir = tempfile.mkdtemp(prefix="bench-fold-")
    files = {"Google V3-Small uint8 (reference)": reference}
    for name, content in (("ours int8 (as exported)", unfolded), ("ours int8, x1/6 folded", folded)):
        path = os.path.join(workdir, "folded.tflite" if content is folded else "unfolded.tflite")
        with open(path, "wb") as f:
            f.write(content)
        files[name] = path
    names = list(files)
    results = [dataclasses.asdict(r) for r in benchmark_models([files[n] for n in names], threads=[1], runs=args.runs,
                                                                warmup=args.warmup)]
    rows = []
    for name, r in zip(names, results):
        d = describe(files[name])
        r["name"] = name
        rows.append([name, f"{r['median_ms']:.3f}", f"{r['p10_ms']:.3f}-{r['p90_ms']:.3f}",
                     f"{r['ratio_vs_first']:.3f}", d["ops"], d["op_histogram"].get("MUL", 0), d["xnnpack_partitions"]])
    print(f"\nMULs folded: {removed}; outputs identical on {args.images} random pictures: {identical}")
    print(_common.table(["model (224, 1 thread)", "median ms", "p10-p90 ms", "median ratio vs Google", "ops", "MUL",
                         "XNNPACK partitions"], rows))
    folded_r, unfolded_r = results[2], results[1]
    print(f"folded / as exported: median {folded_r['median_ms'] / unfolded_r['median_ms']:.3f}x, p10 "
          f"{folded_r['p10_ms'] / unfolded_r['p10_ms']:.3f}x")
    print(f"machine: {machine['cpu']} ({machine['isa']}), {machine['nproc']} cores, load average at start "
          f"{machine.get('loadavg_at_start')}; revision {_common.git_revision()}")
    _common.write_json(args.json, {"machine": machine, "removed": removed, "identical": identical,
                                   "results": results})
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
