#!/usr/bin/env python3
"""Copy an exported model into the Android demo's assets, atomically:

    .venv/bin/python android_demo/scripts/install_model.py MODEL_DIR [--assets DIR]

The installer is the `pipeline.android` module (importable once scripts/setup.sh has installed the project into .venv);
this file is its command, at the path the app's documentation gives. Exit status: 0 installed,
2 invalid input (one line).
"""

from pipeline.android import main
from tflite_export.command import run_command

if __name__ == "__main__":
    run_command(main)
