"""Small helpers shared by the `python -m tflite_export.*` tools and the pipeline: model loading, one-line errors,
atomic writes of one file, and atomic replacement of a set of files (`ArtifactSet`)."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import pathlib
import secrets
import shutil
import struct
import sys
import threading
from typing import Callable, Iterable, Iterator, Sequence

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
    _check_structure(data, origin)
    return data


def _check_structure(data: bytes, origin: str) -> None:
    """Walk the flatbuffer's tables and buffers, so a truncated or corrupt file is refused here with one line.

    The converter writes the root tables at the end of the file and the weight buffers before them, so a truncated
    model usually still has a plausible header: without this walk it failed deep inside a tool as `struct.error`, and
    LiteRT's interpreter would be handed offsets that point past the end of the data.
    """
    try:
        from ai_edge_litert import schema_py_generated as schema_fb
    except ImportError:  # pragma: no cover - the tools that read models all need ai-edge-litert anyway
        return
    try:
        model = schema_fb.Model.GetRootAs(data, 0)
        for i in range(model.BuffersLength()):
            buffer = model.Buffers(i)
            if buffer.DataLength():
                buffer.DataAsNumpy()  # np.frombuffer raises ValueError when the vector runs past the end
            offset = buffer.Offset() if hasattr(buffer, "Offset") else 0
            if offset > 1 and offset + buffer.Size() > len(data):  # weights stored after the flatbuffer (> 2 GB models)
                raise ValueError(f"buffer {i} ends at byte {offset + buffer.Size()}")
        for s in range(model.SubgraphsLength()):
            subgraph = model.Subgraphs(s)
            for t in range(subgraph.TensorsLength()):
                tensor = subgraph.Tensors(t)
                tensor.ShapeAsNumpy() if tensor.ShapeLength() else None
                tensor.Name()
            for o in range(subgraph.OperatorsLength()):
                op = subgraph.Operators(o)
                op.InputsAsNumpy() if op.InputsLength() else None
                op.OutputsAsNumpy() if op.OutputsLength() else None
        for i in range(model.OperatorCodesLength()):
            model.OperatorCodes(i).BuiltinCode()
        for i in range(model.MetadataLength()):
            model.Metadata(i).Name()
    except (struct.error, IndexError, TypeError, ValueError, AttributeError, UnicodeError):
        raise ModelError(f"{origin}: truncated or corrupt TFLite flatbuffer ({len(data):,} bytes, "
                         "tables point past the end)") from None


def check_writable_dir(path: str | os.PathLike, what: str, *, shown: str | os.PathLike | None = None) -> None:
    """Refuse, before any work is done, a directory argument that names a file or sits under one, or is read-only.
    Messages name `shown` (the argument as given), defaulting to `path`."""
    path = pathlib.Path(path)
    shown = path if shown is None else shown
    for parent in (path, *path.parents):
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(f"{what} {shown}: {parent} exists and is not a directory")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise ValueError(f"{what} {shown}: {parent} is not writable")
            return


def check_writable_file(path: str | os.PathLike, what: str) -> None:
    """Refuse, before any work is done, an output file path that cannot be written (a directory, no such folder...)."""
    path = pathlib.Path(path)
    if path.is_dir():
        raise ValueError(f"{what} {path}: is a directory")
    check_writable_dir(path.parent, what, shown=path)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write to a temporary file beside `path`, then os.replace: readers never see a half-written file.

    The file is created with mode 0666 minus the umask, like any file a program writes (mkstemp's 0600 made shipped
    artifacts private). Disk-full and other write errors name `path`, not the temporary file, which is removed.
    """
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise OSError(exc.errno, f"cannot write {path}: {exc.strerror or exc}") from None
        raise


class ArtifactSet:
    """Files that must change together (model, labels, card, report), published so readers see old or new, never a mix.

    Layout in `output_dir`:

        .artifacts/<id>/model.tflite, labels.txt, ...   one directory per published set
        current -> .artifacts/<id>                      symlink to the published set
        model.tflite -> current/model.tflite            one stable symlink per file, at the documented path

    A set is written completely into a fresh `.artifacts/<id>` directory; nothing visible changes until `commit()`
    swaps `current` with one `os.replace` (a rename, atomic on POSIX). So a reader that opens `current/...` paths
    (or resolves `current` once, e.g. `os.path.realpath`) gets files of one set; if writing fails (disk full, a
    failed check) the staging directory is removed and the previous set stays published. A reader that opens the
    documented paths one by one across a swap can still get two sets: resolve `current` first when that matters.
    The previous set is kept until the next commit, so a reader that resolved `current` just before a swap can still
    open its files. Directories from before this layout held plain files; the first commit turns them into links.
    """

    LINK = "current"
    SETS = ".artifacts"

    def __init__(self, output_dir: str | os.PathLike, replaces: Sequence[str] = ()):
        """`replaces`: names that belong to a set even when this one lacks them (a model exported without a report
        must not be published beside the previous run's report.json); they are removed when the set is published."""
        self.output_dir = pathlib.Path(output_dir)
        self.replaces = tuple(replaces)
        check_writable_dir(self.output_dir, "output directory")
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.id = f"{os.getpid()}-{secrets.token_hex(4)}"
        self.dir = self.output_dir / self.SETS / self.id
        self.dir.mkdir(parents=True)
        self.committed = False

    def path(self, name: str) -> str:
        """Where to write `name` now (inside the staging directory)."""
        return str(self.dir / name)

    def final_path(self, name: str) -> str:
        """The documented path readers use once the set is published."""
        return str(self.output_dir / name)

    def commit(self) -> None:
        names = sorted(p.name for p in self.dir.iterdir() if not p.name.startswith("."))
        if not names:
            raise ValueError(f"nothing to publish in {self.output_dir}")
        link = self.output_dir / self.LINK
        previous = os.readlink(link) if link.is_symlink() else None
        tmp_link = self.output_dir / f".{self.LINK}.{self.id}.tmp"
        os.symlink(os.path.join(self.SETS, self.id), tmp_link)
        os.replace(tmp_link, link)  # the swap: from here on readers of current/ see the new set
        self.committed = True
        for name in names:  # stable links at the documented paths; each points through `current`
            target = os.path.join(self.LINK, name)
            dest = self.output_dir / name
            if dest.is_symlink() and os.readlink(dest) == target:
                continue
            tmp = self.output_dir / f".{name}.{self.id}.link"
            os.symlink(target, tmp)
            os.replace(tmp, dest)
        for dest in self.output_dir.iterdir():  # links to files the new set does not have would dangle
            if dest.name in names or dest.name.startswith("."):
                continue
            if (dest.is_symlink() and os.readlink(dest).startswith(self.LINK + os.sep)) or (
                    dest.name in self.replaces and not dest.is_dir()):
                dest.unlink()
        keep = {self.id, os.path.basename(previous) if previous else None}
        for old in (self.output_dir / self.SETS).iterdir():
            if old.name not in keep:
                shutil.rmtree(old, ignore_errors=True)

    def discard(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


@contextlib.contextmanager
def artifact_set(output_dir: str | os.PathLike, replaces: Sequence[str] = ()) -> Iterator[ArtifactSet]:
    """`with artifact_set(out) as s:` write files to `s.path(name)`; published on a clean exit, discarded on error."""
    staged = ArtifactSet(output_dir, replaces)
    try:
        yield staged
        staged.commit()
    except BaseException:
        if not staged.committed:
            staged.discard()
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
    except (ModelError, ValueError, OSError, MemoryError) as exc:
        print(f"{prog + ': ' if prog else ''}error: {one_line_error(exc)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print(f"{prog + ': ' if prog else ''}interrupted", file=sys.stderr)
        return 130


def one_line_error(exc: BaseException) -> str:
    """The message of an expected failure as one line; disk-full and out-of-memory errors say what to do."""
    if isinstance(exc, MemoryError):
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return (f"out of memory{': ' + detail if detail else ''}; use a smaller input (image size, batch size, image "
                "count)")
    message = str(exc).strip().replace("\n", "; ") or type(exc).__name__
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC and "no space" not in message.lower():
        message = f"no space left on device: {message}"
    return message


def parse_int_list(text: str) -> list[int]:
    try:
        values = [int(part) for part in str(text).replace(" ", "").split(",") if part]
    except ValueError:
        raise ValueError(f"expected a comma-separated list of integers, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise ValueError(f"expected positive integers, got {text!r}")
    return values


# Progress bars (tqdm) are drawn unless a tool turns them off (the pipeline's --verbose 0).
_progress_enabled = True


def set_progress(enabled: bool) -> None:
    global _progress_enabled
    _progress_enabled = bool(enabled)


def progress(iterable: Iterable, *, desc: str, total: int | None = None, unit: str = "img"):
    """`iterable` with a tqdm bar (count, rate, ETA when `total` is known) on the real stderr, so it stays visible
    while TensorFlow's native logs are captured (calibration runs inside the converter call)."""
    from tqdm import tqdm

    from keras_models.backend import console

    return tqdm(iterable, desc=desc, total=total, unit=unit, file=console, disable=not _progress_enabled)


@contextlib.contextmanager
def elapsed(desc: str, seconds: float = 1.0) -> Iterator[None]:
    """A tqdm line with the time spent so far, redrawn every `seconds` during one call that reports no progress of its
    own (TFLite conversion): it claims no percentage and no ETA."""
    from tqdm import tqdm

    from keras_models.backend import console

    with tqdm(desc=desc, bar_format="{desc}: {elapsed} elapsed", file=console, disable=not _progress_enabled) as bar:
        stop = threading.Event()

        def tick():
            while not stop.wait(seconds):
                bar.refresh()

        ticker = threading.Thread(target=tick, daemon=True)
        ticker.start()
        try:
            yield
        finally:
            stop.set()
            ticker.join()


def header(title: str) -> None:
    """The line that opens a stage of a long command on the console (stdout, beside Keras' progress and the summary)."""
    print(f"\n== {title}", flush=True)
