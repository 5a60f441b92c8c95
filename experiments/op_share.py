"""Where does our int8 V3-Small's time go: convolutions, or the ops around them? (issue #17: what limits int8)

    python -m experiments.op_share [--model PATH] [--runs 300] [--json OUT]

Times, side by side at 1 thread, the int8 file and copies of it with op groups cut out of the flatbuffer:

* `h-swish`: every lowered h-swish (ADD+RELU6, MUL, x1/6 MUL) removed, its readers reading its input;
* `squeeze-excite`: every SE branch (MEAN, two 1x1 convs, the hard sigmoid, the gating MUL) removed, the block's
  projection reading the depthwise output;
* both.

The cut files compute nothing meaningful (no retraining, scales left as they were): they only bound what any rewrite
of those ops could gain, since a rewrite cannot be cheaper than removing them. The default model is the ImageNet
re-export of `bench.imagenet_import` (a trained V3-Small 1.0 at 224 from this project's export path); Google's file
is timed in the same run for the ratio the issue's target is written in.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile

from bench import _common
from keras_models import backend  # noqa: F401  (before TensorFlow)

DEFAULT_MODEL = os.path.join(_common.CACHE, "imagenet-small", "model.tflite")
HSWISH_OUTPUT = "/act/div6/"  # our h-swish's last op (keras_models.blocks.hard_swish); "act/mul" and "act/add3" feed it
SE_GATE = "/squeeze_excite/Mul/"  # the MUL that scales the block's features by the SE gate
SE_BRANCH = "/squeeze_excite/"


def _name(subgraph, index: int) -> str:
    name = subgraph.tensors[index].name
    return name.decode() if isinstance(name, bytes) else name


def hswish_groups(subgraph) -> list[tuple]:
    """Every lowered h-swish of `subgraph` as (x1/6 MUL, MUL(x, gate), ADD(x, 3) + RELU6, x tensor index)."""
    producer = {int(op.outputs[0]): op for op in subgraph.operators}
    groups = []
    for op in subgraph.operators:
        name = _name(subgraph, int(op.outputs[0]))
        if HSWISH_OUTPUT not in name or SE_BRANCH in name:
            continue
        # x1/6 <- MUL(x, gate) <- gate = ADD(x, 3) with RELU6 fused; the constants have no producer
        product = next((producer[int(i)] for i in op.inputs if int(i) in producer), None)
        if product is None:
            continue
        inputs = [int(i) for i in product.inputs]
        gates = [i for i in inputs if i in producer and "/act/add3" in _name(subgraph, int(producer[i].outputs[0]))]
        if len(gates) == 1 and len(inputs) == 2:
            groups.append((op, product, producer[gates[0]], next(i for i in inputs if i != gates[0])))
    return groups


def cut(content: bytes, *, hswish: bool, squeeze_excite: bool) -> tuple[bytes, int]:
    """`content` with the chosen op groups removed (module docstring); returns the file and how many ops went."""
    import numpy as np
    from ai_edge_litert.tools import flatbuffer_utils

    model_t = flatbuffer_utils.read_model_from_bytearray(bytearray(content))
    subgraph = model_t.subgraphs[0]
    bypass: dict[int, int] = {}  # tensor -> the tensor its readers read instead
    dropped: list = []
    if hswish:
        for divide, product, gate, source in hswish_groups(subgraph):
            bypass[int(divide.outputs[0])] = source
            dropped += [divide, product, gate]
    for op in subgraph.operators if squeeze_excite else ():
        name = _name(subgraph, int(op.outputs[0]))  # fused tensors are named "a;b;c": one of them names our layer
        if SE_GATE in name:
            gate = next(int(i) for i in op.inputs if SE_BRANCH in _name(subgraph, int(i))
                        and SE_GATE not in _name(subgraph, int(i)))
            features = next(int(i) for i in op.inputs if int(i) != gate)
            bypass[int(op.outputs[0])] = features
            dropped.append(op)
        elif SE_BRANCH in name:
            dropped.append(op)

    def resolve(index: int) -> int:
        while index in bypass:
            index = bypass[index]
        return index

    kept = [op for op in subgraph.operators if all(op is not d for d in dropped)]
    for op in kept:
        op.inputs = np.array([resolve(int(i)) if i >= 0 else i for i in op.inputs], np.int32)
    subgraph.outputs = np.array([resolve(int(i)) for i in subgraph.outputs], np.int32)
    subgraph.operators = kept
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model_t)), len(dropped)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=DEFAULT_MODEL, help="our int8 V3-Small (default: bench.imagenet_import's)")
    p.add_argument("--runs", type=int, default=300)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    if not os.path.isfile(args.model):
        sys.exit(f"error: {args.model} not found: run `python -m bench.imagenet_import` first or pass --model")
    from bench.latency import describe
    from tflite_export.benchmark import benchmark_models

    machine = _common.machine()
    with open(args.model, "rb") as f:
        content = f.read()
    workdir = tempfile.mkdtemp(prefix="bench-op-share-")
    files = {"Google V3-Small uint8 (reference)": _common.reference_v3_small(), "ours int8 (as exported)": args.model}
    removed = {}
    for label, options in (("without h-swish", dict(hswish=True, squeeze_excite=False)),
                           ("without squeeze-excite", dict(hswish=False, squeeze_excite=True)),
                           ("without both", dict(hswish=True, squeeze_excite=True))):
        data, removed[label] = cut(content, **options)
        path = os.path.join(workdir, label.replace(" ", "_") + ".tflite")
        with open(path, "wb") as f:
            f.write(data)
        files[f"ours, {label}"] = path
    names = list(files)
    results = [dataclasses.asdict(r) for r in benchmark_models([files[n] for n in names], threads=[1], runs=args.runs,
                                                                warmup=args.warmup)]
    ours_ms = results[1]["median_ms"]
    rows = []
    for name, r in zip(names, results):
        d = describe(files[name])
        r["name"] = name
        cut_ops = next((count for label, count in removed.items() if name.endswith(label)), 0)
        rows.append([name, f"{r['median_ms']:.3f}", f"{r['p10_ms']:.3f}-{r['p90_ms']:.3f}",
                     f"{r['ratio_vs_first']:.3f}", f"{r['median_ms'] / ours_ms:.3f}", d["ops"], cut_ops,
                     d["xnnpack_partitions"]])
    print(_common.table(["file (224, 1 thread)", "median ms", "p10-p90 ms", "x Google", "x ours", "ops", "ops cut",
                         "XNNPACK partitions"], rows))
    print(f"machine: {machine['cpu']} ({machine['isa']}), {machine['nproc']} cores, load average at start "
          f"{machine.get('loadavg_at_start')}; revision {_common.git_revision()}")
    _common.write_json(args.json, {"machine": machine, "model": args.model, "removed": removed, "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
