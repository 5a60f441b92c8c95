"""TFLite metadata written by tflite_export.metadata reads back (labels, normalization, fields), matches what the
official writer produces, and the official models' metadata reads with our reader."""

from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pytest
from ai_edge_litert.interpreter import Interpreter

from tests.conftest import tiny_classifier_tflite
from tflite_export.files import ModelError
from tflite_export.metadata import MetadataError, metadata_to_json_dict, read_metadata, write_metadata
from tflite_export.verify import analyze

LABELS = ["ant", "bee", "wasp, yellowjacket", "hornet"]
FIELDS = dict(name="Tiny classifier", description="A 4-class test model.", version="0.1.0", author="MobileNet team",
              license="Apache-2.0")


@pytest.fixture(scope="module")
def tiny_u8() -> bytes:
    """2-layer CNN on raw [0, 255] pixels, post-training full-integer quantization, uint8 I/O."""
    return tiny_classifier_tflite(classes=len(LABELS))


def _run(model: bytes, image: np.ndarray) -> np.ndarray:
    interpreter = Interpreter(model_content=model)
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], image)
    interpreter.invoke()
    return interpreter.get_tensor(interpreter.get_output_details()[0]["index"])


def test_metadata_reads_back_with_labels_and_normalization(tiny_u8):
    out = write_metadata(tiny_u8, labels=LABELS, mean=[0.0], std=[1.0], **FIELDS)
    md = read_metadata(out)
    assert md["labels"] == LABELS
    assert md["mean"] == [0.0] and md["std"] == [1.0]
    for key, value in FIELDS.items():
        assert md[key] == value
    assert md["min_parser_version"] == "1.0.0"
    assert md["input"] == {"name": "image", "description": "Input image to be classified.", "color_space": "RGB",
                           "min": [0.0], "max": [255.0]}
    assert md["output"]["name"] == "probability" and md["output"]["content"] == "FeatureProperties"
    assert md["output"]["associated_files"] == [{
        "name": "labels.txt", "description": "Labels for categories that the model can recognize.",
        "type": "TENSOR_AXIS_LABELS"}]
    # The labels travel inside the .tflite as a zip appended to the flatbuffer, like the official populator does.
    with zipfile.ZipFile(io.BytesIO(out)) as archive:
        assert archive.namelist() == ["labels.txt"]
        assert archive.read("labels.txt").decode().splitlines() == LABELS
    analysis = analyze(out)
    assert analysis.has_metadata and analysis.has_associated_files
    # The model itself is untouched: same outputs bit for bit.
    image = np.random.default_rng(1).integers(0, 256, (1, 32, 32, 3), dtype=np.uint8)
    np.testing.assert_array_equal(_run(out, image), _run(tiny_u8, image))


def test_rewriting_metadata_replaces_it(tiny_u8):
    first = write_metadata(tiny_u8, labels=LABELS, mean=[0.0], std=[1.0], **FIELDS)
    second = write_metadata(first, labels=[label.upper() for label in LABELS], mean=[127.5], std=[127.5],
                            **{**FIELDS, "version": "0.2.0"})
    md = read_metadata(second)
    assert md["labels"] == [label.upper() for label in LABELS] and md["version"] == "0.2.0" and md["mean"] == [127.5]
    assert analyze(second).metadata_entries.count("TFLITE_METADATA") == 1
    with zipfile.ZipFile(io.BytesIO(second)) as archive:
        assert archive.namelist() == ["labels.txt"]


def test_model_without_metadata_reads_empty(tiny_u8):
    assert read_metadata(tiny_u8) == {}


def test_write_metadata_rejects_bad_arguments(tiny_u8):
    with pytest.raises(MetadataError, match="3 labels for an output of 4 classes"):
        write_metadata(tiny_u8, labels=LABELS[:3], mean=[0.0], std=[1.0], **FIELDS)
    with pytest.raises(MetadataError, match="std"):
        write_metadata(tiny_u8, labels=LABELS, mean=[0.0], std=[0.0], **FIELDS)
    with pytest.raises(ModelError):
        write_metadata(b"definitely not a model", labels=LABELS, mean=[0.0], std=[1.0], **FIELDS)


def test_reads_official_metadata(shared):
    md = read_metadata(shared("reference_models", "tflite-support", "mobilenet_v1_0.25_224_quant.tflite"))
    assert md["name"] == "MobileNetV1 image classifier (quantized)" and md["author"] == "TensorFlow"
    assert md["mean"] == [127.5] and md["std"] == [127.5]
    assert len(md["labels"]) == 1001 and md["labels"][:2] == ["background", "tench"]
    assert md["output"]["associated_files"][0]["type"] == "TENSOR_AXIS_LABELS"
    coral = read_metadata(shared("reference_models", "coral", "tf2_mobilenet_v2_1.0_224_ptq.tflite"))
    assert coral["min_parser_version"] == "1.0.0" and len(coral["labels"]) == 1001


def test_writer_reproduces_the_official_metadata_dump(shared):
    """tflite-support's mobilenet_v2_1.0_224_quant.json is what the official image classifier writer puts into that
    model (the .tflite in ../shared carries no metadata): ours writes the same metadata."""
    model = shared("reference_models", "tflite-support", "mobilenet_v2_1.0_224_quant.tflite").read_bytes()
    expected = json.loads(shared("reference_models", "tflite-support", "mobilenet_v2_1.0_224_quant.json").read_text())
    labels = shared("labels", "tflite_support_labels_1001_with_background.txt").read_text().splitlines()
    out = write_metadata(model, labels=labels, name=expected["name"], description=expected["description"],
                         version="v1", author="TensorFlow", license="Apache-2.0", mean=[127.5], std=[127.5])
    raw = read_metadata(out)["raw"]
    assert {raw.pop(k) for k in ("version", "author", "license", "min_parser_version")} == {
        "v1", "TensorFlow", "Apache-2.0", "1.0.0"}
    assert raw == expected
    assert metadata_to_json_dict(None) is None
