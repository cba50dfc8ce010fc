#!/usr/bin/env bash
# Installs every dependency (Debian packages), builds lopt and runs the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/build.sh
BUILD_DIR="${LOPT_BUILD_DIR:-build}"
jobs=$(nproc 2>/dev/null || echo 2)
ctest --test-dir "$BUILD_DIR" --output-on-failure -j "$jobs" --timeout 600
