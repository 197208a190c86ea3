#!/bin/bash
# Regenerates this batch's table, plot and log archive from the sweep folder (or from the archive copied back).
# Usage: bash docs/offline/results/plot.sh [SWEEP_DIR]; docs/campaigns/archive_loop.sh calls it each time a run finishes.
set -euo pipefail
SWEEP=${1:-runs/offline}
mapfile -t RUNS < <(find "$SWEEP" -name eval.csv -path '*/seed*/eval.csv' -printf '%h\n' | sort)
[ ${#RUNS[@]} -gt 0 ] || { echo "plot.sh: no runs in $SWEEP yet" >&2; exit 1; }
diffrl plot "${RUNS[@]}" --out docs/offline/results --at 50000 100000 200000
