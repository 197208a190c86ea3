"""Diff-SR agent for online RL (Algorithm 2 of Shribak et al., NeurIPS 2024), built from ``diffrl_ref.fast``.

One training step, after each environment step once learning has started:

1. ``feature_steps`` representation updates (Algorithm 1): s~' = ddpm.noise(s', eps, sched, k)
   and the denoising score-matching loss of diffsr.score_objective, whose model score
   psi(s, a)^T grad nu(s~'; beta^k) comes from ONE vector-Jacobian product of the energy network
   nu (fast.diffsr.score_objective_energy): never the (B, m, ds) Jacobian the official code's
   network outputs.
2. A double critic on the features, Q_i = head_i(fourier(psi(s, a), omega_i, b_i)): random Fourier
   features of psi (fast.diffsr.fourier, the phased form sqrt(2/D) cos(omega^T psi + b)), followed
   by an ELU layer; TD target diffsr.td_target (clipped double Q, entropy term), loss
   diffsr.critic_loss. psi is a constant for the critic: only score matching shapes it.
3. The tanh-Gaussian actor maximises diffsr.policy_objective (min_i Q_i - alpha log pi); alpha is
   tuned to the target entropy -|A| (Haarnoja et al., 2018b).
4. Polyak-averaged target critics every ``target_every`` steps.

Every hyperparameter and its source is in :data:`HYPERPARAMETERS` (and docs/rl.rst).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from scipy import stats
from torch import Tensor, nn

from ..fast import ddpm
from ..fast import diffsr as F
from ..fast.schedule import Schedule


@dataclass
class DiffSRConfig:
    """Hyperparameters; ``source`` of each in :data:`HYPERPARAMETERS`."""

    feature_dim: int = 256
    psi_hidden: int = 256
    nu_hidden: int = 512
    rff_dim: int = 256
    rff_bandwidth: float = 16.0
    hidden: int = 256
    levels: int = 1000
    level_a: float = 0.3
    level_b: float = 0.1
    weighting: str = "beta"
    feature_steps: int = 1
    rep_lr: float = 3e-3
    lr: float = 3e-4
    batch_size: int = 256
    gamma: float = 0.99
    tau: float = 0.005
    target_every: int = 2
    alpha_init: float = 0.1
    log_std_min: float = -5.0
    log_std_max: float = 2.0
    learning_starts: int = 10_000
    buffer_size: int = 1_000_000


#: (name, value, source) rows for the docs; value filled from :class:`DiffSRConfig`.
HYPERPARAMETERS: dict[str, str] = {
    "feature_dim": "official code (rl-rep agent/diffsrsac: feature_dim=256)",
    "psi_hidden": "official code (Phi: one hidden layer of 256, ReLU)",
    "nu_hidden": "official code (its nabla-mu network: one hidden layer of 512); SiLU here, because the score is "
                 "grad nu and a ReLU network's gradient is piecewise constant in s~'",
    "rff_dim": "official code (RFFCritic l1: hidden_dim=256 features, sin of a linear map)",
    "rff_bandwidth": "ours: kernel bandwidth h (omega ~ N(0, I / h^2)), sqrt(feature_dim), the scale of the "
                     "official critic's nn.Linear initialisation; the paper's unit bandwidth gave omega^T psi a "
                     "spread of 19 rad on HalfCheetah (norm of psi about 20) and a critic that did not learn "
                     "(docs/rl.rst)",
    "hidden": "official code (critic and actor hidden_dim=256)",
    "levels": "official code (num_noises=1000)",
    "level_a": "official code (beta^k = Beta(0.3, 0.1) CDF on a uniform grid: DARL_noise_a)",
    "level_b": "official code (DARL_noise_b)",
    "weighting": "ours: lambda(beta) = beta (Song et al., ICLR 2021, lambda = sigma^2); Algorithm 1's unweighted mean "
                 "('none') has target variance ds / beta, dominated by the smallest levels",
    "feature_steps": "ours: one representation update per environment step, for throughput (docs/rl.rst measures "
                     "both); the official code makes 4 (1 + extra_feature_steps=3)",
    "rep_lr": "official code (phi_and_nabla_mu_lr=3e-3)",
    "lr": "official code (critic_and_actor_lr=3e-4, also the temperature's)",
    "batch_size": "official code (main.py batch_size=256)",
    "gamma": "official code (discount=0.99)",
    "tau": "official code (tau=0.005)",
    "target_every": "official code (target_update_period=2)",
    "alpha_init": "official code (alpha=0.1, auto_entropy_tuning=True, target entropy -|A|)",
    "log_std_min": "official code (DiagGaussianActor log_std_bounds=[-5, 2])",
    "log_std_max": "official code (log_std_bounds)",
    "learning_starts": "ours, as rl-zoo3's SAC on MuJoCo (10k uniform-random steps); the official code uses 25k "
                       "for 1M-step runs, half of a 50k-step budget here; the same value for SAC",
    "buffer_size": "official code and stable-baselines3 (1e6)",
}


def level_schedule(K: int, a: float, b: float, device: str | torch.device = "cpu") -> Schedule:
    """Noise levels beta^k = BetaCDF(x_k; a, b) on x_k = k / (K + 1), k = 1..K, as a DDPM schedule.

    The official code's levels (1 - its alpha-bar) on an open grid, so all K lie strictly inside (0, 1);
    beta_k = 1 - (1 - beta^k) / (1 - beta^{k-1}) makes alpha_bar_k = 1 - beta^k (spec diffsr.train_step note).
    """
    levels = stats.beta.cdf(np.arange(1, K + 1) / (K + 1), a, b)
    keep = np.concatenate([[1.0], 1.0 - levels])
    return Schedule.from_betas(torch.as_tensor(1.0 - keep[1:] / keep[:-1]), device=device)


def mlp(sizes: list[int], act: type[nn.Module]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(sizes) - 2:
            layers.append(act())
    return nn.Sequential(*layers)


class Psi(nn.Module):
    """psi(s, a) -> (B, m), the state-action features."""

    def __init__(self, ds: int, da: int, hidden: int, m: int) -> None:
        super().__init__()
        self.net = mlp([ds + da, hidden, m], nn.ReLU)

    def forward(self, s: Tensor, a: Tensor) -> Tensor:
        out: Tensor = self.net(torch.cat([s, a], dim=-1))
        return out


class Nu(nn.Module):
    """nu(s~', beta) -> (B, m), the next-state energy features; the level beta enters as an input."""

    def __init__(self, ds: int, hidden: int, m: int) -> None:
        super().__init__()
        self.net = mlp([ds + 1, hidden, m], nn.SiLU)

    def forward(self, s_tilde: Tensor, beta: Tensor) -> Tensor:
        out: Tensor = self.net(torch.cat([s_tilde, beta.unsqueeze(-1)], dim=-1))
        return out


class RFFCritic(nn.Module):
    """n critics Q_i(psi) = w_i^T elu(W_i fourier(psi; omega_i, b_i) + c_i) + d_i.

    omega_i ~ N(0, I / h^2) and b_i ~ U[0, 2 pi) at initialisation.

    Random Fourier features of the Gaussian kernel of bandwidth h; the frequencies are then trained,
    as the official critic's first layer (sin of a trainable linear map).
    """

    def __init__(self, m: int, D: int, hidden: int, n: int = 2, bandwidth: float = 1.0) -> None:
        super().__init__()
        self.omegas = nn.Parameter(torch.randn(n, D, m) / bandwidth)
        self.phases = nn.Parameter(2 * math.pi * torch.rand(n, D))
        self.heads = nn.ModuleList([mlp([D, hidden, 1], nn.ELU) for _ in range(n)])

    def forward(self, psi: Tensor) -> Tensor:
        """(n_critics, B): the layout of the diffsr clauses."""
        return torch.stack([head(F.fourier(psi, self.omegas[i], self.phases[i])).squeeze(-1)
                            for i, head in enumerate(self.heads)])


class TanhGaussianActor(nn.Module):
    """a = tanh(u), u ~ N(mu(s), diag sigma(s)^2); log pi with the tanh Jacobian (Haarnoja et al., 2018, App. C)."""

    def __init__(self, ds: int, da: int, hidden: int, log_std_min: float, log_std_max: float) -> None:
        super().__init__()
        self.net = mlp([ds, hidden, hidden, 2 * da], nn.ReLU)
        self.lo, self.hi = log_std_min, log_std_max

    def forward(self, s: Tensor) -> tuple[Tensor, Tensor]:
        mu, log_std = self.net(s).chunk(2, dim=-1)
        # the official actor's soft bound: log_std = lo + (hi - lo) (tanh + 1) / 2
        return mu, self.lo + 0.5 * (self.hi - self.lo) * (torch.tanh(log_std) + 1.0)

    def sample(self, s: Tensor) -> tuple[Tensor, Tensor]:
        mu, log_std = self(s)
        u = mu + torch.exp(log_std) * torch.randn_like(mu)
        log_n = torch.sum(-0.5 * ((u - mu) / torch.exp(log_std)) ** 2 - log_std - 0.5 * math.log(2 * math.pi), dim=-1)
        # log(1 - tanh(u)^2) = 2 (log 2 - u - softplus(-2u)), stable for large |u|
        log_jac = torch.sum(2.0 * (math.log(2.0) - u - nn.functional.softplus(-2.0 * u)), dim=-1)
        return torch.tanh(u), log_n - log_jac

    def mode(self, s: Tensor) -> Tensor:
        return torch.tanh(self(s)[0])


class ReplayBuffer:
    """Transitions with actions in [-1, 1]; sampled with the torch generator (saved with the run)."""

    def __init__(self, ds: int, da: int, size: int) -> None:
        self.size, self.n, self.pos = size, 0, 0
        self.s = np.zeros((size, ds), np.float32)
        self.a = np.zeros((size, da), np.float32)
        self.r = np.zeros(size, np.float32)
        self.s_next = np.zeros((size, ds), np.float32)
        self.done = np.zeros(size, np.float32)

    def add(self, s: np.ndarray, a: np.ndarray, r: float, s_next: np.ndarray, done: bool) -> None:
        i = self.pos
        self.s[i], self.a[i], self.r[i], self.s_next[i], self.done[i] = s, a, r, s_next, float(done)
        self.pos = (i + 1) % self.size
        self.n = min(self.n + 1, self.size)

    def sample(self, B: int, device: torch.device) -> tuple[Tensor, ...]:
        idx = torch.randint(0, self.n, (B,)).numpy()
        return tuple(torch.as_tensor(x[idx], device=device) for x in (self.s, self.a, self.r, self.s_next, self.done))

    def state_dict(self) -> dict[str, Any]:
        n = self.n
        return {"n": n, "pos": self.pos, **{k: getattr(self, k)[:n].copy() for k in ("s", "a", "r", "s_next", "done")}}

    def load_state_dict(self, st: dict[str, Any]) -> None:
        self.n, self.pos = int(st["n"]), int(st["pos"])
        for k in ("s", "a", "r", "s_next", "done"):
            getattr(self, k)[: self.n] = st[k]


@contextmanager
def frozen(*modules: nn.Module) -> Iterator[None]:
    """Parameters of ``modules`` do not require grad inside the block."""
    params = [p for m in modules for p in m.parameters()]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def soft_update(target: nn.Module, online: nn.Module, tau: float) -> None:
    with torch.no_grad():
        for p_t, p in zip(target.parameters(), online.parameters(), strict=True):
            p_t.lerp_(p, tau)


class DiffSRAgent:
    """Diff-SR with SAC-style actor and temperature; ``act`` and ``update`` are the loop's interface."""

    name = "diffsr"

    def __init__(self, ds: int, da: int, cfg: DiffSRConfig, device: str = "cpu") -> None:
        if cfg.weighting not in ("beta", "none"):
            raise ValueError(f"weighting must be 'beta' or 'none', got {cfg.weighting!r}")
        self.cfg, self.device, self.da = cfg, torch.device(device), da
        dev = self.device
        self.sched = level_schedule(cfg.levels, cfg.level_a, cfg.level_b, dev)
        self.psi = Psi(ds, da, cfg.psi_hidden, cfg.feature_dim).to(dev)
        self.nu = Nu(ds, cfg.nu_hidden, cfg.feature_dim).to(dev)
        self.critic = RFFCritic(cfg.feature_dim, cfg.rff_dim, cfg.hidden, bandwidth=cfg.rff_bandwidth).to(dev)
        self.critic_target = RFFCritic(cfg.feature_dim, cfg.rff_dim, cfg.hidden, bandwidth=cfg.rff_bandwidth).to(dev)
        self.critic_target.load_state_dict(self.critic.state_dict())
        self.critic_target.requires_grad_(False)
        self.actor = TanhGaussianActor(ds, da, cfg.hidden, cfg.log_std_min, cfg.log_std_max).to(dev)
        self.log_alpha = torch.tensor(math.log(cfg.alpha_init), device=dev, requires_grad=True)
        self.target_entropy = -float(da)
        self.rep_opt = torch.optim.Adam([*self.psi.parameters(), *self.nu.parameters()], lr=cfg.rep_lr)
        # the critic optimizer holds the RFF critic (the official code's holds a discarded critic: see docs/rl.rst)
        self.critic_opt = torch.optim.Adam(self.critic.parameters(), lr=cfg.lr)
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), lr=cfg.lr)
        self.alpha_opt = torch.optim.Adam([self.log_alpha], lr=cfg.lr)
        self.buffer = ReplayBuffer(ds, da, cfg.buffer_size)
        self.updates = 0

    # ---- interface ----------------------------------------------------------------------------

    def act(self, s: np.ndarray, deterministic: bool) -> np.ndarray:
        with torch.no_grad():
            x = torch.as_tensor(s, dtype=torch.float32, device=self.device).unsqueeze(0)
            a = self.actor.mode(x) if deterministic else self.actor.sample(x)[0]
        out: np.ndarray = a[0].cpu().numpy()
        return out

    def observe(self, s: np.ndarray, a: np.ndarray, r: float, s_next: np.ndarray, terminated: bool) -> None:
        self.buffer.add(s, a, r, s_next, terminated)

    def update(self) -> dict[str, Tensor]:
        """One learning step; the returned scalars stay on the device (no host sync per step)."""
        cfg = self.cfg
        for _ in range(cfg.feature_steps):
            s, a, _, s_next, _ = self.buffer.sample(cfg.batch_size, self.device)
            rep_loss = self.representation_step(s, a, s_next)
        s, a, r, s_next, done = self.buffer.sample(cfg.batch_size, self.device)
        info = self.critic_step(s, a, r, s_next, done)
        info |= self.actor_step(s)
        self.updates += 1
        if self.updates % cfg.target_every == 0:
            soft_update(self.critic_target, self.critic, cfg.tau)
        info["rep_loss"] = rep_loss
        return info

    # ---- the three updates --------------------------------------------------------------------

    def representation_loss(self, s: Tensor, a: Tensor, s_next: Tensor) -> Tensor:
        """Algorithm 1 on a batch: k ~ U{1..K}, eps ~ N(0, I), s~' = ddpm.noise; weighted diffsr.score_objective."""
        B = s.shape[0]
        k = torch.randint(1, self.sched.K + 1, (B,), device=self.device)
        if self.cfg.weighting == "none":
            return F.train_step_energy(self.psi, self.nu, s, a, s_next, torch.randn_like(s_next), self.sched, k)
        s_tilde = ddpm.noise(s_next, torch.randn_like(s_next), self.sched, k)
        beta = self.sched.one_minus_alpha_bar[k]
        per_row = F.score_objective_energy(self.psi(s, a), self.nu, s_tilde, s_next, beta)
        return torch.mean(beta * per_row)

    def representation_step(self, s: Tensor, a: Tensor, s_next: Tensor) -> Tensor:
        loss = self.representation_loss(s, a, s_next)
        self.rep_opt.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        self.rep_opt.step()
        return loss.detach()

    def critic_step(self, s: Tensor, a: Tensor, r: Tensor, s_next: Tensor, done: Tensor) -> dict[str, Tensor]:
        alpha = self.log_alpha.detach().exp()
        with torch.no_grad():
            a_next, log_pi_next = self.actor.sample(s_next)
            y = F.td_target(r, done, self.critic_target(self.psi(s_next, a_next)), self.cfg.gamma, alpha, log_pi_next)
            psi = self.psi(s, a)
        q = self.critic(psi)
        loss = F.critic_loss(q, y).mean()
        self.critic_opt.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        self.critic_opt.step()
        return {"critic_loss": loss.detach(), "q": q.detach().mean()}

    def actor_step(self, s: Tensor) -> dict[str, Tensor]:
        a, log_pi = self.actor.sample(s)
        with torch.no_grad():
            alpha = self.log_alpha.exp()
        # psi and the critics are constants here: gradients reach the actor through a only, and
        # freezing them skips their weight gradients (a third of the step's backward pass)
        with frozen(self.psi, self.critic):
            q = self.critic(self.psi(s, a))
            loss = -F.policy_objective(q, alpha, log_pi).mean()
            self.actor_opt.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
        self.actor_opt.step()
        alpha_loss = -(self.log_alpha * (log_pi.detach() + self.target_entropy)).mean()
        self.alpha_opt.zero_grad(set_to_none=True)
        alpha_loss.backward()  # type: ignore[no-untyped-call]
        self.alpha_opt.step()
        return {"actor_loss": loss.detach(), "alpha": alpha, "entropy": -log_pi.detach().mean()}

    # ---- checkpoint ---------------------------------------------------------------------------

    def modules(self) -> dict[str, Any]:
        return {"psi": self.psi, "nu": self.nu, "critic": self.critic, "critic_target": self.critic_target,
                "actor": self.actor, "rep_opt": self.rep_opt, "critic_opt": self.critic_opt,
                "actor_opt": self.actor_opt, "alpha_opt": self.alpha_opt}

    def state_dict(self) -> dict[str, Any]:
        st: dict[str, Any] = {k: m.state_dict() for k, m in self.modules().items()}
        st["log_alpha"] = self.log_alpha.detach().clone()
        st["updates"] = self.updates
        st["buffer"] = self.buffer.state_dict()
        st["config"] = asdict(self.cfg)
        return st

    def load_state_dict(self, st: dict[str, Any]) -> None:
        for k, m in self.modules().items():
            m.load_state_dict(st[k])
        with torch.no_grad():
            self.log_alpha.copy_(st["log_alpha"])
        self.updates = int(st["updates"])
        self.buffer.load_state_dict(st["buffer"])
