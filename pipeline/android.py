"""Install an exported model into the Android demo app's assets, atomically.

    python android_demo/scripts/install_model.py MODEL_DIR [--assets DIR]     (the app's documented command)
    python -m pipeline.android MODEL_DIR [--assets DIR]                        (the same)

MODEL_DIR is what the pipeline exports: model.tflite, labels.txt and model_card.json (the card's `labels_file` may name
another labels file of its folder, which is then installed as labels.txt). The files are checked first (the model is a
readable TFLite flatbuffer, the card is a model card of the version this code writes, agrees with the model's own
tensors and last op and with the labels count, and names a labels file inside its folder), copied
beside their destinations and renamed into place one by one, side files first and the model last, so a failed or
interrupted run never leaves a half-written model for Gradle to package.
Exit status: 0 installed, 2 invalid input (one line `pipeline.android: error: ...`, assets untouched).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pathlib
import shutil

from tflite_export.command import Command, positional, run_command, setting
from tflite_export.files import (
    CARD_FILE,
    LABELS_FILE,
    MODEL_FILE,
    ModelError,
    atomic_output,
    check_writable_dir,
    load_model_bytes,
    read_labels,
)
from tflite_export.model_card import ModelCard, ModelCardError
from tflite_export.verify import analyze

DEFAULT_ASSETS = pathlib.Path(__file__).resolve().parents[1] / "android_demo" / "app" / "src" / "main" / "assets"


class InstallError(ValueError):
    pass


def validate(model_dir: str | os.PathLike) -> dict[str, pathlib.Path]:
    """The files to install (asset name -> source), after checking them; raises InstallError."""
    model_dir = pathlib.Path(model_dir)
    if not model_dir.is_dir():
        raise InstallError(f"{model_dir} is not a directory")
    model, card_path = model_dir / MODEL_FILE, model_dir / CARD_FILE
    for required in (model, card_path):
        if not required.is_file():
            raise InstallError(f"missing {required}")
    try:
        data = load_model_bytes(model)
        card = ModelCard.read(card_path)
    except (ModelError, ModelCardError) as err:
        raise InstallError(str(err)) from None
    check_card_against_model(card, data, card_path)
    labels = (model_dir / card.labels_file).resolve()
    if os.path.isabs(card.labels_file) or not labels.is_relative_to(model_dir.resolve()):
        raise InstallError(f"{card_path}: labels_file {card.labels_file!r} is not a file of the card's folder "
                           f"{model_dir}: name it relative to that folder (e.g. {LABELS_FILE})")
    if not labels.is_file():
        raise InstallError(f"missing labels file {labels}")
    count = len(read_labels(labels))
    num_classes = card.output.num_classes
    if count not in (num_classes, num_classes - 1, num_classes + 1):
        raise InstallError(f"{labels} has {count} labels but the model card says {num_classes} classes")
    return {MODEL_FILE: model, LABELS_FILE: labels, CARD_FILE: card_path}


# Ops the converter may put after the classifier's last op, which say nothing about its activation.
_EDGE_OPS = ("QUANTIZE", "DEQUANTIZE", "RESHAPE")


def check_card_against_model(card: ModelCard, model: bytes, card_path: os.PathLike) -> None:
    """The card says what the app feeds the model and reads from it: refuse a card its model contradicts (the app threw
    at start-up) with one line naming the first field that differs."""
    try:
        analysis = analyze(model, xnnpack=False)
    except ModelError as err:
        raise InstallError(str(err)) from None
    if len(analysis.inputs) != 1 or len(analysis.outputs) != 1:
        raise InstallError(f"{card_path.parent / MODEL_FILE} has {len(analysis.inputs)} inputs and "
                           f"{len(analysis.outputs)} outputs: the app runs classifiers with one of each")
    inp, out = analysis.inputs[0], analysis.outputs[0]
    last = [name for name in analysis.op_sequence if name not in _EDGE_OPS][-1:] or ["none"]
    model_says = {
        "input.height x width x channels": "x".join(map(str, inp.shape[1:])),
        "input.dtype": inp.dtype, "output.dtype": out.dtype, "output.num_classes": out.shape[-1],
        "output.activation": "softmax" if last[0] == "SOFTMAX" else "none",
    }
    card_says = {
        "input.height x width x channels": f"{card.input.height}x{card.input.width}x{card.input.channels}",
        "input.dtype": card.input.dtype, "output.dtype": card.output.dtype,
        "output.num_classes": card.output.num_classes, "output.activation": card.output.activation,
    }
    for (what, scale, zero_point), tensor in zip((("input", card.input.scale, card.input.zero_point),
                                                  ("output", card.output.scale, card.output.zero_point)), (inp, out)):
        if tensor.scale is not None:
            model_says[f"{what}.scale, zero_point"] = f"{tensor.scale:.6g}, {tensor.zero_point}"
            card_says[f"{what}.scale, zero_point"] = f"{scale:.6g}, {zero_point}"
    for field, expected in model_says.items():
        if card_says[field] != expected:
            raise InstallError(f"{card_path}: {field} is {card_says[field]} but its model says {expected}: the card "
                               "belongs to another model; re-export them together")


def install(model_dir: str | os.PathLike, assets_dir: str | os.PathLike = DEFAULT_ASSETS) -> list[pathlib.Path]:
    """Validates MODEL_DIR and installs its files into assets_dir; returns the installed paths."""
    files = validate(model_dir)
    assets = pathlib.Path(assets_dir)
    try:
        check_writable_dir(assets, "--assets")  # a file in the way was a bare "[Errno 17] File exists"
    except ValueError as err:
        raise InstallError(str(err)) from None
    with contextlib.ExitStack() as staged:
        # Every file is copied beside its destination before any is renamed into place, so a failed copy (disk full)
        # changes nothing. The renames run in the reverse order of entry: side files first, the model last, so a
        # reader that sees the new model also sees its labels and card.
        temporary = {name: staged.enter_context(atomic_output(assets / name))
                     for name in (MODEL_FILE, CARD_FILE, LABELS_FILE)}
        for name, tmp in temporary.items():
            shutil.copyfile(files[name], tmp)
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
    return [assets / name for name in (LABELS_FILE, CARD_FILE, MODEL_FILE)]


def install_into_android_app(output_dir: str) -> list[pathlib.Path]:
    """Install the export in `output_dir` as the demo app's bundled model (the pipeline's --android)."""
    return install(output_dir)


@dataclasses.dataclass(frozen=True)
class InstallOptions:
    """The flags of the installer (the positional argument: the folder with model.tflite, labels.txt and
    model_card.json)."""

    assets: str = setting(str(DEFAULT_ASSETS), "The app's assets folder.")


def install_command(options: InstallOptions, args: list[str]) -> int:
    (model_dir,) = positional(args, f"MODEL_DIR: a folder with {MODEL_FILE}, {LABELS_FILE} and {CARD_FILE}")
    for path in install(model_dir, options.assets):
        print(f"installed {path}")
    return 0


main = Command("pipeline.android", InstallOptions, install_command)

if __name__ == "__main__":
    run_command(main)
