"""Small helpers shared by the `python -m tflite_export.*` tools: model loading, one-line errors, atomic writes."""

from __future__ import annotations

import json
import os
import pathlib
import sys
import tempfile
from typing import Callable, Sequence

EXIT_OK = 0
EXIT_FAIL = 1  # the tool ran but a check it was asked to enforce failed
EXIT_BAD_INPUT = 2  # unreadable / missing / malformed input, bad arguments

TFLITE_IDENTIFIER = b"TFL3"


class ModelError(ValueError):
    """The input is not a readable TFLite model (missing file, not a flatbuffer, truncated ...)."""


def load_model_bytes(model: bytes | bytearray | memoryview | str | os.PathLike) -> bytes:
    """bytes or a path -> the model's bytes, after a cheap sanity check of the flatbuffer header.

    Raises ModelError with a one-line message for a missing/unreadable file or something that is not a TFLite model.
    """
    if isinstance(model, (bytes, bytearray, memoryview)):
        data = bytes(model)
        origin = "model bytes"
    else:
        path = pathlib.Path(os.fspath(model))
        origin = str(path)
        if not path.exists():
            raise ModelError(f"{path}: no such file")
        if path.is_dir():
            raise ModelError(f"{path}: is a directory, not a .tflite file")
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ModelError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if len(data) < 8:
        raise ModelError(f"{origin}: {len(data)} bytes, too short to be a TFLite model")
    if data[4:8] != TFLITE_IDENTIFIER:
        raise ModelError(f"{origin}: not a TFLite model (no 'TFL3' flatbuffer identifier)")
    root = int.from_bytes(data[:4], "little")
    if root + 4 > len(data):
        raise ModelError(f"{origin}: truncated or corrupt TFLite flatbuffer")
    return data


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write to a temporary file beside `path`, then os.replace: readers never see a half-written file."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def atomic_write_json(path: str | os.PathLike, obj) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n").encode())


def _json_default(value):
    try:
        import numpy as np

        if isinstance(value, np.generic):
            return value.item()
        if isinstance(value, np.ndarray):
            return value.tolist()
    except ImportError:  # pragma: no cover
        pass
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def run_main(main: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None = None, prog: str = "") -> int:
    """Run a tool's main; expected failures become one line on stderr and exit code 2 (no traceback)."""
    try:
        return int(main(argv) or 0)
    except (ModelError, ValueError, OSError) as exc:
        message = str(exc).strip().replace("\n", "; ") or type(exc).__name__
        print(f"{prog + ': ' if prog else ''}error: {message}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print(f"{prog + ': ' if prog else ''}interrupted", file=sys.stderr)
        return 130


def parse_int_list(text: str) -> list[int]:
    try:
        values = [int(part) for part in str(text).replace(" ", "").split(",") if part]
    except ValueError:
        raise ValueError(f"expected a comma-separated list of integers, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise ValueError(f"expected positive integers, got {text!r}")
    return values
