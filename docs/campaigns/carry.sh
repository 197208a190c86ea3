#!/bin/bash
# Carries a sweep's unfinished runs to the next machine. A session's commands are killed when it ends and the next
# session may get a new machine, where a run whose checkpoint stayed behind starts over (pipeline.sh restores
# only the archived logs, and an offline run of 5 hours never finishes within one session). Usage, repository root:
#   bash docs/campaigns/carry.sh save SWEEP_DIR BATCH_DIR      # before the session stops; then commit BATCH_DIR
#   bash docs/campaigns/carry.sh restore SWEEP_DIR BATCH_DIR   # pipeline.sh's stage, on a machine without SWEEP_DIR
# save packs each unfinished run folder (a checkpoint.pt and no done.json) into BATCH_DIR/inflight/RUN.tar.xz, RUN
# the run's path in the sweep (ENV/GROUP/seedN, or the dataset id's folders), after removing every older pack: the
# folder then holds exactly the runs in flight now. restore unpacks each pack over the copy of the archive, except
# where the archive has the run finished (a pack left from an earlier stop). The run then resumes from its
# checkpoint as after a kill on the same machine (the loop drops the log rows after the checkpoint's step).
# Cap: a pack whose compressed size is over CARRY_CAP_MB (default 12) is not kept, and that run starts over on a new
# machine: every pack stays in git's history for good. An offline run's checkpoint (networks and optimisers; its
# data are the dataset) packs to 6.0 MB (Diffusion-QL) or 6.9 MB (EDP) with HalfCheetah's shapes. A Diff-SR run's
# holds its replay buffer too (8.8 MB packed at 20k steps on HalfCheetah): the pack keeps its actions alone and the
# restore replays them (diffrl_ref/rl/carry.py): 8.0 MB at 40k steps, 10.2 MB at 140k (about 7.5 MB plus 25 B a step).
# SAC's (stable-baselines3's buffer) is packed as it is, so it is over the cap early: a SAC run fits in a session.
set -euo pipefail
what=${1:-}; SWEEP=${2:-}; BATCH=${3:-}
[ "$what" = save ] || [ "$what" = restore ] || { echo "usage: carry.sh save|restore SWEEP_DIR BATCH_DIR" >&2; exit 2; }
[ -n "$SWEEP" ] && [ -n "$BATCH" ] || { echo "usage: carry.sh save|restore SWEEP_DIR BATCH_DIR" >&2; exit 2; }
CAP=$(( ${CARRY_CAP_MB:-12} * 1000000 ))
PY=${PYTHON:-python}  # the project's venv (diffrl_ref and torch)
PACKS="$BATCH/inflight"

if [ "$what" = save ]; then
  [ -d "$SWEEP" ] || { echo "carry.sh: no sweep folder $SWEEP" >&2; exit 2; }
  rm -rf "$PACKS"
  while IFS= read -r ck; do
    dir=${ck%/checkpoint.pt}
    rel=${dir#"$SWEEP"/}
    [ -f "$dir/done.json" ] && continue
    mkdir -p "$(dirname "$PACKS/$rel")"
    tmp="$PACKS/$rel.tar.xz.part"
    # the folder without its lock, and its checkpoint compact (a Diff-SR replay buffer reduced to its actions,
    # diffrl_ref/rl/carry.py); the loop replaces checkpoint.pt atomically, so a run may go on training meanwhile
    stage=$(mktemp -d)
    tar -C "$SWEEP" --exclude=.lock --exclude=checkpoint.pt -cf - "$rel" | tar -C "$stage" -xf -
    "$PY" -m diffrl_ref.rl.carry compact "$dir/checkpoint.pt" "$stage/$rel/checkpoint.pt" > /dev/null
    tar -C "$stage" -cf - "$rel" | xz -6 -T1 > "$tmp"
    rm -rf "$stage"
    size=$(stat -c %s "$tmp")
    if [ "$size" -gt "$CAP" ]; then
      rm "$tmp"
      echo "carry.sh: $rel not kept: $((size / 1000000)) MB packed, over the cap of $((CAP / 1000000)) MB"
    else
      mv "$tmp" "$PACKS/$rel.tar.xz"
      echo "carry.sh: $rel packed ($((size / 1000)) kB)"
    fi
  done < <(find "$SWEEP" -name checkpoint.pt -path '*/seed*/checkpoint.pt' | sort)
  [ -d "$PACKS" ] && find "$PACKS" -type d -empty -delete
  exit 0
fi

[ -d "$PACKS" ] || exit 0
while IFS= read -r pack; do
  rel=${pack#"$PACKS"/}
  rel=${rel%.tar.xz}
  if [ -f "$BATCH/runs/$rel/done.json" ]; then
    echo "carry.sh: $rel finished in the archive; its pack is old and not unpacked"
    continue
  fi
  rm -rf "${SWEEP:?}/$rel"
  mkdir -p "$SWEEP"
  xz -dc "$pack" | tar -C "$SWEEP" -xf -
  if "$PY" -m diffrl_ref.rl.carry expand "$SWEEP/$rel" > /dev/null; then
    echo "carry.sh: $rel unpacked"
  else  # the replayed buffer is not the packed one (carry.py says why): the run starts over
    rm -f "$SWEEP/$rel/checkpoint.pt"
    echo "carry.sh: $rel unpacked without its checkpoint: it starts over"
  fi
done < <(find "$PACKS" -name '*.tar.xz' | sort)
