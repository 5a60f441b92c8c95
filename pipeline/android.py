"""Install an exported model into the Android demo app's assets, atomically.

    python android_demo/scripts/install_model.py MODEL_DIR [--assets DIR]     (the app's documented command)
    python -m pipeline.android MODEL_DIR [--assets DIR]                        (the same)

MODEL_DIR is what the pipeline exports: model.tflite, labels.txt and model_card.json (the card's `labels_file` may name
another labels file, which is then installed as labels.txt). The files are checked first (the model is a readable
TFLite flatbuffer, the card is a model card of the version this code writes and agrees with the labels count), copied
beside their destinations and renamed into place one by one, side files first and the model last, so a failed or
interrupted run never leaves a half-written model for Gradle to package.
Exit status: 0 installed, 1 invalid input.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pathlib
import shutil
import sys

from tflite_export.files import (
    CARD_FILE,
    LABELS_FILE,
    MODEL_FILE,
    ModelError,
    atomic_output,
    load_model_bytes,
    read_labels,
)
from tflite_export.model_card import ModelCard, ModelCardError

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
        load_model_bytes(model)
        card = ModelCard.read(card_path)
    except (ModelError, ModelCardError) as err:
        raise InstallError(str(err)) from None
    labels = model_dir / card.labels_file
    if not labels.is_file():
        raise InstallError(f"missing labels file {labels}")
    count = len(read_labels(labels))
    num_classes = card.output.num_classes
    if count not in (num_classes, num_classes - 1, num_classes + 1):
        raise InstallError(f"{labels} has {count} labels but the model card says {num_classes} classes")
    return {MODEL_FILE: model, LABELS_FILE: labels, CARD_FILE: card_path}


def install(model_dir: str | os.PathLike, assets_dir: str | os.PathLike = DEFAULT_ASSETS) -> list[pathlib.Path]:
    """Validates MODEL_DIR and installs its files into assets_dir; returns the installed paths."""
    files = validate(model_dir)
    assets = pathlib.Path(assets_dir)
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="install_model", description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", type=pathlib.Path, help=f"folder with {MODEL_FILE}, {LABELS_FILE}, {CARD_FILE}")
    parser.add_argument("--assets", type=pathlib.Path, default=DEFAULT_ASSETS, help=f"default: {DEFAULT_ASSETS}")
    args = parser.parse_args(argv)
    try:
        for path in install(args.model_dir, args.assets):
            print(f"installed {path}")
    except (InstallError, OSError) as err:
        print(f"install_model: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
