#!/usr/bin/env bash
# Installs every dependency (Debian packages), builds lopt and runs the main job:
# an MLP trained on Fashion-MNIST with muAdam -> results/quickstart.h5 and results/quickstart.png.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/build.sh lopt
BUILD_DIR="${LOPT_BUILD_DIR:-build}"
"$BUILD_DIR/lopt" train --config experiments/configs/quickstart.json --output results/quickstart.h5
/usr/bin/python3 experiments/plot.py results/quickstart.h5 -o results/quickstart.png
