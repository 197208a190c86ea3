"""Diagonal Gaussians: reparameterised sampling and KL divergence (spec family ``gaussian``)."""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from ._checks import Array, as_batch, require, same_shape


def reparam(mu: ArrayLike, sigma: ArrayLike, eps: ArrayLike) -> Array:
    """Clause ``gaussian.reparam``: z = mu + sigma * eps, a draw of N(mu, diag(sigma^2)) for eps ~ N(0, I)."""
    cid = "gaussian.reparam"
    mu_ = as_batch(mu, cid, "mu")
    sigma_ = as_batch(sigma, cid, "sigma")
    eps_ = as_batch(eps, cid, "eps")
    same_shape(cid, mu=mu_, sigma=sigma_, eps=eps_)
    require(bool(np.all(sigma_ > 0)), cid, "sigma (a standard deviation) must be > 0")
    return mu_ + sigma_ * eps_


def kl(mu1: ArrayLike, var1: ArrayLike, mu2: ArrayLike, var2: ArrayLike) -> Array:
    """Clause ``gaussian.kl``: KL(N(mu1, diag var1) || N(mu2, diag var2)), summed over the d coordinates."""
    cid = "gaussian.kl"
    m1 = as_batch(mu1, cid, "mu1")
    v1 = as_batch(var1, cid, "var1")
    m2 = as_batch(mu2, cid, "mu2")
    v2 = as_batch(var2, cid, "var2")
    same_shape(cid, mu1=m1, var1=v1, mu2=m2, var2=v2)
    require(m1.shape[1] >= 1, cid, "need d >= 1 coordinates")
    require(bool(np.all((v1 > 0) & (v2 > 0))), cid, "variances var1, var2 must be > 0")
    ratio = v1 / v2
    require(bool(np.all(np.isfinite(ratio) & (ratio > 0))), cid, "var1 / var2 must be finite and > 0 in float64")
    per_coordinate = 0.5 * (ratio - 1.0 - np.log(ratio) + (m1 - m2) ** 2 / v2)
    return np.asarray(np.sum(per_coordinate, axis=-1), dtype=np.float64)
