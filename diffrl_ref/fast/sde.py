"""VP SDE coefficient maps on the production path (family ``sde``), Song et al. (ICLR 2021).

beta(t) = beta_min + t (beta_max - beta_min), t in [0, 1]; the score is passed in as a value.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._checks import batch, finite, require, require_values, same_shape, scalar


def _range(beta_min: float, beta_max: float, cid: str) -> tuple[float, float]:
    b0, b1 = scalar(beta_min, cid, "beta_min"), scalar(beta_max, cid, "beta_max")
    require(0 < b0 <= b1, cid, f"need 0 < beta_min <= beta_max, got {b0!r}, {b1!r}")
    return b0, b1


def _time(t: Tensor, cid: str, B: int | None = None) -> Tensor:
    finite(t, cid, "t")
    require_values((t >= 0) & (t <= 1), cid, "t must lie in [0, 1]")
    if B is None:
        require(t.ndim <= 1, cid, f"t must be a scalar or a vector, got shape {tuple(t.shape)}")
    else:
        require(t.ndim == 0 or tuple(t.shape) == (B,), cid, f"t must be a scalar or shape ({B},), got {tuple(t.shape)}")
    return t


def _f_g2(x: Tensor, t: Tensor, b0: float, b1: float) -> tuple[Tensor, Tensor]:
    """f(x, t) = -beta(t) x / 2 and g(t)^2 = beta(t) as a (B, 1) column."""
    beta = (b0 + t * (b1 - b0)).expand(x.shape[0]).unsqueeze(-1)
    return -0.5 * beta * x, beta


def vp(x: Tensor, t: Tensor, beta_min: float = 0.1, beta_max: float = 20.0) -> tuple[Tensor, Tensor]:
    """Clause ``sde.vp``: drift f(x, t) = -beta(t) x / 2 and diffusion g(t) = sqrt(beta(t)) (B, 1)."""
    cid = "sde.vp"
    batch(x, cid, "x")
    _time(t, cid, x.shape[0])
    f, g2 = _f_g2(x, t, *_range(beta_min, beta_max, cid))
    return f, torch.sqrt(g2)


def vp_marginal(t: Tensor, beta_min: float = 0.1, beta_max: float = 20.0) -> Tensor:
    """Clause ``sde.vp_marginal``: alpha_bar(t) = exp(-beta_min t - (beta_max - beta_min) t^2 / 2)."""
    cid = "sde.vp_marginal"
    _time(t, cid)
    b0, b1 = _range(beta_min, beta_max, cid)
    return torch.exp(-b0 * t - 0.5 * (b1 - b0) * t**2)


def _field(x: Tensor, t: Tensor, score: Tensor, beta_min: float, beta_max: float, cid: str, c: float) -> Tensor:
    batch(x, cid, "x")
    batch(score, cid, "score")
    same_shape(cid, x=x, score=score)
    _time(t, cid, x.shape[0])
    f, g2 = _f_g2(x, t, *_range(beta_min, beta_max, cid))
    return f - c * g2 * score


def reverse_drift(x: Tensor, t: Tensor, score: Tensor, beta_min: float = 0.1, beta_max: float = 20.0) -> Tensor:
    """Clause ``sde.reverse_drift``: f(x, t) - g(t)^2 score."""
    return _field(x, t, score, beta_min, beta_max, "sde.reverse_drift", 1.0)


def probability_flow(x: Tensor, t: Tensor, score: Tensor, beta_min: float = 0.1, beta_max: float = 20.0) -> Tensor:
    """Clause ``sde.probability_flow``: f(x, t) - g(t)^2 score / 2."""
    return _field(x, t, score, beta_min, beta_max, "sde.probability_flow", 0.5)
