"""Denoising diffusion implicit models (spec family ``ddim``).

Song, Meng and Ermon (ICLR 2021) keep DDPM's marginals q(x_k | x_0) but replace the Markov
forward chain by a family of non-Markovian posteriors q_sigma indexed by a standard deviation
sigma. Every step here goes from k to any earlier k_prev (a sub-sequence step, Sec. 4.2); the
paper's single step is k_prev = k - 1. alpha_bar_0 = 1, so a step to k_prev = 0 lands on x_0.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from . import schedule
from ._checks import Array, as_batch, as_betas, as_f64, as_step, column, require, same_shape

Steps = NDArray[np.int64]


def _alpha_bar(betas: ArrayLike, cid: str) -> Array:
    return schedule.alpha_bar(as_betas(betas, cid))


def _steps(k: ArrayLike, k_prev: ArrayLike, K: int, cid: str, batch: int | None = None) -> tuple[Steps, Steps]:
    """k in [1, K] and k_prev in [0, k - 1], scalars or one per batch row."""
    k_ = as_step(k, K, cid, batch=batch)
    kp = as_step(k_prev, K, cid, lo=0, batch=batch)
    if batch is None:
        require(k_.ndim == 0 or kp.ndim == 0 or k_.shape == kp.shape, cid, "k and k_prev must have the same shape")
    require(bool(np.all(kp < k_)), cid, f"need k_prev < k (a step goes back in k), got k={k!r}, k_prev={k_prev!r}")
    return k_, kp


def _eta(eta: float, cid: str) -> float:
    e = as_f64(eta, cid, "eta")
    require(e.ndim == 0, cid, f"eta must be a scalar, got shape {e.shape}")
    require(0.0 <= float(e) <= 1.0, cid, f"eta must lie in [0, 1], got {float(e)!r}")
    return float(e)


def _sigma(ab_k: Array, ab_prev: Array, eta: float) -> Array:
    """DDIM Eq. (16) with alpha_bar_{k-1} generalised to alpha_bar_{k_prev}."""
    return eta * np.sqrt((1 - ab_prev) / (1 - ab_k)) * np.sqrt(1 - ab_k / ab_prev)


def sigma(betas: ArrayLike, k: ArrayLike, k_prev: ArrayLike, eta: float) -> Array:
    """Clause ``ddim.sigma``: eta sqrt((1 - ab_prev)/(1 - ab_k)) sqrt(1 - ab_k/ab_prev)."""
    cid = "ddim.sigma"
    alpha_bar = _alpha_bar(betas, cid)
    k_, kp = _steps(k, k_prev, alpha_bar.size - 1, cid)
    return np.asarray(_sigma(alpha_bar[k_], alpha_bar[kp], _eta(eta, cid)), dtype=np.float64)


def posterior(
    x0: ArrayLike, x_k: ArrayLike, betas: ArrayLike, k: ArrayLike, k_prev: ArrayLike, sigma: ArrayLike
) -> tuple[Array, Array]:
    """Clause ``ddim.posterior``: mean and variance (B, 1) of q_sigma(x_{k_prev} | x_k, x_0), DDIM Eq. (7)."""
    cid = "ddim.posterior"
    x0_ = as_batch(x0, cid, "x0")
    xk = as_batch(x_k, cid, "x_k")
    same_shape(cid, x0=x0_, x_k=xk)
    B = x0_.shape[0]
    alpha_bar = _alpha_bar(betas, cid)
    k_, kp = _steps(k, k_prev, alpha_bar.size - 1, cid, batch=B)
    sig = as_f64(sigma, cid, "sigma")
    require(sig.ndim == 0 or sig.shape == (B,), cid, f"sigma must be a scalar or shape ({B},), got {sig.shape}")
    require(bool(np.all(sig >= 0)), cid, "sigma is a standard deviation and must be >= 0")
    ab_k, ab_prev, sig = column(alpha_bar[k_]), column(alpha_bar[kp]), column(sig)
    require(bool(np.all(sig**2 <= 1 - ab_prev)), cid, "need sigma^2 <= 1 - alpha_bar_{k_prev}")
    mean = np.sqrt(ab_prev) * x0_ + np.sqrt(1 - ab_prev - sig**2) * (xk - np.sqrt(ab_k) * x0_) / np.sqrt(1 - ab_k)
    var = np.broadcast_to(sig**2, (B, 1)).astype(np.float64)
    return mean, var


def _step(x_k: Array, eps_hat: Array, alpha_bar: Array, k: Steps, k_prev: Steps, eta: float, z: Array) -> Array:
    """DDIM Eq. (12): predicted x_0, direction pointing to x_k, random noise."""
    ab_k, ab_prev = column(alpha_bar[k]), column(alpha_bar[k_prev])
    sig = _sigma(ab_k, ab_prev, eta)
    x0_hat = (x_k - np.sqrt(1 - ab_k) * eps_hat) / np.sqrt(ab_k)
    # 1 - ab_prev - sigma^2 >= 0 exactly for eta in [0, 1]; the clip only removes rounding below 0.
    direction = np.sqrt(np.maximum(1 - ab_prev - sig**2, 0.0)) * eps_hat
    return np.asarray(np.sqrt(ab_prev) * x0_hat + direction + sig * z, dtype=np.float64)


def step(
    x_k: ArrayLike, eps_hat: ArrayLike, betas: ArrayLike, k: ArrayLike, k_prev: ArrayLike, eta: float, z: ArrayLike
) -> Array:
    """Clause ``ddim.step``: x_{k_prev} = sqrt(ab_prev) x0_hat + sqrt(1 - ab_prev - sigma^2) eps_hat + sigma z."""
    cid = "ddim.step"
    xk = as_batch(x_k, cid, "x_k")
    e = as_batch(eps_hat, cid, "eps_hat")
    z_ = as_batch(z, cid, "z")
    same_shape(cid, x_k=xk, eps_hat=e, z=z_)
    alpha_bar = _alpha_bar(betas, cid)
    k_, kp = _steps(k, k_prev, alpha_bar.size - 1, cid, batch=xk.shape[0])
    return _step(xk, e, alpha_bar, k_, kp, _eta(eta, cid), z_)


def _tau(tau: ArrayLike, K: int, cid: str) -> Steps:
    t = np.asarray(tau)
    require(t.ndim == 1 and t.size >= 1, cid, f"tau must be a non-empty 1-D sequence of steps, got shape {t.shape}")
    t = as_step(t, K, cid)
    require(bool(np.all(np.diff(t) > 0)), cid, f"tau must be strictly increasing, got {t.tolist()}")
    require(int(t[-1]) == K, cid, f"tau must end at K = {K}, got {int(t[-1])}")
    return t


def sample(
    x_K: ArrayLike,
    eps_fn: Callable[[Array, Steps], Any],
    betas: ArrayLike,
    tau: ArrayLike,
    eta: float,
    noises: ArrayLike,
) -> Array:
    """Clause ``ddim.sample``: generation on the sub-sequence tau (DDIM Sec. 4.2), tau_S = K down to k = 0."""
    cid = "ddim.sample"
    x = as_batch(x_K, cid, "x_K")
    B, d = x.shape
    alpha_bar = _alpha_bar(betas, cid)
    t = _tau(tau, alpha_bar.size - 1, cid)
    e_ = _eta(eta, cid)
    z = as_f64(noises, cid, "noises")
    require(z.shape == (t.size, B, d), cid,
            f"noises must have shape (len(tau), B, d) = {(t.size, B, d)}, got {z.shape}")
    for i in range(t.size - 1, -1, -1):
        k = np.asarray(t[i])
        k_prev = np.asarray(t[i - 1] if i > 0 else 0, dtype=np.int64)
        eps_hat = np.asarray(eps_fn(x, np.full(B, int(k), dtype=np.int64)), dtype=np.float64)
        require(eps_hat.shape == (B, d), cid, f"eps_fn returned shape {eps_hat.shape}, expected {(B, d)}")
        require(bool(np.all(np.isfinite(eps_hat))), cid, f"eps_fn returned non-finite values at k = {int(k)}")
        x = _step(x, eps_hat, alpha_bar, k, k_prev, e_, z[i])
    return x
