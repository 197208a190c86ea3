"""Bridge for family ``sde``."""

from __future__ import annotations

from typing import Any

from numpy.typing import ArrayLike

from ...fast import sde as F
from ._bridge import Bridge


def vp(b: Bridge, x: ArrayLike, t: ArrayLike, beta_min: float = 0.1, beta_max: float = 20.0) -> Any:
    cid = "sde.vp"
    return tuple(b.out(v) for v in F.vp(b.x(x, cid, "x"), b.x(t, cid, "t"), beta_min, beta_max))


def vp_marginal(b: Bridge, t: ArrayLike, beta_min: float = 0.1, beta_max: float = 20.0) -> Any:
    cid = "sde.vp_marginal"
    return b.out(F.vp_marginal(b.x(t, cid, "t"), beta_min, beta_max))


def reverse_drift(b: Bridge, x: ArrayLike, t: ArrayLike, score: ArrayLike, beta_min: float = 0.1,
                  beta_max: float = 20.0) -> Any:
    cid = "sde.reverse_drift"
    return b.out(F.reverse_drift(b.x(x, cid, "x"), b.x(t, cid, "t"), b.x(score, cid, "score"), beta_min, beta_max))


def probability_flow(b: Bridge, x: ArrayLike, t: ArrayLike, score: ArrayLike, beta_min: float = 0.1,
                     beta_max: float = 20.0) -> Any:
    cid = "sde.probability_flow"
    return b.out(F.probability_flow(b.x(x, cid, "x"), b.x(t, cid, "t"), b.x(score, cid, "score"), beta_min,
                                    beta_max))
