"""Evidence lower bound and maximum likelihood (spec family ``elbo``)."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numpy.typing import ArrayLike
from scipy import special

from ._checks import Array, DomainError, as_batch, as_f64, require, same_shape

LOG_2PI = float(np.log(2 * np.pi))

#: Unit roundoff of float32: rows of probabilities normalised in float32 or float64 are accepted.
_U32 = 2.0**-24


class ElboTerms(NamedTuple):
    """The terms of the evidence decomposition, each of shape (B,)."""

    log_px: Array
    elbo: Array
    reconstruction: Array
    prior_kl: Array
    posterior_kl: Array


class LikelihoodTerms(NamedTuple):
    """KL(p_data || p_theta), cross-entropy and entropy of each row, each of shape (B,)."""

    kl: Array
    cross_entropy: Array
    entropy: Array


def _spd_cholesky(a: Array, cid: str, name: str) -> tuple[Array, Array]:
    """The symmetric part of ``a`` (..., n, n) and its lower Cholesky factor, or a DomainError.

    Symmetry is required to the rounding of a matrix formed in float32 or float64:
    |a_ij - a_ji| <= n 2^-24 (|a_ij| + |a_ji|).
    """
    n = a.shape[-1]
    aT = np.swapaxes(a, -1, -2)
    require(bool(np.all(np.abs(a - aT) <= n * _U32 * (np.abs(a) + np.abs(aT)))), cid, f"{name} must be symmetric")
    sym = 0.5 * (a + aT)
    try:
        return sym, np.asarray(np.linalg.cholesky(sym), dtype=np.float64)
    except np.linalg.LinAlgError:
        raise DomainError(cid, f"{name} must be positive definite (its Cholesky factorisation failed)") from None


def _logdet(chol: Array) -> Array:
    """log det A = 2 sum log diag(L) for A = L L^T."""
    return np.asarray(2.0 * np.sum(np.log(np.diagonal(chol, axis1=-2, axis2=-1)), axis=-1), dtype=np.float64)


def identity(
    x: ArrayLike, W: ArrayLike, b: ArrayLike, s2: float, q_mean: ArrayLike, q_cov: ArrayLike
) -> ElboTerms:
    """Clause ``elbo.identity``: log p(x) = ELBO + KL(q(z|x) || p(z|x)) for a linear-Gaussian model.

    p(z) = N(0, I_m), p(x | z) = N(W z + b, s2 I_d), q(z | x) = N(q_mean, q_cov); every term in
    closed form: ELBO = E_q[log p(x|z)] - KL(q(z|x) || p(z)).
    """
    cid = "elbo.identity"
    x_ = as_batch(x, cid, "x")
    W_ = as_f64(W, cid, "W")
    b_ = as_f64(b, cid, "b")
    s2_ = as_f64(s2, cid, "s2")
    mu_q = as_batch(q_mean, cid, "q_mean")
    cov_q = as_f64(q_cov, cid, "q_cov")
    B, d = x_.shape
    require(W_.ndim == 2 and W_.shape[0] == d and W_.shape[1] >= 1, cid,
            f"W must have shape (d, m) = ({d}, m) with m >= 1, got {W_.shape}")
    m = W_.shape[1]
    require(b_.shape == (d,), cid, f"b must have shape (d,) = ({d},), got {b_.shape}")
    require(s2_.ndim == 0 and float(s2_) > 0, cid, "s2 (the observation noise variance) must be a scalar > 0")
    require(mu_q.shape == (B, m), cid, f"q_mean must have shape (B, m) = ({B}, {m}), got {mu_q.shape}")
    require(cov_q.shape == (B, m, m), cid, f"q_cov must have shape (B, m, m) = ({B}, {m}, {m}), got {cov_q.shape}")
    noise = float(s2_)
    cov_q, L_q = _spd_cholesky(cov_q, cid, "q_cov")
    logdet_q = _logdet(L_q)
    tr_q = np.trace(cov_q, axis1=-2, axis2=-1)

    # Evidence: x ~ N(b, W W^T + s2 I_d).
    _, L_C = _spd_cholesky(W_ @ W_.T + noise * np.eye(d), cid, "the evidence covariance W W^T + s2 I")
    white = np.linalg.solve(L_C, (x_ - b_).T)  # L_C^{-1} (x - b), shape (d, B)
    log_px = -0.5 * (d * LOG_2PI + _logdet(L_C) + np.sum(white**2, axis=0))

    # Reconstruction: E_q[log N(x; W z + b, s2 I)] = log N(x; W q_mean + b, s2 I) - tr(W q_cov W^T) / (2 s2).
    resid = x_ - mu_q @ W_.T - b_
    tr_WqW = np.einsum("ij,bji->b", W_.T @ W_, cov_q)
    reconstruction = -0.5 * (d * np.log(2 * np.pi * noise) + (np.sum(resid**2, axis=-1) + tr_WqW) / noise)

    # Prior matching: KL(N(q_mean, q_cov) || N(0, I_m)).
    prior_kl = 0.5 * (tr_q + np.sum(mu_q**2, axis=-1) - m - logdet_q)

    # Exact posterior p(z | x) = N(mu_post, P^{-1}), precision P = I_m + W^T W / s2.
    P, L_P = _spd_cholesky(np.eye(m) + W_.T @ W_ / noise, cid, "the posterior precision I + W^T W / s2")
    mu_post = np.linalg.solve(P, W_.T @ (x_ - b_).T / noise).T  # (B, m)
    delta = mu_q - mu_post
    tr_Pq = np.einsum("ij,bji->b", P, cov_q)
    posterior_kl = 0.5 * (tr_Pq + np.einsum("bi,ij,bj->b", delta, P, delta) - m - logdet_q - _logdet(L_P))

    return ElboTerms(log_px, reconstruction - prior_kl, reconstruction, prior_kl, posterior_kl)


def max_likelihood(p_data: ArrayLike, p_theta: ArrayLike) -> LikelihoodTerms:
    """Clause ``elbo.max_likelihood``: KL(p_data || p_theta) = -H(p_data) - E_{p_data}[log p_theta], per row.

    Conventions: 0 log 0 = 0 (categories with p_data = 0 contribute nothing); a category with
    p_data > 0 and p_theta = 0 makes the KL and the cross-entropy +inf.
    """
    cid = "elbo.max_likelihood"
    p = as_batch(p_data, cid, "p_data")
    q = as_batch(p_theta, cid, "p_theta")
    same_shape(cid, p_data=p, p_theta=q)
    n = p.shape[1]
    require(n >= 1, cid, "need n >= 1 categories")
    for name, a in (("p_data", p), ("p_theta", q)):
        require(bool(np.all(a >= 0)), cid, f"{name} must be >= 0")
        require(
            bool(np.all(np.abs(np.sum(a, axis=-1) - 1.0) <= (n + 1) * _U32)),
            cid,
            f"every row of {name} must sum to 1 within (n + 1) * 2^-24",
        )
    kl_ = np.sum(special.rel_entr(p, q), axis=-1)
    cross_entropy = -np.sum(special.xlogy(p, q), axis=-1)
    entropy = -np.sum(special.xlogy(p, p), axis=-1)
    return LikelihoodTerms(kl_, cross_entropy, entropy)
