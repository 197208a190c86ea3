"""DoF as a policy (Li et al., DoF: A Diffusion Factorization Framework for Offline MARL, ICLR 2025).

N agents, agent i with its own noise network eps_theta_i(a_i^k, k, o_i) (fast.nets.DiffusionQLNet: 3 x 256
Mish layers on the noisy action, a 16-d sinusoidal time embedding and the local observation o_i) and its own
twin critics Q_i,1, Q_i,2 (o_i, a_i). The joint action is a_tot = (a_1, ..., a_N) (the clauses' x_tot).
One gradient step on a joint minibatch (rl.joint.JointSampler):

1. Critics, per agent: y_i = r + gamma (1 - d) min_h Q_target_i,h(o'_i, a'_i) with a' sampled by the EMA
   policies (Algorithm 2, dof.decentralised_sample) and the team reward r (diffsr.td_target with alpha = 0:
   clipped double Q), loss sum_h (Q_i,h(o_i, a_i) - y_i)^2 (diffsr.critic_loss), summed over agents; each
   agent's gradient clipped on its own (``grad_norm``).
2. Policies, centralised (Algorithm 1 with the QL term, dof.policy_loss): L = L_BC + L_QL, L_BC =
   ||f(eps_1..eps_N) - f(eps_theta_i(x_i^k, k, o_i))||^2 on the dataset's joint action x^0 = f(a_1..a_N)
   (dof.data_factorisation; dof.train_step, noise factorisation f = Concat or WConcat,
   dof.noise_factorisation; linear schedule, K = 100, or ``schedule=vp``: Diffusion-QL's, schedule.vp) and
   L_QL = -sum_i eta Q_i,h(o_i, a_i^0) / E|Q_i,h'(o_i, a_i^0)| at the agents' own decentralised samples
   a_i^0 (dof.decentralised_sample, differentiable), h drawn at random, h' the other head (detached).
   The clause sums L_BC over the N d action entries; the agent evaluates it with eta N d and divides by N d,
   so L_BC is the joint noise MSE (mean over entries) of the official code and the Q term is Diffusion-QL's.
3. Polyak averaging of the target critics (tau) every step; EMA of the policies (decay 0.995 every 5 steps
   from step 1,000) for a'.

WConcat: learnable weights w (initialised to 1), passed to the clauses as w_i / sum_j w_j (the official
normalisation), trained with the policies. Execution is decentralised (:meth:`DoFAgent.act_local`): agent j
runs Algorithm 2 alone, with its own network, observation and noise; the action is one sample of its chain
(the official code draws 50 candidates and picks one uniformly at random, which has the same law), clipped
to the action box. Every hyperparameter and its source is in :data:`HYPERPARAMETERS`; docs/marl/dof.inc maps
each step to its clause and lists the differences from the paper and the official code.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import Tensor, nn

from ..fast import diffsr as D
from ..fast import dof as F
from ..fast import schedule
from ..fast.nets import DiffusionQLNet
from ..fast.schedule import Schedule
from .datasets import DatasetError, JointTransitions
from .diffusion_ql import DOMAINS as DQL_DOMAINS
from .diffusion_ql import DoubleCritic
from .domains import Domain, one_of
from .joint import DecentralisedAgent, JointBatch, JointSampler


@dataclass
class DoFConfig:
    """Hyperparameters; ``source`` of each in :data:`HYPERPARAMETERS`, domain in :data:`DOMAINS`."""

    factorisation: str = "concat"
    schedule: str = "linear"
    K: int = 100
    beta_start: float = 1e-4
    beta_end: float = 0.02
    variance: str = "beta_tilde"
    hidden: int = 256
    t_dim: int = 16
    lr: float = 3e-4
    critic_lr: float = 3e-4
    eta: float = 1.0
    grad_norm: float = 0.5
    batch_size: int = 256
    gamma: float = 0.99
    tau: float = 0.005
    ema_decay: float = 0.995
    ema_start: int = 1000
    ema_every: int = 5
    max_action: float = 1.0

    def check(self) -> None:
        """The linear schedule needs beta_start <= beta_end (schedule.linear's domain)."""
        if self.schedule == "linear" and self.beta_start > self.beta_end:
            raise ValueError(f"beta_start ({self.beta_start}) must be <= beta_end ({self.beta_end})")

    def for_dataset(self, dataset_id: str, overridden: set[str]) -> DoFConfig:
        """No per-dataset table: the same values for every dataset."""
        return self


#: The fields DoF shares with Diffusion-QL have Diffusion-QL's domains; DoF's own (and K, >= 2 here) follow.
DOMAINS: dict[str, Domain] = {
    **{f.name: DQL_DOMAINS[f.name] for f in fields(DoFConfig) if f.name in DQL_DOMAINS},
    "factorisation": one_of(*F.NOISE_MODES),
    "schedule": one_of("linear", "vp"),
    "K": (lambda v: v >= 2, "an integer >= 2 (schedule.linear, schedule.vp)"),
    **dict.fromkeys(("beta_start", "beta_end"), (lambda v: 0 < v < 1, "a number in (0, 1)")),
    "variance": one_of("beta_tilde", "beta"),
}

_DQL = "not read from DoF's code: Diffusion-QL's official value, the code DoF's policy builds on"
HYPERPARAMETERS: dict[str, str] = {
    "factorisation": "official code (noise_factorization_mode 'concat' or 'w-concat'); Concat is the "
                     "factorisation the paper proves IGD for",
    "schedule": "official code ('linear': linear betas from beta_start to beta_end); 'vp' is Diffusion-QL's "
                "variance-preserving schedule (schedule.vp, beta_start and beta_end unused), which with K = 5 "
                "makes the chain 20 times shorter (11 times the steps/s): the setting of the results on a CPU "
                "(docs/marl.rst)",
    "K": "official code (100 diffusion steps in the DoF policy agent)",
    "beta_start": f"official code (a linear beta schedule); its first beta is {_DQL} (linear_beta_schedule, 1e-4)",
    "beta_end": f"official code (a linear beta schedule); its last beta is {_DQL} (linear_beta_schedule, 0.02)",
    "variance": f"ours ({_DQL}: the posterior variance beta_tilde); 'beta' is the paper's sigma_k^2 = beta_k",
    "hidden": "official code (per-agent MLP of 3 x 256, Mish; critics alike): fast.nets.DiffusionQLNet",
    "t_dim": "official code (16-d sinusoidal time embedding)",
    "lr": f"ours ({_DQL}, 3e-4)",
    "critic_lr": f"ours ({_DQL}, 3e-4)",
    "eta": "ours: the paper's Algorithm 1 with the QL term live at Diffusion-QL's locomotion value 1.0 (the "
           "official code detaches both Q terms, which is eta = 0 in effect)",
    "grad_norm": "official code (gradient norm clipped to 0.5)",
    "batch_size": f"ours ({_DQL}, 256)",
    "gamma": f"ours ({_DQL}, 0.99)",
    "tau": f"ours ({_DQL}, 0.005)",
    "ema_decay": f"official code (EMA policy for the next action); decay {_DQL} (0.995)",
    "ema_start": f"ours ({_DQL}, step_start_ema=1000)",
    "ema_every": f"ours ({_DQL}, update_ema_every=5)",
    "max_action": "Multi-Agent MuJoCo / MuJoCo v5 action bound (1.0)",
}


class NoiseWeights(nn.Module):
    """WConcat's learnable w_1..w_N (initialised to 1, as the official code); f uses w_i / sum_j w_j."""

    def __init__(self, N: int) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.ones(N))

    def forward(self) -> Tensor:
        return self.w / self.w.sum()


class Local:
    """eps_theta_i(x, k) = net(x, k, o_i): agent i's network with its own observation bound (the clauses' eps_fn)."""

    def __init__(self, net: nn.Module, o: Tensor) -> None:
        self.net, self.o = net, o

    def __call__(self, x: Tensor, k: Tensor) -> Tensor:
        out: Tensor = self.net(x, k, self.o)
        return out


class DoFAgent(DecentralisedAgent):
    """Offline DoF policy: centralised training (Algorithm 1 + QL term), decentralised execution (Algorithm 2)."""

    name = "dof"
    offline = True
    cfg: DoFConfig

    def __init__(self, data: JointTransitions, cfg: DoFConfig, device: str = "cpu") -> None:
        self.cfg, self.device = cfg, torch.device(device)
        self.setup_agents(data)
        if len(set(self.act_dims)) != 1:  # f stacks the agents' (B, d) blocks: one d for all
            raise DatasetError(f"dataset {data.dataset_id}: DoF needs every agent to act on the same number of "
                               f"entries, got {dict(zip(self.agents, self.act_dims, strict=True))}")
        self.N, self.d = len(self.agents), self.act_dims[0]
        dev = self.device
        betas = schedule.vp(cfg.K) if cfg.schedule == "vp" else schedule.linear(cfg.K, cfg.beta_start, cfg.beta_end)
        self.sched = Schedule.from_betas(betas, device=dev)
        self.policy = nn.ModuleList(DiffusionQLNet(do, self.d, cfg.hidden, cfg.t_dim) for do in self.obs_dims).to(dev)
        self.ema = copy.deepcopy(self.policy).requires_grad_(False)
        self.weights = NoiseWeights(self.N).to(dev)
        self.critic = nn.ModuleList(DoubleCritic(do, self.d, cfg.hidden) for do in self.obs_dims).to(dev)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        policy_params = [*self.policy.parameters(), *(self.weights.parameters() if self.wconcat else ())]
        self.policy_opt = torch.optim.Adam(policy_params, lr=cfg.lr)
        self.critic_opt = torch.optim.Adam(self.critic.parameters(), lr=cfg.critic_lr)
        self.data = JointSampler(data, dev)
        self.steps = 0

    @property
    def wconcat(self) -> bool:
        return self.cfg.factorisation == "wconcat"

    def w(self) -> Tensor | None:
        """The weights f is given: None for Concat, w_i / sum_j w_j for WConcat."""
        return self.weights() if self.wconcat else None

    # ---- sampling (Algorithm 2) -------------------------------------------------------------------

    def eps_fns(self, nets: nn.ModuleList, obs: list[Tensor]) -> list[Local]:
        return [Local(net, o) for net, o in zip(nets, obs, strict=True)]

    def sample(self, nets: nn.ModuleList, obs: list[Tensor], x_K: Tensor, z: Tensor) -> Tensor:
        """Every agent's a_i^0 (B, N, d) from its own chain (dof.decentralised_sample), clipped to the action box.

        x_K (B, N, d) and z (K, B, N, d) are the agents' noises; differentiable in the networks.
        """
        a0 = F.decentralised_sample(x_K, self.eps_fns(nets, obs), self.sched, z, self.cfg.variance)
        return a0.clamp(-self.cfg.max_action, self.cfg.max_action)

    def sample_local(self, j: int, o: Tensor, x_K: Tensor, z: Tensor) -> Tensor:
        """Agent j alone (execution): a_j^0 (B, d) from o (B, do_j), x_K (B, d), z (K, B, d) and its own network."""
        a0 = F.decentralised_sample(x_K.unsqueeze(1), [Local(self.policy[j], o)], self.sched, z.unsqueeze(2),
                                    self.cfg.variance)
        return a0[:, 0].clamp(-self.cfg.max_action, self.cfg.max_action)

    def act_local(self, j: int, obs: Tensor) -> Tensor:
        """One sample of agent j's chain from its own observation (a uniform pick among i.i.d. candidates, the
        official selection, has this law)."""
        x_K = torch.randn(1, self.d, device=self.device)
        z = torch.randn(self.cfg.K, 1, self.d, device=self.device)
        return self.sample_local(j, obs.unsqueeze(0), x_K, z)[0]

    # ---- training (Algorithm 1 with the QL term) ------------------------------------------------------

    def q_heads(self, obs: list[Tensor], a: Tensor, head: int) -> Tensor:
        """Q_i,head(o_i, a_i) for every agent, (B, N)."""
        return torch.stack([self.critic_of(i).head(head, obs[i], a[:, i]) for i in range(self.N)], 1)

    def critic_of(self, i: int) -> DoubleCritic:
        c = self.critic[i]
        assert isinstance(c, DoubleCritic)
        return c

    def policy_objective(self, obs: list[Tensor], a: Tensor, k: Tensor, eps: Tensor, x_K: Tensor, z: Tensor,
                         head: int) -> Tensor:
        """L of one batch, a (B, N, d) the agents' dataset actions: L = mean over rows of
        dof.policy_loss / (N d), Q_i,head maximised and the other head normalising. The critics must be frozen
        by the caller for a policy step."""
        n = self.N * self.d
        mode, w = self.cfg.factorisation, self.w()
        a_tot = F.data_factorisation(a, mode, w)  # x^0 = f(a_1..a_N): in f's coordinates, so f^{-1} gives a_i back
        fns = self.eps_fns(self.policy, obs)
        a0 = self.sample(self.policy, obs, x_K, z)
        q_new = self.q_heads(obs, a0, head)
        with torch.no_grad():  # E|Q'| is a stop-gradient constant of the clause
            q_norm = self.q_heads(obs, a0, 1 - head)
        rows = F.policy_loss(a_tot, k, eps, fns, self.sched, q_new, self.cfg.eta * n, mode, w, q_norm)
        return rows.mean() / n

    def critic_objective(self, b: JointBatch, a_tot: Tensor, a_next: Tensor) -> Tensor:
        """sum_i mean_b sum_h (Q_i,h(o_i, a_i) - y_i)^2, y_i the clipped double-Q target of agent i."""
        total = torch.zeros((), device=self.device)
        for i in range(self.N):
            with torch.no_grad():
                y = D.td_target(b.r, b.done, self.critic_target[i](b.next_obs[i], a_next[:, i]), self.cfg.gamma)
            total = total + D.critic_loss(self.critic[i](b.obs[i], a_tot[:, i]), y).mean()
        return total

    def clip(self, nets: nn.ModuleList) -> None:
        """Each agent's gradient norm clipped on its own (each agent's networks as if trained alone)."""
        if self.cfg.grad_norm > 0:
            for net in nets:
                nn.utils.clip_grad_norm_(net.parameters(), self.cfg.grad_norm)

    def update(self) -> dict[str, Tensor]:
        cfg, B, N, d, K = self.cfg, self.cfg.batch_size, self.N, self.d, self.cfg.K
        b = self.data.sample(B)
        a_tot = torch.stack(b.actions, 1)  # (B, N, d): agent i's entries of the joint action
        # critics
        with torch.no_grad():
            a_next = self.sample(self.ema, b.next_obs, torch.randn(B, N, d, device=self.device),
                                 torch.randn(K, B, N, d, device=self.device))
        critic_loss = self.critic_objective(b, a_tot, a_next)
        self.critic_opt.zero_grad(set_to_none=True)
        critic_loss.backward()  # type: ignore[no-untyped-call]
        self.clip(self.critic)
        self.critic_opt.step()
        # policies: one head maximised, the other normalises (drawn at random, as Diffusion-QL's code)
        head = 0 if bool(torch.rand(()) > 0.5) else 1
        k = torch.randint(1, K + 1, (B,), device=self.device)
        eps, x_K = torch.randn(B, N, d, device=self.device), torch.randn(B, N, d, device=self.device)
        z = torch.randn(K, B, N, d, device=self.device)
        self.critic.requires_grad_(False)  # constants here: the gradient reaches the policies through a^0
        try:
            policy_loss = self.policy_objective(b.obs, a_tot, k, eps, x_K, z, head)
            self.policy_opt.zero_grad(set_to_none=True)
            policy_loss.backward()  # type: ignore[no-untyped-call]
        finally:
            self.critic.requires_grad_(True)
        self.clip(self.policy)
        self.policy_opt.step()
        # targets
        with torch.no_grad():
            if self.steps % cfg.ema_every == 0 and self.steps >= cfg.ema_start:
                for p_e, p in zip(self.ema.parameters(), self.policy.parameters(), strict=True):
                    p_e.lerp_(p, 1.0 - cfg.ema_decay)
            for p_t, p in zip(self.critic_target.parameters(), self.critic.parameters(), strict=True):
                p_t.lerp_(p, cfg.tau)
        self.steps += 1
        return {"critic_loss": critic_loss.detach(), "actor_loss": policy_loss.detach()}

    # ---- checkpoint ---------------------------------------------------------------------------

    def modules(self) -> dict[str, Any]:
        return {"policy": self.policy, "ema": self.ema, "weights": self.weights, "critic": self.critic,
                "critic_target": self.critic_target, "policy_opt": self.policy_opt, "critic_opt": self.critic_opt}
