"""Do two environments (Python venvs) give the same MuJoCo v5 trajectories? Hashes to compare.

d3rlpy 2.8.1 pins gymnasium 1.0.0, the project gymnasium 1.4.0 (both with mujoco 3.3.0). The baselines
are evaluated in the d3rlpy environment, the project's agents in the project's, so the v5 tasks must
behave identically in both. Run this file with each environment's python::

    /work/venv/bin/python baselines/check_envs.py --out baselines/envcheck-gymnasium-1.4.0.json
    /work/venv-d3/bin/python baselines/check_envs.py --out baselines/envcheck-gymnasium-1.0.0.json
    python baselines/check_envs.py --compare baselines/envcheck-gymnasium-1.4.0.json \\
        baselines/envcheck-gymnasium-1.0.0.json

For each task, made with ``gymnasium.make(ID)`` as ``diffrl_ref.rl.envs.make`` does (default time limit,
wrappers and options), it plays ``--steps`` steps: episodes reset with ``reset(seed=s)`` from a fixed
list of seeds (small ones and 32-bit ones like the project's ``envs.episode_seed``), actions uniform in the
action box from a NumPy generator with a fixed seed (float32, the box's dtype), a new episode after each
termination or truncation (the default 1100 steps reach HalfCheetah's 1000-step time limit once). It
hashes (SHA-256) the float64 bytes of the observations (reset observations included), rewards,
terminated and truncated arrays, and of the spaces' bounds. Then it runs the project's evaluation protocol
itself, ``diffrl_ref.rl.envs.evaluate`` on ``envs.make(task, 0, evaluation=True)`` (imported from this
checkout; that module needs only gymnasium and numpy) with a fixed linear policy clipped to [-1, 1], its
sums exactly rounded so that the result does not depend on the CPU, and records its result (mean and std of
the return, mean length) exactly. ``--compare A B`` prints equal/different per task
(and which parts differ) and exits 1 if any differs or is missing.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import json
import math
import platform
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np

TASKS = ("HalfCheetah-v5", "Hopper-v5", "Walker2d-v5", "Ant-v5", "Humanoid-v5")
RESET_SEEDS = (0, 1, 2, 12345, 2_147_483_647, 4_000_000_000)  # episode k resets from RESET_SEEDS[k % 6] + k
ACTION_SEED = 20261206
ARRAYS = ("observations", "rewards", "terminated", "truncated")


def sha(x: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(x, dtype=np.float64).tobytes()).hexdigest()


def rollout(task: str, steps: int) -> dict[str, Any]:
    import gymnasium as gym

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        env = gym.make(task)
        space = env.action_space
        rng = np.random.default_rng(ACTION_SEED)
        obs_list, rewards, terminated, truncated = [], [], [], []
        episode, t = 0, 0
        while t < steps:
            obs, _ = env.reset(seed=RESET_SEEDS[episode % len(RESET_SEEDS)] + episode)
            obs_list.append(np.asarray(obs, dtype=np.float64))
            while t < steps:
                a = rng.uniform(space.low, space.high).astype(space.dtype)
                obs, r, term, trunc, _ = env.step(a)
                obs_list.append(np.asarray(obs, dtype=np.float64))
                rewards.append(float(r))
                terminated.append(float(term))
                truncated.append(float(trunc))
                t += 1
                if term or trunc:
                    break
            episode += 1
        env.close()
    arrays = {"observations": np.stack(obs_list), "rewards": np.asarray(rewards),
              "terminated": np.asarray(terminated), "truncated": np.asarray(truncated)}
    bounds = [space.low, space.high, env.observation_space.low, env.observation_space.high]
    return {"steps": steps, "episodes": episode, "terminations": int(sum(terminated)),
            "truncations": int(sum(truncated)), "max_episode_steps": env.spec.max_episode_steps if env.spec else None,
            "sha256": {name: sha(x) for name, x in arrays.items()},
            "spaces_sha256": sha(np.concatenate([np.nan_to_num(np.asarray(b, np.float64).ravel(), posinf=1e300,
                                                               neginf=-1e300) for b in bounds])),
            "return_sum": float(np.sum(arrays["rewards"]))}


def project_evaluation(task: str, episodes: int) -> dict[str, float]:
    """The project's evaluation protocol itself (``diffrl_ref.rl.envs.evaluate`` on ``envs.make(task, 0,
    evaluation=True)``, imported from this checkout) with a fixed linear policy, clipped, in exactly rounded
    arithmetic: its result dict."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from diffrl_ref.rl import envs

    env = envs.make(task, 0, evaluation=True)
    rng = np.random.default_rng(ACTION_SEED)
    w = rng.normal(0.0, 0.3, (env.action_space.shape[0], env.observation_space.shape[0])).tolist()

    def policy(obs: np.ndarray) -> np.ndarray:
        # exactly rounded dot products (math.fsum of float64 products) clipped to [-1, 1]: NumPy's matmul and
        # tanh take CPU-specific kernels, and with them this evaluation differed between two machines with the
        # same versions (2026-12-07: Hopper in the 8th digit, HalfCheetah entirely) while MuJoCo's arrays agreed
        x = obs.tolist()
        return np.array([min(1.0, max(-1.0, math.fsum(wi * xi for wi, xi in zip(row, x, strict=True))))
                         for row in w])

    res: dict[str, float] = envs.evaluate(policy, env, 0, episodes)
    env.close()
    return res


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for p in ("gymnasium", "mujoco", "numpy"):
        try:
            out[p] = importlib.metadata.version(p)
        except importlib.metadata.PackageNotFoundError:
            out[p] = "not installed"
    return out


def compare(a: dict[str, Any], b: dict[str, Any]) -> tuple[list[str], bool]:
    lines, same = [], True
    va, vb = a.get("versions", {}), b.get("versions", {})
    lines.append(f"A: gymnasium {va.get('gymnasium')}, mujoco {va.get('mujoco')}; "
                 f"B: gymnasium {vb.get('gymnasium')}, mujoco {vb.get('mujoco')}")
    for task in sorted(set(a["tasks"]) | set(b["tasks"])):
        if task not in a["tasks"] or task not in b["tasks"]:
            lines.append(f"{task}: missing in {'A' if task not in a['tasks'] else 'B'}")
            same = False
            continue
        ta, tb = a["tasks"][task], b["tasks"][task]
        diff = [n for n in ARRAYS if ta["sha256"][n] != tb["sha256"][n]]
        if ta["spaces_sha256"] != tb["spaces_sha256"]:
            diff.append("spaces")
        if ta["steps"] != tb["steps"]:
            diff.append(f"steps {ta['steps']} vs {tb['steps']}")
        if "project_evaluation" in ta and "project_evaluation" in tb \
                and ta["project_evaluation"] != tb["project_evaluation"]:
            diff.append("project evaluation")
        same = same and not diff
        lines.append(f"{task}: " + ("equal" if not diff else "different (" + ", ".join(diff) + ")")
                     + f" [{ta['steps']} steps, {ta['episodes']} episodes, {ta['terminations']} terminations, "
                       f"{ta['truncations']} truncations]")
    return lines, same


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="check_envs.py", description=__doc__.splitlines()[0])
    p.add_argument("--tasks", nargs="+", default=list(TASKS), help=f"Gymnasium ids (default: {' '.join(TASKS)})")
    p.add_argument("--steps", type=int, default=1100, help="steps per task (default: 1100)")
    p.add_argument("--project-episodes", type=int, default=2,
                   help="episodes of the project's own evaluation (envs.evaluate) per task; 0: skip (default: 2)")
    p.add_argument("--out", help="write the JSON here (default: stdout)")
    p.add_argument("--compare", nargs=2, metavar=("A.json", "B.json"), help="compare two outputs instead")
    args = p.parse_args(argv)
    if args.compare:
        a, b = (json.loads(Path(f).read_text()) for f in args.compare)
        lines, same = compare(a, b)
        print("\n".join(lines))
        print("all equal" if same else "DIFFERENT")
        return 0 if same else 1
    tasks = {task: rollout(task, args.steps) for task in args.tasks}
    if args.project_episodes:
        for task in args.tasks:
            tasks[task]["project_evaluation"] = project_evaluation(task, args.project_episodes)
    result = {"versions": versions(), "action_seed": ACTION_SEED, "reset_seeds": list(RESET_SEEDS), "tasks": tasks}
    text = json.dumps(result, indent=1) + "\n"
    if args.out:
        Path(args.out).write_text(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
