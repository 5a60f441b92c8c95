#!/usr/bin/env bash
# Sets up everything the project needs on a fresh machine, idempotently:
#   - a virtualenv in .venv with requirements.txt and the project itself (`pip install -e .`, see pyproject.toml),
#   - the Kotlin/JUnit toolchain that compiles and tests android_demo/core (see BUILD.md).
# Re-running it is cheap: each step is skipped when already satisfied.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.requirements.sha256
# pyproject.toml is hashed too: a changed package list needs the editable install redone.
want=$(cat requirements.txt requirements-nodeps.txt pyproject.toml | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -r requirements.txt
  .venv/bin/python -m pip install --quiet --no-deps -r requirements-nodeps.txt
  # The packages importable from anywhere; --no-deps: requirements.txt, installed above, is the dependency list.
  .venv/bin/python -m pip install --quiet --no-deps -e .
  echo "$want" > "$stamp"
fi

# Kotlin toolchain for android_demo/core (compiled and unit-tested on this machine, no Android SDK needed).
if [ -f android_demo/scripts/setup_kotlin.sh ]; then
  bash android_demo/scripts/setup_kotlin.sh
fi

# The web demo's npm packages (LiteRT.js, playwright-core) and Debian's Chromium for its browser tests.
bash web_demo/setup.sh
