"""DDPM on the production path (family ``ddpm``): batched, dtype- and device-generic.

Ho, Jain and Abbeel, NeurIPS 2020. Steps are 1-based; ``k`` is an int or an int64 tensor of
shape (B,); coefficients come from a :class:`~diffrl_ref.fast.schedule.Schedule`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ._checks import DomainError, batch, require, require_finite, require_values, same_shape, unchecked
from .schedule import Schedule, at

#: eps_fn(x (B, d), k (B,) int64) -> eps_hat (B, d)
EpsFn = Callable[[Tensor, Tensor], Tensor]
VARIANCES = ("beta", "beta_tilde")


def _pair(a: Tensor, b: Tensor, names: tuple[str, str], cid: str) -> None:
    batch(a, cid, names[0])
    batch(b, cid, names[1])
    same_shape(cid, **{names[0]: a, names[1]: b})


def forward_kernel(x_prev: Tensor, sched: Schedule, k: int | Tensor) -> tuple[Tensor, Tensor]:
    """Clause ``ddpm.forward_kernel``: q(x_k | x_{k-1}) = N(sqrt(1 - beta_k) x_{k-1}, beta_k I)."""
    cid = "ddpm.forward_kernel"
    batch(x_prev, cid, "x_prev")
    kk = sched.steps(k, x_prev.shape[0], cid)
    beta_k = at(sched.beta, kk)
    return torch.sqrt(1.0 - beta_k) * x_prev, beta_k


def marginal(x0: Tensor, sched: Schedule, k: int | Tensor) -> tuple[Tensor, Tensor]:
    """Clause ``ddpm.marginal``: q(x_k | x_0) = N(sqrt(alpha_bar_k) x_0, (1 - alpha_bar_k) I)."""
    cid = "ddpm.marginal"
    batch(x0, cid, "x0")
    kk = sched.steps(k, x0.shape[0], cid)
    return at(sched.sqrt_alpha_bar, kk) * x0, at(sched.one_minus_alpha_bar, kk)


def noise(x0: Tensor, eps: Tensor, sched: Schedule, k: int | Tensor) -> Tensor:
    """Clause ``ddpm.noise``: x_k = sqrt(alpha_bar_k) x_0 + sqrt(1 - alpha_bar_k) eps."""
    cid = "ddpm.noise"
    _pair(x0, eps, ("x0", "eps"), cid)
    kk = sched.steps(k, x0.shape[0], cid)
    return torch.addcmul(at(sched.sqrt_alpha_bar, kk) * x0, at(sched.sqrt_one_minus_alpha_bar, kk), eps)


def x0_from_eps(x_k: Tensor, eps: Tensor, sched: Schedule, k: int | Tensor) -> Tensor:
    """Clause ``ddpm.x0_from_eps``: x_0 = (x_k - sqrt(1 - alpha_bar_k) eps) / sqrt(alpha_bar_k)."""
    cid = "ddpm.x0_from_eps"
    _pair(x_k, eps, ("x_k", "eps"), cid)
    kk = sched.steps(k, x_k.shape[0], cid)
    return (x_k - at(sched.sqrt_one_minus_alpha_bar, kk) * eps) / at(sched.sqrt_alpha_bar, kk)


def posterior(x0: Tensor, x_k: Tensor, sched: Schedule, k: int | Tensor) -> tuple[Tensor, Tensor]:
    """Clause ``ddpm.posterior``: q(x_{k-1} | x_k, x_0) = N(mu_tilde, beta_tilde_k I) (Eqs. 6-7)."""
    cid = "ddpm.posterior"
    _pair(x0, x_k, ("x0", "x_k"), cid)
    kk = sched.steps(k, x0.shape[0], cid)
    beta_k = at(sched.beta, kk)
    one_m_k, one_m_prev = at(sched.one_minus_alpha_bar, kk), at(sched.one_minus_alpha_bar, kk - 1)
    c0 = at(sched.sqrt_alpha_bar, kk - 1) * beta_k / one_m_k
    ck = torch.sqrt(1.0 - beta_k) * one_m_prev / one_m_k
    return c0 * x0 + ck * x_k, at(sched.beta_tilde, kk)


def _sigma2(variance: str, sched: Schedule, kk: Tensor, cid: str) -> Tensor:
    require(variance in VARIANCES, cid, f"variance must be one of {VARIANCES}, got {variance!r}")
    return at(sched.beta if variance == "beta" else sched.beta_tilde, kk)


def reverse_mean(x_k: Tensor, eps_hat: Tensor, sched: Schedule, kk: Tensor) -> Tensor:
    """mu_theta(x_k, k) = (x_k - beta_k / sqrt(1 - alpha_bar_k) eps_hat) / sqrt(1 - beta_k) (Eq. 11)."""
    beta_k = at(sched.beta, kk)
    return (x_k - beta_k / at(sched.sqrt_one_minus_alpha_bar, kk) * eps_hat) / torch.sqrt(1.0 - beta_k)


def reverse_step(x_k: Tensor, eps_hat: Tensor, sched: Schedule, k: int | Tensor, z: Tensor,
                 variance: str = "beta") -> Tensor:
    """Clause ``ddpm.reverse_step``: x_{k-1} = mu_theta(x_k, k) + sigma_k z, no noise at k = 1 (Alg. 2)."""
    cid = "ddpm.reverse_step"
    _pair(x_k, eps_hat, ("x_k", "eps_hat"), cid)
    batch(z, cid, "z")
    same_shape(cid, x_k=x_k, z=z)
    kk = sched.steps(k, x_k.shape[0], cid)
    sigma = torch.where(kk.unsqueeze(-1) > 1, torch.sqrt(_sigma2(variance, sched, kk, cid)), 0.0)
    return reverse_mean(x_k, eps_hat, sched, kk) + sigma * z


def simple_loss(eps: Tensor, eps_hat: Tensor, sched: Schedule, k: int | Tensor, weighting: str = "simple",
                sigma2: str | Tensor | None = None) -> Tensor:
    """Clause ``ddpm.simple_loss``: w_k ||eps - eps_hat||^2 per row; w_k = 1 (Eq. 14) or lambda_k (Eq. 12)."""
    cid = "ddpm.simple_loss"
    _pair(eps, eps_hat, ("eps", "eps_hat"), cid)
    require(weighting in ("simple", "vlb"), cid, f"weighting must be 'simple' or 'vlb', got {weighting!r}")
    B = eps.shape[0]
    kk = sched.steps(k, B, cid)
    squared_error = torch.sum((eps - eps_hat) ** 2, dim=1)
    if weighting == "simple":
        return squared_error
    if sigma2 is None or isinstance(sigma2, str):
        s2 = _sigma2("beta" if sigma2 is None else sigma2, sched, kk, cid)
    else:
        require(sigma2.ndim == 0 or tuple(sigma2.shape) == (B,), cid,
                f"sigma2 must be a scalar or shape ({B},), got {tuple(sigma2.shape)}")
        s2 = sigma2.expand(B).unsqueeze(-1)
    require_values(s2 > 0, cid, "sigma_k^2 must be > 0 (beta_tilde_1 = 0: no VLB weight at k = 1)")
    beta_k = at(sched.beta, kk)
    lambda_k = beta_k**2 / (2.0 * s2 * (1.0 - beta_k) * at(sched.one_minus_alpha_bar, kk))
    return lambda_k[:, 0] * squared_error


def _kl(mean_q: Tensor, var_q: Tensor, mean_p: Tensor, var_p: Tensor) -> Tensor:
    """KL(N(mean_q, var_q I) || N(mean_p, var_p I)) per row; variances are (B, 1) columns."""
    d = mean_q.shape[1]
    ratio = (var_q / var_p)[:, 0]
    return 0.5 * (d * (ratio - 1.0 - torch.log(ratio)) + torch.sum((mean_q - mean_p) ** 2, dim=1) / var_p[:, 0])


def vlb(x0: Tensor, eps_fn: EpsFn, sched: Schedule, eps: Tensor, variance: str = "beta") -> Tensor:
    """Clause ``ddpm.vlb``: the terms L_0, L_1, ..., L_K of Ho et al., Eq. 5 as a (K + 1, B) tensor.

    All K network calls go in one batch of K * B rows.
    """
    cid = "ddpm.vlb"
    batch(x0, cid, "x0")
    B, d = x0.shape
    K = sched.K
    require(tuple(eps.shape) == (K, B, d), cid, f"eps must have shape (K, B, d) = {(K, B, d)}, got {tuple(eps.shape)}")
    require(variance in VARIANCES, cid, f"variance must be one of {VARIANCES}, got {variance!r}")
    kk = torch.arange(1, K + 1, device=x0.device).repeat_interleave(B)
    x0r = x0.repeat(K, 1)
    x_k = noise(x0r, eps.reshape(K * B, d), sched, kk)
    e_hat = eps_fn(x_k, kk)
    require(tuple(e_hat.shape) == (K * B, d), cid, f"eps_fn returned shape {tuple(e_hat.shape)}, expected {(K * B, d)}")
    require_finite(e_hat, cid, "eps_fn returned non-finite values")
    mu_theta = reverse_mean(x_k, e_hat, sched, kk)
    mu_tilde, beta_tilde = posterior(x0r[B:], x_k[B:], sched, kk[B:])
    kl = _kl(mu_tilde, beta_tilde, mu_theta[B:], _sigma2(variance, sched, kk[B:], cid)).reshape(K - 1, B)
    beta_1 = sched.beta[1]
    decoder = torch.sum((x0 - mu_theta[:B]) ** 2, dim=1) / (2.0 * beta_1) + 0.5 * d * torch.log(2.0 * torch.pi * beta_1)
    one = torch.ones(B, 1, dtype=x0.dtype, device=x0.device)
    prior = _kl(sched.sqrt_alpha_bar[K] * x0, sched.one_minus_alpha_bar[K] * one, torch.zeros_like(x0), one)
    return torch.cat([decoder[None], kl, prior[None]], 0)


class AncestralSampler:
    """DDPM ancestral sampling (Alg. 2) over k = K..1 with per-step scalar coefficients.

    x_{k-1} = a_k x_k - b_k eps_hat + sigma_k z, with a_k = 1/sqrt(1 - beta_k) and
    b_k = beta_k / (sqrt(1 - alpha_bar_k) sqrt(1 - beta_k)), precomputed in float64. The loop
    has no data-dependent control flow, so it runs under ``torch.compile`` and graph capture.
    ``clip`` clamps the x_0 prediction (Diffusion-QL's ``clip_denoised``), which uses the
    posterior-mean form mu_tilde(clip(x0_hat), x_k) instead.
    """

    def __init__(self, sched: Schedule, variance: str = "beta", clip: float | None = None) -> None:
        cid = "ddpm.reverse_step"
        require(variance in VARIANCES, cid, f"variance must be one of {VARIANCES}, got {variance!r}")
        require(clip is None or clip > 0, cid, f"clip must be > 0 or None, got {clip!r}")
        self.sched, self.variance, self.clip = sched, variance, clip
        b = sched.betas64  # index i = k - 1 in every table below
        one_m, one_m_prev = sched.one_minus_alpha_bar64[1:], sched.one_minus_alpha_bar64[:-1]
        ab, ab_prev = sched.alpha_bar64[1:], sched.alpha_bar64[:-1]
        s2 = b if variance == "beta" else one_m_prev / one_m * b
        self.coef: list[tuple[int, float, float, float, float, float]] = []
        for k in range(sched.K, 0, -1):
            i = k - 1
            sigma = float(torch.sqrt(s2[i])) if k > 1 else 0.0
            if clip is None:
                a = float(1.0 / torch.sqrt(1.0 - b[i]))
                c = float(b[i] / (torch.sqrt(one_m[i]) * torch.sqrt(1.0 - b[i])))
            else:  # x0_hat = a x_k - c eps_hat, then mu_tilde = p x0_hat + q x_k
                a, c = float(1.0 / torch.sqrt(ab[i])), float(torch.sqrt(one_m[i] / ab[i]))
            p = float(torch.sqrt(ab_prev[i]) * b[i] / one_m[i])
            q = float(torch.sqrt(1.0 - b[i]) * one_m_prev[i] / one_m[i])
            self.coef.append((k, a, c, p, q, sigma))
        self.k_tensors = {k: torch.tensor(k, device=sched.device) for k in range(1, sched.K + 1)}

    def __call__(self, x_K: Tensor, eps_fn: EpsFn, noises: Tensor) -> Tensor:
        """noises: (K, B, d); noises[k - 1] is the z of step k (unused at k = 1)."""
        cid = "ddpm.reverse_step"
        batch(x_K, cid, "x_K")
        B, d = x_K.shape
        require(tuple(noises.shape) == (self.sched.K, B, d), cid,
                f"noises must have shape (K, B, d) = {(self.sched.K, B, d)}, got {tuple(noises.shape)}")
        x = x_K
        for k, a, c, p, q, sigma in self.coef:
            eps_hat = eps_fn(x, self.k_tensors[k].expand(B))
            require(eps_hat.shape == x.shape, cid, f"eps_fn returned shape {tuple(eps_hat.shape)}, expected {(B, d)}")
            x0_or_mean = torch.add(x * a, eps_hat, alpha=-c)
            if self.clip is not None:
                x0_or_mean = torch.add(x0_or_mean.clamp(-self.clip, self.clip) * p, x, alpha=q)
            x = torch.add(x0_or_mean, noises[k - 1], alpha=sigma) if sigma else x0_or_mean
        require_finite(x, cid, "eps_fn returned non-finite values")
        return x


__all__ = ["DomainError", "unchecked", "EpsFn", "VARIANCES", "forward_kernel", "marginal", "noise", "x0_from_eps",
           "posterior", "reverse_mean", "reverse_step", "simple_loss", "vlb", "AncestralSampler"]
