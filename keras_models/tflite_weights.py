"""ImageNet weights from a published quantized MobileNet .tflite file (Google's V3-Small uint8, the Coral V1/V2 files).

The official Keras weight files need a download; the quantized .tflite files Google published hold the same kind of
ImageNet-trained weights and can sit next to the project. A quantized file keeps every convolution as
(integer kernel, scale, zero point) plus an int32 bias into which training folded the BatchNorm, so:

* kernels are dequantized, `scale * (q - zero_point)`, per tensor (uint8, asymmetric) or per output channel (int8);
* a convolution followed by BatchNorm in our builders gets the folded kernel, and its BatchNorm becomes the identity
  plus the folded bias (gamma 1, beta = bias, moving mean 0, moving variance 1 - epsilon). Inference computes exactly
  what the file computes in float. Trained with batch statistics, such a BatchNorm would renormalize the folded
  outputs, so train it frozen (the transfer recipe of `pipeline.train_and_export` does);
* convolutions with a bias of their own (squeeze-and-excite, the last-stage conv, the classifier) take kernel and
  bias as they are.

The file's convolutions are matched with the model's Conv2D / DepthwiseConv2D layers in execution order, by kind,
kernel shape, channels and stride; the first difference is reported with both sides named (a V2 file into a V3
builder, alpha 0.75 into 1.0, ...). The classifier: a 1001-output file (TF-slim's background class at index 0) loads
into a 1000-class top with the background row dropped, or into a 1001-class top as it is; any other class count keeps
the model's freshly initialized classifier (a new head for transfer learning), as does `include_top=False`.

The file's activation ranges (`TfliteGraph.ranges`) are read too: quantization-aware training can start from them
(`pipeline.qat.import_activation_ranges`).
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from keras_models.backend import keras
from keras_models.weights import WeightsError

layers = keras.layers

_CONV_OPS = {"CONV_2D": "conv", "DEPTHWISE_CONV_2D": "depthwise"}
BACKGROUND_CLASSES = 1001  # TF-slim ImageNet classifiers: index 0 is "background"


@dataclasses.dataclass(frozen=True)
class TfliteConv:
    """One convolution of a .tflite file, dequantized into Keras' layout."""

    index: int  # operator index in the file
    kind: str  # "conv" or "depthwise"
    name: str  # the weight tensor's name, for messages
    kernel: np.ndarray  # Keras layout: (kh, kw, in, out) or, depthwise, (kh, kw, channels, 1)
    bias: np.ndarray | None
    stride: int

    def describe(self) -> str:
        kh, kw, cin, cout = self.kernel.shape
        shape = f"{kh}x{kw}, {cin} channels" if self.kind == "depthwise" else f"{kh}x{kw}, {cin} -> {cout}"
        return f"op {self.index} {self.kind} ({shape}, stride {self.stride}) '{self.name}'"


@dataclasses.dataclass(frozen=True)
class TfliteGraph:
    convs: list[TfliteConv]
    ranges: dict[str, tuple[float, float]]  # every quantized activation tensor: name -> (min, max) it can represent


def _dequantize(values: np.ndarray, quantization: dict) -> np.ndarray:
    scales = np.asarray(quantization["scales"], np.float64)
    zero_points = np.asarray(quantization["zero_points"], np.float64)
    if scales.size == 0:  # a float tensor
        return values.astype(np.float32)
    if scales.size > 1:  # per channel along quantized_dimension
        shape = [1] * values.ndim
        shape[quantization["quantized_dimension"]] = -1
        scales, zero_points = scales.reshape(shape), zero_points.reshape(shape)
    return ((values.astype(np.float64) - zero_points) * scales).astype(np.float32)


def _representable_range(tensor: dict) -> tuple[float, float] | None:
    q = tensor["quantization_parameters"]
    if len(q["scales"]) != 1 or not np.issubdtype(tensor["dtype"], np.integer):
        return None
    info = np.iinfo(tensor["dtype"])
    scale, zero_point = float(q["scales"][0]), int(q["zero_points"][0])
    return (info.min - zero_point) * scale, (info.max - zero_point) * scale


def read_tflite(path: str) -> TfliteGraph:
    """The file's convolutions (in execution order) and activation ranges. Raises WeightsError on an unreadable file."""
    if not os.path.isfile(path):
        raise WeightsError(f"weights file not found: {path}")
    try:
        from ai_edge_litert.interpreter import Interpreter, OpResolverType

        interpreter = Interpreter(
            model_path=path, experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
        operators = interpreter._get_ops_details()  # noqa: SLF001 - LiteRT's only public-enough view of the graph
        tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
    except Exception as err:  # noqa: BLE001 - LiteRT raises ValueError/RuntimeError for corrupt or truncated files
        raise WeightsError(f"{path} is not a readable .tflite file ({str(err).strip().splitlines()[0]})") from None

    convs = []
    for op in operators:
        kind = _CONV_OPS.get(op["op_name"])
        if kind is None:
            continue
        source, weights, bias = (tensors.get(i) for i in [*op["inputs"], -1][:3])  # no bias: index -1 or absent
        output = tensors[op["outputs"][0]]
        kernel = _dequantize(interpreter.get_tensor(weights["index"]), weights["quantization_parameters"])
        # TFLite: conv (out, kh, kw, in), depthwise (1, kh, kw, channels * multiplier); Keras: (kh, kw, in, out) and
        # (kh, kw, channels, multiplier). Only multiplier 1 occurs in MobileNets.
        kernel = kernel.transpose(1, 2, 3, 0)
        bias_values = None
        if bias is not None:
            bias_values = _dequantize(interpreter.get_tensor(bias["index"]), bias["quantization_parameters"])
        stride = max(1, round(int(source["shape"][1]) / int(output["shape"][1])))
        convs.append(TfliteConv(op["index"], kind, weights["name"], kernel, bias_values, stride))
    if not convs:
        raise WeightsError(f"{path} has no convolutions: not a MobileNet classifier")

    ranges = {}
    for tensor in tensors.values():
        bounds = _representable_range(tensor)
        if bounds is not None:
            ranges[tensor["name"]] = bounds
    return TfliteGraph(convs, ranges)


# The classifier layer of each builder (keras.applications' names): a 1x1 conv, or V2's Dense.
CLASSIFIER_NAMES = ("Logits", "conv_preds", "predictions")


def _kind(layer) -> str:
    return {layers.DepthwiseConv2D: "depthwise", layers.Dense: "dense"}.get(type(layer), "conv")


def _kernel_shape(layer) -> tuple:
    kernel = layer.depthwise_kernel if _kind(layer) == "depthwise" else layer.kernel
    return tuple(kernel.shape) if _kind(layer) != "dense" else (1, 1, *kernel.shape)


def _describe_layer(layer) -> str:
    kh, kw, cin, cout = _kernel_shape(layer)
    stride = layer.strides[0] if _kind(layer) != "dense" else 1
    shape = f"{kh}x{kw}, {cin} channels" if _kind(layer) == "depthwise" else f"{kh}x{kw}, {cin} -> {cout}"
    return f"layer '{layer.name}' {_kind(layer)} ({shape}, stride {stride})"


def _following_batch_norm(layer):
    consumers = [node.outbound_layer for node in layer.outbound_nodes]
    if len(consumers) == 1 and isinstance(consumers[0], layers.BatchNormalization):
        return consumers[0]
    return None


def _matches(layer, source: TfliteConv, *, classifier: bool) -> bool:
    shape = _kernel_shape(layer)
    stride = layer.strides[0] if _kind(layer) != "dense" else 1
    if classifier:  # any class count: the file's classifier may be dropped for a new head
        return source.kind == "conv" and source.kernel.shape[:3] == shape[:3]
    return source.kind == _kind(layer) and source.stride == stride and source.kernel.shape == shape


def load_tflite_weights(model: keras.Model, path: str) -> TfliteGraph:
    """Load the weights of the quantized MobileNet `path` into `model` (see the module docstring); returns the graph.

    Raises WeightsError naming the first layer that does not match the file.
    """
    graph = read_tflite(path)
    targets = [layer for layer in model.layers if type(layer) in (layers.Conv2D, layers.DepthwiseConv2D)
               or (type(layer) is layers.Dense and layer.name in CLASSIFIER_NAMES)]
    classifier = targets[-1] if targets and targets[-1].name in CLASSIFIER_NAMES else None
    sources = graph.convs
    for position, layer in enumerate(targets):
        is_classifier = layer is classifier
        source = sources[position] if position < len(sources) else None
        if source is None or (is_classifier and position != len(sources) - 1):
            raise WeightsError(f"{path} does not match the model: the model has {len(targets)} convolution layers "
                               f"up to its classifier, the file {len(sources)}")
        if not _matches(layer, source, classifier=is_classifier):
            raise WeightsError(f"{path} does not match the model: {_describe_layer(layer)} vs the file's "
                               f"{source.describe()}")
        if is_classifier:
            _load_classifier(layer, source)
        else:
            _load_conv(layer, source, path)
    return graph


def _load_conv(layer, source: TfliteConv, path: str) -> None:
    channels = source.kernel.shape[-1] if source.kind == "conv" else source.kernel.shape[2]
    bias = source.bias if source.bias is not None else np.zeros(channels, np.float32)
    batch_norm = _following_batch_norm(layer)
    if layer.use_bias:
        layer.set_weights([source.kernel, bias])
    elif batch_norm is not None:
        layer.set_weights([source.kernel])
        ones = np.ones_like(bias)
        batch_norm.set_weights([ones, bias, np.zeros_like(bias), ones - batch_norm.epsilon])
    elif np.any(bias):
        raise WeightsError(f"{path} does not match the model: {_describe_layer(layer)} has neither bias nor "
                           f"BatchNorm, the file's {source.describe()} has a bias")
    else:
        layer.set_weights([source.kernel])


def _load_classifier(layer, source: TfliteConv) -> None:
    """Copy the file's classifier when the class counts allow it (see the module docstring), else keep the new one."""
    classes = _kernel_shape(layer)[-1]
    file_classes = source.kernel.shape[-1]
    kernel, bias = source.kernel, source.bias
    if classes == file_classes - 1 == BACKGROUND_CLASSES - 1:
        kernel, bias = kernel[..., 1:], bias[1:]
    elif classes != file_classes:
        return
    layer.set_weights([kernel.reshape(_kernel_shape(layer)) if _kind(layer) != "dense" else kernel[0, 0], bias])


def check_label_count(path: str, labels: list[str], labels_file: str) -> None:
    """WeightsError unless the file's classifier gives one output per label (or one more, TF-slim's background class
    at output 0): with another count the imported model would ship a new, untrained classifier."""
    convs = read_tflite(path).convs
    outputs = int(convs[-1].kernel.shape[-1]) if convs else 0
    accepted = (outputs, outputs - 1) if outputs == BACKGROUND_CLASSES else (outputs,)
    if len(labels) not in accepted:
        expected = " or ".join(str(n) for n in sorted(accepted))
        raise WeightsError(f"{labels_file} has {len(labels)} labels but the classifier of {path} gives {outputs} "
                           f"outputs: pass the file's own label list ({expected} lines); importing keeps the file's "
                           "classifier and trains no new one")

