"""TFLite metadata for image classifiers: write it into a model and read it back.

What is written is what the official TFLite Support / MediaPipe `image_classifier` metadata writer produces (and what
Android Studio ML Model Binding, the Task Library and LiteRT's metadata reader expect):

* `Model.metadata["TFLITE_METADATA"]` -> a buffer holding a `ModelMetadata` flatbuffer (file identifier "M001") with
  name, description, version, author, license and min_parser_version;
* input tensor "image": `ImageProperties` (RGB), a `NormalizationOptions` process unit (mean/std) and the value range
  in `stats` (0..255 for uint8 input, the normalized range for float input);
* output tensor "probability": `FeatureProperties`, `stats` (0..255 uint8 / 0..1 float) and the labels as an
  associated file `labels.txt` of type TENSOR_AXIS_LABELS;
* the associated files packed as a zip archive appended to the flatbuffer (zipfile "append" mode on the model bytes,
  exactly as the official `MetadataPopulator` does), so the .tflite stays a valid model and a valid zip.

Schemas: the metadata flatbuffer classes come from MediaPipe's generated `metadata_schema_py_generated` (the
maintained home of the TFLite metadata schema; `tflite-support` cannot be installed next to TF 2.21 / protobuf 7),
the model flatbuffer is read and re-packed with LiteRT's `schema_py_generated` and `tools.flatbuffer_utils`.
MediaPipe's own `MetadataPopulator` is not used because mediapipe 1.2.2's `metadata.py` imports a native module
(`mediapipe.tasks.cc.metadata.python._pywrap_metadata_version`) that its wheel does not ship.
`min_parser_version` is "1.0.0": every field written here exists since metadata schema 1.0.0 (the same value
the official writer stores for this layout, e.g. in Coral's tf2_mobilenet_v2_1.0_224_ptq.tflite).
"""

from __future__ import annotations

import functools
import importlib.util
import io
import os
import zipfile
from typing import Any

from tflite_export.files import LABELS_FILE, ModelError, labels_text, load_model_bytes

__all__ = ["MetadataError", "write_metadata", "read_metadata", "metadata_to_json_dict"]

METADATA_FIELD_NAME = b"TFLITE_METADATA"
METADATA_FILE_IDENTIFIER = b"M001"
MIN_PARSER_VERSION = "1.0.0"
INPUT_NAME = "image"
INPUT_DESCRIPTION = "Input image to be classified."
OUTPUT_NAME = "probability"
OUTPUT_DESCRIPTION = "Probabilities of the labels respectively."
LOGITS_NAME = "logits"
LOGITS_DESCRIPTION = "Logits of the labels respectively (softmax turns them into probabilities; the order is the same)."
LABELS_DESCRIPTION = "Labels for categories that the model can recognize."


class MetadataError(ValueError):
    """Metadata cannot be written (bad arguments, model not an image classifier) or read (corrupt)."""


@functools.lru_cache(maxsize=1)
def _metadata_schema():
    """mediapipe's generated TFLite metadata schema module, loaded on its own.

    Importing it the usual way runs `mediapipe/__init__.py`, which pulls in the whole MediaPipe runtime (OpenCV,
    native task libraries) that mediapipe is installed without (see requirements-nodeps.txt). The generated schema
    file needs nothing but `flatbuffers`, so it is loaded from the installed package directly.
    """
    spec = importlib.util.find_spec("mediapipe")  # locates the package without executing its __init__
    path = os.path.join(os.path.dirname(spec.origin), "tasks", "metadata",
                        "metadata_schema_py_generated.py") if spec else ""
    if not os.path.isfile(path):
        raise MetadataError(
            "the TFLite metadata schema comes from the 'mediapipe' package, which is not installed: "
            "pip install --no-deps -r requirements-nodeps.txt"
        )
    module_spec = importlib.util.spec_from_file_location("mediapipe_metadata_schema_py_generated", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def _model_schema():
    from ai_edge_litert import schema_py_generated as schema_fb

    return schema_fb


# ------------------------------------------------------------------------------------------------------------- write
def _check_float_list(name: str, values, channels: int) -> list[float]:
    try:
        out = [float(v) for v in values]
    except TypeError:
        out = [float(values)]
    if not out or len(out) not in (1, channels):
        raise MetadataError(f"{name} must have 1 or {channels} values, got {len(out)}")
    if name == "std" and any(v == 0 for v in out):
        raise MetadataError("std must not be 0")
    return out


def write_metadata(
    model: bytes,
    *,
    labels: list[str],
    name: str,
    description: str,
    version: str,
    author: str,
    license: str,  # noqa: A002  (the metadata field's name)
    mean: list[float],
    std: list[float],
    logits: bool = False,
) -> bytes:
    """Return `model` (a single-input, single-output image classifier) with classifier metadata and labels packed in.
    `logits`: the output is the classifier's logits, not softmax probabilities (named and described so).

    Existing metadata and associated files are replaced. The model's tensors and buffers are not changed.
    """
    from ai_edge_litert.tools import flatbuffer_utils

    metadata_fb = _metadata_schema()
    schema_fb = _model_schema()
    data = load_model_bytes(model)
    labels = [str(label) for label in labels]
    if not labels:
        raise MetadataError("labels must not be empty")
    bad = [label for label in labels if "\n" in label or "\r" in label]
    if bad:
        raise MetadataError(f"labels must be single lines, got {bad[0]!r}")

    model_t = flatbuffer_utils.read_model_from_bytearray(bytearray(data))
    subgraph = model_t.subgraphs[0]
    if len(subgraph.inputs) != 1 or len(subgraph.outputs) != 1:
        raise MetadataError(f"expected an image classifier with 1 input and 1 output, got {len(subgraph.inputs)} "
                            f"input(s) and {len(subgraph.outputs)} output(s)")
    in_tensor = subgraph.tensors[subgraph.inputs[0]]
    out_tensor = subgraph.tensors[subgraph.outputs[0]]
    in_shape = [int(v) for v in in_tensor.shape]
    out_shape = [int(v) for v in out_tensor.shape]
    if len(in_shape) != 4 or in_shape[-1] != 3:
        raise MetadataError(f"expected an RGB image input [1, H, W, 3], got shape {in_shape}")
    num_outputs = out_shape[-1] if out_shape else 0
    if num_outputs != len(labels):
        raise MetadataError(f"{len(labels)} labels for an output of {num_outputs} classes")
    mean = _check_float_list("mean", mean, 3)
    std = _check_float_list("std", std, 3)
    if len(mean) != len(std):
        raise MetadataError(f"mean and std must have the same length, got {len(mean)} and {len(std)}")

    T = schema_fb.TensorType
    # Input: image properties, normalization, value range (as the official image classifier writer does).
    image = metadata_fb.TensorMetadataT()
    image.name = INPUT_NAME
    image.description = INPUT_DESCRIPTION
    image.content = metadata_fb.ContentT()
    image.content.contentPropertiesType = metadata_fb.ContentProperties.ImageProperties
    image.content.contentProperties = metadata_fb.ImagePropertiesT()
    image.content.contentProperties.colorSpace = metadata_fb.ColorSpaceType.RGB
    normalization = metadata_fb.ProcessUnitT()
    normalization.optionsType = metadata_fb.ProcessUnitOptions.NormalizationOptions
    normalization.options = metadata_fb.NormalizationOptionsT()
    normalization.options.mean = mean
    normalization.options.std = std
    image.processUnits = [normalization]
    if in_tensor.type == T.UINT8:
        image.stats = _stats([255.0], [0.0])
    elif in_tensor.type == T.FLOAT32:
        image.stats = _stats([(255.0 - m) / s for m, s in zip(mean, std)], [(0.0 - m) / s for m, s in zip(mean, std)])
    elif in_tensor.type == T.INT8:
        image.stats = _stats([127.0], [-128.0])

    # Output: score semantics, value range, labels as TENSOR_AXIS_LABELS.
    scores = metadata_fb.TensorMetadataT()
    scores.name = LOGITS_NAME if logits else OUTPUT_NAME
    scores.description = LOGITS_DESCRIPTION if logits else OUTPUT_DESCRIPTION
    scores.content = metadata_fb.ContentT()
    scores.content.contentPropertiesType = metadata_fb.ContentProperties.FeatureProperties
    scores.content.contentProperties = metadata_fb.FeaturePropertiesT()
    if out_tensor.type == T.UINT8:
        scores.stats = _stats([255.0], [0.0])
    elif out_tensor.type == T.FLOAT32 and not logits:  # float logits have no fixed range
        scores.stats = _stats([1.0], [0.0])
    elif out_tensor.type == T.INT8:
        scores.stats = _stats([127.0], [-128.0])
    label_file = metadata_fb.AssociatedFileT()
    label_file.name = LABELS_FILE
    label_file.description = LABELS_DESCRIPTION
    label_file.type = metadata_fb.AssociatedFileType.TENSOR_AXIS_LABELS
    scores.associatedFiles = [label_file]

    subgraph_md = metadata_fb.SubGraphMetadataT()
    subgraph_md.inputTensorMetadata = [image]
    subgraph_md.outputTensorMetadata = [scores]
    model_md = metadata_fb.ModelMetadataT()
    model_md.name = name
    model_md.description = description
    model_md.version = version
    model_md.author = author
    model_md.license = license
    model_md.minParserVersion = MIN_PARSER_VERSION
    model_md.subgraphMetadata = [subgraph_md]

    import flatbuffers

    builder = flatbuffers.Builder(0)
    builder.Finish(model_md.Pack(builder), METADATA_FILE_IDENTIFIER)
    metadata_buf = bytes(builder.Output())

    # Insert (or replace) the TFLITE_METADATA buffer, then re-pack the model flatbuffer.
    buffer_t = schema_fb.BufferT()
    import numpy as np

    buffer_t.data = np.frombuffer(metadata_buf, dtype=np.uint8)
    model_t.metadata = list(model_t.metadata or [])
    existing = [m for m in model_t.metadata if bytes(m.name or b"") == METADATA_FIELD_NAME]
    if existing:
        model_t.buffers[existing[0].buffer] = buffer_t
    else:
        model_t.buffers.append(buffer_t)
        entry = schema_fb.MetadataT()
        entry.name = METADATA_FIELD_NAME.decode()
        entry.buffer = len(model_t.buffers) - 1
        model_t.metadata.append(entry)
    packed = bytes(flatbuffer_utils.convert_object_to_bytearray(model_t))

    # Append the associated files as a zip archive (stored, as the official populator's zipfile default).
    stream = io.BytesIO()
    stream.write(packed)
    with zipfile.ZipFile(stream, "a") as archive:
        archive.writestr(LABELS_FILE, labels_text(labels))
    return stream.getvalue()


def _stats(max_values: list[float], min_values: list[float]):
    metadata_fb = _metadata_schema()
    stats = metadata_fb.StatsT()
    stats.max = [float(v) for v in max_values]
    stats.min = [float(v) for v in min_values]
    return stats


# -------------------------------------------------------------------------------------------------------------- read
def _metadata_buffer(data: bytes) -> bytes | None:
    schema_fb = _model_schema()
    try:
        model = schema_fb.Model.GetRootAs(data, 0)
        for i in range(model.MetadataLength()):
            entry = model.Metadata(i)
            if entry.Name() == METADATA_FIELD_NAME:
                buffer = model.Buffers(entry.Buffer())
                if buffer.Offset() > 1:  # large-model layout: data stored after the flatbuffer
                    return bytes(data[buffer.Offset(): buffer.Offset() + buffer.Size()])
                return buffer.DataAsNumpy().tobytes() if buffer.DataLength() else b""
    except (IndexError, TypeError, ValueError, AttributeError) as exc:
        raise ModelError(f"corrupt TFLite flatbuffer ({type(exc).__name__}: {exc})") from None
    return None


def _enum_name(enum_cls, value) -> str:
    for key, val in vars(enum_cls).items():
        if not key.startswith("_") and val == value:
            return key
    return str(value)


def _snake(name: str) -> str:
    return "".join("_" + c.lower() if c.isupper() else c for c in name)


# Enum-valued fields of the metadata schema -> their enum classes (for the JSON-style dump).
def _enum_fields(metadata_fb) -> dict[str, Any]:
    return {
        "contentPropertiesType": metadata_fb.ContentProperties,
        "optionsType": metadata_fb.ProcessUnitOptions,
        "colorSpace": metadata_fb.ColorSpaceType,
        "type": metadata_fb.AssociatedFileType,
    }


def metadata_to_json_dict(obj) -> Any:
    """A metadata object (ModelMetadataT ...) -> the dict the official tooling's JSON dump shows (snake_case keys,
    enum names, default/None fields left out), so it can be compared with e.g. mobilenet_v2_1.0_224_quant.json."""
    import numpy as np

    metadata_fb = _metadata_schema()
    enums = _enum_fields(metadata_fb)

    def convert(value, field: str | None = None):
        if value is None:
            return None
        if isinstance(value, (bytes, bytearray)):
            return value.decode("utf-8", "replace")
        if isinstance(value, np.ndarray):
            return [v.item() for v in value]
        if isinstance(value, (list, tuple)):
            return [convert(v) for v in value]
        if isinstance(value, (int, float, str, bool)):
            if field in enums:
                return None if value == 0 else _enum_name(enums[field], value)
            return value
        out = {}
        for key, val in vars(value).items():
            converted = convert(val, key)
            if converted is None:
                if key == "contentProperties":  # unions: an empty table still shows as {}
                    out[_snake(key)] = {}
                continue
            out[_snake(key)] = converted
        return out

    return convert(obj)


def read_metadata(model: bytes | str | os.PathLike) -> dict:
    """Read classifier metadata (and the packed labels) from a model. Returns {} if the model has no metadata.

    Keys: name, description, version, author, license, min_parser_version, mean, std, labels, label_file,
    input {name, description, color_space, min, max}, output {name, description, min, max, associated_files},
    associated_files (names in the appended zip), raw (the JSON-style dump of the whole ModelMetadata).
    """
    data = load_model_bytes(model)
    buf = _metadata_buffer(data)
    if buf is None:
        return {}
    metadata_fb = _metadata_schema()
    if len(buf) < 8 or buf[4:8] != METADATA_FILE_IDENTIFIER:
        raise MetadataError("TFLITE_METADATA buffer is not a metadata flatbuffer (no 'M001' identifier)")
    try:
        md = metadata_fb.ModelMetadataT.InitFromObj(metadata_fb.ModelMetadata.GetRootAs(buf, 0))
    except Exception as exc:  # noqa: BLE001  (corrupt flatbuffer offsets surface as assorted errors)
        raise MetadataError(f"corrupt metadata flatbuffer ({type(exc).__name__}: {exc})") from None

    packed: dict[str, bytes] = {}
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            packed = {name: archive.read(name) for name in archive.namelist()}
    except (zipfile.BadZipFile, OSError, ValueError):
        packed = {}

    def text(value) -> str | None:
        return value.decode("utf-8", "replace") if isinstance(value, (bytes, bytearray)) else value

    def stats_of(tensor_md):
        if tensor_md is None or tensor_md.stats is None:
            return None, None
        mins = None if tensor_md.stats.min is None else [float(v) for v in tensor_md.stats.min]
        maxs = None if tensor_md.stats.max is None else [float(v) for v in tensor_md.stats.max]
        return mins, maxs

    result: dict[str, Any] = {
        "name": text(md.name), "description": text(md.description), "version": text(md.version),
        "author": text(md.author), "license": text(md.license), "min_parser_version": text(md.minParserVersion),
        "mean": None, "std": None, "labels": None, "label_file": None, "input": None, "output": None,
        "associated_files": sorted(packed),
    }
    subgraphs = md.subgraphMetadata or []
    if subgraphs:
        sg = subgraphs[0]
        inputs = sg.inputTensorMetadata or []
        outputs = sg.outputTensorMetadata or []
        if inputs:
            image = inputs[0]
            for unit in image.processUnits or []:
                if unit.optionsType == metadata_fb.ProcessUnitOptions.NormalizationOptions and unit.options:
                    result["mean"] = [float(v) for v in unit.options.mean]
                    result["std"] = [float(v) for v in unit.options.std]
            color = None
            if image.content is not None and image.content.contentPropertiesType == \
                    metadata_fb.ContentProperties.ImageProperties and image.content.contentProperties is not None:
                color = _enum_name(metadata_fb.ColorSpaceType, image.content.contentProperties.colorSpace)
            mins, maxs = stats_of(image)
            result["input"] = {"name": text(image.name), "description": text(image.description),
                               "color_space": color, "min": mins, "max": maxs}
        if outputs:
            scores = outputs[0]
            files = [{"name": text(f.name), "description": text(f.description),
                      "type": _enum_name(metadata_fb.AssociatedFileType, f.type)}
                     for f in scores.associatedFiles or []]
            mins, maxs = stats_of(scores)
            content_type = None if scores.content is None else \
                _enum_name(metadata_fb.ContentProperties, scores.content.contentPropertiesType)
            result["output"] = {"name": text(scores.name), "description": text(scores.description),
                                "content": content_type, "min": mins, "max": maxs, "associated_files": files}
            for f in files:
                if f["type"] == "TENSOR_AXIS_LABELS":
                    result["label_file"] = f["name"]
                    raw = packed.get(f["name"])
                    if raw is not None:
                        result["labels"] = raw.decode("utf-8", "replace").splitlines()
                    break
    result["raw"] = metadata_to_json_dict(md)
    return result
