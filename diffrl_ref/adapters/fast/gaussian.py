"""Bridge for family ``gaussian``."""

from __future__ import annotations

from typing import Any

from numpy.typing import ArrayLike

from ...fast import gaussian as F
from ._bridge import Bridge


def reparam(b: Bridge, mu: ArrayLike, sigma: ArrayLike, eps: ArrayLike) -> Any:
    cid = "gaussian.reparam"
    return b.out(F.reparam(b.x(mu, cid, "mu"), b.x(sigma, cid, "sigma"), b.x(eps, cid, "eps")))


def kl(b: Bridge, mu1: ArrayLike, var1: ArrayLike, mu2: ArrayLike, var2: ArrayLike) -> Any:
    cid = "gaussian.kl"
    return b.out(F.kl(b.x(mu1, cid, "mu1"), b.x(var1, cid, "var1"), b.x(mu2, cid, "mu2"), b.x(var2, cid, "var2")))
