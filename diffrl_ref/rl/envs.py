"""Environments: Gymnasium MuJoCo v5 ids and MetaWorld v3 MT1 tasks (by task name), seeded per episode.

Every episode starts from a seed derived from the run's seed and the episode's index
(:func:`reset`), so an episode does not depend on the ones before it: a run resumed from a
checkpoint at an episode boundary replays exactly what the uninterrupted run did.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

MUJOCO = ("HalfCheetah-v5", "Hopper-v5", "Walker2d-v5", "Ant-v5", "Humanoid-v5", "InvertedPendulum-v5", "Reacher-v5")


class EnvError(ValueError):
    """An environment that cannot be made; the CLI prints it as one line."""


def metaworld_tasks() -> list[str]:
    try:
        from metaworld.env_dict import ALL_V3_ENVIRONMENTS
    except ImportError:
        return []
    return sorted(ALL_V3_ENVIRONMENTS)


def is_metaworld(name: str) -> bool:
    return name.endswith("-v3") and "/" not in name and name[:1].islower()


def check_name(name: str) -> None:
    """Raise EnvError unless ``name`` is a registered Gymnasium id or a MetaWorld v3 task name."""
    if is_metaworld(name):
        tasks = metaworld_tasks()
        if not tasks:
            raise EnvError(f"MetaWorld task {name!r} needs metaworld: pip install 'diffrl-ref[rl]'")
        if name not in tasks:
            raise EnvError(f"unknown MetaWorld task {name!r}: expected one of {', '.join(tasks[:4])}, ... "
                           f"({len(tasks)} v3 tasks)")
        return
    import gymnasium as gym

    if name not in gym.registry:
        raise EnvError(f"unknown environment {name!r}: expected a Gymnasium id such as {', '.join(MUJOCO[:3])} "
                       "or a MetaWorld v3 task such as reach-v3")


def make(name: str, seed: int, evaluation: bool = False) -> Any:
    """A Gymnasium env with a Box action space. MetaWorld: MT1 with the run's task set (seeded);
    training episodes do not stop on success (metaworld's advice), evaluation episodes do."""
    check_name(name)
    import gymnasium as gym

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if is_metaworld(name):
            env = gym.make("Meta-World/MT1", env_name=name, seed=seed)
            env.get_wrapper_attr("toggle_terminate_on_success")(evaluation)
        else:
            try:
                env = gym.make(name)
            except Exception as exc:  # missing mujoco and the like: one line for the CLI
                raise EnvError(f"cannot make {name!r}: {exc}") from None
    if not isinstance(env.action_space, gym.spaces.Box) or len(env.observation_space.shape or ()) != 1:
        raise EnvError(f"{name!r} needs a Box action space and a flat observation (got {env.action_space})")
    return env


def episode_seed(seed: int, episode: int, evaluation: bool = False) -> int:
    """Training episodes 0, 1, ... and evaluation episodes draw from disjoint seed streams."""
    return int(np.random.SeedSequence([seed, episode, int(evaluation)]).generate_state(1)[0])


def reset(env: Any, seed: int) -> np.ndarray:
    """Reset from ``seed`` alone. MetaWorld ignores reset(seed=...) and draws its task from the env's
    generator, so the generator itself is replaced first (the same for every env)."""
    env.unwrapped.np_random = np.random.Generator(np.random.PCG64(seed))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        obs, _ = env.reset(seed=seed)
    return np.asarray(obs, dtype=np.float32)


def step(env: Any, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
    """Step with an action in [-1, 1]^da (the agents' and buffers' scale), mapped affinely onto the env's box."""
    low, high = env.action_space.low, env.action_space.high
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        obs, r, term, trunc, info = env.step(low + 0.5 * (action + 1.0) * (high - low))
    return np.asarray(obs, dtype=np.float32), float(r), bool(term), bool(trunc), info


def evaluate(policy: Any, env: Any, seed: int, episodes: int, new_episode: Any = None) -> dict[str, float]:
    """Deterministic-policy episodes from fixed seeds (the same at every evaluation): return, length, success.
    ``new_episode()``, if given, is called before each episode (a policy that keeps a history: MADiff's)."""
    returns, lengths, successes = [], [], []
    for i in range(episodes):
        if new_episode is not None:
            new_episode()
        obs, done, ret, n, success = reset(env, episode_seed(seed, i, True)), False, 0.0, 0, False
        while not done:
            a = policy(obs)
            obs, r, term, trunc, info = step(env, a)
            ret, n, done = ret + r, n + 1, term or trunc
            success = success or bool(info.get("success", 0.0))
        returns.append(ret)
        lengths.append(n)
        successes.append(success)
    return _summary(returns, lengths, successes)


def _summary(returns: list[float], lengths: list[int], successes: list[bool]) -> dict[str, float]:
    return {"return_mean": float(np.mean(returns)), "return_std": float(np.std(returns)),
            "length_mean": float(np.mean(lengths)), "success_rate": float(np.mean(successes))}


def evaluate_batched(policy: Any, env_list: list[Any], seed: int, new_episodes: Any = None) -> dict[str, float]:
    """:func:`evaluate`'s episodes, one per env of ``env_list``, played in lockstep: ``policy(obs, rows)`` gets the
    observations (n, ds) of the episodes ``rows`` still running and returns their actions (n, da), so a policy
    that plans can batch its work over episodes. Episode i starts from the same seed as in :func:`evaluate`, and
    its return adds its rewards in the same order: a deterministic policy gets the same numbers from both.
    ``new_episodes(n)``, if given, is called first (a policy that keeps a history per episode)."""
    n = len(env_list)
    if new_episodes is not None:
        new_episodes(n)
    obs = [reset(e, episode_seed(seed, i, True)) for i, e in enumerate(env_list)]
    returns, lengths, successes = [0.0] * n, [0] * n, [False] * n
    running = list(range(n))
    while running:
        actions = policy(np.stack([obs[i] for i in running]), running)
        still = []
        for a, i in zip(actions, running, strict=True):
            obs[i], r, term, trunc, info = step(env_list[i], a)
            returns[i], lengths[i] = returns[i] + r, lengths[i] + 1
            successes[i] = successes[i] or bool(info.get("success", 0.0))
            if not (term or trunc):
                still.append(i)
        running = still
    return _summary(returns, lengths, successes)
