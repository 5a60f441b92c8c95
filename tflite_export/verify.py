"""Static and runtime checks of an exported TFLite model: op list, tensor types, I/O, XNNPACK delegation.

`analyze(model)` describes a model; `verify(model, ...)` raises `VerificationError` listing every problem found.

How the XNNPACK numbers are obtained
------------------------------------
LiteRT's Python `Interpreter` (ai-edge-litert) applies the XNNPACK delegate by default (op resolver AUTO) when the
tensors are allocated, exactly as an app using the default CPU path does. After that, the interpreter's node list
holds the model's original nodes followed by one `DELEGATE` node per delegated partition (the replaced original nodes
stay in the list but are no longer in the execution plan). So:

* partitions = number of `DELEGATE` nodes;
* the original nodes that a partition replaced are found by walking back from the `DELEGATE` node's output tensors
  to its input tensors (a partition is a convex set of nodes whose boundary tensors are exactly the `DELEGATE`
  node's inputs and outputs); every original node not reached by any partition runs on LiteRT's reference kernels
  ("not delegated").

Checked against LiteRT 2.3.0: Google's V3-Small uint8 model gives 21 partitions with 19 HARD_SWISH, 11
AVERAGE_POOL_2D and 1 SOFTMAX left out (88 + 31 = all 119 nodes); Coral's TF2 full-integer MobileNetV2 gives one
partition with its two uint8<->int8 QUANTIZE edge ops and the int8 SOFTMAX left out. XNNPACK has no int8 SOFTMAX
and no uint8<->int8 requantization, so a uint8-I/O classifier with a softmax cannot be delegated 100%; such ops at the
model's edges do not split the graph and are tolerated by default (`allow_undelegated_edge_ops`), anything else is not.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import struct
from typing import Iterable

import numpy as np

from tflite_export.cli import first_line
from tflite_export.files import ModelError, load_model_bytes

__all__ = ["ModelAnalysis", "TensorInfo", "VerificationError", "ModelError", "analyze", "verify", "op_name"]

METADATA_BUFFER_NAME = "TFLITE_METADATA"
# Ops that may stay on LiteRT's reference kernels when they sit at the model's edges (before or after the single
# XNNPACK partition): XNNPACK cannot run int8 softmax nor uint8<->int8 requantization.
DEFAULT_EDGE_OPS_ALLOWED_UNDELEGATED = ("QUANTIZE", "SOFTMAX")
# An 8-bit activation range narrower than this is a collapsed range: the tensor held one constant value in calibration
# (a network whose activations died, e.g. trained with BatchNorm over single-image batches), and the converter's
# floor of 1e-6 leaves scales of ~4e-9. LiteRT's XNNPACK delegate aborted the whole process ("double free or
# corruption") on such a model, so it is not handed to the interpreter. Healthy models' narrowest activation ranges
# are ~1 (Google's and Coral's reference models: scale >= 0.0039, i.e. a range of 1.0).
COLLAPSED_RANGE = 1e-4
_FIXED_BATCH_FORBIDDEN_OPS = ("SHAPE", "STRIDED_SLICE", "PACK")
_FLOAT_TYPES = ("FLOAT32", "FLOAT16", "FLOAT64", "BFLOAT16")
_NUMPY_DTYPE_NAMES = {"UINT8": "uint8", "INT8": "int8", "INT16": "int16", "INT32": "int32", "INT64": "int64",
                      "FLOAT32": "float32", "FLOAT16": "float16", "FLOAT64": "float64", "BOOL": "bool"}


class VerificationError(ValueError):
    """The model breaks one or more of the export rules; `.problems` lists them, `.analysis` has the details."""

    def __init__(self, problems: list[str], analysis: "ModelAnalysis | None" = None):
        self.problems = list(problems)
        self.analysis = analysis
        super().__init__(f"{len(self.problems)} problem(s): " + "; ".join(self.problems))


@dataclasses.dataclass
class TensorInfo:
    name: str
    index: int
    shape: list[int]
    shape_signature: list[int]
    dtype: str  # numpy-style name: uint8, int8, float32, ...
    scale: float | None  # per-tensor quantization (None if not quantized / per-axis)
    zero_point: int | None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class ModelAnalysis:
    size_bytes: int
    num_subgraphs: int
    num_ops: int  # operators in all subgraphs
    op_histogram: dict[str, int]  # builtin op name -> count, all subgraphs, most frequent first
    op_sequence: list[str]  # subgraph 0, in model order
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    float_tensors: list[str]  # "name (FLOAT32)" for every float tensor, constants included
    dynamic_tensors: list[str]  # tensors whose shape_signature has -1
    collapsed_ranges: list[str]  # 8-bit activation tensors whose quantized range is narrower than COLLAPSED_RANGE
    edge_quantize_ops: int  # QUANTIZE ops reading a graph input or writing a graph output
    inner_quantize_ops: int  # the other QUANTIZE ops
    xnnpack_partitions: int | None  # None if the interpreter could not be built (see xnnpack_error)
    xnnpack_undelegated: dict[str, int]  # op name -> count of nodes left on reference kernels
    xnnpack_undelegated_edge: dict[str, int]  # the subset that does not sit between two delegated nodes
    xnnpack_error: str | None
    has_metadata: bool
    metadata_entries: list[str]  # names of Model.metadata entries (TFLITE_METADATA, min_runtime_version, ...)
    has_associated_files: bool  # a zip archive (labels ...) appended to the flatbuffer

    @property
    def xnnpack_undelegated_count(self) -> int:
        return sum(self.xnnpack_undelegated.values())

    @property
    def is_integer_only(self) -> bool:
        return not self.float_tensors

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["xnnpack_undelegated_count"] = self.xnnpack_undelegated_count
        return out


# ------------------------------------------------------------------------------------------------------------ parsing
def _schema():
    from ai_edge_litert import schema_py_generated as schema_fb  # maintained generated TFLite schema

    return schema_fb


def _enum_names(enum_cls) -> dict[int, str]:
    return {value: key for key, value in vars(enum_cls).items() if not key.startswith("_") and isinstance(value, int)}


def op_name(builtin_code: int) -> str:
    return _enum_names(_schema().BuiltinOperator).get(builtin_code, f"BUILTIN_{builtin_code}")


def _decode(value) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, (bytes, bytearray)) else str(value or "")


def _tensor_info(tensor, index: int, type_names: dict[int, str]) -> TensorInfo:
    shape = [int(v) for v in tensor.ShapeAsNumpy()] if tensor.ShapeLength() else []
    signature = [int(v) for v in tensor.ShapeSignatureAsNumpy()] if tensor.ShapeSignatureLength() else list(shape)
    type_name = type_names.get(tensor.Type(), str(tensor.Type()))
    scale = zero_point = None
    quant = tensor.Quantization()
    if quant is not None and quant.ScaleLength() == 1:
        scale = float(quant.Scale(0))
        zero_point = int(quant.ZeroPoint(0)) if quant.ZeroPointLength() else 0
    return TensorInfo(
        name=_decode(tensor.Name()), index=index, shape=shape, shape_signature=signature,
        dtype=_NUMPY_DTYPE_NAMES.get(type_name, type_name.lower()), scale=scale, zero_point=zero_point,
    )


def _has_appended_zip(data: bytes) -> bool:
    import io
    import zipfile

    if b"PK\x05\x06" not in data[-65557:]:
        return False
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            return bool(archive.namelist())
    except (zipfile.BadZipFile, OSError, ValueError):
        return False


def _static_analysis(data: bytes) -> dict:
    schema_fb = _schema()
    type_names = _enum_names(schema_fb.TensorType)
    try:
        model = schema_fb.Model.GetRootAs(data, 0)
        codes = []
        for i in range(model.OperatorCodesLength()):
            oc = model.OperatorCodes(i)
            code = max(int(oc.BuiltinCode()), int(oc.DeprecatedBuiltinCode()))
            name = op_name(code)
            if name == "CUSTOM":
                name = f"CUSTOM:{_decode(oc.CustomCode())}"
            codes.append(name)
        histogram: collections.Counter = collections.Counter()
        sequence: list[str] = []
        float_tensors: list[str] = []
        dynamic: list[str] = []
        collapsed: list[str] = []
        inputs: list[TensorInfo] = []
        outputs: list[TensorInfo] = []
        edge_q = inner_q = 0
        for s in range(model.SubgraphsLength()):
            sg = model.Subgraphs(s)
            prefix = f"subgraph{s}/" if s else ""
            graph_inputs = {int(v) for v in sg.InputsAsNumpy()} if sg.InputsLength() else set()
            graph_outputs = {int(v) for v in sg.OutputsAsNumpy()} if sg.OutputsLength() else set()
            for t in range(sg.TensorsLength()):
                tensor = sg.Tensors(t)
                info = _tensor_info(tensor, t, type_names)
                type_name = type_names.get(tensor.Type(), "")
                if type_name in _FLOAT_TYPES:
                    float_tensors.append(f"{prefix}{info.name or '#' + str(t)} ({type_name})")
                if any(v < 0 for v in info.shape_signature):
                    dynamic.append(f"{prefix}{info.name or '#' + str(t)} {info.shape_signature}")
                constant = bool(model.Buffers(tensor.Buffer()).DataLength()) if tensor.Buffer() else False
                if (info.dtype in ("int8", "uint8") and info.scale is not None and not constant
                        and info.scale * 255 < COLLAPSED_RANGE):
                    collapsed.append(f"{prefix}{info.name or '#' + str(t)} (scale {info.scale:.3g})")
                if s == 0 and t in graph_inputs:
                    inputs.append((list(sg.InputsAsNumpy()).index(t), info))
                if s == 0 and t in graph_outputs:
                    outputs.append((list(sg.OutputsAsNumpy()).index(t), info))
            for o in range(sg.OperatorsLength()):
                op = sg.Operators(o)
                name = codes[op.OpcodeIndex()]
                histogram[name] += 1
                if s == 0:
                    sequence.append(name)
                if name == "QUANTIZE":
                    ins = {int(v) for v in op.InputsAsNumpy()} if op.InputsLength() else set()
                    outs = {int(v) for v in op.OutputsAsNumpy()} if op.OutputsLength() else set()
                    if ins & graph_inputs or outs & graph_outputs:
                        edge_q += 1
                    else:
                        inner_q += 1
        metadata_entries = [_decode(model.Metadata(i).Name()) for i in range(model.MetadataLength())]
        return dict(
            num_subgraphs=model.SubgraphsLength(),
            num_ops=sum(histogram.values()),
            op_histogram=dict(sorted(histogram.items(), key=lambda kv: (-kv[1], kv[0]))),
            op_sequence=sequence,
            inputs=[info for _, info in sorted(inputs, key=lambda p: p[0])],
            outputs=[info for _, info in sorted(outputs, key=lambda p: p[0])],
            float_tensors=float_tensors,
            dynamic_tensors=dynamic,
            collapsed_ranges=collapsed,
            edge_quantize_ops=edge_q,
            inner_quantize_ops=inner_q,
            has_metadata=METADATA_BUFFER_NAME in metadata_entries,
            metadata_entries=metadata_entries,
        )
    except (struct.error, IndexError, TypeError, ValueError, AttributeError, UnicodeError) as exc:  # corrupt offsets
        raise ModelError(f"corrupt TFLite flatbuffer ({type(exc).__name__}: {exc})") from None


def _xnnpack_analysis(data: bytes) -> dict:
    """Partition count and undelegated nodes when LiteRT applies its default XNNPACK delegate (see module doc)."""
    from ai_edge_litert.interpreter import Interpreter

    try:
        interpreter = Interpreter(model_content=data, num_threads=1)
        interpreter.allocate_tensors()
    except Exception as exc:  # noqa: BLE001  (LiteRT raises RuntimeError/ValueError with C++ messages)
        return dict(xnnpack_partitions=None, xnnpack_undelegated={}, xnnpack_undelegated_edge={},
                    xnnpack_error=f"LiteRT could not load the model: {first_line(exc)}")
    w = interpreter._interpreter  # noqa: SLF001 - the pybind wrapper: NodeName/NodeInputs/NodeOutputs cover the delegate nodes too
    n = w.NumNodes()
    names = [w.NodeName(i) for i in range(n)]
    node_inputs = [[int(t) for t in w.NodeInputs(i)] for i in range(n)]
    node_outputs = [[int(t) for t in w.NodeOutputs(i)] for i in range(n)]
    delegates = [i for i in range(n) if names[i] == "DELEGATE"]
    originals = [i for i in range(n) if names[i] != "DELEGATE"]
    producer: dict[int, int] = {}
    consumers: dict[int, list[int]] = collections.defaultdict(list)
    for i in originals:
        for t in node_outputs[i]:
            producer[t] = i
        for t in node_inputs[i]:
            consumers[t].append(i)
    delegated: set[int] = set()
    for d in delegates:
        boundary = set(node_inputs[d])
        stack = list(node_outputs[d])
        seen: set[int] = set()
        while stack:
            t = stack.pop()
            if t < 0 or t in seen or t in boundary:
                continue
            seen.add(t)
            p = producer.get(t)
            if p is None or p in delegated:
                continue
            delegated.add(p)
            stack.extend(node_inputs[p])
    undelegated = [i for i in originals if i not in delegated]

    def reaches_delegated(start: int, forward: bool) -> bool:
        stack, seen = [start], {start}
        while stack:
            node = stack.pop()
            tensors = node_outputs[node] if forward else node_inputs[node]
            nxt = [c for t in tensors for c in consumers.get(t, [])] if forward else \
                [producer[t] for t in tensors if t in producer]
            for m in nxt:
                if m in delegated:
                    return True
                if m not in seen:
                    seen.add(m)
                    stack.append(m)
        return False

    edge = [i for i in undelegated if not (reaches_delegated(i, True) and reaches_delegated(i, False))]
    return dict(
        xnnpack_partitions=len(delegates),
        xnnpack_undelegated=dict(collections.Counter(names[i] for i in undelegated)),
        xnnpack_undelegated_edge=dict(collections.Counter(names[i] for i in edge)),
        xnnpack_error=None,
    )


def analyze(model: bytes | str | os.PathLike, *, xnnpack: bool = True) -> ModelAnalysis:
    """Describe a TFLite model (bytes or path). Raises ModelError if it is not a readable TFLite model."""
    data = load_model_bytes(model)
    static = _static_analysis(data)
    skipped = None if xnnpack else "not analysed"
    if xnnpack and static["collapsed_ranges"]:
        skipped = "not run: the model has collapsed activation ranges (LiteRT's XNNPACK delegate aborts on them)"
    runtime = _xnnpack_analysis(data) if skipped is None else dict(
        xnnpack_partitions=None, xnnpack_undelegated={}, xnnpack_undelegated_edge={}, xnnpack_error=skipped)
    return ModelAnalysis(size_bytes=len(data), has_associated_files=_has_appended_zip(data), **static, **runtime)


def problems_of(
    analysis: ModelAnalysis,
    *,
    allow_hard_swish: bool = False,
    io_dtype: str | None = "uint8",
    allow_undelegated_edge_ops: Iterable[str] = DEFAULT_EDGE_OPS_ALLOWED_UNDELEGATED,
) -> list[str]:
    """Every broken export rule, as human-readable strings (empty list = the model passes)."""
    problems: list[str] = []
    hist = analysis.op_histogram
    if hist.get("HARD_SWISH") and not allow_hard_swish:
        problems.append(f"{hist['HARD_SWISH']} HARD_SWISH op(s) (h-swish must be lowered)")
    if hist.get("LOGISTIC"):
        problems.append(f"{hist['LOGISTIC']} LOGISTIC op(s) (sigmoid must be lowered)")
    if hist.get("DEQUANTIZE"):
        problems.append(f"{hist['DEQUANTIZE']} DEQUANTIZE op(s)")
    if analysis.inner_quantize_ops:
        problems.append(f"{analysis.inner_quantize_ops} QUANTIZE op(s) inside the graph (only the model's input/output "
                        "edges may requantize)")
    if analysis.float_tensors:
        shown = ", ".join(analysis.float_tensors[:5]) + (" ..." if len(analysis.float_tensors) > 5 else "")
        problems.append(f"{len(analysis.float_tensors)} float tensor(s): {shown}")
    if io_dtype:
        for kind, tensors in (("input", analysis.inputs), ("output", analysis.outputs)):
            for t in tensors:
                if t.dtype != io_dtype:
                    problems.append(f"{kind} {t.name!r} is {t.dtype}, expected {io_dtype}")
    if analysis.collapsed_ranges:
        problems.append(f"{len(analysis.collapsed_ranges)} activation tensor(s) with a collapsed range (< "
                        f"{COLLAPSED_RANGE:g} wide: constant in calibration, e.g. {analysis.collapsed_ranges[0]}); the "
                        "network's activations died, typically from training on too few images")
    if analysis.dynamic_tensors:
        problems.append(f"dynamic shapes (shape_signature -1, fixed batch 1 expected): {analysis.dynamic_tensors[0]}"
                        + (f" and {len(analysis.dynamic_tensors) - 1} more"
                           if len(analysis.dynamic_tensors) > 1 else ""))
    for name in _FIXED_BATCH_FORBIDDEN_OPS:
        if hist.get(name):
            problems.append(f"{hist[name]} {name} op(s) (dynamic-shape arithmetic; fixed batch 1 expected)")
    if analysis.num_subgraphs != 1:
        problems.append(f"{analysis.num_subgraphs} subgraphs (expected 1)")
    if analysis.xnnpack_error:
        problems.append(f"XNNPACK delegation not checked: {analysis.xnnpack_error}")
    else:
        # A HARD_SWISH the caller asked to keep is the one op XNNPACK leaves out in int8: each one splits the graph, so
        # the single-partition rule only holds for lowered h-swish.
        kept_hard_swish = hist.get("HARD_SWISH", 0) if allow_hard_swish else 0
        if analysis.xnnpack_partitions != 1 and not kept_hard_swish:
            problems.append(f"XNNPACK delegates {analysis.xnnpack_partitions} partitions (expected 1)")
        allowed = set(allow_undelegated_edge_ops)
        bad = collections.Counter(analysis.xnnpack_undelegated)
        bad["HARD_SWISH"] -= kept_hard_swish
        for name, count in analysis.xnnpack_undelegated_edge.items():
            if name in allowed:
                bad[name] -= count
        bad = {k: v for k, v in bad.items() if v > 0}
        if bad:
            listed = ", ".join(f"{k} x{v}" for k, v in sorted(bad.items(), key=lambda kv: (-kv[1], kv[0])))
            problems.append(f"{sum(bad.values())} op(s) not delegated to XNNPACK: {listed}")
    return problems


def verify(
    model: bytes | str | os.PathLike,
    *,
    allow_hard_swish: bool = False,
    io_dtype: str | None = "uint8",
    allow_undelegated_edge_ops: Iterable[str] = DEFAULT_EDGE_OPS_ALLOWED_UNDELEGATED,
) -> ModelAnalysis:
    """Analyse and enforce the export rules; returns the analysis or raises VerificationError listing every problem.

    `io_dtype=None` skips the I/O type check. `allow_undelegated_edge_ops=()` is the strictest rule: every node must
    run inside the XNNPACK partition (impossible for uint8 I/O or an int8 softmax with LiteRT 2.3, see module doc).
    """
    analysis = analyze(model)
    problems = problems_of(analysis, allow_hard_swish=allow_hard_swish, io_dtype=io_dtype,
                           allow_undelegated_edge_ops=allow_undelegated_edge_ops)
    if problems:
        raise VerificationError(problems, analysis)
    return analysis


def io_numpy_dtype(info: TensorInfo) -> np.dtype:
    return np.dtype(info.dtype)
