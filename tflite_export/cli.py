"""What the project's command-line tools share (the `python -m tflite_export.*` tools and the pipeline's commands):
exit codes, expected failures as one line, progress bars and stage headers. Their flags and entry point are
`tflite_export.command`; files are `tflite_export.files`."""

from __future__ import annotations

import contextlib
import errno
import sys
import threading
from typing import Callable, Iterable, Iterator, Sequence

from keras_models.backend import console

EXIT_OK = 0
EXIT_FAIL = 1  # the tool ran but a check it was asked to enforce failed
EXIT_BAD_INPUT = 2  # unreadable / missing / malformed input, bad arguments


def run_main(main: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None = None, prog: str = "") -> int:
    """Run a tool's main; expected failures become one line on stderr and exit code 2 (no traceback)."""
    try:
        return int(main(argv) or 0)
    except (ValueError, OSError, MemoryError) as exc:  # ModelError and DataError are ValueErrors
        print(f"{prog + ': ' if prog else ''}error: {one_line_error(exc)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print(f"{prog + ': ' if prog else ''}interrupted", file=sys.stderr)
        return 130


def first_line(exc: BaseException, limit: int | None = None) -> str:
    """The first line of an exception's message (or its type's name when it has none), e.g. to quote a library's
    multi-line error inside a one-line message of our own. `limit`: at most that many characters."""
    lines = str(exc).strip().splitlines()
    return (lines[0].strip() if lines else type(exc).__name__)[:limit]


def one_line_error(exc: BaseException) -> str:
    """The message of an expected failure as one line; disk-full and out-of-memory errors say what to do."""
    if isinstance(exc, MemoryError):
        detail = first_line(exc) if str(exc).strip() else ""
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

    return tqdm(iterable, desc=desc, total=total, unit=unit, file=console, disable=not _progress_enabled)


@contextlib.contextmanager
def elapsed(desc: str, seconds: float = 1.0) -> Iterator[None]:
    """A tqdm line with the time spent so far, redrawn every `seconds` during one call that reports no progress of its
    own (TFLite conversion): it claims no percentage and no ETA."""
    from tqdm import tqdm

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
