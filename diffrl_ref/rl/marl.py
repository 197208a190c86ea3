"""Multi-Agent MuJoCo (gymnasium-robotics ``mamujoco_v1``): partitions of the single-agent v5 tasks.

A partition splits the robot's joints among agents; each agent acts on its joints and observes its
local view (its joints and their neighbours at graph distance ``agent_obsk``, default 1). The joint
dynamics and the team reward are the single-agent v5 task's: :func:`equivalence` steps both from the
same seed and compares them bit for bit, so that the project's single-agent SAC policies can act in the
partitioned task (issue 20's datasets).
"""

from __future__ import annotations

import contextlib
import io
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np


class MarlError(ValueError):
    """An unknown partition or a missing package; the CLI prints it as one line."""


@dataclass(frozen=True)
class Partition:
    scenario: str  # gymnasium-robotics' scenario name
    conf: str  # agent configuration, e.g. "2x3": 2 agents of 3 joints
    single: str  # the single-agent Gymnasium id with the same dynamics and reward


#: The partitions the project uses, by the names runs and datasets carry.
PARTITIONS: dict[str, Partition] = {
    "HalfCheetah-2x3": Partition("HalfCheetah", "2x3", "HalfCheetah-v5"),
    "Hopper-3x1": Partition("Hopper", "3x1", "Hopper-v5"),
    "Ant-2x4": Partition("Ant", "2x4", "Ant-v5"),
}


def partition(name: str) -> Partition:
    if name not in PARTITIONS:
        raise MarlError(f"unknown Multi-Agent MuJoCo partition {name!r}: expected one of {', '.join(PARTITIONS)}")
    return PARTITIONS[name]


def make(name: str) -> Any:
    """The PettingZoo parallel env of partition ``name`` (reset it with a seed)."""
    p = partition(name)
    try:
        # gymnasium-robotics prints a notice about Adroit's reward versions when imported: not ours to show
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
                contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            from gymnasium_robotics import mamujoco_v1
    except ImportError:
        raise MarlError("Multi-Agent MuJoCo needs gymnasium-robotics: pip install 'diffrl-ref[rl]'") from None
    return mamujoco_v1.parallel_env(p.scenario, p.conf)


def local_actions(env: Any, global_action: np.ndarray) -> dict[str, np.ndarray]:
    """Each agent's slice of a single-agent action (the partition's joint order)."""
    out: dict[str, np.ndarray] = env.unwrapped.map_global_action_to_local_actions(global_action)
    return out


def global_action(env: Any, actions: dict[str, np.ndarray]) -> np.ndarray:
    """The single-agent action the agents' actions make together (float64, as the env applies it)."""
    out: np.ndarray = env.unwrapped.map_local_actions_to_global_action(actions)
    return out


def local_observations(env: Any, state: np.ndarray) -> dict[str, np.ndarray]:
    """Each agent's local observation of a single-agent observation (what it sees in decentralised execution)."""
    out: dict[str, np.ndarray] = env.unwrapped.map_global_state_to_local_observations(state)
    return out


def _gather(mapped: dict[str, np.ndarray], n: int, what: str) -> dict[str, np.ndarray]:
    out = {}
    for k, v in mapped.items():
        idx = np.asarray(v)
        if not (np.all(idx == np.round(idx)) and np.all((idx >= 0) & (idx < n))):
            raise MarlError(f"the partition's {what} is not a selection of entries; its map cannot be vectorised")
        out[k] = idx.astype(np.int64)
    return out


def view_indices(env: Any, state_dim: int) -> dict[str, np.ndarray]:
    """Per agent, the entries of the single-agent observation that make its local observation (the env's own
    map applied to 0, 1, ..., so that ``state[:, idx]`` gives every row's local view at once)."""
    return _gather(local_observations(env, np.arange(state_dim, dtype=np.float64)), state_dim, "local view")


def action_indices(env: Any, action_dim: int) -> dict[str, np.ndarray]:
    """Per agent, its entries of the joint action (the env's own map applied to 0, 1, ...)."""
    return _gather(local_actions(env, np.arange(action_dim, dtype=np.float64)), action_dim, "action split")


def equivalence(name: str, seed: int, steps: int) -> dict[str, Any]:
    """Step the partitioned env and the single-agent v5 env from the same seed with the same random joint
    actions; count the steps where the state (the single-agent observation), each agent's reward, and the
    termination are not bit-identical, and check that each local observation is the local view of the state."""
    import gymnasium as gym

    p = partition(name)
    ma, single = make(name), gym.make(p.single)
    ma.reset(seed=seed)
    obs_single, _ = single.reset(seed=seed)
    rng = np.random.default_rng(seed)
    mismatches = {"state": 0, "reward": 0, "termination": 0, "local_view": 0}
    done_at = None
    for t in range(steps):
        a = rng.uniform(-1.0, 1.0, single.action_space.shape).astype(np.float32)
        loc = local_actions(ma, a)
        obs, rew, term, trunc, _ = ma.step(loc)
        obs_single, r, te, tr, _ = single.step(global_action(ma, loc))
        mismatches["state"] += int(not np.array_equal(ma.unwrapped.state(), obs_single))
        mismatches["reward"] += int(any(v != r for v in rew.values()))
        mismatches["termination"] += int(any(bool(v) != te for v in term.values()))
        view = local_observations(ma, obs_single)
        mismatches["local_view"] += int(any(not np.array_equal(obs[k], view[k]) for k in obs))
        if te or tr:
            done_at = t + 1
            break
    return {"partition": name, "single": p.single, "seed": seed, "steps": done_at or steps,
            "agents": list(ma.possible_agents), "mismatches": mismatches}
