#!/usr/bin/env bash
# Installs every dependency (Debian packages), builds lopt and runs the main job, the toolkit's
# headline (about 16 minutes on 2 cores once built):
#   1. a short muLO meta-training from scratch (PES, MLP width 32 on 8x8 Fashion-MNIST), with its
#      progress bar -> results/headline/meta_quick/
#   2. the shipped muLO_M checkpoint (meta-trained at widths 32/128/256), untuned and tuned, and the
#      muLO from step 1 (untuned) against AdamW on an MLP of width 1024 (4x wider than any
#      meta-training task), 1000 steps; AdamW and the tuned muLO_M by the same protocol (7 learning
#      rates or step multipliers x {constant, warmup + cosine} on tuning seeds 1, 2), reported on
#      held-out seeds 100-102 -> results/headline.h5 and results/headline.png
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/build.sh lopt
BUILD_DIR="${LOPT_BUILD_DIR:-build}"
rm -rf results/headline
"$BUILD_DIR/lopt" meta-train --config experiments/configs/meta_quick.json -o results/headline/meta_quick
"$BUILD_DIR/lopt" compare --config experiments/configs/headline.json -o results/headline/runs \
  --summary results/headline.h5 --png results/headline.png
