"""Files: the names of the files an export is made of, the image types the project reads, TFLite model bytes checked
before use, and writes that readers never see half done (one file: `atomic_write_bytes`, `atomic_output`; a set of
files that change together: `ArtifactSet`). Standard library only (numpy for JSON of arrays, LiteRT's schema for the
model check, both imported when used)."""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import secrets
import shutil
import struct
from typing import Iterator, Sequence

# What an export is made of (tflite_export.export writes them, the pipeline adds its report, the app reads them).
MODEL_FILE = "model.tflite"
LABELS_FILE = "labels.txt"
CARD_FILE = "model_card.json"
REPORT_FILE = "report.json"

# The image files every reader of the project accepts: what tf.io.decode_image decodes (and the Android app's decoder).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")


def is_image_file(name: str | os.PathLike) -> bool:
    """`name` has an image extension (any case) and is not hidden (macOS `._x.jpg` resource forks are not images)."""
    name = os.path.basename(os.fspath(name))
    return name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".")


def image_files(folder: str | os.PathLike) -> list[pathlib.Path]:
    """The image files directly in `folder`, sorted by name."""
    return sorted(p for p in pathlib.Path(folder).iterdir() if p.is_file() and is_image_file(p.name))


def images_under(folder: str | os.PathLike, limit: int | None = None) -> list[str]:
    """Every image file under `folder`, in any layout (flat, class sub-folders, deeper), sorted; with `limit`, that
    many spread evenly over the sorted list (so over the classes, not the first ones). ValueError when there is none."""
    folder = pathlib.Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{folder}: no such folder")
    files = sorted(os.path.join(root, name) for root, dirs, names in os.walk(folder)
                   for name in names if is_image_file(name)
                   if not any(part.startswith(".") for part in pathlib.Path(root).relative_to(folder).parts))
    if not files:
        raise ValueError(f"{folder}: no images ({', '.join(IMAGE_EXTENSIONS)})")
    if limit is None:
        return files
    step = max(1, len(files) // limit)
    return files[::step][:limit]


def read_labels(path: str | os.PathLike, what: str = "labels file") -> list[str]:
    """One label per line; trailing blank lines are not labels. Unreadable or empty: ValueError naming `path`."""
    try:
        lines = pathlib.Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeError) as exc:
        raise ValueError(f"{what} {path}: cannot read ({getattr(exc, 'strerror', None) or exc})") from None
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise ValueError(f"{what} {path} is empty: it needs one label per line, one line per model output")
    return lines


def labels_text(labels: Sequence[str]) -> bytes:
    """The bytes of a labels file (`LABELS_FILE`, and the copy packed into the model's metadata)."""
    return ("\n".join(labels) + "\n").encode("utf-8")


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


# What a folder holds, told by the first of these files it has: each tool that writes a model into a folder refuses one
# that holds another tool's run, whose model it would replace and whose report it would unpublish. (report.json alone:
# a training run made before run_config.json existed.)
TRAINING_RUN = "a training run (pipeline.train_and_export)"
NETADAPT_SEARCH = "a NetAdapt search (pipeline.netadapt)"
IMPORT_RUN = "an import (pipeline.import_tflite)"
EXPORT_RUN = "an export (tflite_export.export)"
FOLDER_KINDS = (("run_config.json", TRAINING_RUN), ("state.json", NETADAPT_SEARCH), ("search_log.md", NETADAPT_SEARCH),
                ("import_report.json", IMPORT_RUN), (REPORT_FILE, TRAINING_RUN), (MODEL_FILE, EXPORT_RUN))


def folder_kind(folder: str | os.PathLike) -> str | None:
    """Which kind of run `folder` holds (one of the kinds in FOLDER_KINDS), or None (missing, empty, anything else)."""
    folder = pathlib.Path(folder)
    for name, kind in FOLDER_KINDS:
        if os.path.lexists(folder / name):
            return kind
    return None


def check_folder_kind(folder: str | os.PathLike, kind: str, option: str) -> None:
    """Refuse, before any work, an output folder that holds another kind of run than `kind` (one-line ValueError)."""
    found = folder_kind(folder)
    if found is not None and found != kind:
        raise ValueError(f"{option} {folder} holds {found}, not {kind}: this would replace its model and files; pass "
                         f"another {option} (a new or empty folder)")


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[pathlib.Path]:
    """`with atomic_output(path) as tmp:` write `tmp` (a file, or a directory such as a SavedModel) any way you like;
    on a clean exit it replaces `path` with one rename, on an error it is removed and `path` is left as it was. (A
    directory already at `path` is deleted just before the rename: for that moment there is none.)

    `tmp` sits beside `path` (same file system, so the rename is atomic), is hidden and ends with `path`'s name (Keras
    picks the save format from the ending: `.weights.h5` and `.h5` are different formats). Disk-full and other write
    errors name `path`, not the temporary file.
    """
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".tmp-{secrets.token_hex(4)}-{path.name}"
    try:
        yield tmp
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)  # os.replace cannot replace a non-empty directory
        os.replace(tmp, path)
    except BaseException as exc:
        _remove(tmp)
        if isinstance(exc, OSError):
            raise OSError(exc.errno, f"cannot write {path}: {exc.strerror or exc}") from None
        raise


def _remove(path: pathlib.Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` so that readers see the old file or the new one, never a part (`atomic_output`).

    The file is created with mode 0666 minus the umask, like any file a program writes (mkstemp's 0600 made shipped
    artifacts private), and synced before the rename.
    """
    with atomic_output(path) as tmp:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())


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


def json_text(obj) -> str:
    """JSON as the project writes it (indented; numpy values, tuples and paths as plain JSON)."""
    return json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n"


def atomic_write_json(path: str | os.PathLike, obj) -> None:
    atomic_write_bytes(path, json_text(obj).encode())


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


@contextlib.contextmanager
def exclusive_folder(folder: str | os.PathLike, what: str = "--output_dir") -> Iterator[None]:
    """Hold an exclusive lock on `folder` (made if missing) for the block: a second run into the same folder, which
    would interleave its checkpoints and logs with this one's, is refused with a one-line ValueError. The lock is the
    folder's own (flock on its descriptor, no lock file); the kernel releases it when the process ends, even by
    kill -9, so a dead run never locks a folder."""
    import fcntl

    os.makedirs(folder, exist_ok=True)
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ValueError(f"{what} {folder} is in use by another run that is still going: wait for it to end, "
                             f"or pass another {what}") from None
        yield
    finally:
        os.close(descriptor)

