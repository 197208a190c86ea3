"""Score-based SDEs, VP type (spec family ``sde``).

Continuous time t in [0, 1] with the linear noise rate beta(t) = beta_min + t (beta_max - beta_min)
of Song et al. (2021). The score is passed in as the value s = s_theta(x, t) of the score network
at the same (x, t) (an array shaped like x), so the functions here are pure coefficient maps.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from ._checks import Array, as_batch, as_f64, require, same_shape


def _beta_range(beta_min: float, beta_max: float, clause: str) -> tuple[float, float]:
    b0 = float(as_f64(beta_min, clause, "beta_min"))
    b1 = float(as_f64(beta_max, clause, "beta_max"))
    require(0 < b0 <= b1, clause, f"need 0 < beta_min <= beta_max, got {b0!r}, {b1!r}")
    return b0, b1


def _time(t: ArrayLike, clause: str, batch: int | None = None) -> Array:
    """Time(s) t in [0, 1]: a scalar, or one per batch row when ``batch`` is given."""
    a = as_f64(t, clause, "t")
    require(bool(np.all((a >= 0) & (a <= 1))), clause, f"t must lie in [0, 1], got {t!r}")
    if batch is None:
        require(a.ndim <= 1, clause, f"t must be a scalar or a vector, got shape {a.shape}")
    else:
        require(a.ndim == 0 or a.shape == (batch,), clause,
                f"t must be a scalar or shape ({batch},), got {a.shape}")
    return a


def _beta(t: Array, b0: float, b1: float) -> Array:
    """beta(t) = beta_min + t (beta_max - beta_min)."""
    return b0 + t * (b1 - b0)


def _drift_diffusion(x: Array, t: Array, b0: float, b1: float) -> tuple[Array, Array]:
    """f(x, t) = -beta(t) x / 2 and g(t) = sqrt(beta(t)), g as a (B, 1) column."""
    beta = np.broadcast_to(_beta(t, b0, b1), (x.shape[0],))[:, None]
    return -0.5 * beta * x, np.sqrt(beta)


def vp(x: ArrayLike, t: ArrayLike, beta_min: float = 0.1, beta_max: float = 20.0) -> tuple[Array, Array]:
    """Clause ``sde.vp``: drift f(x, t) = -beta(t) x / 2 and diffusion g(t) = sqrt(beta(t))."""
    cid = "sde.vp"
    xs = as_batch(x, cid, "x")
    ts = _time(t, cid, batch=xs.shape[0])
    b0, b1 = _beta_range(beta_min, beta_max, cid)
    return _drift_diffusion(xs, ts, b0, b1)


def vp_marginal(t: ArrayLike, beta_min: float = 0.1, beta_max: float = 20.0) -> Array:
    """Clause ``sde.vp_marginal``: alpha_bar(t) = exp(-int_0^t beta) of q(x_t | x_0)."""
    cid = "sde.vp_marginal"
    ts = _time(t, cid)
    b0, b1 = _beta_range(beta_min, beta_max, cid)
    return np.exp(-b0 * ts - 0.5 * (b1 - b0) * ts**2)


def reverse_drift(
    x: ArrayLike, t: ArrayLike, score: ArrayLike, beta_min: float = 0.1, beta_max: float = 20.0
) -> Array:
    """Clause ``sde.reverse_drift``: f(x, t) - g(t)^2 s, the drift of the reverse-time SDE."""
    cid = "sde.reverse_drift"
    xs = as_batch(x, cid, "x")
    s = as_batch(score, cid, "score")
    same_shape(cid, x=xs, score=s)
    ts = _time(t, cid, batch=xs.shape[0])
    b0, b1 = _beta_range(beta_min, beta_max, cid)
    f, g = _drift_diffusion(xs, ts, b0, b1)
    return f - g**2 * s


def probability_flow(
    x: ArrayLike, t: ArrayLike, score: ArrayLike, beta_min: float = 0.1, beta_max: float = 20.0
) -> Array:
    """Clause ``sde.probability_flow``: f(x, t) - g(t)^2 s / 2, the probability-flow ODE's field."""
    cid = "sde.probability_flow"
    xs = as_batch(x, cid, "x")
    s = as_batch(score, cid, "score")
    same_shape(cid, x=xs, score=s)
    ts = _time(t, cid, batch=xs.shape[0])
    b0, b1 = _beta_range(beta_min, beta_max, cid)
    f, g = _drift_diffusion(xs, ts, b0, b1)
    return f - 0.5 * g**2 * s
