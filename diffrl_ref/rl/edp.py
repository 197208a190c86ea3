"""EDP, Efficient Diffusion Policies (Kang, Ma, Du, Pang and Yan, NeurIPS 2023), IQL form, from ``diffrl_ref.fast``.

One gradient step on a dataset batch (s, a, r, s', d), in the order of the official code's IQL step
(sail-sg/edp, diffusion/dql.py ``_train_step_iql``):

1. Value: V(s) regresses min_i Q_target_i(s, a) with the expectile loss (edp.expectile_loss, tau = 0.7).
2. Policy: L = L_d + L_g. L_d is the noise-prediction loss on the dataset actions (diffusion_ql.bc_loss,
   linear schedule, K = 1000); L_g = -E[f(A) log pi(a | s)] with the advantage weights
   f = min(exp(T (Q - V)), 100) (edp.weights, kind "iql", T = 3) and log pi approximated without a
   sampling chain, from one noising step. ``likelihood=elbo`` (default): log pi = -weighted ELBO
   (edp.policy_objective, the paper's likelihood approximation); ``likelihood=gaussian``: log pi =
   log N(a; a0_hat, I) at the action approximation a0_hat (edp.action_approx), the official code's
   ``fixed_std`` mode. Both terms share one network call (the same a^k, k, s).
3. Critics: y = r + gamma (1 - d) V(s') with the value just updated (edp.iql_q_target), loss
   sum_i (Q_i(s, a) - y)^2 (diffsr.critic_loss), each critic's gradient clipped on its own as the
   official code's two optimisers; Polyak averaging of the target critics.

Action selection at evaluation: 50 actions from DPM-Solver++(2M) with 15 steps (dpm_solver.pp_2m on a
uniform sub-sequence of 1..K), one drawn with probabilities softmax of min_i Q_i (the official
``dpmensemble`` act method). Rewards are scaled by 1000 / (max - min trajectory return) of the dataset
(the official ``--norm_reward=True`` of the IQL command). Every hyperparameter and its source is in
:data:`HYPERPARAMETERS`; the docs list each difference from the official code.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..fast import ddpm, schedule
from ..fast import diffsr as D
from ..fast import diffusion_ql as Q
from ..fast import edp as E
from ..fast.ddim import uniform_tau
from ..fast.dpm_solver import DPMSolverSampler
from ..fast.nets import DiffusionQLNet, Mish
from ..fast.schedule import Schedule
from .datasets import Transitions
from .diffusion_ql import FAMILIES as DQL_FAMILIES
from .diffusion_ql import DatasetSampler, DoubleCritic, OfflineAgent, act_by_q, with_family_row
from .domains import DISCOUNT, NON_NEGATIVE, POLYAK, POSITIVE, POSITIVE_INT, Domain, one_of


@dataclass
class EDPConfig:
    """Hyperparameters; ``source`` of each in :data:`HYPERPARAMETERS`, domain in :data:`DOMAINS`."""

    family: str = "auto"
    K: int = 1000
    hidden: int = 256
    t_dim: int = 16
    lr: float = 3e-4
    batch_size: int = 256
    gamma: float = 0.99
    tau: float = 0.005
    expectile: float = 0.7
    temperature: float = 3.0
    w_max: float = 100.0
    diff_coef: float = 1.0
    guide_coef: float = 1.0
    grad_norm: float = 9.0
    likelihood: str = "elbo"
    reward_norm: str = "trajectory"
    clip_action: float = 0.999
    dpm_steps: int = 15
    eval_samples: int = 50
    max_action: float = 1.0

    def check(self) -> None:
        if self.dpm_steps > self.K:
            raise ValueError(f"dpm_steps ({self.dpm_steps}) must be <= K ({self.K})")
        if self.clip_action > self.max_action:
            raise ValueError(f"clip_action ({self.clip_action}) must be <= max_action ({self.max_action})")

    def for_dataset(self, dataset_id: str, overridden: set[str]) -> EDPConfig:
        """The official table's gradient clip for the dataset's family, where --hp did not set it."""
        out: EDPConfig = with_family_row(self, FAMILIES, dataset_id, overridden)
        return out


#: sail-sg/edp diffusion/hps.py: the gradient clip ``gn`` per D4RL locomotion set. Its values are those of
#: the Diffusion-QL table (checked entry by entry), so they are read from there, not written twice.
FAMILIES: dict[str, dict[str, float]] = {f: {"grad_norm": row["grad_norm"]} for f, row in DQL_FAMILIES.items()}

DOMAINS: dict[str, Domain] = {
    "family": one_of("auto", *FAMILIES),
    **dict.fromkeys(("hidden", "batch_size", "eval_samples", "dpm_steps"), POSITIVE_INT),
    "K": (lambda v: v >= 2, "an integer >= 2"),
    "t_dim": (lambda v: v >= 4 and v % 2 == 0, "an even integer >= 4"),
    **dict.fromkeys(("lr", "temperature", "w_max", "max_action"), POSITIVE),
    **dict.fromkeys(("diff_coef", "guide_coef"), NON_NEGATIVE),
    "grad_norm": (NON_NEGATIVE[0], "a number >= 0 (0: no clipping)"),
    "gamma": DISCOUNT,
    "tau": POLYAK,
    "expectile": (lambda v: 0 < v < 1, "a number in (0, 1)"),
    "likelihood": one_of("elbo", "gaussian"),
    "reward_norm": one_of("trajectory", "none"),
    "clip_action": POSITIVE,
}

HYPERPARAMETERS: dict[str, str] = {
    "family": "which row of the official per-dataset table sets grad_norm ('auto': from the dataset id; "
              "a value set with --hp wins)",
    "K": "paper and official README (--algo_cfg.num_timesteps=1000 with --sample_method=dpm); linear schedule "
         "beta 1e-4..0.02 (official schedule_name='linear', Ho et al.'s)",
    "hidden": "official code (policy_arch and qf_arch 256-256-256, Mish): fast.nets.DiffusionQLNet, critics and V",
    "t_dim": "official code (time_embed_size=16)",
    "lr": "official code (lr=3e-4 for policy, critics and value; no decay by default)",
    "batch_size": "official code (batch_size=256)",
    "gamma": "official code (discount=0.99)",
    "tau": "official code (tau=0.005, target critics)",
    "expectile": "official code (expectile=0.7, IQL's locomotion value)",
    "temperature": "official code (awr_temperature=3.0, IQL's inverse temperature for locomotion)",
    "w_max": "official code (exp advantage clipped at 100.0, as IQL)",
    "diff_coef": "official code (diff_coef=1.0)",
    "guide_coef": "official code (guide_coef=1.0)",
    "grad_norm": "official table (gn per set, diffusion/hps.py; 9.0 for halfcheetah-medium), every optimiser",
    "likelihood": "elbo: the paper's ELBO approximation of log pi (edp.policy_objective); gaussian: the "
                  "official code's IQL mode (fixed_std=True: log N(a; a0_hat, I))",
    "reward_norm": "official README IQL command (--norm_reward=True: r * 1000 / (max - min trajectory return)); "
                   "none: raw rewards",
    "clip_action": "official code (dataset actions clipped to +-0.999)",
    "dpm_steps": "official code (dpm_steps=15)",
    "eval_samples": "official code (SamplerPolicy.num_samples=50, drawn by softmax of min Q)",
    "max_action": "D4RL / MuJoCo v5 action bound (1.0)",
}


def trajectory_scale(data: Transitions) -> float:
    """1000 / (max - min trajectory return); a trajectory ends at a terminal or where s' is not the next row's s."""
    ends = data.terminals.astype(bool).copy()
    ends[:-1] |= np.any(data.next_observations[:-1] != data.observations[1:], axis=1)
    ends[-1] = True
    cuts = np.flatnonzero(ends) + 1
    returns = [float(seg.sum(dtype=np.float64)) for seg in np.split(data.rewards, cuts[:-1])]
    spread = max(returns) - min(returns)
    return 1000.0 / spread if spread > 0 else 1.0


def prepared(data: Transitions, cfg: EDPConfig) -> tuple[Transitions, float]:
    """The dataset as the official code trains on it: actions clipped, rewards scaled (and the scale)."""
    scale = trajectory_scale(data) if cfg.reward_norm == "trajectory" else 1.0
    return replace(data, actions=np.clip(data.actions, -cfg.clip_action, cfg.clip_action),
                   rewards=(data.rewards * scale).astype(np.float32)), scale


class ValueNet(nn.Module):
    """V(s): 3 x 256 Mish layers, as the official Value network."""

    def __init__(self, ds: int, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(ds, hidden), Mish(), nn.Linear(hidden, hidden), Mish(),
                                 nn.Linear(hidden, hidden), Mish(), nn.Linear(hidden, 1))

    def forward(self, s: Tensor) -> Tensor:
        out: Tensor = self.net(s).squeeze(-1)
        return out


class SharedCall:
    """eps_theta evaluated once per input: L_d and L_g noise the same a with the same (k, eps), so the
    second clause call finds the same (a^k, k, s) and reuses the first call's output (and its graph)."""

    def __init__(self, net: Q.StateEpsFn) -> None:
        self.net = net
        self.key: tuple[Tensor, Tensor, Tensor] | None = None
        self.out: Tensor | None = None

    def __call__(self, a_k: Tensor, k: Tensor, s: Tensor) -> Tensor:
        if (self.key is not None and self.out is not None and self.key[2] is s and torch.equal(self.key[1], k)
                and torch.equal(self.key[0], a_k)):
            return self.out
        out: Tensor = self.net(a_k, k, s)
        self.key, self.out = (a_k.detach(), k, s), out
        return out


class EDPAgent(OfflineAgent):
    """Offline EDP (IQL form); ``act`` and ``update`` are the loop's interface."""

    name = "edp"
    offline = True

    def __init__(self, data: Transitions, cfg: EDPConfig, device: str = "cpu") -> None:
        self.cfg, self.device = cfg, torch.device(device)
        ds, da = data.observations.shape[1], data.actions.shape[1]
        self.da = da
        dev = self.device
        self.sched = Schedule.from_betas(schedule.linear(cfg.K), device=dev)
        self.policy = DiffusionQLNet(ds, da, cfg.hidden, cfg.t_dim).to(dev)
        self.critic = DoubleCritic(ds, da, cfg.hidden).to(dev)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.value = ValueNet(ds, cfg.hidden).to(dev)
        self.policy_opt = torch.optim.Adam(self.policy.parameters(), lr=cfg.lr)
        self.critic_opt = torch.optim.Adam(self.critic.parameters(), lr=cfg.lr)
        self.value_opt = torch.optim.Adam(self.value.parameters(), lr=cfg.lr)
        self.solver = DPMSolverSampler(self.sched, uniform_tau(cfg.K, cfg.dpm_steps))
        train, self.reward_scale = prepared(data, cfg)
        self.data = DatasetSampler(train, dev)
        self.steps = 0

    # ---- interface ----------------------------------------------------------------------------

    def sample(self, s: Tensor) -> Tensor:
        """Actions for the states s (B, ds): DPM-Solver++(2M) from a^K ~ N(0, I), clipped to the action box."""
        a_K = torch.randn(s.shape[0], self.da, device=self.device)
        a = self.solver(a_K, lambda x, k: self.policy(x, k, s))
        return a.clamp(-self.cfg.max_action, self.cfg.max_action)

    def act(self, s: np.ndarray, deterministic: bool) -> np.ndarray:
        """The official action selection (both modes: the policy is stochastic by construction)."""
        out: np.ndarray = self.act_batch(np.asarray(s)[None], [0])[0]
        return out

    def act_batch(self, states: np.ndarray, rows: list[int]) -> np.ndarray:
        """:meth:`act` for n evaluation episodes at once (envs.evaluate_batched), :func:`act_by_q` with the
        solver's samples and the online critics."""
        return act_by_q(states, self.cfg.eval_samples, self.device, lambda x: self.sample(x), self.critic)


    def _clip(self, *modules: nn.Module) -> None:
        if self.cfg.grad_norm > 0:
            for m in modules:
                nn.utils.clip_grad_norm_(m.parameters(), self.cfg.grad_norm)

    def log_pi(self, a: Tensor, s: Tensor, eps_fn: SharedCall, k: Tensor, eps: Tensor, f: Tensor) -> Tensor:
        """f log pi(a | s) per row, log pi from one noising step (``likelihood``)."""
        if self.cfg.likelihood == "elbo":
            return E.policy_objective(a, s, eps_fn, self.sched, k, eps, f)
        a_k = ddpm.noise(a, eps, self.sched, k)
        a0 = E.action_approx(a_k, eps_fn(a_k, k, s), self.sched, k)
        log_n: Tensor = -0.5 * ((a - a0) ** 2).sum(-1) - 0.5 * self.da * math.log(2 * math.pi)  # log N(a; a0_hat, I)
        return f.detach() * log_n

    def update(self) -> dict[str, Tensor]:
        cfg = self.cfg
        s, a, r, s_next, done = self.data.sample(cfg.batch_size)
        # 1. value: expectile regression on the target critics' minimum at the dataset actions
        with torch.no_grad():
            q_t = torch.amin(self.critic_target(s, a), dim=0)
        value_loss = E.expectile_loss(q_t, self.value(s), cfg.expectile).mean()
        self.value_opt.zero_grad(set_to_none=True)
        value_loss.backward()  # type: ignore[no-untyped-call]
        self._clip(self.value)
        self.value_opt.step()
        # 2. policy: L_d + L_g, one network call shared by both
        with torch.no_grad():
            f = E.weights(q_t, self.value(s), "iql", cfg.temperature, cfg.w_max)
        k = torch.randint(1, cfg.K + 1, (a.shape[0],), device=self.device)
        eps = torch.randn_like(a)
        eps_fn = SharedCall(self.policy)
        diff_loss = Q.bc_loss(a, s, eps_fn, self.sched, k, eps).mean() / self.da  # official: mean over dims too
        guide_loss = -self.log_pi(a, s, eps_fn, k, eps, f).mean()
        policy_loss = cfg.diff_coef * diff_loss + cfg.guide_coef * guide_loss
        self.policy_opt.zero_grad(set_to_none=True)
        policy_loss.backward()
        self._clip(self.policy)
        self.policy_opt.step()
        # 3. critics on the value just updated
        with torch.no_grad():
            y = E.iql_q_target(r, done, self.value(s_next), cfg.gamma)
        critic_loss = D.critic_loss(self.critic(s, a), y).mean()
        self.critic_opt.zero_grad(set_to_none=True)
        critic_loss.backward()  # type: ignore[no-untyped-call]
        self._clip(self.critic.q1, self.critic.q2)
        self.critic_opt.step()
        with torch.no_grad():
            for p_t, p in zip(self.critic_target.parameters(), self.critic.parameters(), strict=True):
                p_t.lerp_(p, cfg.tau)
        self.steps += 1
        return {"critic_loss": critic_loss.detach(), "actor_loss": policy_loss.detach(),
                "value_loss": value_loss.detach(), "weight_mean": f.mean()}

    # ---- checkpoint ---------------------------------------------------------------------------

    def modules(self) -> dict[str, Any]:
        return {"policy": self.policy, "critic": self.critic, "critic_target": self.critic_target,
                "value": self.value, "policy_opt": self.policy_opt, "critic_opt": self.critic_opt,
                "value_opt": self.value_opt}

