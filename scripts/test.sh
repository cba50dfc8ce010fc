#!/usr/bin/env bash
# Installs every dependency (Debian packages), builds lopt, runs the whole test suite, then the main
# job in its quick form (scripts/run.sh --quick), checking that it leaves the checkout unchanged.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/build.sh
BUILD_DIR="${LOPT_BUILD_DIR:-build}"
jobs=$(nproc 2>/dev/null || echo 2)
ctest --test-dir "$BUILD_DIR" --output-on-failure -j "$jobs" --timeout 600
# The main job's quick form: it must run end to end and leave the checkout as it was (it writes only
# under the ignored runs/).
before=$(git status --porcelain 2>/dev/null || echo "not a git checkout")
scripts/run.sh --quick > "${LOPT_RUN_LOG:-/tmp/lopt-run-quick.log}" 2>&1 || {
  echo "test.sh: scripts/run.sh --quick failed; its output:" >&2; tail -30 "${LOPT_RUN_LOG:-/tmp/lopt-run-quick.log}" >&2; exit 1; }
after=$(git status --porcelain 2>/dev/null || echo "not a git checkout")
if [ "$before" != "$after" ]; then
  echo "test.sh: scripts/run.sh --quick changed the checkout:" >&2
  diff <(echo "$before") <(echo "$after") >&2 || true
  exit 1
fi
echo "test.sh: scripts/run.sh --quick ran and left the checkout unchanged"
# The cheap entries of the reproduce manifest: committed numbers regenerated and compared.
scripts/reproduce.sh cheap
