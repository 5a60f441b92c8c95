#!/usr/bin/env bash
# Installs what the web demo and its browser tests need (called by scripts/setup.sh):
#   - LiteRT.js and playwright-core, pinned by web_demo/package-lock.json, into the git-ignored web_demo/node_modules
#     (`npm ci`; a stamp of the lock file skips it when nothing changed),
#   - Chromium from Debian (apt package chromium), which tests/test_web_demo.py and bench/web_demo.py drive headless.
# Needs node/npm, and root (or sudo) for apt. Idempotent.
set -euo pipefail
DIR="$(cd "$(dirname "$0")" && pwd)"

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    echo "web_demo/setup.sh: need root to run: $*" >&2; return 1
  fi
}

stamp="$DIR/node_modules/.package-lock.sha256"
want=$(sha256sum "$DIR/package-lock.json" | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ] || [ ! -d "$DIR/node_modules/@litertjs/core/wasm" ]; then
  (cd "$DIR" && npm ci --no-audit --no-fund --loglevel=error --ignore-scripts)
  echo "$want" > "$stamp"
fi

if ! command -v chromium >/dev/null; then
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium
fi
echo "web_demo/setup.sh: LiteRT.js $(node -p "require('$DIR/node_modules/@litertjs/core/package.json').version") in" \
  "$DIR/node_modules; $(chromium --version 2>/dev/null || echo 'chromium missing')"
