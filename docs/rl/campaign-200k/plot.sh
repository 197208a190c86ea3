#!/bin/bash
# Regenerates this batch's table, plot and log archive from the sweep folder (or from the archive copied back).
# Usage: bash docs/rl/campaign-200k/plot.sh [SWEEP_DIR]; docs/campaigns/archive_loop.sh calls it each time a run finishes.
set -euo pipefail
SWEEP=${1:-runs/campaign}
mapfile -t RUNS < <(find "$SWEEP" -name eval.csv -path '*/seed*/eval.csv' -printf '%h\n' | sort)
[ ${#RUNS[@]} -gt 0 ] || { echo "plot.sh: no runs in $SWEEP yet" >&2; exit 1; }
# the comparison needs both agents at the last step on some task: until then, the table and curves alone
diffrl plot "${RUNS[@]}" --out docs/rl/campaign-200k --at 50000 100000 200000 --compare diffsr sac 2>/dev/null || diffrl plot "${RUNS[@]}" --out docs/rl/campaign-200k --at 50000 100000 200000
