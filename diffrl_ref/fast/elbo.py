"""Evidence lower bound and maximum likelihood on the production path (family ``elbo``).

Closed forms for a linear-Gaussian latent model, batched with torch.linalg (Cholesky solves, no
explicit inverses), and the KL / cross-entropy / entropy decomposition for categorical rows.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from ._checks import DomainError, batch, finite, require, require_values, same_shape

_U32 = 2.0**-24  # rows normalised in float32 or float64 are accepted (as the spec's domain says)


class ElboTerms(NamedTuple):
    log_px: Tensor
    elbo: Tensor
    reconstruction: Tensor
    prior_kl: Tensor
    posterior_kl: Tensor


class LikelihoodTerms(NamedTuple):
    kl: Tensor
    cross_entropy: Tensor
    entropy: Tensor


def _chol(a: Tensor, cid: str, name: str) -> tuple[Tensor, Tensor]:
    """Symmetric part of ``a`` and its Cholesky factor; a DomainError if not symmetric positive definite."""
    n = a.shape[-1]
    aT = a.transpose(-1, -2)
    require_values((a - aT).abs() <= n * _U32 * (a.abs() + aT.abs()), cid, f"{name} must be symmetric")
    sym = 0.5 * (a + aT)
    L, info = torch.linalg.cholesky_ex(sym)
    require_values(info == 0, cid, f"{name} must be positive definite (its Cholesky factorisation failed)")
    return sym, L


def _logdet(L: Tensor) -> Tensor:
    return 2.0 * torch.log(torch.diagonal(L, dim1=-2, dim2=-1)).sum(-1)


def identity(x: Tensor, W: Tensor, b: Tensor, s2: float, q_mean: Tensor, q_cov: Tensor) -> ElboTerms:
    """Clause ``elbo.identity``: log p(x) = ELBO + KL(q(z|x) || p(z|x)), p(z) = N(0, I), p(x|z) = N(Wz + b, s2 I)."""
    cid = "elbo.identity"
    batch(x, cid, "x")
    batch(q_mean, cid, "q_mean")
    for name, t in (("W", W), ("b", b), ("q_cov", q_cov)):
        finite(t, cid, name)
    B, d = x.shape
    require(W.ndim == 2 and W.shape[0] == d and W.shape[1] >= 1, cid,
            f"W must have shape (d, m) = ({d}, m) with m >= 1, got {tuple(W.shape)}")
    m = W.shape[1]
    require(tuple(b.shape) == (d,), cid, f"b must have shape (d,) = ({d},), got {tuple(b.shape)}")
    try:
        noise = float(s2)
    except (TypeError, ValueError):
        raise DomainError(cid, "s2 (the observation noise variance) must be a scalar > 0") from None
    require(math.isfinite(noise) and noise > 0, cid, "s2 (the observation noise variance) must be a scalar > 0")
    require(tuple(q_mean.shape) == (B, m), cid,
            f"q_mean must have shape (B, m) = ({B}, {m}), got {tuple(q_mean.shape)}")
    require(tuple(q_cov.shape) == (B, m, m), cid,
            f"q_cov must have shape (B, m, m) = ({B}, {m}, {m}), got {tuple(q_cov.shape)}")
    I_d = torch.eye(d, dtype=x.dtype, device=x.device)
    I_m = torch.eye(m, dtype=x.dtype, device=x.device)
    cov_q, L_q = _chol(q_cov, cid, "q_cov")
    logdet_q = _logdet(L_q)

    _, L_C = _chol(W @ W.T + noise * I_d, cid, "the evidence covariance W W^T + s2 I")
    white = torch.linalg.solve_triangular(L_C, (x - b).T, upper=False)
    log_px = -0.5 * (d * math.log(2 * math.pi) + _logdet(L_C) + (white**2).sum(0))

    resid = x - q_mean @ W.T - b
    WtW = W.T @ W
    tr_WqW = torch.einsum("ij,bji->b", WtW, cov_q)
    reconstruction = -0.5 * (d * math.log(2 * math.pi * noise) + ((resid**2).sum(-1) + tr_WqW) / noise)
    prior_kl = 0.5 * (torch.diagonal(cov_q, dim1=-2, dim2=-1).sum(-1) + (q_mean**2).sum(-1) - m - logdet_q)

    P, L_P = _chol(I_m + WtW / noise, cid, "the posterior precision I + W^T W / s2")
    mu_post = torch.cholesky_solve(W.T @ (x - b).T / noise, L_P).T
    delta = q_mean - mu_post
    posterior_kl = 0.5 * (torch.einsum("ij,bji->b", P, cov_q) + torch.einsum("bi,ij,bj->b", delta, P, delta)
                          - m - logdet_q - _logdet(L_P))
    return ElboTerms(log_px, reconstruction - prior_kl, reconstruction, prior_kl, posterior_kl)


def max_likelihood(p_data: Tensor, p_theta: Tensor) -> LikelihoodTerms:
    """Clause ``elbo.max_likelihood``: KL(p_data || p_theta) = -H(p_data) - E_{p_data}[log p_theta], per row."""
    cid = "elbo.max_likelihood"
    batch(p_data, cid, "p_data")
    batch(p_theta, cid, "p_theta")
    same_shape(cid, p_data=p_data, p_theta=p_theta)
    n = p_data.shape[1]
    require(n >= 1, cid, "need n >= 1 categories")
    for name, a in (("p_data", p_data), ("p_theta", p_theta)):
        require_values(a >= 0, cid, f"{name} must be >= 0")
        require_values((a.sum(-1) - 1.0).abs() <= (n + 1) * _U32, cid,
                       f"every row of {name} must sum to 1 within (n + 1) * 2^-24")
    cross_entropy = -torch.xlogy(p_data, p_theta).sum(-1)
    entropy = -torch.xlogy(p_data, p_data).sum(-1)
    # rel_entr: p log(p/q), 0 where p = 0, +inf where p > 0 = q
    kl = torch.where(p_data > 0, p_data * (torch.log(p_data) - torch.log(p_theta)), torch.zeros_like(p_data)).sum(-1)
    return LikelihoodTerms(kl, cross_entropy, entropy)
