"""The one place that chooses the Keras implementation for the whole project.

tensorflow-model-optimization (QAT) only understands Keras 2 models, so the project uses `tf_keras` (Keras 2.x) and sets
TF_USE_LEGACY_KERAS=1 so that `tf.keras` inside TensorFlow and tfmot resolves to the same package. The variable is read
when TensorFlow is first imported, hence this module must be imported before anything imports tensorflow; every package
of the project imports it first (see the package `__init__` files).
"""

import contextlib
import dataclasses
import importlib.util
import logging
import os
import sys
import tempfile
from typing import TextIO

from absl import logging as absl_logging

if os.environ.get("TF_USE_LEGACY_KERAS", "1") not in ("1", "true", "True"):
    raise RuntimeError(
        "TF_USE_LEGACY_KERAS is set to something other than 1; this project needs Keras 2 (tf_keras) for QAT. "
        "Unset it or set TF_USE_LEGACY_KERAS=1."
    )
os.environ["TF_USE_LEGACY_KERAS"] = "1"
# TF_CPP_MIN_LOG_LEVEL=0 set by the user asks for TensorFlow's native logs: then nothing below hides them.
_native_logs_shown = os.environ.get("TF_CPP_MIN_LOG_LEVEL") == "0"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's C++ start-up chatter out of users' terminals


# The real stderr, which `native_logs_captured` does not redirect: progress bars drawn while the converter's logs
# are captured (calibration runs inside the converter call) go here.
console: TextIO = os.fdopen(os.dup(2), "w", buffering=1)


@dataclasses.dataclass
class NativeLogs:
    text: str = ""  # what the block wrote to file descriptor 2, set when it ends


@contextlib.contextmanager
def native_logs_captured():
    """Run the block with file descriptor 2 redirected to a temporary file; yields a `NativeLogs`.

    TensorFlow's C++ code logs through absl before absl::InitializeLog() is ever called, and those messages ignore
    TF_CPP_MIN_LOG_LEVEL: every start on a machine without a GPU prints the CUDA probing (cudart_stub, cuInit), and the
    TFLite converter prints its settings. They are written to the descriptor directly, so only redirecting it keeps
    them out. Python code in the block that writes to sys.stderr is captured too. The captured text is written back
    to stderr when the block raises (it may explain the error) or when native logs are shown (`show_library_logs`).
    """
    sys.stderr.flush()
    real = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        logs = NativeLogs()
        os.dup2(captured.fileno(), 2)
        failed = True
        try:
            yield logs
            failed = False
        finally:
            sys.stderr.flush()
            os.dup2(real, 2)
            os.close(real)
            captured.seek(0)
            logs.text = captured.read().decode(errors="replace")
            if failed or _native_logs_shown:
                sys.stderr.write(logs.text)
                sys.stderr.flush()


class _LibraryInfoFilter(logging.Filter):
    """Drops INFO and DEBUG records logged from TensorFlow, Keras or tfmot source files (checkpoints' "Sharding
    callback" timings, "Assets written to", untraced-function notes); their warnings and the project's INFO pass."""

    def __init__(self, *packages: str):
        super().__init__()
        # Located without importing them: tfmot is slow to import and not every tool needs it.
        specs = (importlib.util.find_spec(name) for name in packages)
        self.roots = tuple(os.path.dirname(spec.origin) + os.sep for spec in specs if spec and spec.origin)

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or not record.pathname.startswith(self.roots)


def show_library_logs() -> None:
    """Show what the default console hides: TensorFlow's native start-up and converter logs (the start-up ones are
    written now, after the fact) and the libraries' INFO logs. The pipeline's `-v 1` calls it."""
    global _native_logs_shown
    if not _native_logs_shown:
        _native_logs_shown = True
        sys.stderr.write(_startup.text)
    for handler in _filtered_handlers:
        handler.removeFilter(_library_info)


with native_logs_captured() as _startup:
    import tensorflow as tf
    import tf_keras as keras

    tf.config.list_physical_devices()  # initializes the platforms now, so the CUDA probe's cuInit error is captured too

# absl's handler writes every log of an absl app (the pipeline's and TensorFlow's, which logs through absl or through
# its own "tensorflow" logger, which has a handler of its own as well).
_library_info = _LibraryInfoFilter("tensorflow", "tf_keras", "tensorflow_model_optimization")
_filtered_handlers = [absl_logging.get_absl_handler(), *tf.get_logger().handlers]
for _handler in _filtered_handlers:
    _handler.addFilter(_library_info)

__all__ = ["tf", "keras", "console", "native_logs_captured", "show_library_logs"]
