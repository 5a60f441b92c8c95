#!/usr/bin/env python3
"""Copy an exported model into the Android demo's assets, atomically.

    python android_demo/scripts/install_model.py MODEL_DIR [--assets DIR]

MODEL_DIR is what the pipeline exports: model.tflite, labels.txt and model_card.json (the card's "labels_file" may name
another labels file, which is then installed as labels.txt). The files are checked first (the model starts with the
TFLite identifier, the card parses and agrees with the labels count), staged in a temporary folder beside the assets
folder and moved into place one by one with os.replace, so a failed or interrupted run never leaves a half-written model
for Gradle to package. Standard library only: the pipeline can import `install(model_dir, assets_dir)` or run this file.
Exit status: 0 installed, 1 invalid input.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import sys
import tempfile

DEFAULT_ASSETS = pathlib.Path(__file__).resolve().parents[1] / "app" / "src" / "main" / "assets"
MODEL, LABELS, CARD = "model.tflite", "labels.txt", "model_card.json"


class InstallError(ValueError):
    pass


def _read_labels(path: pathlib.Path) -> list[str]:
    lines = path.read_text(encoding="utf-8").splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    return lines


def validate(model_dir: pathlib.Path) -> dict[str, pathlib.Path]:
    """The files to install (asset name -> source), after checking them; raises InstallError."""
    model_dir = pathlib.Path(model_dir)
    if not model_dir.is_dir():
        raise InstallError(f"{model_dir} is not a directory")
    model, card_path = model_dir / MODEL, model_dir / CARD
    for required in (model, card_path):
        if not required.is_file():
            raise InstallError(f"missing {required}")
    with model.open("rb") as f:
        head = f.read(8)
    if len(head) < 8 or head[4:8] != b"TFL3":
        raise InstallError(f"{model} is not a TFLite model (no TFL3 identifier)")
    try:
        card = json.loads(card_path.read_text(encoding="utf-8"))
        inp, out = card["input"], card["output"]
        num_classes = int(out["num_classes"])
        for key in ("height", "width", "dtype"):
            inp[key]
    except (ValueError, KeyError, TypeError) as e:
        raise InstallError(f"{card_path} is not a valid model card: {e!r}") from e
    labels = model_dir / card.get("labels_file", LABELS)
    if not labels.is_file():
        raise InstallError(f"missing labels file {labels}")
    count = len(_read_labels(labels))
    if count not in (num_classes, num_classes - 1, num_classes + 1):
        raise InstallError(f"{labels} has {count} labels but the model card says {num_classes} classes")
    return {MODEL: model, LABELS: labels, CARD: card_path}


def install(model_dir: pathlib.Path | str, assets_dir: pathlib.Path | str = DEFAULT_ASSETS) -> list[pathlib.Path]:
    """Validates MODEL_DIR and installs its files into assets_dir; returns the installed paths."""
    files = validate(pathlib.Path(model_dir))
    assets = pathlib.Path(assets_dir)
    assets.mkdir(parents=True, exist_ok=True)
    staging = pathlib.Path(tempfile.mkdtemp(prefix=".install-", dir=assets))
    try:
        for name, source in files.items():
            shutil.copyfile(source, staging / name)
            with open(staging / name, "rb") as f:
                os.fsync(f.fileno())
        installed = []
        # Side files first, the model last: a reader that sees the new model also sees its labels and card.
        for name in (LABELS, CARD, MODEL):
            os.replace(staging / name, assets / name)
            installed.append(assets / name)
        return installed
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", type=pathlib.Path, help="folder with model.tflite, labels.txt, model_card.json")
    parser.add_argument("--assets", type=pathlib.Path, default=DEFAULT_ASSETS, help=f"default: {DEFAULT_ASSETS}")
    args = parser.parse_args(argv)
    try:
        for path in install(args.model_dir, args.assets):
            print(f"installed {path}")
    except InstallError as e:
        print(f"install_model: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
