"""Typed JSON records: frozen dataclasses written with a schema version and read back into the same types.

The pipeline's records (run_config.json, report.json) are dataclasses; `to_json_dict` turns one into plain JSON
values and `from_json_dict` rebuilds it, nested dataclasses, lists and optional fields included, so readers use
attributes (`report.export.accuracy.int8_top1`) instead of keys. `read_record` refuses, in one line, a file of another
schema version: a reader never guesses at fields that were renamed or that mean something else.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import types
import typing


class SchemaError(ValueError):
    """A record file of another schema version, or one whose fields do not match its type (one line)."""


def to_json_dict(record) -> dict:
    return dataclasses.asdict(record)


@functools.cache
def _field_types(cls) -> dict[str, typing.Any]:
    return typing.get_type_hints(cls)


def _build(kind, value):
    """`value` (parsed JSON) as an instance of the annotation `kind`."""
    if value is None:
        return None
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):  # X | None
        (inner,) = [arg for arg in typing.get_args(kind) if arg is not type(None)]
        return _build(inner, value)
    if origin in (list, tuple):
        args = typing.get_args(kind)
        item = args[0] if args else typing.Any
        items = [_build(item, v) for v in value]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        _, item = typing.get_args(kind)
        return {k: _build(item, v) for k, v in value.items()}
    if dataclasses.is_dataclass(kind):
        return from_json_dict(kind, value)
    if kind is float and isinstance(value, int):
        return float(value)
    return value


def from_json_dict(cls, data: dict):
    """An instance of dataclass `cls` from its `to_json_dict` form. Raises SchemaError on missing or unknown fields."""
    if not isinstance(data, dict):
        raise SchemaError(f"expected an object for {cls.__name__}, got {type(data).__name__}")
    hints = _field_types(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    required = {f.name for f in dataclasses.fields(cls) if f.init and f.default is dataclasses.MISSING
                and f.default_factory is dataclasses.MISSING}
    missing, unknown = sorted(required - set(data)), sorted(set(data) - names)
    if missing or unknown:
        raise SchemaError(f"{cls.__name__} fields do not match: missing {missing or 'none'}, unknown "
                          f"{unknown or 'none'}")
    return cls(**{name: _build(hints[name], value) for name, value in data.items()})


def read_json(path: str | os.PathLike) -> dict:
    """A JSON object from `path`; unreadable or malformed files are one-line errors naming the file."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except OSError as err:
        raise OSError(err.errno, f"cannot read {path}: {err.strerror or err}") from None
    except ValueError as err:
        raise SchemaError(f"{path} is not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise SchemaError(f"{path} does not hold a JSON object")
    return data


def check_version(data: dict, expected: int, path: str | os.PathLike, what: str, advice: str) -> None:
    """Refuse a record of another schema version, saying what to do (`advice`). Records from before versions existed
    have none: version 1."""
    version = data.get("schema_version", 1)
    if version != expected:
        age = "an older" if isinstance(version, int) and version < expected else "another"
        raise SchemaError(f"{path} is a {what} of schema_version {version}, written by {age} version of the "
                          f"pipeline; this one reads schema_version {expected}: {advice}")


def read_record(cls, path: str | os.PathLike, what: str, advice: str):
    """`cls` (a dataclass with a `schema_version` field and SCHEMA_VERSION) read from the JSON file `path`."""
    data = read_json(path)
    check_version(data, cls.SCHEMA_VERSION, path, what, advice)
    try:
        return from_json_dict(cls, data)
    except SchemaError as err:
        raise SchemaError(f"{path}: {err}") from None
