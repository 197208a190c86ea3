"""DDIM on the production path (family ``ddim``).

Song, Meng and Ermon, ICLR 2021. A step goes from k to any earlier k_prev (k_prev = 0 lands on
x_0). :class:`DDIMSampler` folds each step of a fixed sub-sequence into three float64-derived
scalars, x_{k_prev} = c_x x_k + c_eps eps_hat + sigma z, so the loop adds two fused tensor ops
per network call.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from ._checks import batch, finite, require, require_finite, require_values, same_shape, scalar
from .schedule import Schedule, at

EpsFn = Callable[[Tensor, Tensor], Tensor]


def _eta(eta: float, cid: str) -> float:
    return scalar(eta, cid, "eta", 0.0, 1.0)


def _steps(sched: Schedule, k: int | Tensor, k_prev: int | Tensor, B: int, cid: str) -> tuple[Tensor, Tensor]:
    kk = sched.steps(k, B, cid)
    kp = sched.steps(k_prev, B, cid, lo=0)
    require_values(kp < kk, cid, "need k_prev < k (a step goes back in k)")
    return kk, kp


def _sigma(ab_k: Tensor, ab_prev: Tensor, one_m_k: Tensor, one_m_prev: Tensor, eta: float) -> Tensor:
    """DDIM Eq. (16) with alpha_bar_{k-1} generalised to alpha_bar_{k_prev}."""
    return eta * torch.sqrt(one_m_prev / one_m_k) * torch.sqrt(1.0 - ab_k / ab_prev)


def sigma(sched: Schedule, k: int | Tensor, k_prev: int | Tensor, eta: float) -> Tensor:
    """Clause ``ddim.sigma``: eta sqrt((1 - ab_prev)/(1 - ab_k)) sqrt(1 - ab_k/ab_prev), shaped like k."""
    cid = "ddim.sigma"
    e = _eta(eta, cid)
    kt, kpt = (torch.as_tensor(v, device=sched.device) for v in (k, k_prev))
    require(kt.ndim == 0 or kpt.ndim == 0 or kt.shape == kpt.shape, cid, "k and k_prev must have the same shape")
    shape = kt.shape if kt.ndim else kpt.shape
    kt, kpt = kt.expand(shape), kpt.expand(shape)
    n = kt.numel()
    kk, kp = _steps(sched, kt.reshape(-1), kpt.reshape(-1), n, cid)
    out = _sigma(sched.alpha_bar[kk], sched.alpha_bar[kp], sched.one_minus_alpha_bar[kk],
                 sched.one_minus_alpha_bar[kp], e)
    return out.reshape(kt.shape)


def posterior(x0: Tensor, x_k: Tensor, sched: Schedule, k: int | Tensor, k_prev: int | Tensor,
              sigma: Tensor | float) -> tuple[Tensor, Tensor]:
    """Clause ``ddim.posterior``: mean and variance (B, 1) of q_sigma(x_{k_prev} | x_k, x_0), DDIM Eq. (7)."""
    cid = "ddim.posterior"
    batch(x0, cid, "x0")
    batch(x_k, cid, "x_k")
    same_shape(cid, x0=x0, x_k=x_k)
    B = x0.shape[0]
    kk, kp = _steps(sched, k, k_prev, B, cid)
    sig = torch.as_tensor(sigma, dtype=x0.dtype, device=x0.device)
    require(sig.ndim == 0 or tuple(sig.shape) == (B,), cid,
            f"sigma must be a scalar or shape ({B},), got {tuple(sig.shape)}")
    finite(sig, cid, "sigma")
    require_values(sig >= 0, cid, "sigma is a standard deviation and must be >= 0")
    sig = sig.expand(B).unsqueeze(-1)
    one_m_prev = at(sched.one_minus_alpha_bar, kp)
    require_values(sig**2 <= one_m_prev, cid, "need sigma^2 <= 1 - alpha_bar_{k_prev}")
    sqrt_ab_k, sqrt_ab_prev = at(sched.sqrt_alpha_bar, kk), at(sched.sqrt_alpha_bar, kp)
    eps_dir = (x_k - sqrt_ab_k * x0) / at(sched.sqrt_one_minus_alpha_bar, kk)
    mean = sqrt_ab_prev * x0 + torch.sqrt(torch.clamp(one_m_prev - sig**2, min=0.0)) * eps_dir
    return mean, sig**2


def step(x_k: Tensor, eps_hat: Tensor, sched: Schedule, k: int | Tensor, k_prev: int | Tensor, eta: float,
         z: Tensor) -> Tensor:
    """Clause ``ddim.step``: x_{k_prev} = sqrt(ab_prev) x0_hat + sqrt(1 - ab_prev - sigma^2) eps_hat + sigma z."""
    cid = "ddim.step"
    for name, t in (("x_k", x_k), ("eps_hat", eps_hat), ("z", z)):
        batch(t, cid, name)
    same_shape(cid, x_k=x_k, eps_hat=eps_hat, z=z)
    e = _eta(eta, cid)
    kk, kp = _steps(sched, k, k_prev, x_k.shape[0], cid)
    ab_k, ab_prev = at(sched.alpha_bar, kk), at(sched.alpha_bar, kp)
    one_m_k, one_m_prev = at(sched.one_minus_alpha_bar, kk), at(sched.one_minus_alpha_bar, kp)
    sig = _sigma(ab_k, ab_prev, one_m_k, one_m_prev, e)
    x0_hat = (x_k - at(sched.sqrt_one_minus_alpha_bar, kk) * eps_hat) / at(sched.sqrt_alpha_bar, kk)
    direction = torch.sqrt(torch.clamp(one_m_prev - sig**2, min=0.0))
    return at(sched.sqrt_alpha_bar, kp) * x0_hat + direction * eps_hat + sig * z


def tau_steps(tau: Sequence[int] | Tensor, K: int, cid: str = "ddim.sample") -> list[int]:
    """A sub-sequence 1 <= tau_1 < ... < tau_S = K as a list of ints."""
    t = torch.as_tensor(tau)
    require(t.ndim == 1 and t.numel() >= 1, cid,
            f"tau must be a non-empty 1-D sequence of steps, got shape {tuple(t.shape)}")
    require(not t.is_floating_point() or bool((t == t.round()).all()), cid, f"tau must hold integers, got {t.tolist()}")
    steps = [int(v) for v in t.tolist()]
    require(all(1 <= s <= K for s in steps), cid, f"tau steps must lie in [1, {K}], got {steps}")
    require(all(a < b for a, b in zip(steps, steps[1:], strict=False)), cid,
            f"tau must be strictly increasing, got {steps}")
    require(steps[-1] == K, cid, f"tau must end at K = {K}, got {steps[-1]}")
    return steps


def uniform_tau(K: int, S: int) -> list[int]:
    """S steps evenly spaced in 1..K ending at K (DDIM's linear sub-sequence, Sec. 4.2/App. D)."""
    require(1 <= S <= K, "ddim.sample", f"need 1 <= S <= K, got S={S}, K={K}")
    return sorted({K - round(i * K / S) for i in range(S)})


class DDIMSampler:
    """DDIM generation on a fixed sub-sequence tau, tau_S = K down to k = 0 (DDIM Sec. 4.2)."""

    def __init__(self, sched: Schedule, tau: Sequence[int] | Tensor, eta: float = 0.0, land_on_x0: bool = True) -> None:
        """``land_on_x0=False`` stops the chain at x_{tau_1} (DOM2's solver), skipping the jump tau_1 -> 0."""
        cid = "ddim.sample"
        self.sched, self.tau, self.eta = sched, tau_steps(tau, sched.K, cid), _eta(eta, cid)
        self.coef: list[tuple[int, float, float, float]] = []  # (k, c_x, c_eps, sigma), k descending
        prev = [0, *self.tau[:-1]]
        for k, kp in zip(reversed(self.tau), reversed(prev), strict=True):
            ab_k, ab_p, om_k, om_p = sched.ab64(k), sched.ab64(kp), sched.om64(k), sched.om64(kp)
            sig = self.eta * math.sqrt(om_p / om_k) * math.sqrt(1 - ab_k / ab_p)
            direction = math.sqrt(max(om_p - sig**2, 0.0))
            c_x = math.sqrt(ab_p / ab_k)
            c_eps = direction - math.sqrt(ab_p) * math.sqrt(om_k) / math.sqrt(ab_k)
            self.coef.append((k, c_x, c_eps, sig))
        if not land_on_x0:
            self.coef.pop()
        # 0-d step tensors made once; a call expands them to (B,) views (no per-call allocation).
        self.k_tensors = [torch.tensor(k, device=sched.device) for k, *_ in self.coef]

    def __call__(self, x_K: Tensor, eps_fn: EpsFn, noises: Tensor | None = None) -> Tensor:
        """noises: (S, B, d), noises[i] the z of the step from tau[i]; None is allowed when eta = 0."""
        cid = "ddim.sample"
        batch(x_K, cid, "x_K")
        B, d = x_K.shape
        S = len(self.tau)
        require(noises is not None or self.eta == 0.0, cid, "noises are required when eta > 0")
        if noises is not None:
            require(tuple(noises.shape) == (S, B, d), cid,
                    f"noises must have shape (len(tau), B, d) = {(S, B, d)}, got {tuple(noises.shape)}")
        x = x_K
        for i, (_, c_x, c_eps, sig) in enumerate(self.coef):
            eps_hat = eps_fn(x, self.k_tensors[i].expand(B))
            require(eps_hat.shape == x.shape, cid, f"eps_fn returned shape {tuple(eps_hat.shape)}, expected {(B, d)}")
            x = torch.add(x * c_x, eps_hat, alpha=c_eps)
            if sig and noises is not None:
                x = torch.add(x, noises[S - 1 - i], alpha=sig)
        # One check at the end: a non-finite network output anywhere propagates to x.
        require_finite(x, cid, "eps_fn returned non-finite values")
        return x


def sample(x_K: Tensor, eps_fn: EpsFn, sched: Schedule, tau: Sequence[int] | Tensor, eta: float,
           noises: Tensor) -> Tensor:
    """Clause ``ddim.sample``: generation on the sub-sequence tau (DDIM Sec. 4.2)."""
    return DDIMSampler(sched, tau, eta)(x_K, eps_fn, noises)
