#!/usr/bin/env bash
# Sets up everything the project needs on a fresh machine, idempotently:
#   - a virtualenv in .venv with requirements.txt,
#   - the Kotlin/JUnit toolchain that compiles and tests android_demo/core (see BUILD.md).
# Re-running it is cheap: each step is skipped when already satisfied.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.requirements.sha256
want=$(cat requirements.txt requirements-nodeps.txt | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -r requirements.txt
  .venv/bin/python -m pip install --quiet --no-deps -r requirements-nodeps.txt
  echo "$want" > "$stamp"
fi

# Kotlin toolchain for android_demo/core (compiled and unit-tested on this machine, no Android SDK needed).
if [ -f android_demo/scripts/setup_kotlin.sh ]; then
  bash android_demo/scripts/setup_kotlin.sh
fi
