#!/bin/bash
# The measurements to take when an accelerator is lent, in one short script (about 8 minutes of device time):
# CUDA conformance in float32 and bfloat16, `diffrl bench --device cuda` (including the CUDA-graph-captured
# DDIM loop at batch 1 and 5 steps), Diff-SR's training throughput on CUDA against CPU (HalfCheetah, Humanoid),
# and the offline agents' gradient steps/s on CUDA (docs/offline/edp_speed.py).
# Everything goes to $OUT (default docs/bench/cuda); commit that folder with the date, machine and versions.
# Usage (on the GPU machine, from the repository root, with the rl extra installed):
#   OUT=docs/bench/cuda bash docs/bench/gpu_check.sh
set -uo pipefail
OUT=${OUT:-docs/bench/cuda}
mkdir -p "$OUT"
{ date -u +%FT%TZ; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda)"
  grep -m1 "model name" /proc/cpuinfo; nproc; } > "$OUT/machine.txt" 2>&1
run() { local name=$1 limit=$2; shift 2; echo "\$ $*" > "$OUT/$name.txt"; /usr/bin/time -f "wall %e s" timeout "$limit" "$@" >> "$OUT/$name.txt" 2>&1; echo "exit $?" >> "$OUT/$name.txt"; }
run conform-float32 150 diffrl conform --device cuda -n 4 --report "$OUT/conform-float32.json"
run conform-bfloat16 150 diffrl conform --device cuda --dtype bfloat16 -n 4 --report "$OUT/conform-bfloat16.json"
run bench 120 diffrl bench --device cuda --min-time 0.3 --out "$OUT/bench"
# training throughput: 2,000 learning steps after 1,000 warm-up steps, evaluation excluded (train.csv, done.json)
for env in HalfCheetah-v5 Humanoid-v5; do
  for dev in cuda cpu; do
    run "train-diffsr-$env-$dev" 150 diffrl train diffsr --env "$env" --steps 3000 --hp learning_starts=1000 \
      --eval-every 3000 --eval-episodes 1 --device "$dev" --out "$OUT/runs/$env/diffsr-$dev/seed0" --no-progress
  done
done
# offline agents: Diffusion-QL (K = 5, K = 1000) and EDP (K = 1000) gradient steps/s and act latency on CUDA
mkdir -p "$OUT/offline"
run edp-speed-cuda 150 python3 docs/offline/edp_speed.py --device cuda --rounds 2 --out "$OUT/offline"
python3 - "$OUT" <<'PY' > "$OUT/summary.txt"
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
for done in sorted(out.glob("runs/*/*/seed0/done.json")):
    d = json.loads(done.read_text())
    print(done.parent.parent.parent.name, done.parent.parent.name, f"{d['seconds_per_1k_learning_steps']:.2f} s / 1k learning steps")
PY
cat "$OUT/summary.txt"
