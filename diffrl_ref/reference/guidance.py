"""Guidance: steering a diffusion sampler towards a condition y (spec family ``guidance``).

Classifier guidance (Dhariwal and Nichol 2021) shifts the mean of each reverse step along the
gradient of a classifier's log-likelihood; classifier-free guidance (Ho and Salimans 2022)
extrapolates between a conditional and an unconditional noise prediction of one network. The
decks (Decision Diffuser) write the second with a weight omega; Ho and Salimans with w = omega - 1.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from ._checks import Array, as_batch, as_f64, require, same_shape


def _scalar(v: float, cid: str, name: str, lo: float) -> float:
    a = as_f64(v, cid, name)
    require(a.ndim == 0, cid, f"{name} must be a scalar, got shape {a.shape}")
    require(float(a) >= lo, cid, f"{name} must be >= {lo:g}, got {float(a)!r}")
    return float(a)


def classifier(mean: ArrayLike, var: ArrayLike, grad_log_p: ArrayLike, s: float) -> Array:
    """Clause ``guidance.classifier``: guided mean mu + s Sigma grad_x log p_phi(y | x)."""
    cid = "guidance.classifier"
    mu = as_batch(mean, cid, "mean")
    g = as_batch(grad_log_p, cid, "grad_log_p")
    same_shape(cid, mean=mu, grad_log_p=g)
    sigma = as_f64(var, cid, "var")
    B, d = mu.shape
    require(sigma.shape in ((B, 1), (B, d)), cid, f"var must have shape ({B}, 1) or ({B}, {d}), got {sigma.shape}")
    require(bool(np.all(sigma >= 0)), cid, "var is a (diagonal) covariance and must be >= 0")
    scale = _scalar(s, cid, "s", 0.0)
    return np.asarray(mu + scale * sigma * g, dtype=np.float64)


def _pair(eps_uncond: ArrayLike, eps_cond: ArrayLike, cid: str) -> tuple[Array, Array]:
    u = as_batch(eps_uncond, cid, "eps_uncond")
    c = as_batch(eps_cond, cid, "eps_cond")
    same_shape(cid, eps_uncond=u, eps_cond=c)
    return u, c


def cfg(eps_uncond: ArrayLike, eps_cond: ArrayLike, omega: float) -> Array:
    """Clause ``guidance.cfg``: eps_hat = eps(x, empty) + omega (eps(x, y) - eps(x, empty))."""
    cid = "guidance.cfg"
    u, c = _pair(eps_uncond, eps_cond, cid)
    return np.asarray(u + _scalar(omega, cid, "omega", 0.0) * (c - u), dtype=np.float64)


def cfg_ho_salimans(eps_uncond: ArrayLike, eps_cond: ArrayLike, w: float) -> Array:
    """Clause ``guidance.cfg_ho_salimans``: eps_hat = (1 + w) eps(x, y) - w eps(x, empty)."""
    cid = "guidance.cfg_ho_salimans"
    u, c = _pair(eps_uncond, eps_cond, cid)
    w_ = _scalar(w, cid, "w", -1.0)
    return np.asarray((1 + w_) * c - w_ * u, dtype=np.float64)
