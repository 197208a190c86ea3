#!/bin/bash
# The exact script behind the quiet-machine throughput table in docs/rl.rst; it expects a venv with `pip install -c constraints.txt ".[rl]"` at /tmp/v1.
# Training throughput on a quiet machine: HalfCheetah-v5, 2 torch threads, 1,000 random steps then
# 2,000 learning steps (every update included, evaluation excluded); seconds per 1k learning steps from done.json.
. /tmp/v1/bin/activate; cd /work/main
mkdir -p runs/throughput
for CASE in "sac" "diffsr" "diffsr --hp feature_steps=4"; do
  ALGO=${CASE%% *}; EXTRA=""; [ "$CASE" != "$ALGO" ] && EXTRA=${CASE#* }
  NAME=$(echo "$CASE" | tr ' =' '__' | tr -s '_')
  rm -rf runs/throughput/$NAME
  python -m diffrl_ref train $ALGO --env HalfCheetah-v5 --steps 3000 --seed 0 --out runs/throughput/$NAME \
    --eval-every 3000 --eval-episodes 1 --threads 2 --no-progress --hp learning_starts=1000 $EXTRA > /dev/null 2>&1
  python -c "import json,sys; d=json.load(open('runs/throughput/$NAME/done.json')); print('$CASE', round(d['seconds_per_1k_learning_steps'],2), 's/1k', round(1000/d['seconds_per_1k_learning_steps'],2), 'steps/s')"
done
