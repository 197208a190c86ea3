#!/bin/bash
# The exact script behind the official code's row of the throughput table in docs/rl.rst.
# Setup (once): the official code at commit d4dd78ae2e06c2713edb19387485651b7e3f5dc1 of haotiansun14/rl-rep in
# $OFFICIAL_REPO (default /tmp/official/rl-rep), and a venv at /tmp/official/venv with torch==2.13.0,
# gymnasium[mujoco]==1.4.0 (mujoco 4.0.1 was used), numpy and scipy. No official file is edited.
set -euo pipefail
export OFFICIAL_REPO=${OFFICIAL_REPO:-/tmp/official/rl-rep} THREADS=${THREADS:-2}
export OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS CUDA_VISIBLE_DEVICES=""
/tmp/official/venv/bin/python -W ignore "$(dirname "$0")/official_diffsrsac.py"
