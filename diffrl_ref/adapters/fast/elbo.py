"""Bridge for family ``elbo``."""

from __future__ import annotations

from typing import Any

from numpy.typing import ArrayLike

from ...fast import elbo as F
from ._bridge import Bridge


def identity(b: Bridge, x: ArrayLike, W: ArrayLike, b_: ArrayLike, s2: float, q_mean: ArrayLike,
             q_cov: ArrayLike) -> Any:
    cid = "elbo.identity"
    terms = F.identity(b.x(x, cid, "x"), b.x(W, cid, "W"), b.x(b_, cid, "b"), s2, b.x(q_mean, cid, "q_mean"),
                       b.x(q_cov, cid, "q_cov"))
    return type(terms)(*(b.out(t) for t in terms))


def max_likelihood(b: Bridge, p_data: ArrayLike, p_theta: ArrayLike) -> Any:
    cid = "elbo.max_likelihood"
    terms = F.max_likelihood(b.x(p_data, cid, "p_data"), b.x(p_theta, cid, "p_theta"))
    return type(terms)(*(b.out(t) for t in terms))
