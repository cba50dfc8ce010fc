#!/usr/bin/env bash
# Installs every dependency (Debian packages), builds lopt and runs the main job, the toolkit's
# headline (about 15 minutes on 2 cores once built), writing only under runs/main/ (not tracked):
#   1. a short muLO meta-training from scratch (PES, MLP width 32 on 8x8 Fashion-MNIST), with its
#      progress bar -> runs/main/meta_quick/
#   2. the shipped muLO_M checkpoint (meta-trained at widths 32/128/256), untuned and tuned, and the
#      muLO from step 1 (untuned) against AdamW on an MLP of width 1024 (4x wider than any
#      meta-training task), 1000 steps; AdamW and the tuned muLO_M by the same protocol (7 learning
#      rates or step multipliers x {constant, warmup + cosine} on tuning seeds 1, 2), reported on
#      held-out seeds 100-102 -> runs/main/headline.h5 and runs/main/headline.png
# The committed results/headline.{h5,png} are the record of an earlier run (docs/results.md).
#
#   scripts/run.sh            the main job
#   scripts/run.sh --quick    the same commands on a tiny budget (3 outer steps; width 64, 20 steps
#                             per run), ~1 minute once built: checks that the main job runs end to end
#   LOPT_RUN_DIR=DIR          write under DIR instead of runs/main (runs/main-quick for --quick)
set -euo pipefail
cd "$(dirname "$0")/.."
quick=0
for a in "$@"; do
  case "$a" in
    --quick) quick=1 ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) echo "scripts/run.sh: unknown argument '$a' (valid: --quick, --help)" >&2; exit 2 ;;
  esac
done
scripts/setup.sh
scripts/build.sh lopt
BUILD_DIR="${LOPT_BUILD_DIR:-build}"
OUT="${LOPT_RUN_DIR:-runs/main$([ "$quick" = 1 ] && echo -quick)}"
meta=() compare=()
if [ "$quick" = 1 ]; then
  meta=(--outer-steps 3 --set outer.warmup_steps=1)
  compare=(--set base.steps=20 --set base.eval_every=20 --set base.eval_examples=200 --set base.task.width=64 --threads 1 -q)
fi
echo "run.sh: writing under $OUT"
rm -rf "$OUT"
"$BUILD_DIR/lopt" meta-train --config experiments/configs/meta_quick.json -o "$OUT/meta_quick" "${meta[@]}"
"$BUILD_DIR/lopt" compare --config experiments/configs/headline.json -o "$OUT/runs" \
  --summary "$OUT/headline.h5" --png "$OUT/headline.png" \
  --set "contenders.muLO_quick.optimizer.checkpoint=$OUT/meta_quick/theta.safetensors" "${compare[@]}"
echo "run.sh: results in $OUT/headline.h5, $OUT/headline.png"
