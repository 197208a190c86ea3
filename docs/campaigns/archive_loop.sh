#!/bin/bash
# Commits a running sweep's finished runs as they finish, so that nothing finished lives only on this machine.
# Usage (repository root, the venv active, in the background beside the sweep):
#   bash docs/campaigns/archive_loop.sh SWEEP_DIR BATCH_DIR [SECONDS]
# Every SECONDS (default 300) it lists SWEEP_DIR/*/*/seed*/done.json (and the deeper dataset-id layout); when
# the list changed, it runs BATCH_DIR/plot.sh SWEEP_DIR (which regenerates the batch's table, plot and log
# archive) and commits BATCH_DIR alone (git commit -- BATCH_DIR, so other staged work is left alone).
set -uo pipefail
SWEEP=${1:?sweep folder}; BATCH=${2:?batch folder}; EVERY=${3:-300}
[ -f "$BATCH/plot.sh" ] || { echo "archive_loop: $BATCH/plot.sh is missing" >&2; exit 2; }
last=""
while true; do
  now=$(find "$SWEEP" -name done.json -path '*/seed*/done.json' 2>/dev/null | sort | tr '\n' ' ')
  if [ -n "$now" ] && [ "$now" != "$last" ]; then
    if bash "$BATCH/plot.sh" "$SWEEP" > /tmp/archive_loop.$$.log 2>&1; then
      n=$(echo $now | wc -w)
      git add "$BATCH" && git commit -q -m "$(basename "$BATCH") batch: $n runs finished, logs archived" -- "$BATCH" \
        >> /tmp/archive_loop.$$.log 2>&1
      last="$now"
    else
      echo "archive_loop: $BATCH/plot.sh failed (see /tmp/archive_loop.$$.log); retrying in $EVERY s" >&2
    fi
  fi
  sleep "$EVERY"
done
