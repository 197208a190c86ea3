#!/bin/bash
# The exact script that produced the results in docs/rl/DATE/; it expects a venv with `pip install -c constraints.txt ".[rl]"` at /tmp/v1.
# usage: queue.sh ALGO "ENV:SEED ENV:SEED ..." STEPS
. /tmp/v1/bin/activate
cd /work/main
ALGO=$1; STEPS=$3
for item in $2; do
  ENV=${item%%:*}; SEED=${item##*:}
  echo "$(date -u +%FT%TZ) start $ALGO $ENV $SEED" >> runs/queue-$ALGO.log
  python -m diffrl_ref train $ALGO --env $ENV --steps $STEPS --seed $SEED --out runs/$ENV/$ALGO/seed$SEED --threads 1 --no-progress >> runs/queue-$ALGO.log 2>&1
  echo "$(date -u +%FT%TZ) end $ALGO $ENV $SEED rc=$?" >> runs/queue-$ALGO.log
done
