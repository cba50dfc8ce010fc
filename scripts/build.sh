#!/usr/bin/env bash
# Configures (Ninja, Release) and builds lopt into build/. Extra arguments are ninja targets.
# Used by run.sh and test.sh after setup.sh; set LOPT_BUILD_DIR to build elsewhere.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR="${LOPT_BUILD_DIR:-build}"
if [ ! -f "$BUILD_DIR/build.ninja" ]; then
  cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Release
fi
jobs=$(nproc 2>/dev/null || echo 2)
ninja -C "$BUILD_DIR" -j "$jobs" "$@"
