#!/usr/bin/env bash
# Regenerates the committed numbers listed in experiments/reproduce.json into runs/reproduce/ and
# compares each with its committed value (within the tolerance the manifest states and justifies).
#   scripts/reproduce.sh --list        entries, their expected wall time, and the total
#   scripts/reproduce.sh NAME...       those entries;  all: every entry;  cheap: the quick ones (CI)
# Exit 0 when every number is within tolerance, 1 when one is not (or a command failed), 2 for a
# usage error. Builds lopt first (scripts/build.sh lopt).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" != "--list" ] && [ $# -gt 0 ]; then scripts/build.sh lopt > /dev/null; fi
exec /usr/bin/python3 experiments/reproduce.py "$@"
