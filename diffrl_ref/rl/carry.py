"""Compact checkpoints, to carry an unfinished online run to another machine (``docs/campaigns/carry.sh``).

A Diff-SR checkpoint holds its replay buffer: (s, a, r, s', done) per environment step, about 170 bytes a
step on HalfCheetah, so a run past 20k steps packs to more than git should keep. The buffer is a function of
its actions alone: every training episode resets from its own seed (:func:`diffrl_ref.rl.envs.episode_seed`)
and a checkpoint falls on an episode boundary (:mod:`diffrl_ref.rl.loop`), so replaying the stored actions in
a new environment gives every observation, reward and flag again. ``compact`` keeps the actions and a SHA-256
of the whole buffer; ``expand`` replays them and refuses (exit 1) unless the digest matches, since MuJoCo or
MetaWorld of other versions could step differently; the run then starts over instead of going on from a buffer
that is not its own. Other checkpoints (SAC's stable-baselines3 buffer, offline runs without one) are copied
as they are.

Usage: ``python -m diffrl_ref.rl.carry compact SRC DST`` (SRC a checkpoint.pt, DST where the compact one goes)
and ``python -m diffrl_ref.rl.carry expand RUN_DIR`` (rewrites RUN_DIR/checkpoint.pt in full, if compact).
"""

from __future__ import annotations

import hashlib
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import envs
from .logs import atomic_write, hash_into

FIELDS = ("s", "a", "r", "s_next", "done")  # diffsr.ReplayBuffer.state_dict's arrays


def digest(buffer: dict[str, Any]) -> str:
    h = hashlib.sha256()
    for k in FIELDS:  # in FIELDS' order (the packs committed on 2026-12-07 were digested so)
        h.update(k.encode())
        hash_into(h, buffer[k])
    return h.hexdigest()


def compact(src: Path, dst: Path) -> bool:
    """Write ``src`` to ``dst`` with its replay buffer reduced to the actions; False (a plain copy) where the
    checkpoint has no such buffer."""
    ck = torch.load(src, map_location="cpu", weights_only=False)
    buf = ck.get("agent", {}).get("buffer") if isinstance(ck.get("agent"), dict) else None
    if not isinstance(buf, dict) or not all(k in buf for k in FIELDS) or buf["pos"] != buf["n"]:
        shutil.copyfile(src, dst)  # no buffer of ours, or one that wrapped around (not replayable in order)
        return False
    ck["agent"]["buffer"] = {"n": buf["n"], "pos": buf["pos"], "a": buf["a"],
                             "compact": {"sha256": digest(buf), "episodes": ck["state"]["episode"]}}
    atomic_write(dst, lambda p: torch.save(ck, p))
    return True


def replay(env_name: str, seed: int, actions: np.ndarray, episodes: int) -> dict[str, np.ndarray]:
    """The buffer the training loop filled with these actions: ``episodes`` whole episodes, in order."""
    env = envs.make(env_name, seed)
    rows: dict[str, list[Any]] = {k: [] for k in FIELDS}
    i = 0
    for k in range(episodes):
        obs = envs.reset(env, envs.episode_seed(seed, k))
        while True:
            if i == len(actions):
                raise ValueError(f"the actions end inside training episode {k}")
            a = actions[i]
            obs_next, r, term, trunc, _ = envs.step(env, a)
            for key, v in zip(FIELDS, (obs, a, r, obs_next, float(term)), strict=True):
                rows[key].append(v)
            i, obs = i + 1, obs_next
            if term or trunc:
                break
    env.close()
    if i != len(actions):
        raise ValueError(f"{len(actions) - i} actions are left after {episodes} episodes")
    return {k: np.asarray(v, dtype=np.float32) for k, v in rows.items()}


def expand(run: Path) -> bool:
    """Make ``run``/checkpoint.pt whole again if it is compact (False if it was not); ValueError if the replayed
    buffer is not the one packed."""
    path = run / "checkpoint.pt"
    ck = torch.load(path, map_location="cpu", weights_only=False)
    buf = ck.get("agent", {}).get("buffer") if isinstance(ck.get("agent"), dict) else None
    if not isinstance(buf, dict) or "compact" not in buf:
        return False
    ident = ck["identity"]
    other = f"replaying {ident['env']} gives another replay buffer than the one packed"
    try:
        rows = replay(ident["env"], int(ident["seed"]), np.asarray(buf["a"]), int(buf["compact"]["episodes"]))
    except ValueError as exc:  # the episodes end elsewhere
        raise ValueError(f"{other}: {exc}") from None
    full = {"n": buf["n"], "pos": buf["pos"], **rows}
    if digest(full) != buf["compact"]["sha256"]:
        raise ValueError(f"{other} (another simulator version?)")
    ck["agent"]["buffer"] = full
    atomic_write(path, lambda p: torch.save(ck, p))
    return True


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) == 3 and args[0] == "compact":
        print("compact" if compact(Path(args[1]), Path(args[2])) else "as it is")
        return 0
    if len(args) == 2 and args[0] == "expand":
        try:
            print("expanded" if expand(Path(args[1])) else "as it is")
        except ValueError as exc:
            print(f"carry: {args[1]}: {exc}", file=sys.stderr)
            return 1
        return 0
    print("usage: python -m diffrl_ref.rl.carry compact SRC DST | expand RUN_DIR", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
