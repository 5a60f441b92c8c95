"""tflite_export.model_card: the card round-trips, and a card of another schema version, or with a field missing or
of the wrong type, is refused with one line naming it."""

from __future__ import annotations

import dataclasses
import json
import re

import numpy as np
import pytest

from tests.conftest import REPO
from tflite_export.model_card import SCHEMA_VERSION, InputSpec, ModelCard, ModelCardError, OutputSpec


def _card(**changes) -> ModelCard:
    fields = dict(
        name="tiny", description="a test card", version="1.0", author="tests", license="Apache-2.0",
        model_file="model.tflite", labels_file="labels.txt",
        input=InputSpec(height=32, width=24, channels=3, dtype="uint8", scale=1.0, zero_point=0, mean=[0.0] * 3,
                        std=[1.0] * 3),
        output=OutputSpec(dtype="uint8", scale=0.00390625, zero_point=0, num_classes=2),
        classes=["cat", "dög"], hswish="lowered", ops={"CONV_2D": 2, "SOFTMAX": 1},
    )
    fields.update(changes)
    return ModelCard(**fields)


def test_round_trip_through_json_and_a_file(tmp_path):
    card = _card()
    assert ModelCard.from_json(card.to_json()) == card
    card.write(tmp_path / "model_card.json")
    assert ModelCard.read(tmp_path / "model_card.json") == card
    data = json.loads((tmp_path / "model_card.json").read_text())
    assert next(iter(data)) == "schema_version" and data["schema_version"] == SCHEMA_VERSION
    # A float32 tensor scale comes back as the same float32 (the app compares it with the model's own).
    scale = float(np.float32(1 / 127))
    odd_scale = _card(input=dataclasses.replace(card.input, scale=scale))
    assert np.float32(ModelCard.from_json(odd_scale.to_json()).input.scale) == np.float32(1 / 127)


def _mutated(edit) -> str:
    data = _card().to_dict()
    edit(data)
    return json.dumps(data)


@pytest.mark.parametrize("edit, needle", [
    (lambda d: d.pop("schema_version"), "no 'schema_version'"),
    (lambda d: d.update(schema_version=SCHEMA_VERSION + 1), f"schema_version {SCHEMA_VERSION + 1} is not supported"),
    (lambda d: d.update(schema_version=str(SCHEMA_VERSION)), "is not supported"),
    (lambda d: d.pop("classes"), "field 'classes' is missing"),
    (lambda d: d["input"].pop("height"), "field 'input.height' is missing"),
    (lambda d: d["input"].update(height="32"), "field 'input.height' must be an integer"),
    (lambda d: d["input"].update(height=32.5), "field 'input.height' must be an integer"),
    (lambda d: d["output"].update(scale=True), "field 'output.scale' must be a number"),
    (lambda d: d["input"].update(mean=0.0), "field 'input.mean' must be a list"),
    (lambda d: d.update(classes=["cat", 2]), "field 'classes[1]' must be a string"),
], ids=["no version", "newer version", "version as text", "no classes", "no height", "height as text",
        "fractional height", "boolean scale", "mean not a list", "class not a string"])
def test_bad_cards_are_refused_with_one_line(edit, needle):
    with pytest.raises(ModelCardError) as info:
        ModelCard.from_json(_mutated(edit), source="model_card.json")
    message = str(info.value)
    assert needle in message and message.startswith("model_card.json: ") and "\n" not in message, message


def test_unknown_fields_and_optional_ones_are_accepted():
    """Adding an optional field does not need a new version: older readers skip it, newer ones default it."""
    def edit(d):
        d["new_optional_field"] = {"anything": 1}
        del d["input"]["color"]
    card = ModelCard.from_json(_mutated(edit))
    assert card == _card()


def test_not_json_and_unreadable_files(tmp_path):
    with pytest.raises(ModelCardError, match="not valid JSON"):
        ModelCard.from_json("{not json")
    with pytest.raises(ModelCardError, match="not a JSON object"):
        ModelCard.from_json("[1, 2]")
    with pytest.raises(ModelCardError, match="cannot read"):
        ModelCard.read(tmp_path / "missing.json")


def test_the_android_core_reads_the_same_schema_version():
    """ModelCard.kt refuses every other version (its unit test), so the two constants must move together."""
    kotlin = (REPO / "android_demo" / "core" / "src" / "main" / "kotlin" / "com" / "mobilenetpipeline" / "core"
              / "ModelCard.kt").read_text(encoding="utf-8")
    assert re.search(r"const val SCHEMA_VERSION = (\d+)", kotlin).group(1) == str(SCHEMA_VERSION)
    bundled = json.loads((REPO / "android_demo" / "app" / "src" / "main" / "assets" / "model_card.json").read_text())
    assert bundled["schema_version"] == SCHEMA_VERSION
