"""Diff-SR agent for online RL (Algorithm 2 of Shribak et al., NeurIPS 2024), built from ``diffrl_ref.fast``.

One training step, after each environment step once learning has started:

1. ``feature_steps`` representation updates (Algorithm 1): s~' = ddpm.noise(s', eps, sched, k)
   and the denoising score-matching loss of diffsr.score_objective, whose model score
   psi(s, a)^T grad nu(s~'; beta^k) comes from ONE vector-Jacobian product of the energy network
   nu (fast.diffsr.score_objective_energy): never the (B, m, ds) Jacobian the official code's
   network outputs.
2. A double critic on the features, clause diffsr.critic (fast.diffsr.critic): random Fourier
   features of psi, z_i = A cos(omega_i^T psi + b_i) with trained omega_i and b_i, followed by one
   ELU layer and a linear output; TD target diffsr.td_target (clipped double Q, entropy term), loss
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
from .domains import DISCOUNT, NON_NEGATIVE_INT, POLYAK, POSITIVE, POSITIVE_INT, Domain, one_of


@dataclass
class DiffSRConfig:
    """Hyperparameters; ``source`` of each in :data:`HYPERPARAMETERS`, domain in :data:`DOMAINS`."""

    feature_dim: int = 256
    psi_hidden: int = 256
    nu_hidden: int = 512
    rff_dim: int = 256
    rff_bandwidth: float = 16.0
    rff_init: str = "gaussian"
    feature_amplitude: str = "1"
    hidden: int = 256
    critic_head: str = "elu"
    activation: str = "elu"
    actor_init: str = "orthogonal"
    levels: int = 1000
    level_a: float = 0.3
    level_b: float = 0.1
    noise_scale: float = 1.0
    weighting: str = "beta"
    feature_steps: int = 1
    rep_lr: float = 3e-3
    lr: float = 3e-4
    batch_size: int = 256
    gamma: float = 0.99
    tau: float = 0.005
    target_every: int = 1
    alpha_init: float = 0.1
    log_std_min: float = -5.0
    log_std_max: float = 2.0
    learning_starts: int = 10_000
    buffer_size: int = 1_000_000

    def check(self) -> None:
        """Relations between fields that no single domain states."""
        if not self.log_std_min < self.log_std_max:
            raise ValueError(f"log_std_min ({self.log_std_min}) must be < log_std_max ({self.log_std_max})")


#: name -> (test, the domain in words): each --hp value is checked before anything is created.
DOMAINS: dict[str, Domain] = {
    **dict.fromkeys(("feature_dim", "psi_hidden", "nu_hidden", "rff_dim", "hidden", "levels", "feature_steps",
                     "batch_size", "target_every", "buffer_size"), POSITIVE_INT),
    "learning_starts": NON_NEGATIVE_INT,
    **dict.fromkeys(("rff_bandwidth", "level_a", "level_b", "noise_scale", "rep_lr", "lr", "alpha_init"), POSITIVE),
    "gamma": DISCOUNT,
    "tau": POLYAK,
    "log_std_min": (lambda v: math.isfinite(v), "a finite number below log_std_max"),
    "log_std_max": (lambda v: math.isfinite(v), "a finite number above log_std_min"),
    "weighting": one_of("beta", "beta2", "none"),
    "rff_init": one_of("gaussian", "linear"),
    "feature_amplitude": one_of("sqrt(2/D)", "1"),
    "activation": one_of("relu", "elu"),
    "critic_head": one_of("elu", "linear"),
    "actor_init": one_of("default", "orthogonal"),
}


#: (name, value, source) rows for the docs; value filled from :class:`DiffSRConfig`.
HYPERPARAMETERS: dict[str, str] = {
    "feature_dim": "official code (rl-rep agent/diffsrsac: feature_dim=256)",
    "psi_hidden": "official code (Phi: one hidden layer of 256; its activation is ELU, see activation)",
    "nu_hidden": "official code (its nabla-mu network: one hidden layer of 512); SiLU here, because the score is "
                 "grad nu and a ReLU network's gradient is piecewise constant in s~'",
    "rff_dim": "official code (RFFCritic l1: hidden_dim=256 features, sin of a linear map)",
    "rff_bandwidth": "ours: kernel bandwidth h (omega ~ N(0, I / h^2)), sqrt(feature_dim), the scale of the "
                     "official critic's nn.Linear initialisation; the paper's unit bandwidth gave omega^T psi a "
                     "spread of 19 rad on HalfCheetah (norm of psi about 20) and a critic that did not learn "
                     "(docs/rl.rst)",
    "rff_init": "ours: omega ~ N(0, I / h^2), b ~ U[0, 2 pi), the random Fourier features of the Gaussian kernel "
                "(Rahimi and Recht, 2007), the deck's phi_omega; 'linear' is the official code's nn.Linear default "
                "(omega and b ~ U(-1/sqrt(m), 1/sqrt(m)), sin = cos shifted by -pi/2)",
    "feature_amplitude": "official code (RFFCritic: sin of a linear map, A = 1), picked by the Diff-SR ablation "
                         "(docs/rl.rst, group combined); 'sqrt(2/D)' is the random-feature normalisation of the "
                         "deck's phi_omega (so that z^T z approximates the kernel)",
    "hidden": "official code (critic and actor hidden_dim=256)",
    "critic_head": "official code (RFFCritic: one ELU layer of hidden_dim, then a linear output); 'linear' is the "
                   "deck's Q linear in the features (clause diffsr.critic)",
    "activation": "official code (ELU in Phi and the actor, utils.util.mlp), picked by the Diff-SR ablation "
                  "(docs/rl.rst, group combined); 'relu' is stable-baselines3's SAC actor's",
    "actor_init": "official code (orthogonal weights, zero biases: utils.util.weight_init), picked by the Diff-SR "
                  "ablation (docs/rl.rst, group combined); 'default' is PyTorch's initialisation",
    "noise_scale": "Algorithm 1 and the spec (eps ~ N(0, I)); the official code scales eps by "
                   "sigma_scale_factor=0.449",
    "levels": "official code (num_noises=1000)",
    "level_a": "official code (beta^k = Beta(0.3, 0.1) CDF on a uniform grid: DARL_noise_a)",
    "level_b": "official code (DARL_noise_b)",
    "weighting": "ours: lambda(beta) = beta (Song et al., ICLR 2021, lambda = sigma^2); Algorithm 1's unweighted mean "
                 "('none') has target variance ds / beta, dominated by the smallest levels; 'beta2' "
                 "(lambda = beta^2) is the official code's weight in the spec's parameterisation",
    "feature_steps": "ours: one representation update per environment step, for throughput (docs/rl.rst measures "
                     "both); the official code makes 4 (1 + extra_feature_steps=3)",
    "rep_lr": "official code (phi_and_nabla_mu_lr=3e-3)",
    "lr": "official code (critic_and_actor_lr=3e-4, also the temperature's)",
    "batch_size": "official code (main.py batch_size=256)",
    "gamma": "official code (discount=0.99)",
    "tau": "official code (tau=0.005)",
    "target_every": "ours, as the SAC baseline (stable-baselines3: every update), picked by the Diff-SR ablation "
                    "(docs/rl.rst, group combined); the official code updates every 2 (target_update_period=2)",
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

    def __init__(self, ds: int, da: int, hidden: int, m: int, act: type[nn.Module] = nn.ReLU) -> None:
        super().__init__()
        self.net = mlp([ds + da, hidden, m], act)

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
    """n critics on the features, clause ``diffsr.critic`` (:func:`diffrl_ref.fast.diffsr.critic`).

    Q_i(psi) = w_i^T elu(W_i z_i + c_i) + d_i with z_i = A cos(omega_i psi + b_i). ``init='gaussian'``:
    omega_i ~ N(0, I / h^2), b_i ~ U[0, 2 pi), the random Fourier features of the Gaussian kernel of
    bandwidth h; ``init='linear'``: the official critic's first layer, sin(nn.Linear(psi)) at its default
    initialisation. The frequencies and phases are then trained, as the official critic's first layer.
    """

    def __init__(self, m: int, D: int, hidden: int, n: int = 2, bandwidth: float = 1.0, init: str = "gaussian",
                 amplitude: float | None = None, head: str = "elu") -> None:
        super().__init__()
        if init == "gaussian":
            omegas, phases = torch.randn(n, D, m) / bandwidth, 2 * math.pi * torch.rand(n, D)
        else:
            first = [nn.Linear(m, D) for _ in range(n)]
            omegas = torch.stack([f.weight.detach() for f in first])
            phases = torch.stack([f.bias.detach() for f in first]) - math.pi / 2  # sin(x) = cos(x - pi/2)
        self.omegas, self.phases = nn.Parameter(omegas), nn.Parameter(phases)
        self.amplitude = math.sqrt(2.0 / D) if amplitude is None else amplitude
        # built as nn.Linear layers (their initialisation, drawn in this order), held as stacked tensors
        self.hidden_w: nn.Parameter | None = None
        self.hidden_b: nn.Parameter | None = None
        if head == "linear":  # the deck's Q = w^T z + d
            outs = [nn.Linear(D, 1) for _ in range(n)]
        else:
            heads = [(nn.Linear(D, hidden), nn.Linear(hidden, 1)) for _ in range(n)]
            self.hidden_w = nn.Parameter(torch.stack([h.weight.detach() for h, _ in heads]))
            self.hidden_b = nn.Parameter(torch.stack([h.bias.detach() for h, _ in heads]))
            outs = [o for _, o in heads]
        self.out_w = nn.Parameter(torch.stack([o.weight.detach()[0] for o in outs]))
        self.out_b = nn.Parameter(torch.stack([o.bias.detach()[0] for o in outs]))

    def forward(self, psi: Tensor) -> Tensor:
        """(n_critics, B): the layout of the diffsr clauses."""
        return F.critic(psi, self.omegas, self.phases, self.amplitude, self.hidden_w, self.hidden_b,
                        self.out_w, self.out_b)


class TanhGaussianActor(nn.Module):
    """a = tanh(u), u ~ N(mu(s), diag sigma(s)^2); log pi with the tanh Jacobian (Haarnoja et al., 2018, App. C)."""

    def __init__(self, ds: int, da: int, hidden: int, log_std_min: float, log_std_max: float,
                 act: type[nn.Module] = nn.ReLU, orthogonal: bool = False) -> None:
        super().__init__()
        self.net = mlp([ds, hidden, hidden, 2 * da], act)
        if orthogonal:  # the official actor's utils.util.weight_init
            for layer in self.net:
                if isinstance(layer, nn.Linear):
                    nn.init.orthogonal_(layer.weight)
                    nn.init.zeros_(layer.bias)
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
        for name, (test, domain) in DOMAINS.items():
            if not test(getattr(cfg, name)):
                raise ValueError(f"diffsr hyperparameter {name} must be {domain}, got {getattr(cfg, name)!r}")
        cfg.check()
        self.cfg, self.device, self.da = cfg, torch.device(device), da
        dev = self.device
        act = {"relu": nn.ReLU, "elu": nn.ELU}[cfg.activation]
        self.sched = level_schedule(cfg.levels, cfg.level_a, cfg.level_b, dev)
        self.psi = Psi(ds, da, cfg.psi_hidden, cfg.feature_dim, act).to(dev)
        self.nu = Nu(ds, cfg.nu_hidden, cfg.feature_dim).to(dev)
        amplitude = None if cfg.feature_amplitude == "sqrt(2/D)" else 1.0

        def make_critic() -> RFFCritic:
            return RFFCritic(cfg.feature_dim, cfg.rff_dim, cfg.hidden, bandwidth=cfg.rff_bandwidth,
                             init=cfg.rff_init, amplitude=amplitude, head=cfg.critic_head).to(dev)

        self.critic, self.critic_target = make_critic(), make_critic()
        self.critic_target.load_state_dict(self.critic.state_dict())
        self.critic_target.requires_grad_(False)
        self.actor = TanhGaussianActor(ds, da, cfg.hidden, cfg.log_std_min, cfg.log_std_max, act,
                                       orthogonal=cfg.actor_init == "orthogonal").to(dev)
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
        """Algorithm 1 on a batch: k ~ U{1..K}, eps ~ N(0, sigma^2 I), s~' = ddpm.noise; weighted score_objective."""
        B = s.shape[0]
        k = torch.randint(1, self.sched.K + 1, (B,), device=self.device)
        # noise_scale sigma: s~' = sqrt(1 - beta) s' + sqrt(beta) sigma eps (the official perturbation). The
        # objective's target (s~' - sqrt(1 - beta) s') / beta is then sigma^2 times the score of that kernel,
        # a constant factor the model psi^T grad nu absorbs; per row the official loss is beta^2 times this one.
        eps = self.cfg.noise_scale * torch.randn_like(s_next)
        if self.cfg.weighting == "none":
            return F.train_step_energy(self.psi, self.nu, s, a, s_next, eps, self.sched, k)
        s_tilde = ddpm.noise(s_next, eps, self.sched, k)
        beta = self.sched.one_minus_alpha_bar[k]
        per_row = F.score_objective_energy(self.psi(s, a), self.nu, s_tilde, s_next, beta)
        weight = beta if self.cfg.weighting == "beta" else beta * beta
        return torch.mean(weight * per_row)

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
