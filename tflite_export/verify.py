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
import functools
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
# XNNPACK's int8 convolutions and fully-connected ops multiply the accumulator by input scale x filter scale /
# output scale, and refuse to create the operator when that factor is >= 256 (XNNPACK's convolution-nhwc.c); LiteRT's
# delegate then aborts the process (measured with LiteRT 2.3: a factor of 255.9 runs, 256.1 dies with "free(): double
# free detected"). Trained models' factors are below 0.1.
MAX_REQUANTIZATION_SCALE = 256.0
_REQUANTIZED_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV")
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
    requantization_overflows: list[str]  # ops whose requantization scale XNNPACK refuses (>= MAX_REQUANTIZATION_SCALE)
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


@functools.cache  # looked up per op and per tensor
def _enum_names(enum_cls) -> dict[int, str]:
    return {value: key for key, value in vars(enum_cls).items() if not key.startswith("_") and isinstance(value, int)}


def op_name(builtin_code: int) -> str:
    return _enum_names(_schema().BuiltinOperator).get(builtin_code, f"BUILTIN_{builtin_code}")


def tensor_type_name(type_code: int) -> str:
    return _enum_names(_schema().TensorType).get(type_code, f"TYPE_{type_code}")


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
        overflows: list[str] = []
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
                if s == 0 and name in _REQUANTIZED_OPS:
                    # TRANSPOSE_CONV's inputs are (output shape, filter, input, bias); the others' (input, filter, ...)
                    factor = _requantization_scale(sg, op, 2 if name == "TRANSPOSE_CONV" else 0, 1)
                    if factor is not None and factor >= MAX_REQUANTIZATION_SCALE:
                        overflows.append(f"{name} #{o} (scale {factor:.4g})")
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
            requantization_overflows=overflows,
            edge_quantize_ops=edge_q,
            inner_quantize_ops=inner_q,
            has_metadata=METADATA_BUFFER_NAME in metadata_entries,
            metadata_entries=metadata_entries,
        )
    except (struct.error, IndexError, TypeError, ValueError, AttributeError, UnicodeError) as exc:  # corrupt offsets
        raise ModelError(f"corrupt TFLite flatbuffer ({type(exc).__name__}: {exc})") from None


def _child_failure(returncode: int, stderr: str) -> str:
    """What a child process that died says, in one line: the signal's name and LiteRT's or libc's last words."""
    import signal

    if returncode < 0:
        try:
            how = f"died with {signal.Signals(-returncode).name}"
        except ValueError:
            how = f"died with signal {-returncode}"
    else:
        how = f"exited with status {returncode}"
    words = [line.strip() for line in stderr.splitlines() if line.strip() and not line.startswith("INFO:")]
    return how + (f" ({words[-1][:200]})" if words else "")


def _requantization_scale(sg, op, input_slot: int, filter_slot: int) -> float | None:
    """The largest input scale x filter scale / output scale over the output channels of an 8-bit op, or None."""
    def scales(index: int):
        quant = sg.Tensors(index).Quantization() if index >= 0 else None
        return quant.ScaleAsNumpy() if quant is not None and quant.ScaleLength() else None

    inputs = op.InputsAsNumpy() if op.InputsLength() > max(input_slot, filter_slot) else None
    if inputs is None or not op.OutputsLength():
        return None
    activation, weights, output = scales(int(inputs[input_slot])), scales(int(inputs[filter_slot])), \
        scales(int(op.OutputsAsNumpy()[0]))
    if activation is None or weights is None or output is None or not output[0] > 0:
        return None
    return float(activation[0] * np.max(weights) / output[0])


def xnnpack_child_command(model_path: str) -> list[str]:
    """The command that prints what XNNPACK makes of the file `model_path` (tflite_export/xnnpack_child.py): isolated
    (-I) and run through runpy, so that neither the working directory nor this package's folder (its `inspect`
    module) shadows the standard library."""
    import sys

    child = os.path.join(os.path.dirname(os.path.abspath(__file__)), "xnnpack_child.py")
    runner = "import runpy, sys; runpy.run_path(sys.argv.pop(1), run_name='__main__')"
    return [sys.executable, "-I", "-c", runner, child, model_path]


def _xnnpack_analysis(data: bytes) -> dict:
    """Partition count and undelegated nodes when LiteRT applies its default XNNPACK delegate (see module doc), read
    in a child process (tflite_export/xnnpack_child.py): a model that crashes the delegate natively is reported in
    `xnnpack_error` instead of killing the caller."""
    import json
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory(prefix="xnnpack-check-") as folder:
        path = os.path.join(folder, "model.tflite")
        with open(path, "wb") as f:
            f.write(data)
        result = subprocess.run(xnnpack_child_command(path), cwd=folder, capture_output=True, text=True, timeout=600)
    failed = dict(xnnpack_partitions=None, xnnpack_undelegated={}, xnnpack_undelegated_edge={})
    if result.returncode:
        return {**failed, "xnnpack_error": "LiteRT's XNNPACK delegate crashed loading the model: the check process "
                + _child_failure(result.returncode, result.stderr)}
    try:
        found = json.loads(result.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {**failed, "xnnpack_error": f"the XNNPACK check printed no result ({first_line(result.stderr)})"}
    if "error" in found:
        return {**failed, "xnnpack_error": f"LiteRT could not load the model: {found['error']}"}
    return dict(xnnpack_partitions=found["partitions"], xnnpack_undelegated=found["undelegated"],
                xnnpack_undelegated_edge=found["undelegated_edge"], xnnpack_error=None)


def check_runs_in_xnnpack(model: bytes | str | os.PathLike, name: str | os.PathLike = "the model") -> None:
    """ModelError (one line naming `name`) when LiteRT's XNNPACK interpreter would kill this process on `model`."""
    reason = xnnpack_crash(model)
    if reason:
        raise ModelError(f"{name}: LiteRT cannot run the model: {reason}")


def xnnpack_crash(model: bytes | str | os.PathLike) -> str | None:
    """Why LiteRT's default (XNNPACK) interpreter would kill this process on `model`, or None: what a tool checks
    before it builds interpreters in its own process. A ModelError for a file that is not a TFLite model."""
    data = load_model_bytes(model)
    static = _static_analysis(data)
    if static["requantization_overflows"]:
        return _overflow_problem(static["requantization_overflows"])
    if static["collapsed_ranges"]:
        return _collapsed_problem(static["collapsed_ranges"])
    error = _xnnpack_analysis(data)["xnnpack_error"]
    return error if error and "crashed" in error else None


def analyze(model: bytes | str | os.PathLike, *, xnnpack: bool = True) -> ModelAnalysis:
    """Describe a TFLite model (bytes or path). Raises ModelError if it is not a readable TFLite model."""
    data = load_model_bytes(model)
    static = _static_analysis(data)
    skipped = None if xnnpack else "not analysed"
    if xnnpack and static["requantization_overflows"]:
        skipped = ("not run: the model has convolutions XNNPACK refuses (requantization scale >= "
                   f"{MAX_REQUANTIZATION_SCALE:g}; LiteRT's delegate aborts on them)")
    elif xnnpack and static["collapsed_ranges"]:
        skipped = "not run: the model has collapsed activation ranges (LiteRT's XNNPACK delegate aborts on them)"
    runtime = _xnnpack_analysis(data) if skipped is None else dict(
        xnnpack_partitions=None, xnnpack_undelegated={}, xnnpack_undelegated_edge={}, xnnpack_error=skipped)
    return ModelAnalysis(size_bytes=len(data), has_associated_files=_has_appended_zip(data), **static, **runtime)


def _collapsed_problem(collapsed: list[str]) -> str:
    return (f"{len(collapsed)} activation tensor(s) with a collapsed range (< {COLLAPSED_RANGE:g} wide: constant in "
            f"calibration, e.g. {collapsed[0]}); the network's activations died, typically from training on too few "
            "images")


def _overflow_problem(overflows: list[str]) -> str:
    return (f"{len(overflows)} op(s) whose requantization scale (input scale x filter scale / output scale) is >= "
            f"{MAX_REQUANTIZATION_SCALE:g}, which XNNPACK cannot run and LiteRT aborts on, e.g. {overflows[0]}: an "
            "output range far narrower than its weights (degenerate BatchNorm statistics or calibration)")


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
        problems.append(_collapsed_problem(analysis.collapsed_ranges))
    if analysis.requantization_overflows:
        problems.append(_overflow_problem(analysis.requantization_overflows))
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
