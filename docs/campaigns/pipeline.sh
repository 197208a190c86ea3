#!/bin/bash
# The open issues' campaigns in the order they need each other, resumable: the Diff-SR ablation (issue 17); the
# 200k-step campaign's SAC runs on HalfCheetah, Hopper and Walker2d (three seeds: the offline datasets' behaviour
# policies come from the best of them, make_datasets.py's pick_run), the rest of the campaign
# (issue 18), the datasets (made and committed once already; a new machine makes them again, the same sets);
# the offline results (issue 19); the multi-agent results (issue 20). A session's commands are killed when it ends, so
# start this at the beginning of every session (repository root, the project's venv active) and leave it in
# the background:
#   setsid nohup bash docs/campaigns/pipeline.sh > runs/pipeline.log 2>&1 < /dev/null &
# Rerunning goes on where the last one stopped: a finished sweep returns at once (its cells are done), an
# unfinished one resumes its runs from their checkpoints. Each stage restores its batch's archived runs into
# the sweep folder when the folder is missing (a new machine: finished cells are then skipped, unfinished ones
# resume from the checkpoint carry.sh packed at the last stop, or start over where none was packed), commits
# each run as it finishes (archive_loop.sh), and archives once more at its end. Before a session stops:
#   for s in campaign:docs/rl/campaign-200k offline:docs/offline/results marl:docs/marl/results; do
#     [ -d runs/${s%%:*} ] && bash docs/campaigns/carry.sh save runs/${s%%:*} ${s#*:}; done   # then commit them
# A stage whose sweep fails stops the pipeline (the log names the cells).
# The offline baselines need d3rlpy's environment: .tox/d3rlpy in the checkout, or DIFFRL_D3RLPY_PYTHON.
set -uo pipefail
cd "$(dirname "$0")/../.."

stage() {  # GRID SWEEP_DIR BATCH_DIR [diffrl sweep's cell filters]
  local grid=$1 out=$2 batch=$3 loop rc
  shift 3
  if [ ! -d "$out" ] && [ -d "$batch/runs" ]; then  # a new machine: the archive, then the runs carried in flight
    mkdir -p "$out" && cp -r "$batch/runs/." "$out/" && bash docs/campaigns/carry.sh restore "$out" "$batch"
  fi
  echo "pipeline: $(date -u '+%F %T') UTC: $grid -> $out $*"
  bash docs/campaigns/archive_loop.sh "$out" "$batch" &
  loop=$!
  diffrl sweep "$grid" --out "$out" --runs-at-once 2 "$@"
  rc=$?
  kill "$loop" 2> /dev/null
  if bash "$batch/plot.sh" "$out" > /dev/null 2>&1; then
    git add "$batch" && git commit -q -m "$(basename "$batch") batch: logs archived at the end of its sweep" \
      -- "$batch" > /dev/null 2>&1
  fi
  return $rc
}

stage docs/rl/2026-12-06-ablation/grid.yaml runs/ablation docs/rl/2026-12-06-ablation || exit 1
stage docs/rl/campaign-200k/grid.yaml runs/campaign docs/rl/campaign-200k \
  --groups sac --envs HalfCheetah-v5 Hopper-v5 Walker2d-v5 || exit 1
stage docs/rl/campaign-200k/grid.yaml runs/campaign docs/rl/campaign-200k || exit 1
# each stage's datasets (made.json's picks, from the kept policies) are made just before it, not beside the
# campaign (on a new machine its two runs would share their two cores with a third process), and only the tasks it
# reads: a new machine makes them again (the same sets; about 50 minutes for the single-agent ones). made.json,
# its tables (datasets*.rst) and the kept policies are committed when they changed (nothing to commit on a machine
# that remakes the same sets is no failure).
datasets() {  # TASK...
  python docs/offline/results/make_datasets.py --runs runs/campaign --out datasets --tasks "$@" \
    >> runs/datasets.log 2>&1 || { echo "pipeline: make_datasets.py failed (runs/datasets.log)"; return 1; }
  local files=(docs/offline/results/made.json docs/offline/results/datasets.rst
               docs/offline/results/datasets-marl.rst docs/offline/results/policies)
  git add "${files[@]}" && { git diff --cached --quiet -- docs/offline/results || git commit -q -m \
    "Offline datasets made: made.json, its tables and the behaviour policies kept" -- "${files[@]}"; }
}
datasets HalfCheetah-v5 Hopper-v5 Walker2d-v5 || exit 1
stage docs/offline/results/grid.yaml runs/offline docs/offline/results || exit 1
datasets HalfCheetah-2x3 Hopper-3x1 || exit 1
stage docs/marl/results/grid.yaml runs/marl docs/marl/results || exit 1
echo "pipeline: $(date -u '+%F %T') UTC: every stage finished"
