"""stable-baselines3's SAC, driven by the same loop as Diff-SR (diffrl_ref.rl.loop).

SB3's networks, replay buffer and update (``SAC.train``) are used as they are; only the
environment loop is ours, so both agents see identical warm-up data, evaluation and
checkpointing. Actions in SB3's buffer are in [-1, 1], as SB3's own loop stores them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from .domains import DISCOUNT, NON_NEGATIVE_INT, POLYAK, POSITIVE, POSITIVE_INT, Domain


@dataclass
class SACConfig:
    learning_rate: float = 3e-4
    buffer_size: int = 1_000_000
    batch_size: int = 256
    tau: float = 0.005
    gamma: float = 0.99
    hidden: int = 256
    learning_starts: int = 10_000

    def check(self) -> None:
        """No relation between fields to check (the interface of DiffSRConfig.check)."""


#: name -> (test, the domain in words), as diffsr.DOMAINS.
DOMAINS: dict[str, Domain] = {
    "learning_rate": POSITIVE,
    **dict.fromkeys(("buffer_size", "batch_size", "hidden"), POSITIVE_INT),
    "learning_starts": NON_NEGATIVE_INT,
    "tau": POLYAK,
    "gamma": DISCOUNT,
}

HYPERPARAMETERS: dict[str, str] = {
    "learning_rate": "stable-baselines3 SAC default",
    "buffer_size": "stable-baselines3 SAC default",
    "batch_size": "stable-baselines3 SAC default",
    "tau": "stable-baselines3 SAC default",
    "gamma": "stable-baselines3 SAC default",
    "hidden": "stable-baselines3 SAC default (net_arch [256, 256]); ent_coef 'auto', target entropy -|A|",
    "learning_starts": "rl-zoo3's SAC hyperparameters for MuJoCo (10k); the same value for Diff-SR",
}

_BUFFER = ("observations", "next_observations", "actions", "rewards", "dones", "timeouts")


class SB3SAC:
    name = "sac"

    def __init__(self, env: Any, cfg: SACConfig, seed: int, device: str = "cpu") -> None:
        from stable_baselines3 import SAC
        from stable_baselines3.common.logger import Logger

        self.cfg = cfg
        self.model: Any = SAC("MlpPolicy", env, learning_rate=cfg.learning_rate, buffer_size=cfg.buffer_size,
                         learning_starts=cfg.learning_starts, batch_size=cfg.batch_size, tau=cfg.tau,
                         gamma=cfg.gamma, policy_kwargs={"net_arch": [cfg.hidden, cfg.hidden]},
                         replay_buffer_kwargs={"handle_timeout_termination": False}, seed=seed, device=device)
        self.model.set_logger(Logger(folder=None, output_formats=[]))
        self.device = self.model.device

    def act(self, s: np.ndarray, deterministic: bool) -> np.ndarray:
        with torch.no_grad():
            x = torch.as_tensor(s, dtype=torch.float32, device=self.device).unsqueeze(0)
            a = self.model.policy._predict(x, deterministic=deterministic)
        out: np.ndarray = a[0].cpu().numpy()
        return out

    def observe(self, s: np.ndarray, a: np.ndarray, r: float, s_next: np.ndarray, terminated: bool) -> None:
        self.model.replay_buffer.add(s[None], s_next[None], a[None], np.array([r]), np.array([terminated]), [{}])

    def update(self) -> dict[str, float]:
        self.model.train(gradient_steps=1, batch_size=self.cfg.batch_size)
        v = self.model.logger.name_to_value
        return {"critic_loss": float(v["train/critic_loss"]), "actor_loss": float(v["train/actor_loss"]),
                "alpha": float(v["train/ent_coef"])}

    def state_dict(self) -> dict[str, Any]:
        m, buf = self.model, self.model.replay_buffer
        n = buf.buffer_size if buf.full else buf.pos
        return {"policy": m.policy.state_dict(), "actor_opt": m.actor.optimizer.state_dict(),
                "critic_opt": m.critic.optimizer.state_dict(), "log_ent_coef": m.log_ent_coef.detach().clone(),
                "ent_opt": m.ent_coef_optimizer.state_dict(), "n_updates": m._n_updates,
                "buffer": {"pos": buf.pos, "full": buf.full, **{k: getattr(buf, k)[:n].copy() for k in _BUFFER}},
                "config": asdict(self.cfg)}

    def actor_state(self) -> dict[str, Any]:
        """The actor alone (a few hundred kB): what a policy snapshot keeps (a behaviour policy for datasets)."""
        return {"actor": self.model.actor.state_dict(), "config": asdict(self.cfg)}

    def load_actor_state(self, st: dict[str, Any]) -> None:
        self.model.actor.load_state_dict(st["actor"])

    def load_state_dict(self, st: dict[str, Any]) -> None:
        m, buf = self.model, self.model.replay_buffer
        m.policy.load_state_dict(st["policy"])
        m.actor.optimizer.load_state_dict(st["actor_opt"])
        m.critic.optimizer.load_state_dict(st["critic_opt"])
        with torch.no_grad():
            m.log_ent_coef.copy_(st["log_ent_coef"])
        m.ent_coef_optimizer.load_state_dict(st["ent_opt"])
        m._n_updates = int(st["n_updates"])
        b = st["buffer"]
        buf.pos, buf.full = int(b["pos"]), bool(b["full"])
        for k in _BUFFER:
            getattr(buf, k)[: len(b[k])] = b[k]
