"""`model_card.json`, the description of an exported model that apps and tools read beside `model.tflite`: its input
(size, dtype, quantization, mean/std), its output, its classes, where it came from.

One type, `ModelCard`, written by `tflite_export.export` and read by every Python reader (the app installer, bench/,
tests) and, field for field, by the Android core (`ModelCard.kt`). The card carries `schema_version`: a reader refuses
a card of another version, or one that lacks a field or has one of the wrong type, with one line naming it, instead of
reading a key that is no longer there. Fields a reader does not know are ignored, so adding an optional field keeps
the version; removing, renaming or changing the meaning of one bumps it (here and in ModelCard.kt).
"""

from __future__ import annotations

import dataclasses
import json
import os
import typing

from tflite_export.files import atomic_write_bytes

SCHEMA_VERSION = 1


class ModelCardError(ValueError):
    """The card cannot be read: not JSON, another schema version, a field missing or of the wrong type."""


@dataclasses.dataclass(frozen=True)
class InputSpec:
    height: int
    width: int
    channels: int
    dtype: str  # "uint8", "int8" or "float32"
    scale: float  # the input tensor's quantization (0.0 for a float input)
    zero_point: int
    mean: list[float]  # per channel: the tensor gets ((pixel - mean) / std) / scale + zero_point
    std: list[float]
    color: str = "RGB"
    preprocessing: str = "central crop 87.5%, bilinear resize, raw pixel values (no normalization)"


@dataclasses.dataclass(frozen=True)
class OutputSpec:
    dtype: str
    scale: float
    zero_point: int
    num_classes: int
    activation: str = "softmax"


@dataclasses.dataclass(frozen=True)
class ModelCard:
    name: str
    description: str
    version: str
    author: str
    license: str
    model_file: str
    labels_file: str
    input: InputSpec
    output: OutputSpec
    classes: list[str]
    hswish: str  # how h-swish is written in the file: "lowered" (ADD/RELU6/MUL) or "builtin" (HARD_SWISH)
    ops: dict[str, int]  # op type -> count in the file
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict:
        """The JSON object, `schema_version` first (what a person opening the file should see first)."""
        data = dataclasses.asdict(self)
        return {"schema_version": data.pop("schema_version"), **data}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    def write(self, path: str | os.PathLike) -> None:
        atomic_write_bytes(path, self.to_json().encode("utf-8"))

    @classmethod
    def from_dict(cls, data, source: str = "model card") -> ModelCard:
        if not isinstance(data, dict):
            raise ModelCardError(f"{source}: not a JSON object")
        version = data.get("schema_version")
        if version is None:
            raise ModelCardError(f"{source}: no 'schema_version' (a card from before versioned cards, or not a model "
                                 f"card); this reader needs version {SCHEMA_VERSION}: re-export the model")
        if type(version) is not int or version != SCHEMA_VERSION:
            raise ModelCardError(f"{source}: schema_version {version!r} is not supported (this reader reads version "
                                 f"{SCHEMA_VERSION})")
        return _build(cls, data, source, "")

    @classmethod
    def from_json(cls, text: str | bytes, source: str = "model card") -> ModelCard:
        try:
            data = json.loads(text)
        except (ValueError, UnicodeError) as exc:
            raise ModelCardError(f"{source}: not valid JSON ({exc})") from None
        return cls.from_dict(data, source)

    @classmethod
    def read(cls, path: str | os.PathLike) -> ModelCard:
        try:
            with open(path, "rb") as f:
                text = f.read()
        except OSError as exc:
            raise ModelCardError(f"{path}: cannot read ({exc.strerror or exc})") from None
        return cls.from_json(text, source=str(path))


def _build(cls, data: dict, source: str, prefix: str):
    """An instance of dataclass `cls` from `data`, each field checked against its annotation."""
    hints = typing.get_type_hints(cls)
    values = {}
    for field in dataclasses.fields(cls):
        name = prefix + field.name
        if field.name not in data:
            if field.default is not dataclasses.MISSING:
                continue
            raise ModelCardError(f"{source}: field '{name}' is missing")
        values[field.name] = _check(hints[field.name], data[field.name], source, name)
    return cls(**values)


def _check(kind, value, source: str, name: str):
    def wrong(expected: str):
        return ModelCardError(f"{source}: field '{name}' must be {expected}, got {json.dumps(value)[:60]}")

    if dataclasses.is_dataclass(kind):
        if not isinstance(value, dict):
            raise wrong("an object")
        return _build(kind, value, source, name + ".")
    origin = typing.get_origin(kind)
    if origin is list:
        (item,) = typing.get_args(kind)
        if not isinstance(value, list):
            raise wrong("a list")
        return [_check(item, v, source, f"{name}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        _, item = typing.get_args(kind)
        if not isinstance(value, dict):
            raise wrong("an object")
        return {str(k): _check(item, v, source, f"{name}.{k}") for k, v in value.items()}
    if kind is int:
        if type(value) is int or (type(value) is float and value.is_integer()):
            return int(value)
        raise wrong("an integer")
    if kind is float:
        if type(value) in (int, float):
            return float(value)
        raise wrong("a number")
    if kind is str:
        if isinstance(value, str):
            return value
        raise wrong("a string")
    raise TypeError(f"model card field {name}: unsupported annotation {kind!r}")  # a programming error, not input
