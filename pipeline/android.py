"""Putting an exported model into the demo app (android_demo/scripts/install_model.py does the copying)."""

from __future__ import annotations

import importlib.util
import os

_INSTALLER = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "android_demo", "scripts",
                          "install_model.py")


def install_into_android_app(output_dir: str):
    """Copy model.tflite, labels.txt and model_card.json of `output_dir` into the demo app's assets."""
    spec = importlib.util.spec_from_file_location("install_model", _INSTALLER)
    installer = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(installer)
    return installer.install(output_dir)
