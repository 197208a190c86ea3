"""Diffusion-QL (Wang, Hunt and Zhou, ICLR 2023) for offline RL, built from ``diffrl_ref.fast``.

One gradient step on a dataset batch (s, a, r, s', d), as the official code's ``Diffusion_QL.train``
(Zhendong-Wang/Diffusion-Policies-for-Offline-RL, agents/ql_diffusion.py):

1. Critic: y = r + gamma (1 - d) min_i Q_target_i(s', a'), a' drawn from the EMA policy
   (clause diffsr.td_target with alpha = 0: the clipped double-Q target), loss
   sum_i (Q_i(s, a) - y)^2 (diffsr.critic_loss), batch mean, gradient norm clipped to ``grad_norm``.
2. Policy: L = L_d + L_q (diffusion_ql.loss): the noise-prediction loss on the dataset actions
   (diffusion_ql.bc_loss, VP schedule with K = 5, schedule.vp) plus -eta Q(s, a^0) / E|Q'(s, a^0)| at the
   policy's own sample a^0 (diffusion_ql.sample_action, x0 clipped to +-1), one critic drawn at random as
   Q and the other as the normaliser Q'. The official code averages L_d over the action dimensions; the
   clause sums them, so the agent evaluates the clause with eta * da and divides by da: the official
   loss, hence the official gradient and its clipping.
3. Polyak averaging of the target critics (tau) every step; an exponential moving average of the policy
   (decay 0.995, every 5 steps from step 1,000) provides a' in the target.

Action selection at evaluation: 50 actions from the policy, one drawn with probabilities softmax of
min_i Q_target_i (the official ``sample_action``). Every hyperparameter and its source is in
:data:`HYPERPARAMETERS`; per task family the official table's values (:data:`FAMILIES`).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..fast import diffsr as D
from ..fast import diffusion_ql as F
from ..fast import schedule
from ..fast.nets import DiffusionQLNet, Mish
from ..fast.schedule import Schedule
from .datasets import Transitions
from .domains import DISCOUNT, NON_NEGATIVE, NON_NEGATIVE_INT, POLYAK, POSITIVE, POSITIVE_INT, Domain, one_of


@dataclass
class DiffusionQLConfig:
    """Hyperparameters; ``source`` of each in :data:`HYPERPARAMETERS`, domain in :data:`DOMAINS`."""

    family: str = "auto"
    K: int = 5
    hidden: int = 256
    t_dim: int = 16
    lr: float = 3e-4
    critic_lr: float = 3e-4
    lr_decay_steps: int = 2_000_000
    eta: float = 1.0
    grad_norm: float = 9.0
    batch_size: int = 256
    gamma: float = 0.99
    tau: float = 0.005
    ema_decay: float = 0.995
    ema_start: int = 1000
    ema_every: int = 5
    eval_samples: int = 50
    max_action: float = 1.0

    def check(self) -> None:
        """No relation between fields to check (the interface of DiffSRConfig.check)."""

    def for_dataset(self, dataset_id: str, overridden: set[str]) -> DiffusionQLConfig:
        """The official table's row for the dataset's family, where --hp did not set a value ('auto')."""
        out: DiffusionQLConfig = with_family_row(self, FAMILIES, dataset_id, overridden)
        return out


#: The official code's per-dataset values (main.py ``hyperparameters``) for the D4RL locomotion sets, by
#: the family name our dataset ids map to (diffrl/halfcheetah/medium-v0 -> halfcheetah-medium).
FAMILIES: dict[str, dict[str, float]] = {
    "halfcheetah-medium": {"lr": 3e-4, "eta": 1.0, "grad_norm": 9.0},
    "hopper-medium": {"lr": 3e-4, "eta": 1.0, "grad_norm": 9.0},
    "walker2d-medium": {"lr": 3e-4, "eta": 1.0, "grad_norm": 1.0},
    "halfcheetah-medium-replay": {"lr": 3e-4, "eta": 1.0, "grad_norm": 2.0},
    "hopper-medium-replay": {"lr": 3e-4, "eta": 1.0, "grad_norm": 4.0},
    "walker2d-medium-replay": {"lr": 3e-4, "eta": 1.0, "grad_norm": 4.0},
    "halfcheetah-medium-expert": {"lr": 3e-4, "eta": 1.0, "grad_norm": 7.0},
    "hopper-medium-expert": {"lr": 3e-4, "eta": 1.0, "grad_norm": 5.0},
    "walker2d-medium-expert": {"lr": 3e-4, "eta": 1.0, "grad_norm": 5.0},
}

DOMAINS: dict[str, Domain] = {
    "family": one_of("auto", *FAMILIES),
    **dict.fromkeys(("K", "hidden", "batch_size", "ema_every", "eval_samples", "lr_decay_steps"), POSITIVE_INT),
    "t_dim": (lambda v: v >= 4 and v % 2 == 0, "an even integer >= 4"),
    "ema_start": NON_NEGATIVE_INT,
    **dict.fromkeys(("lr", "critic_lr", "max_action"), POSITIVE),
    "eta": NON_NEGATIVE,
    "grad_norm": (NON_NEGATIVE[0], "a number >= 0 (0: no clipping)"),
    "gamma": DISCOUNT,
    "tau": POLYAK,
    "ema_decay": DISCOUNT,
}

HYPERPARAMETERS: dict[str, str] = {
    "family": "which row of the official per-dataset table sets lr, eta and grad_norm ('auto': from the "
              "dataset id; values set with --hp win)",
    "K": "paper and official code (T=5, beta_schedule='vp')",
    "hidden": "paper and official code (3 hidden layers of 256, Mish; critics alike): fast.nets.DiffusionQLNet",
    "t_dim": "official code (MLP t_dim=16: sinusoidal embedding, Linear 16->32, Mish, Linear 32->16)",
    "lr": "official table (3e-4 for every locomotion set)",
    "critic_lr": "official code (critic Adam lr=3e-4)",
    "lr_decay_steps": "official README commands (--lr_decay: cosine annealing over num_epochs=2000 epochs of 1000 "
                      "steps, stepped once per epoch), for actor and critic",
    "eta": "official table (eta=1.0 for every locomotion set)",
    "grad_norm": "official table (gn, per set; 9.0 for halfcheetah-medium)",
    "batch_size": "official code (batch_size=256)",
    "gamma": "official code (discount=0.99)",
    "tau": "official code (tau=0.005)",
    "ema_decay": "official code (ema_decay=0.995)",
    "ema_start": "official code (step_start_ema=1000)",
    "ema_every": "official code (update_ema_every=5)",
    "eval_samples": "official code (sample_action: 50 candidate actions, drawn by softmax of the target Q)",
    "max_action": "D4RL / MuJoCo v5 action bound (1.0)",
}


def with_family_row(cfg: Any, families: dict[str, dict[str, float]], dataset_id: str, overridden: set[str]) -> Any:
    """``cfg`` with its family's row of an official per-dataset table, except the values --hp set."""
    family = family_of(dataset_id) if cfg.family == "auto" else cfg.family
    row: dict[str, Any] = {k: v for k, v in families.get(family or "", {}).items() if k not in overridden}
    return replace(cfg, **row)


def family_of(dataset_id: str) -> str | None:
    """diffrl/halfcheetah/medium-replay-v0 -> halfcheetah-medium-replay (None if no official row)."""
    parts = dataset_id.split("/")
    if len(parts) < 2:
        return None
    name = f"{parts[-2]}-{parts[-1].rsplit('-v', 1)[0]}"
    return name if name in FAMILIES else None


class DoubleCritic(nn.Module):
    """Q_1, Q_2 (s, a): two MLPs of 3 x 256 Mish layers; forward gives (2, B), the clauses' layout."""

    def __init__(self, ds: int, da: int, hidden: int) -> None:
        super().__init__()

        def q() -> nn.Sequential:
            return nn.Sequential(nn.Linear(ds + da, hidden), Mish(), nn.Linear(hidden, hidden), Mish(),
                                 nn.Linear(hidden, hidden), Mish(), nn.Linear(hidden, 1))

        self.q1, self.q2 = q(), q()

    def forward(self, s: Tensor, a: Tensor) -> Tensor:
        x = torch.cat([s, a], dim=-1)
        return torch.stack([self.q1(x).squeeze(-1), self.q2(x).squeeze(-1)])

    def head(self, i: int, s: Tensor, a: Tensor) -> Tensor:
        """Q_i(s, a) alone, (B,)."""
        out: Tensor = (self.q1, self.q2)[i](torch.cat([s, a], dim=-1)).squeeze(-1)
        return out


class DatasetSampler:
    """Uniform minibatches of a dataset's transitions with the torch generator (saved with the run)."""

    def __init__(self, data: Transitions, device: torch.device) -> None:
        self.s = torch.as_tensor(data.observations, device=device)
        self.a = torch.as_tensor(data.actions, device=device)
        self.r = torch.as_tensor(data.rewards, device=device)
        self.s_next = torch.as_tensor(data.next_observations, device=device)
        self.done = torch.as_tensor(data.terminals, device=device, dtype=torch.float32)
        self.n = int(self.s.shape[0])

    def sample(self, B: int) -> tuple[Tensor, ...]:
        idx = torch.randint(0, self.n, (B,)).to(self.s.device)
        return self.s[idx], self.a[idx], self.r[idx], self.s_next[idx], self.done[idx]


class OfflineAgent:
    """What the offline agents share: no ``observe``, and a checkpoint of ``modules()``, the step and the config."""

    cfg: Any
    steps: int

    def modules(self) -> dict[str, Any]:
        raise NotImplementedError

    def observe(self, s: np.ndarray, a: np.ndarray, r: float, s_next: np.ndarray, terminated: bool) -> None:
        raise RuntimeError("an offline agent learns from its dataset only")

    def state_dict(self) -> dict[str, Any]:
        st: dict[str, Any] = {k: m.state_dict() for k, m in self.modules().items()}
        st["steps"] = self.steps
        st["config"] = asdict(self.cfg)
        return st

    def load_state_dict(self, st: dict[str, Any]) -> None:
        for k, m in self.modules().items():
            m.load_state_dict(st[k])
        self.steps = int(st["steps"])


def select_by_q_rows(candidates: Tensor, q: Tensor, n: int) -> np.ndarray:
    """The official action selection for n states: candidates (n m, da) and q (n m,), m per state in order; one
    candidate per state drawn with probabilities softmax(q) over its own m. Returns (n, da)."""
    a, w = candidates.reshape(n, -1, candidates.shape[-1]), torch.softmax(q.reshape(n, -1), dim=1)
    i = torch.multinomial(w, 1)[:, 0]
    out: np.ndarray = a[torch.arange(n, device=a.device), i].cpu().numpy()
    return out


def act_by_q(states: np.ndarray, m: int, device: torch.device, candidates: Callable[[Tensor], Tensor],
             critic: Callable[[Tensor, Tensor], Tensor]) -> np.ndarray:
    """The official action selection for n states (n, ds) at once: m candidates per state from ``candidates``
    (one chain for all), one per state drawn with probabilities softmax of the critics' min over its own m.
    Returns (n, da); one state's action does not depend on the others'."""
    with torch.no_grad():
        x = torch.as_tensor(np.asarray(states, np.float32), device=device).repeat_interleave(m, dim=0)
        a = candidates(x)
        return select_by_q_rows(a, torch.amin(critic(x, a), dim=0), len(states))


class DiffusionQLAgent(OfflineAgent):
    """Offline Diffusion-QL; ``act`` and ``update`` are the loop's interface (``observe`` is not used offline)."""

    name = "diffusion-ql"
    offline = True

    def __init__(self, data: Transitions, cfg: DiffusionQLConfig, device: str = "cpu") -> None:
        self.cfg, self.device = cfg, torch.device(device)
        ds, da = data.observations.shape[1], data.actions.shape[1]
        self.da = da
        dev = self.device
        self.sched = Schedule.from_betas(schedule.vp(cfg.K), device=dev)
        self.policy = DiffusionQLNet(ds, da, cfg.hidden, cfg.t_dim).to(dev)
        self.ema = copy.deepcopy(self.policy).requires_grad_(False)
        self.critic = DoubleCritic(ds, da, cfg.hidden).to(dev)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.policy_opt = torch.optim.Adam(self.policy.parameters(), lr=cfg.lr)
        self.critic_opt = torch.optim.Adam(self.critic.parameters(), lr=cfg.critic_lr)
        # the official cosine annealing is stepped once per epoch of 1000 steps, T_max = num_epochs
        epochs = max(1, cfg.lr_decay_steps // 1000)
        self.policy_lr = torch.optim.lr_scheduler.CosineAnnealingLR(self.policy_opt, T_max=epochs, eta_min=0.0)
        self.critic_lr = torch.optim.lr_scheduler.CosineAnnealingLR(self.critic_opt, T_max=epochs, eta_min=0.0)
        self.sampler = F.ActionSampler(self.sched, cfg.max_action, "beta_tilde")
        # eta * da: the clause sums L_d over the action dimensions, the official code averages it
        self.loss = F.PolicyLoss(self.sched, cfg.eta * da, cfg.max_action, "beta_tilde")
        self.data = DatasetSampler(data, dev)
        self.steps = 0

    # ---- interface ----------------------------------------------------------------------------

    def sample(self, net: DiffusionQLNet, s: Tensor) -> Tensor:
        B = s.shape[0]
        a_K = torch.randn(B, self.da, device=self.device)
        noises = torch.randn(self.cfg.K, B, self.da, device=self.device)
        return self.sampler(s, net, a_K, noises)

    def act(self, s: np.ndarray, deterministic: bool) -> np.ndarray:
        """The official action selection (both modes: the policy is stochastic by construction)."""
        out: np.ndarray = self.act_batch(np.asarray(s)[None], [0])[0]
        return out

    def act_batch(self, states: np.ndarray, rows: list[int]) -> np.ndarray:
        """:meth:`act` for n evaluation episodes at once (envs.evaluate_batched), :func:`act_by_q` with the
        policy's chain and the target critics."""
        return act_by_q(states, self.cfg.eval_samples, self.device, lambda x: self.sample(self.policy, x),
                        self.critic_target)


    def update(self) -> dict[str, Tensor]:
        cfg = self.cfg
        s, a, r, s_next, done = self.data.sample(cfg.batch_size)
        # critic
        with torch.no_grad():
            a_next = self.sample(self.ema, s_next)
            y = D.td_target(r, done, self.critic_target(s_next, a_next), cfg.gamma)
        critic_loss = D.critic_loss(self.critic(s, a), y).mean()
        self.critic_opt.zero_grad(set_to_none=True)
        critic_loss.backward()  # type: ignore[no-untyped-call]
        if cfg.grad_norm > 0:
            nn.utils.clip_grad_norm_(self.critic.parameters(), cfg.grad_norm)
        self.critic_opt.step()
        # policy: one critic maximised, the other normalises (drawn at random, as the official code)
        first = bool(torch.rand(()) > 0.5)
        i_q, i_norm = (0, 1) if first else (1, 0)

        def q_fn(s_: Tensor, a_: Tensor) -> Tensor:
            return self.critic.head(i_q, s_, a_)

        def q_norm_fn(s_: Tensor, a_: Tensor) -> Tensor:
            with torch.no_grad():  # E|Q'| is a stop-gradient constant of the clause: no graph through Q'
                return self.critic.head(i_norm, s_, a_)

        B = s.shape[0]
        k = torch.randint(1, cfg.K + 1, (B,), device=self.device)
        eps = torch.randn_like(a)
        a_K = torch.randn_like(a)
        noises = torch.randn(cfg.K, B, self.da, device=self.device)
        # the critics are constants here: gradients reach the policy through a^0 only
        self.critic.requires_grad_(False)
        try:
            rows = self.loss(a, s, self.policy, k, eps, a_K, noises, q_fn, q_norm_fn)
            policy_loss = rows.mean() / self.da
            self.policy_opt.zero_grad(set_to_none=True)
            policy_loss.backward()
        finally:
            self.critic.requires_grad_(True)
        if cfg.grad_norm > 0:
            nn.utils.clip_grad_norm_(self.policy.parameters(), cfg.grad_norm)
        self.policy_opt.step()
        # targets
        if self.steps % cfg.ema_every == 0 and self.steps >= cfg.ema_start:
            with torch.no_grad():
                for p_e, p in zip(self.ema.parameters(), self.policy.parameters(), strict=True):
                    p_e.lerp_(p, 1.0 - cfg.ema_decay)
        with torch.no_grad():
            for p_t, p in zip(self.critic_target.parameters(), self.critic.parameters(), strict=True):
                p_t.lerp_(p, cfg.tau)
        self.steps += 1
        if self.steps % 1000 == 0:
            self.policy_lr.step()
            self.critic_lr.step()
        return {"critic_loss": critic_loss.detach(), "actor_loss": policy_loss.detach()}

    # ---- checkpoint ---------------------------------------------------------------------------

    def modules(self) -> dict[str, Any]:
        return {"policy": self.policy, "ema": self.ema, "critic": self.critic, "critic_target": self.critic_target,
                "policy_opt": self.policy_opt, "critic_opt": self.critic_opt, "policy_lr": self.policy_lr,
                "critic_lr": self.critic_lr}


