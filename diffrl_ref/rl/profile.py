"""Where an online agent's training time goes: environment stepping, acting, storing, and each update.

``diffrl profile ALGO --env E`` plays ``--learning-starts`` random steps, then times ``--steps`` learning
steps of the training loop's sequence (act, env step, observe, update) with the agent's own update
functions wrapped by timers: Diff-SR's representation, critic and actor steps; stable-baselines3's
``SAC.train`` as one block (critic, actor and temperature are one function there, so they are not split).
Nothing of the agent is changed: the wrappers only read the clock (and synchronise CUDA first).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from . import envs, loop

#: The phases reported, per algorithm, in order; "other" is the rest of the update (sampling, targets).
PHASES = {"diffsr": ("env", "act", "observe", "representation", "critic", "actor", "other"),
          "sac": ("env", "act", "observe", "update: critic, actor, temperature", "other")}


class Clock:
    """Accumulated seconds per phase; ``wrap`` times an object's method in place."""

    def __init__(self, device: str) -> None:
        self.cuda = device.startswith("cuda")
        self.seconds: dict[str, float] = {}

    def now(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    def add(self, phase: str, seconds: float) -> None:
        self.seconds[phase] = self.seconds.get(phase, 0.0) + seconds

    def wrap(self, obj: Any, method: str, phase: str) -> None:
        inner: Callable[..., Any] = getattr(obj, method)

        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = self.now()
            try:
                return inner(*args, **kwargs)
            finally:
                self.add(phase, self.now() - t0)

        setattr(obj, method, timed)


def run(algo: str, env_id: str, steps: int, learning_starts: int, seed: int = 0, hp: dict[str, str] | None = None,
        device: str = "cpu") -> dict[str, Any]:
    """Time ``steps`` learning steps after ``learning_starts`` random ones; shares of the learning phase."""
    if algo not in PHASES:
        raise loop.RunError(f"profile: {algo} is not an online agent ({', '.join(PHASES)})")
    envs.check_name(env_id)
    cfg = loop.agent_config(algo, dict(hp or {}))
    env = envs.make(env_id, seed)
    agent: Any = loop.make_agent(algo, cfg, env, seed, device)
    clock = Clock(device)
    if algo == "diffsr":
        clock.wrap(agent, "representation_step", "representation")
        clock.wrap(agent, "critic_step", "critic")
        clock.wrap(agent, "actor_step", "actor")
    else:
        clock.wrap(agent.model, "train", "update: critic, actor, temperature")
    da = env.action_space.shape[0]
    rng = np.random.default_rng(seed)
    obs, episode = envs.reset(env, envs.episode_seed(seed, 0)), 0
    total = 0.0
    for t in range(learning_starts + steps):
        learning = t >= learning_starts
        if t == learning_starts:
            clock.seconds.clear()  # only the learning phase is reported
        t0 = clock.now()
        a = agent.act(obs, deterministic=False) if learning else rng.uniform(-1.0, 1.0, da).astype(np.float32)
        t1 = clock.now()
        obs_next, r, term, trunc, _ = envs.step(env, a)
        t2 = clock.now()
        agent.observe(obs, a, r, obs_next, term)
        t3 = clock.now()
        if learning:
            before = sum(clock.seconds.values())
            agent.update()
            t4 = clock.now()
            inside = sum(clock.seconds.values()) - before  # the wrapped phases timed during this update
            clock.add("other", (t4 - t3) - inside)
            clock.add("act", t1 - t0)
            clock.add("env", t2 - t1)
            clock.add("observe", t3 - t2)
            total += t4 - t0
        obs = obs_next
        if term or trunc:
            episode += 1
            obs = envs.reset(env, envs.episode_seed(seed, episode))
    shares = {p: clock.seconds.get(p, 0.0) / total for p in PHASES[algo]}
    return {"algo": algo, "env": env_id, "steps": steps, "learning_starts": learning_starts, "seed": seed,
            "hp": dict(hp or {}), "device": device, "threads": torch.get_num_threads(), "seconds": total,
            "steps_per_s": steps / total, "shares": shares,
            "seconds_per_phase": {p: clock.seconds.get(p, 0.0) for p in PHASES[algo]}}
