#!/bin/bash
# Regenerates this batch's table, plot and archive from the sweep folder (or from the archive copied back);
# diffrl plot orders the groups by name whatever the order given. Usage: bash docs/rl/2026-12-06-ablation/plot.sh [SWEEP_DIR]
set -euo pipefail
SWEEP=${1:-runs/ablation}
NAMES="default amplitude-1 elu-orthogonal alpha-init-1 target-every-1 official-noise weighting-none bandwidth-8 combined sac bandwidth-32 feature-steps-4 official linear-head"
RUNS=()
for g in $NAMES; do
  for d in "$SWEEP"/HalfCheetah-v5/"$g"/seed*; do
    [ -f "$d/eval.csv" ] && RUNS+=("$d")
  done
done
diffrl plot "${RUNS[@]}" --out docs/rl/2026-12-06-ablation --at 20000 50000
python docs/rl/2026-12-06-ablation/decide.py
