"""DOM2 (Li, Pan and Huang, arXiv 2307.01472): decentralised diffusion policies with conservative critics.

Training and execution are decentralised: agent j has its own diffusion policy eps_theta_j, its own twin
critics Q_phi_j(o_j, a_j) and targets, and reads only its own local observation o_j and its own entries
a_j of the joint action (with the team reward). One gradient step on a joint batch, for every agent j:

1. Critic: y = r + gamma (1 - d) min_i Q_target_j,i(o'_j, a'_j), a'_j from agent j's EMA policy at o'_j with
   the first-order DPM-Solver (dom2.sample; diffsr.td_target with alpha = 0, the clipped double-Q target).
   Each head's loss is the continuous-action CQL(H) loss (dom2.cql_sampled): (Q - y)^2 + alpha (log of the
   importance-sampled mean of exp Q over ``cql_samples`` uniform actions in [-1, 1]^da_j - Q(o_j, a_j)).
2. Policy: the Diffusion-QL loss of agent j on its own data and critic (dom2.policy_loss, which is
   diffusion_ql.loss per agent: noise-prediction loss plus -eta Q / E|Q'|, one critic head drawn at random
   as Q and the other as the normaliser), averaged over the action dimensions as the Diffusion-QL code does.
3. Polyak averaging of the target critics; an exponential moving average of each policy.

Gradient norms are clipped per agent (a joint clip would couple the agents). Action selection at evaluation:
each agent draws ``eval_samples`` actions from its policy with DPM-Solver-1 on its own observation and picks
one with probabilities softmax of its own min_i Q_target_j,i (Diffusion-QL's selection, per agent).
DOM2's code is not public: every hyperparameter's source is in :data:`HYPERPARAMETERS`, and docs/marl.rst
lists each choice made here.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, fields
from typing import Any, cast

import torch
from torch import Tensor, nn

from ..fast import diffsr as D
from ..fast import dom2 as M
from ..fast import schedule
from ..fast.nets import DiffusionQLNet
from ..fast.schedule import Schedule
from .datasets import JointTransitions
from .diffusion_ql import DOMAINS as DQL_DOMAINS
from .diffusion_ql import DoubleCritic, select_by_q_rows
from .domains import NON_NEGATIVE, POSITIVE_INT, Domain
from .joint import DecentralisedAgent, JointSampler


@dataclass
class DOM2Config:
    """Hyperparameters; ``source`` of each in :data:`HYPERPARAMETERS`, domain in :data:`DOMAINS`."""

    K: int = 5
    solver_steps: int = 5
    hidden: int = 256
    t_dim: int = 16
    lr: float = 3e-4
    critic_lr: float = 3e-4
    eta: float = 1.0
    cql_alpha: float = 1.0
    cql_samples: int = 10
    grad_norm: float = 1.0
    batch_size: int = 256
    gamma: float = 0.99
    tau: float = 0.005
    ema_decay: float = 0.995
    ema_start: int = 1000
    ema_every: int = 5
    eval_samples: int = 50
    max_action: float = 1.0

    def check(self) -> None:
        if self.solver_steps > self.K:
            raise ValueError(f"solver_steps ({self.solver_steps}) must be <= K ({self.K})")

    def for_dataset(self, dataset_id: str, overridden: set[str]) -> DOM2Config:
        """No per-dataset table (DOM2 publishes none for Multi-Agent MuJoCo)."""
        return self


#: The fields DOM2 shares with Diffusion-QL have Diffusion-QL's domains; DOM2's own follow.
DOMAINS: dict[str, Domain] = {
    **{f.name: DQL_DOMAINS[f.name] for f in fields(DOM2Config) if f.name in DQL_DOMAINS},
    **dict.fromkeys(("solver_steps", "cql_samples"), POSITIVE_INT),
    "cql_alpha": NON_NEGATIVE,
}

HYPERPARAMETERS: dict[str, str] = {
    "K": "Diffusion-QL's official code (T=5, VP schedule): DOM2 builds its policies on Diffusion-QL and publishes "
         "no code or K",
    "solver_steps": "ours: DPM-Solver-1 on the uniform sub-sequence of 0..K with this many steps (5 = every step "
                    "of the K = 5 chain; DOM2 samples with the first-order DPM-Solver)",
    "hidden": "Diffusion-QL's official code (3 x 256 Mish, policy and critics): fast.nets.DiffusionQLNet",
    "t_dim": "Diffusion-QL's official code (t_dim=16)",
    "lr": "Diffusion-QL's official code (3e-4; constant here: no cosine decay, which needs a fixed run length)",
    "critic_lr": "Diffusion-QL's and OMAR's code (3e-4)",
    "eta": "Diffusion-QL's official table (eta=1.0 for the locomotion sets)",
    "cql_alpha": "OMAR's code for Multi-Agent MuJoCo (cql_alpha=1.0; DOM2's conservative critic follows CQL/OMAR)",
    "cql_samples": "CQL's and OMAR's code (10 uniform actions per state for the log-partition)",
    "grad_norm": "Diffusion-QL's official table (gn=1.0 for walker2d-medium; its value for a new task is not "
                 "published: 1.0 is its smallest, the safest for an untuned critic)",
    "batch_size": "Diffusion-QL's and OMAR's code (256)",
    "gamma": "Diffusion-QL's and OMAR's code (0.99)",
    "tau": "Diffusion-QL's and OMAR's code (0.005)",
    "ema_decay": "Diffusion-QL's official code (0.995)",
    "ema_start": "Diffusion-QL's official code (step_start_ema=1000)",
    "ema_every": "Diffusion-QL's official code (update_ema_every=5)",
    "eval_samples": "Diffusion-QL's official code (50 candidate actions drawn by softmax of the target Q), per agent",
    "max_action": "MuJoCo v5 action bound (1.0)",
}


def solver_tau(K: int, steps: int) -> list[int]:
    """tau_0 = 0 < ... < tau_S = K: ``steps`` solver steps on a uniform sub-sequence of 0..K."""
    return sorted({round(i * K / steps) for i in range(steps + 1)})


class DOM2Agent(DecentralisedAgent):
    """Offline DOM2 on a multi-agent dataset; ``act`` acts decentrally (rl.joint)."""

    name = "dom2"
    offline = True

    def __init__(self, data: JointTransitions, cfg: DOM2Config, device: str = "cpu") -> None:
        self.cfg, self.device = cfg, torch.device(device)
        self.setup_agents(data)
        dev = self.device
        self.sched = Schedule.from_betas(schedule.vp(cfg.K), device=dev)
        self.solver = M.Solver(self.sched, solver_tau(cfg.K, cfg.solver_steps))
        self.policies = nn.ModuleList(DiffusionQLNet(ds, da, cfg.hidden, cfg.t_dim)
                                      for ds, da in zip(self.obs_dims, self.act_dims, strict=True)).to(dev)
        self.emas = copy.deepcopy(self.policies).requires_grad_(False)
        self.critics = nn.ModuleList(DoubleCritic(ds, da, cfg.hidden)
                                     for ds, da in zip(self.obs_dims, self.act_dims, strict=True)).to(dev)
        self.critic_targets = copy.deepcopy(self.critics).requires_grad_(False)
        # Adam is elementwise: one optimizer over every agent's parameters equals one per agent
        self.policy_opt = torch.optim.Adam(self.policies.parameters(), lr=cfg.lr)
        self.critic_opt = torch.optim.Adam(self.critics.parameters(), lr=cfg.critic_lr)
        self.data = JointSampler(data, dev)
        self.steps = 0

    # ---- interface ----------------------------------------------------------------------------

    def sample(self, net: nn.Module, obs: Tensor, da: int) -> Tensor:
        """DPM-Solver-1 (dom2.sample) from N(0, I), the result clipped to the action box."""
        x_K = torch.randn(obs.shape[0], da, device=self.device)
        return self.solver(x_K, net, obs).clamp(-self.cfg.max_action, self.cfg.max_action)

    def act_local(self, j: int, obs: Tensor) -> Tensor:
        o = obs.unsqueeze(0).expand(self.cfg.eval_samples, -1)
        a = self.sample(self.policies[j], o, self.act_dims[j])
        q = torch.amin(self.critic_targets[j](o, a), dim=0)
        return torch.as_tensor(select_by_q_rows(a, q, 1)[0], device=self.device)

    def critic_loss(self, j: int, o: Tensor, a: Tensor, r: Tensor, o_next: Tensor, done: Tensor) -> Tensor:
        """Agent j's CQL critic loss, batch mean of the sum over its two heads."""
        cfg, da = self.cfg, self.act_dims[j]
        with torch.no_grad():
            a_next = self.sample(self.emas[j], o_next, da)
            y = D.td_target(r, done, self.critic_targets[j](o_next, a_next), cfg.gamma)
        B, n = o.shape[0], cfg.cql_samples
        uniform = (torch.rand(B * n, da, device=self.device) * 2 - 1) * cfg.max_action
        q_data = self.critics[j](o, a)  # (2, B)
        q_rand = self.critics[j](o.repeat_interleave(n, dim=0), uniform).reshape(2, B, n)
        log_p = -da * math.log(2 * cfg.max_action)  # the uniform density on the action box
        return sum((M.cql_sampled(q_data[i], q_rand[i], log_p, y, cfg.cql_alpha) for i in range(2)),
                   torch.zeros(B, device=self.device)).mean()

    def update(self) -> dict[str, Tensor]:
        cfg = self.cfg
        b = self.data.sample(cfg.batch_size)
        n_agents = len(self.agents)
        # critics
        critic_loss = torch.stack([self.critic_loss(j, b.obs[j], b.actions[j], b.r, b.next_obs[j], b.done)
                                   for j in range(n_agents)]).sum()
        self.critic_opt.zero_grad(set_to_none=True)
        critic_loss.backward()  # type: ignore[no-untyped-call]
        self._clip(self.critics)
        self.critic_opt.step()
        # policies: each agent's own critic heads, one maximised and the other normalising (drawn at random)
        records = []
        for j in range(n_agents):
            i_q = int(torch.rand(()) > 0.5)
            records.append(self._record(j, b.obs[j], b.actions[j], i_q, 1 - i_q))
        self.critics.requires_grad_(False)  # gradients reach the policies through a^0 only
        try:
            # eta * da: the clause sums L_d over the action dimensions, Diffusion-QL's code averages it
            rows = torch.cat([M.policy_loss([records[j]], self.sched, cfg.eta * self.act_dims[j], cfg.max_action)
                              / self.act_dims[j] for j in range(n_agents)])
            policy_loss = rows.mean(dim=1).sum()
            self.policy_opt.zero_grad(set_to_none=True)
            policy_loss.backward()  # type: ignore[no-untyped-call]
        finally:
            self.critics.requires_grad_(True)
        self._clip(self.policies)
        self.policy_opt.step()
        # targets
        with torch.no_grad():
            if self.steps % cfg.ema_every == 0 and self.steps >= cfg.ema_start:
                for p_e, p in zip(self.emas.parameters(), self.policies.parameters(), strict=True):
                    p_e.lerp_(p, 1.0 - cfg.ema_decay)
            for p_t, p in zip(self.critic_targets.parameters(), self.critics.parameters(), strict=True):
                p_t.lerp_(p, cfg.tau)
        self.steps += 1
        return {"critic_loss": critic_loss.detach() / n_agents, "actor_loss": policy_loss.detach() / n_agents}

    def _record(self, j: int, o: Tensor, a: Tensor, i_q: int, i_norm: int) -> M.Agent:
        """Agent j's arguments of dom2.policy_loss: its batch, network, critic heads and noises."""
        critic, K = cast(DoubleCritic, self.critics[j]), self.cfg.K
        B, da = a.shape

        def q_fn(s_: Tensor, a_: Tensor) -> Tensor:
            out: Tensor = critic.head(i_q, s_, a_)
            return out

        def q_norm_fn(s_: Tensor, a_: Tensor) -> Tensor:
            with torch.no_grad():  # E|Q'| is a stop-gradient constant of the clause
                out: Tensor = critic.head(i_norm, s_, a_)
                return out

        dev = self.device
        return M.Agent(o, a, self.policies[j], q_fn, q_norm_fn, torch.randint(1, K + 1, (B,), device=dev),
                       torch.randn(B, da, device=dev), torch.randn(B, da, device=dev),
                       torch.randn(K, B, da, device=dev))

    def _clip(self, nets: nn.ModuleList) -> None:
        if self.cfg.grad_norm > 0:
            for net in nets:  # per agent: a joint norm would let one agent's gradient shrink another's
                nn.utils.clip_grad_norm_(net.parameters(), self.cfg.grad_norm)

    # ---- checkpoint ---------------------------------------------------------------------------

    def modules(self) -> dict[str, Any]:
        return {"policies": self.policies, "emas": self.emas, "critics": self.critics,
                "critic_targets": self.critic_targets, "policy_opt": self.policy_opt, "critic_opt": self.critic_opt}
