"""Diagonal Gaussians on the production path (family ``gaussian``)."""

from __future__ import annotations

import torch
from torch import Tensor

from ._checks import batch, require, require_values, same_shape


def reparam(mu: Tensor, sigma: Tensor, eps: Tensor) -> Tensor:
    """Clause ``gaussian.reparam``: z = mu + sigma * eps."""
    cid = "gaussian.reparam"
    for name, t in (("mu", mu), ("sigma", sigma), ("eps", eps)):
        batch(t, cid, name)
    same_shape(cid, mu=mu, sigma=sigma, eps=eps)
    require_values(sigma > 0, cid, "sigma (a standard deviation) must be > 0")
    return torch.addcmul(mu, sigma, eps)


def kl(mu1: Tensor, var1: Tensor, mu2: Tensor, var2: Tensor) -> Tensor:
    """Clause ``gaussian.kl``: KL(N(mu1, diag var1) || N(mu2, diag var2)) per row, summed over coordinates."""
    cid = "gaussian.kl"
    for name, t in (("mu1", mu1), ("var1", var1), ("mu2", mu2), ("var2", var2)):
        batch(t, cid, name)
    same_shape(cid, mu1=mu1, var1=var1, mu2=mu2, var2=var2)
    require(mu1.shape[1] >= 1, cid, "need d >= 1 coordinates")
    require_values((var1 > 0) & (var2 > 0), cid, "variances var1, var2 must be > 0")
    ratio = var1 / var2
    require_values(torch.isfinite(ratio) & (ratio > 0), cid, "var1 / var2 must be finite and > 0")
    return 0.5 * torch.sum(ratio - 1.0 - torch.log(ratio) + (mu1 - mu2) ** 2 / var2, dim=-1)
